"""The Gradio page of the web demo: inputs, options, outputs and the edit sliders, wired to :class:`Demo`.

Errors: a handler's user error (a bad input: ``ValueError``, ``OSError``, ``RuntimeError`` such as ``VideoError``,
a missing extra) or device error is shown in the page as the command line prints it
(:func:`export3d.utils.cli.report_error`: ``export3d.app: error: photo: cannot read ... as an image``), in a
message that stays until it is closed, and the server's log gets the same lines; the server goes on serving. Any
other exception is a bug and is not caught here: Gradio logs its traceback (and shows a bare "Error").

Every event runs through one queue, one at a time (``default_concurrency_limit=1``): the model, the face tools
and the caches are used by one request at a time. The edit sliders send their last value only
(``trigger_mode="always_last"``) and re-render from the cached tri-plane (:meth:`Demo.edit`).
"""

from __future__ import annotations

import functools
import html
import io
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from export3d.animation.animator import AnimationSettings
from export3d.app.engine import FACTOR_RANGE, PITCH_RANGE, YAW_RANGE, Demo
from export3d.utils.cli import is_device_error, report_error
from export3d.utils.extras import MissingExtraError

PROG = "export3d.app"
USER_ERRORS = (ValueError, OSError, RuntimeError, MissingExtraError)  # as export3d.animate, plus a missing extra
DISPLAY = 256  # the model's crops are shown at least this tall (they are 32 to 256 px)
PREVIEW = 1024  # the photo is shown with its longer side at most this long


def error_text(exc: BaseException, debug: bool = False) -> str | None:
    """The command line's message for ``exc`` (:func:`report_error`'s lines), or None when ``exc`` is a bug.

    ``debug`` prints the full traceback on the server's stderr (never into the page).
    """
    if not (is_device_error(exc) or isinstance(exc, USER_ERRORS)):
        return None
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    lines = io.StringIO()
    report_error(PROG, exc, file=lines)
    return lines.getvalue().rstrip("\n")


def shown_errors(debug: bool, uploads: Path | None = None) -> Callable[[Callable], Callable]:
    """A handler decorator: user and device errors become ``gr.Error`` with the command line's message, in which an
    uploaded file's path is shortened to its name (Gradio keeps it in ``uploads/<hash>/NAME``)."""
    import gradio as gr

    folder = re.compile(re.escape(str(uploads)) + r"/[^/\s]+/") if uploads is not None else None

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)  # keeps the signature: Gradio finds the gr.Progress parameter through it
        def run(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a bug (error_text None) is re-raised as it is
                text = error_text(exc, debug)
                if text is None:
                    raise
                print(text, file=sys.stderr)
                text = folder.sub("", text) if folder is not None else text
                raise gr.Error(html.escape(text).replace("\n", "<br>"), duration=None, print_exception=False) from exc

        return run

    return decorate


def enlarged(image: np.ndarray, height: int = DISPLAY) -> np.ndarray:
    """An image # [h, w, 3] uint8 resized (Lanczos) to ``height`` rows when it is smaller, for display."""
    from PIL import Image

    h, w = image.shape[:2]
    if h >= height:
        return image
    size = (max(1, round(w * height / h)), height)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def reduced(image: np.ndarray, longest: int = PREVIEW) -> np.ndarray:
    """An image # [h, w, 3] uint8 with its longer side brought down to ``longest`` (Lanczos) when it is longer."""
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) <= longest:
        return image
    scale = longest / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def face_index(value: float | None) -> int | None:
    """The face-index box: blank means the only or the largest face."""
    return None if value is None else int(value)


def build_page(demo: Demo, examples: dict[str, Path], max_frames: int | None, about: str, debug: bool = False,
               uploads: Path | None = None):  # fmt: skip
    """The page (a ``gr.Blocks``, queued); ``examples``: {"photo": path, "clip": path}; ``uploads``: Gradio's upload
    folder (its paths are shortened in error messages)."""
    import gradio as gr

    shown = shown_errors(debug, uploads)
    n = demo.n_basis

    def prepare(photo: str | None, face: float | None):
        """A new photo or face: its crop, sliders back to its own pose and expression, and its first view."""
        if photo is None:
            return None, None, "", *(gr.update() for _ in range(2 + n))
        source = demo.edit_source(photo, face_index(face))
        view = demo.edit(source, source.yaw, source.pitch)
        info = f"{source.note}\n" if source.note else ""
        preview = reduced(demo.photo(photo).photo)
        return (preview, enlarged(view.image), info + view.describe(), round(source.yaw), round(source.pitch),
                *([1.0] * n))  # fmt: skip

    def edit(photo: str | None, face: float | None, yaw: float, pitch: float, *factors: float):
        if photo is None:
            return None, "upload a photo (or pick the example) to edit it"
        view = demo.edit(demo.edit_source(photo, face_index(face)), yaw, pitch, factors)
        return enlarged(view.image), view.describe()

    tracker = gr.Progress(track_tqdm=True)  # also follows the animation API's tqdm bars (faces tracked, frames)

    def animate(photo, video, motion, reference, smooth, paste, face, all_faces, frames, progress=tracker):
        settings = AnimationSettings(motion=motion, reference_frame=int(reference or 0), smooth=float(smooth),
                                     paste_back=bool(paste), face=face_index(face), all_faces=bool(all_faces),
                                     max_frames=None if frames is None else int(frames))  # fmt: skip
        run = demo.animate(photo, video, settings, stage=lambda fraction, what: progress(fraction, desc=what))
        return str(run.result.video), enlarged(run.crops), run.figure, run.text

    with gr.Blocks(title="Export3D demo", analytics_enabled=False) as page:
        gr.Markdown(f"# Export3D: animate a portrait\n{about}")
        with gr.Row():
            with gr.Column():
                photo = gr.File(label="Source photo", type="filepath", elem_id="photo")
                gr.Examples([[str(examples["photo"])]], inputs=[photo],
                            label="Example photo (scikit-image's astronaut)")  # fmt: skip
                preview = gr.Image(label="Photo", interactive=False, height=260)
            with gr.Column():
                video = gr.File(label="Driving video (its sound is carried over)", type="filepath", elem_id="driving")
                gr.Examples([[str(examples["clip"])]], inputs=[video], label="Example clip (the astronaut rolled)")
                with gr.Accordion("Options", open=False):
                    motion = gr.Radio(["relative", "absolute"], value="relative", label="Motion (--motion)",
                                      info="relative: the driver's change from its reference frame, applied to the "
                                           "photo's own expression and pose; absolute: the driver's as they are")
                    reference = gr.Number(0, precision=0, minimum=0, label="Reference frame (--reference-frame)")
                    smooth = gr.Slider(0, 4, value=1, step=0.25, label="Smoothing (--smooth)",
                                       info="0 off, 1 the tuned One Euro filters, 2 twice as smooth")
                    paste = gr.Checkbox(True, label="Paste back into the photo (off: --no-paste-back, the crops)")
                    face = gr.Number(None, precision=0, minimum=0, label="Face index (--face)",
                                     info="0 is the leftmost face; blank: the only or the largest one")
                    all_faces = gr.Checkbox(False, label="All faces (--all-faces)")
                    frames = gr.Number(max_frames, precision=0, minimum=1,
                                       label="Driving frames at most (--max-frames)")  # fmt: skip
                button = gr.Button("Animate", variant="primary", elem_id="animate")
        with gr.Row():
            result = gr.Video(label="Animation", interactive=False, elem_id="animation")
            crop = gr.Image(label="Aligned source crop (what the model sees)", interactive=False, elem_id="crop")
            plot = gr.Plot(label="Driving signal", format="png", elem_id="signal")
        summary = gr.Textbox(label="Run", lines=3, interactive=False, elem_id="summary")
        gr.Markdown("## Edit without a driver\nNovel views (an orbit camera: yaw, pitch) and the learned expression "
                    "basis (paper Fig. 9: each slider scales the coefficient lambda_k of the photo's own expression). "
                    "The photo is encoded once; a view is rendered from the cached tri-plane.")  # fmt: skip
        with gr.Row():
            with gr.Column(scale=2):
                yaw = gr.Slider(*YAW_RANGE, value=0, step=1, label="Yaw (degrees)", elem_id="yaw")
                pitch = gr.Slider(*PITCH_RANGE, value=0, step=1, label="Pitch (degrees, positive: camera lower)",
                                  elem_id="pitch")  # fmt: skip
                view = gr.Image(label="Edited view", interactive=False, elem_id="edit-view", height=300)
                timing = gr.Textbox(label="Last edit", lines=2, interactive=False, elem_id="edit-time")
                reset = gr.Button("Back to the photo's own pose and expression")
            factors = []
            for half in (range(0, (n + 1) // 2), range((n + 1) // 2, n)):
                with gr.Column(scale=1, min_width=200):
                    factors += [gr.Slider(*FACTOR_RANGE, value=1, step=0.5, label=f"lambda_{k + 1} x",
                                          elem_id=f"basis-{k + 1}") for k in half]  # fmt: skip

        photo_outputs = [preview, view, timing, yaw, pitch, *factors]
        gr.on([photo.change, face.change, reset.click], shown(prepare), [photo, face], photo_outputs)
        gr.on([s.input for s in (yaw, pitch, *factors)], shown(edit), [photo, face, yaw, pitch, *factors],
              [view, timing], trigger_mode="always_last", show_progress="minimal")  # fmt: skip
        button.click(shown(animate), [photo, video, motion, reference, smooth, paste, face, all_faces, frames],
                     [result, crop, plot, summary])  # fmt: skip
    return page.queue(default_concurrency_limit=1)
