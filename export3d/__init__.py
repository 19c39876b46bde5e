"""Export3D: 3D-aware, expression-controllable portrait animation with conditional tri-planes (ECCV 2024).

``from export3d import Export3D`` gives the model; importing the package does not import lpips or
xformers (xformers is imported lazily by :mod:`export3d.model.attention`, on CUDA only).

Layers, each importing only those before it (docs/design.md, "Layers"): ``export3d.kernels`` (fused ops),
``export3d.cameras`` (EG3D's camera convention) and ``export3d.utils`` (plumbing) <- ``export3d.model`` and
``export3d.data`` <- ``export3d.evaluation`` <- ``export3d.training`` <- ``export3d.profiling`` <- the command
lines ``export3d.train`` / ``evaluate`` / ``animate`` / ``ablation`` / ``profile`` / ``gpucheck``.
"""

from export3d.model import PRESETS, Export3D, Export3DOutput, ModelConfig, preset

__all__ = ["PRESETS", "Export3D", "Export3DOutput", "ModelConfig", "preset"]
