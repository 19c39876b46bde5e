"""A photo and a video in, that photo animated out (``Animator`` and ``python -m export3d.animate``).

The photo is the astronaut (scikit-image) in a larger canvas; the driver is her photo rolled and moved over time,
with faceless frames in the middle and a sine tone as sound. The model is a freshly initialised 52-d checkpoint:
these tests check the path (faces found, one frame per driving frame, sound, paste-back, relative motion), not
the quality of a trained model.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from export3d.animate import main
from export3d.animation.animator import AnimationSettings, Animator
from export3d.animation.pasteback import PasteBack
from export3d.animation.video import VideoReader, ffmpeg_exe, has_audio
from export3d.utils.images import to_uint8
from tests.data.faces import place, write_astronaut_frames
from tests.evaluation.test_evaluate import write_checkpoint

FRAMES, BLANK, FPS = 8, (3, 4), 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("animator") / "run", expression_dim=52)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """The astronaut at 0.6 scale in a 700 x 500 canvas (her face about 4 % of the picture)."""
    import skimage.data

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(place(skimage.data.astronaut(), np.array([[0.6, 0, 260.0], [0, 0.6, 60.0]]), (700, 500))).save(path)
    return path


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """Her photo rolled and moved over 8 frames at 20 fps, frames 3 and 4 without a face, with a 440 Hz tone."""
    import subprocess

    root = tmp_path_factory.mktemp("driver")
    folder = write_astronaut_frames(root / "frames", frames=FRAMES, blank=BLANK)
    path = root / "talk.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-v", "error", "-framerate", str(FPS), "-i", str(folder / "%05d.png"),
                    "-f", "lavfi", "-i", f"sine=frequency=440:duration={FRAMES / FPS}", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)  # fmt: skip
    return path


def test_a_photo_animated_by_a_video_with_sound_one_frame_per_driving_frame(checkpoint, photo, driver, tmp_path):
    out = tmp_path / "out.mp4"
    with Animator(checkpoint, progress=False) as animator:
        result = animator.animate(photo, driver, out, AnimationSettings(batch_size=3), frames=True)
    reader = VideoReader(out)
    assert reader.count_frames() == FRAMES and result.frames == FRAMES  # the faceless frames are held, not dropped
    assert abs(reader.fps - FPS) < 1e-6 and has_audio(out)
    assert result.held == len(BLANK) and result.faces == [0]
    assert result.size == (500, 700)  # the photo's own resolution
    assert set(result.seconds) == {"detection + landmarks", "model", "paste-back", "encoding"}
    assert re.search(r"time per frame: detection \+ landmarks [\d.]+ ms, model [\d.]+ ms, paste-back [\d.]+ ms, "
                     r"encoding [\d.]+ ms; 8 frames in [\d.]+ s", result.summary)
    with Image.open(result.source_png) as source:
        assert source.size == (32 + 4, 32 + 4)  # the aligned 32 px crop the model saw
    # paste-back: outside the region a face can change, every pixel of every frame is the photo's own, exactly
    original = np.asarray(Image.open(photo).convert("RGB"))
    with Animator(checkpoint, progress=False) as animator:
        x0, y0, x1, y1 = PasteBack(original, animator.read_source(photo).faces[0].box).region
    for png in sorted(result.frames_dir.glob("*.png")):
        frame = np.asarray(Image.open(png).convert("RGB"))
        outside = np.ones(frame.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(frame[outside], original[outside])
        assert not np.array_equal(frame[y0:y1, x0:x1], original[y0:y1, x0:x1])  # the face itself is rendered


def _frames(result) -> list[torch.Tensor]:
    paths = sorted(result.frames_dir.glob("*.png"))
    return [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).int() for p in paths]


def test_relative_motion_from_the_photo_itself_reproduces_its_own_render(checkpoint, photo, tmp_path):
    """A still driver made of the source photo itself, rolled by 20 degrees and shrunk: relative motion is zero, so
    every frame is the render of the source with its own expression and camera. Absolute motion takes the driver's
    rolled camera, and its frames differ: the test tells the two apart."""
    import cv2
    import imageio.v2 as iio

    still = np.asarray(Image.open(photo).convert("RGB"))
    rolled = cv2.warpAffine(still, cv2.getRotationMatrix2D((380.0, 160.0), 20.0, 0.8), (700, 500),
                            borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    iio.mimwrite(tmp_path / "still.mp4", [rolled] * 5, fps=10, macro_block_size=1, quality=10)
    with Animator(checkpoint, progress=False) as animator:
        face = animator.photo_faces(photo, AnimationSettings(paste_back=False))[0][0]
        with torch.no_grad():
            own = animator.model.render(animator.model.generate_triplane(face.image[None], animator.codes(
                face.expression[None])), torch.as_tensor(face.camera[None], dtype=torch.float32)).image
        own = torch.from_numpy(to_uint8(own.clamp(-1, 1)))[0].int()
        for motion, name in (("relative", "same"), ("absolute", "rolled")):
            settings = AnimationSettings(paste_back=False, motion=motion)
            drive = animator.video_drive(tmp_path / "still.mp4", settings)
            result = animator.run([face], drive, tmp_path / f"{name}.mp4", settings, frames=True)
            frames = _frames(result)
            assert len(frames) == 5
            error = [(f - own).abs().float() for f in frames]
            if motion == "relative":  # the source's own render in every frame (measured: 1 level at most, mean 0.15)
                assert max(e.max().item() for e in error) <= 2 and max(e.mean().item() for e in error) < 0.3
            else:  # the driver's own rolled camera: this untrained model's render moves less than a trained one's
                assert min(e.mean().item() for e in error) > 0.5  # (measured: mean 0.8, max 5 levels per frame)


def test_the_command_line_picks_faces_and_writes_the_source_crop(checkpoint, photo, driver, tmp_path, capsys):
    import skimage.data

    pair = np.full((420, 1000, 3), 90, np.uint8)
    small = place(skimage.data.astronaut(), np.array([[0.7, 0, 0], [0, 0.7, 0.0]]), (1000, 420), pair)
    two = place(skimage.data.astronaut(), np.array([[0.7, 0, 560.0], [0, 0.7, 0.0]]), (1000, 420), small)
    Image.fromarray(two).save(tmp_path / "two.png")
    out = tmp_path / "two.mp4"
    assert main(["--checkpoint", str(checkpoint), "--source", str(tmp_path / "two.png"), "--driving", str(driver),
                 "--out", str(out), "--all-faces", "--frames", "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "face 0" in printed and "face 1" in printed and "time per frame" in printed
    with Image.open(tmp_path / "two_source.png") as source:
        assert source.size == (36, 2 * 34 + 2)  # both aligned crops, one column
    assert VideoReader(out).count_frames() == FRAMES
    code = main(["--checkpoint", str(checkpoint), "--source", str(tmp_path / "two.png"), "--driving", str(driver),
                 "--out", str(tmp_path / "one.mp4"), "--quiet"])  # fmt: skip
    assert code == 0 and "has 2 faces, left to right" in capsys.readouterr().out  # ambiguous: listed, largest used
    code = main(["--checkpoint", str(checkpoint), "--source", str(tmp_path / "two.png"), "--driving", str(driver),
                 "--out", str(tmp_path / "bad.mp4"), "--face", "2", "--quiet"])  # fmt: skip
    assert code == 2 and "--face: " in capsys.readouterr().err and not (tmp_path / "bad.mp4").exists()


def test_a_photo_without_a_face_is_named_with_the_smallest_face_searched(checkpoint, driver, tmp_path, capsys):
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    code = main(["--checkpoint", str(checkpoint), "--source", str(tmp_path / "wall.png"), "--driving", str(driver),
                 "--out", str(tmp_path / "x.mp4"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"no face found in {tmp_path / 'wall.png'}" in err
    assert re.search(r"faces were searched from \d+ px", err)
