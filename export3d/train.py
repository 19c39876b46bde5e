"""Training: ``python -m export3d.train`` (the ``tiny`` preset on built-in synthetic data by default).

The command line only: flags -> :class:`~export3d.training.config.TrainConfig` -> :func:`export3d.training.loop.main`,
which holds the loop (stages, outputs, resume; see its docstring). ``main``, ``TrainResult`` and
``train_generator_step`` are importable from here as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from export3d.training.config import TRAIN_PRESETS, TrainConfig
from export3d.training.loop import TrainResult, main, train_generator_step
from export3d.utils.checkpoint import CheckpointError

__all__ = ["TrainResult", "cli", "main", "parse_args", "train_generator_step"]


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m export3d.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default="tiny", help="model + recipe preset")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    flags = {"data": str, "out": str, "clebs_steps": int, "rec_steps": int, "adv_steps": int, "batch_size": int,
             "clebs_clips": int, "clebs_negatives": int, "lr": float, "clebs_lr": float, "d_lr": float,
             "adv_weight": float, "lpips_weight": float, "lpips_every": int, "device": str, "impl": str, "seed": int,
             "resume": str, "vgg_weights": str,
             "workers": int, "log_every": int, "sample_every": int, "ckpt_every": int, "eval_pairs": int,
             "train_identities": int, "test_identities": int, "clips_per_identity": int,
             "frames_per_clip": int, "stop_after": int, "cache_frames": int,
             "threads": int, "fps": float, "expression_encoder": str, "n_basis": int, "conditioning": str,
             "ema_half_life_images": float, "ema_rampup": float}  # fmt: skip
    for name, kind in flags.items():
        assert name in fields, name
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=f"(default: preset's {name})")
    for name in ("compile", "amp", "deterministic"):
        p.add_argument("--" + name, action="store_true", default=None)
    args = vars(p.parse_args(argv))
    base = TRAIN_PRESETS[args.pop("preset")]
    overrides = {k: v for k, v in args.items() if v is not None}
    if "resume" in overrides and "out" not in overrides:
        overrides["out"] = overrides["resume"]  # continue writing into the resumed run
    overrides.setdefault("out", f"runs/{base.preset}-{time.strftime('%Y%m%d-%H%M%S')}")  # a fresh folder per run
    try:
        return dataclasses.replace(base, **overrides)
    except ValueError as exc:
        p.error(str(exc))


def cli(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        main(cfg)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as exc:
        print(f"export3d.train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
