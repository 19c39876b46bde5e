"""Plumbing shared by training, evaluation and the command-line tools; imports nothing else of the package.

- :mod:`~export3d.utils.images`: image files and grids <-> tensors in [-1, 1].
- :mod:`~export3d.utils.checkpoint`: checkpoints written atomically (safetensors + JSON).
- :mod:`~export3d.utils.distributed`: device choice and the ``torchrun`` process group.
"""
