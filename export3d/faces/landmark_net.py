"""MediaPipe's face landmark CNN (``face_landmarks_detector.tflite``, "Face mesh detection model v2") in PyTorch.

The network, as its TFLite graph spells it (docs/faces.md lists the graph):

- input ``[B, 3, 256, 256]`` in the model's own range, [0, 1] (its metadata: (pixel - 0) / 255);
- stem: 3x3 conv, stride 2, TF "SAME" padding (0 rows / columns before, 1 after), 3 -> 16, PReLU: 128 px;
- stage 0 (128 px, 16 channels): 4 residual blocks;
- stages 1-6 (64, 32, 16, 8, 4, 2 px; 32, 64, 128, 128, 128, 128 channels): a downsampling block, then 4
  residual blocks;
- three heads on the last ``[B, 128, 2, 2]``, each a 2x2 "VALID" conv to 1x1: 1434 = 478 x (x, y, z) landmark
  coordinates in pixels of the 256 px input, the face-presence logit (MediaPipe applies the sigmoid and keeps
  the face above 0.5) and the tongue-out logit (the TFLite model applies its sigmoid itself; MediaPipe's graph
  ignores this output).

Residual block (C channels, mid = C / 2)::

    x -> 1x1 conv C->mid -> PReLU -> 3x3 depthwise (pad 1) -> 1x1 conv mid->C -> (+ x) -> PReLU

Downsampling block (C -> C', mid = C' / 2)::

    x -> 2x2 conv stride 2, C->mid -> PReLU -> 3x3 depthwise -> 1x1 conv mid->C' -> (+ skip) -> PReLU
    skip = 2x2 max pool of x, zero channels appended up to C'

No layer carries a fused activation; every PReLU has one slope per channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LandmarkNetConfig:
    """The shape of the network; the defaults are the bundle's model (``LandmarkNet.load`` checks them)."""

    size: int = 256  # input side, pixels
    stem: int = 16  # stem channels
    widths: tuple[int, ...] = (16, 32, 64, 128, 128, 128, 128)  # channels of each stage (stage 0: stem width)
    blocks: int = 4  # residual blocks per stage (after the downsampling block of stages 1+)
    landmarks: int = 478  # 468 mesh points + 2 x 5 iris points


class LandmarkOutput(NamedTuple):
    landmarks: torch.Tensor  # [B, 478, 3]: x, y, z in pixels of the 256 px input (z: MediaPipe divides it by 256 too)
    presence: torch.Tensor  # [B] face-presence logit (probability = sigmoid)
    tongue_out: torch.Tensor  # [B] tongue-out logit
    features: list[torch.Tensor]  # the stage outputs asked for (see LandmarkNet.forward)


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's "SAME" padding of ``x # [B, C, H, W]``: the extra row / column goes after, not before."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class ResidualBlock(nn.Module):
    """1x1 -> PReLU -> 3x3 depthwise -> 1x1, plus the input, then PReLU. # [B, C, H, W] -> [B, C, H, W]"""

    def __init__(self, channels: int):
        super().__init__()
        mid = channels // 2
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.act_reduce = nn.PReLU(mid)
        self.depthwise = nn.Conv2d(mid, mid, 3, padding=1, groups=mid)
        self.expand = nn.Conv2d(mid, channels, 1)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.depthwise(self.act_reduce(self.reduce(x))))
        return self.act(y.add_(x))  # in place: y is this block's own conv output (half the time of x + y)

    def layers(self) -> list[tuple[str, nn.Module]]:
        """The weighted layers in the TFLite graph's order, each with its op kind."""
        return [("CONV_2D", self.reduce), ("PRELU", self.act_reduce), ("DEPTHWISE_CONV_2D", self.depthwise),
                ("CONV_2D", self.expand), ("PRELU", self.act)]  # fmt: skip


class DownBlock(nn.Module):
    """Stride-2 residual block. # [B, C, H, W] -> [B, C', H/2, W/2]"""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.extra = out_channels - channels  # zero channels appended to the pooled skip
        if self.extra < 0:
            raise ValueError(f"DownBlock cannot reduce channels ({channels} -> {out_channels})")
        self.reduce = nn.Conv2d(channels, mid, 2, stride=2)
        self.act_reduce = nn.PReLU(mid)
        self.depthwise = nn.Conv2d(mid, mid, 3, padding=1, groups=mid)
        self.expand = nn.Conv2d(mid, out_channels, 1)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.max_pool2d(x, 2)
        if self.extra:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra))
        y = self.expand(self.depthwise(self.act_reduce(self.reduce(x))))
        return self.act(y.add_(skip))

    layers = ResidualBlock.layers


class LandmarkNet(nn.Module):
    """``x # [B, 3, 256, 256]`` in [0, 1] -> :class:`LandmarkOutput`. Weights: ``weights.load_landmark_net``."""

    def __init__(self, config: LandmarkNetConfig = LandmarkNetConfig()):
        super().__init__()
        self.config = config
        c = config
        self.stem = nn.Conv2d(3, c.stem, 3, stride=2)
        self.stem_act = nn.PReLU(c.stem)
        stages, width = [], c.stem
        for i, out in enumerate(c.widths):
            blocks = [] if i == 0 and out == width else [DownBlock(width, out)]
            stages.append(nn.Sequential(*blocks, *(ResidualBlock(out) for _ in range(c.blocks))))
            width = out
        self.stages = nn.ModuleList(stages)
        side = c.size >> len(c.widths)  # 2 px at the end
        self.landmark_head = nn.Conv2d(width, 3 * c.landmarks, side)
        self.presence_head = nn.Conv2d(width, 1, side)
        self.tongue_head = nn.Conv2d(width, 1, side)
        self.to(memory_format=torch.channels_last)  # NHWC: 1.5x faster on a CPU at batch 16 (docs/faces.md)

    @property
    def feature_shapes(self) -> list[tuple[int, int]]:
        """(channels, side) of each stage output: (16, 128), (32, 64), ..., (128, 2)."""
        return [(w, self.config.size >> (i + 1)) for i, w in enumerate(self.config.widths)]

    def trunk(self, x: torch.Tensor, stages: tuple[int, ...] | None = None, stop: int | None = None):
        """Stem and stages: ``x # [B, 3, 256, 256]`` -> (the last stage's output, the outputs of ``stages``).

        ``stop``: run only the stages before it (the features of a loss need not reach the 2 px stage)."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.config.size,) * 2:
            raise ValueError(f"LandmarkNet expects [B, 3, {self.config.size}, {self.config.size}], "
                             f"got {tuple(x.shape)}")  # fmt: skip
        x = self.stem_act(self.stem(same_pad(x, 3, 2).contiguous(memory_format=torch.channels_last)))
        kept = []
        for i, stage in enumerate(self.stages[:stop]):
            x = stage(x)
            if stages is not None and i in stages:
                kept.append(x)
        return x, kept

    def forward(self, x: torch.Tensor, stages: tuple[int, ...] = ()) -> LandmarkOutput:
        """``stages``: indices of the stage outputs to return in ``features`` (0 = 128 px ... 6 = 2 px)."""
        x, kept = self.trunk(x, stages)
        x = x.to(self.landmark_head.weight.dtype)  # FaceMesh keeps the heads in fp32 (a bf16 coordinate near 256
        #                                            has a step of 1 px)
        landmarks = self.landmark_head(x).flatten(1).unflatten(1, (self.config.landmarks, 3))  # [B, 478, 3]
        return LandmarkOutput(landmarks, self.presence_head(x).flatten(), self.tongue_head(x).flatten(), kept)

    def layers(self) -> list[tuple[str, nn.Module]]:
        """The trunk's weighted layers in the TFLite graph's order (the heads are matched by output)."""
        out = [("CONV_2D", self.stem), ("PRELU", self.stem_act)]
        for stage in self.stages:
            for block in stage:
                out += block.layers()
        return out
