"""What the fused ops keep alive for backward, at paper-preset sizes, measured on fake CUDA tensors."""

import pytest

from benchmarks.cases import OPS, RAYS, SAMPLES, saved_bytes


def _storage(t):
    return t.untyped_storage()._cdata


@pytest.mark.parametrize("op", [*OPS, "render"])
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
