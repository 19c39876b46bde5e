"""``python -m export3d.profile``: report structure, stage accounting, trace file and argument errors (CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from export3d import profile
from export3d.profiling import stages


def _check_section(part: dict, names: tuple[str, ...]) -> None:
    assert [r["name"] for r in part["stages"]] == list(names)
    for r in part["stages"]:
        assert r["time_s"] >= 0.0 and r["share"] >= 0.0, r
        assert r["calls"] >= 0 and r["saved_bytes"] >= 0, r
    assert math.isclose(sum(r["share"] for r in part["stages"]), 1.0, abs_tol=1e-6)
    assert part["total_s"] > 0 and part["wall_s"] > 0


def test_profile_tiny_cpu_json_and_trace(tmp_path, capsys):
    out, trace = tmp_path / "profile.json", tmp_path / "trace.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--batch-size", "2", "--steps", "1", "--warmup", "1",
            "--threads", "1", "--json", str(out), "--trace", str(trace)]  # fmt: skip
    assert profile.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())

    assert report["preset"] == "tiny" and report["device"] == "cpu" and report["batch"] == 2
    _check_section(report["training_step"], profile.TRAIN_STAGES)
    _check_section(report["inference_frame"], profile.INFERENCE_STAGES)
    stages = {r["name"]: r for r in report["training_step"]["stages"]}
    for name in ("expression encoder", "tri-plane sampling", "decoder MLP", "compositing", "super-resolution",
                 "discriminator", "losses", "backward", "optimiser"):  # fmt: skip
        assert stages[name]["calls"] >= 1 and stages[name]["time_s"] > 0, name
    assert stages["tri-plane sampling"]["calls"] == 2  # coarse + fine pass
    assert stages["discriminator"]["calls"] == 3  # fake for G's adversarial term, then real + fake for D
    split = report["training_step"]["backward_split"]
    assert split["losses_and_discriminator_s"] >= 0 and split["generator_s"] >= 0

    assert report["attention_backend"] == "sdpa"  # impl="fast" on CPU tensors
    assert "attention backend: sdpa" in printed
    if not torch.cuda.is_available():
        assert report["nvml"]["state"] in (profile.NVML_NO_GPU, "not sampled (--device cpu)")
    if report["nvml"]["state"] == profile.NVML_NO_GPU:
        assert "NVML: no GPU" in printed

    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"training step", "inference frame", "tri-plane sampling", "backward"} <= names


def test_reference_impl_reports_math_attention():
    opts = profile.ProfileOptions(preset="tiny", device="cpu", impl="reference", batch=1, steps=1, warmup=0)
    report = profile.run(opts)
    assert report["attention_backend"] == "math"
    _check_section(report["inference_frame"], profile.INFERENCE_STAGES)


def test_stage_times_are_exclusive(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 10.0])  # parent starts, child starts, child ends, parent ends

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            return next(clock)

    monkeypatch.setattr(stages, "time", FakeTime)
    timer = profile.StageTimer(cuda=False)
    with timer.stage("renderer"), timer.stage("tri-plane sampling"):
        pass
    assert timer.stats["tri-plane sampling"].time_s == 2.0
    assert timer.stats["renderer"].time_s == 8.0  # 10 s inclusive minus the nested 2 s


def test_cli_errors_name_the_argument(capsys, tmp_path):
    with pytest.raises(SystemExit):
        profile.parse_args(["--batch-size", "0"])
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        profile.parse_args(["--device", "gpu0"])
    assert "--device: 'gpu0' is not a device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:1"):  # issue 13 #7: cuda:N is accepted as everywhere else
            with pytest.raises(SystemExit):
                profile.parse_args(["--device", device])
            assert f"--device: '{device}' requested but CUDA is not available" in capsys.readouterr().err
    assert profile.main(["--json", str(tmp_path)]) == 2  # a folder: found before the measurement
    assert "--json: " in capsys.readouterr().err


def test_one_flag_name_per_meaning_across_the_command_lines():
    """Issue 13 #7: `profile --batch` vs `--batch-size` elsewhere; every flag has help text."""
    from export3d import animate, evaluate, train

    parsers = {"train": train.build_parser(), "evaluate": evaluate.build_parser(), "animate": animate.build_parser(),
               "profile": profile.build_parser()}  # fmt: skip
    for name, parser in parsers.items():
        flags = {s for a in parser._actions for s in a.option_strings}
        assert "--batch-size" in flags and "--device" in flags and "--threads" in flags, name
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
            assert "preset's" not in action.help, f"{name} {action.option_strings}: show the real default"


def test_fused_rendering_has_its_own_stage():
    """With the Triton path (here the interpreter) the renderer's two render_rays calls are one named stage, and
    the split path's stages stay empty."""
    from tests.model.helpers import inputs, small_model

    model = small_model(render={"n_coarse": 4, "n_fine": 4}).eval()
    model.renderer.kernel_impl = "triton"  # the renderer only: the generator's kernels would only slow this down
    timer = profile.StageTimer(cuda=False)
    with stages.instrument(model, None, timer, compile_units=False), torch.no_grad():
        model(*inputs(model, batch=1))
    assert "fused rendering (render_rays)" in profile.TRAIN_STAGES
    assert timer.stats["fused rendering (render_rays)"].calls == 2  # density-only coarse pass + final pass
    assert "tri-plane sampling" not in timer.stats and "compositing" not in timer.stats


def test_memory_table_of_the_tiny_training_step(tmp_path, capsys):
    """``--memory``: the saved-for-backward table of one training step on fake tensors (no time measured)."""
    out = tmp_path / "memory.json"
    assert profile.main(["--memory", "--preset", "tiny", "--batch-size", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["preset"] == "tiny" and report["batch"] == 2
    assert report["attention_backend"] == "sdpa" and f"attention backend {report['attention_backend']}" in printed
    rows = report["rows"]
    for name in ("model.superres.block0", "model.superres.block1", "discriminator.from_rgb",
                 "discriminator.blocks.0.conv0", "lpips.net.slice1", "discriminator: R1 double backward"):  # fmt: skip
        assert name in rows and sum(rows[name].values()) > 0, name
        assert f"  {name} " in printed, name
    total = sum(n for row in rows.values() for n in row.values())
    assert f"{total / 2 / 2**20:,.1f}" in printed.splitlines()[-3]  # the total line, per image
    assert report["superres_and_discriminator_bytes_per_image"] > 0
    assert "super-resolution + discriminator:" in printed


def test_memory_flag_defaults_and_errors(capsys):
    opts = profile.parse_args(["--memory"])
    assert (opts.memory, opts.preset, opts.batch) == (True, "paper", 1)
    assert profile.parse_args([]).preset == "tiny" and not profile.parse_args([]).memory
    with pytest.raises(SystemExit):
        profile.parse_args(["--memory", "--trace", "t.json"])
    assert "--memory measures no time: it takes no --trace" in capsys.readouterr().err
