"""Batched CPU sphere tracing and shading of the procedural heads (no dependency on the model's renderer).

All frames of a batch are traced in one vectorised pass: rays are flattened over the batch, each
ray carries its frame's geometry parameters, and finished rays are compacted away. A ray's result
never depends on the other rays (finished rays are frozen, not re-stepped), so a frame renders to
the same pixels alone or in any batch.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from export3d.cameras import camera_rays, dot3
from export3d.data.heads import BOUND_RADIUS, HEAD_CENTRE, TABLE_NAMES, colours, geometry_table, head_sdf

LIGHT = (-0.38, 0.5, 0.78)  # world direction toward the key light (upper left of a frontal image, in front)
AMBIENT = 0.38
DIFFUSE = 0.7
CONE_STEPS = 32  # step budget of the cone pre-pass (an unfinished cone is still a safe start)
MAX_STEPS = 64  # step budget per pixel ray; rays still creeping along a silhouette then end as below
CONE_BLOCK = 4  # pixel tile size of the cone pre-pass
REFINE_STEPS = 6  # unrelaxed sphere-tracing steps on each hit after convergence
HIT_TOLERANCE = 0.1  # a ray hits where the SDF is below this fraction of a pixel footprint
STEP = 0.9  # under-relaxation: the ellipsoid and bent-mouth fields are bounds, not exact distances
TETRA = ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))


def _rows(table: torch.Tensor) -> SimpleNamespace:
    """[P, M] parameter rows -> namespace of [M] tensors."""
    return SimpleNamespace(**dict(zip(TABLE_NAMES, table.unbind(0), strict=True)))


def _march(o, d, tab, t, t_end, eps, cone, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere-trace M head-local rays from depth t. o, d # [M, 3], tab # [P, M], t, t_end, eps # [M].

    Returns the stopping depth # [M] and a state # [M] (int8): 1 = reached the surface
    (|sdf| < (eps + cone) * t), 0 = left the bound (t > t_end), -1 = step budget exhausted.
    With cone > 0 this traces a cone of half-angle ~cone (radians) around each ray: it only advances while
    sdf > cone * t, so every ray inside the cone is still in free space at the returned depth.
    Finished rays are frozen (never re-stepped), so a ray's result does not depend on the others.
    """
    t_out = t.clone()
    state = torch.full(t.shape, -1, dtype=torch.int8)
    idx = torch.arange(t.shape[0])
    fin = torch.zeros(t.shape[0], dtype=torch.bool)
    for _ in range(steps):
        if idx.numel() == 0:
            break
        dist = head_sdf(o[:, 0] + t * d[:, 0], o[:, 1] + t * d[:, 1], o[:, 2] + t * d[:, 2], _rows(tab))
        reached = dist.abs() < (eps + cone) * t
        left = (t > t_end) & ~reached
        fin = reached | left
        t_out[idx[fin]] = t[fin]
        state[idx[reached]] = 1
        state[idx[left]] = 0
        t = torch.where(fin, t, t + STEP * (dist - cone * t))
        if fin.sum() * 8 >= fin.numel():  # compact once an eighth of the live rays has finished
            keep = torch.nonzero(~fin).squeeze(1)
            ray_state = (idx, t, t_end, eps, cone, o, d, fin)
            idx, t, t_end, eps, cone, o, d, fin = (x.index_select(0, keep) for x in ray_state)
            tab = tab.index_select(1, keep)
    live = ~fin
    t_out[idx[live]] = t[live]
    return t_out, state


def _bound(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entry/exit depths of unit rays o + t d # [M, 3] through the bounding sphere, and whether they meet it."""
    b = dot3(o, d)
    disc = b * b - (dot3(o, o) - BOUND_RADIUS**2)
    root = torch.sqrt(disc.clamp_min(0))
    return (-b - root).clamp_min(0), -b + root, disc > 0


def _trace(org, dirs, coarse_dirs, table, pixel, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the first surface hit of every ray. org # [B, 3] head-local camera centres, dirs # [B, R, R, 3],
    coarse_dirs # [B, R/block, R/block, 3] (rays through the centres of block x block pixel tiles) or None,
    table # [P, B], pixel # [B] (a pixel's angular size) -> depth # [B*R*R] and hit mask # [B*R*R].

    A cone pass over the tiles first finds, per tile, a depth every ray of the tile can safely start
    from (and tiles whose cone misses the head entirely); the per-pixel pass then starts there.
    """
    bsz, res = dirs.shape[0], dirs.shape[1]
    eps = HIT_TOLERANCE * pixel  # [B]
    frame = torch.arange(bsz).repeat_interleave(res * res)  # [B*R*R]
    o, d = org[frame], dirs.reshape(-1, 3)
    t0, t1, meets = _bound(o, d)
    if coarse_dirs is not None:
        nc = coarse_dirs.shape[1]
        cframe = torch.arange(bsz).repeat_interleave(nc * nc)
        co, cd = org[cframe], coarse_dirs.reshape(-1, 3)
        dist_c = torch.sqrt(dot3(co, co))
        cone = (0.75 * block) * pixel[cframe]  # > the angle from a tile's centre ray to its corner pixels' rays
        start, end = (dist_c - BOUND_RADIUS).clamp_min(0), dist_c + BOUND_RADIUS
        tc, state_c = _march(co, cd, table.index_select(1, cframe), start, end, eps[cframe], cone, CONE_STEPS)
        tile = (torch.arange(res) // block)[:, None] * nc + (torch.arange(res) // block)[None, :]  # [R, R]
        tile = (tile.reshape(1, -1) + (torch.arange(bsz) * nc * nc)[:, None]).reshape(-1)  # [B*R*R]
        # start one cone width before the cone's stop: the head's fields are distance bounds, not exact distances,
        # so a cone can stop a little past a grazing pixel ray's first hit (seen with EG3D's closer orbit camera)
        t0 = torch.maximum(t0, tc[tile] - (eps[cframe] + cone)[tile] * tc[tile])
        meets = meets & (state_c[tile] != 0)
    t_hit = torch.full(t0.shape, float("inf"))
    hit = torch.zeros(t0.shape, dtype=torch.bool)
    idx = torch.nonzero(meets).squeeze(1)
    if idx.numel() > 0:
        fr = frame[idx]
        o, d, tab = o.index_select(0, idx), d.index_select(0, idx), table.index_select(1, fr)
        t, state = _march(o, d, tab, t0[idx], t1[idx], eps[fr], torch.zeros(idx.shape[0]), MAX_STEPS)
        unfinished = torch.nonzero(state == -1).squeeze(1)
        if unfinished.numel() > 0:  # out of steps (grazing a silhouette): a hit if within half a pixel
            u = unfinished
            dist = head_sdf(o[u, 0] + t[u] * d[u, 0], o[u, 1] + t[u] * d[u, 1], o[u, 2] + t[u] * d[u, 2],
                            _rows(tab.index_select(1, u)))
            state[u] = (dist.abs() < 0.5 * pixel[fr[u]] * t[u]).to(torch.int8)
        keep = torch.nonzero(state == 1).squeeze(1)
        idx, t, o, d, tab = idx[keep], t[keep], o[keep], d[keep], tab.index_select(1, keep)
        for _ in range(REFINE_STEPS):  # polish the hit so it hardly depends on the path the march took
            t = t + head_sdf(o[:, 0] + t * d[:, 0], o[:, 1] + t * d[:, 1], o[:, 2] + t * d[:, 2], _rows(tab))
        hit[idx] = True
        t_hit[idx] = t
    return t_hit, hit


def _albedo(groups: dict[str, torch.Tensor], q: torch.Tensor, p: SimpleNamespace, col: dict[str, torch.Tensor],
            tau: torch.Tensor) -> torch.Tensor:
    """Blend material colours by closeness of each material's surface. q # [H, 3] -> albedo # [H, 3]."""
    ax = q[:, 0].abs()
    ez = (q[:, 2] - p.eye_cz) / p.eye_r  # z of the point on the eyeball's unit sphere (1 = looking out)
    iris = ((ez - 0.72) / 0.06).clamp(0, 1)[:, None]
    pupil = ((ez - 0.93) / 0.03).clamp(0, 1)[:, None]
    eye = (1 - iris) * torch.tensor([0.93, 0.92, 0.88]) + iris * col["iris"]
    eye = eye * (1 - pupil) + 0.04 * pupil
    s = 40.0 * q[:, 0] + 25.0 * q[:, 1] - 10.0 * q[:, 2]  # hair strands: a triangle wave, no transcendental ops
    strands = (2 * (s - torch.floor(s + 0.5))).abs()[:, None]
    lid = ((ax - p.eye_cx).abs() < 1.3 * p.eye_r) & ((q[:, 1] - 0.015).abs() < 1.3 * p.eye_r)
    skin = col["skin"] * torch.where(lid, 0.93, 1.0)[:, None]
    albedo = {
        "skin": skin,
        "lips": col["lips"],
        "mouth": torch.tensor([0.22, 0.04, 0.05]).expand_as(skin),
        "teeth": torch.tensor([0.95, 0.93, 0.86]).expand_as(skin),
        "eye": eye,
        "hair": col["hair"] * (0.82 + 0.3 * strands),
    }
    best = torch.stack(list(groups.values()), 0).amin(0)  # [H]
    total = torch.zeros_like(best)
    out = torch.zeros_like(skin)
    for name, dist in groups.items():
        w = (1 - (dist - best) / tau).clamp_min(0)  # [H]; hat-shaped soft minimum, local to a pixel
        total = total + w
        out = out + w[:, None] * albedo[name]
    return out / total[:, None]


def render_heads(appearance: torch.Tensor, expression: torch.Tensor, camera: torch.Tensor, resolution: int,
                 supersample: int = 1, with_mask: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Render heads. appearance # [B, n_app] in [0, 1], expression # [B, 6], camera # [B, 25].

    Returns images # [B, 3, R, R] in [-1, 1] (R = resolution). ``supersample`` > 1 traces an
    s x s grid per pixel and box-filters it (antialiasing at s^2 the cost). With ``with_mask`` also
    returns the head's coverage # [B, 1, R, R] in [0, 1] (1 = every sample hit the head).
    """
    if resolution < 1 or supersample < 1:
        raise ValueError(f"resolution and supersample must be >= 1, got {resolution}, {supersample}")
    bsz = appearance.shape[0]
    if camera.shape != (bsz, 25):
        raise ValueError(f"camera must have shape [{bsz}, 25], got {tuple(camera.shape)}")
    res = resolution * supersample
    geo = geometry_table(appearance, expression)
    table = torch.stack([geo[n] for n in TABLE_NAMES], 0)  # [P, B]
    col = colours(appearance)
    size = geo["size"]  # [B]
    origins, dirs = camera_rays(camera, res)  # [B, N, 3] each (origins: one point per frame, expanded)
    org = (origins[:, 0] - torch.tensor(HEAD_CENTRE)) / size[:, None]  # [B, 3] head-local camera centres
    pixel = 1.0 / (camera[:, 16].to(torch.float32) * res)  # [B] angular size of a pixel (radians, at most)
    block = CONE_BLOCK if res % CONE_BLOCK == 0 and res >= 4 * CONE_BLOCK else 1
    coarse = camera_rays(camera, res // block)[1].reshape(bsz, res // block, res // block, 3) if block > 1 else None
    t, hit = _trace(org, dirs.reshape(bsz, res, res, 3), coarse, table, pixel, block)
    n = res * res
    frame = torch.arange(bsz).repeat_interleave(n)  # [B*N] frame index of each ray
    org = org[frame]
    flat_dirs = dirs.reshape(-1, 3)
    pix = 0.5 * pixel[frame]  # [B*N] half a pixel's angular size

    # Background: the identity's colour with a soft vertical gradient (top lighter).
    v = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    grad = (1.08 - 0.16 * v)[:, None].expand(res, res).reshape(-1)  # [N]
    image = col["background"][frame] * grad.repeat(bsz)[:, None]  # [B*N, 3]

    hid = torch.nonzero(hit).squeeze(1)
    if hid.numel() > 0:
        fr = frame[hid]
        p = _rows(table.index_select(1, fr))
        q = org[hid] + t[hid, None] * flat_dirs[hid]  # [H, 3] hit points
        _, groups = head_sdf(q[:, 0], q[:, 1], q[:, 2], p, parts=True)
        h = (pix[hid] * t[hid]).clamp(2e-4, 2e-3)  # finite-difference step ~ the pixel footprint
        normal = torch.zeros_like(q)
        for k in TETRA:
            kk = torch.tensor(k)
            qk = q + h[:, None] * kk
            normal = normal + head_sdf(qk[:, 0], qk[:, 1], qk[:, 2], p)[:, None] * kk
        normal = normal / torch.sqrt(dot3(normal, normal)).clamp_min(1e-12)[:, None]
        light = torch.tensor(LIGHT)
        light = light / torch.sqrt(dot3(light, light))
        lambert = dot3(normal, light).clamp_min(0)  # [H]
        frame_col = {k: c[fr] for k, c in col.items()}
        albedo = _albedo(groups, q, p, frame_col, tau=pix[hid] * t[hid] + 1e-4)  # blend over ~half a pixel
        image[hid] = albedo * (AMBIENT + DIFFUSE * lambert)[:, None]
    image = image.clamp(0, 1).reshape(bsz, res, res, 3).permute(0, 3, 1, 2)  # [B, 3, res, res]
    mask = hit.to(torch.float32).reshape(bsz, 1, res, res)
    if supersample > 1:
        image, mask = F.avg_pool2d(image, supersample), F.avg_pool2d(mask, supersample)
    image = (image * 2 - 1).contiguous()
    return (image, mask) if with_mask else image
