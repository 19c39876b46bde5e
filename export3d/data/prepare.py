"""Real videos -> training clips: ``python -m export3d.data.prepare VIDEOS_OR_FOLDERS --out CLIPS``.

The command line and the run over a dataset of videos. Per video (:mod:`export3d.data.worker`), the face pipeline
in one decoding pass (:mod:`export3d.data.streaming`: one face followed by :mod:`export3d.data.face_detect`, a
square crop smoothed over time, the EG3D camera by PnP, the 52 blendshapes) gives one clip per shot
(:mod:`export3d.data.segments`: a shot cut or a long gap without a face splits a video) in the format of
:mod:`export3d.data.clips`, plus ``frame_index [T]``, ``crop [T, 3]`` and ``landmarks [T, 478, 2]`` in
``params.npz`` and a ``clip.json``; the video's folder also gets ``video.json``, its record.
``--from-deep3d FOLDER`` instead turns Deep3DFaceRecon coefficient files into clips (:mod:`export3d.data.deep3d`):
beta = the 64 expression coefficients, no face model needed.

Scale: ``--workers N`` processes (default: one per core) prepare videos in parallel, each with its own landmarker,
and give the same clips as one; ``--shard K/N`` prepares a stable 1/N of the videos and its part of the manifest,
so N machines can share one output folder (:mod:`export3d.data.shards`; ``--merge OUT`` writes the manifest from
the parts). The manifest is written once, from the records in memory (:mod:`export3d.data.manifest`).

Robustness: a video that fails (unreadable, PnP, the landmarker, anything) is reported by name with its reason
and the run goes on; the summary counts the reasons, and the exit status is non-zero only when no clip could be
prepared. Each video's folder is written under a temporary name and renamed when complete, so a crash, Ctrl-C or
SIGTERM never leaves a half-written clip, and a rerun skips the videos already done and retries the failed ones.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from export3d.data.jobs import Job, PrepareConfig, find_jobs, remove_partial
from export3d.data.manifest import (
    SPLITS_BY,
    DatasetIndex,
    manifest_dict,
    read_manifest,
    read_video_record,
    write_manifest,
)
from export3d.data.parallel import run_jobs
from export3d.data.shards import Shard, merge, write_part
from export3d.data.worker import DEEP3D_EXPRESSION, VIDEO_EXPRESSION, close_worker, init_worker, run_job
from export3d.utils.cli import add_debug_flag, run_command
from export3d.utils.extras import MissingExtraError
from export3d.utils.signals import catch_sigterm, exit_status

LISTED_FAILURES = 20  # failures the summary names one by one (all are in the manifest's "skipped")


@dataclass(frozen=True)
class PrepareRun:
    """What :func:`prepare` did."""

    manifest: dict  # the manifest of the videos of this run (of its shard, when sharded)
    path: Path  # where it was written: manifest.json, or the shard's part
    videos: int  # videos of this run (of its shard)
    done_before: int  # of those, already prepared by an earlier run
    merged: bool = False  # a shard also wrote manifest.json from every shard's part


def cores() -> int:
    """The cores this process may run on (a Slurm or container CPU set), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def prepare(inputs: Sequence[str | Path], out: str | Path, cfg: PrepareConfig | None = None,
            deep3d: bool = False, progress: bool = True, workers: int = 1, shard: Shard | None = None,
            debug: bool = False) -> PrepareRun:  # fmt: skip
    """Prepare every video of ``inputs`` (of ``shard``'s share) into ``out``, resuming an earlier run there.

    ``cfg``: the settings (default ``PrepareConfig()``); ``workers``: processes (1: this one; more are started with
    ``spawn``, so a script calling this needs the usual ``if __name__ == "__main__":`` guard); ``debug``: print
    the traceback of each failed video.
    """
    out, cfg = Path(out), cfg or PrepareConfig()
    jobs = find_jobs(inputs, deep3d, cfg.identity_level)
    if shard is not None:
        jobs = [job for job in jobs if shard.holds(job.name)]
    out.mkdir(parents=True, exist_ok=True)
    _check_dataset(out, cfg, deep3d)
    remove_partial(out, jobs)
    index, todo = _load_done(out, jobs, cfg)
    if todo and not deep3d:  # a missing face-tools extra is named here, not by every worker
        from export3d.data.landmarker import canonical_mesh
        from export3d.utils.extras import require

        require("mediapipe")
        require("dlib")
        canonical_mesh()
    complete = False
    try:
        _run(todo, len(jobs), index, out, cfg, deep3d, progress, workers, debug)
        complete = True
    finally:
        run = _write_index(out, index, cfg, deep3d, shard, complete, len(jobs), len(jobs) - len(todo))
    return run


def _check_dataset(out: Path, cfg: PrepareConfig, deep3d: bool) -> None:
    """Refuse an output folder that holds clips of another size or of the other expression kind."""
    old = read_manifest(out)
    if old.get("clips") and old.get("resolution") != cfg.size:
        raise ValueError(f"--out {out} already holds {old.get('resolution')} px clips; rerun with --size "
                         f"{old.get('resolution')} to resume, or choose another --out for {cfg.size} px")
    was_deep3d = old.get("expression", {}).get("source", "").startswith("Deep3DFaceRecon")
    if old.get("clips") and was_deep3d != deep3d:
        raise ValueError(f"--out {out} already holds clips from {'--from-deep3d' if was_deep3d else 'videos'}; "
                         "expression vectors of the two kinds cannot share a dataset: choose another --out")


def _load_done(out: Path, jobs: list[Job], cfg: PrepareConfig) -> tuple[DatasetIndex, list[Job]]:
    """The index of the videos already prepared (their ``video.json``), and the jobs left to do."""
    index, todo = DatasetIndex(), []
    for job in jobs:
        record = read_video_record(out, job.name)
        if record is None:
            todo.append(job)
            continue
        if record.get("resolution") != cfg.size:
            raise ValueError(f"--out {out}: {job.name} was prepared at {record.get('resolution')} px, not {cfg.size}: "
                             "rerun with its --size, or choose another --out")  # fmt: skip
        # the identity comes from this run's --identity-level, whatever the earlier run used
        record["identity"] = job.identity
        record["clips"] = [{**clip, "identity": job.identity} for clip in record["clips"]]
        index.add(record)
    return index, todo


def _run(todo: list[Job], total: int, index: DatasetIndex, out: Path, cfg: PrepareConfig, deep3d: bool,
         progress: bool, workers: int, debug: bool) -> None:  # fmt: skip
    """Prepare the jobs of ``todo`` into ``out`` with ``workers`` processes, adding each result to ``index``."""
    from tqdm import tqdm

    start, frames = time.perf_counter(), [0]
    bar = tqdm(total=total, initial=total - len(todo), desc="videos", unit="video", disable=not progress)

    def on_result(job: Job, result: dict) -> None:
        if "record" in result:
            index.add(result["record"])
            frames[0] += result["record"]["frames_read"]
            if not result["record"]["clips"]:
                tqdm.write(f"no clip from {job.source}: {result['record']['skipped'][0]['reason']}", file=sys.stderr)
        else:
            index.fail(result["failure"])
            tqdm.write(f"error: {result['failure']['reason']} (continuing with the other videos)", file=sys.stderr)
            if debug:
                tqdm.write(result["traceback"], file=sys.stderr)
        bar.update(1)
        bar.set_postfix(frames_per_s=round(frames[0] / max(time.perf_counter() - start, 1e-9), 1), refresh=False)

    def on_crash(job: Job, reason: str) -> None:
        entry = {"source": str(job.source), "clip": job.name, "kind": "worker died", "reason": f"worker died: {reason}"}
        on_result(job, {"failure": entry, "traceback": ""})

    work = functools.partial(run_job, cfg=cfg, out=out, deep3d=deep3d, progress=progress and workers == 1)
    init = (None if deep3d else cfg.min_confidence, workers > 1)
    try:
        run_jobs(todo, work, workers, on_result, on_crash, init_worker, init, close_worker)
    finally:
        bar.close()


def _write_index(out: Path, index: DatasetIndex, cfg: PrepareConfig, deep3d: bool, shard: Shard | None,
                 complete: bool, videos: int, done_before: int) -> PrepareRun:  # fmt: skip
    """The manifest of ``index`` (or, for a shard, its part, and the manifest once every part is complete)."""
    source = DEEP3D_EXPRESSION if deep3d else VIDEO_EXPRESSION
    info = {"expression": {"source": source, "names": index.expression_names()}}
    generator = {"name": "export3d.data.prepare", "config": asdict(cfg)}
    content = {"records": index.clips(), "skipped": index.skipped(), "split_by": cfg.split_by,
               "test_fraction": cfg.test_fraction, "size": cfg.size, "info": info, "generator": generator}  # fmt: skip
    args = (content["records"], cfg.split_by, cfg.test_fraction, cfg.size, content["skipped"], info, generator)
    if shard is None:
        return PrepareRun(manifest_dict(out, *args), write_manifest(out, *args), videos, done_before)
    path = write_part(out, shard, content, complete)
    merged = merge(out, shard.count, strict=False) if complete else None
    return PrepareRun(manifest_dict(out, *args), path, videos, done_before, merged is not None)


# ----------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export3d.data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", help="video files (mp4, mov, ...), frame folders, or folders of them")
    p.add_argument("--out", help="output folder (the clip format; rerun to resume)")
    p.add_argument("--from-deep3d", metavar="FOLDER", action="append", default=[],
                   help="folder(s) of images + Deep3DFaceRecon .mat coefficient files, instead of videos")
    for field, kind in (("size", int), ("min_frames", int), ("every", int), ("max_frames", int),
                        ("smooth_sigma", float), ("test_fraction", float), ("min_confidence", float)):
        p.add_argument("--" + field.replace("_", "-"), type=kind, default=getattr(PrepareConfig, field))
    p.add_argument("--split-by", choices=SPLITS_BY, default=PrepareConfig.split_by)
    p.add_argument("--identity-level", type=int, default=PrepareConfig.identity_level,
                   help="the folder level above a video that names its identity: 1 (default) its folder, 2 the one "
                        "above (VoxCeleb's id/youtube_id/clip.mp4), 0 the video itself")
    p.add_argument("--max-gap", type=int, default=PrepareConfig.max_gap,
                   help="frames in a row without a face that a clip bridges; a longer gap splits the video")
    p.add_argument("--cut-scene", type=float, default=PrepareConfig.cut_scene,
                   help="colour-histogram distance (0-1) from the clip's last frame that is a shot cut")
    p.add_argument("--cut-jump", type=float, default=PrepareConfig.cut_jump,
                   help="face move, in face sizes per frame, that is a shot cut")
    p.add_argument("--cut-scale", type=float, default=PrepareConfig.cut_scale,
                   help="face size change (absolute log ratio) per frame that is a shot cut")
    p.add_argument("--workers", type=int, default=None, help="videos prepared in parallel (default: the cores)")
    p.add_argument("--shard", metavar="K/N", help="prepare only shard K (0 ... N-1) of N: a stable 1/N of the videos")
    p.add_argument("--merge", metavar="OUT", help="write OUT/manifest.json from the parts of its shards, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(p)
    return p


def reason_counts(manifest: dict) -> str:
    """``"no face 1, too few frames 3, unreadable 2"``: the entries of the manifest's "skipped" by reason."""
    reasons = Counter(s.get("kind", s["reason"].split(":")[0]) for s in manifest["skipped"])
    return ", ".join(f"{kind} {n}" for kind, n in sorted(reasons.items())) or "none skipped"


def summary(run: PrepareRun | None, manifest: dict, where: Path) -> list[str]:
    """The lines printed at the end of a run: clips, frames, and the count of each reason a video gave none."""
    clips = manifest["clips"]
    frames = sum(c["frames"] for c in clips)
    dropped = sum(c.get("dropped_no_face", 0) for c in clips)
    videos = len({c.get("video", c["clip"]) for c in clips})
    of = f" of {run.videos} ({run.done_before} done before)" if run is not None else ""
    lines = [f"export3d.data.prepare: {len(clips)} clips ({frames} frames, {dropped} frames without a face dropped) "
             f"from {videos}{of} videos -> {where}"]  # fmt: skip
    if manifest["skipped"]:
        lines.append(f"  not prepared: {reason_counts(manifest)}")
    failed = [s for s in manifest["skipped"] if s.get("kind") not in ("too few frames", "no face")]
    lines += [f"  {s['reason']}" for s in failed[:LISTED_FAILURES]]
    if len(failed) > LISTED_FAILURES:
        lines.append(f"  ... and {len(failed) - LISTED_FAILURES} more (the manifest's 'skipped' lists them)")
    return lines


def run(args: argparse.Namespace, cfg: PrepareConfig | None) -> dict:
    """Prepare (or merge) as ``args`` say and print the summary; returns the manifest."""
    if args.merge:
        manifest = merge(Path(args.merge))
        print("\n".join(summary(None, manifest, Path(args.merge) / "manifest.json")))
        return manifest
    shard = Shard.parse(args.shard) if args.shard else None
    workers = cores() if args.workers is None else args.workers
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    result = prepare(args.inputs or args.from_deep3d, args.out, cfg, deep3d=bool(args.from_deep3d),
                     progress=not args.no_progress, workers=workers, shard=shard, debug=args.debug)  # fmt: skip
    lines = summary(result, result.manifest, result.path)
    if result.merged:
        lines.append(f"  every shard is done: wrote {Path(args.out) / 'manifest.json'}")
    print("\n".join(lines))
    if result.videos and not result.manifest["clips"]:
        counts = reason_counts(result.manifest)
        raise ValueError(f"no clip could be prepared from the {result.videos} videos ({counts})")
    return result.manifest


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    cfg = None
    if args.merge:
        if args.inputs or args.from_deep3d or args.shard:
            p.error("--merge OUT takes no inputs and no --shard: it only writes OUT/manifest.json from the parts")
    else:
        if bool(args.inputs) == bool(args.from_deep3d):
            p.error("give either VIDEOS_OR_FOLDERS or --from-deep3d FOLDER (one of the two), or --merge OUT")
        if not args.out:
            p.error("--out is required (the output folder)")
        try:
            cfg = PrepareConfig(**{f: getattr(args, f) for f in PrepareConfig.__dataclass_fields__})
        except ValueError as err:
            p.error(str(err))
    restore = catch_sigterm()  # SIGTERM (a scheduler's pre-emption) ends the run as Ctrl-C does: parts written
    try:
        # a missing face-tools extra (MissingExtraError, an ImportError) is the user's to fix, with the install command
        return run_command("export3d.data.prepare", lambda a: run(a, cfg), args,
                           user_errors=(ValueError, OSError, MissingExtraError))  # fmt: skip
    except KeyboardInterrupt as interrupt:
        print("export3d.data.prepare: interrupted; finished videos are kept, rerun to resume", file=sys.stderr)
        return exit_status(interrupt)
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
