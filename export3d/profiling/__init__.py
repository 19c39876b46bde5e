"""The profiler behind ``python -m export3d.profile``: stage timers, NVML sampling and the profiled workload.

- :mod:`~export3d.profiling.stages`: the stage timer and the hooks that attribute time to model stages.
- :mod:`~export3d.profiling.nvml`: GPU clocks, power and utilisation sampled through NVML.
- :mod:`~export3d.profiling.workload`: one training step and one inference frame, measured and summarised.
- :mod:`~export3d.profiling.memory`: the training step's saved-for-backward memory per module, on fake tensors
  (``--memory``).
"""
