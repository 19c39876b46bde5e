"""Built-in synthetic talking heads: identities, clips, 3DMM-like betas and cameras, and a contact sheet.

Every number is a pure function of ``(seed, identity, clip, frame)``: each quantity draws from its own
``torch.Generator`` seeded with a hash of those integers (never the global RNG), and the renderer
uses only exactly-rounded float operations, so the same key gives the same pixels on any machine and
in any batch.

- Identities: train ids are ``0 .. train_identities - 1``; test ids are
  ``TEST_IDENTITY_OFFSET + 0 .. test_identities - 1``, so the two splits never share a person.
- Appearance ``a [32]`` in [0, 1] per identity (``heads.APPEARANCE_FIELDS``: head/face/jaw shape, eye
  size/spacing/openness, brows, nose, mouth, ears, hair, skin/hair/iris/background colours).
- True expression ``e [6]`` in [0, 1] per frame (``heads.EXPRESSION_NAMES``: jaw_open, smile,
  blink_left, blink_right, brow_raise, lip_pucker; left/right are the subject's), a smooth random
  trajectory (sums of sinusoids at ``fps``) per clip, independent of the identity.
- Head pose: a smooth yaw in +-``max_yaw_deg`` and pitch in +-``max_pitch_deg``, expressed as an EG3D
  orbit camera ``[25]`` (see ``cameras``); the head itself never moves in the world.
- ``beta [64] = A e + B (2 a - 1) + noise`` with fixed seeded A ``[64, 6]`` and B ``[64, 32]`` and
  per-frame Gaussian noise of std ``beta_noise``: like a real 3DMM fit, it leaks the identity.
- ``expression_source="landmarker"``: the expression vector served as "beta" is instead the 52 blendshapes
  MediaPipe's face landmarker reads from each rendered frame (:mod:`export3d.data.expressions`, cached on
  disk), the vector real videos give, so the trained model can be driven by a real video.

Run ``python -m export3d.data.synthetic --sheet out.png`` for a contact sheet.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from export3d.cameras import orbit_camera
from export3d.data.expressions import EXPRESSION_SOURCES
from export3d.data.heads import EXPRESSION_NAMES, N_APPEARANCE, N_EXPRESSION
from export3d.data.landmarker import N_BLENDSHAPES
from export3d.data.raycast import render_heads
from export3d.data.source import BETA_DIM, ClipInfo

TEST_IDENTITY_OFFSET = 1_000_000
MAX_RAYS_PER_PASS = 1 << 19  # frames are rendered in chunks of at most this many rays (memory bound)
_APPEARANCE, _TRAJECTORY, _NOISE, _MIXING = 1, 2, 3, 4  # generator stream tags


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of the synthetic dataset. ``frames_per_clip`` must exceed the contrastive K."""

    seed: int = 0
    resolution: int = 64
    train_identities: int = 48
    test_identities: int = 16
    clips_per_identity: int = 4
    frames_per_clip: int = 64
    fps: float = 25.0
    beta_noise: float = 0.05
    max_yaw_deg: float = 35.0
    max_pitch_deg: float = 20.0
    supersample: int = 1
    expression_source: str = "beta"  # "beta" (64-d, constructed) | "landmarker" (52 blendshapes read from frames)

    def __post_init__(self) -> None:
        if self.expression_source not in EXPRESSION_SOURCES:
            raise ValueError(f"--expression-source must be one of {EXPRESSION_SOURCES}, got {self.expression_source!r}")
        for name in ("resolution", "clips_per_identity", "frames_per_clip", "supersample"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_identities", "test_identities"):
            value = getattr(self, name)
            if not 0 <= value < TEST_IDENTITY_OFFSET:
                raise ValueError(f"SyntheticConfig.{name} must be in [0, {TEST_IDENTITY_OFFSET}), got {value}")
        if self.fps <= 0 or self.beta_noise < 0:
            raise ValueError(f"SyntheticConfig.fps must be > 0 and beta_noise >= 0, got {self.fps}, {self.beta_noise}")
        if not (0 <= self.max_yaw_deg < 90 and 0 <= self.max_pitch_deg < 80):
            raise ValueError(f"SyntheticConfig: max_yaw_deg / max_pitch_deg out of range: {self.max_yaw_deg}, "
                             f"{self.max_pitch_deg}")

    @classmethod
    def tiny(cls, **overrides) -> SyntheticConfig:
        """64 px, a few dozen identities: trains on a CPU."""
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides) -> SyntheticConfig:
        """256 px like the paper, many more identities and clips."""
        base = {"resolution": 256, "train_identities": 2000, "test_identities": 50, "clips_per_identity": 3,
                "frames_per_clip": 100}
        return cls(**{**base, **overrides})

    def identities(self, split: str) -> list[int]:
        """The identity ids of ``split`` ("train" or "test")."""
        if split == "train":
            return list(range(self.train_identities))
        if split == "test":
            return list(range(TEST_IDENTITY_OFFSET, TEST_IDENTITY_OFFSET + self.test_identities))
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


class FrameKey(NamedTuple):
    identity: int
    clip: int
    frame: int


def stream_seed(*ints: int) -> int:
    """A 63-bit generator seed from a tuple of integers (stable across machines and Python runs)."""
    data = b"".join(int(i).to_bytes(8, "little", signed=True) for i in ints)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def generator(*ints: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(*ints))


class SyntheticHeads:
    """The generator: appearance, expression, pose, beta and rendering for any (identity, clip, frame)."""

    def __init__(self, config: SyntheticConfig):
        self.config = config
        g = generator(config.seed, _MIXING)
        self.A = torch.randn(BETA_DIM, N_EXPRESSION, generator=g)  # [64, 6]
        self.B = torch.randn(BETA_DIM, N_APPEARANCE, generator=g) * 0.25  # [64, n_app]

    def appearance(self, identities: Sequence[int]) -> torch.Tensor:
        """Appearance codes in [0, 1]. # [B, n_app]"""
        rows = [torch.rand(N_APPEARANCE, generator=generator(self.config.seed, _APPEARANCE, int(i)))
                for i in identities]
        return torch.stack(rows) if rows else torch.zeros(0, N_APPEARANCE)

    def _trajectory(self, identity: int, clip: int) -> torch.Tensor:
        """Sinusoid parameters of one clip: rows = 6 expression + yaw + pitch channels. # [8, 3, 3] float64"""
        g = generator(self.config.seed, _TRAJECTORY, identity, clip)
        u = torch.rand(N_EXPRESSION + 2, 4, 3, generator=g, dtype=torch.float64)
        freq = 0.08 + 0.6 * u[:, 0]  # Hz
        freq[2:4] = 0.25 + 0.9 * u[2:4, 0]  # blinks are quicker
        phase = 2 * math.pi * u[:, 1]
        amp = 0.15 + 0.35 * u[:, 2]
        amp[:, 1:] *= 0.6
        offset = u[:, 3, :1].expand(-1, 3)  # per-clip resting level of each channel
        return torch.stack([freq, phase, amp, offset], 1)  # [8, 4, 3]

    def _channels(self, keys: Sequence[FrameKey]) -> torch.Tensor:
        """Raw smooth signals of each key's clip at its frame time. # [B, 8] float64"""
        out = torch.zeros(len(keys), N_EXPRESSION + 2, dtype=torch.float64)
        for i, k in enumerate(keys):
            freq, phase, amp, offset = self._trajectory(k.identity, k.clip).unbind(1)  # each [8, 3]
            time = k.frame / self.config.fps
            for c in range(N_EXPRESSION + 2):
                out[i, c] = sum(float(amp[c, j]) * math.sin(2 * math.pi * float(freq[c, j]) * time + float(phase[c, j]))
                                for j in range(3)) + float(offset[c, 0])
        return out

    def expression(self, keys: Sequence[FrameKey]) -> torch.Tensor:
        """True expressions in [0, 1]. # [B, 6]"""
        s = self._channels(keys)[:, :N_EXPRESSION]
        e = (s - 0.35) * 1.25  # jaw, smile, brow, pucker: roughly uniform with rests at 0 and 1
        blinks = (s[:, 2:4] - 0.75) * 2.5  # blinks: closed only near the peaks of a faster signal
        e = torch.cat([e[:, :2], blinks, e[:, 4:]], 1)
        return e.clamp(0, 1).to(torch.float32)

    def pose(self, keys: Sequence[FrameKey]) -> torch.Tensor:
        """Head pose (yaw, pitch) in radians. # [B, 2] float64"""
        s = self._channels(keys)[:, N_EXPRESSION:]
        lim = torch.tensor([math.radians(self.config.max_yaw_deg), math.radians(self.config.max_pitch_deg)],
                           dtype=torch.float64)
        return torch.tanh(1.6 * (s - 0.5)) * lim

    def camera(self, keys: Sequence[FrameKey]) -> torch.Tensor:
        """EG3D orbit cameras of the frames' head poses. # [B, 25]"""
        pose = self.pose(keys)
        return orbit_camera(pose[:, 0], pose[:, 1])

    def beta(self, keys: Sequence[FrameKey], expression: torch.Tensor | None = None) -> torch.Tensor:
        """3DMM-like vectors ``A e + B (2 a - 1) + noise`` (identity-entangled). # [B, 64]"""
        e = self.expression(keys) if expression is None else expression
        a_id = self.appearance([k.identity for k in keys]) * 2 - 1  # [B, n_app]
        noise = [torch.randn(BETA_DIM, generator=generator(self.config.seed, _NOISE, *k)) for k in keys]
        noise = torch.stack(noise) if noise else torch.zeros(0, BETA_DIM)
        # Explicit accumulation (not a matmul) so a frame's beta does not depend on the batch it is in.
        out = self.config.beta_noise * noise  # [B, 64]
        for k in range(N_EXPRESSION):
            out = out + e[:, k, None] * self.A[:, k]
        for k in range(N_APPEARANCE):
            out = out + a_id[:, k, None] * self.B[:, k]
        return out

    def render(self, identities: Sequence[int], expression: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """Render identities with any expressions # [B, 6] from any cameras # [B, 25] -> # [B, 3, R, R]."""
        app = self.appearance(identities)
        cfg = self.config
        chunk = max(1, MAX_RAYS_PER_PASS // (cfg.resolution * cfg.supersample) ** 2)
        parts = [render_heads(app[i:i + chunk], expression[i:i + chunk], camera[i:i + chunk], cfg.resolution,
                              cfg.supersample) for i in range(0, len(identities), chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, 3, cfg.resolution, cfg.resolution)

    def frames(self, keys: Sequence[FrameKey]) -> dict[str, torch.Tensor]:
        """Everything about some frames: "image" # [B, 3, R, R], "beta" # [B, 64], "camera" # [B, 25],
        "true_expression" # [B, 6], "identity" # [B] int64."""
        e = self.expression(keys)
        cam = self.camera(keys)
        ids = [k.identity for k in keys]
        return {"image": self.render(ids, e, cam), "beta": self.beta(keys, e), "camera": cam,
                "true_expression": e, "identity": torch.tensor(ids, dtype=torch.int64)}


class SyntheticClips:
    """A ``ClipSource`` over one split of the synthetic dataset (clips ordered identity-major)."""

    def __init__(self, config: SyntheticConfig, split: str = "train"):
        self.config = config
        self.split = split
        self.heads = SyntheticHeads(config)
        self.resolution = config.resolution
        self.landmarker = config.expression_source == "landmarker"
        self.expression_dim = N_BLENDSHAPES if self.landmarker else BETA_DIM
        self.clips = [ClipInfo(f"{split}/id{i:07d}_clip{c:02d}", i, config.frames_per_clip, split)
                      for i in config.identities(split) for c in range(config.clips_per_identity)]
        self._position = {identity: k for k, identity in enumerate(config.identities(split))}
        self._table: torch.Tensor | None = None  # landmarker expressions [clips, frames, 52], loaded on first use

    def key(self, clip_index: int, frame: int) -> FrameKey:
        return FrameKey(self.clips[clip_index].identity, clip_index % self.config.clips_per_identity, frame)

    def expression_table(self) -> torch.Tensor:
        """The landmarker expression of every frame of the split (computed or read from the cache once)."""
        if self._table is None:
            from export3d.data.expressions import landmarker_expressions

            self._table = torch.from_numpy(landmarker_expressions(self))
        return self._table

    def beta(self, keys: Sequence[FrameKey], expression: torch.Tensor | None = None) -> torch.Tensor:
        """The expression vectors the model is given for frames of this split. # [B, expression_dim]"""
        if not self.landmarker:
            return self.heads.beta(keys, expression)
        table = self.expression_table()
        per = self.config.clips_per_identity
        rows = [table[self._position[k.identity] * per + k.clip, k.frame] for k in keys]
        return torch.stack(rows) if rows else torch.zeros(0, N_BLENDSHAPES)

    def load(self, requests: Sequence[tuple[int, Sequence[int]]]) -> list[dict[str, torch.Tensor]]:
        keys = [self.key(c, f) for c, frames in requests for f in frames]
        data = self.heads.frames(keys)
        if self.landmarker:
            data["beta"] = self.beta(keys)
        out, start = [], 0
        for _, frames in requests:
            n = len(frames)
            out.append({k: data[k][start:start + n] for k in ("image", "beta", "camera", "true_expression")})
            start += n
        return out


def contact_sheet(config: SyntheticConfig, split: str = "train", rows: int = 6) -> tuple[torch.Tensor, list[str]]:
    """Rows = identities; columns = neutral, each expression at full strength, yaw -35 / +15 / +35 deg.

    Returns images # [rows, cols, 3, R, R] and the column labels.
    """
    heads = SyntheticHeads(config)
    ids = config.identities(split)[:rows]
    yaws = (-35.0, 15.0, 35.0)
    labels = ["neutral", *EXPRESSION_NAMES, *(f"yaw {y:+.0f}" for y in yaws)]
    exprs = torch.cat([torch.zeros(1, N_EXPRESSION), torch.eye(N_EXPRESSION), torch.zeros(len(yaws), N_EXPRESSION)])
    yaw = torch.tensor([0.0] * (1 + N_EXPRESSION) + [math.radians(y) for y in yaws], dtype=torch.float64)
    cams = orbit_camera(yaw, torch.zeros_like(yaw))
    cols = len(labels)
    images = heads.render([i for i in ids for _ in range(cols)], exprs.repeat(len(ids), 1), cams.repeat(len(ids), 1))
    return images.reshape(len(ids), cols, 3, config.resolution, config.resolution), labels


def save_sheet(images: torch.Tensor, labels: list[str], path: str) -> None:
    """Write a [rows, cols, 3, R, R] grid with a header row of labels as a PNG."""
    from PIL import Image, ImageDraw

    from export3d.utils.images import to_uint8

    rows, cols, _, res, _ = images.shape
    pad, head = 2, 14
    sheet = Image.new("RGB", (cols * (res + pad) + pad, head + rows * (res + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        draw.text((pad + c * (res + pad) + 2, 1), label, fill=(0, 0, 0))
    pixels = to_uint8(images)  # [rows, cols, R, R, 3]
    for r in range(rows):
        for c in range(cols):
            sheet.paste(Image.fromarray(pixels[r, c]), (pad + c * (res + pad), head + pad + r * (res + pad)))
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export3d.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--sheet", required=True, help="output PNG path of the contact sheet")
    parser.add_argument("--identities", type=int, default=6, help="rows (identities) on the sheet")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--supersample", type=int, default=2, help="antialiasing factor for the sheet")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # element-wise ops on small tensors: threads only add contention
    config = SyntheticConfig(seed=args.seed, resolution=args.resolution, supersample=args.supersample,
                             train_identities=max(args.identities, 1), test_identities=max(args.identities, 1))
    images, labels = contact_sheet(config, args.split, args.identities)
    save_sheet(images, labels, args.sheet)
    print(f"wrote {args.sheet}: {images.shape[0]} identities x {images.shape[1]} columns ({asdict(config)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
