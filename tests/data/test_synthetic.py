"""Determinism, splits and configuration of the synthetic generator."""

import pytest
import torch

from export3d.data import (
    TEST_IDENTITY_OFFSET,
    FrameKey,
    SyntheticConfig,
    SyntheticHeads,
)

KEYS = [FrameKey(0, 0, 0), FrameKey(1, 2, 17), FrameKey(3, 1, 40)]


def _frames(seed: int, keys=KEYS) -> dict[str, torch.Tensor]:
    return SyntheticHeads(SyntheticConfig(seed=seed, resolution=32)).frames(keys)


def test_same_call_same_tensors():
    a, b = _frames(0), _frames(0)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_different_seed_different_tensors():
    a, b = _frames(0), _frames(1)
    for k in ("image", "beta", "camera", "true_expression"):
        assert not torch.equal(a[k], b[k]), k


def test_frame_does_not_depend_on_its_batch():
    heads = SyntheticHeads(SyntheticConfig(resolution=32))
    batch = heads.frames(KEYS)
    for i, key in enumerate(KEYS):
        alone = heads.frames([key])
        for k in batch:
            assert torch.equal(alone[k][0], batch[k][i]), (key, k)


def test_global_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    _frames(0)
    assert torch.equal(torch.rand(4), expected)


def test_train_and_test_identities_are_disjoint():
    cfg = SyntheticConfig(train_identities=40, test_identities=10)
    train, test = set(cfg.identities("train")), set(cfg.identities("test"))
    assert len(train) == 40 and len(test) == 10 and not train & test
    assert min(test) >= TEST_IDENTITY_OFFSET > max(train)
    heads = SyntheticHeads(cfg)
    app_train, app_test = heads.appearance(sorted(train)), heads.appearance(sorted(test))
    assert torch.cdist(app_train, app_test).min() > 0.1  # no test person looks like a train person


def test_images_and_values_are_in_range():
    f = _frames(0)
    assert f["image"].shape == (3, 3, 32, 32) and f["image"].dtype == torch.float32
    assert f["image"].min() >= -1 and f["image"].max() <= 1
    assert f["true_expression"].min() >= 0 and f["true_expression"].max() <= 1
    assert f["beta"].shape == (3, 64) and f["camera"].shape == (3, 25)


def test_expression_trajectories_are_smooth_and_cover_the_range():
    heads = SyntheticHeads(SyntheticConfig())
    e = heads.expression([FrameKey(i, c, f) for i in range(6) for c in range(2) for f in range(64)]).reshape(12, 64, 6)
    step = (e[:, 1:] - e[:, :-1]).abs().amax((0, 1))  # [6] largest change between consecutive frames (25 fps)
    assert (step[[0, 1, 4, 5]] < 0.2).all() and (step[2:4] < 0.7).all()  # blinks are quick, nothing jumps
    assert (e.amax((0, 1)) > 0.9).all() and (e.amin((0, 1)) < 0.1).all()  # every component reaches both ends
    assert (e.std(1).mean(0) > 0.05).all()  # and moves within a clip


@pytest.mark.parametrize("field, value", [("resolution", 0), ("frames_per_clip", 0), ("beta_noise", -1.0),
                                          ("max_yaw_deg", 95.0), ("train_identities", -1)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        SyntheticConfig(**{field: value})


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="split"):
        SyntheticConfig().identities("val")
