"""Which fusions the super-resolution and the discriminator make, decided by bytes moved (issue 25).

``python -m benchmarks.model_fusions`` prints, for each fusable path at the paper preset's shapes (batch 1, fp32), the
alternatives side by side: the bytes each moves in its forward and its backward when every op reads its inputs and
writes its outputs once (``_TrafficCounter`` of ``benchmarks/common.py``; a fused op counts as one op, so its count is
its compulsory traffic), its multiply-adds, and the bytes its autograd graph saves (parameters not counted). Tensors are
fake CPU tensors with the ops on their Triton path: nothing is allocated or computed. The second table is the saved-
for-backward memory of the super-resolution and the discriminator in one training step with R1
(:func:`sr_disc_saved_bytes`), which ``docs/performance.md`` records before and after the change.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import _TrafficCounter
from export3d.kernels import bias_act, downsample2d, setup_filter, upsample2d

IMPL = "triton"  # the ops' GPU path (fake kernels: nothing runs)
SLOPE, GAIN = 0.2, math.sqrt(2.0)


@dataclass(frozen=True)
class Alternative:
    name: str
    fn: Callable[..., torch.Tensor]  # fn(x, weight, bias, f) -> y
    chosen: bool  # what the model runs


@dataclass(frozen=True)
class Path:
    title: str
    x: tuple[int, ...]  # input [B, C, H, W]
    weight: tuple[int, ...]  # [Cout, Cin, k, k]
    alternatives: tuple[Alternative, ...]


# ----------------------------------------------------------------------------------------------- the alternatives
def _fir_folded(weight: torch.Tensor, f: torch.Tensor, k: int) -> torch.Tensor:
    """A conv weight with the [4, 4] FIR folded in, of size ``k`` (only its shape matters for the counts)."""
    return weight.new_empty(weight.shape[0], weight.shape[1], k, k)


def _sr_up_unfused(x, w, b, f):
    return F.conv2d(upsample2d(x, f, impl=IMPL), w, padding=1)


def _sr_up_fused(x, w, b, f):
    from export3d.model.superres import upsample_conv3x3  # here: the module-level imports run on older versions too

    return upsample_conv3x3(x, w, f, impl=IMPL)


def _torgb(y):  # the consumer of SR block 1's conv1 activation: toRGB, a 1x1 conv to 3 channels (it keeps y)
    return F.conv2d(y, y.new_empty(3, y.shape[1], 1, 1))


def _sr_act_unfused(x, w, b, f):
    return _torgb(F.leaky_relu(F.conv2d(x, w, b, padding=1), SLOPE))


def _sr_act_fused(x, w, b, f):
    return _torgb(bias_act(F.conv2d(x, w, padding=1), b, act="lrelu", alpha=SLOPE, gain=1.0, impl=IMPL))


def _d_act_unfused(x, w, b, f):  # conv0's activation feeds conv1's FIR downsampling (which keeps nothing)
    g = 1 / math.sqrt(w[0].numel())
    return downsample2d(F.leaky_relu(F.conv2d(x, w * g, b, padding=1), SLOPE) * GAIN, f, impl=IMPL)


def _d_act_fused(x, w, b, f):
    g = 1 / math.sqrt(w[0].numel())
    y = bias_act(F.conv2d(x, w, padding=1), b / g, act="lrelu", alpha=SLOPE, gain=GAIN * g, impl=IMPL)
    return downsample2d(y, f, impl=IMPL)


def _d_down_conv(x, w, b, f):
    return F.conv2d(downsample2d(x, f, impl=IMPL), w, padding=1)


def _d_down_folded(x, w, b, f):  # the 3x3 conv at H/2 after the FIR is an 8x8 stride-2 conv at H (w dilated by 2, * f)
    return F.conv2d(x, _fir_folded(w, f, 8), stride=2, padding=3)


def _d_skip_down_first(x, w, b, f):
    return F.conv2d(downsample2d(x, f, impl=IMPL), w)


def _d_skip_conv_first(x, w, b, f):
    return downsample2d(F.conv2d(x, w), f, impl=IMPL)


def _d_skip_folded(x, w, b, f):  # a 1x1 conv commutes with the FIR: one 4x4 stride-2 conv
    return F.conv2d(x, _fir_folded(w, f, 4), stride=2, padding=1)


def _residual_unfused(x, w, b, f):
    y = F.leaky_relu(F.conv2d(x, w, b, padding=1), SLOPE) * GAIN  # stands for conv1's output
    return (F.conv2d(x, w, padding=1) + y) * math.sqrt(0.5)


def _residual_fused(x, w, b, f):
    y = bias_act(F.conv2d(x, w, padding=1), b, act="lrelu", alpha=SLOPE, gain=GAIN * math.sqrt(0.5), impl=IMPL)
    return F.conv2d(x, w * math.sqrt(0.5), padding=1).add_(y)


# Paper preset: SR block 1 takes 128 x 128 x 128 (c0 = 128 at H/2) to 64 channels at 256; the discriminator's first
# block runs at 256 with 128 channels (channel_base 32768 / 256) and halves to 128 x 128 with 256 channels.
PATHS = (
    Path("SR block 1: FIR-upsample x2, then conv0 3x3 (128 -> 64 ch, 128^2 -> 256^2)", (1, 128, 128, 128),
         (64, 128, 3, 3), (Alternative("upsample2d, then conv2d at 256^2", _sr_up_unfused, False),
                           Alternative("conv_transpose2d at 128^2, then the FIR (upfirdn2d) + border ring",
                                       _sr_up_fused, True))),
    Path("SR block 1: conv1 3x3 + bias + leaky ReLU (64 ch at 256^2), then toRGB", (1, 64, 256, 256), (64, 64, 3, 3),
         (Alternative("conv2d with bias, leaky_relu", _sr_act_unfused, False),
          Alternative("conv2d, bias_act", _sr_act_fused, True))),
    Path("D block 0: conv0 3x3 + bias + lrelu * sqrt(2), weight gain (128 ch at 256^2), then downsample2d",
         (1, 128, 256, 256), (128, 128, 3, 3),
         (Alternative("conv2d(w * g, bias), leaky_relu, * sqrt(2)", _d_act_unfused, False),
          Alternative("conv2d(w), bias_act (bias / g, gain sqrt(2) g)", _d_act_fused, True))),
    Path("D block 0: FIR-downsample, then conv1 3x3 (128 -> 256 ch, 256^2 -> 128^2)", (1, 128, 256, 256),
         (256, 128, 3, 3), (Alternative("downsample2d, then conv2d at 128^2", _d_down_conv, True),
                            Alternative("FIR folded into an 8x8 stride-2 conv at 256^2", _d_down_folded, False))),
    Path("D block 0: skip, FIR-downsample + 1x1 conv (128 -> 256 ch)", (1, 128, 256, 256), (256, 128, 1, 1),
         (Alternative("downsample2d, then 1x1 conv at 128^2", _d_skip_down_first, True),
          Alternative("1x1 conv at 256^2, then downsample2d", _d_skip_conv_first, False),
          Alternative("FIR folded into a 4x4 stride-2 conv at 256^2", _d_skip_folded, False))),
    Path("D block 1: residual sum * sqrt(1/2) (256 ch at 128^2; conv1 and skip as stand-ins)", (1, 256, 128, 128),
         (256, 256, 3, 3), (Alternative("(skip + y) * sqrt(1/2)", _residual_unfused, False),
                            Alternative("sqrt(1/2) folded into both gains, skip.add_(y)", _residual_fused, True))),
)


# ----------------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Counts:
    forward: int  # bytes
    backward: int
    macs: int  # forward multiply-adds
    saved: int  # bytes saved for backward, weights not counted


def _fake_cpu():
    """Fake CPU tensors; ``impl="triton"`` passes the dispatch's interpreter check (fake kernels: nothing launches)."""
    return mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"})


def count(path: Path, alt: Alternative) -> Counts:
    with _fake_cpu(), FakeTensorMode():
        x = torch.randn(path.x, requires_grad=True)
        w = torch.randn(path.weight, requires_grad=True)
        b = torch.randn(path.weight[0], requires_grad=True)
        f = setup_filter([1, 3, 3, 1])
        params = {w.untyped_storage()._cdata, b.untyped_storage()._cdata}
        storages: dict[int, int] = {}
        alive = []

        def pack(t):
            if t.untyped_storage()._cdata not in params:
                storages[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
                alive.append(t.untyped_storage())
            return t

        forward, flops = _TrafficCounter(), FlopCounterMode(display=False)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), forward, flops:
            y = alt.fn(x, w, b, f)
        backward = _TrafficCounter()
        with backward:
            y.backward(torch.empty_like(y))
    return Counts(forward.bytes, backward.bytes, flops.get_total_flops() // 2, sum(storages.values()))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def fusion_table() -> str:
    """Markdown: every path's alternatives, the chosen one in bold."""
    lines = ["| path (paper preset, batch 1, fp32) | alternative | forward MiB | backward MiB | GMAC | saved MiB |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for path in PATHS:
        for alt in path.alternatives:
            c = count(path, alt)
            name = f"**{alt.name}** (ours)" if alt.chosen else alt.name
            lines.append(f"| {path.title} | {name} | {_mib(c.forward)} | {_mib(c.backward)} | {c.macs / 1e9:.2f} | "
                         f"{_mib(c.saved)} |")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- SR + D in a step
def sr_disc_saved_bytes(batch: int, size: str = "paper") -> dict[str, int]:
    """Bytes saved for backward by the super-resolution and the discriminator in one training step with R1, on fake
    CPU tensors with the model's ops on their Triton path, per part: the generator step's SR forward and D forward on
    the fake image (D frozen), the discriminator step's D on real and on fake images, and R1's double backward
    (``create_graph=True``) through D. A storage counts once, where first saved; parameters and buffers do not count.
    Only ``SuperResolution(cfg)`` and ``Discriminator(cfg)`` are used, so the same function measures older versions."""
    from export3d.model.config import preset
    from export3d.model.discriminator import Discriminator
    from export3d.model.superres import SuperResolution

    cfg = preset(size, kernel_impl="triton")
    parts: dict[str, int] = {}
    seen: set[int] = set()
    where = [""]
    with _fake_cpu(), FakeTensorMode():
        sr, disc = SuperResolution(cfg).train(), Discriminator(cfg).train()
        if hasattr(sr, "kernel_impl"):
            sr.kernel_impl = "triton"
        seen |= {t.untyped_storage()._cdata for m in (sr, disc) for t in [*m.parameters(), *m.buffers()]}

        alive = []  # every counted storage stays alive: a freed one's address (its key) may come back

        def pack(t):
            key = t.untyped_storage()._cdata
            if key not in seen:
                seen.add(key)
                alive.append(t.untyped_storage())
                parts[where[0]] = parts.get(where[0], 0) + t.untyped_storage().nbytes()
            return t

        r, H = cfg.render_resolution, cfg.image_size
        raw = torch.randn(batch, 3, r, r, requires_grad=True)  # the renderer's outputs
        feats = torch.randn(batch, cfg.render.feature_channels, r, r, requires_grad=True)
        camera = torch.randn(batch, 25)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            where[0] = "generator step: SR"
            image = sr(raw, feats)
            disc.requires_grad_(False)
            where[0] = "generator step: D(fake)"
            disc(image, raw, camera)
            disc.requires_grad_(True)
            real = torch.randn(batch, 3, H, H, requires_grad=True)
            real_raw = torch.randn(batch, 3, r, r, requires_grad=True)
            where[0] = "discriminator step: D(real)"
            real_logits = disc(real, real_raw, camera)
            where[0] = "discriminator step: D(fake)"
            disc(image.detach(), raw.detach(), camera)
            where[0] = "discriminator step: R1 double backward"
            grads = torch.autograd.grad(real_logits.sum(), [real, real_raw], create_graph=True)
            sum(g.square().flatten(1).sum(1) for g in grads).mean()
    return parts


def sr_disc_traffic(size: str = "paper") -> dict[str, int]:
    """Bytes the super-resolution and the discriminator move in one training step with R1 at batch 1 (every op reads
    its inputs and writes its outputs once), per pass: SR forward and backward, D forward (three calls: fake in the
    generator step, real and fake in the discriminator step), R1's gradient (``create_graph=True``) and D's backward
    (of the loss with R1). Fake CPU tensors, the ops on their Triton path; only ``SuperResolution(cfg)`` and
    ``Discriminator(cfg)`` are used, so the same function measures older versions."""
    from export3d.model.config import preset
    from export3d.model.discriminator import Discriminator
    from export3d.model.superres import SuperResolution

    cfg = preset(size, kernel_impl="triton")
    out: dict[str, int] = {}

    def counted(name: str, fn: Callable[[], object]) -> object:
        counter = _TrafficCounter()
        with counter:
            result = fn()
        out[name] = out.get(name, 0) + counter.bytes
        return result

    with _fake_cpu(), FakeTensorMode():
        sr, disc = SuperResolution(cfg).train(), Discriminator(cfg).train()
        if hasattr(sr, "kernel_impl"):
            sr.kernel_impl = "triton"
        r, H = cfg.render_resolution, cfg.image_size
        raw = torch.randn(1, 3, r, r, requires_grad=True)
        feats = torch.randn(1, cfg.render.feature_channels, r, r, requires_grad=True)
        camera = torch.randn(1, 25)
        image = counted("SR forward", lambda: sr(raw, feats))
        disc.requires_grad_(False)
        fake_logits = counted("D forward (3 calls)", lambda: disc(image, raw, camera))
        counted("SR backward + D backward (generator step)", lambda: fake_logits.sum().backward())
        disc.requires_grad_(True)
        real = torch.randn(1, 3, H, H, requires_grad=True)
        real_raw = torch.randn(1, 3, r, r, requires_grad=True)
        real_logits = counted("D forward (3 calls)", lambda: disc(real, real_raw, camera))
        fake_logits = counted("D forward (3 calls)", lambda: disc(image.detach(), raw.detach(), camera))
        grads = counted("R1 gradient (create_graph)",
                        lambda: torch.autograd.grad(real_logits.sum(), [real, real_raw], create_graph=True))
        loss = real_logits.sum() + fake_logits.sum() + sum(g.square().sum() for g in grads)
        counted("D backward (discriminator step, with R1)", lambda: loss.backward())
    return out


def traffic_table() -> str:
    lines = ["| pass (paper preset, batch 1) | MiB |", "|---|---|"]
    measured = sr_disc_traffic()
    lines += [f"| {name} | {_mib(n)} |" for name, n in measured.items()]
    lines.append(f"| **total** | **{_mib(sum(measured.values()))}** |")
    return "\n".join(lines)


def saved_table(batches: tuple[int, ...] = (1, 8)) -> str:
    """Markdown: :func:`sr_disc_saved_bytes` per image, for each batch."""
    measured = {b: sr_disc_saved_bytes(b) for b in batches}
    lines = ["| part | " + " | ".join(f"batch {b}, per image" for b in batches) + " |",
             "|---" * (1 + len(batches)) + "|"]  # fmt: skip
    for part in measured[batches[0]]:
        lines.append(f"| {part} | " + " | ".join(f"{_mib(measured[b].get(part, 0) // b)} MiB" for b in batches) + " |")
    lines.append("| **total** | " + " | ".join(f"**{_mib(sum(measured[b].values()) // b)} MiB**" for b in batches)
                 + " |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(fusion_table())
    print()
    print(saved_table())
    print()
    print(traffic_table())
