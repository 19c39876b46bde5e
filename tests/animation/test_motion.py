"""Relative and absolute motion: identities, angle arithmetic, composition against scipy, rigid outputs."""

import numpy as np
import pytest

from export3d.animation.motion import (
    MotionSettings,
    head_camera,
    head_pose,
    nearest_rotation,
    relative_cameras,
    relative_expression,
    transfer_motion,
)
from export3d.cameras import INTRINSICS
from export3d.data.headpose import camera_angles

Rotation = pytest.importorskip("scipy.spatial.transform").Rotation


def posed_camera(yaw_deg: float, elevation_deg: float = 0.0, roll_deg: float = 0.0, shift=(0.0, 0.0, 0.0)):
    """A camera 2.7 from the pivot looking at it with these ``camera_angles``, then shifted. # [25]"""
    euler = lambda axis, deg: Rotation.from_euler(axis, deg, degrees=True).as_matrix()  # noqa: E731
    rot = euler("y", yaw_deg) @ euler("x", -elevation_deg) @ np.diag([1.0, -1.0, -1.0]) @ euler("z", roll_deg)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, np.array([0.0, 0.0, 0.2]) - 2.7 * rot[:, 2] + shift
    cam = np.concatenate([m.reshape(16), np.ravel(INTRINSICS)])
    assert np.allclose(camera_angles(cam), [yaw_deg, elevation_deg, roll_deg], atol=1e-9)
    return cam


def random_cameras(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rot = Rotation.random(n, random_state=seed).as_matrix()  # cam2world rotations
    m = np.zeros((n, 4, 4))
    m[:, :3, :3], m[:, :3, 3], m[:, 3, 3] = rot, rng.normal(0, 2, (n, 3)), 1.0
    return np.concatenate([m.reshape(n, 16), np.tile(np.ravel(INTRINSICS), (n, 1))], 1)


def assert_rigid(cameras: np.ndarray):
    m = cameras.reshape(-1, 25)[:, :16].reshape(-1, 4, 4)
    assert np.allclose(m[:, :3, :3] @ m[:, :3, :3].transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(m[:, :3, :3]), 1.0, atol=1e-12)
    assert np.array_equal(m[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (len(m), 1)))


def test_head_pose_round_trip_and_meaning():
    cams = random_cameras(20, 0)
    rot, pos = head_pose(cams)
    assert np.allclose(head_camera(rot, pos, cams[:, 16:]), cams, atol=1e-12)
    # the world origin, seen through the camera, is at pos: R_c^T (0 - t_c)
    m = cams[:, :16].reshape(-1, 4, 4)
    assert np.allclose(pos, np.einsum("nji,nj->ni", m[:, :3, :3], -m[:, :3, 3]))
    frontal = posed_camera(0.0)
    assert np.allclose(head_pose(frontal)[1], [0.0, 0.0, 2.9], atol=1e-12)  # 2.7 + 0.2 ahead of the camera


def test_driving_with_the_source_itself_reproduces_the_source():
    rng = np.random.default_rng(1)
    src_cam = posed_camera(-15.0, 5.0, 3.0, shift=(0.01, -0.02, 0.05))
    src_expr = rng.random(52)
    cams, exprs = np.tile(src_cam, (30, 1)), np.tile(src_expr, (30, 1))
    out_expr, out_cam = transfer_motion(src_expr, src_cam, exprs, cams)
    assert np.allclose(out_cam, cams, atol=1e-12) and np.array_equal(out_expr, exprs)
    # whatever the driver does, its reference frame maps onto the source
    drv_cams, drv_exprs = random_cameras(12, 2), rng.random((12, 52))
    for ref in (0, 5, -1):
        out_expr, out_cam = transfer_motion(src_expr, src_cam, drv_exprs, drv_cams, MotionSettings(ref=ref))
        assert np.allclose(out_cam[ref], src_cam, atol=1e-12)
        assert np.allclose(out_expr[ref], src_expr, atol=1e-15)


@pytest.mark.parametrize("driver_start", [0.0, 20.0, -8.0])
def test_a_driver_turning_by_ten_degrees_turns_the_source_by_ten(driver_start):
    drv = np.stack([posed_camera(driver_start), posed_camera(driver_start + 10.0), posed_camera(driver_start - 4.0)])
    out = camera_angles(relative_cameras(posed_camera(-15.0), drv))  # [3, 3]
    src = camera_angles(posed_camera(-15.0))
    assert out[1, 0] - src[0] == pytest.approx(10.0, abs=1e-6)
    assert out[2, 0] - src[0] == pytest.approx(-4.0, abs=1e-6)
    assert np.allclose(out[:, 1:], src[1:], atol=1e-6)  # no elevation or roll appears


def test_a_driver_rolling_rolls_the_source_by_as_much_whatever_its_pose():
    drv = np.stack([posed_camera(12.0, 4.0, 0.0), posed_camera(12.0, 4.0, 7.0)])
    src_cam = posed_camera(-20.0, -6.0, 2.0)
    out = camera_angles(relative_cameras(src_cam, drv))
    src = camera_angles(src_cam)
    assert out[1, 2] - src[2] == pytest.approx(7.0, abs=1e-6)
    assert np.allclose(out[1, :2], src[:2], atol=1e-6)


def test_composition_of_random_rotations_against_scipy():
    src, drv = random_cameras(1, 3)[0], random_cameras(16, 4)
    out = relative_cameras(src, drv, ref=3)
    assert_rigid(out)
    # scipy, on the cam2world rotations: R_c,out = R_c,src R_c,drv[ref]^T R_c,drv[t] (the head pose's inverse)
    c = lambda cams: Rotation.from_matrix(cams[..., :16].reshape(-1, 4, 4)[:, :3, :3])  # noqa: E731
    expected = c(src[None]) * c(drv[3:4]).inv() * c(drv)
    assert np.allclose(out[:, :16].reshape(-1, 4, 4)[:, :3, :3], expected.as_matrix(), atol=1e-12)
    # positions: the head moves in camera coordinates by what the driver's head moved
    _, pos_src = head_pose(src)
    _, pos_drv = head_pose(drv)
    assert np.allclose(head_pose(out)[1], pos_src + pos_drv - pos_drv[3], atol=1e-12)
    assert np.array_equal(out[:, 16:], np.tile(src[16:], (16, 1)))  # the source's intrinsics


def test_float32_cameras_give_rigid_outputs():
    cams = random_cameras(8, 5).astype(np.float32)
    assert_rigid(relative_cameras(cams[0], cams))
    rot = Rotation.random(random_state=6).as_matrix()
    assert np.allclose(nearest_rotation(rot + 1e-4 * np.eye(3)), rot, atol=1e-4)
    assert np.allclose(nearest_rotation(rot), rot, atol=1e-14)


def test_relative_expression_is_clipped_to_the_blendshape_range():
    src = np.array([0.1, 0.9, 0.5])
    drv = np.array([[0.2, 0.2, 0.2], [0.6, 0.0, 0.3], [0.0, 0.5, 0.2]])
    out = relative_expression(src, drv)
    assert np.allclose(out, [[0.1, 0.9, 0.5], [0.5, 0.7, 0.6], [0.0, 1.0, 0.5]])
    assert np.allclose(relative_expression(src, drv, value_range=None)[2], [-0.1, 1.2, 0.5])


def test_absolute_motion_is_the_driver_and_errors_name_the_argument():
    rng = np.random.default_rng(6)
    drv_cams, drv_exprs = random_cameras(4, 7), rng.random((4, 52))
    out_expr, out_cam = transfer_motion(rng.random(52), random_cameras(1, 8)[0], drv_exprs, drv_cams,
                                        MotionSettings(mode="absolute"))  # fmt: skip
    assert np.array_equal(out_expr, drv_exprs) and np.array_equal(out_cam, drv_cams)
    with pytest.raises(ValueError, match="mode"):
        MotionSettings(mode="both")
    with pytest.raises(ValueError, match="ref"):
        relative_cameras(drv_cams[0], drv_cams, ref=4)
    with pytest.raises(ValueError, match="driver cameras"):
        relative_cameras(drv_cams[0], drv_cams[:, :16])
    with pytest.raises(ValueError, match="one row per frame"):
        transfer_motion(drv_exprs[0], drv_cams[0], drv_exprs[:3], drv_cams)
