"""MediaPipe's blendshape network (``face_blendshapes.tflite``, "GhumMarkerPoserMlpMixerGeneral") in PyTorch.

Input: 146 of the 478 landmarks (:data:`SUBSET`), x and y only, in pixels of the frame (MediaPipe's
``face_blendshapes_graph.cc``: the ``LandmarksToTensorCalculator`` multiplies the normalised x by the image
width and y by its height). Everything else happens inside the TFLite graph and so here:

1. normalise: subtract the points' mean, divide by the mean distance of the points from it, times 0.5;
   the result does not depend on where the face is or how large (only on its shape and in-plane rotation);
2. tokens: a linear map across the 146 points to 96 tokens (per coordinate), then a linear embedding of each
   token's (x, y) into 64 channels; a learned extra token goes in front: ``[B, 97, 64]``;
3. 4 MLP-Mixer blocks: LayerNorm (scale, no bias, eps 1.0133e-6: 1e-6 stored as fp16) -> token MLP
   97 -> 384 -> ReLU -> 97 (+ input), LayerNorm -> channel MLP 64 -> 256 -> ReLU -> 64 (+ input);
4. output: the extra token through a linear map 64 -> 52 and a sigmoid: the 52 blendshapes of
   :data:`BLENDSHAPE_NAMES` (index 0, ``_neutral``, is not an expression).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The landmark ids the blendshape model reads, in its order (MediaPipe face_blendshapes_graph.cc,
# kLandmarksSubsetIdxs): face mesh points, then both irises (468-477).
SUBSET = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70, 78,
    80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136, 144, 145, 146, 148, 149, 150, 152,
    153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246,
    249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312,
    314, 317, 318, 321, 323, 324, 332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381,
    382, 384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454, 466, 468, 469, 470, 471, 472,
    473, 474, 475, 476, 477,
)  # fmt: skip
# The 52 outputs (MediaPipe face_blendshapes_graph.cc, kBlendshapeNames; ARKit's names plus "_neutral")
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)  # fmt: skip


@dataclass(frozen=True)
class BlendshapeNetConfig:
    """The shape of the network; the defaults are the bundle's model (``BlendshapeNet.load`` checks them)."""

    points: int = len(SUBSET)  # 146
    tokens: int = 96
    dim: int = 64
    token_hidden: int = 384
    channel_hidden: int = 256
    blocks: int = 4
    outputs: int = len(BLENDSHAPE_NAMES)  # 52


class ScaleNorm(nn.Module):
    """LayerNorm over the last dimension with a scale and no bias; eps comes from the graph."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps  # a float, not a buffer: reading a tensor would synchronise with the device every call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, None, self.eps)


class MixerBlock(nn.Module):
    """Token MLP then channel MLP, each after a ScaleNorm and with a residual. # [B, T, D] -> [B, T, D]"""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm_tokens = ScaleNorm(dim)
        self.token_in, self.token_out = nn.Linear(tokens, token_hidden), nn.Linear(token_hidden, tokens)
        self.norm_channels = ScaleNorm(dim)
        self.channel_in, self.channel_out = nn.Linear(dim, channel_hidden), nn.Linear(channel_hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_tokens(x).transpose(1, 2)  # [B, D, T]
        x = x + self.token_out(F.relu(self.token_in(y))).transpose(1, 2)
        return x + self.channel_out(F.relu(self.channel_in(self.norm_channels(x))))


class BlendshapeNet(nn.Module):
    """``points # [B, 146, 2]`` (x, y of :data:`SUBSET` in pixels) -> blendshapes ``[B, 52]`` in [0, 1]."""

    def __init__(self, config: BlendshapeNetConfig = BlendshapeNetConfig()):
        super().__init__()
        self.config = c = config
        self.register_buffer("input_scale", torch.tensor(0.5))  # the graph's constant after the normalisation
        self.to_tokens = nn.Linear(c.points, c.tokens)
        self.embed = nn.Linear(2, c.dim)
        self.extra_token = nn.Parameter(torch.zeros(c.dim))
        self.blocks = nn.ModuleList(MixerBlock(c.tokens + 1, c.dim, c.token_hidden, c.channel_hidden)
                                    for _ in range(c.blocks))  # fmt: skip
        self.head = nn.Linear(c.dim, c.outputs)

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """Centre on the mean point, divide by the mean distance from it. # [B, N, 2] -> [B, N, 2]"""
        centred = points - points.mean(1, keepdim=True)
        spread = centred.norm(dim=-1, keepdim=True).mean(1, keepdim=True)  # [B, 1, 1]
        return centred / spread

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.dim() != 3 or points.shape[1:] != (self.config.points, 2):
            raise ValueError(f"BlendshapeNet expects [B, {self.config.points}, 2] points, got {tuple(points.shape)}")
        points = points.to(self.to_tokens.weight.dtype)
        x = self.normalise(points) * self.input_scale
        x = self.to_tokens(x.transpose(1, 2)).transpose(1, 2)  # [B, 96, 2]
        x = self.embed(x)  # [B, 96, 64]
        x = torch.cat([self.extra_token.expand(x.shape[0], 1, -1).to(x.dtype), x], 1)  # [B, 97, 64]
        for block in self.blocks:
            x = block(x)
        return torch.sigmoid(self.head(x[:, 0]))  # [B, 52]
