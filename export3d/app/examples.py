"""Example inputs the demo makes itself, so that it works with no file of the user's and no network.

- the photo: scikit-image's astronaut (Eileen Collins, public domain; the file ships inside scikit-image);
- the driving clip: the same photo rolled about a point between her eyes and mouth and moved, frame by frame, cut
  to a 320 px window (as ``tests/data/faces.py`` makes its test clips), with a two-tone sound track, so the
  animation's sound can be heard. The clip has head motion only: a still photo has no change of expression.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np

CLIP_FRAMES = 24
CLIP_FPS = 12.0
CLIP_SIZE = 320  # the frames are 320 x 320 windows of the 512 x 512 photo
WINDOW = (40, 90)  # top-left (x, y) of the window in the photo
PIVOT = (250.0, 160.0)  # rotation centre in photo pixels (between the eyes and the mouth)


def astronaut() -> np.ndarray:
    """The photo # [512, 512, 3] uint8."""
    import skimage.data

    return skimage.data.astronaut()


def write_example_photo(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(astronaut()).save(path)
    return path


def clip_frame(photo: np.ndarray, t: int, frames: int) -> np.ndarray:
    """Frame ``t`` of the clip # [CLIP_SIZE, CLIP_SIZE, 3] uint8: the photo rolled by up to 12 degrees about PIVOT
    and shifted by up to 18 px (one full roll over the clip), then windowed."""
    from PIL import Image

    phase = 2 * math.pi * t / frames
    roll, dx, dy = 12.0 * math.sin(phase), 18.0 * math.sin(phase / 2), 8.0 * math.cos(phase)
    moved = Image.fromarray(photo).rotate(roll, resample=Image.Resampling.BICUBIC, center=PIVOT,
                                          translate=(dx, dy), fillcolor=(128, 128, 128))  # fmt: skip
    x, y = WINDOW
    return np.asarray(moved.crop((x, y, x + CLIP_SIZE, y + CLIP_SIZE)))


def write_example_clip(path: Path, frames: int = CLIP_FRAMES, fps: float = CLIP_FPS) -> Path:
    """The driving clip as an H.264 + AAC mp4 at ``path``: ``frames`` frames at ``fps``, and a sound track of the same
    length (440 Hz, then 660 Hz), encoded by the ffmpeg binary of imageio-ffmpeg."""
    from export3d.animation.video import ffmpeg_exe

    if frames < 1 or fps <= 0:
        raise ValueError(f"example clip: frames must be >= 1 and fps > 0, got {frames} and {fps}")
    photo = astronaut()
    pixels = b"".join(clip_frame(photo, t, frames).tobytes() for t in range(frames))
    seconds = frames / fps
    tone = f"sine=frequency=440:duration={seconds / 2:.6f},apad=whole_dur={seconds:.6f}[a0];" \
           f"sine=frequency=660:duration={seconds:.6f},adelay={500 * seconds:.0f}:all=1[a1];" \
           f"[a0][a1]amix=inputs=2:duration=first[a]"  # fmt: skip
    command = [ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{CLIP_SIZE}x{CLIP_SIZE}", "-r", f"{fps:g}", "-i", "-", "-filter_complex", tone,
               "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
               "-t", f"{seconds:.6f}", str(path)]  # fmt: skip
    done = subprocess.run(command, input=pixels, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"example clip: ffmpeg failed ({done.returncode}): "
                           f"{done.stderr.decode(errors='replace')[-500:]}")  # fmt: skip
    return path
