"""Driving signals and frame rendering behind ``python -m export3d.animate``.

Sources (an image file or ``synthetic:ID``), driving clips (a clip folder, ``synthetic:ID[:CLIP]``, or a real
video / frame folder read by ``export3d.data.prepare``'s per-frame pipeline), the orbit sweep, and
:func:`render_frames`, which generates one tri-plane per expression and renders it from every camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export3d.cameras import orbit_camera
from export3d.data import TEST_IDENTITY_OFFSET, ClipFormatError, SyntheticClips
from export3d.data.clips import check_array, check_cameras, read_npz
from export3d.data.frames import IMAGE_SUFFIXES, frame_files
from export3d.evaluation.loading import held_out_source
from export3d.model import Export3D
from export3d.utils.images import centre_square, from_uint8, load_image, to_uint8


@dataclass
class Driving:
    codes: torch.Tensor  # [T or 1, code_dim]: one tri-plane per row
    cameras: torch.Tensor  # [T or 1, 25]; a single row of either is shared by every frame
    frames: torch.Tensor | None  # [T, 3, H, W] driving images for the sheet, when there are any
    label: str

    @property
    def length(self) -> int:
        return max(self.codes.shape[0], self.cameras.shape[0])


# ----------------------------------------------------------------------------------------------- inputs
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


def load_source(spec: str, meta: dict, resolution: int) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``--source`` -> (image ``[3, H, W]``, its beta ``[64]`` or None, description)."""
    if spec.startswith("synthetic:"):
        source, clip = synthetic_clip(spec, "--source", meta, resolution)
        keys = [source.key(clip, f) for f in range(source.clips[clip].frames)]
        frame = int(source.heads.pose(keys).abs().sum(1).argmin())  # the most frontal frame of the clip
        data = source.load([(clip, [frame])])[0]
        return data["image"][0], data["beta"][0], f"{source.clips[clip].name} frame {frame}"
    try:
        return load_image(spec, resolution), None, spec
    except (FileNotFoundError, ValueError) as exc:
        raise type(exc)(f"--source: {exc}") from exc


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
    files, videos = frame_files(folder), sorted(folder.glob("*.mp4"))
    frames = None
    if files:
        if len(files) != rows:
            raise ClipFormatError(folder, f"frame/param count mismatch: {len(files)} image files "
                                          f"({'/'.join(IMAGE_SUFFIXES)}) but params.npz has {rows} rows")  # fmt: skip
        try:
            frames = torch.stack([load_image(f, resolution) for f in files])
        except ValueError as exc:
            raise ClipFormatError(folder, str(exc)) from exc
    elif videos:
        try:
            pixels = _read_video(videos[0])
        except (OSError, RuntimeError) as exc:
            raise ClipFormatError(videos[0], f"cannot read video: {exc}") from exc
        if len(pixels) != rows:
            raise ClipFormatError(videos[0], f"frame/param count mismatch: video has {len(pixels)} frames, "
                                             f"params.npz has {rows} rows")  # fmt: skip
        frames = torch.stack([centre_square(Image.fromarray(p), resolution) for p in pixels])
    return torch.from_numpy(beta), torch.from_numpy(camera), frames


def is_driving_video(path: str | Path) -> bool:
    """A video file, or a folder of frame images without ``params.npz`` (not a clip folder nor a dataset root)."""
    from export3d.data.frames import is_video

    path = Path(path)
    return is_video(path) and not (path / "params.npz").is_file() and not (path / "manifest.json").is_file()


def load_driving_video(path: str | Path, resolution: int, dim: int, max_frames: int | None = None,
                       progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:  # fmt: skip
    """A real video (or frame folder) -> expression ``[T, 52]``, camera ``[T, 25]``, crops ``[T, 3, H, W]``, record.

    The face pipeline of ``python -m export3d.data.prepare`` (:mod:`export3d.data.face_pipeline`: MediaPipe
    landmarks, a smoothed crop by translation and scale, PnP head pose -> EG3D camera, 52 blendshapes): the driving
    signal is what ``prepare`` would have written for this video. Frames without a face are dropped
    (``record["dropped_no_face"]``).
    """
    from export3d.data.face_pipeline import TooFewFaces, read_video_faces
    from export3d.data.landmarker import N_BLENDSHAPES, FaceLandmarker, canonical_mesh

    path = Path(path)
    if dim != N_BLENDSHAPES:
        raise ValueError(f"--driving: a video gives the {N_BLENDSHAPES} MediaPipe blendshapes per frame, but this "
                         f"checkpoint's model takes {dim}-d expressions; train it with --expression-source "
                         "landmarker (synthetic data) or on clips from python -m export3d.data.prepare")  # fmt: skip
    with FaceLandmarker() as landmarker:
        try:
            track, params, crops = read_video_faces(path, landmarker, canonical_mesh(), resolution,
                                                    max_frames=max_frames, progress=progress)  # fmt: skip
        except TooFewFaces as err:
            raise ValueError(f"--driving: {path}: {err}") from err
    frames = from_uint8(np.stack(crops))  # [T, 3, H, W]
    record = {"frames": len(crops), "dropped_no_face": track.dropped}
    return torch.from_numpy(params.expression), torch.from_numpy(params.cameras).float(), frames, record


def _read_video(path: Path) -> list[np.ndarray]:
    import imageio.v2 as iio

    with iio.get_reader(path, "ffmpeg") as reader:
        return [np.asarray(frame)[..., :3] for frame in reader]


# ----------------------------------------------------------------------------------------------- driving signals
def orbit_cameras(frames: int, yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """A closed Lissajous sweep starting frontal: yaw = A sin(2 pi t), pitch = B sin(4 pi t). -> [T, 25]."""
    t = torch.arange(frames, dtype=torch.float64) / frames
    yaw = math.radians(yaw_deg) * torch.sin(2 * math.pi * t)
    pitch = math.radians(pitch_deg) * torch.sin(4 * math.pi * t)
    return orbit_camera(yaw, pitch)


# ----------------------------------------------------------------------------------------------- rendering
@torch.no_grad()
def render_frames(model: Export3D, source: torch.Tensor, driving: Driving, batch_size: int):
    """Yield output chunks ``[n, 3, H, W]`` in [-1, 1]; one tri-plane per expression, rendered per camera."""
    device = next(model.parameters()).device
    src = source[None].to(device)  # [1, 3, H, W]
    cams = driving.cameras.to(device)
    shared = model.generate_triplane(src, driving.codes) if driving.codes.shape[0] == 1 else None  # [1, 3, C, P, P]
    for start in range(0, driving.length, batch_size):
        stop = min(start + batch_size, driving.length)
        cam = cams[start:stop] if cams.shape[0] > 1 else cams.expand(stop - start, -1)  # [n, 25]
        if shared is None:
            triplane = model.generate_triplane(src.expand(stop - start, -1, -1, -1), driving.codes[start:stop])
        else:
            triplane = shared
        yield model.render(triplane, cam).image.float().clamp(-1, 1).cpu()


def video_frame(image: torch.Tensor, size: int) -> np.ndarray:
    pixels = to_uint8(image)  # [H, W, 3]
    if pixels.shape[0] != size:
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS))
    return pixels
