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
