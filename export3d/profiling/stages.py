"""Stage timer (exclusive times of nested stages) and the hooks that attribute time to model stages."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

TRAIN_STAGES = (
    "expression encoder",
    "generator: stem, high-res branch, patch merges",
    "generator: ViT blocks",
    "generator: attention",
    "generator: pixel shuffle + low-pass",
    "generator: conv blocks + head",
    "generator: other (norms, reshapes, EMA)",
    "rendering: rays, depth sampling, sort",
    "tri-plane sampling",
    "decoder MLP",
    "compositing",
    "fused rendering (render_rays)",
    "super-resolution",
    "discriminator",
    "losses",
    "backward",
    "optimiser",
    "other",
)
INFERENCE_STAGES = tuple(s for s in TRAIN_STAGES if s not in ("discriminator", "losses", "backward", "optimiser"))


# ----------------------------------------------------------------------------------------------- stage timer
@dataclass
class _Frame:
    name: str
    start: float
    children: float = 0.0  # inclusive time of nested stages
    record: object | None = None  # the open record_function range when tracing


@dataclass
class StageStats:
    time_s: float = 0.0
    calls: int = 0
    peak_memory_bytes: int = 0  # CUDA only
    saved_bytes: int = 0  # bytes saved for backward while this stage was on top of the stack


@dataclass
class StageTimer:
    """Exclusive wall time per named stage from nested ``push`` / ``pop`` calls (see the module docstring)."""

    cuda: bool
    trace: bool = False
    stats: dict[str, StageStats] = field(default_factory=dict)
    stack: list[_Frame] = field(default_factory=list)
    _peaks: list[int] = field(default_factory=list)  # running CUDA peak of each open frame
    _storages: set[int] = field(default_factory=set)
    events: list[tuple[str, float]] = field(default_factory=list)  # (label, perf_counter) markers

    def _fold_peak(self) -> None:
        if self.cuda and self._peaks:
            peak = torch.cuda.max_memory_allocated()
            self._peaks = [max(p, peak) for p in self._peaks]

    def push(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self._fold_peak()
            torch.cuda.reset_peak_memory_stats()
            self._peaks.append(torch.cuda.memory_allocated())
        record = None
        if self.trace:
            record = torch.profiler.record_function(name)
            record.__enter__()
        self.stack.append(_Frame(name, time.perf_counter(), record=record))

    def pop(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        frame = self.stack.pop()
        if frame.name != name:
            raise RuntimeError(f"export3d.profile: stage {name!r} ended while {frame.name!r} was open")
        if frame.record is not None:
            frame.record.__exit__(None, None, None)
        elapsed = now - frame.start
        s = self.stats.setdefault(name, StageStats())
        s.time_s += elapsed - frame.children
        s.calls += 1
        if self.cuda:
            self._fold_peak()
            s.peak_memory_bytes = max(s.peak_memory_bytes, self._peaks.pop())
        if self.stack:
            self.stack[-1].children += elapsed

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.push(name)
        try:
            yield
        finally:
            self.pop(name)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """saved_tensors_hooks pack hook: charge the saved storage (once) to the stage on top of the stack."""
        storage = t.untyped_storage()
        key = storage.data_ptr() if storage.data_ptr() else id(storage)
        if key not in self._storages:
            self._storages.add(key)
            name = self.stack[-1].name if self.stack else "other"
            self.stats.setdefault(name, StageStats()).saved_bytes += storage.nbytes()
        return t

    def reset(self) -> None:
        self.stats, self._storages, self.events = {}, set(), []


# ----------------------------------------------------------------------------------------------- instrumentation
def _module_stages(model: nn.Module, disc: nn.Module | None) -> list[tuple[nn.Module, str, bool]]:
    """``(module, stage, compile_it)`` for every hooked module; compile_it marks the leaves compiled by --compile."""
    g, r = model.generator, model.renderer
    units: list[tuple[nn.Module, str, bool]] = [
        (model.lebs, "expression encoder", True),
        (g, "generator: other (norms, reshapes, EMA)", False),
        (r, "rendering: rays, depth sampling, sort", False),
        (r.decoder, "decoder MLP", True),
        (model.superres, "super-resolution", True),
    ]
    for name in ("hr_branch", "stem", "patch_merge", "high_merge"):
        units.append((getattr(g, name), "generator: stem, high-res branch, patch merges", True))
    for block in [*g.low_blocks, *g.high_blocks]:
        units.append((block, "generator: ViT blocks", True))
    for name in ("up1", "up2", "high_in", "out_block", "head"):
        units.append((getattr(g, name), "generator: conv blocks + head", True))
    if disc is not None:
        units.append((disc, "discriminator", True))
    return units


def _function_stages(compiled: bool) -> list[tuple[object, str, str]]:
    """``(namespace module, global name, stage)`` of the functions the model calls through module globals."""
    import export3d.model.blocks
    import export3d.model.generator
    import export3d.model.render.renderer

    units = [
        (export3d.model.generator, "pixel_shuffle_lowpass", "generator: pixel shuffle + low-pass"),
        (export3d.model.render.renderer, "triplane_sample", "tri-plane sampling"),
        (export3d.model.render.renderer, "composite_rays", "compositing"),
        # the Triton path (kernel_impl "triton", or "auto" on CUDA): sampling, decoder and compositing in one op
        (export3d.model.render.renderer, "render_rays_weights", "fused rendering (render_rays)"),
        (export3d.model.render.renderer, "render_rays", "fused rendering (render_rays)"),
    ]
    if not compiled:  # inside the compiled ViT blocks a timing wrapper would only add graph breaks
        units.append((export3d.model.blocks, "attention", "generator: attention"))
    return units


@contextlib.contextmanager
def instrument(model: nn.Module, disc: nn.Module | None, timer: StageTimer, compile_units: bool) -> Iterator[None]:
    """Install the stage hooks and wrappers (and, with ``compile_units``, the per-unit compiled forwards)."""
    handles, patched, compiled_forwards = [], [], []
    # One static graph per shape and mode: units share code objects (every ConvBlock.forward, both kinds of
    # ViT block), so the default limit of 8 graphs per code object would silently fall back to eager.
    limits = torch._dynamo.config.patch(recompile_limit=64) if compile_units else contextlib.nullcontext()
    try:
        limits.__enter__()
        for module, stage, leaf in _module_stages(model, disc):
            handles.append(module.register_forward_pre_hook(lambda m, a, s=stage: timer.push(s)))
            handles.append(module.register_forward_hook(lambda m, a, o, s=stage: timer.pop(s)))
            if compile_units and leaf:
                module.forward = torch.compile(module.forward, dynamic=False)  # instance attribute; removed on exit
                compiled_forwards.append(module)
        for namespace, name, stage in _function_stages(compile_units):
            original = getattr(namespace, name)
            inner = torch.compile(original, dynamic=False) if compile_units else original

            def wrapper(*args, _inner=inner, _stage=stage, **kwargs):
                with timer.stage(_stage):
                    return _inner(*args, **kwargs)

            setattr(namespace, name, wrapper)
            patched.append((namespace, name, original))
        yield
    finally:
        for h in handles:
            h.remove()
        for namespace, name, original in patched:
            setattr(namespace, name, original)
        for module in compiled_forwards:
            del module.forward
        limits.__exit__(None, None, None)
