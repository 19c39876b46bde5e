"""The web demo's model side and command line, without Gradio or a browser (tests/app/test_browser.py has those).

The checkpoint is a freshly initialised 32 px, 52-d model (tests/evaluation/test_evaluate.py): these tests check
the caching, the renders against the model's own calls, the example inputs and the error messages.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from export3d.animation.animator import AnimationSettings, Animator
from export3d.animation.video import VideoReader, has_audio
from export3d.app.__main__ import main
from export3d.app.charts import driving_figure, most_varying
from export3d.app.engine import Demo
from export3d.app.examples import write_example_clip, write_example_photo
from export3d.app.page import error_text
from export3d.cameras import orbit_camera_deg
from export3d.data.frames import VideoError
from export3d.utils.images import to_uint8
from tests.evaluation.test_evaluate import write_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("app") / "run", expression_dim=52)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return write_example_photo(root / "astronaut.png"), write_example_clip(root / "clip.mp4", frames=6, fps=12.0)


@pytest.fixture(scope="module")
def demo(checkpoint, tmp_path_factory):
    with Animator(checkpoint, "cpu", progress=False) as animator:
        yield Demo(animator, tmp_path_factory.mktemp("outputs"))


def test_the_example_clip_has_its_frames_rate_and_sound(inputs):
    reader = VideoReader(inputs[1])
    assert reader.count_frames() == 6 and abs(reader.fps - 12.0) < 1e-6 and has_audio(inputs[1])


def test_edits_render_from_one_cached_source_and_triplane(demo, inputs):
    photo, _ = inputs
    source = demo.edit_source(photo)
    assert demo.edit_source(photo) is source  # encoded once per photo content
    assert source.coefficients.shape == (1, demo.n_basis) == (1, 10)
    first = demo.edit(source, 0.0, 0.0)
    planes = source.planes
    turned = demo.edit(source, 20.0, -5.0)
    assert first.generated and not turned.generated and source.planes is planes  # a view: render only
    assert not np.array_equal(first.image, turned.image)
    factors = (3.0,) + (1.0,) * 9
    scaled = demo.edit(source, 20.0, -5.0, factors)
    assert scaled.generated and source.planes is not planes  # a basis factor: a new tri-plane
    # the cached path gives what the model's own calls give for the same code and camera
    model = demo.model
    with torch.no_grad():
        expression = torch.as_tensor(source.face.expression[None], dtype=torch.float32)
        code = model.lebs.from_coefficients(model.lebs.scale_coefficients(model.lebs.coefficients(expression), 0, 3.0))
        image = model.render(model.generate_triplane(source.face.image[None], code),
                             orbit_camera_deg(20.0, -5.0)[None].float()).image  # fmt: skip
    assert np.abs(to_uint8(image[0]).astype(int) - scaled.image.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="has 10 coefficients, got 2"):
        demo.edit(source, 0.0, 0.0, (1.0, 2.0))


def test_animation_gives_one_frame_per_driving_frame_the_crop_and_the_signal(demo, inputs):
    run = demo.animate(*inputs, AnimationSettings(batch_size=4))
    assert VideoReader(run.result.video).count_frames() == 6 and has_audio(run.result.video)
    assert run.crops.shape == (32, 32, 3)
    assert run.text.startswith("6 frames, 512x512 px, 12 fps, with the driver's sound")
    top, bottom = run.figure.axes
    assert len(top.lines) == 4 and [line.get_label() for line in bottom.lines] == ["yaw", "elevation (pitch)", "roll"]
    again = demo.animate(*inputs, AnimationSettings(paste_back=False))
    assert not run.result.video.exists() and again.result.size == (32, 32)  # the previous output is dropped


def test_bad_inputs_raise_the_command_lines_errors(demo, inputs, tmp_path):
    photo, clip = inputs
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"photo: cannot read .*notes.png as an image") as bad:
        demo.animate(tmp_path / "notes.png", clip, AnimationSettings())
    assert error_text(bad.value) == f"export3d.app: error: {bad.value}"
    with pytest.raises(ValueError, match="--driving: no video given"):
        demo.animate(photo, None, AnimationSettings())
    with pytest.raises(VideoError):
        demo.animate(photo, tmp_path / "notes.png", AnimationSettings())
    with pytest.raises(ValueError, match=r"--face: .* has 1 face\(s\)"):
        demo.edit_source(photo, 3)
    assert error_text(KeyError("a bug")) is None  # not a user error: the page lets it through as a bug


def test_a_64d_direct_checkpoint_edits_views_and_says_why_a_video_cannot_drive_it(inputs, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "run", encoder="direct", expression_dim=64)
    with Animator(checkpoint, "cpu", progress=False) as animator:
        demo = Demo(animator, tmp_path)
        source = demo.edit_source(inputs[0])
        assert demo.n_basis == 0 and source.coefficients is None  # no learned basis: views only
        assert demo.edit(source, 10.0, 0.0).image.shape == (32, 32, 3)
        with pytest.raises(ValueError, match="a video gives the 52 MediaPipe blendshapes per frame, but this "
                                             "checkpoint's model takes 64-d expressions"):  # fmt: skip
            demo.animate(*inputs, AnimationSettings())


def test_the_most_varying_entries_and_a_figure_without_expressions():
    expression = np.zeros((5, 6))
    expression[:, 4] = np.arange(5)
    expression[:, 1] = [0, 1, 0, 1, 0]
    assert most_varying(expression, 2) == [1, 4]
    cameras = orbit_camera_deg(10.0, 0.0)[None].expand(5, -1).double().numpy()
    figure = driving_figure(None, cameras, 10.0)
    assert len(figure.axes[0].lines) == 0 and len(figure.axes[1].lines) == 3


def test_the_command_line_fails_fast_on_a_busy_port_and_a_bad_checkpoint(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--checkpoint", str(tmp_path), "--port", str(port)]) == 2
    assert f"export3d.app: error: --host / --port: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err  # the checkpoint's error, or first the missing extra's when Gradio is not installed
    assert f"export3d.app: error: checkpoint: {tmp_path / 'missing'} does not exist" in err or \
        "export3d.app: error: gradio is needed by the web demo but is not installed" in err  # fmt: skip
