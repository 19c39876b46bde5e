"""Jitter and lag of the One Euro filters of the driving signals (:mod:`export3d.animation.filters`).

- Jitter: the mean absolute frame-to-frame acceleration ``|x[t+1] - 2 x[t] + x[t-1]|`` of the head's camera angles
  (yaw, elevation, roll in degrees, :func:`export3d.data.headpose.camera_angles`, averaged over the three), of the
  52 blendshapes, of the crop (corner and side, frame pixels) and of the head's position (its image shift and size
  in pixels of a 512 px crop). Real motion has acceleration too, so no filter brings it to 0.
- Lag, synthetic (no tracker noise): a 30 degree yaw step and a 60 degree turn in 10 frames (180 degrees / s) at
  30 fps: frames from the raw signal's 50% / 90% crossing to the filtered one's. Likewise a blendshape step 0 -> 1.
- Lag, real: at the fastest yaw turn of each video (30 frames around the largest frame-to-frame change of the
  lightly smoothed yaw), the shift (in frames, to 0.05) that best lays the raw yaw onto the filtered one.

Real videos go through the project's face pipeline (:mod:`export3d.data.face_pipeline`: MediaPipe landmarks,
crops, PnP cameras, blendshapes) with ``smooth_sigma=0`` (the raw per-frame crop), and for comparison with the
pipeline's default Gaussian crop smoothing (``smooth_sigma=2``, two-sided: no lag, but it needs the whole video).

Run on real videos (not shipped: pass your own), e.g. ``python -m benchmarks.bench_driving_filters
/tmp/real/d3.mp4 /tmp/real/d9.mp4`` (prints a table). Under pytest, ``test_filter_driving_signals`` times the
filters on a synthetic 3,000-frame driver and records the synthetic lags in ``extra_info``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from export3d.animation.filters import (
    DrivingFilter,
    DrivingFilterSettings,
    filter_cameras,
    filter_crops,
    filter_expression,
)
from export3d.animation.motion import head_pose
from export3d.cameras import FOCAL, orbit_camera
from export3d.data.headpose import camera_angles

JAW_OPEN = 25  # MediaPipe's blendshape order: the mouth's main opening


def jitter(values: np.ndarray) -> float:
    """Mean absolute frame-to-frame acceleration over all components. # [T, ...] -> float"""
    values = np.asarray(values, dtype=np.float64)
    return float(np.abs(np.diff(values, 2, axis=0)).mean()) if len(values) > 2 else float("nan")


def crossing_lag(raw: np.ndarray, filtered: np.ndarray, level: float) -> float:
    """Frames between the raw and the filtered signal first reaching ``level`` (rising, linear interpolation)."""

    def first(x: np.ndarray) -> float:
        k = int(np.argmax(x >= level))
        return k - 1 + (level - x[k - 1]) / (x[k] - x[k - 1]) if k > 0 else 0.0

    return first(filtered) - first(raw)


def best_shift(raw: np.ndarray, filtered: np.ndarray, lo: int, hi: int) -> float:
    """The delay s (frames, to 0.05) minimising the squared difference of filtered[t] and raw[t - s] over [lo, hi)."""
    t = np.arange(len(raw), dtype=np.float64)
    shifts = np.arange(-2.0, 8.0, 0.05)
    errors = [np.mean((filtered[lo:hi] - np.interp(t[lo:hi] - s, t, raw)) ** 2) for s in shifts]
    return float(shifts[int(np.argmin(errors))])


def image_position(cameras: np.ndarray, size: int = 512) -> np.ndarray:
    """Where the head is in the crop: its image shift (x, y) and apparent size, in pixels of a ``size`` crop."""
    _, pos = head_pose(cameras)  # [T, 3]
    return np.concatenate([pos[:, :2] / pos[:, 2:] * FOCAL * size, size * 2.7 / pos[:, 2:]], 1)


def synthetic_lags(settings: DrivingFilterSettings | None = None, fps: float = 30.0) -> dict:
    """Lags (frames) of the camera filter on a yaw step and a fast turn, and of the expression filter on a step."""
    settings = settings or DrivingFilterSettings()
    frames = np.arange(60)
    out = {}
    for name, yaw in (("yaw_step_30", np.where(frames >= 20, 30.0, 0.0)),
                      ("yaw_turn_180deg_s", np.clip((frames - 20) * 6.0, 0.0, 60.0))):  # fmt: skip
        cams = orbit_camera(torch_tensor(np.radians(yaw)), torch_tensor(np.zeros(60))).double().numpy()
        raw = camera_angles(cams)[:, 0]
        filtered = camera_angles(filter_cameras(cams, fps, settings))[:, 0]
        low, high = raw[0], raw[-1]
        for p in (50, 90):
            out[f"{name}_lag{p}_frames"] = round(crossing_lag(raw, filtered, low + p / 100 * (high - low)), 2)
    expr = np.zeros((60, 52))
    expr[20:, JAW_OPEN] = 1.0
    filtered = filter_expression(expr, fps, settings)[:, JAW_OPEN]
    for p in (50, 90):
        out[f"expression_step_lag{p}_frames"] = round(crossing_lag(expr[:, JAW_OPEN], filtered, p / 100), 2)
    return out


def torch_tensor(values: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(values))


def video_signals(path: Path, smooth_sigma: float, size: int = 512) -> dict:
    """The face pipeline's per-frame signals of a video (frames without a face are dropped)."""
    from export3d.data.face_pipeline import clip_parameters, track_faces
    from export3d.data.frames import video_info
    from export3d.data.landmarker import FaceLandmarker, canonical_mesh

    mesh = canonical_mesh()
    with FaceLandmarker() as landmarker:
        track = track_faces(Path(path), landmarker)
    out = {"fps": video_info(Path(path)).fps, "frames": track.frames_read, "dropped": track.dropped}
    for sigma in sorted({0.0, smooth_sigma}):
        params = clip_parameters(track, mesh, size, smooth_sigma=sigma)
        out[sigma] = {"expression": params.expression.astype(np.float64), "cameras": params.cameras,
                      "crop": params.arrays()["crop"].astype(np.float64)}  # fmt: skip
    return out


def measure_video(path: Path, settings: DrivingFilterSettings | None = None) -> dict:
    """Jitter (raw, Gaussian crop sigma 2, One Euro) and the lag at the fastest turn of one real video."""
    settings = settings or DrivingFilterSettings()
    from export3d.data.crop import smooth

    signals = video_signals(path, 2.0)
    raw, gauss, fps = signals[0.0], signals[2.0], signals["fps"]
    cams = filter_cameras(raw["cameras"], fps, settings)
    expr = filter_expression(raw["expression"], fps, settings)
    crop = filter_crops(raw["crop"], fps, settings)
    yaw_raw, yaw_filtered = camera_angles(raw["cameras"])[:, 0], camera_angles(cams)[:, 0]
    turn = int(np.argmax(np.abs(np.diff(smooth(yaw_raw, 1.0)))))  # the fastest turn
    lo, hi = max(turn - 15, 0), min(turn + 15, len(yaw_raw))
    return {
        "video": Path(path).name, "fps": fps, "frames": signals["frames"], "dropped": signals["dropped"],
        "angles_deg": {"raw": jitter(camera_angles(raw["cameras"])),
                       "crop_gauss2": jitter(camera_angles(gauss["cameras"])), "one_euro": jitter(camera_angles(cams))},
        "blendshapes": {"raw": jitter(raw["expression"]), "one_euro": jitter(expr)},
        "head_position_px": {"raw": jitter(image_position(raw["cameras"])),
                             "crop_gauss2": jitter(image_position(gauss["cameras"])),
                             "one_euro": jitter(image_position(cams))},
        "crop_px": {"raw": jitter(raw["crop"]), "gauss2": jitter(gauss["crop"]), "one_euro": jitter(crop)},
        "turn": {"frame": turn, "yaw_speed_deg_s": float(abs(yaw_raw[turn + 1] - yaw_raw[turn]) * fps),
                 "lag_frames": best_shift(yaw_raw, yaw_filtered, lo, hi),
                 "jaw_lag_frames": best_shift(raw["expression"][:, JAW_OPEN], expr[:, JAW_OPEN], 5,
                                              len(expr) - 5)},
    }  # fmt: skip


def table(results: list[dict]) -> str:
    rows = ["| video | fps | angles jitter, deg: raw / crop sigma 2 / 1e | blendshapes: raw / 1e | head position, "
            "px: raw / 1e | crop, px: raw / sigma 2 / 1e | fastest turn, deg/s | yaw lag, frames (ms) | "
            "jawOpen lag, frames |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        a, b, h, c, t = r["angles_deg"], r["blendshapes"], r["head_position_px"], r["crop_px"], r["turn"]
        rows.append(f"| {r['video']} | {r['fps']:g} | {a['raw']:.3f} / {a['crop_gauss2']:.3f} / {a['one_euro']:.3f} "
                    f"| {b['raw']:.4f} / {b['one_euro']:.4f} | {h['raw']:.3f} / {h['one_euro']:.3f} "
                    f"| {c['raw']:.3f} / {c['gauss2']:.3f} / {c['one_euro']:.3f} | {t['yaw_speed_deg_s']:.0f} "
                    f"| {t['lag_frames']:.2f} ({1000 * t['lag_frames'] / r['fps']:.0f}) | {t['jaw_lag_frames']:.2f} |")
    return "\n".join(rows)


def synthetic_driver(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy driver: expression [T, 52], cameras [T, 25], crops [T, 3] (a head turning and talking)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 30.0
    expr = np.clip(0.3 + 0.3 * np.sin(2 * math.pi * 0.7 * t)[:, None] + rng.normal(0, 0.03, (frames, 52)), 0, 1)
    yaw = np.radians(20 * np.sin(2 * math.pi * 0.2 * t) + rng.normal(0, 0.3, frames))
    cams = orbit_camera(torch_tensor(yaw), torch_tensor(rng.normal(0, 0.005, frames))).double().numpy()
    crops = np.stack([100 + rng.normal(0, 1, frames), 80 + rng.normal(0, 1, frames), 300 + rng.normal(0, 1, frames)],
                     1)  # fmt: skip
    return expr, cams, crops


def test_filter_driving_signals(benchmark):
    expr, cams, crops = synthetic_driver(3000)

    def run():
        f = DrivingFilter(30.0)
        return [f.update(e, c, b) for e, c, b in zip(expr, cams, crops, strict=True)]

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    benchmark.extra_info.update(frames=3000, **synthetic_lags())
    benchmark.extra_info["angle_jitter_raw_deg"] = jitter(camera_angles(cams))
    benchmark.extra_info["angle_jitter_filtered_deg"] = jitter(camera_angles(np.stack([o[1] for o in out])))
    assert len(out) == 3000


def main() -> None:
    parser = argparse.ArgumentParser(description="Jitter and lag of the driving-signal filters on real videos.")
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    print("synthetic lags (frames at 30 fps):", json.dumps(synthetic_lags()))
    results = [measure_video(v) for v in args.videos]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
