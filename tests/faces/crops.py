"""Face crops for the port's tests and benchmark: real ones from the astronaut photo, and synthetic heads.

- :func:`astronaut_crops`: square windows around the astronaut's face (scikit-image's photo, the one real face
  the project ships), each with its own size (the face's height times 1.6 to 2.6, so the face fills from 40 % to
  60 % of the side, as in MediaPipe's 1.5x detector boxes and in EG3D-style model crops), in-plane rotation
  (+-15 degrees), offset (+-8 % of the side) and, for every other one, a mirror image. Seeded.
- :func:`synthetic_heads`: :class:`export3d.data.SyntheticHeads` renders at 256 px (varied identity, pose,
  expression), the frames the model trains on.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FACE_CENTRE = (225.5, 124.6)  # the astronaut's face in the 512 px photo: the centre of MediaPipe's mesh box
FACE_HEIGHT = 105.6  # and its height, pixels


def astronaut_crops(n: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` in [-1, 1]: crop 0 is upright and centred (face 0.5 of the side)."""
    import cv2
    import skimage.data

    photo = skimage.data.astronaut()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        side = FACE_HEIGHT * (2.0 if i == 0 else rng.uniform(1.6, 2.6))  # photo pixels
        roll = 0.0 if i == 0 else rng.uniform(-15, 15)
        shift = np.zeros(2) if i == 0 else rng.uniform(-0.08, 0.08, 2) * side
        scale = size / side
        m = cv2.getRotationMatrix2D(FACE_CENTRE, roll, scale)  # about the face, then to the crop's frame
        m[:, 2] += size / 2 - np.array(FACE_CENTRE) + shift * scale
        crop = cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
        if i % 2:
            crop = crop[:, ::-1]
        out.append(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out)


def synthetic_heads(n: int, size: int = 256) -> torch.Tensor:
    """``[n, 3, size, size]`` in [-1, 1]: test identities, one clip each, frames spread over the clip."""
    from export3d.data import SyntheticConfig, SyntheticHeads
    from export3d.data.synthetic import TEST_IDENTITY_OFFSET, FrameKey

    heads = SyntheticHeads(SyntheticConfig(resolution=size))
    keys = [FrameKey(TEST_IDENTITY_OFFSET + i, 0, (17 * i) % 64) for i in range(n)]
    return heads.frames(keys)["image"]


def rotation_deg(points: np.ndarray) -> float:
    """In-plane angle of the eye line (landmarks 33 -> 263) of ``points # [478, 2+]``, degrees."""
    dx, dy = points[263, 0] - points[33, 0], points[263, 1] - points[33, 1]
    return math.degrees(math.atan2(dy, dx))
