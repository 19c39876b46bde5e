"""Training of Export3D: the three-stage loop and what it needs.

- :mod:`~export3d.training.config`: :class:`TrainConfig` and the training presets.
- :mod:`~export3d.training.loop`: the loop itself (``python -m export3d.train`` is its command line).
- :mod:`~export3d.training.losses`: reconstruction and adversarial losses.
- :mod:`~export3d.training.weight_ema`: the exponential moving average of the weights (EG3D's ``G_ema``).
- :mod:`~export3d.training.runlog`: JSONL / TensorBoard logging and the progress bar.
- :mod:`~export3d.training.ablation_runs`: the ablation variants (paper Tables 3 and 4) and the training of their runs.
- :mod:`~export3d.training.ablation_results`: their results collected, summarised over seeds, tabled and drawn
  (``python -m export3d.ablation`` is their command line).

Imports the model, the data and :mod:`export3d.evaluation` (metrics for the losses, the held-out score).
"""
