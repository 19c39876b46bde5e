"""Checkpoints that a crash, a kill or a damaged file cannot lose, and that never run code when read.

Layout of ``<run>/checkpoints/``::

    step_00001200/weights.safetensors   every module's state_dict, prefixed "<module>."
    step_00001200/state.safetensors     the training state's tensors (optimisers, RNG states)
    step_00001200/state.json            the rest of the training state (step, stage, config, ...); tensors by name
    step_00001200/meta.json             config, provenance and the sha256 of the three files above
    last.json                           {"step": 1200, "dir": "step_00001200"}

A save writes ``step_XXXXXXXX.tmp-<pid>/`` completely (fsync), renames it into place, switches ``last.json``
atomically, and only then prunes older checkpoints. Saving a step that already has a folder (a stage end
that is also a multiple of ``--ckpt-every``, ``--stop-after``, a resumed finished run) writes the new copy
beside it as ``step_XXXXXXXX.rN``; ``last.json`` moves to it before the older copy is removed, so a kill at any
moment leaves ``last.json`` pointing at a complete checkpoint. Stale ``*.tmp-*`` folders of killed saves are
removed by the next save.

Reading verifies every file against the sha256 in ``meta.json``. Given a run or ``checkpoints/`` folder, a
checkpoint that fails (missing, damaged, bit-flipped) is reported and the newest one that verifies is used.
Nothing is unpickled: the training state holds only tensors and JSON. Files are written through
:mod:`export3d.utils.outputs` (temporary name, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from export3d.utils.outputs import atomic_write_json, fsync_dir

WEIGHTS, STATE_TENSORS, STATE_JSON, META, LAST = (
    "weights.safetensors", "state.safetensors", "state.json", "meta.json", "last.json")  # fmt: skip
_NAME = re.compile(r"step_(\d{8})(?:\.r(\d+))?")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the file."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- state <-> tensors + JSON
def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested dicts / lists / tuples of tensors and JSON scalars -> JSON, with the tensors moved into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"checkpoint state: cannot store a {type(obj).__name__} (only tensors, numbers, strings, "
                    "None and dicts / lists / tuples of them)")  # fmt: skip


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------- saving
def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete-looking checkpoint folders of ``root``, oldest first (by step, then revision)."""
    found = []
    for p in root.iterdir() if root.is_dir() else ():
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir():
            found.append(((int(m.group(1)), int(m.group(2) or 0)), p))
    return [p for _, p in sorted(found)]


def remove_stale(root: Path) -> list[Path]:
    """Delete what killed saves left behind (``step_*.tmp-*`` folders, ``.*.tmp-*`` files); return them."""
    stale = [p for p in root.glob("step_*.tmp-*")] + [p for p in root.glob(".*.tmp-*")] if root.is_dir() else []
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def save_checkpoint(
    folder: str | os.PathLike,
    step: int,
    modules: dict[str, nn.Module],
    state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Save ``modules`` (safetensors) and ``state`` (tensors + JSON) for ``step``; keep the newest ``keep``."""
    if keep < 1:
        raise ValueError(f"save_checkpoint: keep must be >= 1, got {keep}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    name = f"step_{step:08d}"
    same_step = [p for p in checkpoint_dirs(root) if p.name.split(".")[0] == name]
    if same_step:  # never replace a complete checkpoint in place: write the new copy beside it
        revisions = [int(_NAME.fullmatch(p.name).group(2) or 0) for p in same_step]
        name = f"{name}.r{max(revisions) + 1}"
    state_tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, state_tensors)  # before anything is written: an unstorable state fails cleanly
    final, tmp = root / name, root / f"{name}.tmp-{os.getpid()}"
    tmp.mkdir()
    tensors = {}
    for prefix, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value.detach().contiguous().cpu()
    save_file(tensors, str(tmp / WEIGHTS))
    save_file(state_tensors, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps(encoded, sort_keys=True))
    hashes = {f: sha256(tmp / f) for f in (WEIGHTS, STATE_TENSORS, STATE_JSON)}
    (tmp / META).write_text(json.dumps({"step": step, **(meta or {}), "sha256": hashes}, indent=1, sort_keys=True,
                                       default=str))  # fmt: skip
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_json(root / LAST, {"step": step, "dir": name})
    # prune only now: the new checkpoint is complete and last.json points at it
    newest_of_step = {}
    for p in checkpoint_dirs(root):  # oldest first: a later revision of a step supersedes the earlier ones
        newest_of_step[p.name.split(".")[0]] = p
    for p in checkpoint_dirs(root):
        if p not in newest_of_step.values():
            shutil.rmtree(p, ignore_errors=True)
    kept = [p for p in checkpoint_dirs(root) if p != final]
    for p in kept[: max(len(kept) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------- loading
def _run_root(p: Path) -> Path | None:
    """The ``checkpoints/`` folder for a run folder, a checkpoints folder or a last.json; None for one step folder."""
    if p.is_dir() and (p / "checkpoints").is_dir():
        return p / "checkpoints"
    if p.is_file() and p.name == LAST:
        return p.parent
    if p.is_dir() and ((p / LAST).is_file() or (checkpoint_dirs(p) and not (p / WEIGHTS).exists())):
        return p
    return None


def _last_target(root: Path) -> Path | None:
    last = root / LAST
    if not last.is_file():
        return None
    try:
        return root / json.loads(last.read_text())["dir"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint: {last} is corrupt ({exc})") from exc


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a run folder, its ``checkpoints/`` folder, ``last.json`` or one ``step_*`` folder (not verified)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint: {p} does not exist")
    root = _run_root(p)
    if root is not None:
        target = _last_target(root)
        p = target if target is not None else root
    if not (p.is_dir() and (p / WEIGHTS).is_file()):
        raise CheckpointError(f"checkpoint: {p} holds no {WEIGHTS} (expected a run folder or a step_* folder)")
    return p


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    folder = resolve_checkpoint(path)
    return _read_meta(folder)


def _read_meta(folder: Path) -> dict[str, Any]:
    meta = folder / META
    if not meta.is_file():
        return {}
    try:
        value = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint: {meta} is corrupt ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"checkpoint: {meta} is corrupt (not a JSON object)")
    return value


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """Check every file against the sha256 recorded in meta.json; return the meta. Raises ``CheckpointError``."""
    if not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"checkpoint: {folder} holds no {WEIGHTS}")
    meta = _read_meta(folder)
    for name, digest in (meta.get("sha256") or {}).items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint: {f} is missing")
        if sha256(f) != digest:
            raise CheckpointError(f"checkpoint: {f} is corrupt (its sha256 differs from the one in {META})")
    return meta


def _load_state(folder: Path) -> dict[str, Any]:
    if not (folder / STATE_JSON).is_file():
        raise CheckpointError(f"checkpoint: {folder / STATE_JSON} is missing (the training state)")
    try:
        tensors = load_file(str(folder / STATE_TENSORS)) if (folder / STATE_TENSORS).is_file() else {}
        return _decode(json.loads((folder / STATE_JSON).read_text()), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint: the training state in {folder} is corrupt or unreadable ({exc})") from exc


def _load_folder(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    verify_checkpoint(folder)
    try:
        flat = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {folder / WEIGHTS} is corrupt or unreadable ({exc})") from exc
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        modules.setdefault(prefix, {})[rest] = value
    return modules, _load_state(folder)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], Path]:
    """Read and verify a checkpoint: ``({module: state_dict}, training state, folder)``.

    ``path`` naming one ``step_*`` folder loads exactly that one (or fails, naming the file). A run folder,
    ``checkpoints/`` or ``last.json`` loads the checkpoint ``last.json`` names; when it fails to verify or
    read, the newest other one that does is used, with a note on stderr saying which and why.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint: {p} does not exist")
    root = _run_root(p)
    if root is None:
        folder = resolve_checkpoint(p)
        return (*_load_folder(folder), folder)
    try:
        first = _last_target(root)
    except CheckpointError as exc:
        first, problem = None, str(exc)
    else:
        problem = None if first is not None else f"checkpoint: {root / LAST} is missing"
    candidates = ([first] if first is not None else []) + [d for d in reversed(checkpoint_dirs(root)) if d != first]
    failures = [problem] if problem else []
    for folder in candidates:
        try:
            modules, state = _load_folder(folder)
        except CheckpointError as exc:
            failures.append(str(exc))
            continue
        if failures:
            print(f"checkpoint: using {folder} instead: " + "; ".join(failures), file=sys.stderr, flush=True)
        return modules, state, folder
    if not candidates:
        raise CheckpointError(f"checkpoint: {root} holds no checkpoint (no step_* folder with {WEIGHTS})")
    raise CheckpointError(f"checkpoint: no checkpoint in {root} verifies: " + "; ".join(failures))
