"""Saved-for-backward memory of one training step, per module, on fake tensors: ``python -m export3d.profile --memory``.

The step is the training loop's own :func:`export3d.training.loop.train_generator_step` of the adversarial stage at
an R1 step with LPIPS: the generator step (model forward, reconstruction loss with LPIPS, ``0.01 * L_adv`` through the
frozen discriminator, backward, Adam), then the discriminator step (D on real and fake images, R1's double backward,
backward, Adam). It runs under ``FakeTensorMode``: no memory is allocated and nothing is computed, so the paper preset
costs seconds on a CPU, and any read of a tensor value on the host (``.item()``, ``bool(tensor)``) raises, which
proves the step has none (``tests/training/test_fake_step.py``).

Where the fake tensors live: on a machine with a GPU they are fake CUDA tensors, and the fused ops take their Triton
path as in training. Without one, PyTorch's autograd engine cannot run a backward on fake CUDA tensors (it asks the
CUDA driver for the device's streams, pytorch/pytorch#92627), so the tensors are fake CPU tensors and the model's
``kernel_impl`` is ``"triton"``: the same custom ops, fake kernels and autograd formulas as on a GPU (nothing is
launched). Attention runs through SDPA on either device: a GPU would use xformers' memory-efficient kernel, which
does not trace on fake tensors; both keep the same tensors for backward (q, k, v, the output and its log-sum-exp).
The report names the backend that ran.

Every storage saved for backward is counted once, for the innermost tracked module whose forward saved it first
(a tensor that two modules keep, such as a bias_act output that the next conv also saves, counts once). Parameters
and buffers are not counted: they are memory the model holds anyway. Saves made while the autograd engine runs count
under "discriminator: R1 double backward" in the discriminator step (R1's ``create_graph=True`` backward through the
discriminator, kept until the step's backward) and under "inside backward (transient)" in the generator step (the
super-resolution's written-out backward recomputes its border terms with autograd and frees them at once).
The two phases are separate columns: the generator step's graph is freed by its backward before the discriminator
step builds its own, so the step's peak of saved memory is the larger column, not their sum.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

PHASES = ("generator step", "discriminator step")
R1_ROW = "discriminator: R1 double backward"
TRANSIENT_ROW = "inside backward (transient)"
OTHER_ROW = "other (losses, resizing, glue)"


# ----------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class MemoryOptions:
    preset: str = "paper"
    batch: int = 1
    depth: int = 2  # module rows: the model's and the discriminator's children (1) and grandchildren (2)


@dataclass
class MemoryReport:
    preset: str
    batch: int
    device: str  # the fake tensors' device
    kernel_impl: str
    attention_backend: str | None
    rows: dict[str, dict[str, int]]  # module -> phase -> bytes saved (insertion order: model order)
    ops: Counter = field(default_factory=Counter)  # export3d custom ops called (forward and backward), by name
    logged: tuple[str, ...] = ()  # the keys of the step's logged values
    optimiser_steps: tuple[str, ...] = ()  # the optimisers that stepped, in order

    def total(self, phase: str) -> int:
        return sum(r.get(phase, 0) for r in self.rows.values())

    def module_total(self, prefix: str) -> int:
        """Bytes (both phases) of every row named ``prefix`` or below it (``"model.superres"``, ``"discriminator"``,
        whose R1 row counts with it)."""
        return sum(n for name, row in self.rows.items() for n in row.values()
                   if name == prefix or name.startswith(prefix + ".") or (prefix == "discriminator" and name == R1_ROW))

    def superres_and_discriminator(self) -> int:
        return self.module_total("model.superres") + self.module_total("discriminator")


# ----------------------------------------------------------------------------------------------- accounting
class SavedMemory:
    """saved_tensors_hooks pack hook plus forward hooks: bytes saved for backward per tracked module and phase."""

    def __init__(self, roots: dict[str, nn.Module], depth: int):
        self.phase = PHASES[0]
        self.rows: dict[str, dict[str, int]] = {}
        self._stack: list[str] = []
        self._seen: set[int] = set()
        self._alive: list = []
        self._handles = []
        self._skip = {_key(t) for m in roots.values() for t in [*m.parameters(), *m.buffers()]}
        hooked: set[int] = set()
        for root_name, root in roots.items():
            for name, module in _tracked(root, root_name, depth):
                if id(module) in hooked:  # one row per module, under its first name (lpips' lin0 is also lins.0)
                    continue
                hooked.add(id(module))
                self.rows.setdefault(name, {})
                self._handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self._stack.append(n)))
                self._handles.append(module.register_forward_hook(lambda m, a, o, n=name: self._pop(n)))
        for row in (R1_ROW, TRANSIENT_ROW, OTHER_ROW):
            self.rows.setdefault(row, {})

    def _pop(self, name: str) -> None:
        if self._stack and self._stack[-1] == name:
            self._stack.pop()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _key(t)
        if key not in self._seen and key not in self._skip:
            self._seen.add(key)
            self._alive.append(t.untyped_storage())  # a freed storage's address may come back: keep each one alive
            if torch._C._current_autograd_node() is None:
                row = self._stack[-1] if self._stack else OTHER_ROW
            else:  # saved while the engine runs: R1's create_graph, or a backward's own transient recomputation
                row = R1_ROW if self.phase == PHASES[1] else TRANSIENT_ROW
            cell = self.rows[row]
            cell[self.phase] = cell.get(self.phase, 0) + t.untyped_storage().nbytes()
        return t

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
                yield
        finally:
            for h in self._handles:
                h.remove()


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _tracked(root: nn.Module, prefix: str, depth: int) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of ``root`` and its descendants down to ``depth`` levels; the items of a ModuleList (which
    runs no forward of its own) stand at the list's level."""
    yield prefix, root
    if depth == 0:
        return
    for name, child in root.named_children():
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            for item_name, item in child.named_children():
                yield from _tracked(item, f"{prefix}.{name}.{item_name}", depth - 1)
        else:
            yield from _tracked(child, f"{prefix}.{name}", depth - 1)


class _OpCounter(TorchDispatchMode):
    """Counts the export3d custom ops dispatched (under the fake mode: their fake kernels)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name.startswith("export3d::"):
            self.ops[name.removeprefix("export3d::").split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


# ----------------------------------------------------------------------------------------------- the step
def fake_device() -> str:
    """Where the fake step runs: CUDA with a GPU, else the CPU with the ops forced onto their Triton path."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _fake_module(module: nn.Module, mode: FakeTensorMode, device: str) -> nn.Module:
    """``module`` with its parameters and buffers replaced by fake tensors on ``device`` (for modules built outside
    the fake mode, such as LPIPS, whose linear heads load from the lpips package's files)."""
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                fake = mode.from_tensor(p.detach())
                with mode:
                    m._parameters[name] = nn.Parameter(fake.to(device), p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                fake = mode.from_tensor(b)
                with mode:
                    m._buffers[name] = fake.to(device)
    return module


@contextlib.contextmanager
def _triton_dispatch_on_cpu(device: str) -> Iterator[None]:
    """On fake CPU tensors ``kernel_impl="triton"`` must pass the dispatch's check for Triton's interpreter; nothing
    is launched (fake kernels run), so the variable only answers that check."""
    if device == "cpu":
        with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"}):
            yield
    else:
        yield


def training_step_memory(opts: MemoryOptions = MemoryOptions()) -> MemoryReport:
    """Run one adversarial training step (with R1 and LPIPS) of ``opts.preset`` under ``FakeTensorMode`` and return
    the bytes saved for backward per module (see the module docstring)."""
    from export3d.cameras import orbit_camera_deg
    from export3d.evaluation.metrics import build_lpips
    from export3d.model import Export3D, attention
    from export3d.model.config import preset
    from export3d.model.discriminator import Discriminator
    from export3d.training.config import TRAIN_PRESETS
    from export3d.training.loop import train_generator_step

    device = fake_device()
    if device == "cuda":
        torch.empty(1, device="cuda")  # the autograd engine needs a CUDA context before a fake CUDA backward
    kernel_impl = "triton" if device == "cpu" else "auto"
    cfg = preset(opts.preset, impl="fast", kernel_impl=kernel_impl)
    train_cfg = dataclasses.replace(TRAIN_PRESETS[opts.preset], lpips_every=1)  # LPIPS in this step
    lpips_model, _ = build_lpips()  # the random VGG (its values do not matter), built on the CPU: made fake below
    mode = FakeTensorMode()
    with _triton_dispatch_on_cpu(device), torch.random.fork_rng(devices=[]):
        with mode, torch.device(device):
            torch.manual_seed(0)
            model = Export3D(cfg).freeze_expression_encoder().train()
            for m in model.modules():  # SDPA: it traces on fake tensors of either device, xformers' kernels do not
                if hasattr(m, "attention_backend"):
                    m.attention_backend = "sdpa"
            disc = Discriminator(cfg).train()
            B, H = opts.batch, cfg.image_size
            batch = {
                "source": torch.rand(B, 3, H, H) * 2 - 1,  # [B, 3, H, W]
                "driving": torch.rand(B, 3, H, H) * 2 - 1,
                "beta": torch.randn(B, cfg.expression_dim),  # [B, E]
                "camera": orbit_camera_deg(0.0, 5.0).expand(B, 25).contiguous(),  # [B, 25]
            }
            opt_g = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=train_cfg.lr,
                                     betas=train_cfg.betas)  # fmt: skip
            opt_d = torch.optim.Adam(disc.parameters(), lr=train_cfg.d_lr, betas=train_cfg.betas)
        _fake_module(lpips_model, mode, device).requires_grad_(False)
        roots = {"model": model, "discriminator": disc, "lpips": lpips_model}
        saved = SavedMemory(roots, opts.depth)

        stepped: list[str] = []

        def next_phase(*_):
            saved.phase = PHASES[1]
            stepped.append("generator")

        opt_g.register_step_post_hook(next_phase)
        opt_d.register_step_post_hook(lambda *_: stepped.append("discriminator"))
        counter = _OpCounter()
        with mode, saved.active(), counter:
            logs = train_generator_step(model, disc, disc, opt_g, opt_d, batch, lpips_model, train_cfg, 0,
                                        contextlib.nullcontext())  # stage step 0: an R1 step  # fmt: skip
    rows = {name: row for name, row in saved.rows.items() if row}
    return MemoryReport(opts.preset, opts.batch, device, kernel_impl, attention.last_backend_used(), rows,
                        counter.ops, tuple(logs), tuple(stepped))  # fmt: skip


# ----------------------------------------------------------------------------------------------- output
def format_memory(report: MemoryReport) -> str:
    """The per-module table (MiB for the whole batch, and per image)."""
    B = report.batch
    head = [f"export3d.profile --memory: preset {report.preset}, batch {B}, fake {report.device} tensors, "
            f"kernel_impl {report.kernel_impl!r}, attention backend {report.attention_backend}",
            "saved for backward (MiB) by one adversarial training step with R1 and LPIPS; parameters not counted"]
    width = max(len(n) for n in [*report.rows, "total"]) + 2
    lines = [*head, "", f"  {'module':<{width}} {'generator step':>15} {'discriminator step':>19} {'per image':>10}"]

    def mib(n: int) -> str:
        return "-" if n == 0 else f"{n / 2**20:,.1f}"

    for name, row in report.rows.items():
        g, d = row.get(PHASES[0], 0), row.get(PHASES[1], 0)
        lines.append(f"  {name:<{width}} {mib(g):>15} {mib(d):>19} {mib((g + d) // B):>10}")
    g, d = report.total(PHASES[0]), report.total(PHASES[1])
    lines.append(f"  {'total':<{width}} {mib(g):>15} {mib(d):>19} {mib((g + d) // B):>10}")
    lines += ["", f"super-resolution + discriminator: {report.superres_and_discriminator() / B / 2**20:,.1f} MiB per "
              "image (both phases)"]  # fmt: skip
    return "\n".join(lines)
