"""The driving signal over time, as the page shows it: the blendshapes that move most, and the head pose.

The head pose is :func:`export3d.data.headpose.camera_angles` of the driver's cameras: yaw, elevation (the pitch:
positive when the camera looks down on the head) and roll, in degrees. A matplotlib ``Figure`` is made without
pyplot, so no global figure state is shared between the server's threads.
"""

from __future__ import annotations

import numpy as np

from export3d.data.headpose import camera_angles

SHOWN_EXPRESSIONS = 4


def most_varying(expression: np.ndarray, count: int = SHOWN_EXPRESSIONS) -> list[int]:
    """The ``count`` entries of ``expression [T, E]`` with the largest spread over time, in index order."""
    spread = expression.std(axis=0)
    return sorted(np.argsort(-spread, kind="stable")[:count].tolist())


def driving_figure(expression: np.ndarray | None, cameras: np.ndarray, fps: float, names: list[str] | None = None):
    """A two-panel figure: the most varying expression entries (named by ``names``, e.g. the landmarker's
    blendshape names) and yaw / pitch / roll of the ``cameras [T, 25]``, against time in seconds."""
    from matplotlib.figure import Figure

    times = np.arange(len(cameras)) / fps
    figure = Figure(figsize=(7.0, 4.6), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    if expression is not None:
        for k in most_varying(expression):
            top.plot(times, expression[:, k], label=names[k] if names and k < len(names) else f"expression {k}")
        top.legend(loc="upper right", fontsize=8)
    top.set_ylabel("blendshape")
    top.set_title(f"the {SHOWN_EXPRESSIONS} expression entries that vary most", fontsize=10)
    angles = camera_angles(cameras)  # [T, 3]: yaw, elevation, roll
    for series, label in zip(angles.T, ("yaw", "elevation (pitch)", "roll"), strict=True):
        bottom.plot(times, series, label=label)
    bottom.set_ylabel("degrees")
    bottom.set_xlabel("time (s)")
    bottom.set_title("head pose", fontsize=10)
    bottom.legend(loc="upper right", fontsize=8)
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
    return figure
