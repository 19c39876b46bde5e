"""Test inputs for ``export3d.data.prepare``: a talking-head clip made from the astronaut photo (scikit-image).

The photo is rotated in the image plane about a point near the face and shifted, frame by frame, so the
true in-plane head roll and the face's position in every frame are known.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FRAMES = 20
FRAME_SIZE = 320  # the frames are 320 x 320 windows of the 512 x 512 photo
WINDOW = (40, 90)  # top-left (x, y) of the window in the photo
PIVOT = (250.0, 160.0)  # rotation centre in photo pixels (between the eyes and the mouth)


def motion(t: int) -> tuple[float, float, float]:
    """Applied (roll in degrees, counter-clockwise on screen; shift x, y in pixels) at frame t."""
    phase = 2 * math.pi * t / FRAMES
    return 12.0 * math.sin(phase), 18.0 * math.sin(phase / 2), 8.0 * math.cos(phase)


def frame_transform(t: int) -> np.ndarray:
    """The 2x3 affine map from photo pixels to frame-t pixels (rotation about PIVOT, shift, window)."""
    import cv2

    roll, dx, dy = motion(t)
    m = cv2.getRotationMatrix2D(PIVOT, roll, 1.0)  # positive angle = counter-clockwise as displayed
    m[:, 2] += (dx - WINDOW[0], dy - WINDOW[1])
    return m


def write_astronaut_frames(folder: Path, frames: int = FRAMES, blank: tuple[int, ...] = ()) -> Path:
    """Frame t of the clip as ``folder/00000.png`` ...; frames listed in ``blank`` are flat grey (no face)."""
    import cv2
    import skimage.data
    from PIL import Image

    photo = skimage.data.astronaut()
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        if t in blank:
            frame = np.full((FRAME_SIZE, FRAME_SIZE, 3), 128, np.uint8)
        else:
            frame = cv2.warpAffine(photo, frame_transform(t), (FRAME_SIZE, FRAME_SIZE), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder


# ----------------------------------------------------------------------------------------------- small faces
CANVAS = (960, 540)  # (width, height) of the "full-body" frames: the photo placed small on a grey background
SMALL_SCALE = 0.68  # the photo's scale there: her face (about 106 px in the photo) becomes about 72 px, 1 % of the area
BACKGROUND = 100  # grey level around the placed photo


def small_transform(t: int, frames: int = FRAMES) -> np.ndarray:
    """The 2x3 affine map from photo pixels to frame t of the small-face clip: the roll of :func:`motion` about
    PIVOT, the photo scaled by SMALL_SCALE, and PIVOT moved from 30 % to 60 % of the canvas width over the clip."""
    import cv2

    roll, dx, dy = motion(t)
    m = cv2.getRotationMatrix2D(PIVOT, roll, SMALL_SCALE)  # keeps PIVOT in place
    x = CANVAS[0] * (0.3 + 0.3 * t / max(frames - 1, 1)) + dx
    y = CANVAS[1] * 0.35 + dy
    m[:, 2] += (x - PIVOT[0], y - PIVOT[1])
    return m


def place(photo: np.ndarray, transform: np.ndarray, size: tuple[int, int] = CANVAS,
          canvas: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """``photo`` warped by the 2x3 ``transform`` onto ``canvas`` (default: a grey ``size`` = (width, height) one)."""
    import cv2

    if canvas is None:
        canvas = np.full((size[1], size[0], 3), BACKGROUND, np.uint8)
    mask = cv2.warpAffine(np.ones(photo.shape[:2], np.uint8), transform, (canvas.shape[1], canvas.shape[0]),
                          flags=cv2.INTER_NEAREST)  # fmt: skip
    warped = cv2.warpAffine(photo, transform, (canvas.shape[1], canvas.shape[0]), flags=cv2.INTER_LINEAR)
    return np.where(mask[..., None] > 0, warped, canvas)


def small_face_frame(t: int, frames: int = FRAMES) -> np.ndarray:
    """Frame t of the small-face clip # [540, 960, 3] uint8."""
    import skimage.data

    return place(skimage.data.astronaut(), small_transform(t, frames))


def write_small_face_frames(folder: Path, frames: int = FRAMES, blank: tuple[int, ...] = ()) -> Path:
    """The small-face clip as ``folder/00000.png`` ...; frames listed in ``blank`` are the grey canvas alone."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        frame = np.full((CANVAS[1], CANVAS[0], 3), BACKGROUND, np.uint8) if t in blank else small_face_frame(t, frames)
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder


# ----------------------------------------------------------------------------------------------- shots
SHOT_CANVAS = (640, 360)  # (width, height) of the frames of the shot-cut videos


def shot_frame(t: int, centre: tuple[float, float], scale: float, background=BACKGROUND) -> np.ndarray:
    """Frame t of a shot # [360, 640, 3] uint8: the photo rolled by :func:`motion` (t) and scaled by ``scale`` about
    PIVOT, which is put at ``centre`` (x, y) on a canvas of ``background`` (a grey level or an RGB colour)."""
    import skimage.data

    canvas = np.empty((SHOT_CANVAS[1], SHOT_CANVAS[0], 3), np.uint8)
    canvas[:] = background
    return place(skimage.data.astronaut(), shot_transform(t, centre, scale), canvas=canvas)


def shot_transform(t: int, centre: tuple[float, float], scale: float) -> np.ndarray:
    """The 2x3 map from photo pixels to frame t of :func:`shot_frame`."""
    import cv2

    roll, dx, dy = motion(t)
    m = cv2.getRotationMatrix2D(PIVOT, roll, scale)
    m[:, 2] += (centre[0] + dx * scale - PIVOT[0], centre[1] + dy * scale - PIVOT[1])
    return m


def write_frames(folder: Path, frames) -> Path:
    """Frames # [H, W, 3] uint8 as ``folder/00000.png``, ... (a frame folder, which prepare reads as a video)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder
