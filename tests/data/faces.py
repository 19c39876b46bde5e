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
