"""Image loading: odd formats are converted correctly, oversized or broken files are named errors (issue 13 #6)."""

import numpy as np
import pytest
import torch
from PIL import Image

from export3d.utils.images import load_image


def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 16).round().astype(np.uint16), (16, 1))  # black -> white, left to right
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode.startswith("I")  # what PIL makes of a 16-bit greyscale PNG
    image = load_image(tmp_path / "grey16.png", 16)
    assert image.shape == (3, 16, 16) and torch.equal(image[0], image[2])
    row = image[0, 8]
    assert row[0] < -0.95 and row[-1] > 0.95 and abs(float(row[7:9].mean())) < 0.1
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "grey8.png")
    torch.testing.assert_close(image, load_image(tmp_path / "grey8.png", 16), atol=2 / 127.5, rtol=0)


def test_an_image_over_pils_pixel_limit_is_a_named_error(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2x the limit: PIL's bomb error
    with pytest.raises(ValueError, match=r"image: .*big.png is too large"):
        load_image(tmp_path / "big.png", 32)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read .*junk.png"):
        load_image(tmp_path / "junk.png", 32)
