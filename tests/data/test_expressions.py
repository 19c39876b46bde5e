"""Each true expression component visibly changes the face, and only in its own region."""

import torch

from export3d.cameras import orbit_camera_deg
from export3d.data import EXPRESSION_NAMES, SyntheticConfig, SyntheticHeads

RES = 64
UPPER = ("blink_left", "blink_right", "brow_raise")  # eye region
LOWER = ("jaw_open", "smile", "lip_pucker")  # mouth region
THRESHOLD = 8 / 255  # 4 uint8 levels: smaller changes are round-off in where a ray stops, not geometry


def _change_masks(identity: int, base: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixels # [RES, RES] (bool) that change when each component goes 0 -> 1 from ``base`` (frontal camera)."""
    heads = SyntheticHeads(SyntheticConfig(resolution=RES))
    n = len(EXPRESSION_NAMES)
    lo, hi = base.repeat(n, 1), base.repeat(n, 1)
    lo[range(n), range(n)] = 0.0
    hi[range(n), range(n)] = 1.0
    cams = orbit_camera_deg(0, 0).expand(2 * n, 25)
    images = heads.render([identity] * (2 * n), torch.cat([lo, hi]), cams)
    diff = (images[:n] - images[n:]).abs().amax(1) > THRESHOLD  # [n, RES, RES]
    return dict(zip(EXPRESSION_NAMES, diff, strict=True))


def test_components_change_pixels_only_in_their_own_region():
    g = torch.Generator().manual_seed(0)
    for identity in (0, 5, 11):
        base = torch.rand(1, 6, generator=g) * 0.5  # an arbitrary mid expression
        masks = _change_masks(identity, base)
        counts = {k: int(m.sum()) for k, m in masks.items()}
        print(identity, counts)
        for name, m in masks.items():
            assert m.sum() >= 6, f"{name} changes only {int(m.sum())} pixels of identity {identity}"
        for up in UPPER:
            for low in LOWER:
                overlap = int((masks[up] & masks[low]).sum())
                assert overlap == 0, f"{up} and {low} both change {overlap} pixels (identity {identity})"
        assert not (masks["blink_left"] & masks["blink_right"]).any()
        # The subject's left eye is on the image's right at the frontal camera; the mouth is below the eyes.
        cols = torch.nonzero(masks["blink_left"])[:, 1]
        assert cols.min() >= RES // 2, "blink_left must only change the right half of a frontal image"
        assert torch.nonzero(masks["blink_right"])[:, 1].max() < RES // 2
        eye_rows = torch.nonzero(masks["blink_left"] | masks["blink_right"])[:, 0]
        mouth_rows = torch.nonzero(masks["jaw_open"])[:, 0]
        assert eye_rows.float().mean() < mouth_rows.float().mean()


def test_expression_changes_geometry_under_other_views():
    heads = SyntheticHeads(SyntheticConfig(resolution=32))
    e = torch.zeros(2, 6)
    e[1, 0] = 1.0  # jaw open changes the silhouette of the chin seen from the side
    cams = orbit_camera_deg(35, -10).expand(2, 25)
    from export3d.data.raycast import render_heads

    app = heads.appearance([3, 3])
    _, mask = render_heads(app, e, cams, 32, with_mask=True)
    assert (mask[0] != mask[1]).sum() >= 2
