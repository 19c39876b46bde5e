"""Real videos -> training clips: ``python -m export3d.data.prepare VIDEOS_OR_FOLDERS --out CLIPS``.

For every video (mp4 / mov / ... or a folder of frame images; folders are searched recursively) it tracks the
face with MediaPipe's face landmarker (:mod:`export3d.data.landmarker`), cuts a square crop by translation and
scale only, smoothed over time (:mod:`export3d.data.crop`), fits the head pose by PnP against the canonical
face mesh and writes it as the EG3D 25-value camera (:mod:`export3d.data.headpose`), and takes the 52
blendshapes as the expression vector. Output: the clip-folder format of :mod:`export3d.data.clips` plus, per
clip, ``frame_index [T]`` in ``params.npz`` and ``clip.json``; ``manifest.json`` records the expression size
(``expression_dim``, read by training) and every kept frame's index in its video.

``--from-deep3d FOLDER`` instead turns Deep3DFaceRecon coefficient files into clips (:mod:`export3d.data.deep3d`):
beta = the 64 expression coefficients, no face model needed.

Robustness: frames without a face are dropped and counted; a clip left with fewer than ``--min-frames`` frames
is skipped with the reason; an unreadable video is reported by name and the run goes on. Each clip is written
to a temporary folder and renamed when complete, the manifest is rewritten atomically after every video, and a
rerun skips the videos already done (clips present, or skipped before).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export3d.data.clips import FORMAT, VERSION
from export3d.data.deep3d import Deep3DFormatError
from export3d.data.frames import VideoError, is_video

SPLITS_BY = ("identity", "clip", "none")


@dataclass(frozen=True)
class PrepareConfig:
    size: int = 256  # output crop side in pixels (the paper preset trains at 256, tiny at 64)
    min_frames: int = 16  # clips with fewer frames with a face are skipped (training draws 1 + 8 frames per clip)
    every: int = 1  # keep every n-th frame of a video
    max_frames: int | None = None  # stop reading a video after this many frames (None: all)
    smooth_sigma: float = 2.0  # Gaussian smoothing of the crop over time, in frames
    split_by: str = "identity"  # "identity": whole identities go to test; "clip"; "none": everything is train
    test_fraction: float = 0.1  # share of identities (or clips) in the test split, chosen by a hash of the name
    min_confidence: float = 0.5  # face detection / presence / tracking confidence of the landmarker

    def __post_init__(self) -> None:
        checks = [(self.size >= 16, f"--size must be >= 16, got {self.size}"),
                  (self.min_frames >= 1, f"--min-frames must be >= 1, got {self.min_frames}"),
                  (self.every >= 1, f"--every must be >= 1, got {self.every}"),
                  (self.max_frames is None or self.max_frames >= 1, "--max-frames must be >= 1"),
                  (self.smooth_sigma >= 0, "--smooth-sigma must be >= 0"),
                  (self.split_by in SPLITS_BY, f"--split-by must be one of {SPLITS_BY}, got {self.split_by!r}"),
                  (0 <= self.test_fraction < 1, f"--test-fraction must be in [0, 1), got {self.test_fraction}"),
                  (0 < self.min_confidence < 1, "--min-confidence must be in (0, 1)")]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class Job:
    source: Path  # a video file or a frame folder
    name: str  # clip folder, relative to --out
    identity: str


# ----------------------------------------------------------------------------------------------- inputs
def find_jobs(inputs: Sequence[str | Path], deep3d: bool = False) -> list[Job]:
    """Every video under the inputs. A video's identity is its parent folder's name for videos found inside an
    input folder (``people/alice/talk1.mp4`` -> ``alice``), else its own name. Clip names must be unique."""
    jobs: list[Job] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise FileNotFoundError(f"input {item} does not exist (expected a video file or a folder)")
        if deep3d:
            found = [item] if any(item.glob("*.mat")) else sorted({p.parent for p in item.rglob("*.mat")})
        elif is_video(item):
            found = [item]
        else:
            found = sorted(p for p in item.rglob("*") if is_video(p))
        for path in found:
            rel = path.relative_to(item) if path != item else Path(path.name)
            name = rel.with_suffix("").as_posix() if path.is_file() else rel.as_posix()
            identity = rel.parent.name if rel.parent != Path(".") else rel.with_suffix("").name
            jobs.append(Job(path, name, identity))
    if not jobs:
        raise FileNotFoundError(f"no {'Deep3DFaceRecon .mat files' if deep3d else 'videos'} under {list(inputs)}")
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.name in seen:
            raise ValueError(f"two inputs give the clip name {job.name!r}: {seen[job.name]} and {job.source}")
        seen[job.name] = job.source
    return jobs


def split_of(key: str, fraction: float) -> str:
    """'test' for a stable share ``fraction`` of names (a hash of the name: adding videos moves nobody)."""
    return "test" if zlib.crc32(key.encode()) % 10_000 < fraction * 10_000 else "train"


# ----------------------------------------------------------------------------------------------- output
def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _tmp_folder(out: Path, job: Job) -> Path:
    return out / (".tmp-" + job.name.replace("/", "__"))


def commit_clip(out: Path, job: Job, images: list[np.ndarray], arrays: dict[str, np.ndarray], record: dict) -> None:
    """Write a clip to a temporary folder, then rename it into place (a clip is there whole or not at all)."""
    from PIL import Image

    tmp = _tmp_folder(out, job)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for t, px in enumerate(images):
        Image.fromarray(px).save(tmp / f"{t:05d}.png", compress_level=1)  # PIL's default level 6 dominated a profile
    np.savez(tmp / "params.npz", **arrays)
    (tmp / "clip.json").write_text(json.dumps(record, indent=1))
    final = out / job.name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)


def write_manifest(out: Path, cfg: PrepareConfig, skipped: list[dict], info: dict) -> Path:
    """Rebuild manifest.json from the clip.json of every finished clip (atomically)."""
    records = sorted((json.loads(p.read_text()) for p in out.rglob("clip.json") if ".tmp-" not in p.as_posix()),
                     key=lambda r: r["clip"])  # fmt: skip
    dims = {r["expression_dim"] for r in records}
    if len(dims) > 1:
        raise ValueError(f"{out}: clips with different expression sizes {sorted(dims)}; use separate --out folders")
    for r in records:
        key = r["identity"] if cfg.split_by == "identity" else r["clip"]
        r["split"] = "train" if cfg.split_by == "none" else split_of(str(key), cfg.test_fraction)
    meta = {"format": FORMAT, "version": VERSION, "resolution": cfg.size,
            "expression_dim": dims.pop() if dims else None, **info, "clips": records, "skipped": skipped,
            "generator": {"name": "export3d.data.prepare", "config": asdict(cfg)}}  # fmt: skip
    path = out / "manifest.json"
    _write_json(path, meta)
    return path


# ----------------------------------------------------------------------------------------------- one video
def process_video(job: Job, cfg: PrepareConfig, landmarker, mesh, progress: bool) -> tuple[list, dict, dict]:
    """Landmarks pass, smoothed crops, second pass cutting the kept frames. Returns images, arrays, record."""
    from export3d.data.crop import crop_boxes, crop_frame
    from export3d.data.frames import read_frames, video_info
    from export3d.data.headpose import reprojection_error, solve_camera

    info = video_info(job.source)
    total = info.frames if cfg.max_frames is None or info.frames is None else min(info.frames, cfg.max_frames)
    bar = _bar(total, f"{job.name} faces", progress)
    landmarker.reset()
    kept, points, shapes, seen = [], [], [], 0
    for index, frame in read_frames(job.source):
        if cfg.max_frames is not None and index >= cfg.max_frames:
            break
        seen += 1
        bar.update(1)
        if index % cfg.every:
            continue
        face = landmarker.detect(frame, round(index * 1000 / info.fps))
        if face is not None:
            kept.append(index)
            points.append(face.landmarks)
            shapes.append(face.blendshapes)
    bar.close()
    considered = len(range(0, seen, cfg.every))
    record = {"clip": job.name, "identity": job.identity, "source": str(job.source), "source_frames": seen,
              "frames_considered": considered, "dropped_no_face": considered - len(kept)}  # fmt: skip
    if len(kept) < cfg.min_frames:
        raise SkipClip(f"{len(kept)} of {considered} frames have a face; --min-frames is {cfg.min_frames}")
    landmarks = np.stack(points)  # [T, 478, 2]
    boxes = crop_boxes(mesh, landmarks, cfg.smooth_sigma)
    in_crop = boxes.to_crop(landmarks, cfg.size)  # [T, 478, 2]
    cameras = np.stack([solve_camera(mesh, p, cfg.size) for p in in_crop])
    errors = np.array([reprojection_error(mesh, c, p, cfg.size) for c, p in zip(cameras, in_crop, strict=True)])
    position = {index: k for k, index in enumerate(kept)}
    images: list[np.ndarray] = [None] * len(kept)  # type: ignore[list-item]
    for index, frame in read_frames(job.source):
        if index in position:
            k = position[index]
            images[k] = crop_frame(frame, boxes.corner[k], float(boxes.side[k]), cfg.size)
        if index >= kept[-1]:
            break
    if any(im is None for im in images):
        raise VideoError(job.source, "the video gave fewer frames on the second read than on the first")
    arrays = {"expression": np.stack(shapes).astype(np.float32), "camera": cameras.astype(np.float32),
              "frame_index": np.array(kept, dtype=np.int64), "landmarks": in_crop.astype(np.float32),
              "crop": np.concatenate([boxes.corner, boxes.side[:, None]], 1).astype(np.float32)}  # x, y, side
    record.update(frames=len(kept), expression_dim=int(arrays["expression"].shape[1]), frame_indices=kept,
                  reprojection_px={"mean": round(float(errors.mean()), 3), "max": round(float(errors.max()), 3)},
                  crop_side_px={"min": round(float(boxes.side.min()), 2), "max": round(float(boxes.side.max()), 2)})
    return images, arrays, record


def deep3d_video(job: Job, cfg: PrepareConfig) -> tuple[list, dict, dict]:
    from PIL import Image

    from export3d.data.deep3d import read_deep3d_clip

    clip = read_deep3d_clip(job.source)
    if len(clip.images) < cfg.min_frames:
        raise SkipClip(f"{len(clip.images)} frames; --min-frames is {cfg.min_frames}")
    images = []
    for path in clip.images:
        try:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB").resize((cfg.size, cfg.size), Image.Resampling.LANCZOS)))
        except OSError as err:
            raise VideoError(path, f"cannot read image: {err}") from err
    kept = list(range(len(images)))
    arrays = {"expression": clip.expression, "camera": clip.camera, "frame_index": np.array(kept, dtype=np.int64)}
    record = {"clip": job.name, "identity": job.identity, "source": str(job.source), "source_frames": len(kept),
              "frames_considered": len(kept), "dropped_no_face": 0, "frames": len(kept), "expression_dim": 64,
              "frame_indices": kept}  # fmt: skip
    return images, arrays, record


class SkipClip(Exception):
    """A readable video that gives no usable clip (too few frames with a face)."""


def _bar(total, desc: str, enabled: bool, **kw):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False, disable=not enabled, mininterval=1.0, **kw)


# ----------------------------------------------------------------------------------------------- the run
def prepare(inputs: Sequence[str | Path], out: str | Path, cfg: PrepareConfig = PrepareConfig(),
            deep3d: bool = False, progress: bool = True) -> dict:
    """Prepare every video (resuming a previous run into ``out``); returns the manifest as a dict."""
    out = Path(out)
    jobs = find_jobs(inputs, deep3d)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-*"):  # a clip whose writing was interrupted: redo it
        shutil.rmtree(stale)
    manifest = out / "manifest.json"
    old = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if old.get("clips") and old.get("resolution") != cfg.size:
        raise ValueError(f"--out {out} already holds {old.get('resolution')} px clips; rerun with --size "
                         f"{old.get('resolution')} to resume, or choose another --out for {cfg.size} px")
    was_deep3d = old.get("expression", {}).get("source", "").startswith("Deep3DFaceRecon")
    if old.get("clips") and was_deep3d != deep3d:
        raise ValueError(f"--out {out} already holds clips from {'--from-deep3d' if was_deep3d else 'videos'}; "
                         "expression vectors of the two kinds cannot share a dataset: choose another --out")
    skipped = [s for s in old.get("skipped", []) if s.get("reason", "").startswith("too few")]
    done = {s["source"] for s in skipped} | {
        json.loads(p.read_text())["source"] for p in out.rglob("clip.json") if ".tmp-" not in p.as_posix()}
    if deep3d:
        info = {"expression": {"source": "Deep3DFaceRecon exp coefficients 80:144 (BFM)", "names": None}}
        landmarker = mesh = None
    else:
        from export3d.data.landmarker import FaceLandmarker, canonical_mesh

        mesh = canonical_mesh()
        landmarker = FaceLandmarker(min_confidence=cfg.min_confidence)
        info = {"expression": {"source": "MediaPipe face landmarker blendshapes (face_landmarker.task)",
                               "names": None}}
    from tqdm import tqdm

    todo = [j for j in jobs if str(j.source) not in done]
    failures = []
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="videos", unit="video", disable=not progress) as bar:
        for job in todo:
            try:
                if deep3d:
                    result = deep3d_video(job, cfg)
                else:
                    result = process_video(job, cfg, landmarker, mesh, progress)
                    info["expression"]["names"] = landmarker.blendshape_names
                commit_clip(out, job, *result)
            except SkipClip as err:
                skipped.append({"source": str(job.source), "clip": job.name, "reason": f"too few frames: {err}"})
                tqdm.write(f"skipped {job.source}: too few frames: {err}", file=sys.stderr)
            except (VideoError, Deep3DFormatError) as err:
                failures.append({"source": str(job.source), "clip": job.name, "reason": f"unreadable: {err}"})
                tqdm.write(f"error: {err} (continuing with the other videos)", file=sys.stderr)
            if info["expression"]["names"] is None and old.get("expression"):
                info["expression"] = old["expression"]
            write_manifest(out, cfg, skipped + failures, info)
            bar.update(1)
    if landmarker is not None:
        landmarker.close()
    return json.loads(write_manifest(out, cfg, skipped + failures, info).read_text())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m export3d.data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", help="video files (mp4, mov, ...), frame folders, or folders of them")
    p.add_argument("--out", required=True, help="output folder (the clip format; rerun to resume)")
    p.add_argument("--from-deep3d", metavar="FOLDER", action="append", default=[],
                   help="folder(s) of images + Deep3DFaceRecon .mat coefficient files, instead of videos")
    for field, kind in (("size", int), ("min_frames", int), ("every", int), ("max_frames", int),
                        ("smooth_sigma", float), ("test_fraction", float), ("min_confidence", float)):
        p.add_argument("--" + field.replace("_", "-"), type=kind, default=getattr(PrepareConfig, field))
    p.add_argument("--split-by", choices=SPLITS_BY, default=PrepareConfig.split_by)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if bool(args.inputs) == bool(args.from_deep3d):
        p.error("give either VIDEOS_OR_FOLDERS or --from-deep3d FOLDER (one of the two)")
    cfg = PrepareConfig(size=args.size, min_frames=args.min_frames, every=args.every, max_frames=args.max_frames,
                        smooth_sigma=args.smooth_sigma, split_by=args.split_by, test_fraction=args.test_fraction,
                        min_confidence=args.min_confidence)  # fmt: skip
    meta = prepare(args.inputs or args.from_deep3d, args.out, cfg, deep3d=bool(args.from_deep3d),
                   progress=not args.no_progress)
    frames = sum(c["frames"] for c in meta["clips"])
    dropped = sum(c["dropped_no_face"] for c in meta["clips"])
    print(f"export3d.data.prepare: {len(meta['clips'])} clips ({frames} frames, {dropped} frames without a face "
          f"dropped), {len(meta['skipped'])} videos skipped -> {Path(args.out) / 'manifest.json'}")
    for s in meta["skipped"]:
        print(f"  skipped {s['source']}: {s['reason']}")
    return meta


if __name__ == "__main__":
    main()
