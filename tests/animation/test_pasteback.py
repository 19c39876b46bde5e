"""Paste-back inverts the crop: outside the mask the photo is untouched bit for bit, inside the crop lands in place."""

import numpy as np
import pytest

from export3d.animation.pasteback import FeatherEllipse, PasteBack
from export3d.data.crop import crop_frame

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage_data.astronaut()  # [512, 512, 3] uint8


def noise_crop(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def outside(paste: PasteBack) -> np.ndarray:
    """Photo pixels the mask leaves alone. # [H, W] bool"""
    keep = np.ones(paste.size, bool)
    x0, y0, x1, y1 = paste.region
    keep[y0:y1, x0:x1] = paste.mask[..., 0] == 0
    return keep


@pytest.mark.parametrize("box", [(130.0, 40.5, 230.0), (-60.3, -45.0, 300.0), (400.0, 380.0, 250.0)])
def test_pixels_outside_the_mask_are_the_photo_bit_for_bit(photo, box):
    paste = PasteBack(photo, box)
    frame = paste(noise_crop(256, 0))
    assert frame.shape == photo.shape and frame.dtype == np.uint8
    keep = outside(paste)
    assert np.array_equal(frame[keep], photo[keep])
    assert (frame[~keep] != photo[~keep]).any(axis=-1).mean() > 0.9  # the noise went in everywhere else
    x0, y0, x1, y1 = paste.region
    assert x0 >= 0 and y0 >= 0 and x1 <= 512 and y1 <= 512  # crops past the border: pasted where they overlap


def test_the_mask_is_one_on_the_face_and_zero_at_the_crop_edge(photo):
    paste = PasteBack(photo, (100.0, 50.0, 300.0))
    x0, y0, _, _ = paste.region
    mask = paste.mask[..., 0]
    assert mask[int(50 + 0.485 * 300) - y0, int(100 + 150) - x0] == 1.0  # the face centre
    assert mask.min() == 0.0 and 0 < mask[mask < 1].max() < 1  # a feathered edge
    ellipse = FeatherEllipse()
    u0, v0, u1, v1 = ellipse.bounds()
    assert 0 < u0 < u1 < 1 and 0 < v0 < v1 < 1  # the mask never reaches outside the rendered crop
    assert ellipse(np.array([0.5, 0.5 + 0.33 * 1.125]), np.array([0.485, 0.485])).tolist() == pytest.approx([1, 0.5])


@pytest.mark.parametrize("size", [256, 230, 96])
def test_a_crop_of_the_photo_goes_back_where_it_came_from(photo, size):
    box = (131.3, 42.7, 230.0)
    crop = crop_frame(photo, np.array(box[:2]), box[2], size)
    inside = lambda p: p.mask[..., 0] == 1  # noqa: E731 - where the output is the crop alone
    err = {}
    for shift in (0.0, 2.0):
        paste = PasteBack(photo, (box[0] + shift, box[1], box[2]))
        x0, y0, x1, y1 = paste.region
        frame = paste(crop).astype(np.float64)
        err[shift] = np.abs(frame[y0:y1, x0:x1] - photo[y0:y1, x0:x1])[inside(paste)].mean()
    limit = {256: 3.0, 230: 3.0, 96: 8.0}[size]  # a crop smaller than the box has lost detail
    assert err[0.0] < limit and err[2.0] > err[0.0] + 1.0  # in place: a 2 px shift is clearly worse


def test_a_crop_reaching_past_the_border_goes_back_too(photo):
    box = np.array([-40.0, -60.0, 260.0])
    crop = crop_frame(photo, box[:2], float(box[2]), 260)  # prepare mirrors the photo outside it
    paste = PasteBack(photo, box)
    x0, y0, x1, y1 = paste.region
    assert x0 == 0 and y0 == 0
    diff = np.abs(paste(crop).astype(np.float64) - photo)[y0:y1, x0:x1][paste.mask[..., 0] == 1]
    assert diff.mean() < 3.0


def test_large_photos_are_scaled_to_max_size(photo):
    big = np.ascontiguousarray(np.repeat(np.repeat(photo, 3, 0), 3, 1))  # [1536, 1536, 3]
    wide = np.ascontiguousarray(big[:1000])  # [1000, 1536, 3]: the longer side is the width
    paste = PasteBack(wide, (390.0, 120.0, 690.0), max_size=768)
    assert paste.size == (500, 768) and paste.photo.shape == (500, 768, 3)
    assert np.allclose(paste.box, [195.0, 60.0, 345.0])
    assert paste(noise_crop(128, 1)).shape == (500, 768, 3)
    assert PasteBack(photo, (0.0, 0.0, 100.0), max_size=1280).size == (512, 512)  # small photos stay as they are
    assert PasteBack(big, (0.0, 0.0, 100.0), max_size=None).size == (1536, 1536)


def test_a_crop_space_mask_image_is_placed_like_the_crop(photo):
    ones = np.ones((64, 64), np.float32)
    paste = PasteBack(photo, (100.0, 120.0, 200.0), mask=ones)
    assert paste.region == (100, 120, 300, 320)
    frame = paste(np.zeros((64, 64, 3), np.uint8))
    assert (frame[120:320, 100:300] == 0).all()
    keep = np.ones((512, 512), bool)
    keep[120:320, 100:300] = False
    assert np.array_equal(frame[keep], photo[keep])
    with pytest.raises(ValueError, match="mask"):
        PasteBack(photo, (100.0, 120.0, 200.0), mask=np.ones((64, 32), np.float32))


def test_a_box_off_the_photo_leaves_it_unchanged_and_errors_name_the_argument(photo):
    assert np.array_equal(PasteBack(photo, (900.0, 900.0, 100.0))(noise_crop(64, 2)), photo)
    paste = PasteBack(photo, (100.0, 100.0, 200.0))
    with pytest.raises(ValueError, match="crop"):
        paste(noise_crop(64, 3)[:, :32])
    with pytest.raises(ValueError, match="crop"):
        paste(noise_crop(64, 3).astype(np.float32))
    with pytest.raises(ValueError, match="box"):
        PasteBack(photo, (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="photo"):
        PasteBack(photo[..., 0], (0.0, 0.0, 10.0))
