"""The run folder: a new run or a resumed one, checked before anything is written.

- A new run needs ``--out`` to be absent or an empty folder; ``config.json`` is written once the data and the
  model have been built (so a typo in ``--data`` leaves nothing behind).
- ``--resume RUN`` restores the run's own settings from ``RUN/config.json`` (or, for a bare checkpoint, from its
  meta.json). Only :data:`SAFE_TO_CHANGE` may differ, plus a longer final stage (``--adv-steps``); anything else
  that differs is an error naming the flag, raised before the folder is touched.
- A run that was killed before its first checkpoint restarts from step 0 under ``--resume``.
- ``log.jsonl`` is cut back to the resumed step, so no step is logged twice.
- :class:`TrainingDiverged`: a non-finite loss or weight; nothing is saved over the last finite checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

from export3d.training.config import TrainConfig
from export3d.utils.checkpoint import CheckpointError, checkpoint_dirs
from export3d.utils.outputs import atomic_write_bytes, atomic_write_json

# Settings a resume may change: where and how fast it runs, how often it reports, when it stops.
SAFE_TO_CHANGE = frozenset({
    "out", "resume", "stop_after", "threads", "workers", "device", "log_every", "sample_every", "ckpt_every",
    "cache_frames", "eval_pairs", "memorisation_frames", "compile", "deterministic",
})  # fmt: skip


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or infinite; the message names it and the last finite checkpoint."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_folder(path: str | Path) -> Path:
    """The run folder behind ``--resume PATH`` (a run, its checkpoints/, last.json or one step_* folder)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"--resume: {p} does not exist")
    if p.is_file() and p.name == "last.json":
        p = p.parent
    if p.is_dir() and p.name.startswith("step_") and p.parent.name == "checkpoints":
        p = p.parent
    if p.is_dir() and p.name == "checkpoints" and not (p / "config.json").exists():
        p = p.parent
    if not (p.is_dir() and ((p / "config.json").is_file() or (p / "checkpoints").is_dir())):
        raise CheckpointError(f"--resume: {p} is not a run folder (no config.json and no checkpoints/); "
                              "to start a new run there, use --out")  # fmt: skip
    return p


def saved_settings(run: Path) -> dict[str, Any]:
    """The run's TrainConfig as a dict: its config.json, else the newest checkpoint's meta.json."""
    sources = [run / "config.json"] + [d / "meta.json" for d in reversed(checkpoint_dirs(run / "checkpoints"))]
    for path in sources:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"--resume: {path} is corrupt ({exc})") from exc
        data = data.get("train_config", data) if path.name == "meta.json" else data
        if isinstance(data, dict) and "preset" in data:
            return data
    raise CheckpointError(f"--resume: {run} holds no readable config.json or checkpoint settings")


def config_from_settings(settings: dict[str, Any], **overrides) -> TrainConfig:
    """A saved settings dict (JSON: lists for tuples; fields of older versions ignored) plus ``overrides``."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in fields}
    return TrainConfig(**{**values, **overrides})


def check_resume(cfg: TrainConfig, run: Path, settings: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first setting that differs from the run's and may not."""
    saved = config_from_settings(settings)
    for f in dataclasses.fields(TrainConfig):
        new, old = getattr(cfg, f.name), getattr(saved, f.name)
        if f.name in SAFE_TO_CHANGE or new == old:
            continue
        if f.name == "adv_steps" and new > old:
            continue  # a longer final stage
        raise ValueError(f"{flag(f.name)}: {run} was trained with {flag(f.name)} {old}, not {new}; a resumed run keeps "
                         f"its settings (only {', '.join(sorted(flag(n) for n in SAFE_TO_CHANGE - {'out', 'resume'}))}"
                         " and a longer --adv-steps may change)")  # fmt: skip


def check_new_output(out: Path) -> None:
    """A new run writes only into a folder that does not exist yet or is empty."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out: {out} is a file, not a folder")
    if (out / "config.json").exists():
        raise FileExistsError(f"--out: {out} already holds a run (config.json); pass --resume {out} to "
                              "continue it, or choose another --out")  # fmt: skip
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"--out: {out} is not empty and holds no run; choose a new or empty folder")


def has_checkpoint(run: Path) -> bool:
    return bool(checkpoint_dirs(run / "checkpoints"))


def restart_empty_run(out: Path) -> None:
    """A run killed before its first checkpoint: drop its logs and samples so that it starts again from step 0."""
    for name in ("log.jsonl", "metrics.json"):
        (out / name).unlink(missing_ok=True)
    for name in ("samples", "tensorboard", "checkpoints"):
        shutil.rmtree(out / name, ignore_errors=True)


def truncate_log(out: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` in ``log.jsonl`` (and drop a half-written last line)."""
    path = out / "log.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


def write_config(out: Path, cfg: TrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_dict())


def non_finite(values: dict[str, Any]) -> list[str]:
    return [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]


def finite_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Replace NaN / inf in a nested metrics dict by None; return it and the dotted names replaced."""
    bad: list[str] = []

    def walk(obj, prefix):
        if isinstance(obj, dict):
            return {k: walk(v, f"{prefix}{k}.") for k, v in obj.items()}
        if isinstance(obj, float) and not math.isfinite(obj):
            bad.append(prefix[:-1])
            return None
        return obj

    return walk(metrics, ""), bad
