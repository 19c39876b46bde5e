"""Training: ``python -m export3d.train`` (the ``tiny`` preset on built-in synthetic data by default).

The command line only: flags -> :class:`~export3d.training.config.TrainConfig` -> :func:`export3d.training.loop.main`,
which holds the loop (stages, outputs, resume; see its docstring).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from export3d.data.expressions import EXPRESSION_SOURCES
from export3d.model.config import CONDITIONINGS, IMPLS
from export3d.training import runs
from export3d.training.config import EXPRESSION_ENCODERS, TRAIN_PRESETS, TrainConfig
from export3d.training.loop import main
from export3d.utils.checkpoint import CheckpointError
from export3d.utils.cli import add_debug_flag, is_device_error, report_error
from export3d.utils.signals import exit_status

PROG = "export3d.train"
__all__ = ["build_parser", "cli", "parse_args"]


# ----------------------------------------------------------------------------------------------- CLI
HELP = {
    "data": "'synthetic' or a folder in the on-disk clip format",
    "out": "output folder, new or empty (default: runs/<preset>-<date>-<time>; with --resume: the resumed run)",
    "clebs_steps": "stage 0 steps: CLeBS contrastive pre-training",
    "rec_steps": "stage 1 steps: reconstruction",
    "adv_steps": "stage 2 steps: reconstruction + adversarial (a resume may make it longer)",
    "batch_size": "reconstruction / adversarial pairs per step and process",
    "clebs_clips": "clips per CLeBS step",
    "clebs_negatives": "negatives per CLeBS anchor",
    "lr": "generator Adam learning rate",
    "clebs_lr": "CLeBS Adam learning rate",
    "d_lr": "discriminator Adam learning rate",
    "adv_weight": "weight of L_adv in stage 2",
    "lpips_weight": "weight of each LPIPS term",
    "lpips_every": "LPIPS joins the loss every N-th generator step",
    "device": "cpu, cuda, cuda:N (default: CUDA when available, else the CPU)",
    "impl": "model implementation",
    "seed": "seed of the data, the initialisation and the batches",
    "resume": "continue RUN (a run folder or one of its checkpoints) with its own saved settings; only --stop-after, "
              "--threads, --workers, --device, intervals, --cache-frames, --eval-pairs, --compile, --deterministic "
              "and a longer --adv-steps may be changed",
    "vgg_weights": "torchvision VGG16 weights for LPIPS (else the torch hub cache, else a seeded random VGG)",
    "workers": "DataLoader worker processes",
    "log_every": "log every N steps",
    "sample_every": "write a sample grid every N steps",
    "ckpt_every": "checkpoint every N steps (and at every stage end)",
    "eval_pairs": "held-out pairs for metrics.json at the end (0: no evaluation)",
    "train_identities": "synthetic training identities",
    "test_identities": "synthetic held-out identities",
    "clips_per_identity": "synthetic clips per identity",
    "frames_per_clip": "synthetic frames per clip",
    "stop_after": "stop with a checkpoint after this many steps in all (continue with --resume)",
    "cache_frames": "keep up to this many training frames in memory (0: render every time)",
    "threads": "torch intra-op threads (>= 1)",
    "fps": "synthetic clip frame rate",
    "expression_source": "synthetic expression vector: beta (64-d, constructed) or landmarker (52 MediaPipe "
                         "blendshapes read from each rendered frame, as real videos give; cached on disk)",
    "expression_encoder": "clebs: pre-trained, frozen f_e (paper); lebs: f_e trained end to end; direct: beta itself",
    "n_basis": "LeBS basis size n (default: 10, the model presets' value)",
    "conditioning": "how the expression code conditions the generator",
    "ema_half_life_images": "half-life of the weight EMA in images (0: no EMA)",
    "ema_rampup": "weight EMA ramp-up",
    "compile": "torch.compile the model body",
    "amp": "bf16 autocast (CUDA only)",
    "deterministic": "torch.use_deterministic_algorithms (bit-exact resume on CPU)",
}
CHOICES = {"impl": IMPLS, "expression_encoder": EXPRESSION_ENCODERS, "conditioning": CONDITIONINGS,
           "expression_source": EXPRESSION_SOURCES}
TYPES = {"data": str, "out": str, "clebs_steps": int, "rec_steps": int, "adv_steps": int, "batch_size": int,
         "clebs_clips": int, "clebs_negatives": int, "lr": float, "clebs_lr": float, "d_lr": float, "adv_weight": float,
         "lpips_weight": float, "lpips_every": int, "device": str, "impl": str, "seed": int, "resume": str,
         "vgg_weights": str, "workers": int, "log_every": int, "sample_every": int, "ckpt_every": int,
         "eval_pairs": int, "train_identities": int, "test_identities": int, "clips_per_identity": int,
         "frames_per_clip": int, "stop_after": int, "cache_frames": int, "threads": int, "fps": float,
         "expression_encoder": str, "n_basis": int, "conditioning": str, "ema_half_life_images": float,
         "ema_rampup": float, "expression_source": str}  # fmt: skip
SWITCHES = ("compile", "amp", "deterministic")


def _defaults(name: str) -> str:
    values = {p: getattr(c, name) for p, c in sorted(TRAIN_PRESETS.items())}
    if name in ("out", "device", "resume", "vgg_weights", "threads", "stop_after", "n_basis"):
        return ""
    if len(set(map(str, values.values()))) == 1:
        return f" (default: {next(iter(values.values()))})"
    return " (" + "; ".join(f"{p}: {v}" for p, v in values.items()) + ")"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export3d.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default=None,
                   help="model + recipe preset (default: tiny; with --resume: the run's)")  # fmt: skip
    for name, kind in TYPES.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, choices=CHOICES.get(name),
                       help=HELP[name] + _defaults(name))  # fmt: skip
    for name in SWITCHES:
        p.add_argument("--" + name, action="store_true", default=None, help=HELP[name])
    add_debug_flag(p)
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags -> TrainConfig. With --resume, the run's saved settings are the base and the flags given override
    them (``main`` then refuses any override that a resumed run may not take)."""
    return _parse(argv)[0]


def _parse(argv: list[str] | None) -> tuple[TrainConfig, bool]:
    """(the run's TrainConfig, --debug): --debug is how errors are shown, not a setting of the run."""
    p = build_parser()
    args = vars(p.parse_args(argv))
    debug = args.pop("debug")
    return _config(p, {k: v for k, v in args.items() if v is not None}), debug


def _config(p: argparse.ArgumentParser, overrides: dict) -> TrainConfig:
    if "resume" in overrides:
        try:
            run = runs.run_folder(overrides["resume"])
            settings = runs.saved_settings(run)
        except CheckpointError:
            run, settings = None, None  # main() reports the problem (and writes nothing)
        overrides.setdefault("out", str(run or overrides["resume"]))  # continue writing into the resumed run
        if settings is not None:
            try:
                # where it stops is not a setting of the run: a run stopped by --stop-after continues to the end
                kept = {k: v for k, v in settings.items() if k not in ("stop_after", "resume", "out")}
                return runs.config_from_settings(kept, **overrides)
            except (ValueError, TypeError) as exc:
                p.error(str(exc))
    base = TRAIN_PRESETS[overrides.pop("preset", "tiny")]
    overrides.setdefault("out", f"runs/{base.preset}-{time.strftime('%Y%m%d-%H%M%S')}")  # a fresh folder per run
    try:
        return dataclasses.replace(base, **overrides)
    except ValueError as exc:
        p.error(str(exc))


def cli(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 a bad input, 3 the run diverged, 4 a device or kernel failure (utils/cli.py), 130 /
    143 Ctrl-C / SIGTERM after the checkpoint."""
    cfg, debug = _parse(argv)
    try:
        main(cfg)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM, after the checkpoint
        return exit_status(exc)
    except runs.TrainingDiverged as exc:  # before the generic report: a RuntimeError of its own meaning
        report_error(PROG, exc, debug)
        return 3
    except Exception as exc:  # noqa: BLE001 - a bad input or a device error is reported; anything else re-raised
        if is_device_error(exc) or isinstance(exc, (ValueError, OSError, CheckpointError)):
            return report_error(PROG, exc, debug)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(cli())
