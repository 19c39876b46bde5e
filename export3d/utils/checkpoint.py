"""Checkpoints that a crash or Ctrl-C cannot corrupt.

Layout of ``<run>/checkpoints/``::

    step_00001200/weights.safetensors   every module's state_dict, prefixed "<module>."
    step_00001200/state.pt              training state: step, stage, optimisers, RNG states, ...
    step_00001200/meta.json             config and provenance (human-readable)
    last.json                           {"step": 1200, "dir": "step_00001200"}

A checkpoint is written into ``step_XXXXXXXX.tmp-<pid>/`` and renamed into place only when complete;
``last.json`` is replaced atomically afterwards, so a reader always sees the previous complete
checkpoint or the new complete one, never half of either.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS, STATE, META, LAST = "weights.safetensors", "state.pt", "meta.json", "last.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the file."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def save_checkpoint(
    folder: str | os.PathLike,
    step: int,
    modules: dict[str, nn.Module],
    state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Save ``modules`` (as safetensors) and ``state`` (torch.save) for ``step``; keep the newest ``keep``."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final, tmp = root / name, root / f"{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {}
    for prefix, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value.detach().contiguous().cpu()
    save_file(tensors, str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    (tmp / META).write_text(json.dumps({"step": step, **(meta or {})}, indent=1, sort_keys=True, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(root / LAST, {"step": step, "dir": name})
    old = sorted(p for p in root.glob("step_*") if p.is_dir() and ".tmp-" not in p.name)[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a run folder, its ``checkpoints/`` folder, ``last.json`` or one ``step_*`` folder."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint: {p} does not exist")
    if p.is_dir() and (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if p.is_dir() and (p / LAST).is_file():
        p = p / LAST
    if p.is_file() and p.name == LAST:
        try:
            p = p.parent / json.loads(p.read_text())["dir"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint: {p} is corrupt ({exc})") from exc
    if not (p.is_dir() and (p / WEIGHTS).is_file()):
        raise CheckpointError(f"checkpoint: {p} holds no {WEIGHTS} (expected a run folder or a step_* folder)")
    return p


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], Path]:
    """Read a checkpoint: ``({module: state_dict}, training state, folder)``; clear errors on corrupt files."""
    folder = resolve_checkpoint(path)
    try:
        flat = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {folder / WEIGHTS} is corrupt or unreadable ({exc})") from exc
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        modules.setdefault(prefix, {})[rest] = value
    state: dict[str, Any] = {}
    if (folder / STATE).is_file():
        try:
            state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a damaged file
            raise CheckpointError(f"checkpoint: {folder / STATE} is corrupt or unreadable ({exc})") from exc
    return modules, state, folder


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    folder = resolve_checkpoint(path)
    meta = folder / META
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint: {meta} is corrupt ({exc})") from exc
