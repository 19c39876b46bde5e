"""Real videos -> training clips: ``python -m export3d.data.prepare VIDEOS_OR_FOLDERS --out CLIPS``.

The command line and the run over many videos. Per video, the face pipeline (:mod:`export3d.data.face_pipeline`:
one face followed by :mod:`export3d.data.face_detect`, a whole-frame detector then MediaPipe landmarks on a crop
around the face, so a face of 1 % of a full-body frame is found; a square crop smoothed over time, the EG3D camera
by PnP, the 52 blendshapes) gives one clip in the format of :mod:`export3d.data.clips`, plus ``frame_index [T]``,
``crop [T, 3]`` and ``landmarks [T, 478, 2]`` in ``params.npz`` and a ``clip.json`` (with ``face_detections``: the
frames searched whole for the face); :mod:`export3d.data.manifest` rebuilds ``manifest.json`` from the finished
clips. ``--from-deep3d FOLDER`` instead turns Deep3DFaceRecon coefficient files into clips
(:mod:`export3d.data.deep3d`): beta = the 64 expression coefficients, no face model needed.

Robustness: frames without a face are dropped and counted; a clip left with fewer than ``--min-frames`` frames
is skipped with the reason; an unreadable video is reported by name and the run goes on. Each clip is written to
a temporary folder and renamed when complete, the manifest is rewritten atomically after every video, and a rerun
skips the videos already done (clips present, or skipped before).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export3d.data.clips import write_clip_files
from export3d.data.deep3d import Deep3DFormatError
from export3d.data.face_pipeline import TooFewFaces
from export3d.data.frames import VideoError, is_video
from export3d.data.landmarker import MissingExtraError
from export3d.data.manifest import PARTIAL, SPLITS_BY, finished_records, read_manifest, write_manifest
from export3d.utils.cli import add_debug_flag, run_command

VIDEO_EXPRESSION = "MediaPipe face landmarker blendshapes (face_landmarker.task)"
DEEP3D_EXPRESSION = "Deep3DFaceRecon exp coefficients 80:144 (BFM)"


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
    source: Path  # a video file, a frame folder or (--from-deep3d) a folder of images + .mat files
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


# ----------------------------------------------------------------------------------------------- one clip
def video_clip(job: Job, cfg: PrepareConfig, landmarker, mesh, progress: bool) -> tuple[list, dict, dict]:
    """One video through the face pipeline -> (crops, params.npz arrays, clip.json record)."""
    from export3d.data.face_pipeline import read_video_faces

    track, params, crops = read_video_faces(job.source, landmarker, mesh, cfg.size, cfg.every, cfg.max_frames,
                                            cfg.smooth_sigma, cfg.min_frames, progress)  # fmt: skip
    side, errors = params.boxes.side, params.reprojection
    record = {"clip": job.name, "identity": job.identity, "source": str(job.source), "source_frames": track.frames_read,
              "frames_considered": track.frames_considered, "dropped_no_face": track.dropped, "frames": len(crops),
              "face_detections": track.detections,
              "expression_dim": int(params.expression.shape[1]), "frame_indices": params.frame_index.tolist(),
              "reprojection_px": {"mean": round(float(errors.mean()), 3), "max": round(float(errors.max()), 3)},
              "crop_side_px": {"min": round(float(side.min()), 2), "max": round(float(side.max()), 2)}}  # fmt: skip
    return crops, params.arrays(), record


def deep3d_clip(job: Job, cfg: PrepareConfig) -> tuple[list, dict, dict]:
    """One folder of images + Deep3DFaceRecon fits -> (frames, params.npz arrays, clip.json record)."""
    from export3d.data.deep3d import clip_frames, read_deep3d_clip

    clip = read_deep3d_clip(job.source)
    if len(clip.images) < cfg.min_frames:
        raise TooFewFaces(len(clip.images), len(clip.images), cfg.min_frames)
    frames = clip_frames(clip, cfg.size)
    kept = list(range(len(frames)))
    arrays = {"expression": clip.expression, "camera": clip.camera, "frame_index": np.array(kept, dtype=np.int64)}
    record = {"clip": job.name, "identity": job.identity, "source": str(job.source), "source_frames": len(kept),
              "frames_considered": len(kept), "dropped_no_face": 0, "frames": len(kept), "expression_dim": 64,
              "frame_indices": kept}  # fmt: skip
    return frames, arrays, record


# ----------------------------------------------------------------------------------------------- the run
def _resume_state(out: Path, cfg: PrepareConfig, deep3d: bool) -> tuple[dict, list[dict], set[str]]:
    """(earlier manifest, its skipped-for-too-few-frames entries, sources already done); refuses a mixed folder."""
    old = read_manifest(out)
    if old.get("clips") and old.get("resolution") != cfg.size:
        raise ValueError(f"--out {out} already holds {old.get('resolution')} px clips; rerun with --size "
                         f"{old.get('resolution')} to resume, or choose another --out for {cfg.size} px")
    was_deep3d = old.get("expression", {}).get("source", "").startswith("Deep3DFaceRecon")
    if old.get("clips") and was_deep3d != deep3d:
        raise ValueError(f"--out {out} already holds clips from {'--from-deep3d' if was_deep3d else 'videos'}; "
                         "expression vectors of the two kinds cannot share a dataset: choose another --out")
    skipped = [s for s in old.get("skipped", []) if s.get("reason", "").startswith("too few")]
    done = {s["source"] for s in skipped} | {r["source"] for r in finished_records(out)}
    return old, skipped, done


def _remove_partial(out: Path) -> None:
    """Clips whose writing was interrupted (temporary or half-replaced folders): they are redone."""
    for mark in PARTIAL:
        for stale in sorted(out.rglob(f"*{mark}*"), key=lambda p: len(p.parts)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)


def prepare(inputs: Sequence[str | Path], out: str | Path, cfg: PrepareConfig = PrepareConfig(),
            deep3d: bool = False, progress: bool = True) -> dict:
    """Prepare every video (resuming a previous run into ``out``); returns the manifest as a dict."""
    from tqdm import tqdm

    out = Path(out)
    jobs = find_jobs(inputs, deep3d)
    out.mkdir(parents=True, exist_ok=True)
    _remove_partial(out)
    old, skipped, done = _resume_state(out, cfg, deep3d)
    info = {"expression": {"source": DEEP3D_EXPRESSION if deep3d else VIDEO_EXPRESSION, "names": None}}
    if old.get("expression", {}).get("source") == info["expression"]["source"]:
        info["expression"] = old["expression"]
    landmarker = mesh = None
    if not deep3d:
        from export3d.data.landmarker import FaceLandmarker, canonical_mesh

        mesh, landmarker = canonical_mesh(), FaceLandmarker(min_confidence=cfg.min_confidence)
    failures: list[dict] = []
    todo = [j for j in jobs if str(j.source) not in done]
    try:
        with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="videos", unit="video",
                  disable=not progress) as bar:  # fmt: skip
            for job in todo:
                _one_job(job, cfg, out, landmarker, mesh, progress, info, skipped, failures)
                _write_manifest(out, cfg, skipped + failures, info)
                bar.update(1)
    finally:
        if landmarker is not None:
            landmarker.close()
    _write_manifest(out, cfg, skipped + failures, info)
    return read_manifest(out)


def _write_manifest(out: Path, cfg: PrepareConfig, skipped: list[dict], info: dict) -> None:
    generator = {"name": "export3d.data.prepare", "config": asdict(cfg)}
    write_manifest(out, finished_records(out), cfg.split_by, cfg.test_fraction, cfg.size, skipped, info, generator)


def _one_job(job: Job, cfg: PrepareConfig, out: Path, landmarker, mesh, progress: bool, info: dict,
             skipped: list[dict], failures: list[dict]) -> None:  # fmt: skip
    """Prepare one clip into ``out``; a video that gives none is recorded in ``skipped`` or ``failures``."""
    from tqdm import tqdm

    try:
        if landmarker is None:
            frames, arrays, record = deep3d_clip(job, cfg)
        else:
            frames, arrays, record = video_clip(job, cfg, landmarker, mesh, progress)
            info["expression"]["names"] = landmarker.blendshape_names
        write_clip_files(out / job.name, frames, arrays, record)
    except TooFewFaces as err:
        skipped.append({"source": str(job.source), "clip": job.name, "reason": f"too few frames: {err}"})
        tqdm.write(f"skipped {job.source}: too few frames: {err}", file=sys.stderr)
    except (VideoError, Deep3DFormatError) as err:
        failures.append({"source": str(job.source), "clip": job.name, "reason": f"unreadable: {err}"})
        tqdm.write(f"error: {err} (continuing with the other videos)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
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
    add_debug_flag(p)
    return p


def run(args: argparse.Namespace, cfg: PrepareConfig) -> dict:
    """Prepare the inputs of ``args`` and print the summary; returns the manifest."""
    meta = prepare(args.inputs or args.from_deep3d, args.out, cfg, deep3d=bool(args.from_deep3d),
                   progress=not args.no_progress)
    frames = sum(c["frames"] for c in meta["clips"])
    dropped = sum(c["dropped_no_face"] for c in meta["clips"])
    print(f"export3d.data.prepare: {len(meta['clips'])} clips ({frames} frames, {dropped} frames without a face "
          f"dropped), {len(meta['skipped'])} videos skipped -> {Path(args.out) / 'manifest.json'}")
    for s in meta["skipped"]:
        print(f"  skipped {s['source']}: {s['reason']}")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if bool(args.inputs) == bool(args.from_deep3d):
        p.error("give either VIDEOS_OR_FOLDERS or --from-deep3d FOLDER (one of the two)")
    try:
        cfg = PrepareConfig(size=args.size, min_frames=args.min_frames, every=args.every, max_frames=args.max_frames,
                            smooth_sigma=args.smooth_sigma, split_by=args.split_by, test_fraction=args.test_fraction,
                            min_confidence=args.min_confidence)  # fmt: skip
    except ValueError as err:
        p.error(str(err))
    # a missing face-tools extra (MissingExtraError, an ImportError) is the user's to fix, with the install command
    return run_command("export3d.data.prepare", lambda a: run(a, cfg), args,
                       user_errors=(ValueError, OSError, MissingExtraError))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
