"""Regions of interest: the rotated rectangles MediaPipe cuts out of a frame for its networks, and back.

MediaPipe never runs the landmark model on a whole frame: it resamples a rotated rectangle around the face to
256 x 256 (``ImageToTensorCalculator``) and maps the landmarks found there back into the frame
(``LandmarkProjectionCalculator``). The rectangle comes from the face detector in a still image
(:mod:`~export3d.faces.detection`), and from the previous frame's landmarks in a video
(``face_landmarks_detector_graph.cc``): the axis-aligned box of all 478 landmarks (``LandmarksToDetection``),
turned so that the line from landmark 33 to landmark 263 (the outer eye corners) is level (``DetectionsToRects``,
target angle 0), scaled 1.5x with its longer side for both sides (``RectTransformation``: scale 1.5,
square_long): :meth:`Roi.from_landmarks`.

Conventions kept from MediaPipe, so that the port's crops are MediaPipe's crops:

- coordinates are MediaPipe's normalised ones times the image size: x = column, y = row, in pixels;
- the crop maps the rectangle's corners onto the output's corners (OpenCV ``boxPoints`` to (0, 0) ... (w, h),
  ``warpPerspective`` bilinear): output pixel j samples the image at rectangle fraction j / w; the border
  replicates (the landmark model's ``ImageToTensor`` default) or is zero (the detector's);
- landmarks go back as MediaPipe projects them: the crop fraction minus 0.5, turned by the angle, times the
  rectangle's width (x) and height (y), plus its centre; z times its width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

ROI_SCALE = 1.5
EYE_LINE = (33, 263)


class Roi(NamedTuple):
    """A rotated rectangle per image, in pixels of the image."""

    centre: torch.Tensor  # [B, 2] x, y
    size: torch.Tensor  # [B, 2] width (along the rectangle's x axis), height
    angle: torch.Tensor  # [B] radians: the rectangle's x axis is the image's turned by angle (towards +y)

    @classmethod
    def whole(cls, images: torch.Tensor) -> Roi:
        """The whole image (MediaPipe without a NORM_RECT)."""
        B, _, H, W = images.shape
        size = torch.tensor([float(W), float(H)], device=images.device).expand(B, 2)
        return cls(size / 2, size, torch.zeros(B, device=images.device))

    @classmethod
    def from_landmarks(cls, landmarks: torch.Tensor, scale: float = ROI_SCALE) -> Roi:
        """MediaPipe's tracking square for landmarks ``[B, 478, 2+]`` in pixels (a square image)."""
        xy = landmarks[..., :2].float()
        lo, hi = xy.amin(1), xy.amax(1)  # [B, 2]
        eyes = xy[:, EYE_LINE[1]] - xy[:, EYE_LINE[0]]  # [B, 2]
        side = (hi - lo).amax(1, keepdim=True) * scale  # [B, 1]
        return cls((lo + hi) / 2, side.expand(-1, 2), torch.atan2(eyes[:, 1], eyes[:, 0]))

    def crop(self, images: torch.Tensor, size: int, border: str = "border") -> torch.Tensor:
        """The rectangles of ``images # [B, C, H, W]`` resampled to ``[B, C, size, size]`` (bilinear; ``border``:
        "border" replicates the edge, "zeros" pads with 0)."""
        B, _, H, W = images.shape
        cos, sin = torch.cos(self.angle.float()), torch.sin(self.angle.float())
        w, h = self.size.float().unbind(-1)
        cx, cy = self.centre.float().unbind(-1)
        # output pixel j (affine_grid's a = (2j + 1) / size - 1) samples the rectangle at fraction j / size, i.e.
        # offset (a / 2 - 1 / (2 size)) * (w, h) from the centre, turned by angle; grid_sample reads a pixel
        # coordinate p at (2p + 1) / W - 1
        ox, oy = -w / (2 * size), -h / (2 * size)  # the half-pixel offset, in the rectangle's axes
        tx = cx + cos * ox - sin * oy
        ty = cy + sin * ox + cos * oy
        theta = torch.stack([torch.stack([cos * w / W, -sin * h / W, (2 * tx + 1) / W - 1], 1),
                             torch.stack([sin * w / H, cos * h / H, (2 * ty + 1) / H - 1], 1)], 1)  # fmt: skip
        grid = F.affine_grid(theta, [B, images.shape[1], size, size], align_corners=False)
        # in fp32: grid_sample in bf16 on a CPU returns NaN with border padding (torch 2.14), and a bf16 grid
        # would place samples to 1/128 of the image only
        crops = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode=border, align_corners=False)
        return crops.to(images.dtype)

    def to_image(self, points: torch.Tensor, size: int) -> torch.Tensor:
        """Landmarks ``[B, N, 3]`` in pixels of a ``size`` px crop -> pixels of the image (MediaPipe's projection)."""
        a, b = points[..., 0] / size - 0.5, points[..., 1] / size - 0.5
        cos, sin = torch.cos(self.angle)[:, None], torch.sin(self.angle)[:, None]
        w, h = self.size[:, 0:1], self.size[:, 1:2]
        x = (cos * a - sin * b) * w + self.centre[:, None, 0]
        y = (sin * a + cos * b) * h + self.centre[:, None, 1]
        return torch.stack([x, y, points[..., 2] / size * w], -1)
