"""Animation: ``python -m export3d.animate --checkpoint RUN --source IMAGE --out OUT.mp4 <driving>``.

The source is an image file (any common format, RGB / RGBA / greyscale, any size: centre-cropped to a
square and resized to the model's resolution; the model expects a face crop with the nose at the
centre, like its training data) or ``synthetic:ID`` (a synthetic test identity of the checkpoint's
run: its most frontal frame of clip 0). Exactly one driving signal:

- ``--driving FOLDER``: one clip folder of the on-disk format (``params.npz`` with ``expression [T, E]``
  and ``camera [T, 25]``, plus optional frames: PNG/JPEG files or one mp4); each frame's expression
  and camera drive one output frame.
- ``--driving VIDEO``: a real video (mp4, mov, ...) or a folder of frame images without ``params.npz``: each
  frame's expression (52 MediaPipe blendshapes) and camera (PnP head pose) come from the per-frame pipeline
  of ``python -m export3d.data.prepare``; the checkpoint must take 52-d expressions (trained with
  ``--expression-source landmarker`` or on prepared clips). Frames without a face are dropped and counted.
- ``--driving synthetic:ID[:CLIP]``: a synthetic test clip; ID indexes the test identities (0, 1, ...)
  or is an identity itself (>= 1000000); CLIP defaults to 0.
- ``--orbit``: the source's own expression (a synthetic source's beta; for an image, the neutral
  expression beta = 0, since no 3DMM fitter ships here) while the camera sweeps yaw and pitch.
- ``--basis K --range A B``: paper Fig. 9: the coefficient lambda_K of the learned basis (K = 1..n, the
  paper's v_K) of the source's expression is scaled by a factor going from A to B (``--basis-mode set``
  sets lambda_K to the value instead), frontal camera.

The tri-plane is generated once per expression and rendered per camera (orbit: one tri-plane). The
video is H.264 (libx264, yuv420p) through imageio-ffmpeg; ``--frames`` also writes every frame as PNG
into ``OUT_frames/`` and a contact sheet ``OUT_sheet.png`` (driving row, if any, above the output row).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from export3d.cameras import orbit_camera_deg
from export3d.evaluation.animation import (
    Driving,
    is_driving_video,
    load_clip_folder,
    load_driving_video,
    load_source,
    orbit_cameras,
    render_frames,
    synthetic_clip,
    video_frame,
)
from export3d.evaluation.loading import load_model
from export3d.model import Export3D
from export3d.model.config import PRESETS
from export3d.utils.cli import add_debug_flag, run_command
from export3d.utils.distributed import resolve_device
from export3d.utils.images import make_grid, save_png
from export3d.utils.outputs import check_output_file, check_output_folder, replacing_file, replacing_folder

MAX_VIDEO_SIZE = 4096


# ----------------------------------------------------------------------------------------------- driving
@torch.no_grad()
def build_driving(args: argparse.Namespace, model: Export3D, meta: dict, beta: torch.Tensor) -> Driving:
    """The codes and cameras of every output frame. ``beta [64]``: the source's own expression."""
    H, device = model.config.image_size, next(model.parameters()).device
    if args.driving is not None and args.driving.startswith("synthetic:"):
        source, clip = synthetic_clip(args.driving, "--driving", meta, H)
        frames = range(min(source.clips[clip].frames, args.max_frames or sys.maxsize))
        data = source.load([(clip, list(frames))])[0]
        betas, cameras, images, label = data["beta"], data["camera"], data["image"], source.clips[clip].name
    elif args.driving is not None and is_driving_video(args.driving):
        betas, cameras, images, record = load_driving_video(args.driving, H, model.config.expression_dim,
                                                            args.max_frames, progress=not args.quiet)  # fmt: skip
        label = f"{args.driving} ({record['frames']} frames with a face, {record['dropped_no_face']} without dropped)"
    elif args.driving is not None:
        betas, cameras, images = load_clip_folder(args.driving, H, model.config.expression_dim)
        keep = slice(0, args.max_frames)  # max_frames None keeps every frame
        betas, cameras, images = betas[keep], cameras[keep], None if images is None else images[keep]
        label = str(args.driving)
    elif args.orbit:
        cameras = orbit_cameras(args.num_frames, args.yaw, args.pitch)
        return Driving(model.encode_expression(beta[None].to(device)), cameras, None, "orbit")
    else:
        lebs = model.lebs
        if model.config.expression_encoder != "lebs":
            raise ValueError("--basis: this checkpoint's expression encoder is 'direct' (no learned basis)")
        n = lebs.n_basis
        if not 1 <= args.basis <= n:
            raise ValueError(f"--basis: K must be in 1..{n} (the paper's v_1..v_{n}), got {args.basis}")
        coefficients = lebs.coefficients(beta[None].to(device))  # [1, n]
        values = torch.linspace(args.range[0], args.range[1], args.num_frames).tolist()
        rows = [lebs.scale_coefficients(coefficients, args.basis - 1, v) if args.basis_mode == "scale"
                else coefficients.index_fill(1, torch.tensor([args.basis - 1], device=device), v)
                for v in values]  # fmt: skip
        k, (a, b) = args.basis, args.range
        print(f"basis v_{k}: lambda_{k} of the source expression = {coefficients[0, k - 1].item():+.4f}; "
              f"{args.basis_mode} {a:g} -> {b:g}")  # fmt: skip
        return Driving(lebs.from_coefficients(torch.cat(rows)), orbit_camera_deg(0.0, 0.0)[None], None, "basis")
    return Driving(model.encode_expression(betas.to(device)), cameras, images, label)


def animate(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out: {out} must end in .mp4 (H.264 video)")
    size = args.video_size
    if size is not None and (size % 16 or not 16 <= size <= MAX_VIDEO_SIZE):
        raise ValueError(f"--video-size: {size} must be a multiple of 16 (H.264 macroblocks) from 16 to "
                         f"{MAX_VIDEO_SIZE}")  # fmt: skip
    frames_dir, sheet_path = out.with_name(out.stem + "_frames"), out.with_name(out.stem + "_sheet.png")
    check_output_file(out, "--out")  # before the model is even loaded: a bad destination fails in a second
    if args.frames:
        check_output_folder(frames_dir, "--frames")
        check_output_file(sheet_path, "--frames")
    device = resolve_device(args.device)
    model, meta, folder = load_model(args.checkpoint, device, args.preset, args.resolution)
    H = model.config.image_size
    size = args.video_size or H
    image, beta, source_label = load_source(args.source, meta, H)
    if beta is None and (args.orbit or args.basis is not None):
        print("note: the source is an image: using the neutral expression beta = 0 (no 3DMM fitter ships here)")
        beta = torch.zeros(model.config.expression_dim)
    driving = build_driving(args, model, meta, beta if beta is not None else torch.zeros(model.config.expression_dim))
    T = driving.length
    sheet_idx = sorted({round(i * (T - 1) / max(min(T, 8) - 1, 1)) for i in range(min(T, 8))})
    sheet = {}
    import imageio.v2 as iio

    # The video and the frames go to temporary names and replace the destinations only once all is written.
    with contextlib.ExitStack() as stack:
        video_tmp = stack.enter_context(replacing_file(out))
        frames_tmp = stack.enter_context(replacing_folder(frames_dir)) if args.frames else None
        writer = iio.get_writer(video_tmp, format="FFMPEG", mode="I", fps=args.fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=16, quality=8)  # fmt: skip
        with contextlib.closing(writer):
            index = 0
            with tqdm(total=T, desc="frames", unit="frame", disable=args.quiet) as bar:
                for chunk in render_frames(model, image, driving, args.batch_size):
                    for frame in chunk:
                        writer.append_data(video_frame(frame, size))
                        if frames_tmp is not None:
                            save_png(frame, frames_tmp / f"{index:05d}.png")
                        if index in sheet_idx:
                            sheet[index] = frame
                        index += 1
                    bar.update(chunk.shape[0])
        if index != T or index == 0:
            raise RuntimeError(f"--out: rendered {index} of {T} frames; nothing was written")
    result = {"video": str(out), "frames": T, "size": size, "fps": args.fps, "source": source_label,
              "driving": driving.label, "checkpoint": str(folder)}  # fmt: skip
    if args.frames:
        # Columns: the source (below a blank when there is a driving row), then the sampled frames
        # (driving image above the output). Each column is [rows, 3, H, W].
        top = [] if driving.frames is None else [torch.ones(3, H, H)]
        columns = [torch.stack([*top, image])]
        for i in sheet_idx:
            columns.append(torch.stack(([] if driving.frames is None else [driving.frames[i]]) + [sheet[i]]))
        result["sheet"] = str(save_png(make_grid(columns), sheet_path))
        result["frames_dir"] = str(frames_dir)
    extra = f"; PNG frames in {frames_dir}/, contact sheet {result['sheet']}" if args.frames else ""
    print(f"wrote {out} ({T} frames, {size}x{size}, {args.fps:g} fps, H.264) from {source_label} driven by "
          f"{driving.label}{extra}")  # fmt: skip
    return result


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export3d.animate", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="a run folder, its checkpoints/ folder or a step_* folder")
    p.add_argument("--source", required=True, help="an image file (a face crop, nose at the centre) or synthetic:ID")
    p.add_argument("--out", required=True, help="output video, OUT.mp4")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--driving", help="a clip folder (params.npz + frames), a video (mp4, mov, ...) or folder of "
                                        "frames, or synthetic:ID[:CLIP]")
    mode.add_argument("--orbit", action="store_true", help="the source's expression, camera sweeping yaw and pitch")
    mode.add_argument("--basis", type=int, metavar="K", help="scale coefficient K (1..n) of the learned basis")
    p.add_argument("--range", type=float, nargs=2, metavar=("A", "B"), help="--basis: from A to B (Fig. 9: 1 10)")
    p.add_argument("--basis-mode", choices=("scale", "set"), default="scale",
                   help="--basis: scale lambda_K by the factor (paper), or set lambda_K to it")  # fmt: skip
    p.add_argument("--num-frames", type=int, default=48, help="frames of --orbit / --basis (default 48)")
    p.add_argument("--max-frames", type=int, help="--driving: use at most this many frames")
    p.add_argument("--yaw", type=float, default=30.0, help="--orbit: yaw amplitude in degrees (default 30)")
    p.add_argument("--pitch", type=float, default=15.0, help="--orbit: pitch amplitude in degrees (default 15)")
    p.add_argument("--fps", type=float, default=25.0, help="video frame rate (default 25)")
    p.add_argument("--video-size", type=int, help="resize video frames to this side (a multiple of 16 up to "
                                                  f"{MAX_VIDEO_SIZE}; default: the model's image size)")  # fmt: skip
    p.add_argument("--frames", action="store_true", help="also write PNG frames and a contact sheet")
    p.add_argument("--batch-size", type=int, default=8, help="frames rendered per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: PyTorch's, one per core)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="fail unless the checkpoint holds this preset")
    p.add_argument("--resolution", type=int, help="fail unless the checkpoint's model has this image size")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.basis is not None) != (args.range is not None):
        parser.error("--basis K needs --range A B, and --range is only for --basis")
    if min(args.num_frames, args.batch_size) < 1 or args.fps <= 0:
        parser.error("--num-frames and --batch-size must be >= 1 and --fps > 0")
    for flag, value in (("--max-frames", args.max_frames), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Exit status 2 for a bad input (CheckpointError is a RuntimeError), 4 for a device or kernel failure such
    # as CUDA out of memory (export3d.utils.cli), reported with its type; --debug adds the traceback.
    return run_command("export3d.animate", animate, args, user_errors=(ValueError, OSError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
