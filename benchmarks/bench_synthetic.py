"""Cost of rendering a batch of 8 synthetic frames (one vectorised pass) at the tiny and paper resolutions."""

import pytest
import torch

from benchmarks.common import threads_for_benchmarks
from export3d.data import FrameKey, SyntheticConfig, SyntheticHeads

BATCH = 8


@pytest.fixture
def bench_threads():
    with threads_for_benchmarks() as n:  # --bench-threads, default 1
        yield n


@pytest.mark.parametrize("resolution", [64, 256])
def test_render_batch_of_8(benchmark, bench_threads, resolution):
    heads = SyntheticHeads(SyntheticConfig(resolution=resolution))
    keys = [FrameKey(i, i % 3, 7 * i) for i in range(BATCH)]  # 8 identities, varied poses and expressions
    benchmark.extra_info["resolution"] = resolution
    benchmark.extra_info["frames"] = BATCH
    benchmark.extra_info["threads"] = torch.get_num_threads()
    frames = benchmark.pedantic(heads.frames, args=(keys,), rounds=5 if resolution <= 64 else 3, warmup_rounds=1)
    assert frames["image"].shape == (BATCH, 3, resolution, resolution)
