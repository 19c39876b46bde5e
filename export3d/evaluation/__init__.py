"""Scoring a trained model: image metrics, held-out evaluation, identity-leak probe, loading checkpoints.

- :mod:`~export3d.evaluation.metrics`: PSNR, SSIM and LPIPS (also the perceptual training loss).
- :mod:`~export3d.evaluation.scoring`: same- and cross-identity evaluation against copy-the-source.
- :mod:`~export3d.evaluation.probe`: the linear identity probe of an expression code.
- :mod:`~export3d.evaluation.loading`: a model and its held-out data from a run folder or checkpoint.
- :mod:`~export3d.evaluation.blur_reference`: the driving frames blurred, scored like outputs (a ruler for the
  held-out numbers; ``python -m export3d.evaluation.blur_reference``).

Import the names from their modules (``from export3d.evaluation.scoring import evaluate``); this package
imports nothing, so ``import export3d.evaluation`` stays cheap.
"""
