"""Face-model extractors for the paper's AKD / CSIM / AED / APD, and their per-setting running means.

Extractor contract (any callable). A weights file is loaded as a ``torch.export`` program when it ends
in ``.pt2`` (``torch.export.save``; export the network together with its pre/post-processing), else as
a TorchScript module; or ``--extractor-plugin MODULE`` builds it: its ``build_landmarks(path)`` /
``build_identity(path)`` / ``build_3dmm(path)`` return the callable. Input: images ``[B, 3, H, W]`` in
[-1, 1] at the model's resolution (the extractor resizes/normalises for its network). Output:

- landmarks: ``[B, 68, 2]`` pixel coordinates (x, y) in the input image (face-alignment's FAN);
  AKD = mean over points of the Euclidean distance to the driving frame's points, in pixels.
- identity: ``[B, D]`` embeddings (ArcFace); CSIM = cosine similarity of source and generated image.
- 3dmm: ``[B, 70]`` = 64 expression + 6 pose coefficients, or a tuple (``[B, 64]``, ``[B, 6]``)
  (Deep3DFaceRecon); AED / APD = mean absolute difference to the driving frame's.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

EXTRACTORS = {"landmarks": ("AKD",), "identity": ("CSIM",), "3dmm": ("AED", "APD")}
EXTRACTOR_FLAGS = {"landmarks": "--landmarks-weights", "identity": "--identity-weights", "3dmm": "--3dmm-weights"}
COLUMNS = {"same_identity": ("PSNR", "SSIM", "LPIPS", "AKD", "CSIM", "AED", "APD"),
           "cross_identity": ("PSNR", "SSIM", "LPIPS", "CSIM", "AED", "APD")}  # fmt: skip
HIGHER_IS_BETTER = {"PSNR", "SSIM", "CSIM"}


# ----------------------------------------------------------------------------------------------- extractors
Extractor = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def load_extractor(kind: str, path: str | Path, device: torch.device, plugin: str | None = None) -> Extractor:
    """A face-model extractor from a weights file (TorchScript, or ``plugin.build_<kind>(path)``)."""
    flag = EXTRACTOR_FLAGS[kind]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: no file at {path}")
    if plugin is not None:
        module = importlib.import_module(plugin)
        builder = getattr(module, f"build_{kind}", None)
        if builder is not None:
            return builder(path)
    kind_name = "torch.export program (.pt2)" if path.suffix == ".pt2" else "TorchScript module"
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module().to(device)
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # both loaders raise several types (RuntimeError, BadZipFile, ...) for a bad file
        raise ValueError(f"{flag}: {path} is not a {kind_name} ({str(exc).splitlines()[0]}); export the network "
                         "with its pre/post-processing via torch.export.save (.pt2), or pass --extractor-plugin "
                         f"MODULE defining build_{kind}(path) (contract: python -m export3d.evaluate --help)") from exc


class ExtractorMetrics:
    """Accumulates AKD / CSIM / AED / APD per setting and method through whichever extractors are present."""

    def __init__(self, extractors: dict[str, Extractor | None], reasons: dict[str, str],
                 paths: dict[str, str | None] | None = None):
        self.extractors, self.reasons, self.paths = extractors, reasons, paths or {}
        self.sums: dict[tuple[str, str, str], float] = {}
        self.counts: dict[tuple[str, str, str], int] = {}

    def _add(self, setting: str, method: str, metric: str, values: torch.Tensor) -> None:
        key = (setting, method, metric)
        self.sums[key] = self.sums.get(key, 0.0) + values.double().sum().item()
        self.counts[key] = self.counts.get(key, 0) + values.numel()

    def _run(self, kind: str, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.extractors[kind](images)
        B = images.shape[0]
        tensor = isinstance(out, torch.Tensor)
        ok = {"landmarks": tensor and out.dim() == 3 and out.shape[0] == B and out.shape[-1] == 2,
              "identity": tensor and out.dim() == 2 and out.shape[0] == B,
              "3dmm": (isinstance(out, tuple) and len(out) == 2) or (tensor and out.shape == (B, 70))}[kind]
        if not ok:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{EXTRACTOR_FLAGS[kind]}: the extractor returned {got}; see the contract in --help")
        if kind == "3dmm" and isinstance(out, torch.Tensor):
            out = (out[:, :64], out[:, 64:])
        return out

    @torch.no_grad()
    def update(self, setting: str, batch, predictions: dict[str, torch.Tensor]) -> None:
        src = predictions["copy_source"]
        driving = batch.driving.to(src.device)
        if self.extractors.get("landmarks") is not None and setting == "same_identity":
            ref = self._run("landmarks", driving).float()  # [B, 68, 2]
            for method, image in predictions.items():
                dist = (self._run("landmarks", image).float() - ref).norm(dim=-1).mean(1)  # [B]
                self._add(setting, method, "AKD", dist)
        if self.extractors.get("identity") is not None:
            ref = self._run("identity", src).float()  # [B, D]
            for method, image in predictions.items():
                emb = self._run("identity", image).float()  # [B, D]
                self._add(setting, method, "CSIM", F.cosine_similarity(emb, ref, dim=1))
        if self.extractors.get("3dmm") is not None:
            ref_exp, ref_pose = (t.float() for t in self._run("3dmm", driving))
            for method, image in predictions.items():
                exp, pose = (t.float() for t in self._run("3dmm", image))
                self._add(setting, method, "AED", (exp - ref_exp).abs().mean(1))
                self._add(setting, method, "APD", (pose - ref_pose).abs().mean(1))

    def results(self, setting: str, method: str) -> dict[str, float | str]:
        out: dict[str, float | str] = {}
        for kind, metrics in EXTRACTORS.items():
            for metric in metrics:
                if metric not in COLUMNS[setting]:
                    continue
                key = (setting, method, metric)
                out[metric.lower()] = (self.sums[key] / self.counts[key] if self.counts.get(key)
                                       else f"not run: {self.reasons.get(kind, 'no samples')}")  # fmt: skip
        return out


def build_extractors(args: argparse.Namespace, device: torch.device) -> ExtractorMetrics:
    paths = {"landmarks": args.landmarks_weights, "identity": args.identity_weights, "3dmm": args.threedmm_weights}
    needs = {"landmarks": "face-alignment's 68-point FAN", "identity": "ArcFace", "3dmm": "Deep3DFaceRecon"}
    extractors, reasons = {}, {}
    for kind, path in paths.items():
        extractors[kind] = None if path is None else load_extractor(kind, path, device, args.extractor_plugin)
        if path is None:
            reasons[kind] = f"no {EXTRACTOR_FLAGS[kind]} given ({needs[kind]} weights; none ship with export3d)"
    return ExtractorMetrics(extractors, reasons, paths)
