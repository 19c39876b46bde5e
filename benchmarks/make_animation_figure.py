"""docs/animation.png: a photo animated by a video through the whole path, from images the project may ship.

The source photo is scikit-image's astronaut at 0.75 scale on a 640 x 400 grey canvas; the driver is
:func:`benchmarks.bench_animate.driver_frame`'s video (a 256 px window of the same photo rolled by up to 15 degrees,
moved and scaled; 90 frames at 30 fps with a tone). :class:`~export3d.animation.animator.Animator` animates the
photo with it (the defaults: relative motion from driving frame 0, the One Euro filters, paste-back). The figure:
top row, the source photo and three driving frames; bottom row, the output frame of the first of them whole and the
three output frames cut around the face (1.8 x the crop the model saw), so the feathered paste-back is visible.

Run: ``python -m benchmarks.make_animation_figure --checkpoint RUN --out docs/animation.png`` (RUN: a 52-d
checkpoint, trained with ``--expression-source landmarker``). The image is reduced to 256 colours.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_animate import driver_frame, make_driver

CANVAS = (640, 400)  # (width, height) of the source photo
SCALE, AT = 0.75, (128, 16)  # the astronaut's scale and top-left corner in it
FRAMES = 90  # one period of the driver's roll
SHOWN = (22, 45, 67)  # driving frames shown: roll +15 degrees, moved and back, roll -15 degrees
TILE = 200  # the side of a square tile (and the height of every tile)
LABEL = 20  # the height of the label strip above each tile
ZOOM = 1.8  # the zoomed outputs: this many times the model's crop, around it


def source_photo() -> np.ndarray:
    """The astronaut, scaled, on a grey canvas # [400, 640, 3] uint8."""
    import cv2
    import skimage.data

    photo = np.full((CANVAS[1], CANVAS[0], 3), 110, np.uint8)
    small = cv2.resize(skimage.data.astronaut(), None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_AREA)
    h, w = min(small.shape[0], CANVAS[1] - AT[1]), min(small.shape[1], CANVAS[0] - AT[0])
    photo[AT[1]:AT[1] + h, AT[0]:AT[0] + w] = small[:h, :w]
    return photo


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` resized to height ``TILE`` under a white strip with ``text``."""
    import cv2

    width = round(image.shape[1] * TILE / image.shape[0])
    tile = cv2.resize(image, (width, TILE), interpolation=cv2.INTER_AREA if image.shape[0] > TILE else cv2.INTER_CUBIC)
    strip = np.full((LABEL, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, LABEL - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, tile], 0)


def square_around(frame: np.ndarray, box: np.ndarray, zoom: float) -> np.ndarray:
    """The square of ``zoom`` times the crop ``box`` (corner x, corner y, side), same centre (the frame's edge
    pixels repeated where it reaches past the frame)."""
    x, y, side = box
    n = round(zoom * side)
    x0, y0 = round(x + side / 2 - n / 2), round(y + side / 2 - n / 2)
    pad = max(0, -x0, -y0, x0 + n - frame.shape[1], y0 + n - frame.shape[0])
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[y0 + pad:y0 + pad + n, x0 + pad:x0 + pad + n]


def make_figure(checkpoint: str | Path, out: str | Path) -> dict:
    """Animate, compose and write the figure; returns what the run reported."""
    from PIL import Image

    from export3d.animation.animator import AnimationSettings, Animator

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.fromarray(source_photo()).save(tmp / "photo.png")
        make_driver(tmp / "driver.mp4", FRAMES)
        with Animator(checkpoint, "cpu", progress=False) as animator:
            settings = AnimationSettings()
            result = animator.animate(tmp / "photo.png", tmp / "driver.mp4", tmp / "out.mp4", settings, frames=True)
            box = animator.read_source(tmp / "photo.png").faces[0].box
        outputs = {t: np.asarray(Image.open(result.frames_dir / f"{t:05d}.png").convert("RGB")) for t in SHOWN}
        crop = np.asarray(Image.open(result.source_png).convert("RGB"))
    top = [labelled(source_photo(), "source photo (scikit-image astronaut)")]
    top += [labelled(driver_frame(t), f"driving frame {t}") for t in SHOWN]
    bottom = [labelled(outputs[SHOWN[0]], f"output frame {SHOWN[0]}, pasted back")]
    bottom += [labelled(square_around(outputs[t], box, ZOOM), f"output {t}, around the face") for t in SHOWN]
    rows = [np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in row], 1)
            for row in (top, bottom)]  # fmt: skip
    figure = np.concatenate([rows[0], np.full((4, rows[0].shape[1], 3), 255, np.uint8), rows[1]], 0)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure).quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return {"frames": result.frames, "fps": result.fps, "size": result.size, "held": result.held,
            "summary": result.summary, "box": [round(float(v), 1) for v in box], "crop_px": crop.shape[:2],
            "figure": figure.shape[:2], "bytes": Path(out).stat().st_size}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a 52-d run (trained with --expression-source landmarker)")
    parser.add_argument("--out", default="docs/animation.png")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(make_figure(args.checkpoint, args.out))


if __name__ == "__main__":
    main()
