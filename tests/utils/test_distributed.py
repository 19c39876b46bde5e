"""--device cuda:N makes GPU N the current device (kernels launch on the current device); torchrun keeps its own."""

import pytest
import torch

from export3d.utils.distributed import init_distributed, resolve_device


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend this machine has two GPUs and record set_device calls."""
    selected = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: selected.append(torch.device(dev)))
    return selected


def test_an_indexed_cuda_device_becomes_current(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert two_gpus == [torch.device("cuda", 1)]
    assert resolve_device("cuda") == torch.device("cuda") and len(two_gpus) == 1  # no index: the current one
    assert resolve_device("cuda:0", select=False) == torch.device("cuda", 0) and len(two_gpus) == 1


def test_single_process_training_uses_the_requested_gpu(two_gpus, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cuda:1")
    assert info.device == torch.device("cuda", 1) and two_gpus == [torch.device("cuda", 1)]


def test_a_gpu_that_is_not_there_fails_clearly(two_gpus):
    with pytest.raises(ValueError, match=r"--device: 'cuda:2' requested but this machine has 2 GPU\(s\)"):
        resolve_device("cuda:2")
    assert two_gpus == []


def test_cpu_selects_nothing(two_gpus):
    assert resolve_device("cpu") == torch.device("cpu") and two_gpus == []
