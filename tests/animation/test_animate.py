"""Animation CLI: each driving mode writes a playable H.264 mp4 (read back with imageio); bad inputs are named."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from export3d.animate import main
from export3d.animation.inputs import orbit_cameras
from export3d.cameras import orbit_camera
from export3d.data import SyntheticClips, SyntheticConfig
from export3d.data.clips import write_clip
from export3d.evaluation.loading import load_model
from export3d.model import Export3D
from export3d.utils.cli import EXIT_DEVICE_ERROR
from export3d.utils.images import load_image, to_uint8
from tests.evaluation.test_evaluate import write_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("animate") / "run")


@pytest.fixture(scope="module")
def rgba_image(tmp_path_factory):
    """An odd-sized RGBA image (centre-cropped and resized by the loader)."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(45, 70, 4), dtype=np.uint8)
    path = tmp_path_factory.mktemp("img") / "face.png"
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def _read(path):
    import imageio.v3 as iio

    frames = iio.imread(path)  # [T, H, W, 3]
    meta = iio.immeta(path)
    return frames, meta


def _animate(run, tmp_path, *args, source=None, name="out.mp4"):
    out = tmp_path / name
    align = [] if str(source).startswith("synthetic:") else ["--no-align"]  # a random image: no face to align
    code = main(["--checkpoint", str(run), "--source", str(source), "--out", str(out), "--quiet", *align, *args])
    return code, out


def test_orbit_from_an_image_with_frames_and_sheet(run, rgba_image, tmp_path, capsys):
    code, out = _animate(run, tmp_path, "--orbit", "--num-frames", "5", "--frames", source=rgba_image)
    assert code == 0
    frames, meta = _read(out)
    assert frames.shape == (5, 32, 32, 3) and meta["codec"] == "h264"
    assert len(list((tmp_path / "out_frames").glob("*.png"))) == 5
    with Image.open(tmp_path / "out_sheet.png") as sheet:
        assert sheet.size == (6 * 34 + 2, 34 + 2)  # source + 5 sampled frames, one row
    assert "neutral expression" in capsys.readouterr().out


def test_basis_from_a_synthetic_source_and_video_size(run, tmp_path, capsys):
    code, out = _animate(run, tmp_path, "--basis", "2", "--range", "1", "10", "--num-frames", "3",
                         "--video-size", "64", source="synthetic:1")  # fmt: skip
    assert code == 0
    frames, _ = _read(out)
    assert frames.shape == (3, 64, 64, 3)
    assert "basis v_2: lambda_2 of the source expression" in capsys.readouterr().out


def test_driving_synthetic_and_clip_folder(run, rgba_image, tmp_path):
    code, out = _animate(run, tmp_path, "--driving", "synthetic:1000002:1", "--max-frames", "3", source=rgba_image)
    assert code == 0 and _read(out)[0].shape == (3, 32, 32, 3)
    clips = SyntheticClips(SyntheticConfig(resolution=48, test_identities=1, clips_per_identity=1, frames_per_clip=4),
                           "test")  # fmt: skip
    data = clips.load([(0, range(4))])[0]
    write_clip(tmp_path / "clip", data["image"], data["beta"], data["camera"])  # 48 px frames: resized for the sheet
    code, out = _animate(run, tmp_path, "--driving", str(tmp_path / "clip"), "--frames", source="synthetic:0",
                         name="clip.mp4")  # fmt: skip
    assert code == 0 and _read(out)[0].shape == (4, 32, 32, 3)
    with Image.open(tmp_path / "clip_sheet.png") as sheet:
        assert sheet.size == (5 * 34 + 2, 2 * 34 + 2)  # driving row above the output row
    write_clip(tmp_path / "video_clip", data["image"], data["beta"], data["camera"], video=True)  # frames as one mp4
    code, out = _animate(run, tmp_path, "--driving", str(tmp_path / "video_clip"), "--frames", source=rgba_image,
                         name="video.mp4")  # fmt: skip
    assert code == 0 and _read(out)[0].shape == (4, 32, 32, 3)


def _bad_clip(root, name, expression=None, camera=None, frames=2, manifest=False):
    folder = root / name
    folder.mkdir()
    if expression is not None:
        np.savez(folder / "params.npz", expression=expression, camera=camera)
    for t in range(frames):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{t:05d}.png")
    if manifest:
        (folder / "manifest.json").write_text("{}")
    return folder


def _truncated_params(folder):
    data = (folder / "params.npz").read_bytes()
    (folder / "params.npz").write_bytes(data[: len(data) // 2])
    return folder


def test_bad_inputs_name_the_problem(run, rgba_image, tmp_path, capsys):
    eye = np.tile(np.concatenate([np.eye(4).ravel(), np.eye(3).ravel()]).astype(np.float32), (3, 1))  # [3, 25]
    no_focal = np.concatenate([eye[:2, :16], np.zeros((2, 9), np.float32)], 1)
    (tmp_path / "broken.png").write_text("this is not an image")
    direct = write_checkpoint(tmp_path / "direct", encoder="direct")
    img = str(rgba_image)
    cases = [
        (["--source", str(tmp_path / "broken.png"), "--orbit"], "--source: image: cannot read"),
        (["--source", str(tmp_path / "absent.jpg"), "--orbit"], "--source: image: no file at"),
        (["--source", img, "--orbit", "--preset", "paper"], "holds a 'tiny' model (32 px), not the requested preset"),
        (["--source", img, "--orbit", "--resolution", "256"], "not the requested resolution 256"),
        (["--source", img, "--driving", str(_bad_clip(tmp_path, "noparams", frames=0))], "missing params.npz"),
        (["--source", img, "--driving", str(_bad_clip(tmp_path, "plain"))], "a video gives the 52 MediaPipe"),
        (["--source", img, "--driving", str(_bad_clip(tmp_path, "narrow", np.zeros((2, 10), np.float32), eye[:2]))],
         "'expression' must have shape [T, 64]"),
        (["--source", img, "--driving", str(_bad_clip(tmp_path, "count", np.zeros((3, 64), np.float32), eye))],
         "frame/param count mismatch: 2 image files"),
        (["--source", img, "--driving", str(_bad_clip(tmp_path, "root", manifest=True))], "dataset root"),
        (["--source", img, "--driving", str(tmp_path / "nowhere")], "--driving: .* is not a folder"),
        (["--source", img, "--driving", "synthetic:99"], "'synthetic:99' is not in the checkpoint's synthetic test"),
        (["--source", "synthetic:x", "--orbit"], "--source: expected synthetic:ID"),
        (["--source", img, "--basis", "11", "--range", "1", "2"], "--basis: K must be in 1..10"),
        (["--source", img, "--orbit", "--video-size", "40"], "--video-size: 40 must be a multiple of 16"),
        # issue 13 #6: tracebacks or misleading messages before
        (["--source", img, "--driving", str(_truncated_params(_bad_clip(tmp_path, "cut", np.zeros((2, 64), np.float32),
                                                                        eye[:2])))], "cannot read: truncated"),
        (["--source", img, "--driving", str(_bad_clip(tmp_path, "zero_k", np.zeros((2, 64), np.float32), no_focal))],
         r"'camera' row 0 has intrinsics"),
    ]
    for argv, message in cases:
        flags = ["--checkpoint", str(run), "--out", str(tmp_path / "x.mp4"), "--quiet", "--no-align"]
        assert main([*flags, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err or re.search(message, err), (message, err)
    assert main(["--checkpoint", str(direct), "--source", img, "--out", str(tmp_path / "d.mp4"), "--basis", "1",
                 "--range", "1", "2", "--no-align"]) == 2  # fmt: skip
    assert "expression encoder is 'direct'" in capsys.readouterr().err
    assert main(["--checkpoint", str(run), "--source", img, "--out", str(tmp_path / "x.gif"), "--orbit",
                 "--no-align"]) == 2  # fmt: skip
    assert "must end in .mp4" in capsys.readouterr().err
    for argv in (["--orbit", "--basis", "1", "--range", "1", "2"], ["--basis", "1"], ["--orbit", "--range", "1", "2"],
                 []):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["--checkpoint", str(run), "--source", img, "--out", str(tmp_path / "y.mp4"), *argv])
    assert not (tmp_path / "y.mp4").exists()
    # a photo is searched for faces unless --no-align: an image without one is named, with what was searched
    assert main(["--checkpoint", str(run), "--source", img, "--out", str(tmp_path / "z.mp4"), "--orbit"]) == 2
    err = capsys.readouterr().err
    assert f"--source: no face found in {img}" in err and "faces were searched from" in err
    assert not (tmp_path / "z.mp4").exists()


def test_bad_destinations_fail_before_the_work_and_say_nothing_was_written(run, rgba_image, tmp_path, capsys):
    """Issue 13 #5: `--out` a folder or an unwritable path printed "wrote ..." and exited 0."""
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "a_file").write_text("x")
    for name in ("folder.mp4", "a_file/sub/out.mp4"):
        code, _ = _animate(run, tmp_path, "--orbit", "--num-frames", "2", source=rgba_image, name=name)
        captured = capsys.readouterr()
        assert code == 2 and "wrote" not in captured.out, name
        assert "--out:" in captured.err, captured.err
    assert (tmp_path / "folder.mp4").is_dir() and (tmp_path / "a_file").read_text() == "x"


def test_a_failed_animation_keeps_the_earlier_video_and_frames_are_replaced_whole(run, rgba_image, tmp_path,
                                                                                  monkeypatch, capsys):  # fmt: skip
    code, out = _animate(run, tmp_path, "--orbit", "--num-frames", "5", "--frames", source=rgba_image)
    assert code == 0 and "wrote" in capsys.readouterr().out
    good = out.read_bytes()
    from export3d.animation.animator import Animator

    real, calls = Animator._render_job, []

    def dies_midway(self, job, chunk, start):  # the second chunk of frames fails
        calls.append(start)
        if len(calls) > 1:
            raise RuntimeError("disk full (injected)")
        return real(self, job, chunk, start)

    with monkeypatch.context() as m:
        m.setattr(Animator, "_render_job", dies_midway)
        code, _ = _animate(run, tmp_path, "--orbit", "--num-frames", "5", "--frames", "--batch-size", "2",
                           source=rgba_image)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and "injected" in captured.err and "wrote" not in captured.out
    assert out.read_bytes() == good, "a failed run must not replace the earlier video"
    assert len(list((tmp_path / "out_frames").glob("*.png"))) == 5
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    code, _ = _animate(run, tmp_path, "--orbit", "--num-frames", "3", "--frames", source=rgba_image)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out_frames").iterdir()) == ["00000.png", "00001.png", "00002.png"]


BAD_NUMBERS = [(["--max-frames", "-1"], "--max-frames"), (["--max-frames", "0"], "--max-frames"),
               (["--threads", "0"], "--threads")]  # fmt: skip


@pytest.mark.parametrize("flags, named", BAD_NUMBERS)
def test_bad_numbers_are_refused_by_name(run, rgba_image, tmp_path, capsys, flags, named):
    """Issue 13 #5: `--max-frames -1` "wrote" 0 frames; a huge --video-size was OOM-killed."""
    with pytest.raises(SystemExit):
        _animate(run, tmp_path, "--driving", "synthetic:0", *flags, source=rgba_image)
    assert named in capsys.readouterr().err
    code, out = _animate(run, tmp_path, "--orbit", "--video-size", "40000", source=rgba_image)
    assert code == 2 and "--video-size: 40000 must be a multiple of 16 (H.264 macroblocks) from 16 to 4096" in \
        capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- frames = model.render
def _png_frames(folder) -> torch.Tensor:
    """The PNG frames ``--frames`` wrote, in order -> uint8 ``[T, H, W, 3]``."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]))


def _rendered(model, source, codes, cameras) -> torch.Tensor:
    """``model.render`` of frame t's own tri-plane and camera, one frame at a time, quantised like the PNGs."""
    with torch.no_grad():
        frames = [model.render(model.generate_triplane(source[None], codes[t:t + 1]), cameras[t:t + 1]).image[0]
                  for t in range(cameras.shape[0])]  # fmt: skip
    return torch.from_numpy(to_uint8(torch.stack(frames)))


@pytest.mark.parametrize("mode", ["orbit", "clip"])
def test_every_frame_is_the_render_of_its_own_camera(run, rgba_image, tmp_path, mode):
    """Each PNG frame equals ``model.render`` of the same tri-plane from that frame's camera (orbit: one shared
    tri-plane; clip: one per expression), across render chunks of 2. A renderer that reused the first camera (of
    the clip or of a chunk) for every frame fails: its frames are computed here and must differ."""
    T = 5
    if mode == "orbit":
        cameras = orbit_cameras(T, 30.0, 15.0)  # animate's --yaw / --pitch defaults
        betas = torch.zeros(T, 64)  # an image source: the neutral expression
        flags = ["--orbit", "--num-frames", str(T)]
    else:
        clips = SyntheticClips(SyntheticConfig(resolution=32, test_identities=1, clips_per_identity=1,
                                               frames_per_clip=T), "test")  # fmt: skip
        data = clips.load([(0, range(T))])[0]
        # the clip's own head poses barely move this untrained model's render: sweep the cameras wider
        sweep = orbit_camera(torch.linspace(-0.6, 0.6, T), torch.linspace(0.25, -0.25, T))  # yaw, pitch (rad)
        write_clip(tmp_path / "clip", data["image"], data["beta"], sweep)
        with np.load(tmp_path / "clip" / "params.npz") as params:  # what animate reads
            betas, cameras = torch.from_numpy(params["expression"]), torch.from_numpy(params["camera"])
        flags = ["--driving", str(tmp_path / "clip")]
    assert (cameras[1:] - cameras[0]).abs().amax(dim=1).min() > 1e-3, "every frame's camera must differ from the first"
    code, _ = _animate(run, tmp_path, *flags, "--frames", "--batch-size", "2", source=rgba_image)
    assert code == 0
    written = _png_frames(tmp_path / "out_frames")
    model, _, _ = load_model(run, torch.device("cpu"), None, None)
    source = load_image(rgba_image, model.config.image_size)
    with torch.no_grad():
        codes = model.encode_expression(betas)
    expected = _rendered(model, source, codes, cameras)
    assert written.shape == expected.shape == (T, 32, 32, 3)
    # one frame per batch element vs a batch of cameras: float noise may move a rare pixel across a rounding step
    torch.testing.assert_close(written.int(), expected.int(), atol=1, rtol=0)
    assert (written != expected).float().mean() < 0.01
    first_camera = _rendered(model, source, codes, cameras[:1].expand(T, -1))
    for t in range(1, T):  # reusing camera 0 would change most pixels: far beyond the tolerance above
        assert (first_camera[t] != written[t]).float().mean() > 0.2, f"frame {t} looks the same from camera 0"


# ----------------------------------------------------------------------------------------------- device errors
def _out_of_memory(self, triplane, camera):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")


def _triton_out_of_resources(self, triplane, camera):
    from triton.runtime.errors import OutOfResources

    raise OutOfResources(232448, 101376, "shared memory")


@pytest.mark.parametrize("render, shown", [
    (_out_of_memory, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB (injected)"),
    (_triton_out_of_resources, "triton.runtime.errors.OutOfResources: out of resource: shared memory"),
])  # fmt: skip
def test_a_device_failure_names_its_type_and_debug_prints_the_traceback(run, rgba_image, tmp_path, monkeypatch,
                                                                        capsys, render, shown):  # fmt: skip
    monkeypatch.setattr(Export3D, "render", render)
    code, out = _animate(run, tmp_path, "--orbit", "--num-frames", "2", source=rgba_image)
    captured = capsys.readouterr()
    assert code == EXIT_DEVICE_ERROR and code not in (0, 2)
    assert f"export3d.animate: error: {shown}" in captured.err
    assert "Traceback" not in captured.err and "--debug prints the full traceback" in captured.err
    assert "wrote" not in captured.out and not out.exists()
    code, _ = _animate(run, tmp_path, "--orbit", "--num-frames", "2", "--debug", source=rgba_image)
    err = capsys.readouterr().err
    assert code == EXIT_DEVICE_ERROR
    assert "Traceback (most recent call last)" in err and f"in {render.__name__}" in err and "in _render_job" in err
    assert err.index("Traceback") < err.index(f"export3d.animate: error: {shown}")
