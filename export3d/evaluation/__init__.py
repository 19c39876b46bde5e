"""Scoring a trained model: image metrics, held-out evaluation, identity-leak probe, loading checkpoints.

- :mod:`~export3d.evaluation.metrics`: PSNR, SSIM and LPIPS (also the perceptual training loss).
- :mod:`~export3d.evaluation.scoring`: same- and cross-identity evaluation against copy-the-source.
- :mod:`~export3d.evaluation.probe`: the linear identity probe of an expression code.
- :mod:`~export3d.evaluation.loading`: a model and its held-out data from a run folder or checkpoint.
- :mod:`~export3d.evaluation.animation`: driving signals and frame rendering behind ``export3d.animate``.

This package was the module ``export3d/evaluation.py``; its names (``evaluate``, ``format_table``, ...)
are still importable from here, lazily, so ``import export3d.evaluation`` stays cheap.
"""

from importlib import import_module

_SCORING = ("EvalBatch", "cross_identity_batches", "evaluate", "format_table", "same_identity_batches", "score")
__all__ = sorted(_SCORING)


def __getattr__(name: str):
    if name not in _SCORING:
        raise AttributeError(f"module 'export3d.evaluation' has no attribute {name!r}")
    value = getattr(import_module("export3d.evaluation.scoring"), name)
    globals()[name] = value
    return value
