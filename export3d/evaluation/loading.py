"""A trained model and its held-out data from a run folder or checkpoint (``evaluate``, ``animate``, ablations).

The model is rebuilt from the checkpoint's ``meta.json`` ("model_config"); the held-out data from its
"train_config" (the synthetic generator's seed and sizes) unless a ``--data`` folder says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from export3d.data import ClipFolder, SyntheticClips, SyntheticConfig
from export3d.model import Export3D
from export3d.model.config import PAPER, PRESETS, ModelConfig
from export3d.utils.checkpoint import CheckpointError, load_checkpoint


def model_config_from_meta(meta: dict, where: str) -> ModelConfig:
    """Rebuild the ``ModelConfig`` stored in a checkpoint's meta.json (lists back to tuples; fields the
    checkpoint predates take their defaults)."""
    raw = meta.get("model_config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint: {where}/meta.json has no 'model_config' (not written by export3d.train?)")
    base = PRESETS.get(raw.get("name"), PAPER)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise CheckpointError(f"checkpoint: {where}/meta.json model_config has unknown fields {unknown}")
    kwargs = {}
    try:
        for key, value in raw.items():
            default = getattr(base, key)
            if dataclasses.is_dataclass(default):
                value = dataclasses.replace(default, **{k: tuple(v) if isinstance(v, list) else v
                                                        for k, v in value.items()})  # fmt: skip
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return ModelConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {where}/meta.json model_config is invalid ({exc})") from exc


def load_model(path: str | Path, device: torch.device | str = "cpu", preset: str | None = None,
               image_size: int | None = None, use_ema: bool = True) -> tuple[Export3D, dict, Path]:  # fmt: skip
    """``(model in eval mode, meta, checkpoint folder)``; ``preset`` / ``image_size`` are what the caller expects.

    The weight EMA (``model_ema.*`` tensors, EG3D's G_ema) is loaded when the checkpoint has it and ``use_ema``;
    otherwise the trained weights (``model.*``). ``meta["weights"]`` says which.
    """
    weights, state, folder = load_checkpoint(path)
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
    cfg = dataclasses.replace(model_config_from_meta(meta, str(folder)), compile=False)
    if preset is not None and cfg.name != preset:
        raise CheckpointError(f"--checkpoint: {folder} holds a {cfg.name!r} model ({cfg.image_size} px), "
                              f"not the requested preset {preset!r}")  # fmt: skip
    if image_size is not None and cfg.image_size != image_size:
        raise CheckpointError(f"--checkpoint: {folder} holds a {cfg.image_size} px model ({cfg.name!r}), "
                              f"not the requested resolution {image_size}")  # fmt: skip
    if "model" not in weights:
        raise CheckpointError(f"checkpoint: {folder}/weights.safetensors has no 'model.' tensors")
    key = "model_ema" if use_ema and "model_ema" in weights else "model"
    model = Export3D(cfg)
    try:
        model.load_state_dict(weights[key])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint: {folder} weights do not fit its model_config ({exc})") from exc
    meta.setdefault("step", state.get("step"))
    meta["weights"] = key
    return model.to(device).eval(), meta, folder


SPLITS = ("test", "all")


def source_label(name: str) -> str:
    """A short name of a ``--data`` source: ``synthetic`` or the folder's name."""
    return name if name == "synthetic" else Path(name).name or name


def run_data(meta: dict, data: str | list[str] | None = None) -> list[str]:
    """The data sources to evaluate: ``data`` when given, else those the run trained on (a run saved before
    training mixed sources stores one name)."""
    if data:
        return [data] if isinstance(data, str) else list(data)
    saved = (meta.get("train_config") or {}).get("data", "synthetic")
    return [saved] if isinstance(saved, str) else list(saved)


def _synthetic(meta: dict, resolution: int, split: str, **override) -> SyntheticClips:
    train_cfg = meta.get("train_config") or {}
    names = {f.name for f in dataclasses.fields(SyntheticConfig)} - {"resolution"}
    settings = {k: v for k, v in train_cfg.items() if k in names}  # seed, identities, clips, frames, fps, expression
    return SyntheticClips(SyntheticConfig(resolution=resolution, **{**settings, **override}), split)


def _folder(data: str) -> Path:
    folder = Path(data)
    if not folder.is_dir():
        raise FileNotFoundError(f"--data: {folder} is not a folder (expected 'synthetic' or a clip-format folder)")
    return folder


def held_out_sources(meta: dict, data: str | list[str] | None, resolution: int,
                     split: str = "test") -> list[tuple[str, object]]:  # fmt: skip
    """(name, held-out source) of each data source: the synthetic test identities of the run's settings, a clip
    folder's test split (``split="test"``; all its clips when it has none) or every clip of it (``split="all"``: a
    folder of held-out people prepared on its own)."""
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {SPLITS}, got {split!r}")
    out = []
    for name in run_data(meta, data):
        if name == "synthetic":
            out.append((name, _synthetic(meta, resolution, "test")))
            continue
        folder = _folder(name)
        source = ClipFolder(folder, split=None if split == "all" else "test", resolution=resolution)
        if not source.clips and split == "test":
            print(f"note: {folder}/manifest.json lists no 'test' clips; evaluating on all clips", file=sys.stderr)
            source = ClipFolder(folder, resolution=resolution)
        if not source.clips:
            raise ValueError(f"--data: {folder}/manifest.json lists no clips to evaluate")
        out.append((name, source))
    return out


def held_out_source(meta: dict, data: str | None, resolution: int):
    """The held-out split of ``data`` (default: the run's first data source); see :func:`held_out_sources`."""
    return held_out_sources(meta, data or run_data(meta)[:1], resolution)[0][1]


def training_sources(meta: dict, resolution: int) -> list[tuple[str, object]]:
    """(name, training split) of every source the run trained on: whose identities an output may have memorised.
    Raises ``FileNotFoundError`` / ``ClipFormatError`` when a training folder is no longer readable."""
    out = []
    for name in run_data(meta):
        if name == "synthetic":  # only the images are needed: the constructed beta spares the landmarker
            out.append((name, _synthetic(meta, resolution, "train", expression_source="beta")))
        else:
            out.append((name, ClipFolder(_folder(name), split="train", resolution=resolution)))
    return out
