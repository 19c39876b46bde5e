"""Deep3DFaceRecon coefficients -> clips: beta = the 64 expression coefficients, camera by EG3D's conversion.

Deep3DFaceRecon (the paper's source of beta) writes one ``.mat`` file per image with ``exp [1, 64]``,
``angle [1, 3]`` (radians, x / y / z) and ``trans [1, 3]`` (and ``id``, ``tex``, ``gamma``; a single
``coeffs [1, 257]`` vector laid out id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | trans 3 is accepted too).
The camera follows EG3D's FFHQ preprocessing (``3dface2idr_mat.py`` then ``preprocess_cameras.py --mode orig``):

- ``R = (Rz Ry Rx)^T`` (Deep3DFaceRecon's ``compute_rotation``), ``trans_z -= 10`` (its camera distance);
- camera position ``c = 0.27 (-R trans) + (0, 0.006, 0.161)``, rotation ``R diag(1, -1, -1)`` (OpenGL -> OpenCV);
- the position rescaled to 2.7 from the origin; intrinsics ``fx = fy = 2985.29 / 700 = 4.2647``, ``cx = cy = 0.5``.

No face model is needed. The frames are the images Deep3DFaceRecon was run on (EG3D-style crops); they are
only resized to the output size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export3d.cameras import INTRINSICS, RADIUS

CAMERA_DISTANCE = 10.0  # Deep3DFaceRecon's camera sits 10 units in front of the face model
EG3D_SCALE = 0.27  # EG3D: "normalize camera radius"
EG3D_OFFSET = np.array([0.0, 0.006, 0.161])  # EG3D: "additional offset used in submission"


class Deep3DFormatError(ValueError):
    """Coefficient files that cannot be used; the message starts with the file or folder."""


COEFF_SLICES = {"exp": slice(80, 144), "angle": slice(224, 227), "trans": slice(254, 257)}  # in the 257-d vector


def deep3d_rotation(angles: np.ndarray) -> np.ndarray:
    """Deep3DFaceRecon's ``compute_rotation``: angles # [..., 3] radians -> ``(Rz Ry Rx)^T`` # [..., 3, 3]."""
    x, y, z = (np.asarray(angles, dtype=np.float64)[..., i] for i in range(3))
    one, zero = np.ones_like(x), np.zeros_like(x)
    rx = np.stack([one, zero, zero, zero, np.cos(x), -np.sin(x), zero, np.sin(x), np.cos(x)], -1)
    ry = np.stack([np.cos(y), zero, np.sin(y), zero, one, zero, -np.sin(y), zero, np.cos(y)], -1)
    rz = np.stack([np.cos(z), -np.sin(z), zero, np.sin(z), np.cos(z), zero, zero, zero, one], -1)
    shape = (*x.shape, 3, 3)
    rot = rz.reshape(shape) @ ry.reshape(shape) @ rx.reshape(shape)
    return np.swapaxes(rot, -1, -2)


def deep3d_camera(angles: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """EG3D's camera of Deep3DFaceRecon poses: angles # [..., 3], trans # [..., 3] -> cameras # [..., 25]."""
    R = deep3d_rotation(angles)
    t = np.array(trans, dtype=np.float64)
    t[..., 2] -= CAMERA_DISTANCE
    centre = EG3D_SCALE * -np.einsum("...ij,...j->...i", R, t) + EG3D_OFFSET
    centre = centre * (RADIUS / np.linalg.norm(centre, axis=-1, keepdims=True))
    cam2world = np.zeros((*R.shape[:-2], 4, 4))
    cam2world[..., :3, :3] = R @ np.diag([1.0, -1.0, -1.0])
    cam2world[..., :3, 3] = centre
    cam2world[..., 3, 3] = 1.0
    intr = np.broadcast_to(np.asarray(INTRINSICS, dtype=np.float64).reshape(9), (*R.shape[:-2], 9))
    return np.concatenate([cam2world.reshape(*R.shape[:-2], 16), intr], axis=-1)


@dataclass(frozen=True)
class Deep3DClip:
    images: list[Path]  # the frames, in order (stems match the .mat files)
    expression: np.ndarray  # [T, 64] float32
    camera: np.ndarray  # [T, 25] float32


def _coefficients(path: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except (OSError, ValueError, TypeError) as err:
        raise Deep3DFormatError(f"{path}: cannot read Deep3DFaceRecon coefficients: {err}") from err
    if all(k in mat for k in ("exp", "angle", "trans")):
        out = {k: np.asarray(mat[k], dtype=np.float64).reshape(-1) for k in ("exp", "angle", "trans")}
    elif "coeffs" in mat and np.asarray(mat["coeffs"]).size == 257:
        flat = np.asarray(mat["coeffs"], dtype=np.float64).reshape(-1)
        out = {k: flat[s] for k, s in COEFF_SLICES.items()}
    else:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise Deep3DFormatError(f"{path}: expected Deep3DFaceRecon arrays 'exp', 'angle', 'trans' "
                                f"(or a 257-d 'coeffs'), found {found}")
    for key, size in (("exp", 64), ("angle", 3), ("trans", 3)):
        if out[key].size != size or not np.isfinite(out[key]).all():
            raise Deep3DFormatError(f"{path}: {key!r} must hold {size} finite values, got {out[key].size}")
    return out


def read_deep3d_clip(folder: Path, image_suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> Deep3DClip:
    """One folder of images with one ``.mat`` per image (same stem) -> a clip; frames in file-name order."""
    mats = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".mat")
    if not mats:
        raise Deep3DFormatError(f"{folder}: no Deep3DFaceRecon .mat files")
    images = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in image_suffixes}
    missing = [m.name for m in mats if m.stem not in images]
    if missing:
        raise Deep3DFormatError(f"{folder}: no image for {len(missing)} coefficient file(s), first {missing[0]!r} "
                         f"(expected an image with the same name and one of {image_suffixes})")
    coeffs = [_coefficients(m) for m in mats]
    angles = np.stack([c["angle"] for c in coeffs])
    trans = np.stack([c["trans"] for c in coeffs])
    return Deep3DClip([images[m.stem] for m in mats], np.stack([c["exp"] for c in coeffs]).astype(np.float32),
                      deep3d_camera(angles, trans).astype(np.float32))


def clip_frames(clip: Deep3DClip, size: int) -> list[np.ndarray]:
    """The clip's images as RGB uint8 ``[size, size, 3]`` (Lanczos; Deep3DFaceRecon's inputs are aligned crops)."""
    from PIL import Image

    from export3d.data.frames import VideoError

    frames = []
    for path in clip.images:
        try:
            with Image.open(path) as im:
                frames.append(np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)))
        except OSError as err:
            raise VideoError(path, f"cannot read image: {err}") from err
    return frames
