"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 without spilling (no GPU needed): the hand-written
configurations and, computed by recording the models' launches, every configuration the two presets launch."""

import json
import os
import subprocess
import sys

from export3d.kernels.aot import ARCHS, all_specs


def test_aot_compiles_every_kernel_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real codegen, not the interpreter
    out = tmp_path / "aot.json"
    proc = subprocess.run(
        [sys.executable, "-m", "export3d.kernels.aot", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    hand = [r for r in rows if r["covers"] == "hand"]
    assert len(hand) == len(all_specs()) * len(ARCHS)
    kernels = {spec.kernel.__name__ for spec in all_specs()}
    for stem in ("_eadaln", "_triplane_sample", "_composite", "_psl", "_render", "_bias_act"):  # fwd and bwd
        assert {f"{stem}_fwd_kernel", f"{stem}_bwd_kernel"} <= kernels, stem
    assert "_upfirdn2d_kernel" in kernels  # upfirdn2d's backward is upfirdn2d: one kernel
    for name in kernels:
        archs = {r["arch"] for r in rows if r["kernel"] == name}
        assert archs == {f"sm_{a}" for a in ARCHS}, name
    assert all(r["error"] == "" and r["spill_bytes"] == 0 and r["registers"] > 0 for r in rows)
    # the presets' own configurations: both presets, forward and backward of every op the model runs on the Triton
    # path (the renderer's is render_rays; triplane_sample and composite_rays serve its reference path and users),
    # including the super-resolution's and the discriminator's upfirdn2d and bias_act (R1's double backward too)
    stems = ("_eadaln", "_psl", "_render", "_bias_act")
    model_kernels = {f"{stem}_{d}_kernel" for stem in stems for d in ("fwd", "bwd")} | {"_upfirdn2d_kernel"}
    for preset in ("paper", "tiny"):
        launched = [r for r in rows if f"{preset}[" in r["covers"]]
        assert {r["kernel"] for r in launched} == model_kernels, preset
        assert {r["arch"] for r in launched} == {f"sm_{a}" for a in ARCHS}
        assert any("train-bf16" in r["covers"] and r["config"].startswith("bf16") for r in launched), preset
        assert all("align16=0" not in r["config"] for r in launched), "real launches are 16-byte aligned"
    assert "configurations the paper preset launches" in proc.stdout
