"""The ray caster's shortcuts are conservative: bounding sphere and cone pre-pass never lose geometry."""

import torch

import export3d.data.raycast as raycast
from export3d.data import N_APPEARANCE, FrameKey, SyntheticConfig, SyntheticHeads
from export3d.data.heads import BOUND_RADIUS, HEAD_CENTRE, TABLE_NAMES, geometry_table, head_sdf


def test_every_head_is_inside_the_bounding_sphere_and_the_world_box():
    g = torch.Generator().manual_seed(0)
    appearances = torch.cat([torch.zeros(1, N_APPEARANCE), torch.ones(1, N_APPEARANCE),
                             torch.rand(4, N_APPEARANCE, generator=g)])
    axis = torch.linspace(-0.45, 0.45, 46)
    x, y, z = (c.reshape(-1) for c in torch.meshgrid(axis, axis, axis, indexing="ij"))  # head-local grid
    for expression in (torch.zeros(1, 6), torch.ones(1, 6)):
        for app in appearances:
            table = geometry_table(app[None], expression)
            rows = torch.stack([table[n] for n in TABLE_NAMES]).expand(-1, x.numel())
            inside = head_sdf(x, y, z, raycast._rows(rows)) < 0
            assert inside.sum() > 1000
            radius = torch.sqrt(x * x + y * y + z * z)[inside].max()
            assert radius < BOUND_RADIUS - 0.02, radius
            size = float(table["size"][0])
            for c, coord in zip(HEAD_CENTRE, (x, y, z), strict=True):
                world = c + size * coord[inside]
                assert world.abs().max() < 0.5  # inside the model's box [-0.5, 0.5]^3


def test_cone_prepass_finds_the_same_pixels_as_plain_tracing(monkeypatch):
    heads = SyntheticHeads(SyntheticConfig(resolution=64))
    keys = [FrameKey(i, 0, 9 * i) for i in range(4)]
    args = (heads.appearance([k.identity for k in keys]), heads.expression(keys), heads.camera(keys), 64)
    fast, fast_mask = raycast.render_heads(*args, with_mask=True)
    monkeypatch.setattr(raycast, "CONE_BLOCK", 10_000)  # no tile size divides 64: plain per-pixel tracing
    plain, plain_mask = raycast.render_heads(*args, with_mask=True)
    assert torch.equal(fast_mask, plain_mask)
    close = (fast - plain).abs().amax(1) <= 4 / 255  # within 2 uint8 levels
    assert close.float().mean() > 0.999
