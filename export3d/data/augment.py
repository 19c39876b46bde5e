"""Appearance augmentation that makes new people out of real frames (``--aug-flip``, ``--aug-hue``, ...).

A few dozen real people are too few for the generator to learn to carry a source's appearance into the tri-plane
instead of memorising the people it sees (issue 28). Each augmentation below changes who is in the picture while
keeping every frame's label exact, so a pair stays a valid reconstruction target. One draw of the parameters is
applied identically to every frame of an item (the source and the driving frame of a pair, all frames of a CLeBS
group), so the pair shows one new person:

- **flip** (probability ``flip``): the image mirrored left-right; the camera mirrored with it (the world's x -> -x:
  the cam2world matrix ``M`` becomes ``S M S`` with ``S = diag(-1, 1, 1, 1)``, and the principal point ``cx`` becomes
  ``1 - cx``, the skew ``-sk``), and the expression vector mirrored (each ``...Left`` blendshape swaps with its
  ``...Right`` partner, by the names the clip manifest lists). The flipped frame is exactly the frame of the
  mirrored person seen from the mirrored camera.
- **hue** (up to +-``hue`` degrees) and **colour** (saturation and per-channel gains, each within
  ``1 +- colour``): one 3 x 3 colour matrix on the [0, 1] pixels, clamped: skin, hair and background tones move
  together. Geometry, camera and expression are unchanged.
- **scale** (a zoom by ``s``, ``|log s| <= log(1 + scale)``): the image zoomed about its centre (bilinear, border
  pixels repeated past the edges when ``s < 1``) and the focal lengths and the principal point's offset from the
  centre multiplied by ``s``, which is exactly what a camera with ``s`` times the focal length sees.

Parameters are drawn from a ``torch.Generator`` the dataset seeds with ``(seed, epoch, index)``, so augmented batches
are as deterministic and resumable as plain ones. ``export3d.training.batches`` applies augmentation to clip folders
(real frames) only: synthetic heads come in unlimited identities with exact cross-identity targets already.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from export3d.data.heads import EXPRESSION_NAMES

MIRROR_SUFFIXES = (("Left", "Right"), ("_left", "_right"))  # ARKit / MediaPipe names, and the synthetic heads'
# S M S with S = diag(-1, 1, 1, 1) negates the entries of row 0 or column 0 that are off the diagonal (row-major 4 x 4)
_FLIP_SIGNS = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0])


def mirror_partner(name: str) -> str:
    """The name of the mirrored component: ``eyeBlinkLeft`` <-> ``eyeBlinkRight``; unpaired names map to themselves."""
    for left, right in MIRROR_SUFFIXES:
        if name.endswith(left):
            return name[: -len(left)] + right
        if name.endswith(right):
            return name[: -len(right)] + left
    return name


def mirror_permutation(names: Sequence[str]) -> list[int]:
    """``perm`` with ``mirrored[..., i] = beta[..., perm[i]]``: each Left / Right pair swapped, by name."""
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names):
        raise ValueError(f"expression names repeat: {sorted(n for n in index if list(names).count(n) > 1)}")
    missing = [n for n in names if mirror_partner(n) not in index]
    if missing:
        raise ValueError(f"expression {missing[0]!r} has no mirror partner {mirror_partner(missing[0])!r} among the "
                         "names, so a flip cannot mirror the expression vector")  # fmt: skip
    return [index[mirror_partner(n)] for n in names]


def flip_images(images: torch.Tensor) -> torch.Tensor:
    """Mirror ``[..., H, W]`` images left-right."""
    return images.flip(-1)


def mirror_camera(camera: torch.Tensor) -> torch.Tensor:
    """The camera of the mirrored world (x -> -x) seeing the mirrored image: ``[..., 25]`` EG3D cameras.

    cam2world ``M -> S M S`` (``S = diag(-1, 1, 1, 1)``, a world and a camera x-axis flip: a rigid matrix stays
    rigid), intrinsics ``cx -> 1 - cx``, ``sk -> -sk``. Its own inverse."""
    out = camera.clone()
    out[..., :16] = camera[..., :16] * _FLIP_SIGNS.to(camera)
    out[..., 17] = -camera[..., 17]  # skew
    out[..., 18] = 1 - camera[..., 18]  # cx
    return out


def colour_matrix(hue_degrees: float, saturation: float, gains: Sequence[float]) -> torch.Tensor:
    """``[3, 3]``: gains @ hue rotation about the grey axis @ saturation (a lerp toward each pixel's grey mean)."""
    theta = math.radians(hue_degrees)
    k = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    rotation = math.cos(theta) * torch.eye(3, dtype=torch.float64) + math.sin(theta) * cross \
        + (1 - math.cos(theta)) * torch.outer(k, k)  # fmt: skip
    grey = torch.full((3, 3), 1 / 3, dtype=torch.float64)
    sat = saturation * torch.eye(3, dtype=torch.float64) + (1 - saturation) * grey
    return (torch.diag(torch.tensor(list(gains), dtype=torch.float64)) @ rotation @ sat).float()


def apply_colour(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``[n, 3, H, W]`` in [-1, 1] -> the colour ``matrix`` applied to the [0, 1] pixels, clamped."""
    unit = (images + 1) / 2
    mixed = torch.einsum("ij,njhw->nihw", matrix.to(images), unit).clamp(0, 1)
    return mixed * 2 - 1


def zoom_images(images: torch.Tensor, s: float) -> torch.Tensor:
    """``[n, 3, H, W]`` zoomed by ``s`` about the image centre (bilinear; border pixels repeat past the edges)."""
    theta = torch.tensor([[1 / s, 0.0, 0.0], [0.0, 1 / s, 0.0]], dtype=images.dtype).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def zoom_camera(camera: torch.Tensor, s: float) -> torch.Tensor:
    """The camera that sees the image zoomed by ``s`` about its centre: fx, fy, skew and ``c - 0.5`` times ``s``."""
    out = camera.clone()
    out[..., [16, 17, 20]] = camera[..., [16, 17, 20]] * s
    out[..., [18, 21]] = 0.5 + (camera[..., [18, 21]] - 0.5) * s
    return out


@dataclass(frozen=True)
class AugmentParams:
    """One draw: applied identically to every frame of an item."""

    flip: bool
    hue: float  # degrees
    saturation: float
    gains: tuple[float, float, float]
    scale: float  # zoom factor s

    def is_identity(self) -> bool:
        return not self.flip and self.hue == 0 and self.saturation == 1 and self.gains == (1, 1, 1) and self.scale == 1


@dataclass(frozen=True)
class Augment:
    """The augmentation of one source: ``flip`` probability, ``hue`` degrees, ``colour`` and ``scale`` ranges (0:
    off), and ``mirror``, the expression permutation of a flip (:func:`mirror_permutation`; needed when flip > 0)."""

    flip: float = 0.0
    hue: float = 0.0
    colour: float = 0.0
    scale: float = 0.0
    mirror: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        checks = [(0 <= self.flip <= 1, f"--aug-flip is a probability in [0, 1], got {self.flip}"),
                  (0 <= self.hue <= 180, f"--aug-hue is in degrees, within [0, 180], got {self.hue}"),
                  (0 <= self.colour < 1, f"--aug-colour must be in [0, 1), got {self.colour}"),
                  (0 <= self.scale < 1, f"--aug-scale must be in [0, 1), got {self.scale}"),
                  (self.flip == 0 or self.mirror is not None,
                   "--aug-flip needs the names of the expression's components (to swap Left / Right)")]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def active(self) -> bool:
        return max(self.flip, self.hue, self.colour, self.scale) > 0

    def draw(self, g: torch.Generator) -> AugmentParams:
        """Parameters from ``g`` (always 7 numbers, whatever is switched on, so each setting's draws stay aligned)."""
        u = torch.rand(7, generator=g, dtype=torch.float64).tolist()
        signed = [2 * v - 1 for v in u]
        return AugmentParams(flip=u[0] < self.flip, hue=signed[1] * self.hue, saturation=1 + signed[2] * self.colour,
                             gains=tuple(1 + v * self.colour for v in signed[3:6]),
                             scale=math.exp(signed[6] * math.log1p(self.scale)))  # fmt: skip

    def __call__(self, data: dict[str, torch.Tensor], params: AugmentParams) -> dict[str, torch.Tensor]:
        """Frames of one item (``"image" [n, 3, H, W]``, ``"beta" [n, E]``, ``"camera" [n, 25]``, other keys kept)
        with ``params`` applied to all of them."""
        if params.is_identity():
            return data
        out = dict(data)
        image, camera, beta = data["image"], data["camera"], data["beta"]
        if params.flip:
            if self.mirror is None or len(self.mirror) != beta.shape[-1]:
                raise ValueError(f"--aug-flip: the expression vector has {beta.shape[-1]} components but the mirror "
                                 f"permutation has {None if self.mirror is None else len(self.mirror)}")  # fmt: skip
            image, camera, beta = flip_images(image), mirror_camera(camera), beta[..., list(self.mirror)]
            if "true_expression" in data:  # a synthetic export's true expression: blink_left <-> blink_right
                out["true_expression"] = data["true_expression"][..., mirror_permutation(EXPRESSION_NAMES)]
        if params.hue != 0 or params.saturation != 1 or params.gains != (1, 1, 1):
            image = apply_colour(image, colour_matrix(params.hue, params.saturation, params.gains))
        if params.scale != 1:
            image, camera = zoom_images(image, params.scale), zoom_camera(camera, params.scale)
        out.update(image=image, camera=camera, beta=beta)
        return out
