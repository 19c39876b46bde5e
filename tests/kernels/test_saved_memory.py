"""What the fused ops keep alive for backward, at paper-preset sizes, measured on fake CUDA tensors."""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.cases import OPS, RAYS, SAMPLES, render_scene, saved_bytes
from export3d.kernels.utils import saved_tensor_bytes


def _storage(t):
    return t.untyped_storage()._cdata


@pytest.mark.parametrize("op", list(OPS))
def test_triton_saves_less_than_reference(op):
    ref, tri = saved_bytes(op, "reference")[0], saved_bytes(op, "triton")[0]
    print(f"{op}: reference saves {ref / 2**20:.1f} MiB, triton {tri / 2**20:.1f} MiB")
    assert tri < ref


def test_composite_rays_saves_no_per_sample_intermediate():
    _, saved, inputs = saved_bytes("composite_rays", "triton")
    own = {_storage(t) for t in inputs}
    per_sample = [t for t in saved if t.dim() >= 3 and t.shape[1] == RAYS and t.shape[2] in (SAMPLES, SAMPLES - 1)]
    assert per_sample, "expected the inputs themselves to be saved"
    assert all(_storage(t) in own for t in per_sample), [tuple(t.shape) for t in per_sample]


def test_triplane_sample_saves_nothing_per_point_but_coords():
    _, saved, (planes, coords) = saved_bytes("triplane_sample", "triton")
    points = coords.shape[1]
    per_point = [t for t in saved if points in t.shape]
    assert all(_storage(t) == _storage(coords) for t in per_point), [tuple(t.shape) for t in per_point]


def _mlp_saved_bytes() -> tuple[int, int, int]:
    """(bytes the decoder MLP of minimal_render saves alone, its feature count C, its output width) at paper size."""
    with FakeTensorMode():
        planes, (w1, w_sigma, w_rgb), *_ = render_scene(device="cuda")
        feats = torch.empty(1, RAYS * SAMPLES, planes.shape[2], device="cuda", requires_grad=True)

        def mlp(feats):
            hidden = F.softplus(feats @ w1)
            return hidden @ w_sigma, torch.sigmoid(hidden @ w_rgb) * 1.002 - 0.001

        return saved_tensor_bytes(mlp, feats)[0], planes.shape[2], w_rgb.shape[1]


def test_render_saves_the_mlp_activations_and_per_ray_state_only():
    """The fused render keeps what the decoder MLP itself needs, plus the sample points (triplane_sample's coords),
    composite_rays' inputs and its per-ray totals: no other per-sample tensor. (The reference keeps 10% more.)"""
    tri, ref = saved_bytes("render", "triton")[0], saved_bytes("render", "reference")[0]
    mlp, _, colors = _mlp_saved_bytes()
    points = RAYS * SAMPLES
    fused_ops = 4 * (points * 3 + points * (colors + 2) + RAYS * (colors + 3))  # coords; colors, densities, depths
    print(f"render saves {tri / 2**20:.2f} MiB: MLP {mlp / 2**20:.2f} + fused ops <= {fused_ops / 2**20:.2f}; "
          f"reference {ref / 2**20:.2f}")
    assert tri <= mlp + fused_ops
    assert ref > mlp + fused_ops + points * 4  # the reference keeps at least one more per-sample tensor
