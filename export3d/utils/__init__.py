"""Plumbing shared by training, evaluation and the command-line tools; imports nothing else of the package.

- :mod:`~export3d.utils.images`: image files and grids <-> tensors in [-1, 1].
- :mod:`~export3d.utils.outputs`: files and folders written atomically (temporary name, then rename), and output
  destinations checked before long work.
- :mod:`~export3d.utils.checkpoint`: checkpoints written atomically (safetensors + JSON), verified when read.
- :mod:`~export3d.utils.distributed`: device choice and the ``torchrun`` process group.
- :mod:`~export3d.utils.signals`: Ctrl-C and SIGTERM handling shared by the long-running commands.
"""
