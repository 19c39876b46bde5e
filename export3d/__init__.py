"""Export3D: 3D-aware, expression-controllable portrait animation with conditional tri-planes (ECCV 2024).

``from export3d import Export3D`` gives the model; importing the package does not import lpips or
xformers (xformers is imported lazily by :mod:`export3d.attention`, on CUDA only).
"""

from export3d.config import PRESETS, ModelConfig, preset
from export3d.model import Export3D, Export3DOutput

__all__ = ["PRESETS", "Export3D", "Export3DOutput", "ModelConfig", "preset"]
