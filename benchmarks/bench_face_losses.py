"""Time per training step that each face loss adds (:mod:`export3d.training.face_losses`).

The step is the training loop's own ``train_generator_step`` (reconstruction stage: generator forward, losses,
backward, Adam) of the ``tiny`` preset at batch 8 on held-out synthetic frames, with the lazy LPIPS term left out
(``lpips_every`` past the steps timed), so the baseline is the plain MSE step and every other row adds its face
loss on every step. The three face losses share one pass of MediaPipe's landmark CNN over the output's and the
target's crops (plus the detector on the target), so each alone costs about what all three cost; the raw image
adds a second pass. A second table times the face loss alone (forward and backward to the image) at the tiny
(64 px) and paper (256 px) image sizes: the crop is always 256 px, so the network's cost does not depend on it.

Run ``python -m benchmarks.bench_face_losses`` (one thread; the table in docs/training.md came from it, with the
machine's load average printed beside it). Times are medians; nothing asserts on time.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import torch

from export3d.data import SyntheticClips, SyntheticConfig
from export3d.evaluation.metrics import build_lpips
from export3d.evaluation.scoring import same_identity_batches
from export3d.faces import FaceMesh
from export3d.model import Export3D
from export3d.model.config import preset
from export3d.training.config import TrainConfig
from export3d.training.face_losses import FaceLoss
from export3d.training.loop import train_generator_step

BATCH = 8
CONFIGS = {  # row -> (landmark, blendshape, feature weights, raw)
    "no face loss (MSE step)": None,
    "+ landmarks": (1.0, 0.0, 0.0, False),
    "+ blendshapes": (0.0, 1.0, 0.0, False),
    "+ features": (0.0, 0.0, 1.0, False),
    "+ all three": (1.0, 1.0, 1.0, False),
    "+ all three, raw image too": (1.0, 1.0, 1.0, True),
}


def median_s(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batch_of(resolution: int) -> dict[str, torch.Tensor]:
    """``BATCH`` held-out same-identity pairs of synthetic heads at ``resolution``."""
    data = SyntheticClips(SyntheticConfig(resolution=resolution, train_identities=2, test_identities=4,
                                          clips_per_identity=1, frames_per_clip=8, fps=5.0), "test")  # fmt: skip
    b = same_identity_batches(data, BATCH, BATCH)[0]
    return {"source": b.source, "driving": b.driving, "beta": b.beta, "camera": b.camera}


def step_times(repeats: int = 7) -> dict[str, float]:
    """Seconds per tiny generator step for each row of :data:`CONFIGS`."""
    torch.manual_seed(0)
    model = Export3D(preset("tiny")).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    lpips_model, _ = build_lpips(None)
    batch = batch_of(model.config.image_size)
    cfg = dataclasses.replace(TrainConfig(), lpips_every=10**9)  # no LPIPS term in the steps timed
    mesh = FaceMesh.from_bundle()
    out = {}
    for name, weights in CONFIGS.items():
        face = None if weights is None else FaceLoss(mesh, *weights[:3], raw=weights[3])

        def step(face=face):
            train_generator_step(model, None, None, opt, None, batch, lpips_model, cfg, 0, torch.autocast("cpu",
                                 enabled=False), face_loss=face)  # fmt: skip

        out[name] = median_s(step, repeats)
    return out


def loss_times(repeats: int = 7) -> dict[int, tuple[float, float]]:
    """(forward, forward + backward) seconds of the face loss alone, all three terms, per image size."""
    mesh = FaceMesh.from_bundle()
    face = FaceLoss(mesh, 1.0, 1.0, 1.0)
    out = {}
    for size in (64, 256):
        b = batch_of(size)
        image = b["source"].clone().requires_grad_(True)

        def forward(b=b, image=image):
            with torch.no_grad():
                face(image, None, b["driving"])

        def both(b=b, image=image):
            face(image, None, b["driving"])[0].backward()

        out[size] = (median_s(forward, repeats), median_s(both, repeats))
    return out


def main() -> None:
    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} cores, 1 torch thread, fp32")
    steps = step_times()
    base = steps["no face loss (MSE step)"]
    print(f"tiny generator step, batch {BATCH} (s, median of 7; added over the MSE step)")
    for name, s in steps.items():
        print(f"  {name:30s} {s:7.3f}  +{s - base:6.3f}")
    print(f"face loss alone, all three terms, batch {BATCH} (s, median of 7)")
    for size, (fwd, both) in loss_times().items():
        print(f"  {size:3d} px image: forward {fwd:6.3f}, forward + backward {both:6.3f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
