"""Peak memory and time per stage of the whole animation path: a photo animated by a video, with paste-back and sound.

The path is :class:`~export3d.animation.animator.Animator`'s (``python -m export3d.animate --source PHOTO --driving
VIDEO``): the photo's face found and cut, then, chunk by chunk as the driver is decoded and tracked
(:class:`~export3d.animation.driver.VideoSignal`), the filtered signals, relative motion, the model's renders, the
paste-back into the photo and the H.264 encoding with the driver's sound. The inputs are generated, from images the
project may ship: the photo is scikit-image's astronaut in a 960 x 540 grey canvas (her face about 2 % of it); the
driver is a 256 px window of the same photo rolled, moved and scaled over time (:func:`driver_frame`), 30 fps,
with a 440 Hz tone. The model is a freshly initialised 52-d checkpoint (32 px, the test suite's
``write_checkpoint``): the benchmark measures the path, not a trained model's output.

Each length (3,000 and 6,000 driving frames) runs in a fresh interpreter with one torch thread, which reports its
peak resident set (``VmHWM`` of /proc/self/status) in three phases, the peak being reset between them (``5`` into
/proc/self/clear_refs): ``load`` (imports, the checkpoint, the landmarker), ``read`` (the photo's faces and the
driver opened: :meth:`~export3d.animation.animator.Animator.photo_faces` and
:meth:`~export3d.animation.animator.Animator.video_drive`) and ``render`` (:meth:`Animator.run`: the driver read,
render, paste-back, encode, mux the sound), with the resident set each phase starts from, and the peaks of its
ffmpeg children (decoder, encoder, mux), polled from their own /proc status. It also reports the animator's timing
line. The benchmark checks that the 6,000-frame run's peaks are within ``TOLERANCE_MIB`` of the 3,000-frame run's
(``FFMPEG_TOLERANCE_MIB`` for the ffmpeg children): memory must not grow with the driver's length. (Shorter runs
start lower: the tracker re-creates MediaPipe's landmarker when the face leaves its window, and the process's
resident set settles after about a hundred re-creations: +17 MiB from 300 to 3,000 frames of this driver, none from
3,000 to 6,000.)

Run: ``pytest benchmarks/bench_animate.py --benchmark-only -s``, or one length by hand:
``python -m benchmarks.bench_animate --frames 3000 --dir /tmp/x`` (prints JSON; the checkpoint and the driver are
made in ``--dir`` when missing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_video_memory import ChildPeaks, status_kib

FPS = 30
DRIVER_SIZE = 256  # the driving frames' side
WINDOW = (60, 0, 320)  # the driver's window of the astronaut photo: corner x, corner y, side (her whole head)
PIVOT = (235.0, 130.0)  # the head's rotation centre in photo pixels (her nose)
CANVAS = (960, 540)  # the source photo: (width, height)
PHOTO_AT = (224, 14)  # where the astronaut's 512 px photo sits in it
LENGTHS = (3000, 6000)
TOLERANCE_MIB = 4  # this process's peaks
FFMPEG_TOLERANCE_MIB = 16  # libx264's peak settles within the first thousands of frames (measured: 186 MiB after
# 300 frames of the 960 x 540 photo, 191 after 3,000, 190 after 6,000), as in bench_video_memory
PHASES = ("load", "read", "render")


# ----------------------------------------------------------------------------------------------- inputs
def source_photo() -> np.ndarray:
    """The source photo # [540, 960, 3] uint8: the astronaut on a grey canvas."""
    import skimage.data

    photo = np.full((CANVAS[1], CANVAS[0], 3), 100, np.uint8)
    x, y = PHOTO_AT
    photo[y:y + 512, x:x + 512] = skimage.data.astronaut()[:CANVAS[1] - y]
    return photo


def motion(t: int) -> tuple[float, float, float, float]:
    """The head's (roll in degrees, shift x, shift y in photo pixels, scale) in driving frame ``t``: slow sines of
    different periods (3 to 6.7 s at 30 fps), so a long driver never repeats exactly."""
    return (15.0 * math.sin(2 * math.pi * t / 90), 12.0 * math.sin(2 * math.pi * t / 150),
            8.0 * math.cos(2 * math.pi * t / 120), 1.0 + 0.06 * math.sin(2 * math.pi * t / 200))  # fmt: skip


def driver_frame(t: int, photo: np.ndarray | None = None, size: int = DRIVER_SIZE) -> np.ndarray:
    """Driving frame ``t`` # [size, size, 3] uint8: the astronaut's head window rolled, moved and scaled by
    :func:`motion` about ``PIVOT``."""
    import cv2
    import skimage.data

    photo = skimage.data.astronaut() if photo is None else photo
    roll, dx, dy, scale = motion(t)
    m = cv2.getRotationMatrix2D(PIVOT, roll, scale)  # photo -> photo, about the nose
    m[:, 2] += (dx - WINDOW[0], dy - WINDOW[1])  # then into the window
    m *= size / WINDOW[2]  # and the window to the frame
    return cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def make_driver(path: Path, frames: int, size: int = DRIVER_SIZE) -> Path:
    """``frames`` driving frames at ``FPS``, H.264 (ultrafast: only the frames matter) with a 440 Hz tone (AAC),
    generated frame by frame into ffmpeg's pipe."""
    import skimage.data

    from export3d.animation.video import ffmpeg_exe

    photo = skimage.data.astronaut()
    cmd = [ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}",
           "-r", str(FPS), "-i", "-", "-f", "lavfi", "-i", f"sine=frequency=440:duration={frames / FPS}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
           str(path)]  # fmt: skip
    with subprocess.Popen(cmd, stdin=subprocess.PIPE) as ffmpeg:
        for t in range(frames):
            ffmpeg.stdin.write(driver_frame(t, photo, size).tobytes())
        ffmpeg.stdin.close()
        if ffmpeg.wait() != 0:
            raise RuntimeError(f"ffmpeg failed to write {path}")
    return path


def make_checkpoint(root: Path) -> Path:
    """A freshly initialised 52-d (blendshape-driven) 32 px tiny model, saved as training saves it."""
    from tests.evaluation.test_evaluate import write_checkpoint

    return write_checkpoint(root, expression_dim=52)


def inputs(folder: Path, frames: int) -> tuple[Path, Path, Path]:
    """(checkpoint, photo, driver) in ``folder``, made when missing."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint, photo, driver = folder / "run", folder / "photo.png", folder / f"driver{frames}.mp4"
    if not (checkpoint / "checkpoints").exists():
        make_checkpoint(checkpoint)
    if not photo.exists():
        Image.fromarray(source_photo()).save(photo)
    if not driver.exists():
        make_driver(driver, frames)
    return checkpoint, photo, driver


# ----------------------------------------------------------------------------------------------- the run
def reset_peak() -> None:
    """Start VmHWM again from the current resident set (Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")


class FfmpegPeaks(ChildPeaks):
    """:class:`~benchmarks.bench_video_memory.ChildPeaks`, with the peak of each kind of ffmpeg child apart:
    ``decode`` (the driver read by the tracker), ``encode`` (libx264), ``mux`` (the sound added)."""

    def __init__(self, interval: float = 0.02):
        super().__init__(interval)
        self.peaks: dict[str, int] = {}

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            for task in Path(f"/proc/{os.getpid()}/task").iterdir():
                try:
                    pids = (task / "children").read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                    except OSError:
                        continue
                    peak = status_kib(pid) if cmd and "ffmpeg" in Path(cmd[0]).name else None
                    if peak is not None:
                        kind = "mux" if "copy" in cmd else "encode" if "libx264" in cmd else "decode"
                        self.peaks[kind] = max(self.peaks.get(kind, 0), peak)
                        self.peak_kib = max(self.peak_kib, peak)


def animate(checkpoint: Path, photo: Path, driver: Path, out: Path) -> dict:
    """The measured path: :meth:`Animator.animate`'s steps, with the peak read and reset between phases."""
    import torch

    torch.set_num_threads(1)
    from export3d.animation.animator import AnimationSettings, Animator, StageClock
    from export3d.animation.video import VideoReader, has_audio

    peaks, start = {}, {}  # VmHWM at the end of each phase, VmRSS at its start (KiB)
    settings = AnimationSettings()  # relative motion, paste-back, the tuned filters, batches of 8
    with FfmpegPeaks() as children, Animator(checkpoint, "cpu", progress=False) as animator:
        animator.face_tools()  # the landmarker is loaded here, not counted in the read phase
        peaks["load"] = status_kib()
        start["read"] = status_kib(field="VmRSS")
        reset_peak()
        clock = StageClock()
        with clock("detection + landmarks"):
            faces = animator.photo_faces(photo, settings)
            faces = faces[0] if isinstance(faces, tuple) else faces  # (faces, notes) in the newer API
            drive = animator.video_drive(driver, settings)
        peaks["read"] = status_kib()
        start["render"] = status_kib(field="VmRSS")
        reset_peak()
        result = animator.run(faces, drive, out, settings, frames=False, clock=clock)
        peaks["render"] = status_kib()
    return {"frames": result.frames, "written": VideoReader(out).count_frames(), "held": result.held,
            "fps": result.fps, "size": list(result.size), "sound": has_audio(out), "faces": result.faces,
            "ms_per_frame": {k: round(1000 * s / result.frames, 2) for k, s in result.seconds.items()},
            "summary": result.summary, "peak_kib": peaks, "rss_at_start_kib": start,
            "children_peak_kib": children.peak_kib, "children_peaks_kib": children.peaks,
            "output_bytes": out.stat().st_size}  # fmt: skip


def run_length(frames: int, folder: Path) -> dict:
    """One length in a fresh interpreter (its own peaks), the inputs made beforehand."""
    inputs(folder, frames)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "benchmarks.bench_animate", "--frames", str(frames), "--dir", str(folder)]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def growth_mib(short: dict, long: dict) -> dict:
    """How much the long run exceeds the short run, in MiB: ``peak`` the process's peak over the whole run,
    ``<phase>`` each phase's peak, ``render loop`` the render phase's peak above the resident set it started from
    (what the streaming loop itself adds), and each kind of ffmpeg child's peak."""

    def loop(r: dict) -> int:
        return r["peak_kib"]["render"] - r["rss_at_start_kib"]["render"]

    out = {"peak": max(long["peak_kib"].values()) - max(short["peak_kib"].values())}
    out.update({p: long["peak_kib"][p] - short["peak_kib"][p] for p in PHASES})
    out["render loop"] = loop(long) - loop(short)
    ffmpeg = short["children_peaks_kib"]
    out.update({f"ffmpeg {k}": long["children_peaks_kib"].get(k, 0) - v for k, v in ffmpeg.items()})
    return {k: round(v / 1024, 1) for k, v in out.items()}


def test_animation_memory_does_not_grow_with_length(benchmark, tmp_path):
    results = {}

    def measure():
        for frames in LENGTHS:
            results[frames] = run_length(frames, tmp_path)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    short, long = (results[n] for n in LENGTHS)
    for n, r in results.items():
        for phase in PHASES:
            benchmark.extra_info[f"peak_{phase}_mib_{n}"] = round(r["peak_kib"][phase] / 1024, 1)
        ffmpeg = r["children_peaks_kib"]
        benchmark.extra_info[f"ffmpeg_peak_mib_{n}"] = {k: round(v / 1024, 1) for k, v in ffmpeg.items()}
        benchmark.extra_info[f"ms_per_frame_{n}"] = r["ms_per_frame"]
        benchmark.extra_info[f"summary_{n}"] = r["summary"]
    growth = growth_mib(short, long)
    benchmark.extra_info["growth_mib"] = growth
    print(json.dumps(results, indent=1), "\ngrowth from 300 to 3,000 frames (MiB):", growth)
    for n, r in results.items():
        assert r["frames"] == r["written"] == n and r["sound"] and r["faces"] == [0]
    limit = {k: FFMPEG_TOLERANCE_MIB if k.startswith("ffmpeg") else TOLERANCE_MIB for k in growth}
    grown = {k: v for k, v in growth.items() if v >= limit[k]}
    assert not grown, f"peak memory grows with the driver's length (MiB, {LENGTHS[0]} -> {LENGTHS[1]} frames): {grown}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, required=True, help="driving frames")
    parser.add_argument("--dir", type=Path, required=True, help="folder of the inputs (made when missing)")
    args = parser.parse_args()
    checkpoint, photo, driver = inputs(args.dir, args.frames)
    print(json.dumps(animate(checkpoint, photo, driver, args.dir / f"out{args.frames}.mp4")))


if __name__ == "__main__":
    main()
