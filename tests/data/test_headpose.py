"""PnP against the canonical face mesh recovers known EG3D cameras; the bundle's mesh is read correctly;
the face tools are optional (clear message when missing, core package imports without them)."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from export3d.data.crop import calibration, face_measures, smooth
from export3d.data.headpose import FRONTAL_CAMERA, camera_angles, mesh_to_world, project, solve_camera
from export3d.data.landmarker import canonical_mesh
from export3d.utils.extras import MissingExtraError, require
from tests.eg3d_formula import eg3d_look_at


def _camera(yaw_deg, elevation_deg, roll_deg, radius=2.7):
    """A camera on the sphere around the pivot (0, 0, 0.2) looking at it, then rolled about its axis."""
    yaw, el, roll = map(math.radians, (yaw_deg, elevation_deg, roll_deg))
    pos = np.array([0, 0, 0.2]) + radius * np.array([math.cos(el) * math.sin(yaw), math.sin(el),
                                                     math.cos(el) * math.cos(yaw)])
    forward = (np.array([0, 0, 0.2]) - pos) / np.linalg.norm(np.array([0, 0, 0.2]) - pos)
    right = np.cross(forward, [0, 1, 0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, c * down - s * right  # the image turns counter-clockwise by roll
    cam = np.eye(4)
    cam[:3, :3] = np.stack([right, down, forward], 1)
    cam[:3, 3] = pos
    return np.concatenate([cam.reshape(16), FRONTAL_CAMERA[16:]])


def test_canonical_mesh_from_the_bundle():
    mesh = canonical_mesh()
    v = mesh.vertices
    assert v.shape == (468, 3) and 20 < len(mesh.pose_ids) < 100
    assert v[1, 2] > v[234, 2] + 5  # nose tip (1) in front of the cheek edge (234), z out of the face, cm
    assert v[10, 1] > v[152, 1] + 15  # forehead (10) above the chin (152): y up, a face ~17 cm tall
    assert v[263, 0] > 0 > v[33, 0]  # the subject's left eye corner (263) at +x
    np.testing.assert_allclose(v[263] * [-1, 1, 1], v[33], atol=1e-4)  # mirror-symmetric


@pytest.mark.parametrize("pose", [(0, 0, 0), (25, 0, 0), (-20, 12, 0), (10, -8, 15), (0, 0, -20)])
def test_pnp_recovers_the_camera_that_saw_the_mesh(pose):
    mesh = canonical_mesh()
    truth = _camera(*pose)
    size = 256
    landmarks = project(truth, mesh_to_world(mesh)) * size  # [468, 2] exact projections
    cam = solve_camera(mesh, landmarks, size)
    np.testing.assert_allclose(cam[:16].reshape(4, 4), truth[:16].reshape(4, 4), atol=1e-5)
    np.testing.assert_allclose(camera_angles(cam), camera_angles(truth), atol=1e-4)
    np.testing.assert_allclose(camera_angles(truth), pose, atol=1e-9)  # camera_angles reads back what was built


def test_crop_calibration_maps_a_frontal_face_to_eg3ds_frontal_camera():
    mesh = canonical_mesh()
    anchor, size_ref = calibration(mesh)
    uv = project(FRONTAL_CAMERA, mesh_to_world(mesh))
    a, s = face_measures(uv)
    np.testing.assert_allclose(a, anchor)
    assert s == pytest.approx(size_ref)
    assert anchor[0] == pytest.approx(0.5, abs=1e-6)  # centred horizontally (the face is symmetric)
    assert 0.3 < size_ref < 0.8
    landmarks = uv * 128
    np.testing.assert_allclose(solve_camera(mesh, landmarks, 128), FRONTAL_CAMERA, atol=1e-6)
    expected = np.eye(4)
    expected[:3, :3], expected[2, 3] = np.diag([1.0, -1.0, -1.0]), 2.7  # EG3D's sampler at yaw = pitch = 0
    np.testing.assert_allclose(FRONTAL_CAMERA[:16].reshape(4, 4), expected, atol=1e-6)


def test_prepared_frontal_camera_is_eg3ds_sampler_at_yaw_pitch_zero():
    expected = eg3d_look_at(math.pi / 2, math.pi / 2, (0.0, 0.0, 0.2), 2.7)
    np.testing.assert_allclose(FRONTAL_CAMERA[:16].reshape(4, 4), expected, atol=1e-12)
    np.testing.assert_allclose(FRONTAL_CAMERA[16:], [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1])


def test_smoothing_follows_steady_motion_and_removes_jitter():
    t = np.arange(30, dtype=np.float64)
    ramp = np.stack([3.0 * t + 5, -2.0 * t], 1)
    np.testing.assert_allclose(smooth(ramp, 2.0), ramp, atol=1e-9)  # no lag, also at the ends
    noisy = ramp + np.random.default_rng(0).normal(0, 1.0, ramp.shape)
    assert np.abs(smooth(noisy, 2.0) - ramp).std() < 0.6 * np.abs(noisy - ramp).std()
    np.testing.assert_allclose(smooth(ramp[:2], 2.0), ramp[:2])  # two frames: nothing to smooth over


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` fail
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[faces\]'"):
        require("mediapipe")


def test_core_package_imports_without_the_face_tools():
    code = ("import sys\n"
            "for m in ('mediapipe', 'cv2', 'dlib'): sys.modules[m] = None\n"
            "import export3d.data.prepare, export3d.data.deep3d, export3d.data, export3d.train, export3d.evaluate\n"
            "from export3d.data.landmarker import FaceLandmarker\n"
            "from export3d.utils.extras import MissingExtraError\n"
            "try:\n    FaceLandmarker().detect(None, 0)\nexcept MissingExtraError as e:\n    print('MISSING', e)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MISSING mediapipe is needed" in out.stdout and ".[faces]" in out.stdout
