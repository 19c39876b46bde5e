"""Export3D: 3D-aware, expression-controllable portrait animation with conditional tri-planes (ECCV 2024).

``from export3d import Export3D`` gives the model; importing the package does not import lpips or
xformers (xformers is imported lazily by :mod:`export3d.model.attention`, on CUDA only).

Layers, each importing only those before it: ``export3d.kernels`` (fused ops) <- ``export3d.model``
<- ``export3d.data`` <- ``export3d.evaluation`` <- ``export3d.training`` <- the command lines
``export3d.train`` / ``evaluate`` / ``animate`` / ``profile``; ``export3d.utils`` is plumbing for all.
Modules that moved keep their old import path (:mod:`export3d._moved`).
"""

from export3d import _moved
from export3d.model import PRESETS, Export3D, Export3DOutput, ModelConfig, preset

_moved.install()

__all__ = ["PRESETS", "Export3D", "Export3DOutput", "ModelConfig", "preset"]
