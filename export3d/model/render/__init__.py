"""EG3D-style volume rendering of tri-planes: depth sampling, decoding, compositing (cameras: export3d.cameras)."""

from export3d.model.render.renderer import RenderOutput, TriplaneDecoder, VolumeRenderer
from export3d.model.render.sampling import importance_depths, sample_pdf, stratified_depths

__all__ = [
    "RenderOutput",
    "TriplaneDecoder",
    "VolumeRenderer",
    "importance_depths",
    "sample_pdf",
    "stratified_depths",
]
