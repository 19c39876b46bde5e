"""Speed of the PyTorch port of MediaPipe's face networks (:mod:`export3d.faces`) against TFLite and MediaPipe,
and of the face metrics computed with it (``--face-backend port``) against the MediaPipe + dlib path.

- Forward time per image, fp32, one thread: each TFLite model through LiteRT (XNNPACK, one image at a time, as
  MediaPipe runs it) and the port's module at batch 1 and 16; the whole still-image pipeline (detector, crop,
  landmarks, blendshapes) of the port and of MediaPipe's ``FaceLandmarker`` (IMAGE mode).
- Face metrics: frames per second of the features behind AKD / AED, MediaPipe + dlib
  (:class:`~export3d.evaluation.face_features.FaceFeatureExtractor`, no descriptor) against the port
  (:class:`~export3d.evaluation.face_features.MeshFeatureExtractor`, batches of 16), on 64 and 256 px images;
  and how far the port's AKD (478 points) and AED are from the MediaPipe path's on the same pairs.

Run ``python -m benchmarks.bench_faces`` for the tables (docs/faces.md has a run); under pytest the timings go to
pytest-benchmark. Images: the astronaut crops and synthetic heads of ``tests/faces/crops.py``. Times are medians;
nothing asserts on time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.faces.crops import astronaut_crops, synthetic_heads

PAIRS = 16  # images per kind (consecutive ones are the pairs)


def median_ms(fn: Callable[[], object], repeats: int = 7, per: int = 1) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / per


def faces(n: int = PAIRS) -> dict[str, torch.Tensor]:
    return {"astronaut": astronaut_crops(n), "synthetic": synthetic_heads(n)}


@torch.no_grad()
def forward_times(images: torch.Tensor) -> dict[str, float]:
    """ms per image of each model and pipeline (images: [16, 3, 256, 256])."""
    from export3d.faces import FaceMesh
    from export3d.faces.interpreter import TFLiteFaceModels

    mesh, tflite = FaceMesh.from_bundle(), TFLiteFaceModels(threads=1)
    one = images[:1]
    x1, x16 = mesh.model_input(one), mesh.model_input(images)
    det1 = F.interpolate(one, size=128, mode="bilinear", align_corners=False)
    det16 = F.interpolate(images, size=128, mode="bilinear", align_corners=False)
    points1 = mesh.predict(one, roi="whole").landmarks[:, mesh.subset, :2]
    points16 = mesh.predict(images, roi="whole").landmarks[:, mesh.subset, :2]
    n = len(images)
    out = {
        "tflite landmarks": median_ms(lambda: tflite.raw_landmarks(x1[0].permute(1, 2, 0).numpy()), 21),
        "port landmarks b1": median_ms(lambda: mesh.landmarker(x1)),
        "port landmarks b16": median_ms(lambda: mesh.landmarker(x16), per=n),
        "tflite detector": median_ms(lambda: tflite.detector(det1), 21),
        "port detector b1": median_ms(lambda: mesh.detector(det1)),
        "port detector b16": median_ms(lambda: mesh.detector(det16), per=n),
        "tflite blendshapes": median_ms(lambda: tflite.blendshapes(points1), 21),
        "port blendshapes b1": median_ms(lambda: mesh.blendshaper(points1)),
        "port blendshapes b16": median_ms(lambda: mesh.blendshaper(points16), per=n),
        "port pipeline b1": median_ms(lambda: mesh.predict(one, roi="detector")),
        "port pipeline b16": median_ms(lambda: mesh.predict(images, roi="detector"), per=n),
    }
    try:
        from export3d.data.landmarker import FaceLandmarker
        from export3d.utils.images import to_uint8

        pixels = to_uint8(images)
        with FaceLandmarker(video=False) as landmarker:
            out["mediapipe pipeline"] = median_ms(lambda: [landmarker.detect(p) for p in pixels], 5, per=n)
    except ImportError:
        pass
    return out


def metric_runs(data: dict[str, torch.Tensor], sizes=(64, 256)) -> list[dict]:
    """Per size and kind: frames per second of both paths and the AKD / AED differences on consecutive pairs."""
    from export3d.evaluation.face_features import FaceFeatureExtractor, MeshFeatureExtractor, aed, akd_mesh

    port, mediapipe = MeshFeatureExtractor("cpu", batch=16), FaceFeatureExtractor()
    rows = []
    try:
        for size in sizes:
            for kind, images in data.items():
                x = F.interpolate(images, size=size, mode="area") if size != images.shape[-1] else images
                ours, theirs = port(x), mediapipe(x)  # and a warm-up
                port_s = median_ms(lambda x=x: port(x), 3) / 1000
                mediapipe_s = median_ms(lambda x=x: mediapipe(x), 3) / 1000
                pairs = [(ours[i], ours[i + 1], theirs[i], theirs[i + 1]) for i in range(len(x) - 1)]
                pairs = [p for p in pairs if None not in p]
                akd = np.array([(akd_mesh(a, b), akd_mesh(c, d)) for a, b, c, d in pairs]).reshape(-1, 2)
                aes = np.array([(aed(a, b), aed(c, d)) for a, b, c, d in pairs]).reshape(-1, 2)
                rows.append({"size": size, "kind": kind, "pairs": len(pairs),
                             "faces": (sum(f is not None for f in ours), sum(f is not None for f in theirs)),
                             "fps": (len(x) / port_s, len(x) / mediapipe_s),
                             "akd": akd.mean(0), "akd_diff": np.abs(akd[:, 0] - akd[:, 1]),
                             "aed": aes.mean(0), "aed_diff": np.abs(aes[:, 0] - aes[:, 1])})  # fmt: skip
    finally:
        mediapipe.close()
    return rows


def main() -> None:
    torch.set_num_threads(1)
    data = faces()
    print("forward time per image, fp32, 1 thread (ms)")
    for name, ms in forward_times(torch.cat([data["astronaut"][:8], data["synthetic"][:8]])).items():
        print(f"  {name:24s} {ms:8.2f}")
    print("face metrics: port (batches of 16) vs MediaPipe + dlib; AKD over MediaPipe's 478 points, pixels at size")
    for r in metric_runs(data):
        print(f"  {r['size']:3d} px {r['kind']:9s} faces {r['faces'][0]}/{r['faces'][1]} pairs {r['pairs']:2d}  "
              f"fps {r['fps'][0]:6.1f} / {r['fps'][1]:6.1f}  AKD {r['akd'][0]:6.3f} / {r['akd'][1]:6.3f} "
              f"|diff| mean {r['akd_diff'].mean():.3f} max {r['akd_diff'].max():.3f}  AED {r['aed'][0]:.4f} / "
              f"{r['aed'][1]:.4f} |diff| mean {r['aed_diff'].mean():.4f} max {r['aed_diff'].max():.4f}")


# ----------------------------------------------------------------------------------------------- pytest-benchmark
@pytest.fixture
def bench_threads():
    from benchmarks.common import threads_for_benchmarks

    with threads_for_benchmarks() as n:  # --bench-threads, default 1
        yield n


@pytest.mark.parametrize("batch", [1, 16])
def test_port_pipeline(benchmark, bench_threads, batch):
    from export3d.faces import FaceMesh

    mesh = FaceMesh.from_bundle(roi="detector")
    images = astronaut_crops(batch)
    benchmark.extra_info.update(batch=batch, threads=torch.get_num_threads(), what="detector + landmarks + blendshapes")
    with torch.no_grad():
        out = benchmark.pedantic(mesh.predict, args=(images,), rounds=5, warmup_rounds=1)
    assert out.landmarks.shape == (batch, 478, 3)


def test_tflite_landmarks(benchmark, bench_threads):
    from export3d.faces import FaceMesh
    from export3d.faces.interpreter import TFLiteFaceModels

    tflite = pytest.importorskip("ai_edge_litert") and TFLiteFaceModels(threads=1)
    x = FaceMesh.from_bundle().model_input(astronaut_crops(1))[0].permute(1, 2, 0).numpy()
    benchmark.extra_info.update(threads=1, what="TFLite landmark model, one image")
    benchmark.pedantic(tflite.raw_landmarks, args=(x,), rounds=21, warmup_rounds=1)


if __name__ == "__main__":
    main()
