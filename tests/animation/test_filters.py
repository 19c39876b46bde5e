"""The One Euro filter against a scalar transcription of the paper's algorithm; rotations, cameras and crops."""

import math

import numpy as np
import pytest
import torch

from export3d.animation.filters import (
    CameraFilter,
    CropFilter,
    DrivingFilter,
    DrivingFilterSettings,
    OneEuroFilter,
    OneEuroSettings,
    RotationFilter,
    filter_cameras,
    filter_crops,
    filter_expression,
    one_euro,
    rotation_exp,
    rotation_log,
    smoothing_factor,
)
from export3d.cameras import orbit_camera
from export3d.data.headpose import camera_angles

Rotation = pytest.importorskip("scipy.spatial.transform").Rotation


def scalar_one_euro(samples, min_cutoff, beta, d_cutoff):
    """The paper's filter on one signal of (time s, value) samples, written out independently of the module."""
    out, x_hat, dx_hat, t_prev, x_prev = [], None, 0.0, None, None
    for t, x in samples:
        if x_hat is None:
            x_hat = x
        else:
            te = t - t_prev
            a_d = 1.0 / (1.0 + 1.0 / (2 * math.pi * d_cutoff * te))
            dx_hat = a_d * (x - x_prev) / te + (1 - a_d) * dx_hat
            cutoff = min_cutoff + beta * abs(dx_hat)
            a = 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * te))
            x_hat = a * x + (1 - a) * x_hat
        t_prev, x_prev = t, x
        out.append(x_hat)
    return np.array(out)


def test_smoothing_factor_is_the_first_order_low_pass():
    tau = 1 / (2 * math.pi * 3.0)
    assert smoothing_factor(3.0, 1 / 30) == pytest.approx(1 / (1 + tau * 30))
    expected = [1 / (1 + 30 / (2 * math.pi)), 1 / (1 + tau * 30)]
    assert np.allclose(smoothing_factor(np.array([1.0, 3.0]), 1 / 30), expected)


def test_vectorised_filter_matches_the_scalar_algorithm_per_component():
    rng = np.random.default_rng(0)
    t = np.arange(200) / 25.0
    values = np.stack([np.sin(2 * t), np.where(t > 3, 1.0, 0.0), np.cumsum(rng.normal(0, 0.1, 200))], 1)
    values = values + rng.normal(0, 0.02, values.shape)  # [200, 3]
    settings = OneEuroSettings(min_cutoff=1.5, beta=0.7, d_cutoff=2.0)
    out = one_euro(values, 25.0, settings)
    for k in range(3):
        ref = scalar_one_euro(zip(t, values[:, k], strict=True), 1.5, 0.7, 2.0)
        assert np.allclose(out[:, k], ref, rtol=0, atol=1e-12)
    assert not np.allclose(out, values, atol=1e-3)  # it did filter


def test_missing_frames_are_held_and_the_next_step_spans_the_gap():
    rng = np.random.default_rng(1)
    values = np.cumsum(rng.normal(0, 0.3, (60, 2)), 0)  # [60, 2]
    valid = rng.random(60) > 0.3
    valid[:3] = [False, False, True]  # two leading missing frames
    values[~valid] = np.nan  # missing rows may hold anything
    settings = OneEuroSettings(1.0, 0.5, 1.0)
    out = one_euro(values, 30.0, settings, valid=valid)
    t = np.flatnonzero(valid) / 30.0
    for k in range(2):
        ref = scalar_one_euro(zip(t, values[valid, k], strict=True), 1.0, 0.5, 1.0)
        assert np.allclose(out[valid, k], ref, atol=1e-12)
    last = np.maximum.accumulate(np.where(valid, np.arange(60), 0))  # the last valid frame at or before each
    assert np.array_equal(out[3:], out[last[3:]])  # missing frames hold the last output
    assert np.array_equal(out[0], out[2]) and np.array_equal(out[1], out[2])  # leading ones take the first
    assert np.allclose(one_euro(values, 30.0, settings), out, equal_nan=False)  # non-finite rows = missing


def test_streaming_form_equals_the_whole_sequence_and_reports_nothing_before_the_first_frame():
    rng = np.random.default_rng(2)
    values = rng.random((40, 52))
    f = OneEuroFilter(DrivingFilterSettings().expression, 29.97, 52)
    assert f.update(None) is None
    streamed = np.stack([f.update(v) for v in values])
    whole = filter_expression(np.concatenate([np.full((1, 52), np.nan), values]), 29.97)[1:]
    assert np.array_equal(streamed, whole)
    assert whole.min() >= 0 and whole.max() <= 1  # a blend of values in [0, 1] stays there


def test_joint_cutoff_does_not_depend_on_the_axes():
    rng = np.random.default_rng(3)
    points = np.cumsum(rng.normal(0, 1, (80, 2)), 0)
    angle = 0.7
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    joint = OneEuroSettings(1.0, 0.3, 1.0, joint=True)
    assert np.allclose(one_euro(points @ turn.T, 25.0, joint), one_euro(points, 25.0, joint) @ turn.T, atol=1e-9)
    per_axis = OneEuroSettings(1.0, 0.3, 1.0)
    assert not np.allclose(one_euro(points @ turn.T, 25.0, per_axis), one_euro(points, 25.0, per_axis) @ turn.T,
                           atol=1e-3)  # fmt: skip


def test_adaptive_cutoff_cuts_jitter_at_rest_and_lag_in_motion():
    rng = np.random.default_rng(4)
    rate, n = 30.0, 120
    step = np.where(np.arange(n) >= 60, 10.0, 0.0)[:, None] + rng.normal(0, 0.1, (n, 1))
    slow = one_euro(step, rate, OneEuroSettings(0.5, 0.0, 1.0))
    adaptive = one_euro(step, rate, OneEuroSettings(0.5, 0.5, 1.0))
    jitter = lambda x: np.abs(np.diff(x[10:60, 0], 2)).mean()  # noqa: E731 - a one-line metric
    assert jitter(adaptive) < 0.5 * jitter(step)  # at rest: smooth
    reach = lambda x: int(np.argmax(x[60:, 0] > 9.0))  # noqa: E731 - frames to 90% of the step
    assert reach(adaptive) <= 3 < 10 < reach(slow)  # in motion: quick, where the fixed low-pass lags


def test_rotation_log_and_exp_match_scipy():
    rng = np.random.default_rng(5)
    vectors = Rotation.random(200, random_state=6).as_rotvec()
    vectors = np.concatenate([vectors, [[1e-9, 0, 0], [0, 0, 0], [math.pi - 1e-7, 0, 0], [0, 2.0, 1e-3]]])
    vectors = np.concatenate([vectors, rng.normal(0, 1e-4, (5, 3))])
    matrices = Rotation.from_rotvec(vectors).as_matrix()
    assert np.allclose(rotation_exp(vectors), matrices, atol=1e-12)
    logs = rotation_log(matrices)
    assert np.allclose(Rotation.from_rotvec(logs).as_matrix(), matrices, atol=1e-9)
    assert np.allclose(logs[:-6], vectors[:-6], atol=1e-6)  # away from pi the vector itself is unique
    assert np.linalg.norm(logs, axis=-1).max() <= math.pi + 1e-12


def test_rotation_filter_about_one_axis_is_the_scalar_filter_on_the_angle():
    rng = np.random.default_rng(7)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angles = np.cumsum(rng.normal(0, 2.0, 90))  # degrees
    f = RotationFilter(OneEuroSettings(0.5, 0.05, 1.0, joint=True), 30.0)
    out = np.stack([f.update(m) for m in rotation_exp(np.radians(angles)[:, None] * axis)])
    expected = scalar_one_euro(zip(np.arange(90) / 30.0, angles, strict=True), 0.5, 0.05, 1.0)
    assert np.allclose(np.degrees(rotation_log(out) @ axis), expected, atol=1e-9)


def rigid(cameras: np.ndarray) -> bool:
    m = cameras[:, :16].reshape(-1, 4, 4)
    rot = m[:, :3, :3]
    return (np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-12)
            and np.allclose(np.linalg.det(rot), 1.0, atol=1e-12)
            and np.array_equal(m[:, 3], np.tile([0.0, 0, 0, 1], (len(m), 1))))  # fmt: skip


def noisy_cameras(n: int, seed: int, yaw_deg=None) -> np.ndarray:
    """Orbit cameras (float64) whose pose jitters by ~0.3 degrees, like a face tracker's."""
    rng = np.random.default_rng(seed)
    yaw = np.zeros(n) if yaw_deg is None else np.asarray(yaw_deg, dtype=np.float64)
    cams = orbit_camera(torch.from_numpy(np.radians(yaw)), torch.zeros(n)).double().numpy()
    shake = rotation_exp(rng.normal(0, math.radians(0.3), (n, 3)))  # [n, 3, 3]
    m = cams[:, :16].reshape(n, 4, 4).copy()
    m[:, :3, :3] = m[:, :3, :3] @ shake
    m[:, :3, 3] += rng.normal(0, 0.005, (n, 3))
    return np.concatenate([m.reshape(n, 16), cams[:, 16:]], 1)


def test_filtered_cameras_are_rigid_smoother_and_keep_the_intrinsics():
    cams = noisy_cameras(150, 8)
    cams[:, 16] = 4.0  # a different focal length passes through
    out = filter_cameras(cams, 30.0)
    assert rigid(out)
    assert np.array_equal(out[:, 16:], cams[:, 16:])
    jitter = lambda c: np.abs(np.diff(camera_angles(c), 2, axis=0)).mean()  # noqa: E731 - a one-line metric
    assert jitter(out) < 0.35 * jitter(cams)
    still = np.repeat(cams[:1], 10, 0)
    assert np.allclose(filter_cameras(still, 30.0), still, atol=1e-12)


def test_camera_filter_follows_a_fast_turn_within_a_few_frames():
    yaw = np.where(np.arange(60) >= 20, 30.0, 0.0)
    cams = noisy_cameras(60, 9, yaw)
    out = camera_angles(filter_cameras(cams, 30.0))[:, 0]
    raw = camera_angles(cams)[:, 0]
    assert abs(out[24] - raw[24]) < 3.0  # 4 frames after a 30 degree step: within 10% of it
    settled = camera_angles(orbit_camera(torch.tensor([math.radians(30.0)]), torch.zeros(1)).double().numpy())[0, 0]
    assert settled == pytest.approx(32.3, abs=0.1)  # the orbit's yaw is about the origin, the view is of the pivot
    assert np.abs(out[40:] - settled).max() < 0.5


def test_camera_filter_holds_missing_frames_and_rejects_bad_shapes():
    cams = noisy_cameras(20, 10)
    f = CameraFilter(25.0)
    assert f.update(None) is None
    outs = [f.update(c) for c in cams[:5]]
    assert np.array_equal(f.update(None), outs[-1])
    with pytest.raises(ValueError, match="camera must be"):
        f.update(cams[0, :16])
    with pytest.raises(ValueError, match="no valid frame"):
        filter_cameras(cams, 25.0, valid=np.zeros(20, bool))
    with pytest.raises(ValueError, match="rate"):
        CameraFilter(0.0)


def test_crop_filter_scales_and_shifts_with_the_video():
    rng = np.random.default_rng(11)
    centre = 200 + np.cumsum(rng.normal(0, 2, (100, 2)), 0)
    side = 180 + np.cumsum(rng.normal(0, 1, 100))
    crops = np.concatenate([centre - side[:, None] / 2, side[:, None]], 1)  # [100, 3]
    out = filter_crops(crops, 30.0)
    assert np.abs(np.diff(out, 2, axis=0)).mean() < 0.6 * np.abs(np.diff(crops, 2, axis=0)).mean()
    assert np.allclose(filter_crops(2.5 * crops, 30.0), 2.5 * out, atol=1e-9)  # the same video, larger
    assert np.allclose(filter_crops(crops + [40.0, -7.0, 0.0], 30.0), out + [40.0, -7.0, 0.0], atol=1e-9)
    with pytest.raises(ValueError, match="side > 0"):
        CropFilter(30.0).update([0.0, 0.0, 0.0])


def test_driving_filter_runs_the_three_signals_together():
    rng = np.random.default_rng(12)
    cams = noisy_cameras(10, 13)
    exprs = rng.random((10, 52))
    crops = np.tile([10.0, 20.0, 100.0], (10, 1))
    f = DrivingFilter(30.0)
    assert f.update(None, None, None) == (None, None, None)
    out = [f.update(e, c, b) for e, c, b in zip(exprs, cams, crops, strict=True)]
    assert np.array_equal(np.stack([o[0] for o in out]), filter_expression(exprs, 30.0))
    assert np.array_equal(np.stack([o[1] for o in out]), filter_cameras(cams, 30.0))
    assert np.allclose(np.stack([o[2] for o in out]), crops)
