"""Animation: ``python -m export3d.animate --checkpoint RUN --source IMAGE --out OUT.mp4 <driving>``.

The source is an image file (any common format, RGB / RGBA / greyscale, any size: centre-cropped to a
square and resized to the model's resolution; the model expects a face crop with the nose at the
centre, like its training data) or ``synthetic:ID`` (a synthetic test identity of the checkpoint's
run: its most frontal frame of clip 0). Exactly one driving signal:

- ``--driving FOLDER``: one clip folder of the on-disk format (``params.npz`` with ``expression [T, 64]``
  and ``camera [T, 25]``, plus optional frames: PNG/JPEG files or one mp4); each frame's expression
  and camera drive one output frame.
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
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from export3d.checkpoint import CheckpointError
from export3d.config import PRESETS
from export3d.data import TEST_IDENTITY_OFFSET, ClipFormatError, SyntheticClips, orbit_camera, orbit_camera_deg
from export3d.data.clips import IMAGE_SUFFIXES, _check_array, _check_cameras, _frame_files
from export3d.distributed import resolve_device
from export3d.evaluate import held_out_source, load_model
from export3d.images import load_image, make_grid, save_png, to_uint8
from export3d.model import Export3D


@dataclass
class Driving:
    codes: torch.Tensor  # [T or 1, code_dim]: one tri-plane per row
    cameras: torch.Tensor  # [T or 1, 25]; a single row of either is shared by every frame
    frames: torch.Tensor | None  # [T, 3, H, W] driving images for the sheet, when there are any
    label: str

    @property
    def length(self) -> int:
        return max(self.codes.shape[0], self.cameras.shape[0])


# ----------------------------------------------------------------------------------------------- inputs
def synthetic_clip(spec: str, flag: str, meta: dict, resolution: int) -> tuple[SyntheticClips, int]:
    """``synthetic:ID[:CLIP]`` -> (the run's synthetic test split, clip index)."""
    parts = spec.split(":")[1:]
    try:
        number, clip = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        if len(parts) > 2:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"{flag}: expected synthetic:ID or synthetic:ID:CLIP with integers, got {spec!r}") from None
    source = held_out_source(meta, "synthetic", resolution)
    ids = sorted({c.identity for c in source.clips})
    identity = number if number >= TEST_IDENTITY_OFFSET else (ids[number] if 0 <= number < len(ids) else None)
    per = source.config.clips_per_identity
    if identity not in ids or not 0 <= clip < per:
        raise ValueError(f"{flag}: {spec!r} is not in the checkpoint's synthetic test split: identities "
                         f"0..{len(ids) - 1} (or {ids[0]}..{ids[-1]}), clips 0..{per - 1}")  # fmt: skip
    return source, ids.index(identity) * per + clip


def load_source(spec: str, meta: dict, resolution: int) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``--source`` -> (image ``[3, H, W]``, its beta ``[64]`` or None, description)."""
    if spec.startswith("synthetic:"):
        source, clip = synthetic_clip(spec, "--source", meta, resolution)
        keys = [source.key(clip, f) for f in range(source.clips[clip].frames)]
        frame = int(source.heads.pose(keys).abs().sum(1).argmin())  # the most frontal frame of the clip
        data = source.load([(clip, [frame])])[0]
        return data["image"][0], data["beta"][0], f"{source.clips[clip].name} frame {frame}"
    try:
        return load_image(spec, resolution), None, spec
    except (FileNotFoundError, ValueError) as exc:
        raise type(exc)(f"--source: {exc}") from exc


def load_clip_folder(folder: str | Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One on-disk clip folder -> beta ``[T, 64]``, camera ``[T, 25]``, frames ``[T, 3, H, W]`` or None.

    The parameters are validated like ``ClipFolder`` does (``ClipFormatError`` naming the file); frames are
    optional (they only feed the contact sheet) but, when present, must be one per parameter row.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--driving: {folder} is not a folder (expected a clip folder or synthetic:ID)")
    if (folder / "manifest.json").is_file():
        raise ClipFormatError(folder, "this is a dataset root (manifest.json); pass one clip folder inside it")
    path = folder / "params.npz"
    if not path.is_file():
        raise ClipFormatError(path, "missing params.npz (a clip folder holds expression [T, 64] and camera [T, 25])")
    try:
        with np.load(path, allow_pickle=False) as npz:
            rows = npz["expression"].shape[0] if "expression" in npz.files and npz["expression"].ndim else 0
            beta = _check_array(path, npz, "expression", 64, rows)
            camera = _check_array(path, npz, "camera", 25, rows)
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, ClipFormatError):
            raise
        raise ClipFormatError(path, f"cannot read: {exc}") from exc
    if rows == 0:
        raise ClipFormatError(path, "'expression' has no rows")
    _check_cameras(path, camera)
    files, videos = _frame_files(folder), sorted(folder.glob("*.mp4"))
    frames = None
    if files:
        if len(files) != rows:
            raise ClipFormatError(folder, f"frame/param count mismatch: {len(files)} image files "
                                          f"({'/'.join(IMAGE_SUFFIXES)}) but params.npz has {rows} rows")  # fmt: skip
        try:
            frames = torch.stack([load_image(f, resolution) for f in files])
        except ValueError as exc:
            raise ClipFormatError(folder, str(exc)) from exc
    elif videos:
        try:
            pixels = _read_video(videos[0])
        except (OSError, RuntimeError) as exc:
            raise ClipFormatError(videos[0], f"cannot read video: {exc}") from exc
        if len(pixels) != rows:
            raise ClipFormatError(videos[0], f"frame/param count mismatch: video has {len(pixels)} frames, "
                                             f"params.npz has {rows} rows")  # fmt: skip
        frames = torch.stack([_resize(p, resolution) for p in pixels])
    return torch.from_numpy(beta), torch.from_numpy(camera), frames


def _read_video(path: Path) -> list[np.ndarray]:
    import imageio.v2 as iio

    with iio.get_reader(path, "ffmpeg") as reader:
        return [np.asarray(frame)[..., :3] for frame in reader]


def _resize(pixels: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``[h, w, 3]`` -> ``[3, size, size]`` in [-1, 1] (centre crop + Lanczos, like load_image)."""
    im = Image.fromarray(pixels)
    side = min(im.size)
    left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(im).copy()).movedim(-1, 0).float() / 127.5 - 1


# ----------------------------------------------------------------------------------------------- driving signals
def orbit_cameras(frames: int, yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """A closed Lissajous sweep starting frontal: yaw = A sin(2 pi t), pitch = B sin(4 pi t). -> [T, 25]."""
    t = torch.arange(frames, dtype=torch.float64) / frames
    yaw = math.radians(yaw_deg) * torch.sin(2 * math.pi * t)
    pitch = math.radians(pitch_deg) * torch.sin(4 * math.pi * t)
    return orbit_camera(yaw, pitch)


@torch.no_grad()
def build_driving(args: argparse.Namespace, model: Export3D, meta: dict, beta: torch.Tensor) -> Driving:
    """The codes and cameras of every output frame. ``beta [64]``: the source's own expression."""
    H, device = model.config.image_size, next(model.parameters()).device
    if args.driving is not None and args.driving.startswith("synthetic:"):
        source, clip = synthetic_clip(args.driving, "--driving", meta, H)
        frames = range(min(source.clips[clip].frames, args.max_frames or sys.maxsize))
        data = source.load([(clip, list(frames))])[0]
        betas, cameras, images, label = data["beta"], data["camera"], data["image"], source.clips[clip].name
    elif args.driving is not None:
        betas, cameras, images = load_clip_folder(args.driving, H)
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


# ----------------------------------------------------------------------------------------------- rendering
@torch.no_grad()
def render_frames(model: Export3D, source: torch.Tensor, driving: Driving, batch_size: int):
    """Yield output chunks ``[n, 3, H, W]`` in [-1, 1]; one tri-plane per expression, rendered per camera."""
    device = next(model.parameters()).device
    src = source[None].to(device)  # [1, 3, H, W]
    cams = driving.cameras.to(device)
    shared = model.generate_triplane(src, driving.codes) if driving.codes.shape[0] == 1 else None  # [1, 3, C, P, P]
    for start in range(0, driving.length, batch_size):
        stop = min(start + batch_size, driving.length)
        cam = cams[start:stop] if cams.shape[0] > 1 else cams.expand(stop - start, -1)  # [n, 25]
        if shared is None:
            triplane = model.generate_triplane(src.expand(stop - start, -1, -1, -1), driving.codes[start:stop])
        else:
            triplane = shared
        yield model.render(triplane, cam).image.float().clamp(-1, 1).cpu()


def _video_frame(image: torch.Tensor, size: int) -> np.ndarray:
    pixels = to_uint8(image)  # [H, W, 3]
    if pixels.shape[0] != size:
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS))
    return pixels


def animate(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out: {out} must end in .mp4 (H.264 video)")
    device = resolve_device(args.device)
    model, meta, folder = load_model(args.checkpoint, device, args.preset, args.resolution)
    H = model.config.image_size
    size = args.video_size or H
    if size % 16:
        raise ValueError(f"--video-size: {size} must be a multiple of 16 (H.264 macroblocks)")
    image, beta, source_label = load_source(args.source, meta, H)
    if beta is None and (args.orbit or args.basis is not None):
        print("note: the source is an image: using the neutral expression beta = 0 (no 3DMM fitter ships here)")
        beta = torch.zeros(model.config.expression_dim)
    driving = build_driving(args, model, meta, beta if beta is not None else torch.zeros(model.config.expression_dim))
    T = driving.length
    sheet_idx = sorted({round(i * (T - 1) / max(min(T, 8) - 1, 1)) for i in range(min(T, 8))})
    sheet = {}
    frames_dir = out.with_name(out.stem + "_frames")
    out.parent.mkdir(parents=True, exist_ok=True)
    import imageio.v2 as iio

    writer = iio.get_writer(out, format="FFMPEG", mode="I", fps=args.fps, codec="libx264", pixelformat="yuv420p",
                            macro_block_size=16, quality=8)  # fmt: skip
    try:
        index = 0
        with tqdm(total=T, desc="frames", unit="frame", disable=args.quiet) as bar:
            for chunk in render_frames(model, image, driving, args.batch_size):
                for frame in chunk:
                    writer.append_data(_video_frame(frame, size))
                    if args.frames:
                        save_png(frame, frames_dir / f"{index:05d}.png")
                    if index in sheet_idx:
                        sheet[index] = frame
                    index += 1
                bar.update(chunk.shape[0])
    finally:
        writer.close()
    result = {"video": str(out), "frames": T, "size": size, "fps": args.fps, "source": source_label,
              "driving": driving.label, "checkpoint": str(folder)}  # fmt: skip
    if args.frames:
        # Columns: the source (below a blank when there is a driving row), then the sampled frames
        # (driving image above the output). Each column is [rows, 3, H, W].
        top = [] if driving.frames is None else [torch.ones(3, H, H)]
        columns = [torch.stack([*top, image])]
        for i in sheet_idx:
            columns.append(torch.stack(([] if driving.frames is None else [driving.frames[i]]) + [sheet[i]]))
        result["sheet"] = str(save_png(make_grid(columns), out.with_name(out.stem + "_sheet.png")))
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
    mode.add_argument("--driving", help="a clip folder (params.npz + frames) or synthetic:ID[:CLIP]")
    mode.add_argument("--orbit", action="store_true", help="the source's expression, camera sweeping yaw and pitch")
    mode.add_argument("--basis", type=int, metavar="K", help="scale coefficient K (1..n) of the learned basis")
    p.add_argument("--range", type=float, nargs=2, metavar=("A", "B"), help="--basis: from A to B (Fig. 9: 1 10)")
    p.add_argument("--basis-mode", choices=("scale", "set"), default="scale",
                   help="--basis: scale lambda_K by the factor (paper), or set lambda_K to it")  # fmt: skip
    p.add_argument("--num-frames", type=int, default=48, help="frames of --orbit / --basis (default 48)")
    p.add_argument("--max-frames", type=int, help="--driving: use at most this many frames")
    p.add_argument("--yaw", type=float, default=30.0, help="--orbit: yaw amplitude in degrees (default 30)")
    p.add_argument("--pitch", type=float, default=15.0, help="--orbit: pitch amplitude in degrees (default 15)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--video-size", type=int, help="resize video frames to this side (multiple of 16; default: model's)")
    p.add_argument("--frames", action="store_true", help="also write PNG frames and a contact sheet")
    p.add_argument("--batch-size", type=int, default=8, help="frames rendered per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="fail unless the checkpoint holds this preset")
    p.add_argument("--resolution", type=int, help="fail unless the checkpoint's model has this image size")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.basis is not None) != (args.range is not None):
        parser.error("--basis K needs --range A B, and --range is only for --basis")
    if min(args.num_frames, args.batch_size) < 1 or args.fps <= 0:
        parser.error("--num-frames and --batch-size must be >= 1 and --fps > 0")
    try:
        animate(args)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"export3d.animate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
