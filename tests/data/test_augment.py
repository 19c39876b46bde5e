"""Appearance augmentation (issue 28): flips mirror the camera and the blendshapes exactly, colours and zooms keep
the labels true, and one seeded draw is applied identically to the source and the driving frame of a pair."""

import math

import pytest
import torch

from export3d.cameras import orbit_camera
from export3d.data import ReconstructionPairs, SyntheticClips, SyntheticConfig, raycast
from export3d.data.augment import (
    Augment,
    AugmentParams,
    apply_colour,
    colour_matrix,
    flip_images,
    mirror_camera,
    mirror_permutation,
    zoom_camera,
    zoom_images,
)
from export3d.data.heads import EXPRESSION_NAMES
from export3d.data.synthetic import SyntheticHeads

NAMES = ["_neutral", "browDownLeft", "browDownRight", "browInnerUp", "eyeBlinkLeft", "eyeBlinkRight", "jawLeft",
         "jawOpen", "jawRight", "mouthSmileLeft", "mouthSmileRight"]  # a few of MediaPipe's 52, in its order
FLIP = AugmentParams(flip=True, hue=0.0, saturation=1.0, gains=(1.0, 1.0, 1.0), scale=1.0)


def _frames(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    yaw, pitch = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5 for _ in range(2))
    camera = orbit_camera(yaw, pitch)
    camera[:, 17] = 0.01  # a skew and an off-centre principal point, so that the intrinsics' flip is checked too
    camera[:, 18] = 0.47
    return {"image": torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, "camera": camera,
            "beta": torch.rand(n, len(NAMES), generator=g)}  # fmt: skip


def test_blendshape_pairs_swap_by_name_and_unpaired_names_are_refused():
    perm = mirror_permutation(NAMES)
    mirrored = [NAMES[i] for i in perm]
    assert mirrored == ["_neutral", "browDownRight", "browDownLeft", "browInnerUp", "eyeBlinkRight", "eyeBlinkLeft",
                        "jawRight", "jawOpen", "jawLeft", "mouthSmileRight", "mouthSmileLeft"]  # fmt: skip
    beta = torch.arange(len(NAMES), dtype=torch.float32)[None]
    assert beta[:, perm][0, NAMES.index("eyeBlinkLeft")] == NAMES.index("eyeBlinkRight")
    assert [EXPRESSION_NAMES[i] for i in mirror_permutation(EXPRESSION_NAMES)] == \
        ["jaw_open", "smile", "blink_right", "blink_left", "brow_raise", "lip_pucker"]  # fmt: skip
    with pytest.raises(ValueError, match="'cheekSquintLeft' has no mirror partner 'cheekSquintRight'"):
        mirror_permutation(["jawOpen", "cheekSquintLeft"])


def test_a_flip_applied_twice_is_the_identity():
    data = _frames()
    augment = Augment(flip=1.0, mirror=tuple(mirror_permutation(NAMES)))
    once = augment(data, FLIP)
    assert not torch.equal(once["image"], data["image"]) and not torch.equal(once["beta"], data["beta"])
    assert not torch.equal(once["camera"], data["camera"])
    twice = augment(once, FLIP)
    for key in ("image", "camera", "beta"):
        torch.testing.assert_close(twice[key], data[key], rtol=0, atol=1e-7)
    rotation = once["camera"][:, :16].reshape(-1, 4, 4)[:, :3, :3]  # the mirrored camera is still rigid
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(3, dtype=rotation.dtype))
    torch.testing.assert_close(once["camera"][:, 18], 1 - data["camera"][:, 18])


def test_a_flipped_synthetic_frame_is_the_mirrored_head_from_the_mirrored_camera(monkeypatch):
    """The flipped frame's camera is the orbit camera of the mirrored pose (yaw -> -yaw) exactly, and the generator's
    render of the mirrored head (blinks swapped, key light mirrored) matches the flipped image closely."""
    heads = SyntheticHeads(SyntheticConfig(resolution=64))
    yaw, pitch = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.1, -0.15], dtype=torch.float64)
    camera = orbit_camera(yaw, pitch)
    torch.testing.assert_close(mirror_camera(camera), orbit_camera(-yaw, pitch), rtol=0, atol=1e-7)
    expression = torch.tensor([[0.2, 0.5, 1.0, 0.0, 0.3, 0.1], [0.6, 0.0, 0.0, 0.8, 0.2, 0.5]])
    image = heads.render([3, 5], expression, camera)
    flipped = flip_images(image)
    mirrored_expression = expression[:, mirror_permutation(EXPRESSION_NAMES)]
    light = raycast.LIGHT
    monkeypatch.setattr(raycast, "LIGHT", (-light[0], light[1], light[2]))
    mirrored = heads.render([3, 5], mirrored_expression, mirror_camera(camera))
    # measured: 0.012 mean absolute difference (of 2), against 0.12 between the flipped image and the unflipped frame
    assert (flipped - mirrored).abs().mean() < 0.02
    assert (flipped - image).abs().mean() > 5 * (flipped - mirrored).abs().mean()


def test_a_zoom_is_the_view_of_the_camera_with_the_scaled_focal_length():
    heads = SyntheticHeads(SyntheticConfig(resolution=64))
    camera = orbit_camera(torch.tensor([0.2], dtype=torch.float64), torch.tensor([0.05], dtype=torch.float64))
    expression = torch.full((1, 6), 0.3)
    image = heads.render([2], expression, camera)
    zoomed = zoom_images(image, 1.1)
    truth = heads.render([2], expression, zoom_camera(camera, 1.1))
    # measured: 0.027 (bilinear resampling) against 0.082 for the unzoomed frame
    assert (zoomed - truth).abs().mean() < 0.04 < (image - truth).abs().mean()
    torch.testing.assert_close(zoom_camera(zoom_camera(camera, 1.1), 1 / 1.1), camera)
    torch.testing.assert_close(zoom_images(image, 1.0), image, rtol=0, atol=1e-5)


def test_colour_matrix_keeps_greys_and_rotates_hue():
    torch.testing.assert_close(colour_matrix(0.0, 1.0, (1.0, 1.0, 1.0)), torch.eye(3))
    # a 120 degree rotation about the grey axis moves red to green, green to blue
    torch.testing.assert_close(colour_matrix(120.0, 1.0, (1, 1, 1)), torch.eye(3)[[2, 0, 1]], rtol=0, atol=1e-6)
    grey = torch.full((1, 3, 4, 4), 0.2)
    torch.testing.assert_close(apply_colour(grey, colour_matrix(37.0, 0.6, (1, 1, 1))), grey)
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    out = apply_colour(image, colour_matrix(15.0, 1.3, (1.2, 0.9, 1.1)))
    assert out.min() >= -1 and out.max() <= 1 and not torch.allclose(out, image)


def test_pairs_share_one_seeded_draw_and_epochs_draw_anew():
    source = SyntheticClips(SyntheticConfig(train_identities=2, clips_per_identity=1, frames_per_clip=4,
                                            resolution=16), "train")  # fmt: skip
    plain = ReconstructionPairs(source, seed=3)
    every = Augment(flip=1.0, mirror=tuple(range(64)))  # always flipped (beta's 64 entries have no names: kept)
    flipped = ReconstructionPairs(source, seed=3, augment=every)
    a, b = plain[1], flipped[1]
    for key in ("source", "driving"):
        torch.testing.assert_close(b[key], flip_images(a[key]))  # the source and the driving frame alike
    torch.testing.assert_close(b["camera"], mirror_camera(a["camera"]))
    torch.testing.assert_close(b["source_camera"], mirror_camera(a["source_camera"]))
    both = ReconstructionPairs(source, seed=3, augment=Augment(flip=0.5, hue=30.0, colour=0.2, scale=0.1,
                                                               mirror=tuple(range(64))))  # fmt: skip
    first = [both[i]["driving"] for i in range(len(both))]
    assert all(torch.equal(x, both[i]["driving"]) for i, x in enumerate(first))  # a pure function of the index
    both.set_epoch(1)
    assert any(not torch.equal(x, both[i]["driving"]) for i, x in enumerate(first))  # a new draw each epoch


def test_augment_settings_are_checked_by_flag_name():
    for kwargs, flag in (({"flip": 1.5}, "--aug-flip"), ({"hue": 200.0}, "--aug-hue"), ({"colour": 1.0},
                         "--aug-colour"), ({"scale": -0.1}, "--aug-scale"), ({"flip": 0.5}, "--aug-flip needs")):
        with pytest.raises(ValueError, match=flag):
            Augment(**kwargs)
    draw = Augment(hue=10.0, colour=0.1, scale=0.05).draw(torch.Generator().manual_seed(0))
    assert not draw.flip and abs(draw.hue) <= 10 and 0.9 <= draw.saturation <= 1.1
    assert abs(math.log(draw.scale)) <= math.log(1.05) + 1e-12
