"""The inputs of ``python -m export3d.animate`` other than a photo and a real video.

Synthetic sources and drivers (``synthetic:ID[:CLIP]``, the checkpoint's own held-out test identities), clip folders
of the on-disk format (``params.npz`` with expression and camera per frame), and the two sweeps of the paper's
figures: the orbit (one expression, the camera circling) and the basis sweep (paper Fig. 9: one coefficient of the
learned expression basis scaled over the frames).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export3d.cameras import orbit_camera
from export3d.data import TEST_IDENTITY_OFFSET, ClipFormatError, SyntheticClips
from export3d.data.clips import check_array, check_cameras, read_npz
from export3d.data.frames import IMAGE_SUFFIXES, frame_files, is_video
from export3d.evaluation.loading import held_out_source
from export3d.model import Export3D
from export3d.utils.images import centre_square, load_image


def synthetic_clip(spec: str, flag: str, meta: dict, resolution: int) -> tuple[SyntheticClips, int]:
    """``synthetic:ID[:CLIP]`` -> (the run's synthetic test split, clip index)."""
    parts = spec.split(":")[1:]
    try:
        number, clip = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        if len(parts) > 2:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"{flag}: expected synthetic:ID or synthetic:ID:CLIP with integers, got {spec!r}") from None
    source = held_out_source(meta, "synthetic", resolution)
    ids = sorted({c.identity for c in source.clips})
    identity = number if number >= TEST_IDENTITY_OFFSET else (ids[number] if 0 <= number < len(ids) else None)
    per = source.config.clips_per_identity
    if identity not in ids or not 0 <= clip < per:
        raise ValueError(f"{flag}: {spec!r} is not in the checkpoint's synthetic test split: identities "
                         f"0..{len(ids) - 1} (or {ids[0]}..{ids[-1]}), clips 0..{per - 1}")  # fmt: skip
    return source, ids.index(identity) * per + clip


def synthetic_source(spec: str, meta: dict, resolution: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, str]:
    """``synthetic:ID[:CLIP]`` as a source: (image ``[3, H, W]``, its expression ``[E]``, its camera ``[25]``, label),
    the most frontal frame of the clip."""
    source, clip = synthetic_clip(spec, "--source", meta, resolution)
    keys = [source.key(clip, f) for f in range(source.clips[clip].frames)]
    frame = int(source.heads.pose(keys).abs().sum(1).argmin())
    data = source.load([(clip, [frame])])[0]
    label = f"{source.clips[clip].name} frame {frame}"
    return data["image"][0], data["beta"][0].double().numpy(), data["camera"][0].double().numpy(), label


def image_source(path: str, resolution: int) -> torch.Tensor:
    """An image file used as it is (``--no-align``): centre-cropped to a square and resized ``[3, H, W]``."""
    try:
        return load_image(path, resolution)
    except (FileNotFoundError, ValueError) as exc:
        raise type(exc)(f"--source: {exc}") from exc


def synthetic_driver(spec: str, meta: dict, resolution: int, max_frames: int | None):
    """``synthetic:ID[:CLIP]`` as a driver: (expression ``[T, E]``, camera ``[T, 25]``, frames ``[T, 3, H, W]``,
    label)."""
    source, clip = synthetic_clip(spec, "--driving", meta, resolution)
    frames = range(min(source.clips[clip].frames, max_frames or source.clips[clip].frames))
    data = source.load([(clip, list(frames))])[0]
    return data["beta"].double().numpy(), data["camera"].double().numpy(), data["image"], source.clips[clip].name


def load_clip_folder(folder: str | Path, resolution: int,
                     dim: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """One on-disk clip folder -> beta ``[T, dim]``, camera ``[T, 25]``, frames ``[T, 3, H, W]`` or None.

    The parameters are validated like ``ClipFolder`` does (``ClipFormatError`` naming the file); frames are
    optional (they only feed the contact sheet) but, when present, must be one per parameter row.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--driving: {folder} is not a folder (expected a clip folder or synthetic:ID)")
    if (folder / "manifest.json").is_file():
        raise ClipFormatError(folder, "this is a dataset root (manifest.json); pass one clip folder inside it")
    path = folder / "params.npz"
    if not path.is_file():
        raise ClipFormatError(path, f"missing params.npz (a clip folder holds expression [T, {dim}] and camera "
                                    "[T, 25]; for a video or a folder of plain frames, pass the video)")
    npz = read_npz(path)
    rows = npz["expression"].shape[0] if "expression" in npz.files and npz["expression"].ndim else 0
    beta = check_array(path, npz, "expression", dim, rows)
    camera = check_array(path, npz, "camera", 25, rows)
    if rows == 0:
        raise ClipFormatError(path, "'expression' has no rows")
    check_cameras(path, camera)
    return torch.from_numpy(beta), torch.from_numpy(camera), _clip_frames(folder, rows, resolution)


def _clip_frames(folder: Path, rows: int, resolution: int) -> torch.Tensor | None:
    files, videos = frame_files(folder), sorted(folder.glob("*.mp4"))
    if files:
        if len(files) != rows:
            raise ClipFormatError(folder, f"frame/param count mismatch: {len(files)} image files "
                                          f"({'/'.join(IMAGE_SUFFIXES)}) but params.npz has {rows} rows")  # fmt: skip
        try:
            return torch.stack([load_image(f, resolution) for f in files])
        except ValueError as exc:
            raise ClipFormatError(folder, str(exc)) from exc
    if not videos:
        return None
    import imageio.v2 as iio

    try:
        with iio.get_reader(videos[0], "ffmpeg") as reader:
            pixels = [np.asarray(frame)[..., :3] for frame in reader]
    except (OSError, RuntimeError) as exc:
        raise ClipFormatError(videos[0], f"cannot read video: {exc}") from exc
    if len(pixels) != rows:
        raise ClipFormatError(videos[0], f"frame/param count mismatch: video has {len(pixels)} frames, "
                                         f"params.npz has {rows} rows")  # fmt: skip
    return torch.stack([centre_square(Image.fromarray(p), resolution) for p in pixels])


def is_driving_video(path: str | Path) -> bool:
    """A video file, or a folder of frame images without ``params.npz`` (not a clip folder nor a dataset root)."""
    path = Path(path)
    return is_video(path) and not (path / "params.npz").is_file() and not (path / "manifest.json").is_file()


def orbit_cameras(frames: int, yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """A closed Lissajous sweep starting frontal: yaw = A sin(2 pi t), pitch = B sin(4 pi t). -> [T, 25]."""
    t = torch.arange(frames, dtype=torch.float64) / frames
    yaw = math.radians(yaw_deg) * torch.sin(2 * math.pi * t)
    pitch = math.radians(pitch_deg) * torch.sin(4 * math.pi * t)
    return orbit_camera(yaw, pitch)


@torch.no_grad()
def basis_codes(model: Export3D, expression: torch.Tensor, basis: int, values: list[float],
                mode: str = "scale") -> tuple[torch.Tensor, str]:  # fmt: skip
    """Paper Fig. 9: codes ``[T, d]`` with coefficient ``basis`` (1..n) of ``expression``'s code scaled by (or set
    to) each of ``values``, and a line describing it."""
    if model.config.expression_encoder != "lebs":
        raise ValueError("--basis: this checkpoint's expression encoder is 'direct' (no learned basis)")
    lebs = model.lebs
    if not 1 <= basis <= lebs.n_basis:
        raise ValueError(f"--basis: K must be in 1..{lebs.n_basis} (the paper's v_1..v_{lebs.n_basis}), got {basis}")
    coefficients = lebs.coefficients(expression[None])  # [1, n]
    index = torch.tensor([basis - 1], device=coefficients.device)
    rows = [lebs.scale_coefficients(coefficients, basis - 1, v) if mode == "scale"
            else coefficients.index_fill(1, index, v) for v in values]  # fmt: skip
    note = (f"basis v_{basis}: lambda_{basis} of the source expression = {coefficients[0, basis - 1].item():+.4f}; "
            f"{mode} {values[0]:g} -> {values[-1]:g}")  # fmt: skip
    return lebs.from_coefficients(torch.cat(rows)), note
