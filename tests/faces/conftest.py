"""Shared inputs of the port's tests: the port itself, TFLite's interpreter (skipped without LiteRT) and faces."""

import pytest
import torch

from export3d.utils.extras import MissingExtraError
from tests.faces.crops import astronaut_crops, synthetic_heads


@pytest.fixture(scope="session")
def mesh():
    from export3d.faces import FaceMesh

    try:
        return FaceMesh.from_bundle()
    except MissingExtraError as err:
        pytest.skip(f"the face model bundle is not installed: {err}")


@pytest.fixture(scope="session")
def tflite():
    from export3d.faces.interpreter import TFLiteFaceModels

    try:
        return TFLiteFaceModels()
    except MissingExtraError as err:
        pytest.skip(f"TFLite's interpreter is needed to compare the port with the TFLite models: {err}")


@pytest.fixture(scope="session")
def faces() -> dict[str, torch.Tensor]:
    """Real and synthetic face crops at 256 px, [6, 3, 256, 256] each, in [-1, 1]."""
    return {"astronaut": astronaut_crops(6), "synthetic": synthetic_heads(6)}
