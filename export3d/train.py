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
from export3d.training.config import EXPRESSION_ENCODERS, FACE_CROPS, TRAIN_PRESETS, TrainConfig
from export3d.training.loop import main
from export3d.utils.checkpoint import CheckpointError
from export3d.utils.cli import add_debug_flag, is_device_error, report_error
from export3d.utils.extras import MissingExtraError
from export3d.utils.signals import exit_status

PROG = "export3d.train"
__all__ = ["build_parser", "cli", "parse_args"]


# ----------------------------------------------------------------------------------------------- CLI
HELP = {
    "data": "'synthetic' or a folder in the on-disk clip format; repeat to mix sources per batch (--data synthetic "
            "--data clips/; their expression vectors must agree: with real clips, --expression-source landmarker "
            "gives the synthetic heads the same 52 blendshapes)",
    "data_weights": "mixing weights of the --data sources, comma-separated in their order (default: equal)",
    "pretrain_steps": "the first N steps (all stages counted) draw their batches by --pretrain-weights",
    "pretrain_weights": "mixing weights of the first --pretrain-steps steps (e.g. 1,0: the first source alone)",
    "aug_flip": "real clips: probability of a horizontal flip (camera and blendshapes mirrored with the image)",
    "aug_hue": "real clips: hue rotation within +- this many degrees",
    "aug_colour": "real clips: saturation and per-channel gains within 1 +- this",
    "aug_scale": "real clips: zoom within [1 / (1 + x), 1 + x], the focal length scaled with it",
    "memorisation_frames": "frames per training identity for the memorisation measure of metrics.json (0: off)",
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
    "face_landmark_weight": "weight of the face landmark loss: MediaPipe's eye, lip and face-oval points of output vs "
                            "target, in units of the face crop (0: off; docs/training.md, Face losses)",
    "face_blendshape_weight": "weight of the face blendshape loss: L1 of MediaPipe's 52 blendshapes (0: off)",
    "face_feature_weight": "weight of the face feature-matching loss on MediaPipe's landmark CNN activations (0: off)",
    "face_loss_every": "the face losses join the loss every N-th generator step",
    "face_loss_raw": "apply the face losses to the raw render too (they always apply to the final image)",
    "face_crop": "the face losses' crop: target (MediaPipe's detector crop of the target frame, shared by both "
                 "images) or whole (the whole image)",
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
           "expression_source": EXPRESSION_SOURCES, "face_crop": FACE_CROPS}
TYPES = {"data": str, "data_weights": str, "pretrain_steps": int, "pretrain_weights": str, "aug_flip": float,
         "aug_hue": float, "aug_colour": float, "aug_scale": float, "memorisation_frames": int, "out": str,
         "clebs_steps": int, "rec_steps": int, "adv_steps": int, "batch_size": int,
         "clebs_clips": int, "clebs_negatives": int, "lr": float, "clebs_lr": float, "d_lr": float, "adv_weight": float,
         "lpips_weight": float, "lpips_every": int, "face_landmark_weight": float, "face_blendshape_weight": float,
         "face_feature_weight": float, "face_loss_every": int, "face_crop": str,
         "device": str, "impl": str, "seed": int, "resume": str,
         "vgg_weights": str, "workers": int, "log_every": int, "sample_every": int, "ckpt_every": int,
         "eval_pairs": int, "train_identities": int, "test_identities": int, "clips_per_identity": int,
         "frames_per_clip": int, "stop_after": int, "cache_frames": int, "threads": int, "fps": float,
         "expression_encoder": str, "n_basis": int, "conditioning": str, "ema_half_life_images": float,
         "ema_rampup": float, "expression_source": str}  # fmt: skip
SWITCHES = ("compile", "amp", "deterministic", "face_loss_raw")
LISTS = ("data_weights", "pretrain_weights")  # comma-separated numbers


def _defaults(name: str) -> str:
    values = {p: getattr(c, name) for p, c in sorted(TRAIN_PRESETS.items())}
    values = {p: ", ".join(v) if name == "data" else v for p, v in values.items()}
    if name in ("out", "device", "resume", "vgg_weights", "threads", "stop_after", "n_basis", "data_weights",
                "pretrain_weights"):
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
                       action="append" if name == "data" else "store", help=HELP[name] + _defaults(name))  # fmt: skip
    for name in SWITCHES:
        p.add_argument("--" + name.replace("_", "-"), action="store_true", default=None, help=HELP[name])
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
    overrides = {k: v for k, v in args.items() if v is not None}
    for name in LISTS:
        if name in overrides:
            overrides[name] = _weights(p, name, overrides[name])
    if "data" in overrides:
        overrides["data"] = tuple(overrides["data"])
    return _config(p, overrides), debug


def _weights(p: argparse.ArgumentParser, name: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        p.error(f"--{name.replace('_', '-')}: expected comma-separated numbers (one per --data source), got {text!r}")


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
        # a missing extra (the face losses without the face model bundle) is the user's to fix, with its command
        if is_device_error(exc) or isinstance(exc, (ValueError, OSError, CheckpointError, MissingExtraError)):
            return report_error(PROG, exc, debug)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(cli())
