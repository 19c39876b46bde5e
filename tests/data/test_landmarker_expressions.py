"""``--expression-source landmarker``: faceless frames filled from their clip, the table cached on disk and
served as the 52-d beta by every dataset view, bad settings refused."""

import numpy as np
import pytest
import torch

from export3d.data import CrossIdentityTriples, ReconstructionPairs, SyntheticClips, SyntheticConfig, expressions
from export3d.data.expressions import fill_missing
from export3d.training.config import TrainConfig


def test_faceless_frames_take_their_clips_interpolated_expression():
    table = np.zeros((3, 5, 2), np.float32)
    table[0, :, 0] = [0.0, 9.0, 0.4, 9.0, 0.8]  # frames 1 and 3 have no face (their values are garbage)
    table[1, :, 1] = 0.5
    found = np.ones((3, 5), bool)
    found[0, [1, 3]] = False
    found[2] = False  # a clip without any face
    filled, empty = fill_missing(table, found)
    np.testing.assert_allclose(filled[0, :, 0], [0.0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_array_equal(filled[1], table[1])
    np.testing.assert_allclose(filled[2], np.broadcast_to(table[found].mean(0), (5, 2)))  # the split's mean
    assert empty == 1
    found[0, 0], found[0, 4] = False, False  # ends: held at the nearest frame with a face
    np.testing.assert_allclose(fill_missing(table, found)[0][0, :, 0], [0.4] * 5)
    with pytest.raises(ValueError, match="no face in any frame"):
        fill_missing(table, np.zeros((3, 5), bool))


def test_the_cached_table_is_the_beta_of_every_view(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPORT3D_CACHE", str(tmp_path))
    cfg = SyntheticConfig(resolution=32, train_identities=1, test_identities=2, clips_per_identity=1,
                          frames_per_clip=3, expression_source="landmarker")  # fmt: skip
    fake = np.arange(2 * 3 * 52, dtype=np.float32).reshape(2, 3, 52) / 1000
    found = np.ones((2, 3), bool)
    found[1, 1] = False
    calls = []
    monkeypatch.setattr(expressions, "compute_table", lambda clips, **kw: calls.append(clips.split) or (fake, found))
    source = SyntheticClips(cfg, "test")
    assert source.expression_dim == 52
    table = source.expression_table()
    assert calls == ["test"] and list(tmp_path.glob("landmarker-*.npz")) == [expressions.cache_path(source)]
    torch.testing.assert_close(table[1, 1], torch.from_numpy((fake[1, 0] + fake[1, 2]) / 2))  # filled, not zero
    again = SyntheticClips(cfg, "test").expression_table()  # read back from the cache: no second computation
    assert calls == ["test"] and torch.equal(again, table)
    pair = ReconstructionPairs(source)[4]  # clip 1, driving frame 1
    torch.testing.assert_close(pair["beta"], table[1, 1])
    triple = CrossIdentityTriples(source, length=1)[0]
    assert triple["beta"].shape == (52,) and any(torch.equal(triple["beta"], row) for row in table.reshape(-1, 52))
    other = SyntheticConfig(resolution=32, train_identities=1, test_identities=2, clips_per_identity=1,
                            frames_per_clip=3, expression_source="landmarker", beta_noise=0.5)  # fmt: skip
    path = expressions.cache_path(source)
    assert expressions.cache_path(SyntheticClips(other, "test")) == path  # the same frames
    bigger = SyntheticConfig(resolution=64, train_identities=1, test_identities=2, clips_per_identity=1,
                             frames_per_clip=3, expression_source="landmarker")  # fmt: skip
    assert expressions.cache_path(SyntheticClips(bigger, "test")) != path
    assert expressions.cache_path(SyntheticClips(cfg, "train")) != path


def test_unknown_expression_sources_are_refused():
    with pytest.raises(ValueError, match="--expression-source must be one of"):
        SyntheticConfig(expression_source="3dmm")
    with pytest.raises(ValueError, match="--expression-source must be one of"):
        TrainConfig(expression_source="blendshapes")
