"""The Export3D network and its parts: every ``nn.Module`` of the model, its configuration and the renderer.

- :mod:`~export3d.model.config`: frozen dataclasses and the ``paper`` / ``tiny`` presets.
- :mod:`~export3d.model.network`: the whole network :class:`Export3D` (source + expression + camera -> image).
- :mod:`~export3d.model.clebs`: LeBS expression encoder and its contrastive pre-training (CLeBS).
- :mod:`~export3d.model.generator`: the hybrid tri-plane generator; :mod:`~export3d.model.blocks`,
  :mod:`~export3d.model.layers` and :mod:`~export3d.model.attention` are its building blocks.
- :mod:`~export3d.model.render`: ray sampling, decoding and compositing of tri-planes (the camera convention
  itself is :mod:`export3d.cameras`).
- :mod:`~export3d.model.superres`: super-resolution; :mod:`~export3d.model.discriminator`: the GAN critic.

Imports only ``export3d.kernels`` and ``export3d.utils`` from the rest of the package.
"""

from export3d.model.config import PRESETS, ModelConfig, preset
from export3d.model.network import Export3D, Export3DOutput

__all__ = ["PRESETS", "Export3D", "Export3DOutput", "ModelConfig", "preset"]
