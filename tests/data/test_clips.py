"""On-disk clip format: exact round trip of a synthetic export, and clear errors on bad data."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export3d.data import (
    ClipFolder,
    ClipFormatError,
    ContrastiveGroups,
    ReconstructionPairs,
    SyntheticClips,
    SyntheticConfig,
    export_synthetic,
)
from export3d.utils.images import from_uint8, to_uint8

CFG = SyntheticConfig(resolution=32, train_identities=2, test_identities=1, clips_per_identity=1, frames_per_clip=5)
CLIP = "train/id0000000_clip00"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    export_synthetic(CFG, root)
    return root


@pytest.fixture
def dataset(exported, tmp_path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(exported, root)
    return root


def _assert_items_equal(synthetic_items, folder_items):
    for a, b in zip(synthetic_items, folder_items, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            expected = from_uint8(to_uint8(a[k])) if k in ("source", "driving", "images") else a[k]
            assert torch.equal(expected, b[k]), k


def test_round_trip_gives_identical_tensors(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert [(c["split"], c["identity"], c["frames"]) for c in manifest["clips"]] == [
        ("train", 0, 5), ("train", 1, 5), ("test", 1_000_000, 5)]
    for split in ("train", "test"):
        synthetic, folder = SyntheticClips(CFG, split), ClipFolder(exported, split)
        assert folder.clips == synthetic.clips and folder.resolution == 32
        n = len(ReconstructionPairs(synthetic))
        _assert_items_equal(ReconstructionPairs(synthetic, seed=4).__getitems__(range(n)),
                            ReconstructionPairs(folder, seed=4).__getitems__(range(n)))
        _assert_items_equal(ContrastiveGroups(synthetic, k=3).__getitems__([0]),
                            ContrastiveGroups(folder, k=3).__getitems__([0]))
    assert len(ClipFolder(exported).clips) == 3  # no split: everything


def test_mp4_clips_load_close_to_the_original(tmp_path):
    cfg = SyntheticConfig(resolution=32, train_identities=2, clips_per_identity=1, frames_per_clip=4)
    export_synthetic(cfg, tmp_path, splits=("train",), video=True)
    assert (tmp_path / CLIP / "frames.mp4").is_file() and not list((tmp_path / CLIP).glob("*.png"))
    folder = ClipFolder(tmp_path, "train")
    got = folder.load([(0, [0, 3])])[0]
    want = SyntheticClips(cfg, "train").load([(0, [0, 3])])[0]
    assert got["image"].shape == (2, 3, 32, 32)
    assert (got["image"] - want["image"]).abs().mean() < 0.08  # lossy codec, same frames
    assert torch.equal(got["beta"], want["beta"])


def test_string_identities_are_mapped_to_integers(dataset):
    meta = json.loads((dataset / "manifest.json").read_text())
    for clip, name in zip(meta["clips"], ("bob", "alice", "carol"), strict=True):
        clip["identity"] = name
    (dataset / "manifest.json").write_text(json.dumps(meta))
    assert [c.identity for c in ClipFolder(dataset).clips] == [1, 0, 2]  # sorted: alice, bob, carol


def _rewrite_params(root: Path, **changes) -> Path:
    path = root / CLIP / "params.npz"
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays.update(changes)
    np.savez(path, **arrays)
    return path


def _params(root: Path) -> dict[str, np.ndarray]:
    with np.load(root / CLIP / "params.npz") as npz:
        return dict(npz)


def _nan(root):
    e = _params(root)["expression"]
    e[2, 7] = np.nan
    return _rewrite_params(root, expression=e)


def _not_rigid(root):
    c = _params(root)["camera"]
    c[1, 0] = 2.0
    return _rewrite_params(root, camera=c)


def _resize_frame(root, size):
    path = root / CLIP / "00001.png"
    Image.new("RGB", size).save(path)
    return path


def _remove(path: Path) -> Path:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_DATA = {
    "missing manifest": (lambda r: _remove(r / "manifest.json"), "manifest not found"),
    "manifest not json": (lambda r: _write(r / "manifest.json", b"{clips: ["), "not valid JSON"),
    "manifest entry without frames": (
        lambda r: _write(r / "manifest.json", json.dumps({"clips": [{"clip": CLIP, "identity": 0, "split": "train"}]})
                         .encode()), "'frames'"),
    "missing clip folder": (lambda r: _remove(r / CLIP), "does not exist"),
    "missing params": (lambda r: _remove(r / CLIP / "params.npz"), "missing params.npz"),
    "corrupt params": (lambda r: _write(r / CLIP / "params.npz", b"not a zip"), "not an .npz archive"),
    "truncated params": (lambda r: _write(r / CLIP / "params.npz", (r / CLIP / "params.npz").read_bytes()[:300]),
                         "cannot read: truncated or damaged"),  # issue 13 #6: a traceback or a misleading message
    "missing frames": (lambda r: _remove(r / CLIP / "00003.png") and r / CLIP, "missing frames: found 4 image files"),
    "no frames at all": (lambda r: [_remove(p) for p in (r / CLIP).glob("*.png")] and r / CLIP, "no frames"),
    "wrong expression width": (
        lambda r: _rewrite_params(r, expression=_params(r)["expression"][:, :63]), r"shape \[T, 64\], got \[5, 63\]"),
    "wrong camera width": (
        lambda r: _rewrite_params(r, camera=_params(r)["camera"][:, :24]), r"shape \[T, 25\], got \[5, 24\]"),
    "integer params": (
        lambda r: _rewrite_params(r, expression=_params(r)["expression"].astype(np.int32)), "must be a float array"),
    "nan": (_nan, "NaN/inf values in 1 rows \\(first: row 2\\)"),
    "frame/param count mismatch": (
        lambda r: _rewrite_params(r, expression=_params(r)["expression"][:4], camera=_params(r)["camera"][:4]),
        "frame/param count mismatch: 'expression' has 4 rows"),
    "missing camera array": (
        lambda r: np.savez(r / CLIP / "params.npz", expression=_params(r)["expression"]) or r / CLIP / "params.npz",
        "missing array 'camera'"),
    "camera not rigid": (_not_rigid, "not a rigid cam2world"),
    "zero intrinsics": (lambda r: _rewrite_params(r, camera=np.concatenate([_params(r)["camera"][:, :16],
                                                                            np.zeros((5, 9), np.float32)], 1)),
                        r"'camera' row 0 has intrinsics .* fx or fy <= 0"),
    "wrong image size": (lambda r: _resize_frame(r, (16, 16)), "wrong image size: 16x16, expected 32x32"),
    "non-square image": (lambda r: _resize_frame(r, (32, 30)), "must be square"),
    "corrupt image": (lambda r: _write(r / CLIP / "00001.png", b"garbage"), "cannot read image"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_raises_an_error_naming_the_file(dataset, case):
    corrupt, problem = BAD_DATA[case]
    path = corrupt(dataset)
    with pytest.raises(ClipFormatError, match=problem) as err:
        ClipFolder(dataset)
    assert str(err.value).startswith(f"{path}: "), str(err.value)
    assert err.value.path == path


def test_wrong_resolution_against_the_request(dataset):
    with pytest.raises(ClipFormatError, match="expected 64x64") as err:
        ClipFolder(dataset, resolution=64)
    assert str(dataset / CLIP / "00000.png") in str(err.value)


def test_write_clip_is_all_or_nothing(tmp_path, monkeypatch):
    from export3d.data import clips

    images, beta, camera = torch.zeros(3, 3, 8, 8), torch.zeros(3, 64), torch.zeros(3, 25)
    clips.write_clip(tmp_path / "clip", images + 0.5, beta, camera)
    before = sorted(p.name for p in (tmp_path / "clip").iterdir())

    def broken_savez(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing the replacement

    monkeypatch.setattr(clips.np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        clips.write_clip(tmp_path / "clip", images - 0.5, beta, camera)
    with pytest.raises(KeyboardInterrupt):
        clips.write_clip(tmp_path / "new_clip", images, beta, camera)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]  # no temporary folder, no half-written clip
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == before
    assert np.asarray(Image.open(tmp_path / "clip" / "00000.png")).min() > 128  # still the first clip's frames
    monkeypatch.undo()
    clips.write_clip(tmp_path / "clip", images - 0.5, beta, camera)
    assert np.asarray(Image.open(tmp_path / "clip" / "00000.png")).max() < 128  # replaced once complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]
