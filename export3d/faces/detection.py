"""From the detector's 896 anchors to one face per image, as MediaPipe's face detector graph does it, batched.

The steps and their settings (MediaPipe ``face_detector_graph.cc`` and the calculators it configures):

1. anchors (``SsdAnchorsCalculator``: 4 layers, strides 8, 16, 16, 16 on 128 px, one aspect ratio plus one
   interpolated scale, fixed anchor size): per cell of a 16 x 16 grid 2 anchors, then per cell of an 8 x 8 grid
   6, all of size 1 and centred on their cell: ((x + 0.5) / 16, (y + 0.5) / 16), ...;
2. decoding (``TensorsToDetectionsCalculator``: scales 128, reverse output order, 6 keypoints): box centre and
   keypoints = value / 128 + anchor centre, box size = value / 128, all as fractions of the image side; score =
   sigmoid(logit clipped to +-100), kept from 0.5 (``min_detection_confidence``);
3. weighted non-maximum suppression (``NonMaxSuppressionCalculator``, WEIGHTED, IoU above 0.5): the best anchor
   and every kept anchor overlapping it by more than 0.5, averaged with their scores as weights (box corners and
   keypoints); the best anchor's score. ``num_faces = 1``: only that first face is made;
4. region of interest (``DetectionsToRects`` with keypoints 0 and 1, the eyes, as the rotation vector, target
   angle 0; ``RectTransformation`` 1.5 x 1.5): the box's centre, 1.5 times its width and height, turned to level
   the eyes: :class:`~export3d.faces.roi.Roi`.

The image goes to the detector whole, resized to 128 x 128 as MediaPipe's ``ImageToTensor`` resizes it
(bilinear, no antialiasing; a square image needs no letterbox).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from export3d.faces.roi import Roi

ANCHOR_GRIDS = ((16, 2), (8, 6))  # (cells per side, anchors per cell) of the 128 px input
SCALE = 128.0  # the decoder's x / y / w / h scale: the input side
MIN_SCORE = 0.5  # FaceDetectorGraphOptions.min_detection_confidence
NMS_IOU = 0.5  # FaceDetectorGraphOptions.min_suppression_threshold
ROI_SCALE = 1.5  # RectTransformation scale_x = scale_y
SCORE_CLIP = 100.0


class Detection(NamedTuple):
    """One face per image, in fractions of the image side (x right, y down)."""

    score: torch.Tensor  # [B] the best anchor's probability; below MIN_SCORE: no face (the rest is meaningless)
    box: torch.Tensor  # [B, 4] x min, y min, x max, y max
    keypoints: torch.Tensor  # [B, 6, 2]: eyes (0, 1), nose tip, mouth, ear tragions (MediaPipe's order)


def anchors(device: torch.device | str | None = None) -> torch.Tensor:
    """Anchor centres ``[896, 2]`` (x, y) in fractions of the input side, in the detector's output order."""
    parts = []
    for cells, per in ANCHOR_GRIDS:
        centres = (torch.arange(cells, dtype=torch.float32, device=device) + 0.5) / cells
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        parts.append(torch.stack([x, y], -1).reshape(-1, 1, 2).expand(-1, per, -1).reshape(-1, 2))
    return torch.cat(parts)


def decode(logits: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detector outputs -> scores ``[B, 896]``, boxes ``[B, 896, 4]`` (corners), keypoints ``[B, 896, 6, 2]``."""
    centre = anchors(raw.device)  # [896, 2]
    raw = raw.float() / SCALE
    box_centre, size = raw[..., :2] + centre, raw[..., 2:4]
    boxes = torch.cat([box_centre - size / 2, box_centre + size / 2], -1)
    keypoints = raw[..., 4:].unflatten(-1, (-1, 2)) + centre[:, None]
    return torch.sigmoid(logits.float().clamp(-SCORE_CLIP, SCORE_CLIP)), boxes, keypoints


def _iou(boxes: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """IoU of ``boxes # [B, N, 4]`` with ``best # [B, 4]``. # [B, N]"""
    lo, hi = torch.maximum(boxes[..., :2], best[:, None, :2]), torch.minimum(boxes[..., 2:], best[:, None, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)
    best_area = (best[:, 2:] - best[:, :2]).clamp(min=0).prod(-1)[:, None]
    union = area + best_area - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def best_face(logits: torch.Tensor, raw: torch.Tensor) -> Detection:
    """MediaPipe's first face after weighted non-maximum suppression, for each image of a batch."""
    scores, boxes, keypoints = decode(logits, raw)
    top = scores.argmax(1)  # [B]
    rows = torch.arange(len(top), device=top.device)
    best = boxes[rows, top]  # [B, 4]
    weights = scores * ((scores >= MIN_SCORE) & (_iou(boxes, best) > NMS_IOU))  # [B, 896]
    weights[rows, top] = scores[rows, top]  # the best anchor itself, even below the threshold (then: no face)
    total = weights.sum(1, keepdim=True)  # [B, 1]
    box = (weights[..., None] * boxes).sum(1) / total
    points = (weights[..., None, None] * keypoints).sum(1) / total[..., None]
    return Detection(scores[rows, top], box, points)


def detection_roi(detection: Detection, size: float) -> Roi:
    """MediaPipe's crop for the landmark model from a detection on a square image of side ``size`` (pixels)."""
    box = detection.box * size
    eyes = (detection.keypoints[:, 1] - detection.keypoints[:, 0]) * size
    angle = torch.atan2(eyes[:, 1], eyes[:, 0])
    return Roi((box[:, :2] + box[:, 2:]) / 2, (box[:, 2:] - box[:, :2]) * ROI_SCALE, angle)
