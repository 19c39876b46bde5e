"""The three dataset uses on the synthetic source: keys, shapes, sampling rules, batching, ground truth."""

import pytest
import torch
from torch.utils.data import DataLoader

from export3d.data import (
    ContrastiveGroups,
    CrossIdentityTriples,
    FrameKey,
    ReconstructionPairs,
    SyntheticClips,
    SyntheticConfig,
)

CFG = SyntheticConfig(resolution=32, train_identities=3, test_identities=2, clips_per_identity=2, frames_per_clip=12)


@pytest.fixture(scope="module")
def source() -> SyntheticClips:
    return SyntheticClips(CFG, "train")


def test_reconstruction_pairs(source):
    ds = ReconstructionPairs(source, seed=3)
    assert len(ds) == 3 * 2 * 12
    item = ds[17]
    shapes = {k: tuple(v.shape) for k, v in item.items()}
    assert shapes == {"source": (3, 32, 32), "driving": (3, 32, 32), "beta": (64,), "camera": (25,),
                      "source_beta": (64,), "source_camera": (25,), "identity": (), "clip": (), "source_frame": (),
                      "driving_frame": (), "true_expression": (6,)}
    assert int(item["clip"]) == 1 and int(item["driving_frame"]) == 5  # index 17 = clip 1, frame 5
    assert int(item["source_frame"]) != 5
    key = source.key(1, 5)
    torch.testing.assert_close(item["driving"], source.heads.frames([key])["image"][0], rtol=0, atol=0)
    torch.testing.assert_close(item["beta"], source.heads.beta([key])[0], rtol=0, atol=0)
    assert not torch.equal(item["source"], item["driving"])


def test_pairs_are_deterministic_and_change_with_the_epoch(source):
    ds = ReconstructionPairs(source, seed=3)
    indices = [0, 13, 30, 51, 70]

    def source_frames():
        return [int(item["source_frame"]) for item in ds.__getitems__(indices)]

    first = source_frames()
    assert first == source_frames()
    ds.set_epoch(1)
    assert first != source_frames()


def test_dataloader_batches_through_getitems(source):
    ds = ReconstructionPairs(source)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["source"].shape == (4, 3, 32, 32) and batch["beta"].shape == (4, 64)
    assert batch["identity"].dtype == torch.int64
    singles = [ds[i] for i in range(4)]
    assert torch.equal(batch["driving"], torch.stack([s["driving"] for s in singles]))  # batch == one by one


def test_contrastive_groups(source):
    ds = ContrastiveGroups(source, k=5, groups_per_clip=2)
    assert len(ds) == 6 * 2
    item = ds[3]
    assert item["images"].shape == (6, 3, 32, 32) and item["beta"].shape == (6, 64)
    assert item["camera"].shape == (6, 25) and item["true_expression"].shape == (6, 6)
    frames = item["frames"]
    assert len(set(frames.tolist())) == 6 and torch.equal(frames, frames.sort().values)
    assert int(item["clip"]) == 1
    # Every frame of a group shares the identity: the betas differ only through expression and noise.
    ident = source.clips[1].identity
    keys = [FrameKey(ident, 1, f) for f in frames.tolist()]
    torch.testing.assert_close(item["beta"], source.heads.beta(keys), rtol=0, atol=0)


def test_contrastive_k_larger_than_clip_is_a_clear_error(source):
    with pytest.raises(ValueError, match="k = 12 needs clips of at least 13 frames"):
        ContrastiveGroups(source, k=12)


def test_cross_identity_triples_have_exact_ground_truth(source):
    ds = CrossIdentityTriples(source, length=5, seed=1)
    assert len(ds) == 5
    for item in ds.__getitems__(range(5)):
        a, b = int(item["identity"]), int(item["driving_identity"])
        assert a != b
        target = source.heads.render([a], item["true_expression"][None], item["camera"][None])[0]
        assert torch.equal(item["target"], target)  # A with B's true expression from B's camera
        driving = source.heads.render([b], item["true_expression"][None], item["camera"][None])[0]
        assert torch.equal(item["driving"], driving)
        assert not torch.equal(item["target"], item["driving"])
    with pytest.raises(IndexError):
        ds[5]


def test_cross_identity_needs_synthetic_source_and_two_identities():
    one = SyntheticClips(SyntheticConfig(resolution=32, train_identities=1, frames_per_clip=4), "train")
    with pytest.raises(ValueError, match="at least 2 identities"):
        CrossIdentityTriples(one)
    with pytest.raises(TypeError, match="SyntheticClips"):
        CrossIdentityTriples(object())
