"""Mixed training data (issue 28): several --data sources mixed per batch by weight, deterministic and resumable,
their expression sizes checked, and the held-out metrics (with memorisation) reported per source."""

import importlib.util
import json

import pytest
import torch

from export3d.data import SyntheticClips, SyntheticConfig
from export3d.data.clips import FORMAT, VERSION, write_clip
from export3d.train import cli, parse_args
from export3d.training.batches import MixedStream
from export3d.training.config import TrainConfig
from export3d.training.loop import main
from tests.training.test_train import _cfg

# 52 names in pairs, as MediaPipe's blendshapes come (a flip swaps each ...Left with its ...Right)
NAMES = ["_neutral", "jawOpen"] + [f"shape{i}{side}" for i in range(25) for side in ("Left", "Right")]


def write_blendshape_folder(root, identities: int = 2, frames: int = 6, seed: int = 0, test: int = 1,
                            resolution: int = 64):
    """A clip folder (64 px by default) with 52-d expressions, as ``prepare`` writes for real videos: synthetic
    heads' frames and cameras, random blendshapes, the names in the manifest; the last ``test`` identities are held
    out."""
    source = SyntheticClips(SyntheticConfig(seed=seed, train_identities=identities, clips_per_identity=1,
                                            frames_per_clip=frames, resolution=resolution), "train")  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    clips = []
    for c in range(len(source.clips)):
        data = source.load([(c, range(frames))])[0]
        write_clip(root / f"person{c}", data["image"], torch.rand(frames, 52, generator=g), data["camera"])
        clips.append({"clip": f"person{c}", "identity": f"person{c}", "frames": frames,
                      "split": "test" if c >= identities - test else "train"})  # fmt: skip
    manifest = {"format": FORMAT, "version": VERSION, "resolution": resolution, "expression_dim": 52, "clips": clips,
                "expression": {"names": NAMES, "source": "random, for tests"}}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


class _Stream:
    """A stand-in BatchStream: batches are (name, count)."""

    def __init__(self, name):
        self.name, self.position = name, (0, 0)

    def next(self):
        self.position = (0, self.position[1] + 1)
        return {"name": self.name, "count": self.position[1]}


def test_mixed_stream_draws_by_weight_from_the_seed_and_the_step_alone():
    cfg = TrainConfig(data=("a", "b"), data_weights=(1.0, 3.0), pretrain_steps=100, pretrain_weights=(1.0, 0.0))
    stream = MixedStream([_Stream("a"), _Stream("b")], cfg.weights_at, seed=7, first_step=0)
    drawn = [stream.next()["name"] for _ in range(900)]
    assert set(drawn[:100]) == {"a"}  # pre-training: the first source alone
    share = drawn[100:].count("b") / 800
    assert 0.70 < share < 0.80, share  # 0.75 expected; 800 draws: standard deviation 0.015
    again = MixedStream([_Stream("a"), _Stream("b")], cfg.weights_at, seed=7, first_step=0)
    assert [again.next()["name"] for _ in range(900)] == drawn
    resumed = MixedStream([_Stream("a"), _Stream("b")], cfg.weights_at, seed=7, first_step=0,
                          positions=(500, ((0, 0), (0, 0))))  # fmt: skip
    assert [resumed.next()["name"] for _ in range(400)] == drawn[500:]
    other = MixedStream([_Stream("a"), _Stream("b")], cfg.weights_at, seed=8, first_step=0)
    assert [other.next()["name"] for _ in range(900)] != drawn


def test_flags_take_several_sources_and_check_their_weights(tmp_path, capsys):
    folder = str(tmp_path)
    cfg = parse_args(["--data", "synthetic", "--data", folder, "--data-weights", "1,3", "--pretrain-steps", "10",
                      "--pretrain-weights", "1,0", "--aug-flip", "0.5", "--out", str(tmp_path / "run")])  # fmt: skip
    assert cfg.data == ("synthetic", folder) and cfg.aug_flip == 0.5
    assert cfg.weights_at(9) == (1.0, 0.0) and cfg.weights_at(10) == (0.25, 0.75)
    assert TrainConfig(data="synthetic").data == ("synthetic",)  # one source may be a string (older config.json)
    cases = [(["--data", "synthetic", "--data", folder, "--data-weights", "1"],
              r"--data-weights: 1 weight\(s\) for 2 --data source\(s\)"),
             (["--data", "synthetic", "--data", folder, "--data-weights", "1,x"], "comma-separated numbers"),
             (["--data", "synthetic", "--data", folder, "--data-weights=-1,2"], "must be >= 0 with a positive sum"),
             (["--data", "synthetic", "--data", folder, "--data-weights", "0,0"], "must be >= 0 with a positive sum"),
             (["--data", "synthetic", "--pretrain-steps", "5"], "--pretrain-weights and --pretrain-steps go together"),
             (["--data", "synthetic", "--data", "synthetic"], "a source is given twice"),
             (["--aug-hue", "200"], "--aug-hue is in degrees")]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", ""), message


def test_sources_with_different_expression_sizes_are_an_error_naming_both(tmp_path):
    folder = write_blendshape_folder(tmp_path / "clips")
    with pytest.raises(ValueError) as err:
        main(_cfg(tmp_path / "run", data=("synthetic", str(folder))))
    message = str(err.value)
    assert "synthetic gives 64" in message and f"{folder} gives 52" in message
    assert "--expression-source landmarker" in message
    assert not (tmp_path / "run").exists()  # nothing written
    write_blendshape_folder(tmp_path / "no_names")
    manifest = json.loads((tmp_path / "no_names" / "manifest.json").read_text())
    del manifest["expression"]
    (tmp_path / "no_names" / "manifest.json").write_text(json.dumps(manifest))
    assert cli(["--data", str(tmp_path / "no_names"), "--aug-flip", "0.5", "--out", str(tmp_path / "r2")]) == 2


def test_a_resumed_mixed_run_continues_the_same_mixture(tmp_path):
    """Two sources at 1:2 with augmentation, stopped after 4 steps and resumed: bit for bit the uninterrupted run."""
    a, b = write_blendshape_folder(tmp_path / "a", seed=1), write_blendshape_folder(tmp_path / "b", seed=2)
    settings = dict(data=(str(a), str(b)), data_weights=(1.0, 2.0), pretrain_steps=3, pretrain_weights=(0.0, 1.0),
                    aug_flip=0.5, aug_hue=20.0, aug_colour=0.2, aug_scale=0.1, clebs_steps=2, rec_steps=4,
                    adv_steps=2, eval_pairs=0, ckpt_every=100)  # fmt: skip
    whole = main(_cfg(tmp_path / "whole", **settings))
    main(_cfg(tmp_path / "parts", stop_after=4, **settings))
    parts = main(_cfg(tmp_path / "parts", resume=str(tmp_path / "parts"), **settings))
    for mine, theirs in ((whole.model, parts.model), (whole.discriminator, parts.discriminator)):
        for (name, x), y in zip(mine.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(x, y), name
    state = json.loads(next((tmp_path / "whole" / "checkpoints").glob("step_*/state.json")).read_text())
    assert "__tuple__" in json.dumps(state["positions"]["reconstruction"])  # (next step, per-source positions)


def test_metrics_report_each_source_with_the_memorisation_of_real_clips(tmp_path):
    folder = write_blendshape_folder(tmp_path / "clips", identities=3)
    out = tmp_path / "run"
    main(_cfg(out, data=("synthetic", str(folder)), expression_source="landmarker", clebs_steps=1, rec_steps=2,
              adv_steps=0, eval_pairs=4))  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sources"]) == {"synthetic", str(folder)} and "same_identity" not in metrics
    synthetic, real = metrics["sources"]["synthetic"], metrics["sources"][str(folder)]
    assert synthetic["cross_identity"] is not None and real["cross_identity"] is None
    assert "memorisation" not in synthetic  # synthetic heads are judged by their cross-identity ground truth
    memo = real["memorisation"]
    if importlib.util.find_spec("dlib") and importlib.util.find_spec("mediapipe"):  # the faces extra is installed
        assert "not_run" not in memo, memo
        assert memo["pairs"] == 4 == memo["scored"] + memo["no_face_output"] + memo["no_face_source"]
        assert memo["training_identities"] <= 3 + 2 and memo["frames_per_identity"] == 4
    assert metrics["lpips_network"]["pretrained"] is False
