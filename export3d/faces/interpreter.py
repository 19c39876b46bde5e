"""The bundle's three models run by TFLite itself (LiteRT's interpreter): the oracle the port is tested against.

``ai_edge_litert`` is a test-only dependency (the ``dev`` extra); it runs on the CPU, one image at a time, in
fp32 with the XNNPACK delegate, exactly as MediaPipe's own graph runs these models on a CPU.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from export3d.faces.weights import BLENDSHAPE_MODEL, DETECTOR_MODEL, LANDMARK_MODEL, MODELS
from export3d.utils.extras import bundle_path, require

LITERT_HINT = "pip install ai-edge-litert==2.3.0 (in the dev extra: pip install -e '.[dev]')"


class TFLiteFaceModels:
    """``landmarks(images)``, ``detector(inputs)`` and ``blendshapes(points)`` through LiteRT."""

    def __init__(self, bundle: str | Path | None = None, threads: int = 1):
        litert = require("ai_edge_litert.interpreter", LITERT_HINT)
        path = Path(bundle) if bundle else bundle_path()
        with zipfile.ZipFile(path) as z:
            models = {name: z.read(name) for name in MODELS}
        self.interpreters = {}
        for name, data in models.items():
            interpreter = litert.Interpreter(model_content=data, num_threads=threads)
            interpreter.allocate_tensors()
            self.interpreters[name] = interpreter

    def _run(self, name: str, value: np.ndarray) -> list[np.ndarray]:
        interpreter = self.interpreters[name]
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], value.astype(np.float32))
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]

    def raw_landmarks(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The landmark model on ``inputs # [256, 256, 3]`` already in its range: (landmarks [478, 3],
        presence logit, tongue-out probability), the model's outputs as TFLite gives them."""
        out = dict(zip(("landmarks", "presence", "tongue"), self._run(LANDMARK_MODEL, inputs[None]), strict=True))
        return out["landmarks"].reshape(-1, 3), out["presence"].reshape(()), out["tongue"].reshape(())

    def landmarks(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, 256, 256]`` in [-1, 1] -> landmarks ``[B, 478, 3]`` (pixels), presence probabilities ``[B]``."""
        points, presence = [], []
        for image in images.detach().float().cpu():
            lm, logit, _ = self.raw_landmarks(((image.permute(1, 2, 0) + 1) / 2).numpy())
            points.append(torch.from_numpy(lm))
            presence.append(torch.sigmoid(torch.from_numpy(logit)))
        return torch.stack(points), torch.stack(presence)

    def detector(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The detector on ``inputs # [B, 3, 128, 128]`` already in its range [-1, 1]: logits ``[B, 896]`` and
        box values ``[B, 896, 16]``, as TFLite gives them."""
        logits, raw = [], []
        for x in inputs.detach().float().cpu():
            out = {o.shape[-1]: o for o in self._run(DETECTOR_MODEL, x.permute(1, 2, 0)[None].numpy())}
            logits.append(torch.from_numpy(out[1].reshape(-1)))
            raw.append(torch.from_numpy(out[16].reshape(-1, 16)))
        return torch.stack(logits), torch.stack(raw)

    def blendshapes(self, points: torch.Tensor) -> torch.Tensor:
        """``[B, 146, 2]`` pixels -> ``[B, 52]``."""
        out = [self._run(BLENDSHAPE_MODEL, p[None].numpy())[0].reshape(-1) for p in points.detach().float().cpu()]
        return torch.from_numpy(np.stack(out))
