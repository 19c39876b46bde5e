"""A source photo -> its faces, each cut, measured and encoded as the model's training clips were.

Any photo (size, EXIF orientation, colour mode: :func:`export3d.utils.images.read_photo`): every face is found by the
two-stage detector of the face pipeline and cut by :func:`export3d.data.face_pipeline.photo_faces`, i.e. exactly the
crop ``prepare`` makes for a video frame (the same EG3D calibration), so the model sees what it was trained on. Each
face also gives its own expression (52 blendshapes) and camera (PnP), which relative motion starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export3d.utils.images import from_uint8


@dataclass(frozen=True)
class SourceFace:
    """One face of the source photo."""

    index: int  # its place among the photo's faces, left to right
    crop: np.ndarray  # [S, S, 3] uint8: the model's input crop (S = the model's image size)
    box: np.ndarray  # [3] float64: the crop (corner x, corner y, side) in photo pixels
    blendshapes: np.ndarray  # [52] float32: the face's own expression
    camera: np.ndarray  # [25] float64: the face's own EG3D camera

    @property
    def image(self) -> torch.Tensor:
        """The crop as the model's source tensor ``[3, S, S]`` in [-1, 1]."""
        return from_uint8(self.crop)

    def describe(self) -> str:
        x, y, side = self.box
        return f"face {self.index}: crop at ({x:.0f}, {y:.0f}), side {side:.0f} px"


@dataclass(frozen=True)
class SourcePhoto:
    path: Path
    photo: np.ndarray  # [H, W, 3] uint8, upright
    faces: list[SourceFace]  # left to right

    def choose(self, face: int | None, all_faces: bool) -> tuple[list[SourceFace], str | None]:
        """The faces to animate and, when the photo has several and none was asked for, a note listing them.

        ``all_faces``: every face; ``face``: that one (an error naming ``--face`` when out of range); otherwise the
        only face, or the largest of several (and the note says so and how to pick another).
        """
        if all_faces:
            return list(self.faces), None
        if face is not None:
            if not 0 <= face < len(self.faces):
                raise ValueError(f"--face: {self.path} has {len(self.faces)} face(s) (0..{len(self.faces) - 1}, left "
                                 f"to right), got {face}: " + "; ".join(f.describe() for f in self.faces))
            return [self.faces[face]], None
        largest = max(self.faces, key=lambda f: f.box[2])
        if len(self.faces) == 1:
            return [largest], None
        listing = "; ".join(f.describe() for f in self.faces)
        return [largest], (f"{self.path} has {len(self.faces)} faces, left to right: {listing}. Animating face "
                           f"{largest.index} (the largest); --face N picks another, --all-faces animates them all")


def read_source(path: str | Path, landmarker, mesh, size: int) -> SourcePhoto:
    """Read the photo at ``path`` and cut every face for a model of image size ``size``.

    ``ValueError`` naming the file and the smallest face size searched when there is no face.
    """
    from export3d.data.face_detect import search_note
    from export3d.data.face_pipeline import photo_faces
    from export3d.utils.images import read_photo

    path = Path(path)
    photo = read_photo(path)
    found = photo_faces(photo, landmarker, mesh, size)
    if not found:
        raise ValueError(f"--source: no face found in {path}; {search_note(photo.shape)}")
    faces = []
    for k, f in enumerate(found):
        box = np.array([*f.params.boxes.corner[0], f.params.boxes.side[0]], dtype=np.float64)
        faces.append(SourceFace(k, f.crop, box, f.blendshapes.astype(np.float32), f.camera.astype(np.float64)))
    return SourcePhoto(path, photo, faces)
