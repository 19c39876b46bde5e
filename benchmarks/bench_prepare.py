"""``prepare`` at dataset scale: manifest time, peak memory on a long video, frames per second by workers.

Three measurements (the numbers are in ``docs/data.md``):

- **manifest**: 10,000 small fake clips (one per video, each with its ``clip.json`` and ``video.json``). The new
  path: the records in memory (:class:`~export3d.data.manifest.DatasetIndex`) written once, plus the resume scan
  that reads every ``video.json`` at the start of a run. The old path, for comparison: after every video,
  every ``clip.json`` under the output folder found (``rglob``), read, and the manifest rewritten, timed for one
  video at 1,000 to 10,000 clips (a whole run sums that over its videos: quadratic).
- **memory**: a generated long video (the astronaut photo moving over a 1280 x 720 canvas, libx264, 25 fps) of
  300 and of 3,000 frames, prepared to 256 px clips with ``--workers 1`` in a fresh interpreter, which reports its
  peak resident set (``VmHWM``) and the peak of its ffmpeg decoder (polled, as in ``bench_video_memory``).
  ``--code DIR`` runs the same on another copy of the package (e.g. the code before streaming:
  ``git archive HEAD export3d | tar -x -C DIR``), whose ``prepare`` kept every crop of a clip in memory.
- **throughput**: frames per second of ``python -m export3d.data.prepare`` with ``--workers 1`` and ``2`` on the
  same videos (generated ones in the pytest case; real ones from the command line).

Run: ``pytest benchmarks/bench_prepare.py --benchmark-only -s``, or by hand::

    python -m benchmarks.bench_prepare manifest --clips 10000
    python -m benchmarks.bench_prepare memory --frames 300 3000 [--code /tmp/old]
    python -m benchmarks.bench_prepare throughput /tmp/real/d*.mp4 --max-frames 300 --workers 1 2

Each prints JSON. No benchmark asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_video_memory import ChildPeaks, peak_rss_kib

ROOT = Path(__file__).resolve().parents[1]
CANVAS = (1280, 720)  # (width, height) of the generated long video
FPS = 25


# ----------------------------------------------------------------------------------------------- manifest
def fake_dataset(out: Path, clips: int) -> list[dict]:
    """``clips`` one-clip videos under ``out`` (``person/video/000/clip.json`` and ``video.json``); their records."""
    records = []
    for k in range(clips):
        name = f"id{k // 20:05d}/v{k:06d}"
        clip = {"clip": f"{name}/000", "video": name, "identity": name.split("/")[0], "source": f"/data/{name}.mp4",
                "frames": 120, "first_frame": 0, "last_frame": 119, "starts_at": "start", "ends_at": "end",
                "dropped_no_face": 0, "face_detections": 1, "expression_dim": 52,
                "reprojection_px": {"mean": 1.0, "max": 2.0}, "crop_side_px": {"min": 200.0, "max": 210.0}}
        record = {"video": name, "identity": clip["identity"], "source": clip["source"], "resolution": 256,
                  "frames_read": 120, "clips": [clip], "skipped": []}  # fmt: skip
        (out / name / "000").mkdir(parents=True)
        (out / name / "000" / "clip.json").write_text(json.dumps(clip, indent=1))
        (out / name / "video.json").write_text(json.dumps(record, indent=1))
        records.append(record)
    return records


def old_manifest_update(out: Path) -> None:
    """What the old ``prepare`` did after every video: find and read every clip.json, rewrite the manifest."""
    from export3d.data.manifest import write_manifest

    paths = (p for p in out.rglob("clip.json") if ".tmp-" not in p.as_posix())
    records = sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["clip"])
    write_manifest(out, records, "identity", 0.1, 256, [], {"expression": {}}, {"name": "bench"})


def measure_manifest(clips: int, folder: Path, old_at: tuple[int, ...] = (1000, 2500, 5000, 10000)) -> dict:
    from export3d.data.jobs import Job, PrepareConfig
    from export3d.data.manifest import DatasetIndex, write_manifest
    from export3d.data.prepare import _load_done

    records = fake_dataset(folder, clips)
    jobs = [Job(Path(r["source"]), r["video"], r["identity"]) for r in records]
    start = time.perf_counter()
    index, todo = _load_done(folder, jobs, PrepareConfig())
    scan = time.perf_counter() - start
    assert not todo and len(index.clips()) == clips
    start = time.perf_counter()
    index = DatasetIndex()
    for record in records:  # what the run does as each video's record comes back
        index.add(record)
    write_manifest(folder, index.clips(), "identity", 0.1, 256, index.skipped(), {"expression": {}}, {"name": "b"})
    write = time.perf_counter() - start
    result = {"clips": clips, "resume_scan_s": round(scan, 3), "index_and_write_s": round(write, 3),
              "manifest_bytes": (folder / "manifest.json").stat().st_size, "old_one_update_s": {}}  # fmt: skip
    for n in old_at:
        if n > clips:
            continue
        sub = Path(tempfile.mkdtemp(dir=folder.parent))
        for record in records[:n]:
            shutil.copytree(folder / record["video"], sub / record["video"])
        start = time.perf_counter()
        old_manifest_update(sub)
        result["old_one_update_s"][n] = round(time.perf_counter() - start, 3)
        shutil.rmtree(sub)
    if result["old_one_update_s"]:  # a whole run: one update per video, each proportional to the clips so far
        n, seconds = max(result["old_one_update_s"].items())
        result["old_whole_run_s_estimate"] = round(seconds / n * clips * (clips + 1) / 2, 1)
    return result


# ----------------------------------------------------------------------------------------------- memory
def make_long_video(path: Path, frames: int) -> Path:
    """The astronaut photo rolling and drifting over a grey 1280 x 720 canvas, ``frames`` frames at 25 fps."""
    import cv2
    import imageio.v2 as iio
    import skimage.data

    photo = skimage.data.astronaut()
    with iio.get_writer(path, fps=FPS, codec="libx264", quality=8, macro_block_size=1,
                        ffmpeg_params=["-preset", "ultrafast"]) as writer:  # fmt: skip
        for t in range(frames):
            phase = 2 * np.pi * t / 200
            m = cv2.getRotationMatrix2D((250.0, 160.0), 10 * np.sin(phase), 0.8)
            m[:, 2] += (640 - 250 + 200 * np.sin(phase / 3), 300 - 160 + 30 * np.cos(phase))
            canvas = cv2.warpAffine(photo, m, CANVAS, borderMode=cv2.BORDER_CONSTANT, borderValue=(100, 100, 100))
            writer.append_data(canvas)
    return path


def prepare_once(video: Path, out: Path) -> dict:
    """Prepare ``video`` (in this interpreter) with whichever ``prepare`` is importable; its peaks."""
    from export3d.data import prepare as module

    try:
        from export3d.data.jobs import PrepareConfig as config
    except ImportError:  # the code before this benchmark's issue
        config = module.PrepareConfig
    baseline = peak_rss_kib()
    start = time.perf_counter()
    with ChildPeaks() as children:
        kwargs = {"workers": 1} if "workers" in module.prepare.__code__.co_varnames else {}
        module.prepare([video], out, config(size=256, split_by="none"), progress=False, **kwargs)
    frames = sum(1 for _ in out.rglob("*.png"))
    return {"frames_written": frames, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_kib": peak_rss_kib(), "peak_rss_after_imports_kib": baseline,
            "children_peak_rss_kib": children.peak_kib}  # fmt: skip


def measure_memory(frames: int, folder: Path, code: Path | None = None) -> dict:
    """One length in a fresh interpreter (its own peak); ``code``: the package copy to run (default: this one)."""
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"long{frames}.mp4"
    if not video.exists():
        make_long_video(video, frames)
    out = folder / f"out{frames}-{'old' if code else 'new'}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(str(p) for p in (code, ROOT) if p))
    cmd = [sys.executable, "-c", "import json, sys; from benchmarks.bench_prepare import prepare_once; "
           "from pathlib import Path; print(json.dumps(prepare_once(Path(sys.argv[1]), Path(sys.argv[2]))))",
           str(video), str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=code or ROOT, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return {"frames": frames, "code": str(code) if code else "current", **result}


# ----------------------------------------------------------------------------------------------- throughput
def measure_throughput(videos: list[Path], workers: int, folder: Path, max_frames: int | None = None) -> dict:
    """Wall-clock frames per second of the ``prepare`` command on ``videos`` with ``workers`` processes."""
    out = folder / f"out-workers{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "export3d.data.prepare", *map(str, videos), "--out", str(out), "--workers",
           str(workers), "--no-progress", "--split-by", "none"]  # fmt: skip
    if max_frames:
        cmd += ["--max-frames", str(max_frames)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, check=True)
    seconds = time.perf_counter() - start
    frames = sum(json.loads(p.read_text())["frames_read"] for p in out.rglob("video.json"))
    clips = len(json.loads((out / "manifest.json").read_text())["clips"])
    shutil.rmtree(out, ignore_errors=True)
    return {"workers": workers, "videos": len(videos), "frames": frames, "clips": clips, "seconds": round(seconds, 1),
            "frames_per_s": round(frames / seconds, 1)}  # fmt: skip


# ----------------------------------------------------------------------------------------------- pytest
def test_manifest_of_10000_clips(benchmark, tmp_path):
    result = {}
    benchmark.pedantic(lambda: result.update(measure_manifest(10_000, tmp_path / "d", (1000, 10_000))), rounds=1)
    benchmark.extra_info.update(result)
    print(json.dumps(result, indent=1))
    assert result["clips"] == 10_000 and json.loads((tmp_path / "d" / "manifest.json").read_text())["clips"]


def test_peak_memory_does_not_grow_with_the_video(benchmark, tmp_path):
    results = {}
    benchmark.pedantic(lambda: results.update({n: measure_memory(n, tmp_path) for n in (300, 3000)}), rounds=1)
    for n, r in results.items():
        benchmark.extra_info[f"peak_rss_mib_{n}"] = round(r["peak_rss_kib"] / 1024, 1)
        benchmark.extra_info[f"children_peak_rss_mib_{n}"] = round(r["children_peak_rss_kib"] / 1024, 1)
    print(json.dumps(results, indent=1))
    assert results[300]["frames_written"] == 300 and results[3000]["frames_written"] == 3000


def test_frames_per_second_with_one_and_two_workers(benchmark, tmp_path):
    """Four generated 100-frame videos: short enough that each worker's start (about 5 s of imports) weighs; the
    real videos of docs/data.md are longer."""
    videos = [make_long_video(tmp_path / f"v{k}.mp4", 100) for k in range(4)]
    results = {}
    benchmark.pedantic(lambda: results.update({w: measure_throughput(videos, w, tmp_path) for w in (1, 2)}), rounds=1)
    benchmark.extra_info.update({f"frames_per_s_workers_{w}": r["frames_per_s"] for w, r in results.items()})
    print(json.dumps(results, indent=1))
    assert results[1]["clips"] == results[2]["clips"] == 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("manifest")
    m.add_argument("--clips", type=int, default=10_000)
    r = sub.add_parser("memory")
    r.add_argument("--frames", type=int, nargs="+", default=[300, 3000])
    r.add_argument("--code", type=Path, help="a copy of the package to measure instead (its parent folder)")
    r.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench_prepare")
    t = sub.add_parser("throughput")
    t.add_argument("videos", nargs="+", type=Path)
    t.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    t.add_argument("--max-frames", type=int)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "manifest":
            print(json.dumps(measure_manifest(args.clips, Path(tmp) / "d"), indent=1))
        elif args.what == "memory":
            print(json.dumps([measure_memory(n, args.dir, args.code) for n in args.frames], indent=1))
        else:
            print(json.dumps([measure_throughput(args.videos, w, Path(tmp), args.max_frames) for w in args.workers],
                             indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
