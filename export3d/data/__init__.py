"""Datasets: the built-in synthetic talking heads and the on-disk clip format for real data.

Public names are imported lazily (PEP 562), so ``python -m export3d.data.synthetic`` does not import
its own module twice and ``import export3d.data`` stays cheap.
"""

from importlib import import_module

_EXPORTS = {
    "export3d.data.clips": ("ClipFolder", "ClipFormatError", "export_synthetic", "write_clip"),
    "export3d.data.datasets": ("ContrastiveGroups", "CrossIdentityTriples", "ReconstructionPairs"),
    "export3d.data.heads": ("APPEARANCE_NAMES", "EXPRESSION_NAMES", "N_APPEARANCE", "N_EXPRESSION"),
    "export3d.data.source": ("ClipInfo", "ClipSource"),
    "export3d.data.synthetic": ("TEST_IDENTITY_OFFSET", "FrameKey", "SyntheticClips", "SyntheticConfig",
                                "SyntheticHeads"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'export3d.data' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
