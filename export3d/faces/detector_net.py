"""MediaPipe's face detector network (``face_detector.tflite``, BlazeFace short range) in PyTorch.

The network, as its TFLite graph spells it (docs/faces.md):

- input ``[B, 3, 128, 128]`` in [-1, 1] (its metadata: (pixel - 127.5) / 127.5);
- stem: 5x5 conv, stride 2, TF "SAME" padding (1 before, 2 after), 3 -> 24, ReLU: 64 px;
- 16 BlazeBlocks (:data:`BLOCKS`): 3x3 depthwise (stride 1 or 2, "SAME") -> 1x1 conv, plus the input (2x2 max
  pooled when the block strides, zero channels appended when it widens), then ReLU; 16 px after block 11 (88
  channels), 8 px after the last (96 channels);
- heads, 1x1 convs: at 16 px 2 anchors per cell (88 -> 2 scores, 88 -> 2 x 16 box values), at 8 px 6 anchors
  per cell (96 -> 6, 96 -> 6 x 16); the cells in row-major order, 16 px first: 512 + 384 = 896 anchors.

Each anchor's 16 values are a box (x centre, y centre, width, height) and 6 keypoints (x, y), in pixels of the
128 px input relative to the anchor (:mod:`~export3d.faces.detection` decodes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from export3d.faces.landmark_net import same_pad

# (output channels, stride) of each BlazeBlock
BLOCKS = ((24, 1), (28, 1), (32, 2), (36, 1), (42, 1), (48, 2), (56, 1), (64, 1), (72, 1), (80, 1), (88, 1),
          (96, 2), (96, 1), (96, 1), (96, 1), (96, 1))  # fmt: skip


@dataclass(frozen=True)
class DetectorNetConfig:
    """The shape of the network; the defaults are the bundle's model (``load_detector_net`` checks them)."""

    size: int = 128
    stem: int = 24
    blocks: tuple[tuple[int, int], ...] = BLOCKS
    fine_block: int = 10  # the heads read the output of this block (16 px) and of the last one (8 px)
    anchors: tuple[int, int] = (2, 6)  # anchors per cell at 16 px and at 8 px
    values: int = 16  # box (4) + 6 keypoints (12)


class DetectorOutput(NamedTuple):
    logits: torch.Tensor  # [B, 896] face score logits (MediaPipe: sigmoid of the value clipped to +-100)
    raw: torch.Tensor  # [B, 896, 16] box and keypoints, pixels of the 128 px input, relative to the anchors


class BlazeBlock(nn.Module):
    """3x3 depthwise -> 1x1, plus the (pooled, widened) input, then ReLU. # [B, C, H, W] -> [B, C', H/s, W/s]"""

    def __init__(self, channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_channels - channels
        if self.extra < 0:
            raise ValueError(f"BlazeBlock cannot reduce channels ({channels} -> {out_channels})")
        self.depthwise = nn.Conv2d(channels, channels, 3, stride=stride, groups=channels)
        self.project = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(same_pad(x, 3, self.stride)))
        skip = F.max_pool2d(x, 2) if self.stride == 2 else x
        if self.extra:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra))
        return F.relu(y.add_(skip))

    def layers(self) -> list[tuple[str, nn.Module]]:
        return [("DEPTHWISE_CONV_2D", self.depthwise), ("CONV_2D", self.project)]


class DetectorNet(nn.Module):
    """``x # [B, 3, 128, 128]`` in [-1, 1] -> :class:`DetectorOutput`. Weights: ``weights.load_detector_net``."""

    def __init__(self, config: DetectorNetConfig = DetectorNetConfig()):
        super().__init__()
        self.config = c = config
        self.stem = nn.Conv2d(3, c.stem, 5, stride=2)
        blocks, width = [], c.stem
        for out, stride in c.blocks:
            blocks.append(BlazeBlock(width, out, stride))
            width = out
        self.blocks = nn.ModuleList(blocks)
        fine = c.blocks[c.fine_block][0]
        self.score_fine, self.score_coarse = nn.Conv2d(fine, c.anchors[0], 1), nn.Conv2d(width, c.anchors[1], 1)
        self.box_fine = nn.Conv2d(fine, c.anchors[0] * c.values, 1)
        self.box_coarse = nn.Conv2d(width, c.anchors[1] * c.values, 1)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.config.size,) * 2:
            raise ValueError(f"DetectorNet expects [B, 3, {self.config.size}, {self.config.size}], "
                             f"got {tuple(x.shape)}")  # fmt: skip
        x = F.relu(self.stem(same_pad(x, 5, 2).contiguous(memory_format=torch.channels_last)))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.config.fine_block:
                fine = x

        def cells(t: torch.Tensor, per: int) -> torch.Tensor:  # [B, A*per, h, w] -> [B, h*w*A, per]
            return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, per)

        v = self.config.values
        logits = torch.cat([cells(self.score_fine(fine), 1), cells(self.score_coarse(x), 1)], 1)[..., 0]
        raw = torch.cat([cells(self.box_fine(fine), v), cells(self.box_coarse(x), v)], 1)
        return DetectorOutput(logits, raw)

    def layers(self) -> list[tuple[str, nn.Module]]:
        """The trunk's weighted layers in the TFLite graph's order (the heads are matched by what they feed)."""
        return [("CONV_2D", self.stem)] + [layer for block in self.blocks for layer in block.layers()]
