"""python -m export3d.gpucheck: the --interpret run passes and writes both reports; without CUDA it says so in one
line and exits 2; a wrong kernel fails its check."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from export3d.gpucheck import checks
from export3d.gpucheck.ops import OPS, Sizes

TINY = Sizes(batch=2, tokens=(3, 40), planes=(4, 5), points=30, rays=(5, 4, 3), shuffle=(4, 3), decoder_hidden=8)


def _run(*args, env_extra=None, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "export3d.gpucheck", *args], capture_output=True, text=True,
                          timeout=900, env=env, cwd=cwd)  # fmt: skip


def test_interpret_run_passes_and_writes_both_reports(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the tool must set it itself
    done = subprocess.run([sys.executable, "-m", "export3d.gpucheck", "--interpret", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env={**env, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpucheck.json").read_text())
    md = (tmp_path / "gpucheck.md").read_text()
    assert result["passed"] and result["interpret"]
    names = {c["name"] for c in result["checks"]}
    for op in OPS:
        assert {f"{op} {d} (small)" for d in ("fp32", "fp16", "bf16")} | {f"{op} determinism (small)"} <= names
    assert any(n.startswith("model tiny") for n in names)
    assert {r["op"] for r in result["op_timings"]} == set(OPS)
    assert [r["variant"] for r in result["train_steps"]] == ["reference"]
    assert result["environment"]["triton"] and result["environment"]["torch"] == torch.__version__
    assert md.startswith("## gpucheck: PASS") and "| eadaln fp16 (small) | ok |" in md
    assert "PASS" in done.stdout and str(tmp_path / "gpucheck.md") in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_one_line_and_exit_2(tmp_path):
    done = _run("--out", str(tmp_path))
    assert done.returncode == 2
    assert len(done.stdout.strip().splitlines()) == 1 and "no CUDA device" in done.stdout and done.stderr == ""
    assert not (tmp_path / "gpucheck.json").exists()


def test_a_wrong_kernel_fails_its_check(device):
    entry = OPS["eadaln"]

    def off_by(delta):
        def run(leaves, impl):
            (y,) = entry.run(leaves, impl)
            return (y + delta if impl == "triton" else y,)

        return dataclasses.replace(entry, run=run)

    assert checks.check_op(entry, TINY, "fp32", device).ok
    assert not checks.check_op(off_by(1e-3), TINY, "fp32", device).ok
    assert checks.check_op(entry, TINY, "fp16", device).ok
    assert not checks.check_op(off_by(0.05), TINY, "fp16", device).ok  # a few fp16 ulps beyond PyTorch's own error
