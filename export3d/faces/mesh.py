"""FaceMesh: MediaPipe's face detector, landmark and blendshape networks as one differentiable, batched module.

``mesh = FaceMesh.from_bundle()``; ``landmarks, blendshapes = mesh(images)`` with images ``[B, 3, S, S]`` in
[-1, 1]. Landmarks ``[B, 478, 3]`` are in pixels of the input, blendshapes ``[B, 52]`` in
:data:`~export3d.faces.blendshape_net.BLENDSHAPE_NAMES` order. The weights come from the installed bundle at run
time and are frozen (``requires_grad=False``); gradients reach the images.

Where the landmark network looks (``roi``), as MediaPipe's graphs do it (:mod:`~export3d.faces.roi`):

- ``"whole"`` (the default): the whole image, resampled to 256 px: the network on the crop as given, which is
  what TFLite computes on the same input (tests/faces). It expects the face as MediaPipe's crop shows it:
  upright, in a rectangle 1.5x the size of the face; on a looser crop (an FFHQ-style crop, a model output: the
  face fills half of it) its landmarks are off by pixels and its presence score drops (docs/faces.md);
- ``"detector"``: MediaPipe's still-image pipeline: the face detector on the image, its box enlarged 1.5x and
  turned level with the eyes (:mod:`~export3d.faces.detection`), cut out and resampled to 256 px; the
  landmarks are mapped back into the image (what ``FaceLandmarker`` in IMAGE mode does);
- ``align`` more passes, each on MediaPipe's tracking square of the previous landmarks (its VIDEO mode).

The crop's placement is never differentiated (as in MediaPipe it is a decision, not a function of the
pixels); the pixels are, through the bilinear resampling.

The numbers around the networks (sources in docs/faces.md): the landmark network reads (pixel - 0) / 255, so an
image x in [-1, 1] becomes (x + 1) / 2; the detector reads (pixel - 127.5) / 127.5, so x itself; the landmark
network's 1434 outputs are 478 x (x, y, z) in pixels of its 256 px input; the blendshape network reads 146 of the
landmarks' x and y in pixels of the image (MediaPipe: the normalised x times the image width, y times its height).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from export3d.faces.blendshape_net import BLENDSHAPE_NAMES, SUBSET, BlendshapeNet
from export3d.faces.detection import MIN_SCORE, Detection, best_face, detection_roi
from export3d.faces.detector_net import DetectorNet
from export3d.faces.landmark_net import LandmarkNet
from export3d.faces.roi import Roi
from export3d.faces.weights import load_blendshape_net, load_detector_net, load_landmark_net, read_bundle

ROI_MODES = ("whole", "detector")
# kept in fp32 by every dtype conversion: a bf16 number near 256 has a step of 1, too coarse for a pixel coordinate
FP32_PARTS = ("landmarker.landmark_head", "landmarker.presence_head", "landmarker.tongue_head", "blendshaper",
              "detector")  # fmt: skip


class FaceMeshOutput(NamedTuple):
    landmarks: torch.Tensor  # [B, 478, 3]: x (column), y (row) in pixels of the input (MediaPipe's normalised
    #                          coordinates times the size); z: depth in the same units, smaller = nearer the camera
    blendshapes: torch.Tensor  # [B, 52] in [0, 1], in BLENDSHAPE_NAMES order


class FacePrediction(NamedTuple):
    landmarks: torch.Tensor  # [B, 478, 3] as FaceMeshOutput, fp32
    blendshapes: torch.Tensor  # [B, 52], fp32
    presence: torch.Tensor  # [B] the landmark network's face-presence probability (MediaPipe keeps > 0.5)
    detection: torch.Tensor  # [B] the detector's face score with roi="detector" (no face below 0.5), else ones
    tongue_out: torch.Tensor  # [B] tongue-out probability (not used by MediaPipe's landmarker)
    features: list[torch.Tensor]  # the CNN stage outputs asked for, [B, C, s, s], of the last pass
    roi: Roi  # the last pass's crop, pixels of the image

    @property
    def face(self) -> torch.Tensor:
        """[B] bool: a face by MediaPipe's two tests (detector score and landmark presence at least 0.5)."""
        return (self.presence >= MIN_SCORE) & (self.detection >= MIN_SCORE)


class FaceMesh(nn.Module):
    """MediaPipe's face landmarks (478) and blendshapes (52) from images ``[B, 3, S, S]`` in [-1, 1].

    In bf16 (``from_bundle(dtype=torch.bfloat16)`` or ``.bfloat16()``) the landmark CNN's trunk runs in bf16
    while its three heads, the blendshape network and the detector stay in fp32 (:data:`FP32_PARTS`): landmarks
    and blendshapes are fp32 whatever the dtype, the features are in the trunk's dtype."""

    blendshape_names = BLENDSHAPE_NAMES

    def __init__(self, roi: str = "whole", align: int = 0):
        super().__init__()
        if roi not in ROI_MODES or align < 0:
            raise ValueError(f"FaceMesh: roi must be one of {ROI_MODES} and align >= 0, got {roi!r}, {align}")
        self.roi, self.align = roi, align  # the defaults of predict
        self.landmarker, self.blendshaper, self.detector = LandmarkNet(), BlendshapeNet(), DetectorNet()
        self.register_buffer("subset", torch.tensor(SUBSET), persistent=False)
        # input normalisations (x in [-1, 1] -> x * scale + shift), from the models' metadata
        self.register_buffer("input_scale", torch.tensor([0.5, 1.0]), persistent=False)  # landmarks, detector
        self.register_buffer("input_shift", torch.tensor([0.5, 0.0]), persistent=False)

    @classmethod
    def from_bundle(cls, bundle: str | Path | None = None, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None, roi: str = "whole", align: int = 0) -> FaceMesh:  # fmt: skip
        """The port with the weights of ``face_landmarker.task`` (the installed one by default), in eval mode."""
        graphs = read_bundle(bundle)
        mesh = cls(roi, align)
        ranges = [load_landmark_net(mesh.landmarker, graphs.landmarks),
                  load_detector_net(mesh.detector, graphs.detector)]  # fmt: skip
        load_blendshape_net(mesh.blendshaper, graphs.blendshapes)
        for i, (mean, std) in enumerate(ranges):  # p = (x + 1) * 127.5 -> (p - mean) / std
            mesh.input_scale[i], mesh.input_shift[i] = 127.5 / std, (127.5 - mean) / std
        mesh.requires_grad_(False)
        return mesh.to(device=device, dtype=dtype).eval()

    def _apply(self, fn, recurse: bool = True):
        """Every conversion (``.to``, ``.bfloat16()``, ``.cuda()``...) as usual, then FP32_PARTS back to fp32."""
        super()._apply(fn, recurse)
        for name in FP32_PARTS:
            self.get_submodule(name).float()
        return self

    @property
    def size(self) -> int:
        return self.landmarker.config.size

    def _check(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"FaceMesh expects square images [B, 3, S, S] in [-1, 1], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"FaceMesh expects float images in [-1, 1], got {images.dtype}")

    def normalise(self, crops: torch.Tensor, network: int = 0) -> torch.Tensor:
        """[-1, 1] -> the range of network 0 (landmarks: [0, 1]) or 1 (detector: [-1, 1])."""
        scale, shift = self.input_scale[network].to(crops.dtype), self.input_shift[network].to(crops.dtype)
        return crops * scale + shift

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """The landmark network's input for the whole image: ``[B, 3, 256, 256]`` in its range."""
        self._check(images)
        return self.normalise(Roi.whole(images).crop(images, self.size))

    def detect(self, images: torch.Tensor) -> Detection:
        """MediaPipe's face detection (the best face) on the whole image, resized to 128 px (zero border)."""
        self._check(images)
        crops = Roi.whole(images).crop(images, self.detector.config.size, border="zeros")
        return best_face(*self.detector(self.normalise(crops, 1).float()))

    def first_roi(self, images: torch.Tensor, roi: str) -> tuple[Roi, torch.Tensor]:
        """The crop of the first landmark pass and the detection score ([B], ones for the whole image)."""
        whole = Roi.whole(images)
        if roi == "whole":
            return whole, torch.ones(images.shape[0], device=images.device)
        if roi != "detector":
            raise ValueError(f"roi must be one of {ROI_MODES}, got {roi!r}")
        det = self.detect(images)
        found = detection_roi(det, images.shape[-1])
        keep = (det.score >= MIN_SCORE)[:, None]  # no face found: the whole image (its presence will say no face)
        region = Roi(torch.where(keep, found.centre, whole.centre), torch.where(keep, found.size, whole.size),
                     torch.where(keep[:, 0], found.angle, whole.angle))  # fmt: skip
        return region, det.score

    def blendshapes_of(self, landmarks: torch.Tensor) -> torch.Tensor:
        """Blendshapes ``[B, 52]`` of landmarks ``[B, 478, 2 or 3]`` in pixels (any uniform scale and offset)."""
        return self.blendshaper(landmarks.index_select(1, self.subset)[..., :2])

    def predict(self, images: torch.Tensor, stages: tuple[int, ...] = (), roi: str | None = None,
                align: int | None = None) -> FacePrediction:  # fmt: skip
        """Everything the networks give, plus the landmark CNN's stage outputs of ``stages`` (0 = 128 px ...
        6 = 2 px) of the last pass. ``roi`` and ``align`` default to the module's (see the module's docstring)."""
        self._check(images)
        region, score = self.first_roi(images, roi or self.roi)
        out = self.landmarker(self.normalise(region.crop(images, self.size)), stages)
        landmarks = region.to_image(out.landmarks, self.size)
        for _ in range(self.align if align is None else align):
            region = Roi.from_landmarks(landmarks.detach())
            out = self.landmarker(self.normalise(region.crop(images, self.size)), stages)
            landmarks = region.to_image(out.landmarks, self.size)
        return FacePrediction(landmarks, self.blendshapes_of(landmarks), torch.sigmoid(out.presence), score,
                              torch.sigmoid(out.tongue_out), out.features, region)  # fmt: skip

    def forward(self, images: torch.Tensor, roi: str | None = None, align: int | None = None) -> FaceMeshOutput:
        out = self.predict(images, roi=roi, align=align)
        return FaceMeshOutput(out.landmarks, out.blendshapes)

    def features(self, images: torch.Tensor, stages: tuple[int, ...] = (1, 2, 3, 4), roi: str | None = None,
                 align: int | None = None) -> list[torch.Tensor]:  # fmt: skip
        """The landmark CNN's activations at ``stages`` (default: 64, 32, 16, 8 px: [B, 32, 64, 64],
        [B, 64, 32, 32], [B, 128, 16, 16], [B, 128, 8, 8]) on the crop ``predict`` would make last, for a
        feature-matching loss; the stages after the last asked for are not run."""
        if not stages or min(stages) < 0 or max(stages) >= len(self.landmarker.stages):
            raise ValueError(f"stages must be indices 0-{len(self.landmarker.stages) - 1}, got {stages}")
        self._check(images)
        align = self.align if align is None else align
        if align:
            region = Roi.from_landmarks(self.predict(images, roi=roi, align=align - 1).landmarks.detach())
        else:
            region = self.first_roi(images, roi or self.roi)[0]
        crops = self.normalise(region.crop(images, self.size))
        return self.landmarker.trunk(crops, tuple(stages), max(stages) + 1)[1]
