"""``--from-deep3d``: Deep3DFaceRecon coefficient files (written here) -> clips with EG3D's camera conversion."""

import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from export3d.data import ClipFolder
from export3d.data.deep3d import Deep3DFormatError, deep3d_camera, deep3d_rotation, read_deep3d_clip
from export3d.data.headpose import camera_angles
from export3d.data.prepare import main

EG3D_K = [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]


def _write(folder, angles, trans, exp, packed=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for t, (a, tr, e) in enumerate(zip(angles, trans, exp, strict=True)):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"frame{t:03d}.png")
        if packed:
            coeffs = np.zeros((1, 257))
            coeffs[0, 80:144], coeffs[0, 224:227], coeffs[0, 254:257] = e, a, tr
            savemat(folder / f"frame{t:03d}.mat", {"coeffs": coeffs})
        else:
            savemat(folder / f"frame{t:03d}.mat", {"exp": e[None], "angle": a[None], "trans": tr[None],
                                                   "id": np.zeros((1, 80)), "gamma": np.zeros((1, 27))})


def test_rotation_is_deep3dfacerecons_euler_order():
    a = np.array([0.3, -0.4, 0.25])
    rx = np.array([[1, 0, 0], [0, math.cos(a[0]), -math.sin(a[0])], [0, math.sin(a[0]), math.cos(a[0])]])
    ry = np.array([[math.cos(a[1]), 0, math.sin(a[1])], [0, 1, 0], [-math.sin(a[1]), 0, math.cos(a[1])]])
    rz = np.array([[math.cos(a[2]), -math.sin(a[2]), 0], [math.sin(a[2]), math.cos(a[2]), 0], [0, 0, 1]])
    np.testing.assert_allclose(deep3d_rotation(a), (rz @ ry @ rx).T, atol=1e-12)


def test_frontal_fit_gives_eg3ds_frontal_label():
    cam = deep3d_camera(np.zeros(3), np.zeros(3))
    # EG3D: c = 0.27 * (0, 0, 10) + (0, 0.006, 0.161) = (0, 0.006, 2.861), rescaled to radius 2.7
    centre = np.array([0.0, 0.006, 2.861]) * 2.7 / math.hypot(0.006, 2.861)
    expected = np.eye(4)
    expected[:3, :3] = np.diag([1.0, -1.0, -1.0])
    expected[:3, 3] = centre
    np.testing.assert_allclose(cam[:16].reshape(4, 4), expected, atol=1e-12)
    np.testing.assert_allclose(cam[16:], EG3D_K)


@pytest.mark.parametrize("axis, angle_index", [("yaw", 1), ("roll", 2)])
def test_head_rotation_becomes_camera_rotation(axis, angle_index):
    for degrees in (-25.0, 10.0, 30.0):
        angles = np.zeros(3)
        angles[angle_index] = math.radians(degrees)
        cam = deep3d_camera(angles, np.zeros(3))
        rot = cam[:16].reshape(4, 4)[:3, :3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.norm(cam[[3, 7, 11]]) == pytest.approx(2.7)
        yaw, _, roll = camera_angles(cam)
        # Deep3DFaceRecon +y turns the nose to the image's right (the subject's left), so the camera now sees the
        # head's right side: it moved to world -x (negative yaw). +z turns the face counter-clockwise on screen.
        expected = -degrees if axis == "yaw" else degrees
        assert (yaw if axis == "yaw" else roll) == pytest.approx(expected, abs=1e-6)
        assert (roll if axis == "yaw" else yaw) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("packed", [False, True])
def test_prepare_from_deep3d_writes_a_clip_with_64d_beta(tmp_path, packed):
    rng = np.random.default_rng(0)
    T = 5
    angles, trans = rng.normal(0, 0.2, (T, 3)), rng.normal(0, 0.3, (T, 3))
    exp = rng.normal(0, 1, (T, 64))
    _write(tmp_path / "fits" / "alice" / "talk1", angles, trans, exp, packed)
    assert main(["--from-deep3d", str(tmp_path / "fits"), "--out", str(tmp_path / "clips"), "--size", "32",
                 "--min-frames", "3", "--split-by", "none", "--no-progress"]) == 0  # fmt: skip
    meta = json.loads((tmp_path / "clips" / "manifest.json").read_text())
    assert meta["expression_dim"] == 64 and [c["clip"] for c in meta["clips"]] == ["alice/talk1"]
    assert meta["clips"][0]["identity"] == "alice"
    params = np.load(tmp_path / "clips" / "alice" / "talk1" / "params.npz")
    np.testing.assert_allclose(params["expression"], exp.astype(np.float32))
    np.testing.assert_allclose(params["camera"], deep3d_camera(angles, trans).astype(np.float32))
    folder = ClipFolder(tmp_path / "clips")
    assert folder.expression_dim == 64 and folder.resolution == 32 and folder.clips[0].frames == T
    assert json.loads((tmp_path / "clips" / "manifest.json").read_text())["skipped"] == []


def test_bad_coefficient_files_are_named(tmp_path):
    _write(tmp_path / "clip", np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 64)))
    savemat(tmp_path / "clip" / "frame001.mat", {"exp": np.zeros((1, 64)), "angle": np.zeros((1, 3))})
    with pytest.raises(Deep3DFormatError, match=r"frame001\.mat.*'trans'"):
        read_deep3d_clip(tmp_path / "clip")
    (tmp_path / "clip" / "frame000.png").unlink()
    with pytest.raises(Deep3DFormatError, match="no image for 1 coefficient file.*frame000.mat"):
        read_deep3d_clip(tmp_path / "clip")
