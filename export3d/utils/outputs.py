"""Output files and folders that appear only when complete, and destinations checked before the work starts.

Every file or folder the package writes for keeps (checkpoints, manifests, clips, caches, videos, images, JSON)
goes through this module: written under a temporary name in the destination's folder, then renamed onto it, so a
crash, a kill or Ctrl-C leaves the earlier copy or none, never a half-written one.

- :func:`check_output_file`: before a long job, make sure its output path can be written (not a folder, the
  parent folder exists or can be created, and a file can be created there). Errors name the flag.
- :func:`replacing_file`: write to a temporary name in the same folder; renamed onto the destination only
  when the block succeeds (an earlier good file survives a failure).
- :func:`replacing_folder`: the same for a folder of files (a clip, ``animate --frames``): the new folder replaces
  the old one whole, so files of an earlier run do not linger.
- :func:`atomic_write_bytes` / :func:`atomic_write_json`: one small file, fsynced before the rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Raise ``ValueError`` naming ``flag`` unless ``path`` can be written as a file; creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag}: {path} is a folder; expected a file name")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{flag}: cannot create {path}: {ancestor} is a file, not a folder")
    try:  # os.access says yes to root on a read-only file system: create (and remove) a file to be sure
        with tempfile.NamedTemporaryFile(dir=ancestor, prefix=".export3d-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag}: cannot write into {ancestor} ({exc.strerror or exc})") from exc
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag}: {path} exists and is not writable")
    return path


def check_output_folder(path: str | os.PathLike, flag: str) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag}: {path} exists and is not a folder")
    check_output_file(path.with_name(path.name + ".probe"), flag)
    return path


def temp_name(path: Path) -> Path:
    """A hidden name beside ``path`` with the same suffix (writers such as ffmpeg choose the format by it)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def replacing_file(path: str | os.PathLike) -> Iterator[Path]:
    """``with replacing_file(out) as tmp: write(tmp)``: ``out`` appears (or is replaced) only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise OSError(f"{path}: the writer produced no file")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike) -> Iterator[Path]:
    """``with replacing_folder(dir) as tmp: fill(tmp)``: ``dir`` is replaced whole by the new files on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f"{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder (fsynced), then rename."""
    path = Path(path)
    with replacing_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())
