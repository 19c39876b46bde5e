"""Peak memory of the streaming output path: read a driver -> (identity "render") -> paste-back -> write with sound.

A generated driver (ffmpeg's ``testsrc2`` at 256 px, 30 fps, with a 440 Hz tone) of 300 and of 3,000 frames is
streamed through :class:`~export3d.animation.video.VideoReader` (chunks of 16 frames), each frame standing in for
the rendered crop, :class:`~export3d.animation.pasteback.PasteBack` into a 1280 x 720 photo (the astronaut, scaled),
and :class:`~export3d.animation.video.VideoWriter` (libx264 ``veryfast``, one encoder thread, the driver's sound).
Each length runs in a fresh interpreter, which reports its peak resident set (``VmHWM`` of /proc/self/status), the
same after its imports (``import export3d`` brings torch: a fixed cost), and the largest peak of its ffmpeg child
processes (decoder and encoder), polled from their own /proc status. (``RUSAGE_CHILDREN`` would not do: a child's
``ru_maxrss`` starts from the parent's resident set at the fork, before ffmpeg is executed.) The path holds a chunk
and a frame at a time, so the peaks should not grow with the driver's length: the benchmark checks that the
3,000-frame run's peaks are within 16 MiB of the 300-frame run's.

Run: ``pytest benchmarks/bench_video_memory.py --benchmark-only -s``, or one length by hand:
``python -m benchmarks.bench_video_memory --frames 3000 --dir /tmp/x`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

FPS = 30
DRIVER_SIZE = 256
PHOTO_SIZE = (720, 1280)  # (height, width)
BOX = (480.0, 60.0, 420.0)  # the face crop in the photo: corner x, corner y, side
CHUNK = 16
LENGTHS = (300, 3000)


def make_driver(path: Path, frames: int) -> Path:
    """A generated talking-head stand-in: a moving test pattern with a tone. (ultrafast: only its frames matter)"""
    from export3d.animation.video import ffmpeg_exe

    seconds = frames / FPS
    subprocess.run([ffmpeg_exe(), "-y", "-v", "error",
                    "-f", "lavfi", "-i", f"testsrc2=size={DRIVER_SIZE}x{DRIVER_SIZE}:rate={FPS}:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
                   check=True)  # fmt: skip
    return path


def status_kib(pid: int | str = "self", field: str = "VmHWM") -> int | None:
    """A memory field of /proc/<pid>/status in KiB (None when the process or the field is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kib() -> int:
    """This process's peak resident set in KiB (VmHWM; ru_maxrss where /proc is missing)."""
    return status_kib() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class ChildPeaks:
    """Polls the peak resident set (VmHWM) of this process's ffmpeg children in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_kib, self.seen = interval, 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            for task in Path(f"/proc/{os.getpid()}/task").iterdir():  # children are listed by the forking thread
                try:
                    pids = (task / "children").read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    try:  # a child not yet executed is still a copy of this process: ffmpeg's only
                        name = Path(f"/proc/{pid}/comm").read_text().strip()
                    except OSError:
                        continue
                    peak = status_kib(pid) if name.startswith("ffmpeg") else None
                    if peak is not None:
                        self.seen.add(name)
                        self.peak_kib = max(self.peak_kib, peak)

    def __enter__(self) -> ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def stream(driver: Path, out: Path) -> dict:
    """The measured path; returns what was done and the peaks."""
    import cv2
    import skimage.data

    from export3d.animation.pasteback import PasteBack
    from export3d.animation.video import VideoReader, VideoWriter

    photo = cv2.resize(skimage.data.astronaut(), (PHOTO_SIZE[0], PHOTO_SIZE[0]), interpolation=cv2.INTER_CUBIC)
    photo = np.pad(photo, ((0, 0), (0, PHOTO_SIZE[1] - PHOTO_SIZE[0]), (0, 0)), mode="reflect")  # [720, 1280, 3]
    baseline = peak_rss_kib()
    start = time.perf_counter()
    written = 0
    with ChildPeaks() as children:
        paste = PasteBack(photo, BOX)
        reader = VideoReader(driver)
        with VideoWriter(out, reader.fps, audio_from=driver, preset="veryfast", threads=1) as writer:
            for chunk in reader.chunks(CHUNK):  # [n, 256, 256, 3]
                for crop in chunk:  # the identity "render": the driver frame is the rendered crop
                    writer.write(paste(crop))
                    written += 1
    return {"frames": written, "seconds": round(time.perf_counter() - start, 2), "peak_rss_kib": peak_rss_kib(),
            "peak_rss_after_imports_kib": baseline, "rss_at_end_kib": status_kib(field="VmRSS"),
            "children_peak_rss_kib": children.peak_kib, "children": sorted(children.seen),
            "output_bytes": out.stat().st_size}  # fmt: skip


def run_length(frames: int, folder: Path) -> dict:
    """One length in a fresh interpreter (its own peak), the driver made beforehand."""
    folder.mkdir(parents=True, exist_ok=True)
    make_driver(folder / f"driver{frames}.mp4", frames)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "benchmarks.bench_video_memory", "--frames", str(frames), "--dir", str(folder)]
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_video_memory_does_not_grow_with_length(benchmark, tmp_path):
    results = {}

    def measure():
        for frames in LENGTHS:
            results[frames] = run_length(frames, tmp_path)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    short, long = (results[n] for n in LENGTHS)
    for n, r in results.items():
        benchmark.extra_info[f"peak_rss_mib_{n}"] = round(r["peak_rss_kib"] / 1024, 1)
        benchmark.extra_info[f"peak_rss_after_imports_mib_{n}"] = round(r["peak_rss_after_imports_kib"] / 1024, 1)
        benchmark.extra_info[f"children_peak_rss_mib_{n}"] = round(r["children_peak_rss_kib"] / 1024, 1)
        benchmark.extra_info[f"seconds_{n}"] = r["seconds"]
    print(json.dumps(results, indent=1))
    assert short["frames"] == LENGTHS[0] and long["frames"] == LENGTHS[1]
    assert long["peak_rss_kib"] - short["peak_rss_kib"] < 16 * 1024
    assert long["children_peak_rss_kib"] - short["children_peak_rss_kib"] < 16 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="folder with driver<FRAMES>.mp4 (made if missing)")
    args = parser.parse_args()
    driver = args.dir / f"driver{args.frames}.mp4"
    if not driver.exists():
        args.dir.mkdir(parents=True, exist_ok=True)
        make_driver(driver, args.frames)
    print(json.dumps(stream(driver, args.dir / f"out{args.frames}.mp4")))


if __name__ == "__main__":
    main()
