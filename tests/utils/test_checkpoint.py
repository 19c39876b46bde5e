"""Checkpoints: round trip, atomic replacement, pruning and clear errors on damage."""

import json

import pytest
import torch
from torch import nn

from export3d.utils.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint


def _modules(seed):
    torch.manual_seed(seed)
    return {"net": nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), "head": nn.Linear(3, 1)}


def test_round_trip_and_last_pointer(tmp_path):
    mods = _modules(0)
    opt = torch.optim.Adam(mods["net"].parameters())
    mods["net"](torch.randn(5, 4)).sum().backward()
    opt.step()
    state = {"step": 7, "optim": opt.state_dict(), "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "checkpoints", 7, mods, state)
    save_checkpoint(tmp_path / "checkpoints", 9, mods, {"step": 9})
    weights, state, folder = load_checkpoint(tmp_path)  # the run folder resolves to checkpoints/last
    assert folder.name == "step_00000009" and state["step"] == 9
    for name, module in mods.items():
        for key, value in module.state_dict().items():
            assert torch.equal(weights[name][key], value), f"{name}.{key}"
    _, state7, _ = load_checkpoint(tmp_path / "checkpoints" / "step_00000007")
    assert state7["optim"]["state"], "optimiser state survives"


def test_keeps_only_newest(tmp_path):
    for step in range(5):
        save_checkpoint(tmp_path, step, _modules(step), {}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000003", "step_00000004"]


def test_interrupted_write_leaves_previous_checkpoint_readable(tmp_path):
    save_checkpoint(tmp_path, 1, _modules(1), {"step": 1})
    (tmp_path / "step_00000002.tmp-999").mkdir()  # what a crash mid-save leaves behind
    (tmp_path / "step_00000002.tmp-999" / "weights.safetensors").write_bytes(b"half")
    _, state, folder = load_checkpoint(tmp_path)
    assert state["step"] == 1 and folder.name == "step_00000001"


def test_corrupt_files_are_named(tmp_path):
    folder = save_checkpoint(tmp_path, 3, _modules(3), {"step": 3})
    (folder / "weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"weights.safetensors is corrupt"):
        load_checkpoint(tmp_path)
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"last.json is corrupt"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "last.json").write_text(json.dumps({"step": 5, "dir": "step_00000005"}))
    with pytest.raises(CheckpointError, match=r"holds no weights.safetensors"):
        load_checkpoint(tmp_path)
