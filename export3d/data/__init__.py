"""Datasets: the built-in synthetic talking heads and the on-disk clip format for real data."""

from export3d.data.cameras import INTRINSICS, PIVOT, RADIUS, camera_rays, orbit_camera, orbit_camera_deg
from export3d.data.clips import ClipFolder, ClipFormatError, export_synthetic, write_clip
from export3d.data.datasets import ContrastiveGroups, CrossIdentityTriples, ReconstructionPairs
from export3d.data.heads import APPEARANCE_NAMES, EXPRESSION_NAMES, N_APPEARANCE, N_EXPRESSION
from export3d.data.source import ClipInfo, ClipSource, from_uint8, quantize, to_uint8
from export3d.data.synthetic import (
    TEST_IDENTITY_OFFSET,
    FrameKey,
    SyntheticClips,
    SyntheticConfig,
    SyntheticHeads,
)

__all__ = [
    "APPEARANCE_NAMES",
    "EXPRESSION_NAMES",
    "INTRINSICS",
    "N_APPEARANCE",
    "N_EXPRESSION",
    "PIVOT",
    "RADIUS",
    "TEST_IDENTITY_OFFSET",
    "ClipFolder",
    "ClipFormatError",
    "ClipInfo",
    "ClipSource",
    "ContrastiveGroups",
    "CrossIdentityTriples",
    "FrameKey",
    "ReconstructionPairs",
    "SyntheticClips",
    "SyntheticConfig",
    "SyntheticHeads",
    "camera_rays",
    "export_synthetic",
    "from_uint8",
    "orbit_camera",
    "orbit_camera_deg",
    "quantize",
    "to_uint8",
    "write_clip",
]
