"""EG3D-style volume rendering of tri-planes: cameras, rays, sampling, decoding, compositing."""

from export3d.model.render.cameras import (
    FOCAL,
    PIVOT,
    RADIUS,
    camera_rays,
    fov_degrees,
    look_at_camera,
    pixel_centres,
    project_points,
    split_camera,
)
from export3d.model.render.renderer import RenderOutput, TriplaneDecoder, VolumeRenderer
from export3d.model.render.sampling import importance_depths, sample_pdf, stratified_depths

__all__ = [
    "FOCAL",
    "PIVOT",
    "RADIUS",
    "RenderOutput",
    "TriplaneDecoder",
    "VolumeRenderer",
    "camera_rays",
    "fov_degrees",
    "importance_depths",
    "look_at_camera",
    "pixel_centres",
    "project_points",
    "sample_pdf",
    "split_camera",
    "stratified_depths",
]
