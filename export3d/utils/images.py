"""Image I/O shared by training, evaluation and animation: tensors in [-1, 1] <-> PNG files and grids; photos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from export3d.utils.outputs import replacing_file


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` in [-1, 1] -> uint8 ``[..., H, W, 3]`` (rounded to nearest), e.g. for PIL or a video."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` in [-1, 1] (the exact inverse of :func:`to_uint8` on its
    outputs)."""
    return torch.from_numpy(np.array(array, copy=True)).movedim(-1, -3).float() / 127.5 - 1  # a writable copy


def make_grid(rows: list[torch.Tensor], size: int | None = None, pad: int = 2) -> torch.Tensor:
    """Stack columns side by side: ``rows`` is a list of ``[B, 3, h_i, w_i]`` columns -> ``[3, H, W]`` grid.

    Every image is resized (bilinear, antialiased) to ``size`` (default: the largest height) so that
    raw renders sit next to full-resolution images. Padding is white.
    """
    if not rows:
        raise ValueError("make_grid: no columns given")
    size = size or max(c.shape[-2] for c in rows)
    cols = [F.interpolate(c.detach().float().cpu(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False) if c.shape[-1] != size else c.detach().float().cpu()
            for c in rows]  # fmt: skip
    B = cols[0].shape[0]
    canvas = torch.ones(3, B * (size + pad) + pad, len(cols) * (size + pad) + pad)
    for j, col in enumerate(cols):
        for i in range(B):
            y, x = pad + i * (size + pad), pad + j * (size + pad)
            canvas[:, y : y + size, x : x + size] = col[i, :3]
    return canvas


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save ``[3, H, W]`` in [-1, 1] as PNG (written to a temp file, then renamed)."""
    path = Path(path)
    with replacing_file(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
    return path


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Read any common image (RGB, RGBA, greyscale, palette), centre-crop to a square, resize -> ``[3, size, size]``.

    RGBA is composited on white; 16-bit greyscale (PIL modes ``I;16*`` / ``I``) is scaled from [0, 65535].
    Raises ``ValueError`` naming the file when it cannot be read or is larger than PIL's pixel limit.
    """
    return centre_square(open_rgb(path), size)


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """A photo as it is meant to be seen -> RGB uint8 ``[H, W, 3]``: EXIF orientation applied, any colour mode.

    Cameras store portrait shots sideways with an EXIF Orientation tag; a face detector given the stored pixels
    sees a face lying on its side. Colour modes as :func:`load_image` (RGBA on white, 16-bit grey scaled);
    ``FileNotFoundError`` / ``ValueError`` naming the file.
    """
    return np.asarray(open_rgb(path, upright=True, what="photo"))


def open_rgb(path: str | os.PathLike, upright: bool = False, what: str = "image") -> Image.Image:
    """Any common image file as an RGB PIL image; ``upright``: with its EXIF orientation applied.

    ``what`` starts the error messages (the argument the file came from).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if upright:
                im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode == "I":  # PIL's RGB conversion would clip these to white
                wide = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
            elif im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.new("RGB", rgba.size, (255, 255, 255))
                im.paste(rgba, mask=rgba.getchannel("A"))
            else:
                im = im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{what}: {path} is too large ({exc}); crop or downscale it first") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{what}: cannot read {path} as an image ({exc})") from exc
    return im


def centre_square(im: Image.Image, size: int) -> torch.Tensor:
    """The largest centred square of an RGB image, resized (Lanczos) -> ``[3, size, size]`` in [-1, 1]."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    return from_uint8(np.asarray(im))
