"""Animation: ``python -m export3d.animate --checkpoint RUN --source PHOTO --driving VIDEO --out OUT.mp4``.

The source is a photo (any size, EXIF orientation, colour mode): every face is found (a whole-image detector, then
MediaPipe's landmarker on a crop around each face) and cut exactly as ``prepare`` cuts a video frame; ``--face N``
picks one (left to right; the largest by default, the others listed), ``--all-faces`` animates them all with the
same driver. ``--no-align`` uses the image as it is (centre square: an image that already is a face crop). Or
``synthetic:ID`` (a held-out synthetic identity of the checkpoint's run: its most frontal frame of clip 0).

Exactly one driving signal:

- ``--driving VIDEO``: a real video (mp4, mov, ...) or a folder of frame images. Its face is tracked (small faces
  too), and every frame gives an expression (52 MediaPipe blendshapes) and a camera (PnP head pose), filtered
  (One Euro; ``--smooth 0`` turns it off). Frames without a face take the nearest frame's signals, so the output
  has one frame per driving frame, at the driver's frame rate, with the driver's sound. The checkpoint must take
  52-d expressions (trained with ``--expression-source landmarker`` or on clips from ``prepare``).
- ``--driving FOLDER``: a clip folder of the on-disk format (``params.npz`` with ``expression [T, E]`` and
  ``camera [T, 25]``, optional frames); ``--driving synthetic:ID[:CLIP]``: a held-out synthetic clip.
- ``--orbit``: the source's own expression while the camera sweeps yaw and pitch.
- ``--basis K --range A B``: paper Fig. 9: coefficient lambda_K of the learned basis of the source's expression
  scaled by a factor from A to B (``--basis-mode set`` sets it instead), frontal camera.

``--motion relative`` (the default with a photo source) adds the driver's change from its reference frame
(``--reference-frame``) to the source's own expression and head pose; ``absolute`` (the default otherwise) uses the
driver's as they are (the paper's reenactment). A model of 64-d 3DMM expressions cannot read a photo's expression
here (no 3DMM fitter ships): the source expression is then the neutral one, zeros, and the command says so.

Output: frames of the photo with each face pasted back (``--max-size`` caps the longer side; ``--no-paste-back``
writes the model's crops instead, ``--video-size`` px), H.264 through imageio-ffmpeg. ``--frames`` also writes
every frame as PNG into ``OUT_frames/``, the aligned source crop as ``OUT_source.png`` and a contact sheet
``OUT_sheet.png``. The last line gives the time per frame of each stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from export3d.animation.animator import AnimationResult, AnimationSettings, Animator, StageClock
from export3d.animation.inputs import (
    basis_codes,
    image_source,
    is_driving_video,
    load_clip_folder,
    orbit_cameras,
    synthetic_driver,
    synthetic_source,
)
from export3d.animation.parts import Drive, Face
from export3d.cameras import orbit_camera_deg
from export3d.model.config import PRESETS
from export3d.utils.cli import add_debug_flag, run_command
from export3d.utils.outputs import check_output_file, check_output_folder

MAX_VIDEO_SIZE = 4096
DEFAULT_FPS = 25.0


# ----------------------------------------------------------------------------------------------- sources
def read_faces(args: argparse.Namespace, animator: Animator, settings: AnimationSettings) -> list[Face]:
    """``--source`` -> the faces to animate: a photo's (aligned), a synthetic identity, or an image as it is."""
    E, S = animator.model.config.expression_dim, animator.size
    if args.source.startswith("synthetic:"):
        image, expression, camera, label = synthetic_source(args.source, animator.meta, S)
        return [Face(image, expression, camera, None, label)]
    if args.no_align:
        print("note: --no-align: the image is used as it is (centre square); its expression and camera are not read: "
              "the neutral expression (zeros) and the frontal camera stand in for them")
        frontal = orbit_camera_deg(0.0).double().numpy()
        return [Face(image_source(args.source, S), np.zeros(E), frontal, None, f"{args.source} (not aligned)")]
    faces, notes = animator.photo_faces(args.source, settings)
    for note in notes:
        print(f"note: {note}")
    return faces


# ----------------------------------------------------------------------------------------------- drivers
def read_drive(args: argparse.Namespace, animator: Animator, settings: AnimationSettings) -> Drive:
    """The driving signal of ``--driving`` / ``--orbit`` / ``--basis``."""
    model, S, fps = animator.model, animator.size, args.fps or DEFAULT_FPS
    if args.orbit:
        cameras = orbit_cameras(args.num_frames, args.yaw, args.pitch).double().numpy()
        return Drive(fps, "orbit", cameras=cameras, codes_of=lambda face: animator.codes(face.expression[None]))
    if args.basis is not None:
        values = torch.linspace(args.range[0], args.range[1], args.num_frames).tolist()

        def sweep(face: Face) -> torch.Tensor:
            expression = torch.as_tensor(face.expression, dtype=torch.float32).to(animator.device)
            codes, note = basis_codes(model, expression, args.basis, values, args.basis_mode)
            print(note)
            return codes

        return Drive(fps, "basis", cameras=orbit_camera_deg(0.0)[None].double().numpy(), codes_of=sweep,
                     length=args.num_frames)  # fmt: skip
    if args.driving.startswith("synthetic:"):
        expression, cameras, frames, label = synthetic_driver(args.driving, animator.meta, S, args.max_frames)
        return Drive(fps, label, expression=expression, cameras=cameras, frames=frames)
    if is_driving_video(args.driving):
        return animator.video_drive(args.driving, settings, args.fps)
    beta, cameras, frames = load_clip_folder(args.driving, S, model.config.expression_dim)
    keep = slice(0, args.max_frames)  # max_frames None keeps every frame
    return Drive(fps, str(args.driving), expression=beta[keep].double().numpy(), cameras=cameras[keep].double().numpy(),
                 frames=None if frames is None else frames[keep])  # fmt: skip


# ----------------------------------------------------------------------------------------------- the run
def check_destinations(args: argparse.Namespace) -> None:
    """Every output path is checked before the model is loaded: a bad destination fails in a second."""
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out: {out} must end in .mp4 (H.264 video)")
    size = args.video_size
    if size is not None and (size % 16 or not 16 <= size <= MAX_VIDEO_SIZE):
        raise ValueError(f"--video-size: {size} must be a multiple of 16 (H.264 macroblocks) from 16 to "
                         f"{MAX_VIDEO_SIZE}")  # fmt: skip
    check_output_file(out, "--out")
    if args.frames:
        check_output_folder(out.with_name(out.stem + "_frames"), "--frames")
        for suffix in ("_sheet.png", "_source.png"):
            check_output_file(out.with_name(out.stem + suffix), "--frames")


def settings_of(args: argparse.Namespace) -> AnimationSettings:
    photo = not args.source.startswith("synthetic:") and not args.no_align
    motion = args.motion or ("relative" if photo else "absolute")
    return AnimationSettings(motion=motion, reference_frame=args.reference_frame, smooth=args.smooth,
                             paste_back=photo and not args.no_paste_back, max_size=args.max_size, face=args.face,
                             all_faces=args.all_faces, batch_size=args.batch_size, max_frames=args.max_frames,
                             video_size=args.video_size)  # fmt: skip


def animate(args: argparse.Namespace) -> AnimationResult:
    check_destinations(args)
    settings = settings_of(args)
    with Animator(args.checkpoint, args.device, args.preset, args.resolution, progress=not args.quiet) as animator:
        clock = StageClock()
        with clock("detection + landmarks"):
            faces = read_faces(args, animator, settings)
            drive = read_drive(args, animator, settings)
        result = animator.run(faces, drive, args.out, settings, args.frames, clock)
    held = f"; {result.held} driving frames without a face took their nearest's signals" if result.held else ""
    extra = f"; PNG frames in {result.frames_dir}/, {result.source_png}, {result.sheet}" if args.frames else ""
    print(f"wrote {result.video} ({result.frames} frames, {result.size[1]}x{result.size[0]}, {result.fps:g} fps, "
          f"H.264) from {', '.join(f.label for f in faces)} driven by {drive.label}{held}{extra}")
    print(result.summary)
    return result


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export3d.animate", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="a run folder, its checkpoints/ folder or a step_* folder")
    p.add_argument("--source", required=True, help="a photo (faces found and aligned) or synthetic:ID")
    p.add_argument("--out", required=True, help="output video, OUT.mp4")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--driving", help="a video (mp4, mov, ...) or folder of frames, a clip folder (params.npz + "
                                        "frames), or synthetic:ID[:CLIP]")
    mode.add_argument("--orbit", action="store_true", help="the source's expression, camera sweeping yaw and pitch")
    mode.add_argument("--basis", type=int, metavar="K", help="scale coefficient K (1..n) of the learned basis")
    src = p.add_argument_group("source")
    src.add_argument("--face", type=int, metavar="N", help="the photo's face N (0 = leftmost; default: the largest)")
    src.add_argument("--all-faces", action="store_true", help="animate every face of the photo with the same driver")
    src.add_argument("--no-align", action="store_true", help="use the image as it is (centre square), no face search")
    drv = p.add_argument_group("driver")
    drv.add_argument("--motion", choices=("relative", "absolute"),
                     help="relative: the driver's change from its reference frame applied to the source (default with "
                          "a photo); absolute: the driver's expression and camera as they are (default otherwise)")
    drv.add_argument("--reference-frame", type=int, default=0, metavar="K", help="relative motion's reference frame")
    drv.add_argument("--smooth", type=float, default=1.0, help="filtering of a video's signals: 0 off, 1 the tuned One "
                                                               "Euro filters (default), 2 twice as smooth")
    drv.add_argument("--max-frames", type=int, help="use at most this many driving frames")
    drv.add_argument("--fps", type=float, help=f"video frame rate (default: the driving video's, else {DEFAULT_FPS:g})")
    sweep = p.add_argument_group("orbit and basis")
    sweep.add_argument("--range", type=float, nargs=2, metavar=("A", "B"), help="--basis: from A to B (Fig. 9: 1 10)")
    sweep.add_argument("--basis-mode", choices=("scale", "set"), default="scale",
                       help="--basis: scale lambda_K by the factor (paper), or set lambda_K to it")  # fmt: skip
    sweep.add_argument("--num-frames", type=int, default=48, help="frames of --orbit / --basis (default 48)")
    sweep.add_argument("--yaw", type=float, default=30.0, help="--orbit: yaw amplitude in degrees (default 30)")
    sweep.add_argument("--pitch", type=float, default=15.0, help="--orbit: pitch amplitude in degrees (default 15)")
    outp = p.add_argument_group("output")
    outp.add_argument("--no-paste-back", action="store_true", help="write the model's crops, not the photo's frames")
    outp.add_argument("--max-size", type=int, default=1280, help="paste-back: longer side of the frames at most")
    outp.add_argument("--video-size", type=int, help="crops: side of the video's frames (a multiple of 16 up to "
                                                     f"{MAX_VIDEO_SIZE}; default: the model's image size)")  # fmt: skip
    outp.add_argument("--frames", action="store_true", help="also write PNG frames, the source crop and a sheet")
    run = p.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=8, help="frames rendered per forward pass")
    run.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    run.add_argument("--threads", type=int, help="torch intra-op threads (default: PyTorch's, one per core)")
    run.add_argument("--preset", choices=sorted(PRESETS), help="fail unless the checkpoint holds this preset")
    run.add_argument("--resolution", type=int, help="fail unless the checkpoint's model has this image size")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.basis is not None) != (args.range is not None):
        parser.error("--basis K needs --range A B, and --range is only for --basis")
    if min(args.num_frames, args.batch_size) < 1 or (args.fps is not None and args.fps <= 0):
        parser.error("--num-frames and --batch-size must be >= 1 and --fps > 0")
    for flag, value in (("--max-frames", args.max_frames), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return run_command("export3d.animate", animate, args, user_errors=(ValueError, OSError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
