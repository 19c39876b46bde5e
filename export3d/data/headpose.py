"""Head pose from face landmarks -> the EG3D 25-value camera, by PnP against MediaPipe's canonical face mesh.

World frame (the EG3D/FFHQ one, docs/design.md "Cameras"): the head is fixed, faces +z, +y up, +x = the subject's
left. The canonical mesh has the same axes in centimetres, so a mesh point ``m`` sits in the world at
``WORLD_PER_CM * (m - mesh centroid) + FACE_CENTRE``. Both constants are EG3D's conversion of Deep3DFaceRecon fits
(``dataset_preprocessing/ffhq/3dface2idr_mat.py``, written out in :mod:`export3d.data.deep3d`): Deep3DFaceRecon's
BFM unit is 10 cm (BFM09 micrometres / 1e5) and EG3D scales it by 0.27 and then shifts the camera by
(0, 0.006, 0.161), which puts the face model's centroid at ``FACE_CENTRE``.

The camera of a frame: ``cv2.solvePnP`` of the rigid landmarks (MediaPipe's Procrustes basis) in the square
crop against the mesh, with the EG3D intrinsics (focal 4.2647 x crop size, centre in the middle), turned into
a cam2world matrix in OpenCV axes. :func:`reprojection_error` projects the mesh through the written 25-value
camera (the renderer's own projection, :func:`export3d.cameras.project_points`) and compares with the landmarks:
the check that the camera means what the crop shows.
"""

from __future__ import annotations

import numpy as np
import torch

from export3d.cameras import FOCAL, INTRINSICS, orbit_camera, project_points
from export3d.data.deep3d import EG3D_OFFSET, EG3D_SCALE
from export3d.data.landmarker import CanonicalMesh
from export3d.utils.extras import require

BFM_UNIT_CM = 10.0  # Deep3DFaceRecon's BFM unit (BFM09 micrometres / 1e5)
WORLD_PER_CM = EG3D_SCALE / BFM_UNIT_CM  # 0.027 world units per centimetre of the canonical mesh
FACE_CENTRE = EG3D_OFFSET  # world position of the face model's centroid
# EG3D's frontal camera, LookAtPoseSampler.sample(pi/2, pi/2, (0, 0, 0.2), radius=2.7): 2.7 on +z looking along -z,
# cam2world rotation diag(1, -1, -1), the normalised intrinsics. The crop is calibrated on it (export3d.data.crop).
FRONTAL_CAMERA = orbit_camera(torch.zeros(1), torch.zeros(1))[0].double().numpy()


def mesh_to_world(mesh: CanonicalMesh, points: np.ndarray | None = None) -> np.ndarray:
    """Canonical-mesh points (cm, default: all 468 vertices) -> world points. # [N, 3] float64"""
    points = mesh.vertices if points is None else points
    return WORLD_PER_CM * (points - mesh.vertices.mean(0)) + FACE_CENTRE


def camera_matrix(size: int, focal: float = FOCAL) -> np.ndarray:
    """Pixel intrinsics of a ``size`` x ``size`` crop with the normalised EG3D intrinsics. # [3, 3]"""
    return np.array([[focal * size, 0.0, size / 2], [0.0, focal * size, size / 2], [0.0, 0.0, 1.0]])


def solve_camera(mesh: CanonicalMesh, landmarks: np.ndarray, size: int) -> np.ndarray:
    """landmarks # [>=468, 2] pixels of the ``size`` x ``size`` crop -> EG3D camera # [25] float64.

    SQPnP (a global solver) on the Procrustes landmarks, refined by Levenberg-Marquardt on the same points.
    """
    cv2 = require("cv2")
    ids = mesh.pose_ids
    obj = np.ascontiguousarray(mesh.vertices[ids], dtype=np.float64)
    img = np.ascontiguousarray(landmarks[ids, :2], dtype=np.float64)
    K = camera_matrix(size)
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise ValueError("solvePnP found no pose for these landmarks")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, None, rvec, tvec)
    R = cv2.Rodrigues(rvec)[0]  # mesh (cm) -> OpenCV camera (cm)
    t = tvec.reshape(3)
    # world w = s (m - c) + o  =>  camera point (world units) = R (w - o) + s (R c + t); invert for cam2world
    centroid = mesh.vertices.mean(0)
    cam2world = np.eye(4)
    cam2world[:3, :3] = R.T
    cam2world[:3, 3] = FACE_CENTRE - WORLD_PER_CM * (centroid + R.T @ t)
    return np.concatenate([cam2world.reshape(16), np.asarray(INTRINSICS, dtype=np.float64).reshape(9)])


def project(camera: np.ndarray, world: np.ndarray) -> np.ndarray:
    """Normalised image coordinates (u = column, v = row, in [0, 1] across the image) of world points.

    camera # [25], world # [N, 3] -> uv # [N, 2] float64: :func:`export3d.cameras.project_points` on numpy arrays.
    """
    uv, _ = project_points(torch.from_numpy(np.asarray(camera, np.float64))[None],
                           torch.from_numpy(np.asarray(world, np.float64))[None])  # fmt: skip
    return uv[0].numpy()


def reprojection_error(mesh: CanonicalMesh, camera: np.ndarray, landmarks: np.ndarray, size: int) -> float:
    """Mean distance in crop pixels between the Procrustes landmarks and the mesh seen through ``camera``."""
    uv = project(camera, mesh_to_world(mesh, mesh.vertices[mesh.pose_ids])) * size
    return float(np.linalg.norm(uv - landmarks[mesh.pose_ids, :2], axis=1).mean())


def camera_angles(camera: np.ndarray) -> np.ndarray:
    """Head pose seen by cameras # [..., 25] -> (yaw, elevation, roll) in degrees # [..., 3].

    yaw: the camera's forward direction turned towards world +x (the subject's left) is positive; elevation:
    the camera above the head looking down is positive; roll: the head turned counter-clockwise in the image
    (as displayed, row 0 at the top) is positive.
    """
    rot = np.asarray(camera, dtype=np.float64)[..., :16].reshape(*np.shape(camera)[:-1], 4, 4)[..., :3, :3]
    forward = rot[..., :, 2]
    yaw = np.arctan2(-forward[..., 0], -forward[..., 2])
    elevation = np.arcsin(np.clip(-forward[..., 1], -1, 1))
    roll = np.arctan2(-rot[..., 1, 0], -rot[..., 1, 1])  # world up seen in the camera: (-sin roll, -cos roll)
    return np.degrees(np.stack([yaw, elevation, roll], axis=-1))
