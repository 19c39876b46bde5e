"""Face-aware training losses from the PyTorch port of MediaPipe's face networks (:mod:`export3d.faces`).

Three terms compare the generated image with the target frame through MediaPipe's landmark CNN (frozen, in eval
mode, on the training device; its bf16 trunk under ``--amp``), each with its own weight in
:class:`~export3d.training.config.TrainConfig` (0 = off):

- **landmarks** (``face_landmark_weight``): the mean distance between the output's and the target's landmarks, x
  and y, in units of the crop's side, averaged over three groups of MediaPipe's mesh points
  (:data:`LANDMARK_GROUPS`: the two eye contours, the lips, the face oval), so that each region counts the same
  whatever its number of points;
- **blendshapes** (``face_blendshape_weight``): the mean absolute difference of the 52 blendshapes (the training
  form of AED);
- **features** (``face_feature_weight``): feature matching on the CNN's activations at :data:`FEATURE_STAGES`
  (64, 32, 16 and 8 px of the 256 px crop), each spatial feature vector scaled to unit length over its channels
  and the squared differences summed over channels, averaged over positions and stages: LPIPS's form with equal
  weights (there are no learned LPIPS weights for this network), a face-aware perceptual loss that needs no VGG.

**The crop.** The landmark network only works on MediaPipe's framing of the face (docs/faces.md, "Region of
interest"): the face upright in a square 1.5x its detector box. The model's images (64 px tiny, 256 px paper)
frame the face as their data does, and the two data kinds here differ: a synthetic head's detector crop is
0.67 of the image side, centred 0.08 below the middle, a prepared real clip's about the whole image
(docs/training.md, "Face losses"). So the crop is taken from the target (``face_crop="target"``, the default):
MediaPipe's still-image crop of the target frame (its face detector, the box enlarged 1.5x and turned level with
the eyes), computed without gradient, and the same rectangle is cut out of the output and of the target and
resampled to 256 px (bilinear, :meth:`~export3d.faces.roi.Roi.crop`). The crop's placement is a constant of the
data, so it cannot jump with the output and cannot be moved by the loss; the output's pixels are differentiated
through the resampling. The target's landmarks and blendshapes are therefore MediaPipe's own (what AKD and AED
compare with), computed on the fly. ``face_crop="whole"`` uses the whole image instead (``roi="whole"``), which
fits data framed like MediaPipe's crop. A pair whose target has no face by MediaPipe's two tests (detector score
and landmark presence at least 0.5) adds nothing; the mean is over the other pairs.

Everything stays on the device: the terms are logged as detached 0-d tensors, as the reconstruction terms are
(:mod:`export3d.training.losses`), and nothing reads a value on the host.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from export3d.faces import FaceMesh
from export3d.faces.detection import MIN_SCORE
from export3d.faces.roi import Roi
from export3d.training.config import FACE_CROPS, TrainConfig

# MediaPipe face-mesh ids, as the point sets of its FaceLandmarksConnections (mediapipe/tasks/python/vision/
# face_landmarker.py; tests/training/test_face_losses.py compares them), each listed along its contour. "Left" is
# the subject's left (on the right of a frontal image). The irises (468-477) and the brows are left out: at 64 px an
# iris is 2-3 pixels, and the eye contours already carry blinks and gaze-driven lids.
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,  # outer
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)  # inner  # fmt: skip
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip
LANDMARK_GROUPS = {"eyes": RIGHT_EYE + LEFT_EYE, "mouth": LIPS, "oval": FACE_OVAL}
FEATURE_STAGES = (1, 2, 3, 4)  # the landmark CNN's stages at 64, 32, 16, 8 px (32, 64, 128, 128 channels)
EPS = 1e-10  # LPIPS's normalize_tensor epsilon


class FaceReading(NamedTuple):
    """What the landmark network reads from one batch of crops."""

    landmarks: torch.Tensor  # [B, 478, 3] in pixels of the 256 px crop, fp32
    blendshapes: torch.Tensor  # [B, 52], fp32
    presence: torch.Tensor  # [B] probability
    features: list[torch.Tensor]  # the FEATURE_STAGES outputs, [B, C, s, s], in the trunk's dtype


def scaled_roi(roi: Roi, scale: float) -> Roi:
    """The same rectangle in an image ``scale`` times as large (pixel coordinates scale with the side)."""
    return Roi(roi.centre * scale, roi.size * scale, roi.angle)


def crop_faces(images: torch.Tensor, roi: Roi, size: int = 256) -> torch.Tensor:
    """``images # [B, 3, S, S]`` -> the rectangles ``roi`` (pixels of the images) as ``[B, 3, size, size]``,
    bilinear, the border replicated (what MediaPipe's landmark crop does). Differentiable in the pixels; the
    rectangles are constants."""
    roi = Roi(roi.centre.detach(), roi.size.detach(), roi.angle.detach())
    return roi.crop(images, size)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values # [B]`` over the entries where ``mask # [B]`` holds (0 when none does), on the device."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def landmark_distance(a: torch.Tensor, b: torch.Tensor, side: float) -> torch.Tensor:
    """Per pair ``[B]``: the mean x, y distance of the :data:`LANDMARK_GROUPS` points of ``a`` and ``b``
    (``[B, 478, 2+]``, same crop), in units of the crop's ``side``, averaged over the groups."""
    per_group = [(a[:, ids, :2] - b[:, ids, :2]).norm(dim=-1).mean(1) for ids in map(list, LANDMARK_GROUPS.values())]
    return torch.stack(per_group, 1).mean(1) / side


def feature_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Per pair ``[B]``: LPIPS's distance with unit weights between two lists of activations ``[B, C, s, s]``."""
    per_stage = []
    for fa, fb in zip(a, b, strict=True):
        fa, fb = fa.float(), fb.float()
        fa = fa / (fa.square().sum(1, keepdim=True).sqrt() + EPS)
        fb = fb / (fb.square().sum(1, keepdim=True).sqrt() + EPS)
        per_stage.append((fa - fb).square().sum(1).mean((1, 2)))
    return torch.stack(per_stage, 1).mean(1)


class FaceLoss(nn.Module):
    """``weights . (landmarks, blendshapes, features)`` between generated images and their targets, through
    MediaPipe's landmark network on a shared crop (the module's docstring); ``forward(image, image_raw, target)``
    -> (loss, parts), the parts detached 0-d tensors on the device.

    ``raw``: the same terms on the raw render too, against the target resized to its size (its crop is the
    target's, scaled). The network stays frozen and in eval mode whatever ``train()`` is called with."""

    def __init__(self, mesh: FaceMesh, landmark_weight: float = 0.0, blendshape_weight: float = 0.0,
                 feature_weight: float = 0.0, crop: str = "target", raw: bool = False):  # fmt: skip
        super().__init__()
        if crop not in FACE_CROPS:
            raise ValueError(f"face crop must be one of {FACE_CROPS}, got {crop!r}")
        if min(landmark_weight, blendshape_weight, feature_weight) < 0:
            raise ValueError("face loss weights must be >= 0")
        self.mesh = mesh.eval().requires_grad_(False)
        self.landmark_weight, self.blendshape_weight, self.feature_weight = (landmark_weight, blendshape_weight,
                                                                             feature_weight)  # fmt: skip
        self.crop, self.raw = crop, raw

    def train(self, mode: bool = True) -> FaceLoss:
        super().train(mode)
        self.mesh.eval()
        return self

    @property
    def size(self) -> int:
        return self.mesh.size

    @torch.no_grad()
    def target_crop(self, target: torch.Tensor) -> tuple[Roi, torch.Tensor]:
        """The crop of each pair (pixels of ``target``) and whether the detector found the target's face ``[B]``
        (always true for ``crop="whole"``)."""
        roi, score = self.mesh.first_roi(target.float(), "detector" if self.crop == "target" else "whole")
        return roi, score >= MIN_SCORE

    def read(self, crops: torch.Tensor, roi: Roi) -> FaceReading:
        """The landmark network on ``crops # [B, 3, 256, 256]`` in [-1, 1]; blendshapes from the landmarks mapped
        back through ``roi`` (they depend on the face's roll, so they are read in the image's axes as MediaPipe
        reads them)."""
        trunk_dtype = self.mesh.landmarker.stem.weight.dtype
        out = self.mesh.landmarker(self.mesh.normalise(crops.float()).to(trunk_dtype), FEATURE_STAGES)
        landmarks = out.landmarks.float()
        blendshapes = self.mesh.blendshapes_of(roi.to_image(landmarks, self.size))
        return FaceReading(landmarks, blendshapes, torch.sigmoid(out.presence.float()), out.features)

    def terms(self, image: torch.Tensor, target: torch.Tensor, roi: Roi, face: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three terms (0-d, with gradient to ``image``) for one image size."""
        with torch.no_grad():
            want = self.read(crop_faces(target, roi, self.size), roi)
        got = self.read(crop_faces(image, roi, self.size), roi)
        face = face & (want.presence >= MIN_SCORE)
        return {"face_landmarks": masked_mean(landmark_distance(got.landmarks, want.landmarks, self.size), face),
                "face_blendshapes": masked_mean((got.blendshapes - want.blendshapes).abs().mean(1), face),
                "face_features": masked_mean(feature_distance(got.features, want.features), face),
                "face_pairs": face.float().mean()}  # fmt: skip

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.landmark_weight * terms["face_landmarks"] + self.blendshape_weight * terms["face_blendshapes"]
                + self.feature_weight * terms["face_features"])  # fmt: skip

    def forward(self, image: torch.Tensor, image_raw: torch.Tensor | None, target: torch.Tensor,
                target_raw: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """``image``, ``target`` ``[B, 3, S, S]`` in [-1, 1]; ``image_raw`` ``[B, 3, S/4, S/4]`` (used with
        ``raw``, against ``target_raw``, the target at that size). Autocast is off inside: the mesh's own dtype
        decides (a bf16 trunk, fp32 heads)."""
        with torch.autocast(image.device.type, enabled=False):
            roi, face = self.target_crop(target)
            terms = self.terms(image, target, roi, face)
            loss = self.weighted(terms)
            parts = {k: v.detach() for k, v in terms.items()}
            if self.raw and image_raw is not None:
                if target_raw is None:
                    target_raw = F.interpolate(target.float(), size=image_raw.shape[-2:], mode="bilinear",
                                               antialias=True, align_corners=False)  # fmt: skip
                raw = self.terms(image_raw, target_raw, scaled_roi(roi, image_raw.shape[-1] / image.shape[-1]), face)
                loss = loss + self.weighted(raw)
                parts.update({f"{k}_raw": v.detach() for k, v in raw.items() if k != "face_pairs"})
        return loss, parts


def build_face_loss(cfg: TrainConfig, device: torch.device | str) -> FaceLoss | None:
    """The face loss of a training config on ``device`` (bf16 trunk with ``cfg.amp``), or None when every weight
    is 0. Reads the weights from the installed face model bundle (the ``faces`` extra)."""
    weights = (cfg.face_landmark_weight, cfg.face_blendshape_weight, cfg.face_feature_weight)
    if max(weights) <= 0:
        return None
    mesh = FaceMesh.from_bundle(device=device, dtype=torch.bfloat16 if cfg.amp else None)
    return FaceLoss(mesh, *weights, crop=cfg.face_crop, raw=cfg.face_loss_raw)
