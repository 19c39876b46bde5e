"""EG3D's published camera formula, written out independently of the package: the oracle of the camera tests."""

from __future__ import annotations

import math

import numpy as np


def eg3d_look_at(horizontal, vertical, lookat, radius):
    """EG3D's LookAtPoseSampler.sample + create_cam2world_matrix (eg3d/camera_utils.py), written out in numpy."""
    v = np.clip(vertical, 1e-5, math.pi - 1e-5) / math.pi
    theta, phi = horizontal, np.arccos(1 - 2 * v)
    origin = radius * np.array([np.sin(phi) * np.cos(math.pi - theta), np.cos(phi),
                                np.sin(phi) * np.sin(math.pi - theta)])
    forward = np.asarray(lookat) - origin
    forward /= np.linalg.norm(forward)
    right = -np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    up /= np.linalg.norm(up)
    cam2world = np.eye(4)
    cam2world[:3, :3] = np.stack([right, up, forward], axis=-1)
    cam2world[:3, 3] = origin
    return cam2world


def eg3d_ray_sampler(cam2world, intrinsics, resolution):
    """EG3D's RaySampler.forward (eg3d/training/volumetric_rendering/ray_sampler.py) for one camera, in numpy.

    cam2world # [4, 4], intrinsics # [3, 3] -> origins # [R, 3], unit directions # [R, 3], R = resolution^2. Kept in
    EG3D's own steps: a (row, column) meshgrid flipped to (u, v), the skew-corrected lift to camera space at z = 1,
    the homogeneous point taken through cam2world, minus the camera centre, normalised.
    """
    idx = np.arange(resolution, dtype=np.float64)
    uv = np.stack(np.meshgrid(idx, idx, indexing="ij")) * (1.0 / resolution) + (0.5 / resolution)  # [2, res, res]
    uv = uv[::-1].reshape(2, -1).T  # [R, 2]: flip(0) puts the column index first
    x_cam, y_cam, z_cam = uv[:, 0], uv[:, 1], np.ones(len(uv))
    fx, fy, cx, cy, sk = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2], intrinsics[0, 1]
    x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam
    y_lift = (y_cam - cy) / fy * z_cam
    cam_rel = np.stack([x_lift, y_lift, z_cam, np.ones_like(z_cam)], axis=-1)  # [R, 4]
    world_rel = (cam2world @ cam_rel.T).T[:, :3]
    dirs = world_rel - cam2world[:3, 3]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return np.broadcast_to(cam2world[:3, 3], dirs.shape), dirs
