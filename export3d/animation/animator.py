"""The animation engine behind ``python -m export3d.animate``, as a Python API.

    from export3d.animation.animator import Animator

    with Animator("runs/paper") as animator:
        result = animator.animate("photo.jpg", "talk.mp4", "out.mp4")   # AnimationSettings() by default
        print(result.summary)

``Animator.animate`` (a photo and a real video): the photo's faces are cut as ``prepare`` cuts a video frame
(:mod:`~export3d.animation.photo`), the driver is read into one filtered expression and camera per frame
(:mod:`~export3d.animation.driver`), its motion is transferred to each face (relative by default), and the frames
are rendered, pasted back into the photo (:mod:`~export3d.animation.pasteback`) and encoded with the driver's sound
(:mod:`~export3d.animation.video`), chunk by chunk: memory does not grow with the driver's length. The generator's
source-only work runs once per face (:meth:`~export3d.model.network.Export3D.encode_source`). ``Animator.render``
is the same loop for any per-frame codes and cameras (the command line's synthetic, clip-folder, orbit and basis
inputs). Every run times its stages: detection + landmarks, model, paste-back, encoding.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export3d.animation.driver import VideoSignal
from export3d.animation.motion import MotionSettings
from export3d.animation.parts import Drive, Face, FaceJob
from export3d.animation.pasteback import PasteBack
from export3d.animation.photo import SourcePhoto, read_source
from export3d.animation.video import VideoWriter
from export3d.evaluation.loading import load_model
from export3d.utils.distributed import resolve_device
from export3d.utils.images import make_grid, to_uint8
from export3d.utils.outputs import replacing_file, replacing_folder

STAGES = ("detection + landmarks", "model", "paste-back", "encoding")
SHEET_COLUMNS = 8
CODE_CHUNK = 1024  # expressions encoded per call (the codes of a whole driver are kept: [T, d], small)


@dataclass(frozen=True)
class AnimationSettings:
    """How a photo is animated by a video (the command line's flags of the same names)."""

    motion: str = "relative"  # "relative": the driver's change from its reference frame; "absolute": as it is
    reference_frame: int = 0  # the driver frame the relative motion starts from
    smooth: float = 1.0  # driving-signal filtering: 0 off, 1 the tuned One Euro filters, s: s times smoother
    paste_back: bool = True  # frames of the photo (True) or the model's crops (False)
    max_size: int = 1280  # paste-back: the longer side of the output frames at most
    face: int | None = None  # which face of the photo (left to right); None: the only or the largest one
    all_faces: bool = False  # every face of the photo, with the same driver
    batch_size: int = 8  # frames rendered per forward pass
    max_frames: int | None = None  # use at most this many driver frames
    video_size: int | None = None  # without paste-back: the side of the video's frames (default: the model's)

    def __post_init__(self) -> None:
        MotionSettings(self.motion, self.reference_frame)  # validates both
        checks = [(self.smooth >= 0, f"--smooth must be >= 0, got {self.smooth}"),
                  (self.max_size >= 16, f"--max-size must be >= 16, got {self.max_size}"),
                  (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
                  (self.max_frames is None or self.max_frames >= 1, f"--max-frames must be >= 1: {self.max_frames}"),
                  (self.face is None or self.face >= 0, f"--face must be >= 0, got {self.face}"),
                  (self.video_size is None or self.video_size >= 16, "--video-size must be >= 16")]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class StageClock:
    """Wall time per stage, summed over a run."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def summary(self, frames: int) -> str:
        wall = time.perf_counter() - self.start
        parts = ", ".join(f"{stage} {1000 * s / max(frames, 1):.1f} ms" for stage, s in self.seconds.items())
        return f"time per frame: {parts}; {frames} frames in {wall:.1f} s ({frames / max(wall, 1e-9):.2f} frames/s)"


@dataclass
class AnimationResult:
    video: Path
    frames: int
    fps: float
    size: tuple[int, int]  # (height, width) of the video's frames
    faces: list[int] = field(default_factory=list)  # the photo's faces animated (left-to-right indices)
    held: int = 0  # driver frames without a face, which took the nearest frame's signals
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    summary: str = ""  # the timing line
    note: str | None = None  # which face was chosen among several
    sheet: Path | None = None
    frames_dir: Path | None = None
    source_png: Path | None = None


class Animator:
    """A checkpoint loaded once, animating photos with videos (or any per-frame codes and cameras)."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device | None = None, preset: str | None = None,
                 resolution: int | None = None, progress: bool = True):  # fmt: skip
        self.device = resolve_device(device)
        self.model, self.meta, self.folder = load_model(checkpoint, self.device, preset, resolution)
        self.size = self.model.config.image_size
        self.progress = progress
        self._tools = None

    # face tools ----------------------------------------------------------------------------------
    def face_tools(self):
        """(MediaPipe landmarker, canonical mesh), built on first use (the ``faces`` extra)."""
        if self._tools is None:
            from export3d.data.landmarker import FaceLandmarker, canonical_mesh

            self._tools = (FaceLandmarker(), canonical_mesh())
        return self._tools

    def close(self) -> None:
        if self._tools is not None:
            self._tools[0].close()
            self._tools = None

    def __enter__(self) -> Animator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_source(self, path: str | Path) -> SourcePhoto:
        return read_source(path, *self.face_tools(), self.size)

    def photo_faces(self, path: str | Path, settings: AnimationSettings) -> tuple[list[Face], list[str]]:
        """The faces of the photo at ``path`` to animate and the notes about them (:meth:`faces_of`)."""
        return self.faces_of(self.read_source(path), settings)

    def faces_of(self, photo: SourcePhoto, settings: AnimationSettings) -> tuple[list[Face], list[str]]:
        """The faces of a read photo to animate (``settings.face`` / ``all_faces``), each with its own expression
        and camera and, with ``settings.paste_back``, its way back into the photo; and notes for the user (which
        face was chosen among several; a model whose expressions cannot be read from a photo)."""
        chosen, note = photo.choose(settings.face, settings.all_faces)
        notes = [note] if note else []
        E = self.model.config.expression_dim
        if E != 52:
            notes.append(f"this checkpoint's model takes {E}-d 3DMM expressions, which cannot be read from a photo "
                         "here (no 3DMM fitter ships): the source's own expression is taken as the neutral one (zeros)")
        faces = [Face(f.image, f.blendshapes.astype(np.float64) if E == 52 else np.zeros(E), f.camera,
                      PasteBack(photo.photo, f.box, settings.max_size) if settings.paste_back else None,
                      f"{photo.path} face {f.index}", f.index) for f in chosen]  # fmt: skip
        return faces, notes

    def video_drive(self, path: str | Path, settings: AnimationSettings, fps: float | None = None) -> Drive:
        """A real driving video, read as the frames are rendered: one filtered expression and camera per frame, at
        its frame rate (or ``fps``), with its sound."""
        if self.model.config.expression_dim != 52:
            raise ValueError(f"--driving: a video gives the 52 MediaPipe blendshapes per frame, but this checkpoint's "
                             f"model takes {self.model.config.expression_dim}-d expressions; train it with "
                             "--expression-source landmarker (synthetic data) or on clips from python -m "
                             "export3d.data.prepare")  # fmt: skip
        video = VideoSignal(Path(path), *self.face_tools(), self.size, settings.smooth, settings.max_frames,
                            self.progress)  # fmt: skip
        audio = Path(path) if Path(path).is_file() else None  # a folder of frames has no sound
        return Drive(fps or video.fps, str(path), video=video, audio=audio)

    # jobs ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def codes(self, expression: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Expression vectors ``[T, E]`` -> codes ``[T, d]`` on the model's device."""
        x = torch.as_tensor(expression, dtype=torch.float32)
        return torch.cat([self.model.encode_expression(x[i:i + CODE_CHUNK].to(self.device))
                          for i in range(0, len(x), CODE_CHUNK)])  # fmt: skip

    @torch.no_grad()
    def face_job(self, face: Face, drive: Drive, settings: AnimationSettings) -> FaceJob:
        """One face prepared for ``drive``: the generator's source-only work, and what its frames' motion is
        measured from (the driver's reference frame for relative motion; a sweep's codes)."""
        features = self.model.encode_source(face.image[None].to(self.device))
        value_range = (0.0, 1.0) if face.expression.shape[0] == 52 else (-np.inf, np.inf)  # blendshapes in [0, 1]
        motion = MotionSettings(settings.motion, 0, value_range)
        if drive.codes_of is not None:
            return FaceJob(face, features, motion, sweep=drive.codes_of(face))
        reference = drive.reference(settings.reference_frame) if settings.motion == "relative" else None
        return FaceJob(face, features, motion, reference)

    # the photo + video path ----------------------------------------------------------------------
    def animate(self, source: str | Path, driving: str | Path, out: str | Path,
                settings: AnimationSettings = AnimationSettings(),
                frames: bool = False) -> AnimationResult:  # fmt: skip
        """Animate the photo at ``source`` with the video at ``driving`` into ``out`` (an .mp4 with its sound);
        ``frames``: also ``OUT_frames/`` (PNG per frame), ``OUT_source.png`` and ``OUT_sheet.png``."""
        clock = StageClock()
        with clock("detection + landmarks"):
            faces, notes = self.photo_faces(source, settings)
            drive = self.video_drive(driving, settings)
        for note in notes:
            print(f"note: {note}")
        return self.run(faces, drive, out, settings, frames, clock)

    def run(self, faces: list[Face], drive: Drive, out: str | Path, settings: AnimationSettings,
            frames: bool = False, clock: StageClock | None = None) -> AnimationResult:  # fmt: skip
        """Animate ``faces`` with ``drive`` into ``out`` (``frames``: also the PNGs, the source crops, the sheet)."""
        clock = clock or StageClock()
        with clock("detection + landmarks"):  # a video's reference frame is read here
            jobs = [self.face_job(face, drive, settings) for face in faces]
        result = self.render(jobs, drive, out, settings, frames, clock)
        result.faces = [face.index for face in faces]
        return result

    # the loop ------------------------------------------------------------------------------------
    @torch.no_grad()
    def render(self, jobs: list[FaceJob], drive: Drive, out: str | Path, settings: AnimationSettings,
               frames: bool = False, clock: StageClock | None = None) -> AnimationResult:  # fmt: skip
        """Render every frame of ``drive`` for every job, compose them (paste-back or crops) and encode them, chunk
        by chunk as the driver gives them (a video is decoded and tracked here)."""
        from tqdm import tqdm

        clock, out = clock or StageClock(), Path(out)
        sheet_at = set(sheet_indices(drive.length))
        sheet: dict[int, torch.Tensor] = {}
        frames_dir = out.with_name(out.stem + "_frames")
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(VideoWriter(out, drive.fps, audio_from=drive.audio))
            png_dir = stack.enter_context(replacing_folder(frames_dir)) if frames else None
            bar = stack.enter_context(tqdm(total=drive.length, desc="frames", unit="frame", disable=not self.progress))
            start, size, chunks = 0, None, drive.chunks(settings.batch_size)
            while True:
                with clock("detection + landmarks"):
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                with clock("model"):
                    renders = [self._render_job(job, chunk, start) for job in jobs]  # each [n, 3, S, S]
                with clock("paste-back"):
                    images = self._compose(jobs, [to_uint8(r) for r in renders], settings)  # [n] x [H, W, 3]
                with clock("encoding"):
                    writer.write(images)
                    if png_dir is not None:
                        _write_pngs(images, png_dir, start)
                size = images[0].shape[:2]
                sheet.update({start + k: r for k, r in enumerate(renders[0]) if start + k in sheet_at})
                start += len(images)
                bar.update(len(images))
            if start == 0:
                raise ValueError(f"--driving: {drive.label} gave no frame")
        result = AnimationResult(out, start, drive.fps, size, held=drive.held, seconds=dict(clock.seconds),
                                 summary=clock.summary(start))  # fmt: skip
        if frames:
            result.frames_dir = frames_dir
            sources = torch.stack([j.source for j in jobs])  # [faces, 3, S, S]
            result.source_png = _save_grid([sources], out.with_name(out.stem + "_source.png"))
            result.sheet = _save_sheet(jobs[0].source, sheet, drive.frames, out.with_name(out.stem + "_sheet.png"))
        return result

    def _render_job(self, job: FaceJob, chunk: tuple[np.ndarray | None, np.ndarray], start: int) -> torch.Tensor:
        """One face's renders ``[n, 3, S, S]`` in [-1, 1] (CPU) of a chunk of driving frames starting at ``start``."""
        codes, cameras = job.chunk(*chunk, start, self.codes)
        planes = self.model.generate_triplane(job.features, codes)  # [n, 3, C, P, P]
        return self.model.render(planes, cameras.to(self.device)).image.float().clamp(-1, 1).cpu()

    def _compose(self, jobs: list[FaceJob], crops: list[np.ndarray], settings: AnimationSettings) -> list[np.ndarray]:
        """Per frame: every face pasted into the photo, or the crops side by side (resized to ``video_size``)."""
        import cv2

        frames = []
        for t in range(len(crops[0])):
            if jobs[0].paste is not None:
                frame = None
                for job, crop in zip(jobs, crops, strict=True):
                    frame = job.paste(crop[t], into=frame)
            else:
                side = settings.video_size or self.size
                tiles = [c[t] if c.shape[1] == side else
                         cv2.resize(c[t], (side, side), interpolation=cv2.INTER_LANCZOS4) for c in crops]  # fmt: skip
                frame = np.concatenate(tiles, axis=1)
            frames.append(frame)
        return frames


def sheet_indices(length: int) -> list[int]:
    """Up to ``SHEET_COLUMNS`` frame indices spread evenly over ``length`` frames, first and last included."""
    n = min(length, SHEET_COLUMNS)
    return sorted({round(i * (length - 1) / max(n - 1, 1)) for i in range(n)})


def _write_pngs(images: list[np.ndarray], folder: Path, start: int) -> None:
    from PIL import Image

    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{start + k:05d}.png", compress_level=1)


def _save_grid(columns: list[torch.Tensor], path: Path) -> Path:
    from PIL import Image

    with replacing_file(path) as tmp:
        Image.fromarray(to_uint8(make_grid(columns))).save(tmp, format="PNG")
    return path


def _save_sheet(source: torch.Tensor, sheet: dict[int, torch.Tensor], driving: torch.Tensor | None, path: Path) -> Path:
    """Columns: the source crop, then the sampled output frames' crops; the driving frames above them, if given."""
    columns = [torch.stack(([torch.ones_like(source)] if driving is not None else []) + [source])]
    for t in sorted(sheet):
        top = [driving[t].float()] if driving is not None else []
        size = sheet[t].shape[-1]
        top = [torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                                               align_corners=False)[0] for x in top]  # fmt: skip
        columns.append(torch.stack(top + [sheet[t]]))
    return _save_grid(columns, path)
