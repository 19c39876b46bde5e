"""Export3D: source image + driving expression + driving camera -> portrait (paper Fig. 1).

``beta [B, 64]`` --LeBS--> ``beta' [B, d]``; ``G(S, beta')`` --> tri-plane ``[B, 3, C, H/2, W/2]``;
volume rendering from camera ``p [B, 25]`` --> feature image ``[B, Cf, H/4, W/4]`` (raw RGB = its
first 3 channels, mapped to [-1, 1]); super-resolution --> image ``[B, 3, H, W]``.

Implementation switch (``ModelConfig.impl``, changeable at run time with :meth:`Export3D.set_impl`):

- ``"reference"``: every fused op runs its plain-PyTorch reference and attention is the explicit
  softmax(QK^T)V in fp32. This is the oracle.
- ``"fast"``: fused ops with ``impl="auto"`` (Triton on CUDA, their references on CPU) and attention
  through xformers on CUDA when it imports, ``scaled_dot_product_attention`` otherwise.
- ``kernel_impl`` (``"auto" | "triton" | "reference"``) overrides the fused ops' impl for either mode;
  tests use ``kernel_impl="triton"`` to run the Triton kernels on CPU under ``TRITON_INTERPRET=1``.
- ``compile=True`` runs the model body (after the input checks) through ``torch.compile``.

Inputs: shapes and dtypes are always checked; values (finite, the source in [-1, 1], non-degenerate cameras) only
with ``validate=True``, because reading them is a device-to-host synchronisation (and impossible under
``FakeTensorMode``). Training never validates inside its step: its data loaders check what they load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from export3d.model.clebs import LeBS
from export3d.model.config import IMPLS, KERNEL_IMPLS, ModelConfig, preset
from export3d.model.generator import SourceFeatures, TriplaneGenerator
from export3d.model.layers import EAdaLN
from export3d.model.render import VolumeRenderer
from export3d.model.superres import SuperResolution


# ----------------------------------------------------------------------------------------------- helpers
def resolve_impl(impl: str, kernel_impl: str | None) -> tuple[str, str]:
    """``(impl, kernel_impl)`` -> ``(fused-op impl, attention backend)``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if kernel_impl is not None and kernel_impl not in KERNEL_IMPLS:
        raise ValueError(f"kernel_impl must be None or one of {KERNEL_IMPLS}, got {kernel_impl!r}")
    default_kernels, attention_backend = ("reference", "math") if impl == "reference" else ("auto", "auto")
    return kernel_impl or default_kernels, attention_backend


def parameter_counts(module: nn.Module, depth: int = 1) -> dict[str, int]:
    """Parameter counts of ``module`` ("total", "trainable") and of its children down to ``depth`` levels."""
    counts = {
        "total": sum(p.numel() for p in module.parameters()),
        "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }

    def walk(m: nn.Module, prefix: str, level: int) -> None:
        for name, child in m.named_children():
            key = f"{prefix}{name}"
            counts[key] = sum(p.numel() for p in child.parameters())
            if level < depth:
                walk(child, key + ".", level + 1)

    walk(module, "", 1)
    return counts


def format_parameter_counts(counts: dict[str, int]) -> str:
    """One ``name  count (M)`` line per entry."""
    width = max(len(k) for k in counts)
    return "\n".join(f"{k:<{width}}  {v:>12,d}  ({v / 1e6:8.3f} M)" for k, v in counts.items())


def _check_tensor(name: str, x: torch.Tensor, shape: tuple[int | None, ...], where: str, hint: str = "") -> None:
    """Type, dtype and shape of an input: metadata only, no read of its values (so no host synchronisation)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{where}: {name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape, strict=True)):
        want = "[" + ", ".join("B" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{where}: {name} must have shape {want}{hint}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: {name} is an empty batch (shape {tuple(x.shape)}); pass at least one item")


SOURCE_RANGE_SLACK = 0.01  # resampling may overshoot [-1, 1] a little; [0, 1] or [0, 255] images are far outside


# Value checks (``validate=True``): they read tensor values on the host, a device-to-host synchronisation on a GPU,
# so they are opt-in for direct API calls and never run inside the training step (the data loaders validate what
# they load: export3d/data/clips.py). Each check reduces on the device and reads one small result; those reads are
# the only host reads of the model.
def _check_finite(name: str, x: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(x).all()):  # host read: validate=True only
        raise ValueError(f"{where}: {name} contains NaN or Inf values")


def _check_camera(camera: torch.Tensor, where: str) -> None:
    """EG3D cameras: cam2world ``[:16]`` with an invertible rotation, intrinsics ``[16:]`` with fx, fy > 0."""
    cam = camera.detach().double()
    det = torch.linalg.det(cam[:, :16].reshape(-1, 4, 4)[:, :3, :3])  # [B]
    focal = cam[:, [16, 20]]  # fx, fy of the normalised intrinsics [B, 2]
    bad = ((det.abs() < 1e-6) | (focal <= 0).any(1)).tolist()  # host read: validate=True only
    if any(bad):
        i = bad.index(True)
        d, fx, fy = det[i].item(), focal[i, 0].item(), focal[i, 1].item()  # host read of the error message
        raise ValueError(f"{where}: camera row {i} is degenerate (rotation determinant {d:.3g}, fx {fx:.3g}, "
                         f"fy {fy:.3g}); expected an EG3D camera: a rigid cam2world [:16] and intrinsics [16:] with "
                         "fx, fy > 0")  # fmt: skip


def _check_source_range(source: torch.Tensor, where: str) -> None:
    lo, hi = source.detach().aminmax()
    lo, hi = torch.stack([lo, hi]).float().tolist()  # host read: validate=True only
    if lo < -1 - SOURCE_RANGE_SLACK or hi > 1 + SOURCE_RANGE_SLACK:
        raise ValueError(f"{where}: source values must be in [-1, 1], got [{lo:.4g}, {hi:.4g}] "
                         "(uint8 pixels p map to p / 127.5 - 1)")  # fmt: skip


class DirectExpression(nn.Module):
    """``expression_encoder="direct"`` (paper Table 3, "Direct 3DMM"): beta ``[B, 64]`` is the condition itself.

    Stands where LeBS stands, with its training hooks (``initialize_weights``, ``freeze``, ``frozen``),
    but it has no parameters and no basis: the EAdaLN modulation Linears are the only FC layers on beta.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def initialize_weights(self) -> None:
        pass

    def freeze(self) -> DirectExpression:
        self.frozen = True
        return self

    def forward(self, expression: torch.Tensor) -> torch.Tensor:
        """beta ``[B, 64]`` -> ``[B, 64]`` unchanged."""
        return expression


@dataclass
class Export3DOutput:
    image: torch.Tensor  # [B, 3, H, W] final image, image range [-1, 1]
    image_raw: torch.Tensor  # [B, 3, H/4, W/4] rendered RGB, [-1, 1]
    depth_raw: torch.Tensor  # [B, 1, H/4, W/4] expected ray depth
    triplane: torch.Tensor  # [B, 3, C, H/2, W/2] rendered tri-plane (T_raw + T_ema)
    features_raw: torch.Tensor  # [B, Cf, H/4, W/4] rendered feature image, ~[0, 1] (channels 0..2 = RGB)


# ----------------------------------------------------------------------------------------------- top module
class Export3D(nn.Module):
    """The Export3D generator (LeBS + tri-plane generator + renderer + super-resolution).

    The CLeBS image encoder and the discriminator are separate modules (:class:`export3d.model.clebs.CLeBS`,
    :class:`export3d.model.discriminator.Discriminator`).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        kernel_impl, attention_backend = resolve_impl(config.impl, config.kernel_impl)
        self.lebs = LeBS(config.lebs) if config.expression_encoder == "lebs" else DirectExpression()
        self.generator = TriplaneGenerator(config, kernel_impl, attention_backend)
        self.renderer = VolumeRenderer(config, kernel_impl)
        self.superres = SuperResolution(config, kernel_impl)
        self._compiled = None  # lazily built torch.compile of _body

    def __getstate__(self) -> dict:
        """Drop the compiled callable, so ``copy.deepcopy`` (e.g. a weight-EMA copy) and pickling work."""
        state = dict(self.__dict__)
        state["_compiled"] = None
        return state

    @classmethod
    def from_preset(cls, name: str, **overrides) -> Export3D:
        """``Export3D.from_preset("tiny", impl="reference", image_size=32, render={"n_fine": 8})``."""
        return cls(preset(name, **overrides))

    def initialize_weights(self) -> None:
        """Re-initialise every part (EAdaLN modulation zero) and reset the tri-plane EMA to zero."""
        self.lebs.initialize_weights()
        self.generator.initialize_weights()
        self.renderer.initialize_weights()
        self.superres.initialize_weights()

    def set_impl(self, impl: str, kernel_impl: str | None = None) -> Export3D:
        """Switch ``impl`` ("reference" | "fast") and the fused-op override for the whole model, keeping the weights."""
        kernels, attention_backend = resolve_impl(impl, kernel_impl)
        for m in self.modules():
            if isinstance(m, EAdaLN):
                m.impl = kernels
            if hasattr(m, "kernel_impl"):
                m.kernel_impl = kernels
            if hasattr(m, "attention_backend"):
                m.attention_backend = attention_backend
        self.config = dataclasses.replace(self.config, impl=impl, kernel_impl=kernel_impl)
        self._compiled = None
        return self

    def freeze_expression_encoder(self) -> Export3D:
        """Freeze f_e (after loading CLeBS weights into ``self.lebs``): it gets no gradient from then on."""
        self.lebs.freeze()
        return self

    def parameter_counts(self, depth: int = 1) -> dict[str, int]:
        return parameter_counts(self, depth)

    # public steps ------------------------------------------------------------------------------
    # Shapes and dtypes are always checked. ``validate=True`` also checks values (finite inputs, the source in
    # [-1, 1], non-degenerate cameras): host reads, for direct calls on untrusted inputs; training never asks for it.
    def encode_expression(self, expression: torch.Tensor, validate: bool = False) -> torch.Tensor:
        """beta ``[B, 64]`` -> beta' ``[B, d]`` (appearance-free expression code); beta itself for "direct"."""
        where = "Export3D.encode_expression"
        _check_tensor("expression", expression, (None, self.config.expression_dim), where)
        if validate:
            self._validate(where, expression=expression)
        return self.lebs(self._cast(expression))

    def encode_source(self, source: torch.Tensor, validate: bool = False) -> SourceFeatures:
        """The generator's source-only work (stem, high-resolution branch) for source ``[B, 3, H, W]`` in [-1, 1]:
        compute it once per source and pass it to :meth:`generate_triplane` with any number of codes."""
        where = "Export3D.encode_source"
        self._check_source(source, where)
        if validate:
            self._validate(where, source=source)
        return self.generator.encode_source(self._cast(source))

    def generate_triplane(self, source: torch.Tensor | SourceFeatures, code: torch.Tensor,
                          validate: bool = False) -> torch.Tensor:  # fmt: skip
        """source ``[B, 3, H, W]`` in [-1, 1] (or its :meth:`encode_source` features, of batch B or 1), code = beta'
        ``[B, d]`` -> tri-plane ``[B, 3, C, H/2, W/2]``."""
        where = "Export3D.generate_triplane"
        if isinstance(source, SourceFeatures):
            batch = None if source.batch == 1 else source.batch  # one source's features serve any number of codes
        else:
            self._check_source(source, where)
            batch = source.shape[0]
        hint = " (beta' from encode_expression, not the 64-d beta)" if self.config.expression_encoder == "lebs" \
            else " (the 64-d beta: expression_encoder='direct')"  # fmt: skip
        _check_tensor("code", code, (batch, self.config.code_dim), where, hint)
        if validate:
            self._validate(where, source=None if isinstance(source, SourceFeatures) else source, code=code)
        if not isinstance(source, SourceFeatures):
            source = self._cast(source)
        return self.generator(source, self._cast(code))

    def render(self, triplane: torch.Tensor, camera: torch.Tensor, validate: bool = False) -> Export3DOutput:
        """Render a tri-plane ``[B or 1, 3, C, H/2, W/2]`` from cameras ``[B, 25]``; a batch-1 tri-plane is
        rendered from every camera (generate once, render many views)."""
        where, g = "Export3D.render", self.config.generator
        P = self.config.plane_resolution
        _check_tensor("triplane", triplane, (None, 3, g.plane_channels, P, P), where)
        _check_tensor("camera", camera, (None, self.config.camera_dim), where)
        if triplane.shape[0] not in (1, camera.shape[0]):
            raise ValueError(
                f"{where}: triplane batch {triplane.shape[0]} must be 1 or camera's batch {camera.shape[0]}"
            )
        if validate:
            self._validate(where, triplane=triplane, camera=camera)
        return self._render(self._cast(triplane).expand(camera.shape[0], -1, -1, -1, -1), self._cast(camera))

    def forward(self, source: torch.Tensor, expression: torch.Tensor, camera: torch.Tensor,
                validate: bool = False) -> Export3DOutput:  # fmt: skip
        """source ``[B, 3, H, W]`` in [-1, 1], expression beta ``[B, 64]``, camera ``[B, 25]`` -> Export3DOutput."""
        where = "Export3D.forward"
        self._check_source(source, where)
        B = source.shape[0]
        _check_tensor("expression", expression, (B, self.config.expression_dim), where)
        _check_tensor("camera", camera, (B, self.config.camera_dim), where)
        if validate:
            self._validate(where, source=source, expression=expression, camera=camera)
        source, expression, camera = self._cast(source), self._cast(expression), self._cast(camera)
        if self.config.compile:
            if self._compiled is None:
                self._compiled = torch.compile(self._body)
            parts = self._compiled(source, expression, camera)
        else:
            parts = self._body(source, expression, camera)
        return Export3DOutput(*parts)

    # internals ---------------------------------------------------------------------------------
    def _check_source(self, source: torch.Tensor, where: str) -> None:
        H = self.config.image_size
        _check_tensor("source", source, (None, 3, H, H), where, f" (preset {self.config.name!r}: image_size={H})")

    @staticmethod
    def _validate(where: str, **inputs: torch.Tensor | None) -> None:
        """The value checks of ``validate=True`` (host reads), in argument order: finite values, then the source's
        range and the cameras."""
        for name, x in inputs.items():
            if x is not None:
                _check_finite(name, x, where)
        if inputs.get("source") is not None:
            _check_source_range(inputs["source"], where)
        if inputs.get("camera") is not None:
            _check_camera(inputs["camera"], where)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs of another floating dtype (float64, fp16, bf16) take the weights' dtype (under autocast, too)."""
        dtype = next(self.parameters()).dtype
        return x if x.dtype == dtype else x.to(dtype)

    def _render(self, triplane: torch.Tensor, camera: torch.Tensor) -> Export3DOutput:
        out = self.renderer(triplane, camera)
        image = self.superres(out.image_raw, out.features)  # [B, 3, H, W]
        return Export3DOutput(image, out.image_raw, out.depth, triplane, out.features)

    def _body(self, source: torch.Tensor, expression: torch.Tensor, camera: torch.Tensor) -> tuple[torch.Tensor, ...]:
        triplane = self.generator(source, self.lebs(expression))  # [B, 3, C, H/2, W/2]
        out = self._render(triplane, camera)
        return out.image, out.image_raw, out.depth_raw, out.triplane, out.features_raw

    def extra_repr(self) -> str:
        c = self.config
        return f"preset={c.name!r}, image_size={c.image_size}, impl={c.impl!r}, kernel_impl={c.kernel_impl!r}"
