"""A synthetic-trained model with landmarker expressions, driven by a real video; the default face metrics.

The checkpoint is trained here for a few steps with ``--expression-source landmarker`` (52 blendshapes read
from the rendered frames); the driving video is the astronaut clip of ``tests/data/faces.py`` (her photo
rotated and shifted over frames).
"""

import json
import math
import re

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
    # one output frame per driving frame: the faceless frame takes its nearest frame's signals, never dropped
    assert len(iio.mimread(out)) == FRAMES
    assert len(list((tmp_path / "drive_frames").glob("*.png"))) == FRAMES
    printed = capsys.readouterr().out
    if kind == "folder":
        assert "1 driving frames without a face took their nearest's signals" in printed
    assert "time per frame: detection + landmarks" in printed


def test_a_64_d_checkpoint_refuses_a_video(videos, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "beta")
    code = animate_main(["--checkpoint", str(ckpt), "--source", "synthetic:0", "--driving", str(videos[1]),
                         "--out", str(tmp_path / "x.mp4"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "--expression-source landmarker" in capsys.readouterr().err


def _number(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def _no_face_in_any_pair(value, pairs: int) -> bool:
    """``value`` is a face metric's "not run" reason saying that no pair had a face, counted over all ``pairs``
    pairs ("... in 2 of 2 pairs", "... in any of the 2 pairs"), not a partial count or any other reason."""
    found = re.match(r"not run: no face found in (.*?)(\d+) pairs", value) if isinstance(value, str) else None
    return found is not None and all(int(n) == pairs for n in [*re.findall(r"\d+", found.group(1)), found.group(2)])


def test_no_face_reason_must_cover_every_pair():
    assert _no_face_in_any_pair("not run: no face found in 2 of 2 pairs", 2)
    assert _no_face_in_any_pair("not run: no face found in all of a pair's images in any of the 2 pairs (faces: "
                                "model 0/2, copy_source 2/2)", 2)  # fmt: skip
    assert not _no_face_in_any_pair("not run: no face found in 1 of 2 pairs", 2)
    assert not _no_face_in_any_pair("not run: no face found in 3 of 3 pairs", 2)
    assert not _no_face_in_any_pair("not run: the faces extra is not installed", 2)
    assert not _no_face_in_any_pair(0.5, 2)


def test_evaluate_reports_the_face_metrics_by_default(run, tmp_path, capsys):
    root, _ = run
    out = tmp_path / "eval.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPORT3D_CACHE", str(root / "cache"))
        assert evaluate_main(["--checkpoint", str(root / "run"), "--json", str(out), "--pairs", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    faces = {"same_identity": ("akd", "csim", "aed", "apd"), "cross_identity": ("csim", "aed", "apd")}
    for setting, names in faces.items():
        pairs = result[setting]["pairs"]
        assert pairs == 2
        model, copy = result[setting]["model"], result[setting]["copy_source"]
        truth = result[setting]["face_ground_truth"]["ground_truth"]
        image_metrics = [k for k in copy if k in ("psnr", "ssim") or k.startswith("lpips")]
        assert len(image_metrics) == 3 and all(_number(copy[k]) for k in image_metrics), copy
        # A 4-step model draws no face yet: each face metric is a number, or says that no pair had a face.
        assert all(_number(model[k]) or _no_face_in_any_pair(model[k], pairs) for k in names), model
        # The source and the ground-truth frame hold a face, so they are scored. Only when every method is scored
        # on the same pairs and the model had no face in any of them may they read the no-face reason, and then
        # their face-detection rate must say that the face was found in each of their images.
        for block in (copy, truth):
            for k in names:
                assert _number(block[k]) or (not _number(model[k]) and _no_face_in_any_pair(block[k], pairs)
                                             and block.get("face_rate") == 1.0), (k, block)  # fmt: skip
        assert copy["csim"] == 1.0 or not _number(copy["csim"])  # the source against itself
        if _number(truth["aed"]) and setting == "same_identity":
            assert truth["aed"] == 0.0  # the driving frame against itself
    against = result["cross_identity"]["face_ground_truth"]["against_ground_truth"]
    assert set(against["model"]) == set(against["copy_source"]) == {"akd", "aed", "apd"}, against
    for k, value in against["model"].items():
        copied = against["copy_source"][k]
        assert _number(value) or _no_face_in_any_pair(value, 2), against
        assert _number(copied) or (not _number(value) and _no_face_in_any_pair(copied, 2)), against
    assert result["extractors"]["CSIM"].startswith("dlib 128-d")
    assert "CSIM (offline): dlib 128-d" in printed and "ground-truth frame scored as an output" in printed
