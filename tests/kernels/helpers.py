"""Comparison helpers shared by the kernel tests."""

import torch


def assert_close_lowp(out: torch.Tensor, ref_lowp: torch.Tensor, ref32: torch.Tensor, atol: float, name: str = ""):
    """Flash-attention's bound for kernels below fp32: ``|out - ref32| <= 2 * |ref_lowp - ref32| + atol``.

    ``ref_lowp`` is the reference run in the low precision, ``ref32`` the reference in fp32 on the same
    (upcast) inputs; the kernel may be at most twice as far from fp32 as PyTorch itself is.
    """
    assert out.shape == ref32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref32.shape)}"
    err = (out.float() - ref32.float()).abs()
    bound = 2 * (ref_lowp.float() - ref32.float()).abs() + atol
    bad = err > bound
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} of {bad.numel()} elements exceed the bound; "
        f"worst excess {(err - bound).max().item():.3g}, max err {err.max().item():.3g}"
    )
