"""Animation CLI: each driving mode writes a playable H.264 mp4 (read back with imageio); bad inputs are named."""

import re

import numpy as np
import pytest
from PIL import Image

from export3d.animate import main
from export3d.data import SyntheticClips, SyntheticConfig
from export3d.data.clips import write_clip
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
    code = main(["--checkpoint", str(run), "--source", str(source), "--out", str(out), "--quiet", *args])
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
        assert main(["--checkpoint", str(run), "--out", str(tmp_path / "x.mp4"), "--quiet", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err or re.search(message, err), (message, err)
    assert main(["--checkpoint", str(direct), "--source", img, "--out", str(tmp_path / "d.mp4"), "--basis", "1",
                 "--range", "1", "2"]) == 2  # fmt: skip
    assert "expression encoder is 'direct'" in capsys.readouterr().err
    assert main(["--checkpoint", str(run), "--source", img, "--out", str(tmp_path / "x.gif"), "--orbit"]) == 2
    assert "must end in .mp4" in capsys.readouterr().err
    for argv in (["--orbit", "--basis", "1", "--range", "1", "2"], ["--basis", "1"], ["--orbit", "--range", "1", "2"],
                 []):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["--checkpoint", str(run), "--source", img, "--out", str(tmp_path / "y.mp4"), *argv])
    assert not (tmp_path / "y.mp4").exists()


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
    import export3d.animate as animate_cli

    real = animate_cli.render_frames

    def dies_midway(*args, **kwargs):
        chunks = real(*args, **kwargs)
        yield next(chunks)
        raise RuntimeError("disk full (injected)")

    with monkeypatch.context() as m:
        m.setattr(animate_cli, "render_frames", dies_midway)
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
