"""Every launch runs on its tensors' device (through ``utils.launch`` / ``utils.on_device``), mixed devices fail
clearly, and the launch recorder sees what a GPU launch would compile. The ops come from gpucheck's registry, so
a new fused op is covered by adding its entry there."""

import contextlib
import importlib
import inspect

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from export3d.gpucheck.ops import OPS, Sizes, forward_backward
from export3d.kernels import aot, pixel_shuffle_lowpass, utils
from export3d.kernels.launches import record_launches, specialize

TINY = Sizes(batch=2, tokens=(3, 40), planes=(4, 5), points=30, rays=(5, 4, 3), shuffle=(4, 3), decoder_hidden=8)


def _kernels_of(module_name: str) -> set[str]:
    module = importlib.import_module(f"export3d.kernels.{module_name}")
    return {n for n, obj in vars(module).items() if n.endswith("_kernel") and hasattr(obj, "fn")}


def test_on_device_enters_the_tensors_cuda_device(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def fake_device(dev):
        entered.append(torch.device(dev))
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    with FakeTensorMode():
        on_gpu1 = torch.empty(4, device="cuda:1")  # a fake CUDA tensor: no GPU needed
    with utils.on_device(on_gpu1):
        pass
    with utils.on_device(torch.empty(4)):  # CPU: nothing to enter
        pass
    assert entered == [torch.device("cuda", 1)]


@pytest.mark.parametrize("name", list(OPS))
def test_every_launch_goes_through_the_device_guard(name, monkeypatch, device):
    """All the op's kernels, forward and backward, launch inside ``on_device`` of one of their own tensors."""
    guarded = []
    real = utils.on_device

    @contextlib.contextmanager
    def recording(t):
        guarded.append(t.device)
        with real(t):
            yield

    launched = []
    monkeypatch.setattr(utils, "on_device", recording)
    monkeypatch.setattr(utils, "LAUNCH_HOOKS", [lambda k, g, a, kw: launched.append(k.fn.__name__)])
    entry = OPS[name]
    forward_backward(entry, entry.leaves(TINY, torch.float32, device, 0), "triton")
    assert len(guarded) == len(launched) > 0
    assert set(guarded) == {device}
    assert set(launched) <= _kernels_of(entry.kernel_module)


def test_every_kernel_is_launched_by_some_entry(device):
    """Every @triton.jit kernel of every op module, forward and backward, is run by some registry entry."""
    launched: dict[str, set[str]] = {m: set() for m in aot.OP_MODULES}
    for entry in OPS.values():
        with record_launches() as seen:
            forward_backward(entry, entry.leaves(TINY, torch.float32, device, 0), "triton")
        launched[entry.kernel_module].update(c.kernel for c in seen)
    assert launched == {m: _kernels_of(m) for m in aot.OP_MODULES}


def test_every_kernel_module_is_in_the_registry():
    """aot.OP_MODULES and gpucheck's registry list the same fused ops (a new op needs both entries)."""
    assert set(aot.OP_MODULES) == {e.kernel_module for e in OPS.values()}


@pytest.mark.parametrize("name", [n for n in OPS if n != "pixel_shuffle_lowpass"])
def test_mixed_devices_name_both_arguments(name):
    entry = OPS[name]
    leaves = list(entry.leaves(TINY, torch.float32, torch.device("cpu"), 0))
    leaves[-1] = leaves[-1].detach().to("meta")
    with pytest.raises(ValueError, match=r"is on meta but \w+ is on cpu; put them on one device"):
        entry.run(tuple(leaves), "triton")


def test_pixel_shuffle_taps_on_another_device():
    with pytest.raises(ValueError, match=r"taps is on meta but x is on cpu"):
        pixel_shuffle_lowpass(torch.zeros(1, 4, 2, 2), 2, torch.ones(3, device="meta"))


# ----------------------------------------------------------------------------------------------- launch records
def test_specialize_keys_like_triton():
    """16-byte aligned pointers and 16-divisible ints are promised divisible; an int equal to 1 is compiled in."""
    eadaln_mod = importlib.import_module("export3d.kernels.eadaln")
    x = torch.zeros(64)
    args = (x, x, x, x[1:], x, x, x, x, 1, 32, 17, 48, 1e-6)
    cfg = specialize(eadaln_mod._eadaln_fwd_kernel, args, {"HAS_WEIGHT": False, "HAS_BIAS": False, "BLOCK_D": 32,
                                                           "num_warps": 2})  # fmt: skip
    sig = dict(cfg.signature)
    assert sig["X"] == "*fp32" and sig["eps"] == "fp32" and sig["D"] == "i32" and sig["L"] == "constexpr"
    assert dict(cfg.constexprs) == {"L": 1, "HAS_WEIGHT": False, "HAS_BIAS": False, "BLOCK_D": 32}
    assert set(cfg.aligned) == {"X", "Y", "SCALE", "W", "BIAS", "MEAN", "RSTD", "D", "s_shift"}  # SHIFT is x[1:]
    assert cfg.num_warps == 2
    params = list(inspect.signature(eadaln_mod._eadaln_fwd_kernel.fn).parameters)
    assert [n for n, _ in cfg.signature] == params


def test_record_without_running_leaves_outputs_untouched(device):
    entry = OPS["composite_rays"]
    leaves = entry.leaves(TINY, torch.float32, device, 0)
    with record_launches(execute=False) as seen:
        out = entry.run(leaves, "triton")
    assert [c.kernel for c in seen] == ["_composite_fwd_kernel"]
    assert not torch.equal(out[0], entry.run(leaves, "reference")[0])  # nothing was computed
    with record_launches() as seen:
        forward_backward(entry, leaves, "triton")
    assert [c.kernel for c in seen] == ["_composite_fwd_kernel", "_composite_bwd_kernel"]
