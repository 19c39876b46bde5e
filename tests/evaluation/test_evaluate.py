"""Evaluation: identity probe, extractor metrics, checkpoint round trip, the CLI end to end."""

import dataclasses
import importlib.util
import json
import math
import re

import pytest
import torch

from export3d import Export3D
from export3d.evaluate import main
from export3d.evaluation.extractors import ExtractorMetrics
from export3d.evaluation.loading import load_model, model_config_from_meta
from export3d.evaluation.metrics import psnr, ssim
from export3d.evaluation.probe import identity_probe, split_rows
from export3d.evaluation.scoring import EvalBatch
from export3d.model.config import preset
from export3d.training.config import TrainConfig
from export3d.utils.checkpoint import CheckpointError, save_checkpoint

SMALL = {"image_size": 32, "render": {"n_coarse": 8, "n_fine": 8}}


def write_checkpoint(root, encoder: str = "lebs", seed: int = 0, expression_dim: int = 64):
    """A freshly initialised 32 px tiny model saved like export3d.train does, with tiny synthetic test data
    (``expression_dim`` 52: a model driven by MediaPipe blendshapes, as real videos give)."""
    torch.manual_seed(seed)
    cfg = preset("tiny", expression_encoder=encoder, lebs={"expression_dim": expression_dim}, **SMALL)
    train_cfg = TrainConfig(out=str(root), train_identities=2, test_identities=3, clips_per_identity=2,
                            frames_per_clip=4, clebs_negatives=3, eval_pairs=4)  # fmt: skip
    save_checkpoint(root / "checkpoints", 0, {"model": Export3D(cfg)}, {"step": 0},
                    meta={"model_config": dataclasses.asdict(cfg), "train_config": train_cfg.to_dict()})  # fmt: skip
    return root


# ----------------------------------------------------------------------------------------------- metrics
def test_psnr_of_identical_images_is_the_clamp_and_ssim_of_constants_is_the_luminance_term():
    x = torch.zeros(1, 3, 16, 16)
    torch.testing.assert_close(psnr(x, x), torch.tensor([120.0]))  # MSE clamped at 1e-12
    a, b = torch.full((1, 3, 16, 16), 0.0), torch.full((1, 3, 16, 16), -0.5)  # 0.5 and 0.25 on [0, 1]
    c1 = 0.01**2  # constant images: zero variance, so the contrast-structure term is c2 / c2 = 1
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    torch.testing.assert_close(ssim(a, b), torch.tensor([expected]))


def _blobs(n_ids: int, per_id: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=g) * 3
    y = torch.arange(n_ids).repeat_interleave(per_id)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


@pytest.mark.parametrize("method", ["ridge", "logistic"])
def test_identity_probe_separable_and_non_separable(method):
    x, y = _blobs(6, 20, 8, 0.1, seed=0)  # well-separated clusters: a linear probe is perfect
    fit = torch.arange(len(y)) % 2 == 0
    r = identity_probe(x[fit], y[fit], x[~fit], y[~fit], method)
    assert r.accuracy == 1.0 and r.chance == pytest.approx(1 / 6) and r.identities == 6 and r.features == 8
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(600, 8, generator=g)  # codes independent of the identity: chance level
    y = torch.arange(600) % 4
    r = identity_probe(noise[:300], y[:300], noise[300:], y[300:], method)
    assert abs(r.accuracy - 0.25) < 0.1
    xor = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]).repeat(10, 1)  # XOR: not linearly separable
    y = torch.tensor([0, 0, 1, 1]).repeat(10)
    assert identity_probe(xor, y, xor, y, method).accuracy <= 0.75


def test_identity_probe_split_and_errors():
    identity = torch.tensor([7, 7, 7, 7, 9, 9, 9, 9])
    clip = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])  # identity 7 has two clips, identity 9 one
    frame = torch.tensor([0, 1, 0, 1, 0, 1, 2, 3])
    fit, test = split_rows(identity, clip, frame)
    assert fit.tolist() == [True, True, False, False, True, False, True, False] and (fit ^ test).all()
    with pytest.raises(ValueError, match="held-out identities \\[3\\] have no fitting rows"):
        identity_probe(torch.zeros(2, 3), torch.tensor([1, 2]), torch.zeros(1, 3), torch.tensor([3]))
    with pytest.raises(ValueError, match="method must be one of"):
        identity_probe(torch.zeros(2, 3), torch.tensor([1, 2]), torch.zeros(1, 3), torch.tensor([1]), "svm")


def test_extractor_metrics_against_hand_computed_values():
    mean = lambda x: x.mean((1, 2, 3))  # noqa: E731
    extractors = {"landmarks": lambda x: mean(x)[:, None, None].expand(-1, 68, 2),  # every point at (m, m)
                  "identity": lambda x: torch.stack([mean(x), torch.ones_like(mean(x))], 1),  # (m, 1)
                  "3dmm": lambda x: mean(x)[:, None].expand(-1, 70)}  # fmt: skip
    metrics = ExtractorMetrics(extractors, {})
    source, driving, pred = (torch.full((1, 3, 4, 4), v) for v in (0.0, 0.5, 1.0))
    batch = EvalBatch(source, driving, torch.zeros(1, 64), torch.zeros(1, 25), driving)
    metrics.update("same_identity", batch, {"model": pred, "copy_source": source})
    got = metrics.results("same_identity", "model")
    assert got["akd"] == pytest.approx(0.5 * math.sqrt(2))  # |(1, 1) - (0.5, 0.5)| per point
    assert got["csim"] == pytest.approx(1 / math.sqrt(2))  # cos((1, 1), (0, 1))
    assert got["aed"] == pytest.approx(0.5) and got["apd"] == pytest.approx(0.5)
    assert metrics.results("same_identity", "copy_source")["csim"] == pytest.approx(1.0)
    missing = ExtractorMetrics({"landmarks": None, "identity": None, "3dmm": None}, {"identity": "no weights"})
    assert missing.results("cross_identity", "model")["csim"] == "not run: no weights"
    assert "akd" not in missing.results("cross_identity", "model")  # AKD is same-identity only (paper Table 1)


# ----------------------------------------------------------------------------------------------- checkpoints + CLI
def test_model_config_round_trip_and_old_meta():
    cfg = preset("tiny", expression_encoder="direct", **SMALL)
    assert model_config_from_meta({"model_config": dataclasses.asdict(cfg)}, "x") == cfg
    old = dataclasses.asdict(preset("tiny"))
    del old["expression_encoder"]  # a checkpoint written before the field existed
    assert model_config_from_meta({"model_config": old}, "x").expression_encoder == "lebs"
    with pytest.raises(CheckpointError, match="no 'model_config'"):
        model_config_from_meta({}, "x")


def test_load_model_prefers_the_weight_ema(tmp_path):
    cfg = preset("tiny", **SMALL)
    torch.manual_seed(0)
    trained, averaged = Export3D(cfg), Export3D(cfg)  # two different initialisations stand in for the two sets
    meta = {"model_config": dataclasses.asdict(cfg)}
    save_checkpoint(tmp_path / "both" / "checkpoints", 5, {"model": trained, "model_ema": averaged}, {}, meta=meta)
    save_checkpoint(tmp_path / "plain" / "checkpoints", 5, {"model": trained}, {}, meta=meta)
    key = "generator.head.weight"
    for run, use_ema, expected, source in [("both", True, "model_ema", averaged), ("both", False, "model", trained),
                                           ("plain", True, "model", trained)]:  # fmt: skip
        model, got_meta, _ = load_model(tmp_path / run, use_ema=use_ema)
        assert got_meta["weights"] == expected
        assert torch.equal(model.state_dict()[key], source.state_dict()[key])
    assert not torch.equal(trained.state_dict()[key], averaged.state_dict()[key])


def test_evaluate_cli_end_to_end(tmp_path, capsys):
    run = write_checkpoint(tmp_path / "run")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8))  # a stand-in, not ArcFace
    program = torch.export.export(net, (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: torch.export.Dim("B")},))
    torch.export.save(program, str(tmp_path / "arcface.pt2"))
    out = tmp_path / "eval.json"
    threads = torch.get_num_threads()
    try:
        assert main(["--checkpoint", str(run), "--json", str(out), "--pairs", "2", "--device", "cpu", "--threads",
                     str(threads + 1), "--identity-weights", str(tmp_path / "arcface.pt2"), "--no-face-metrics"]) == 0
        assert torch.get_num_threads() == threads + 1  # --threads applies to a checkpoint evaluation too
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "Same-identity (2 pairs)" in printed and "Cross-identity (2 pairs)" in printed and "chance 0.333" in printed
    assert "LPIPS(rand)↓" in printed and "LPIPS↓" not in printed and "Faces" not in printed  # no offline face tools
    result = json.loads(out.read_text())
    for setting in ("same_identity", "cross_identity"):
        for who in ("model", "copy_source"):
            block = result[setting][who]
            assert all(math.isfinite(block[k]) for k in ("psnr", "ssim", "lpips_random_vgg", "csim"))
            assert "lpips" not in block  # the random-VGG fallback is not LPIPS and is not named so
            assert block["aed"] == "not run: --no-face-metrics given" and block["apd"].startswith("not run")
    assert result["same_identity"]["model"]["akd"] == "not run: --no-face-metrics given"
    assert result["same_identity"]["copy_source"]["csim"] == pytest.approx(1.0)
    leak = result["identity_leak"]
    assert leak["chance"] == pytest.approx(1 / 3) and leak["beta"]["identities"] == 3
    assert leak["beta"]["accuracy"] > leak["chance"]  # beta leaks identity by construction
    assert result["extractors"]["AKD"].startswith("not run") and result["extractors"]["CSIM"].endswith("arcface.pt2")
    assert result["lpips_network"]["pretrained"] is False


def test_evaluate_cli_face_backend_port(tmp_path, capsys):
    """``--face-backend port``: AKD and AED from the PyTorch port of MediaPipe's networks, CSIM and APD not run."""
    from export3d.utils.extras import MissingExtraError, bundle_path

    try:
        bundle_path()
    except MissingExtraError as err:
        pytest.skip(f"the face model bundle is not installed: {err}")
    run = write_checkpoint(tmp_path / "run")
    out = tmp_path / "eval.json"
    assert main(["--checkpoint", str(run), "--json", str(out), "--pairs", "2", "--device", "cpu",
                 "--face-backend", "port"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    gt = result["same_identity"]["face_ground_truth"]["ground_truth"]  # the driving frames: synthetic faces
    assert gt["faces"] == {"pairs": 2, "found": 2, "scored": {"AKD": 0, "AED": 0}}, gt
    for who in ("model", "copy_source"):
        block = result["same_identity"][who]
        assert block["csim"].startswith("not run: the port") and block["apd"].startswith("not run: the port")
        assert block["faces"]["pairs"] == 2 and 0 <= block["face_rate"] <= 1
    # an untrained model draws no face, so no pair has a face in every image: AKD / AED say so instead of a number
    assert result["same_identity"]["model"]["face_rate"] == 0
    assert result["same_identity"]["model"]["akd"].startswith("not run: no face found")
    assert result["extractors"]["AKD"].startswith("mean distance of MediaPipe's 478 landmarks")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(run), "--face-backend", "dlib"])
    assert "invalid choice: 'dlib'" in capsys.readouterr().err


def test_evaluate_cli_errors(tmp_path, capsys):
    run = write_checkpoint(tmp_path / "run")
    (tmp_path / "junk.pt2").write_text("not a network")
    cases = [(["--checkpoint", str(tmp_path / "missing")], "does not exist"),
             (["--checkpoint", str(run), "--preset", "paper"], r"holds a 'tiny' model \(32 px\), not the requested"),
             (["--checkpoint", str(run), "--resolution", "64"], "not the requested resolution 64"),
             (["--checkpoint", str(run), "--landmarks-weights", str(tmp_path / "junk.pt2")],
              r"--landmarks-weights: .*junk.pt2 is not a torch.export program"),
             (["--checkpoint", str(run), "--3dmm-weights", str(tmp_path / "nope.pt")], "--3dmm-weights: no file at"),
             (["--checkpoint", str(run), "--data", str(tmp_path / "nowhere")], "--data: .* is not a folder"),
             # issue 13 #5 / #6: these were found after the whole evaluation, or gave tracebacks
             (["--checkpoint", str(run), "--json", str(tmp_path)], r"--json: .* is a folder"),
             (["--checkpoint", str(run), "--json", str(tmp_path / "junk.pt2" / "eval.json")], "--json: cannot create"),
             (["--checkpoint", str(run), "--vgg-weights", str(tmp_path / "junk.pt2")],
              r"--vgg-weights: .*junk.pt2 is not torchvision's VGG16")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert re.search(message, capsys.readouterr().err), message
    with pytest.raises(SystemExit):
        main([])
    assert "the following arguments are required: --checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the ablation has its own command line: python -m export3d.ablation
        main(["--checkpoint", str(run), "--ablation", "--seeds", "1"])
    assert "unrecognized arguments: --ablation --seeds 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # issue 13 #7: --threads was silently ignored; now it applies, validated
        main(["--checkpoint", str(run), "--threads", "0"])
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_load_model_verifies_the_weights_and_falls_back(tmp_path, capsys):
    """Issue 13 #3: a bit-flipped weights.safetensors loaded silently into evaluate and animate."""
    run = write_checkpoint(tmp_path / "run")
    good, _, _ = load_model(run)
    torch.manual_seed(5)
    cfg = preset("tiny", expression_encoder="lebs", **SMALL)
    meta = json.loads((run / "checkpoints" / "step_00000000" / "meta.json").read_text())
    newest = save_checkpoint(run / "checkpoints", 1, {"model": Export3D(cfg)}, {"step": 1},
                             meta={k: meta[k] for k in ("model_config", "train_config")})  # fmt: skip
    data = bytearray((newest / "weights.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x10
    (newest / "weights.safetensors").write_bytes(bytes(data))
    model, got, folder = load_model(run)
    assert folder.name == "step_00000000" and got["step"] == 0
    assert "step_00000001/weights.safetensors is corrupt" in capsys.readouterr().err
    key = "generator.head.weight"
    assert torch.equal(model.state_dict()[key], good.state_dict()[key])
    assert main(["--checkpoint", str(newest)]) == 2
    assert "sha256 differs" in capsys.readouterr().err


def test_evaluate_reports_each_folder_all_its_clips_and_the_memorisation(tmp_path, capsys):
    """Issue 28: --split all scores every clip of a folder of held-out people, several --data are reported each on
    its own, and the memorisation measure (and --grid) compares outputs with the run's training identities."""
    from tests.training.test_mixing import write_blendshape_folder

    train = write_blendshape_folder(tmp_path / "train", identities=3, frames=5, resolution=32)
    people = write_blendshape_folder(tmp_path / "people", identities=2, frames=5, seed=4, test=0, resolution=32)
    torch.manual_seed(0)
    cfg = preset("tiny", expression_encoder="lebs", lebs={"expression_dim": 52}, **SMALL)
    train_cfg = TrainConfig(out=str(tmp_path / "run"), data=(str(train),), eval_pairs=4)
    save_checkpoint(tmp_path / "run" / "checkpoints", 0, {"model": Export3D(cfg)}, {"step": 0},
                    meta={"model_config": dataclasses.asdict(cfg), "train_config": train_cfg.to_dict()})  # fmt: skip
    out, grid = tmp_path / "eval.json", tmp_path / "grid.png"
    base = ["--checkpoint", str(tmp_path / "run"), "--pairs", "4", "--no-face-metrics", "--device", "cpu"]
    assert main([*base, "--data", str(people), "--split", "all", "--json", str(out), "--grid", str(grid)]) == 0
    result = json.loads(out.read_text())
    assert result["data"] == str(people) and result["split"] == "all" and result["same_identity"]["pairs"] == 4
    memo = result["memorisation"]
    assert "Memorisation" in capsys.readouterr().out
    if importlib.util.find_spec("dlib") and importlib.util.find_spec("mediapipe"):
        assert memo["pairs"] == 4 == memo["scored"] + memo["no_face_output"] + memo["no_face_source"], memo
        assert result["grids"] == {str(people): str(grid)} and grid.is_file()
    else:
        assert memo["not_run"]
    out.unlink()
    assert main([*base, "--data", str(people), "--data", str(train), "--json", str(out), "--memorisation-frames",
                 "0"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["data"] == [str(people), str(train)] and "same_identity" not in result
    # the test split of the folder of people is empty, so all of it is scored; the training folder's test split: 1 clip
    assert {n: b["same_identity"]["pairs"] for n, b in result["sources"].items()} == {str(people): 4, str(train): 4}
    assert all("memorisation" not in b and "identity_leak" in b for b in result["sources"].values())
    printed = capsys.readouterr()
    assert f"held-out data: {people}" in printed.out and f"held-out data: {train}" in printed.out
    assert "lists no 'test' clips" in printed.err
    with pytest.raises(SystemExit):
        main([*base, "--split", "train"])
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_evaluate_grid_without_memorisation_fails_before_scoring(tmp_path, capsys, monkeypatch):
    """--grid on synthetic data (no clip folder to measure memorisation on) is refused before any pair is scored, so
    no evaluation is thrown away after the fact."""
    run = write_checkpoint(tmp_path / "run")
    monkeypatch.setattr("export3d.evaluate.evaluate_source", lambda *a, **k: pytest.fail("scored before the check"))
    assert main(["--checkpoint", str(run), "--pairs", "2", "--no-face-metrics", "--grid", str(tmp_path / "g.png")]) == 2
    assert "--grid: the memorisation was not measured" in capsys.readouterr().err
