"""Checkpoints: round trip, atomic replacement, pruning and clear errors on damage."""

import json
import os
import shutil

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


class _Killed(BaseException):
    """Stands in for SIGKILL at one point of a save: nothing after it runs."""


def _die(*args, **kwargs):
    raise _Killed


@pytest.mark.parametrize("point", ["os.replace", "atomic_write_json", "shutil.rmtree"])
def test_kill_during_a_double_save_leaves_a_verifiable_checkpoint(tmp_path, monkeypatch, point):
    """Issue 13 #2: saving a step twice deleted the old folder before the new one was renamed in."""
    from export3d.utils import checkpoint

    old, new = _modules(1), _modules(2)
    save_checkpoint(tmp_path, 4, old, {"step": 4})
    save_checkpoint(tmp_path, 5, old, {"step": 5, "copy": "old"})
    target = {"os.replace": (checkpoint.os, "replace"), "atomic_write_json": (checkpoint, "atomic_write_json"),
              "shutil.rmtree": (checkpoint.shutil, "rmtree")}[point]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(*target, _die)
        with pytest.raises(_Killed):
            save_checkpoint(tmp_path, 5, new, {"step": 5, "copy": "new"})
    weights, state, folder = load_checkpoint(tmp_path)
    assert state["step"] == 5 and folder.name.startswith("step_00000005")
    expected = new if state["copy"] == "new" else old
    assert state["copy"] == ("new" if point == "shutil.rmtree" else "old")
    assert torch.equal(weights["head"]["weight"], expected["head"].weight)
    assert json.loads((tmp_path / "last.json").read_text())["dir"] == folder.name
    save_checkpoint(tmp_path, 6, new, {"step": 6})  # the next save cleans up what the kill left
    assert not list(tmp_path.glob("*.tmp-*")) and not list(tmp_path.glob(".*.tmp-*"))
    assert len(list(tmp_path.glob("step_00000005*"))) == 1


def test_double_save_replaces_the_step_and_keeps_one_copy(tmp_path):
    save_checkpoint(tmp_path, 5, _modules(1), {"step": 5, "copy": "old"})
    folder = save_checkpoint(tmp_path, 5, _modules(2), {"step": 5, "copy": "new"})
    _, state, loaded = load_checkpoint(tmp_path)
    assert state["copy"] == "new" and loaded == folder
    assert [p.name for p in tmp_path.glob("step_*")] == [folder.name]


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    """Issue 13 #2/#3: a bit-flipped newest checkpoint loaded silently (or never fell back)."""
    save_checkpoint(tmp_path, 1, _modules(1), {"step": 1})
    newest = save_checkpoint(tmp_path, 2, _modules(2), {"step": 2})
    data = bytearray((newest / "weights.safetensors").read_bytes())
    data[-3] ^= 0x40  # one bit of one weight: safetensors itself cannot notice
    (newest / "weights.safetensors").write_bytes(bytes(data))
    weights, state, folder = load_checkpoint(tmp_path)
    assert state["step"] == 1 and folder.name == "step_00000001"
    err = capsys.readouterr().err
    assert "using" in err and "step_00000001" in err and "step_00000002" in err and "sha256" in err
    with pytest.raises(CheckpointError, match=r"step_00000002/weights.safetensors is corrupt"):
        load_checkpoint(newest)  # an explicit step folder: exactly that one or an error
    shutil.rmtree(tmp_path / "step_00000001")
    with pytest.raises(CheckpointError, match="no checkpoint .* verifies"):
        load_checkpoint(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_beside_a_checkpoint_is_never_read(tmp_path):
    """Issue 13 #3: state.pt was once read with torch.load(weights_only=False) and a crafted file ran a command.
    The training state is JSON + safetensors only: a pickle in the folder is ignored, and a missing state is named."""
    folder = save_checkpoint(tmp_path, 1, _modules(1), {"step": 1})
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "payload": _Evil(marker)}, folder / "state.pt")
    assert load_checkpoint(folder)[1] == {"step": 1} and not marker.exists()
    (folder / "state.json").unlink()
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"].pop("state.json")
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"state.json is missing"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_training_state_is_tensors_and_json(tmp_path):
    opt = torch.optim.Adam(_modules(0)["head"].parameters())
    opt.param_groups[0]["params"][0].grad = torch.ones(1, 3)
    opt.step()
    state = {"optim": opt.state_dict(), "positions": {"clebs": (1, 2)}, "rng": [{"torch": torch.get_rng_state()}]}
    folder = save_checkpoint(tmp_path, 1, _modules(0), state)
    assert not (folder / "state.pt").exists()
    json.loads((folder / "state.json").read_text())
    _, loaded, _ = load_checkpoint(folder)
    assert loaded["positions"] == {"clebs": (1, 2)} and torch.equal(loaded["rng"][0]["torch"], state["rng"][0]["torch"])
    assert torch.equal(loaded["optim"]["state"][0]["exp_avg"], state["optim"]["state"][0]["exp_avg"])
    assert loaded["optim"]["param_groups"][0]["betas"] == (0.9, 0.999)
    with pytest.raises(TypeError, match="cannot store a object"):
        save_checkpoint(tmp_path, 2, _modules(0), {"bad": object()})
