"""The model's side of the web demo (no Gradio here): animation of a photo by a video, and edits without a driver.

:class:`Demo` wraps one :class:`~export3d.animation.animator.Animator` (the checkpoint is loaded once):

- **photos** are read and their faces cut once per file content (sha256), a few kept (``CACHED_PHOTOS``): the same
  photo animated again, or edited, is not searched for faces again;
- **animation** is ``Animator.video_drive`` + ``Animator.run``, as ``python -m export3d.animate`` does it; it also
  returns the aligned source crops, the driving signal as a figure and a summary;
- **edits** (:meth:`Demo.edit`) render one face from an orbit camera (yaw, pitch: novel views) with coefficients
  lambda_k of its learned expression basis scaled (paper Fig. 9: ``LeBS.scale_coefficients`` for every k at once).
  The generator's source-only work is done once per face (:class:`EditSource`), and the last tri-plane is kept:
  moving yaw or pitch only renders it again, moving a basis factor generates a new tri-plane from the cached source
  features, then renders.

Errors are the animation API's own (``ValueError`` naming the input, ``VideoError``, ``CheckpointError``, ...):
the page shows them exactly as the command line prints them.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export3d.animation.animator import AnimationResult, AnimationSettings, Animator, Face, StageClock
from export3d.animation.photo import SourcePhoto
from export3d.animation.video import has_audio
from export3d.app.charts import driving_figure
from export3d.cameras import orbit_camera_deg
from export3d.data.headpose import camera_angles
from export3d.model.generator import SourceFeatures
from export3d.utils.images import to_uint8

CACHED_PHOTOS = 4  # photos (and faces ready for edits) kept in memory, least recently used dropped first
YAW_RANGE = (-45.0, 45.0)  # degrees, the edit sliders' ranges
PITCH_RANGE = (-30.0, 30.0)
FACTOR_RANGE = (-10.0, 10.0)  # a basis coefficient's scale factor (paper Fig. 9 sweeps 1 -> 10 and 1 -> -7)

Stage = Callable[[float, str], None]  # (fraction done, what is being done): the page's progress bar


def _no_stage(fraction: float, what: str) -> None:
    pass


def file_digest(path: Path, what: str) -> str:
    """sha256 of the file's bytes; ``FileNotFoundError`` worded like the image readers' (``what: no file at P``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class EditSource:
    """One face of a photo, ready for edits: the generator's source-only work done once, and the last tri-plane."""

    face: Face
    features: SourceFeatures  # Export3D.encode_source of the face's crop
    coefficients: torch.Tensor | None  # [1, n]: lambda of the face's own expression (None: no learned basis)
    yaw: float  # the face's own head pose as orbit-camera angles (degrees), where the sliders start
    pitch: float
    note: str | None = None  # the notes about the face (which one was taken among several, ...)
    planes: torch.Tensor | None = None  # [1, 3, C, P, P]: the tri-plane of ``factors``
    factors: tuple[float, ...] | None = None

    @property
    def crop(self) -> np.ndarray:
        """The aligned crop the model sees # [S, S, 3] uint8."""
        return to_uint8(self.face.image)


@dataclass(frozen=True)
class EditView:
    image: np.ndarray  # [S, S, 3] uint8
    seconds: float  # wall time of the edit: render only, or tri-plane + render
    generated: bool  # the tri-plane was generated again (a basis factor moved), not only rendered

    def describe(self) -> str:
        work = "tri-plane generated from the cached source features, then rendered" if self.generated else \
            "rendered from the cached tri-plane"  # fmt: skip
        return f"{1000 * self.seconds:.0f} ms: {work}"


@dataclass
class Animation:
    result: AnimationResult
    crops: np.ndarray  # [S, n * S, 3] uint8: the aligned crop of each animated face, side by side
    figure: Any  # matplotlib Figure: the driving signal over time
    text: str  # what was made, and the time per frame of each stage


class Demo:
    """A loaded checkpoint serving the page: animation, and edits from cached tri-planes."""

    def __init__(self, animator: Animator, workdir: str | Path):
        self.animator = animator
        self.model = animator.model
        self.workdir = Path(workdir)
        self._photos: OrderedDict[str, SourcePhoto] = OrderedDict()
        self._edits: OrderedDict[tuple[str, int | None], EditSource] = OrderedDict()
        self._runs = 0
        self._last_video: Path | None = None

    @property
    def n_basis(self) -> int:
        """The number of learned basis vectors (0: the 'direct' expression encoder has none)."""
        return self.model.lebs.n_basis if self.model.config.expression_encoder == "lebs" else 0

    # photos --------------------------------------------------------------------------------------
    def photo(self, path: str | Path) -> SourcePhoto:
        """The photo at ``path`` with its faces cut for the model, read once per content."""
        path = Path(path)
        key = file_digest(path, "photo")
        if key not in self._photos:
            self._photos[key] = self.animator.read_source(path)
            while len(self._photos) > CACHED_PHOTOS:
                self._photos.popitem(last=False)
        self._photos.move_to_end(key)
        return self._photos[key]

    def faces(self, path: str | Path, settings: AnimationSettings) -> tuple[list[Face], list[str]]:
        """The faces of the photo to animate (``settings.face`` / ``all_faces``) and the notes about them."""
        return self.animator.faces_of(self.photo(path), settings)

    # edits ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def edit_source(self, path: str | Path, face: int | None = None) -> EditSource:
        """Face ``face`` of the photo (None: the only or the largest one), encoded once and kept."""
        key = (file_digest(Path(path), "photo"), face)
        if key not in self._edits:
            (source,), notes = self.animator.faces_of(self.photo(path), AnimationSettings(paste_back=False, face=face))
            note = "; ".join(notes) or None
            device = self.animator.device
            features = self.model.encode_source(source.image[None].to(device))
            coefficients = None
            if self.n_basis:
                expression = torch.as_tensor(source.expression[None], dtype=torch.float32, device=device)
                coefficients = self.model.lebs.coefficients(expression)
            yaw, elevation, _ = camera_angles(source.camera)
            self._edits[key] = EditSource(source, features, coefficients, float(np.clip(yaw, *YAW_RANGE)),
                                          float(np.clip(-elevation, *PITCH_RANGE)), note)  # fmt: skip
            while len(self._edits) > CACHED_PHOTOS:
                self._edits.popitem(last=False)
        self._edits.move_to_end(key)
        return self._edits[key]

    @torch.no_grad()
    def edit(self, source: EditSource, yaw: float, pitch: float, factors: tuple[float, ...] = ()) -> EditView:
        """The face seen from the orbit camera (``yaw``, ``pitch`` in degrees) with lambda_k scaled by ``factors[k]``
        (all 1: its own expression). Only a change of ``factors`` generates a new tri-plane."""
        factors = tuple(float(f) for f in factors) or (1.0,) * self.n_basis
        if len(factors) != self.n_basis:
            raise ValueError(f"edit: this model's learned basis has {self.n_basis} coefficients, got {len(factors)} "
                             "factors")  # fmt: skip
        start = time.perf_counter()
        device = self.animator.device
        generated = source.planes is None or source.factors != factors
        if generated:
            if source.coefficients is not None:
                scale = torch.tensor(factors, dtype=source.coefficients.dtype, device=device)
                code = self.model.lebs.from_coefficients(source.coefficients * scale)
            else:
                code = self.animator.codes(source.face.expression[None])
            source.planes, source.factors = self.model.generate_triplane(source.features, code), factors
        camera = orbit_camera_deg(float(yaw), float(pitch))[None].float().to(device)
        image = self.model.render(source.planes, camera).image.float().clamp(-1, 1)
        image = to_uint8(image[0])  # the copy to the host waits for the work: the time is the whole edit's
        return EditView(image, time.perf_counter() - start, generated)

    # animation -----------------------------------------------------------------------------------
    def animate(self, photo: str | Path | None, video: str | Path | None, settings: AnimationSettings,
                stage: Stage = _no_stage) -> Animation:  # fmt: skip
        """The photo animated by the video (one frame per driving frame, with its sound), as ``export3d.animate``."""
        if photo is None:
            raise ValueError("--source: no photo given; upload one or pick the example")
        if video is None:
            raise ValueError("--driving: no video given; upload one or pick the example clip")
        clock = StageClock()
        with clock("detection + landmarks"):  # a photo seen before is not searched again
            stage(0.0, "finding the faces in the photo")
            faces, notes = self.faces(photo, settings)
            drive = self.animator.video_drive(video, settings)
            drive.video.keep = True  # the page plots the driving signal (a driver of at most max_frames frames)
        stage(0.1, "tracking the driving video's face and rendering")
        self._runs += 1
        out = self.workdir / f"animation_{self._runs:04d}.mp4"
        result = self.animator.run(faces, drive, out, settings, clock=clock)
        if self._last_video is not None:  # the page's server has copied it into its own cache by now
            self._last_video.unlink(missing_ok=True)
        self._last_video = out
        names = self.animator.face_tools()[0].blendshape_names
        figure = driving_figure(*drive.video.recorded(), drive.fps, names)
        crops = np.concatenate([to_uint8(face.image) for face in faces], axis=1)
        height, width = result.size
        sound = "with the driver's sound" if has_audio(result.video) else "silent (the driver has no sound)"
        held = f"; {result.held} driving frames without a face took their nearest's signals" if result.held else ""
        lines = [f"{result.frames} frames, {width}x{height} px, {result.fps:g} fps, {sound}: "
                 f"{', '.join(face.label for face in faces)} driven by {Path(drive.label).name} "
                 f"({settings.motion} motion){held}", *(f"note: {n}" for n in notes), result.summary]  # fmt: skip
        return Animation(result, crops, figure, "\n".join(lines))
