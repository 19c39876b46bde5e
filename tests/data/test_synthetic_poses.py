"""The synthetic data's poses: valid EG3D cameras on the orbit, upright heads that stay inside the image."""

import math

import torch

from export3d.cameras import INTRINSICS, PIVOT, orbit_camera_deg
from export3d.data import N_APPEARANCE, FrameKey, SyntheticConfig, SyntheticHeads
from export3d.data.heads import APPEARANCE_NAMES
from export3d.data.raycast import render_heads

CFG = SyntheticConfig(resolution=32)
KEYS = [FrameKey(i, c, f) for i in range(12) for c in range(2) for f in range(0, 64, 9)]


def test_cameras_are_rigid_orbit_cameras_looking_at_the_pivot():
    cams = SyntheticHeads(CFG).camera(KEYS).to(torch.float64)  # [N, 25]
    c2w = cams[:, :16].reshape(-1, 4, 4)
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(len(KEYS), dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(len(KEYS), 4))
    intr = torch.tensor(INTRINSICS, dtype=torch.float64).reshape(9)
    torch.testing.assert_close(cams[:, 16:], intr.expand(len(KEYS), 9), atol=1e-6, rtol=0)
    pivot = torch.tensor(PIVOT, dtype=torch.float64)
    torch.testing.assert_close(pos.norm(dim=1), torch.full((len(KEYS),), 2.7, dtype=torch.float64),
                               atol=1e-5, rtol=0)  # EG3D: 2.7 from the origin ...
    forward = (pivot - pos) / (pivot - pos).norm(dim=1, keepdim=True)
    torch.testing.assert_close(rot[:, :, 2], forward, atol=1e-5, rtol=0)  # ... looking at the pivot
    assert (rot[:, 1, 1] < 0).all()  # camera y (down) points to world -y: world +y is up in the image
    yaw = torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2]))
    pitch = torch.rad2deg(-math.pi / 2 * pos[:, 1] / 2.7)  # EG3D: height = -2 r pitch / pi
    assert yaw.abs().max() <= 35.0 and pitch.abs().max() <= 20.0
    assert yaw.abs().max() > 20.0 and pitch.abs().max() > 10.0  # the range is actually used


def _mask_and_image(app, cams):
    return render_heads(app, torch.zeros(len(app), 6), cams, 32, with_mask=True)


def test_head_is_inside_the_image_at_every_sampled_pose():
    heads = SyntheticHeads(CFG)
    keys = KEYS[::3]
    cams = heads.camera(keys)
    corners = torch.stack([orbit_camera_deg(y, p) for y in (-35, 35) for p in (-20, 20)])
    app = heads.appearance([k.identity for k in keys] + [0, 1, 2, 3])
    _, mask = _mask_and_image(app, torch.cat([cams, corners]))
    fg = mask[:, 0] > 0  # [N, 32, 32]
    border = fg[:, 0].any(1) | fg[:, -1].any(1) | fg[:, :, 0].any(1) | fg[:, :, -1].any(1)
    assert not border.any(), f"head touches the border in {int(border.sum())} frames"
    cover = fg.float().mean((1, 2))
    assert cover.min() > 0.15 and cover.max() < 0.6, cover


def test_image_is_upright():
    # Black hair on pale skin: the top of the head (hair) must be at the top of the image, the neck at the bottom.
    app = torch.full((1, N_APPEARANCE), 0.5)
    app[0, APPEARANCE_NAMES.index("hair_tone")] = 0.0
    app[0, APPEARANCE_NAMES.index("skin_tone")] = 0.0
    img, mask = _mask_and_image(app, orbit_camera_deg(0, 0)[None])
    rows = torch.nonzero(mask[0, 0].amax(1) > 0.5).squeeze(1)
    top, bottom = img[0, :, rows[0]], img[0, :, rows[-1]]  # [3, 32] first and last rows with head pixels
    fg_top, fg_bottom = mask[0, 0, rows[0]] > 0.5, mask[0, 0, rows[-1]] > 0.5
    assert top[:, fg_top].mean() < -0.5  # dark hair
    assert bottom[:, fg_bottom].mean() > 0.0  # skin of the neck
