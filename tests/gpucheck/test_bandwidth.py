"""op_bytes (the compulsory bytes behind every GB/s number) against first principles: the bytes of every tensor the
fused ops' forward and backward custom ops take and return, each in its own dtype.

The tensors come from the ops' own registrations run on meta tensors (their fake implementations: shapes and dtypes,
no data), so the reference is the kernels' real signatures, not a second copy of the formulas. Transient buffers
inside a launcher (fp32 atomic accumulators, per-program partial sums) are not among them and not compulsory.
"""

import math

import pytest
import torch

import export3d.kernels  # noqa: F401 - registers the export3d:: custom ops
from export3d.gpucheck.bandwidth import op_bytes
from export3d.kernels.upfirdn2d import backward_padding
from export3d.kernels.utils import saved_tensor_bytes

DTYPES = (torch.float32, torch.bfloat16)
B, C, H, W = 2, 5, 6, 7  # planes [B, 3, C, H, W]
R, S, HIDDEN, CF = 9, 4, 8, 3  # rays, samples per ray, decoder widths


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _grads(*outs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(torch.empty_like(o) for o in outs)


def _render_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """planes and decoder w1 [C, h], b1 [h], w2 [h, 1 + Cf], b2 [1 + Cf] in ``dtype``; rays [B, R, 3] x 2 and depths
    [B, R, S, 1] in fp32, as the renderer passes them."""
    planes = _meta(B, 3, C, H, W, dtype=dtype)
    rays = (_meta(B, R, 3), _meta(B, R, 3), _meta(B, R, S, 1))
    decoder = (_meta(C, HIDDEN, dtype=dtype), _meta(HIDDEN, dtype=dtype), _meta(HIDDEN, 1 + CF, dtype=dtype),
               _meta(1 + CF, dtype=dtype))  # fmt: skip
    return planes, *rays, *decoder


# ----------------------------------------------------------------------------------------------- per op
# Each returns (the inputs op_bytes takes, forward bytes, backward bytes).
def _eadaln(dtype):
    x, scale, shift = _meta(B, R, 2 * C, dtype=dtype), _meta(B, 2 * C, dtype=dtype), _meta(B, 2 * C, dtype=dtype)
    out = torch.ops.export3d.eadaln_fwd(x, scale, shift, None, None, 1e-6)  # y, mean, rstd
    y, mean, rstd = out
    (dy,) = _grads(y)
    grads = torch.ops.export3d.eadaln_bwd(dy, x, scale, None, None, mean, rstd)  # dx, dscale, dshift, (no affine)
    return (x, scale, shift), _nbytes(x, scale, shift, *out), _nbytes(dy, x, scale, mean, rstd, *grads)


def _triplane_sample(dtype):
    planes, coords = _meta(B, 3, C, H, W, dtype=dtype), _meta(B, R * S, 3, dtype=dtype)
    feats = torch.ops.export3d.triplane_sample_fwd(planes, coords, "xyz", 1.0)
    (dfeats,) = _grads(feats)
    # coords need no gradient (as in the model): the planes are neither saved nor read by the backward
    grads = torch.ops.export3d.triplane_sample_bwd(dfeats, coords, None, list(planes.shape), dtype, "xyz", 1.0, True)
    return (planes, coords), _nbytes(planes, coords, feats), _nbytes(dfeats, coords, *grads)


def _composite_rays(dtype):
    inputs = (_meta(B, R, S, C, dtype=dtype), _meta(B, R, S, 1, dtype=dtype), _meta(B, R, S, 1, dtype=dtype))
    out = torch.ops.export3d.composite_rays_fwd(*inputs, -1.0, False)  # rgb, depth, weights, rgb_acc, stats
    rgb, depth, weights, rgb_acc, stats = out
    bwd_in = (*_grads(rgb, depth, weights), *inputs, rgb_acc, stats)  # the weights' gradient: zeros in training
    grads = torch.ops.export3d.composite_rays_bwd(*bwd_in, -1.0, False)  # dcolors, ddensities
    return inputs, _nbytes(*inputs, *out), _nbytes(*bwd_in, *grads)


def _pixel_shuffle_lowpass(dtype):
    x = _meta(B, 4 * C, H, W, dtype=dtype)
    y = torch.ops.export3d.pixel_shuffle_lowpass_fwd(x, 2, None)  # the default taps: K values, not counted
    (dy,) = _grads(y)
    dx = torch.ops.export3d.pixel_shuffle_lowpass_bwd(dy, 2, None)
    return (x,), _nbytes(x, y), _nbytes(dy, dx)


def _render_rays(dtype):
    inputs = _render_inputs(dtype)
    out = torch.ops.export3d.render_rays_fwd(*inputs, "xyz", 1.0, -1.0, False, False)
    rgb, depth, weights, rgb_acc, stats = out
    assert weights.numel() == 0  # not asked for: not written
    bwd_in = (*_grads(rgb, depth), *inputs, rgb_acc, stats)
    grads = torch.ops.export3d.render_rays_bwd(*bwd_in, "xyz", 1.0, -1.0, False, True, True)  # dplanes, dw1 .. db2
    return inputs, _nbytes(*inputs, *out), _nbytes(*bwd_in, *grads)


def _resample(dtype, up, down, padding):
    """upfirdn2d as upsample2d / downsample2d call it with a [4, 4] filter; the backward is the op again."""
    x, f = _meta(B, C, H + 1, W + 1, dtype=dtype), _meta(4, 4)  # even sides: [B, C, 7, 8]
    y = torch.ops.export3d.upfirdn2d_fwd(x, f, up, down, padding, False, 1.0)
    (dy,) = _grads(y)
    p = backward_padding(x.shape[2:], y.shape[2:], f, up, down, padding)
    dx = torch.ops.export3d.upfirdn2d_fwd(dy, f, down, up, p, True, 1.0)
    assert dx.shape == x.shape
    return (x, f), _nbytes(x, f, y), _nbytes(dy, f, dx)


def _upsample2d(dtype):
    return _resample(dtype, [2, 2], [1, 1], [2, 1, 2, 1])


def _downsample2d(dtype):
    return _resample(dtype, [1, 1], [2, 2], [1, 1, 1, 1])


def _bias_act(dtype):
    x, b = _meta(B, C, H, W, dtype=dtype).requires_grad_(), _meta(C, dtype=dtype).requires_grad_()
    args = (1, "lrelu", 0.2, math.sqrt(2), 256.0)  # as the registry calls it
    _, saved, y = saved_tensor_bytes(torch.ops.export3d.bias_act_fwd, x, b, *args)
    from_y = any(t is y for t in saved)  # fp32: y (b is kept for db's shape only, and not read); else x and b
    read = [y] if from_y else [x, b]
    assert from_y == (dtype == torch.float32) and all(any(t is r for t in saved) for r in read)
    (dy,) = _grads(y)
    grads = torch.ops.export3d.bias_act_bwd(dy, None if from_y else x, b, y if from_y else None, *args, True)
    return (x, b), _nbytes(x, b, y), _nbytes(dy, *read, *grads)  # grads: dx, db


CASES = {
    "eadaln": _eadaln,
    "triplane_sample": _triplane_sample,
    "composite_rays": _composite_rays,
    "pixel_shuffle_lowpass": _pixel_shuffle_lowpass,
    "render_rays": _render_rays,
    "upsample2d": _upsample2d,
    "downsample2d": _downsample2d,
    "bias_act": _bias_act,
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", CASES)
def test_bytes_are_the_tensors_each_pass_reads_and_writes(op, dtype):
    inputs, forward, backward = CASES[op](dtype)
    assert op_bytes(op, "forward", inputs) == forward
    assert op_bytes(op, "backward", inputs) == backward
    assert op_bytes(op, "full", inputs) == forward + backward


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_render_rays_backward_bytes_include_the_gradients_it_writes(dtype):
    # The backward reads what the forward reads, reads the output gradients and the fp32 state the forward wrote
    # (as many bytes as the forward wrote), and on top writes dplanes [B, 3, C, H, W] and dw1, db1, dw2, db2 in the
    # inputs' dtype: a formula that counts the planes and the decoder once in both passes gives a difference of 0.
    inputs = _render_inputs(dtype)
    e = inputs[0].element_size()
    written = e * (3 * B * C * H * W + C * HIDDEN + HIDDEN + HIDDEN * (1 + CF) + 1 + CF)
    assert op_bytes("render_rays", "backward", inputs) - op_bytes("render_rays", "forward", inputs) == written
    assert written >= 3 * B * C * H * W * e


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_render_rays_weights_bytes_read_the_density_head_only(dtype):
    planes, origins, directions, depths, w1, b1, w2, b2 = inputs = _render_inputs(dtype)
    weights = torch.ops.export3d.render_rays_weights(*inputs, "xyz", 1.0, -1.0)  # [B, R, S-1, 1]
    # without the colour head the kernel loads w1, b1, column 0 of w2 and b2[0] of the decoder
    read = _nbytes(planes, origins, directions, depths, w1, b1, w2[:, :1], b2[:1])
    assert op_bytes("render_rays_weights", "forward", inputs) == read + _nbytes(weights)
    with pytest.raises(ValueError, match="no backward"):
        op_bytes("render_rays_weights", "backward", inputs)
