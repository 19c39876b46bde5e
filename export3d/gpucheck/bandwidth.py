"""Bytes each fused op must move and the peak DRAM bandwidth of the device: the yardstick of GB/s numbers.

Shared by ``python -m export3d.gpucheck`` and the ``benchmarks/`` suites (which import it from here).
Bytes moved are *compulsory* traffic: every input read once and every output written once, gathers and
scatters assumed to hit in cache (triplane_sample reads each plane texel once, not 4 x 3 times per point).
They are a lower bound on what any implementation moves, so GB/s computed from them is a fair yardstick
for a memory-bound kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Peak DRAM bandwidth in GB/s (vendor data sheets), matched as a substring of torch.cuda.get_device_name();
# the longest matching key wins. Devices not listed fall back to NVML's memory clock x bus width.
PEAK_GBPS = {
    "H200": 4800.0,
    "H100 NVL": 3900.0,
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100-SXM4-40GB": 1555.0,
    "A100-PCIE-40GB": 1555.0,
    "L40S": 864.0,
    "L40": 864.0,
    "L4": 300.0,
    "A40": 696.0,
    "A10G": 600.0,
    "A10": 600.0,
    "T4": 320.0,
    "V100": 900.0,
    "RTX 4090": 1008.0,
    "RTX 3090": 936.0,
    "RTX A6000": 768.0,
}


# ----------------------------------------------------------------------------------------------- bandwidth
def peak_bandwidth(dev: str | torch.device | None = None) -> tuple[float | None, str]:
    """``(peak GB/s, where it came from)`` of a CUDA device; ``(None, reason)`` on the CPU."""
    dev = torch.device(dev or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type != "cuda":
        return None, "not measured on CPU"
    name = torch.cuda.get_device_name(dev)
    for key in sorted(PEAK_GBPS, key=len, reverse=True):
        if key in name:
            return PEAK_GBPS[key], f"data sheet ({key})"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(dev.index or 0)
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        finally:
            pynvml.nvmlShutdown()
        return clock_mhz * 1e6 * 2 * bus_bits / 8 / 1e9, "NVML memory clock x bus width (double data rate)"
    except Exception as exc:  # NVML missing or the query unsupported: say so instead of guessing
        return None, f"unknown device {name!r} and NVML failed ({exc})"


# ----------------------------------------------------------------------------------------------- bytes moved
def op_bytes(op: str, mode: str, inputs: Sequence[torch.Tensor]) -> int:
    """Compulsory bytes ``op`` moves in ``mode`` ("forward" | "backward" | "full") for ``inputs``.

    Forward reads the inputs and writes the outputs (plus the fp32 per-row or per-ray state the kernel keeps for
    the backward); backward reads the output gradients and whatever the analytic backward needs (inputs, saved
    state) and writes the input gradients, exactly the tensors the Triton backward of each op touches, each in
    its own dtype. Gradients are those a training step asks for (planes and decoder of ``render_rays``, not the
    rays; not the coords of ``triplane_sample``). A kernel's transient buffers (fp32 atomic accumulators,
    per-program partial sums) are not counted: an ideal kernel writes each gradient once, in its dtype.
    """
    if mode == "full":
        return op_bytes(op, "forward", inputs) + op_bytes(op, "backward", inputs)
    if mode not in ("forward", "backward"):
        raise ValueError(f"mode must be forward, backward or full, got {mode!r}")
    fwd = mode == "forward"
    e = inputs[0].element_size()
    if op == "eadaln":  # x [B, L, D], scale / shift [B, D]; no affine; mean / rstd fp32 [B*L]
        B, L, D = inputs[0].shape
        if fwd:  # read x, scale, shift; write y, mean, rstd
            return e * (2 * B * L * D + 2 * B * D) + 8 * B * L
        # read x, dy, scale, mean, rstd; write dx, dscale, dshift
        return e * (3 * B * L * D + 3 * B * D) + 8 * B * L
    if op == "triplane_sample":  # planes [B, 3, C, H, W], coords [B, N, 3] -> [B, N, C]
        B, _, C, H, W = inputs[0].shape
        N = inputs[1].shape[1]
        planes, coords, feats = 3 * B * C * H * W, 3 * B * N, B * N * C
        return e * (planes + coords + feats)  # fwd: read planes + coords, write feats; bwd: read dfeats +
        # coords, write dplanes (coords need no gradient in the model)
    if op == "composite_rays":  # colors [B, R, S, C], densities / depths [B, R, S, 1]
        B, R, S, C = inputs[0].shape
        samples = e * B * R * S * (C + 2)  # colors, densities, depths: read by both passes
        per_ray = e * B * R * (C + 1)  # rgb and depth: written by the forward, their gradients read by the backward
        intervals = e * B * R * (S - 1)  # weights: written by the forward, their gradient read by the backward (zeros
        # when the loss does not use them, as in training: autograd hands the kernel a zero tensor)
        state = 4 * B * R * (C + 3)  # fp32 rgb_acc [B, R, C] and stats [B, R, 3]: written by fwd, read by bwd
        if fwd:
            return samples + per_ray + intervals + state
        return samples + per_ray + intervals + state + e * B * R * S * (C + 1)  # + write dcolors, ddensities
    if op == "render_rays":  # planes [B, 3, C, H, W], rays [B, R, 3] x 2, depths [B, R, S, 1], decoder w1 b1 w2 b2
        planes, origins, _, depths, *decoder = inputs
        B, _, C, H, W = planes.shape
        R, S = depths.shape[1], depths.shape[2]
        cf = decoder[2].shape[1] - 1
        plane_bytes = e * 3 * B * C * H * W  # the planes (each texel once), or dplanes: same shape and dtype
        param_bytes = e * sum(t.numel() for t in decoder)  # w1, b1, w2, b2, or dw1, db1, dw2, db2
        ray_bytes = origins.element_size() * B * R * (6 + S)  # origins, directions, depths (fp32 in the renderer)
        per_ray = e * B * R * (cf + 1)  # rgb and depth: written by the forward, their gradients read by the backward
        state = 4 * B * R * (cf + 3)  # fp32 rgb_acc [B, R, Cf] and stats [B, R, 3]: written by fwd, read by bwd
        if fwd:  # read planes, rays, depths, decoder; write rgb, depth and the state
            return plane_bytes + ray_bytes + param_bytes + per_ray + state
        # read planes, rays, depths, decoder, drgb, ddepth and the state; write dplanes and the decoder gradients
        return 2 * plane_bytes + ray_bytes + 2 * param_bytes + per_ray + state
    if op == "render_rays_weights":  # the density-only coarse pass: render_rays' inputs -> weights [B, R, S-1, 1]
        if not fwd:
            raise ValueError("render_rays_weights has no backward (it runs without autograd)")
        planes, origins, _, depths, w1, *_ = inputs
        B, _, C, H, W = planes.shape
        R, S = depths.shape[1], depths.shape[2]
        hidden = w1.shape[1]
        density_head = C * hidden + hidden + hidden + 1  # w1, b1, column 0 of w2, b2[0]: the colour head is not read
        # read planes, rays, depths and the density head; write the weights
        return e * (3 * B * C * H * W + density_head + B * R * (S - 1)) + origins.element_size() * B * R * (6 + S)
    if op == "pixel_shuffle_lowpass":  # x [B, C*f*f, H, W] -> [B, C, fH, fW]: same element count
        return e * 2 * inputs[0].numel()  # read x (dy), write y (dx); the K filter taps (a few bytes) left out
    if op in ("upsample2d", "downsample2d"):  # x [B, C, H, W], fp32 filter f -> [B, C, 2H, 2W] or [B, C, H/2, W/2]
        x, f = inputs  # EG3D's default factor 2 and padding: the output is 2H x 2W (H // 2 x W // 2)
        B, C, H, W = x.shape
        out = B * C * (4 * H * W if op == "upsample2d" else (H // 2) * (W // 2))
        # fwd: read x and f, write y; bwd (upfirdn2d of dy with up and down swapped): read dy and f, write dx
        return e * (x.numel() + out) + f.numel() * f.element_size()
    if op == "bias_act":  # x [..., C, ...], b [C], as the registry and benchmarks call it: lrelu, clamp 256
        x, b = inputs
        n, C = x.numel(), b.numel()
        if fwd:  # read x and b, write y
            return e * (2 * n + C)
        # read dy and what the forward saved, write dx and db: y in fp32; below fp32 a clamped lrelu saved x and b
        # instead (exact clamp masks: see kernels/bias_act.py), as smooth activations always do
        return e * (3 * n + C) + (e * C if e < 4 else 0)
    raise ValueError(f"unknown op {op!r}")
