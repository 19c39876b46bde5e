"""A synthetic-trained model with landmarker expressions, driven by a real video; the default face metrics.

The checkpoint is trained here for a few steps with ``--expression-source landmarker`` (52 blendshapes read
from the rendered frames); the driving video is the astronaut clip of ``tests/data/faces.py`` (her photo
rotated and shifted over frames).
"""

import json
import math

import imageio.v2 as iio
import numpy as np
import pytest

from export3d.animate import main as animate_main
from export3d.evaluate import main as evaluate_main
from export3d.training.config import TrainConfig
from export3d.training.loop import main as train_main
from tests.data.faces import write_astronaut_frames
from tests.evaluation.test_evaluate import write_checkpoint

FRAMES = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("landmarker")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPORT3D_CACHE", str(root / "cache"))
        cfg = TrainConfig(out=str(root / "run"), expression_source="landmarker", clebs_steps=2, rec_steps=2,
                          adv_steps=0, batch_size=2, clebs_clips=2, clebs_negatives=3, train_identities=2,
                          test_identities=2, clips_per_identity=1, frames_per_clip=4, eval_pairs=2, log_every=1,
                          sample_every=10, ckpt_every=10, device="cpu", seed=0)  # fmt: skip
        result = train_main(cfg)
        yield root, result


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("driving")
    folder = write_astronaut_frames(root / "gaps", frames=FRAMES, blank=(2,))  # frame 2 has no face
    frames = [iio.imread(p) for p in sorted(write_astronaut_frames(root / "frames", frames=FRAMES).glob("*.png"))]
    iio.mimwrite(root / "talk.mp4", frames, fps=25, macro_block_size=1)
    return folder, root / "talk.mp4"


def test_landmarker_source_trains_a_52_d_model_and_caches_the_table(run):
    root, result = run
    assert result.model.config.expression_dim == 52
    cached = sorted((root / "cache").glob("landmarker-*.npz"))
    assert len(cached) == 2  # the train and the test split
    with np.load(cached[0]) as data:
        assert data["expression"].shape == (2, 4, 52) and data["found"].shape == (2, 4)
        assert ((data["expression"] >= 0) & (data["expression"] <= 1)).all()
        assert data["found"].mean() >= 0.5 and np.ptp(data["expression"], axis=(0, 1)).max() > 0.05


@pytest.mark.parametrize("kind", ["folder", "mp4"])
def test_a_real_video_drives_the_checkpoint(run, videos, tmp_path, kind, capsys):
    root, _ = run
    driving = videos[0] if kind == "folder" else videos[1]
    out = tmp_path / "drive.mp4"
    code = animate_main(["--checkpoint", str(root / "run"), "--source", "synthetic:0", "--driving", str(driving),
                         "--out", str(out), "--frames", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    expected = FRAMES - 1 if kind == "folder" else FRAMES  # the faceless frame is dropped
    assert len(iio.mimread(out)) == expected
    assert len(list((tmp_path / "drive_frames").glob("*.png"))) == expected
    printed = capsys.readouterr().out
    assert f"{expected} frames with a face, {FRAMES - expected} without dropped" in printed


def test_a_64_d_checkpoint_refuses_a_video(videos, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "beta")
    code = animate_main(["--checkpoint", str(ckpt), "--source", "synthetic:0", "--driving", str(videos[1]),
                         "--out", str(tmp_path / "x.mp4"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "--expression-source landmarker" in capsys.readouterr().err


def test_evaluate_reports_the_face_metrics_by_default(run, tmp_path, capsys):
    root, _ = run
    out = tmp_path / "eval.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPORT3D_CACHE", str(root / "cache"))
        assert evaluate_main(["--checkpoint", str(root / "run"), "--json", str(out), "--pairs", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    columns = {"same_identity": ("psnr", "ssim", "lpips", "akd", "csim", "aed", "apd"),
               "cross_identity": ("psnr", "ssim", "lpips", "csim", "aed", "apd")}  # fmt: skip
    for setting, names in columns.items():
        copy = result[setting]["copy_source"]
        assert all(isinstance(copy[k], float) and math.isfinite(copy[k]) for k in names), copy
        assert copy["csim"] == 1.0 and sum(copy["faces"]["scored"].values()) > 0
        model = result[setting]["model"]
        for k in names[3:]:  # a 4-step model draws no face yet: such pairs are counted, not scored
            assert isinstance(model[k], float) or model[k].startswith("not run: no face found"), model[k]
    gt = result["cross_identity"]["face_ground_truth"]
    assert isinstance(gt["ground_truth"]["csim"], float) and "model" in gt["against_ground_truth"]
    assert result["same_identity"]["face_ground_truth"]["ground_truth"]["aed"] == 0.0  # the driving frame itself
    assert result["extractors"]["CSIM"].startswith("dlib 128-d")
    assert "CSIM (offline): dlib 128-d" in printed and "ground-truth frame scored as an output" in printed
