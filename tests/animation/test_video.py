"""The video writer: exact frame count and rate, the driver's sound carried over and cut, nothing left on failure."""

import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from export3d.animation.video import VideoReader, VideoWriter, ffmpeg_exe, has_audio
from export3d.data.frames import VideoError

pytest.importorskip("imageio_ffmpeg")
NTSC = Fraction(30000, 1001)  # 29.97 fps
TONE = 440.0  # Hz


def make_driver(path: Path, seconds: float, fps=NTSC, audio: bool = True, size=(64, 48), onset: float = 0.0) -> Path:
    """A generated video (ffmpeg's test pattern) with a 440 Hz tone from ``onset`` seconds on as its sound, or
    silent."""
    cmd = [ffmpeg_exe(), "-y", "-v", "error", "-f", "lavfi", "-i",
           f"testsrc=size={size[0]}x{size[1]}:rate={fps}:duration={seconds}"]  # fmt: skip
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={TONE:g}:sample_rate=44100:duration={seconds}",
                "-af", f"volume=enable='lt(t,{onset})':volume=0", "-c:a", "aac"]  # fmt: skip
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return path


def decoded_audio(path: Path, rate: int = 8000) -> np.ndarray:
    """The file's first audio track as mono float samples at ``rate`` Hz (empty when it has none)."""
    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0?", "-f", "s16le", "-ac", "1",
                          "-ar", str(rate), "-"], capture_output=True, check=True).stdout  # fmt: skip
    return np.frombuffer(out, np.int16).astype(np.float64) / 32768


def stream_lines(path: Path) -> list[str]:
    err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    return [line.strip() for line in err.splitlines() if line.strip().startswith("Stream #")]


def frames(n: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Moving gradients, so every frame differs. # [n, H, W, 3] uint8"""
    y, x = np.mgrid[0:height, 0:width]
    t = np.arange(n)[:, None, None]
    rng = np.random.default_rng(seed)
    base = np.stack([(x + 3 * t) % 256, (y * 4 + t) % 256, np.broadcast_to(rng.integers(0, 256), (n, height, width))],
                    -1)  # fmt: skip
    return base.astype(np.uint8)


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    return make_driver(tmp_path_factory.mktemp("driver") / "driver.mp4", 2.0)


def test_reader_gives_rate_count_and_chunks(driver):
    reader = VideoReader(driver)
    assert reader.fps == pytest.approx(29.97, abs=0.01)
    assert reader.count_frames() == 60  # 2 s at 29.97 fps
    chunks = list(reader.chunks(size=25))
    assert [len(c) for c in chunks] == [25, 25, 10] and chunks[0].shape[1:] == (48, 64, 3)
    assert [len(c) for c in reader.chunks(size=25, max_frames=30)] == [25, 5]
    assert np.array_equal(next(iter(reader)), chunks[0][0])
    with pytest.raises(VideoError):
        VideoReader(driver.with_name("missing.mp4"))


@pytest.mark.parametrize("count", [45, 90])  # shorter than the sound (cut) and longer (silent at the end)
def test_output_has_the_frames_the_rate_and_the_drivers_sound(tmp_path, driver, count):
    out = tmp_path / "out.mp4"
    reader = VideoReader(driver)
    with VideoWriter(out, reader.fps, audio_from=driver) as writer:
        for chunk in np.array_split(frames(count), 4):
            writer.write(chunk)
    assert writer.frames == count
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temporary file left
    result = VideoReader(out)
    assert result.count_frames() == count
    assert result.fps == pytest.approx(29.97, abs=0.01)
    assert any("h264" in s and "yuv420p" in s and "64x48" in s for s in stream_lines(out))
    audio = decoded_audio(out)
    expected = min(count / (30000 / 1001), 2.0)  # the sound is cut to the video, or ends with the driver's
    assert len(audio) / 8000 == pytest.approx(expected, abs=0.03)
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert np.fft.rfftfreq(len(audio), 1 / 8000)[spectrum.argmax()] == pytest.approx(TONE, abs=3)  # the tone
    assert np.argmax(np.abs(audio) > 0.05) / 8000 < 0.01  # the tone (amplitude 1/8) starts with the first frame


def test_sound_stays_in_sync_and_audio_start_skips_into_the_driver(tmp_path):
    driver = make_driver(tmp_path / "onset.mp4", 2.0, onset=1.0)  # silent for 1 s, then the tone
    onset = lambda audio: np.argmax(np.abs(audio) > 0.05) / 8000  # noqa: E731 - seconds to the tone
    start = onset(decoded_audio(driver))
    assert start == pytest.approx(1.0, abs=0.025)  # the filter switches on at an audio frame (1024 samples)
    with VideoWriter(tmp_path / "sync.mp4", NTSC, audio_from=driver) as writer:
        writer.write(frames(60))
    assert onset(decoded_audio(tmp_path / "sync.mp4")) == pytest.approx(start, abs=0.005)  # not moved
    with VideoWriter(tmp_path / "late.mp4", NTSC, audio_from=driver, audio_start=0.6) as writer:
        writer.write(frames(30))  # 1 s of video from 0.6 s into the driver
    audio = decoded_audio(tmp_path / "late.mp4")
    assert onset(audio) == pytest.approx(start - 0.6, abs=0.005)
    assert len(audio) / 8000 == pytest.approx(30 / (30000 / 1001), abs=0.03)


def test_a_silent_driver_gives_a_silent_video(tmp_path):
    silent = make_driver(tmp_path / "silent.mp4", 1.0, fps=25, audio=False)
    assert not has_audio(silent)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25.0, audio_from=silent) as writer:
        writer.write(frames(20))
    assert not has_audio(out) and VideoReader(out).count_frames() == 20
    assert VideoReader(out).fps == pytest.approx(25.0)


def test_odd_sizes_are_padded_to_even(tmp_path):
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 24) as writer:
        writer.write(frames(5, height=47, width=63))
    assert any("64x48" in s for s in stream_lines(out))
    first = next(iter(VideoReader(out)))
    assert np.abs(first[:47, :63].astype(int) - frames(1, 47, 63)[0]).mean() < 6  # the picture itself is kept


def test_an_error_while_writing_leaves_no_file_and_keeps_an_earlier_one(tmp_path, driver):
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="render failed"):
        with VideoWriter(out, NTSC, audio_from=driver) as writer:
            writer.write(frames(10))
            raise RuntimeError("render failed")
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"an earlier video")
    with pytest.raises(ValueError, match="must all be"):
        with VideoWriter(out, NTSC) as writer:
            writer.write(frames(3))
            writer.write(frames(1, height=32))
    assert out.read_bytes() == b"an earlier video" and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(tmp_path / "empty.mp4", 25).close()
    assert not (tmp_path / "empty.mp4").exists()


def test_a_killed_process_leaves_no_output_file(tmp_path):
    out = tmp_path / "out.mp4"
    code = ("import os, sys, numpy as np; from export3d.animation.video import VideoWriter\n"
            f"w = VideoWriter({str(out)!r}, 25)\n"
            "w.write(np.zeros((10, 32, 32, 3), np.uint8)); sys.stdout.flush(); os._exit(3)\n")  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2]).returncode == 3
    assert not out.exists()
    assert all(re.fullmatch(r"\.out\.(tmp|video)-\d+\.mp4", p.name) for p in tmp_path.iterdir())  # hidden only


def test_writer_arguments_are_checked(tmp_path, driver):
    with pytest.raises(ValueError, match="path"):
        VideoWriter(tmp_path / "out.gif", 25)
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "out.mp4", 0)
    with pytest.raises(ValueError, match="audio_from"):
        VideoWriter(tmp_path / "out.mp4", 25, audio_from=tmp_path / "none.mp4")
    with VideoWriter(tmp_path / "out.mp4", 25) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(frames(2).astype(np.float32))
        writer.write(frames(2))
    assert has_audio(driver) and not has_audio(tmp_path / "out.mp4")
