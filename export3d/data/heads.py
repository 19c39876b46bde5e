"""Procedural heads: appearance codes, expression-dependent geometry (a signed-distance field) and colours.

Everything here is a pure function of numbers: an appearance vector ``a [n_app]`` in [0, 1] and a
true expression ``e [6]`` in [0, 1]. The geometry lives in *head-local* coordinates
``q = (world - HEAD_CENTRE) / head_size`` (world axes: +y up, the face looks toward +z, +x is the
subject's left). The SDF uses only +, -, *, /, sqrt, min/max and abs, so a pixel is bit-identical
whichever batch it is rendered in and on any IEEE-754 machine.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

# Per-identity appearance: (name, low, high). The code stores u in [0, 1]; value = low + u * (high - low).
APPEARANCE_FIELDS: tuple[tuple[str, float, float], ...] = (
    ("head_size", 0.95, 1.06),
    ("head_width", 0.86, 1.12),
    ("head_height", 0.92, 1.08),
    ("face_width", 0.8, 1.2),
    ("jaw_width", 0.7, 1.3),
    ("chin_length", 0.0, 1.0),
    ("cheek_fullness", 0.0, 1.0),
    ("eye_spacing", 0.048, 0.062),
    ("eye_size", 0.018, 0.027),
    ("eye_open", 0.05, 0.5),
    ("brow_thickness", 0.005, 0.011),
    ("brow_tilt", -0.3, 0.3),
    ("nose_length", 0.012, 0.045),
    ("nose_width", 0.014, 0.026),
    ("mouth_width", 0.03, 0.05),
    ("lip_thickness", 0.006, 0.011),
    ("ear_size", 0.75, 1.3),
    ("hair_volume", 0.0, 1.0),
    ("hair_length", 0.0, 1.0),
    ("hairline", 0.0, 1.0),
    ("skin_tone", 0.0, 1.0),
    ("skin_warmth", 0.0, 1.0),
    ("hair_tone", 0.0, 1.0),
    ("hair_r", 0.0, 1.0),
    ("hair_g", 0.0, 1.0),
    ("hair_b", 0.0, 1.0),
    ("iris_r", 0.0, 1.0),
    ("iris_g", 0.0, 1.0),
    ("iris_b", 0.0, 1.0),
    ("bg_r", 0.0, 1.0),
    ("bg_g", 0.0, 1.0),
    ("bg_b", 0.0, 1.0),
)
APPEARANCE_NAMES = tuple(f[0] for f in APPEARANCE_FIELDS)
N_APPEARANCE = len(APPEARANCE_FIELDS)

# True expression components, each in [0, 1] (0 = neutral, 1 = full strength).
EXPRESSION_NAMES = ("jaw_open", "smile", "blink_left", "blink_right", "brow_raise", "lip_pucker")
N_EXPRESSION = len(EXPRESSION_NAMES)

HEAD_CENTRE = (0.0, 0.0, 0.15)  # world position of the head-local origin
BOUND_RADIUS = 0.3  # head-local radius of a sphere containing every head (hair, ears, nose, neck)
MOUTH_Y = -0.1
EYE_Y = 0.015

SKIN_PALETTE = ((0.97, 0.82, 0.71), (0.86, 0.64, 0.5), (0.66, 0.45, 0.32), (0.4, 0.26, 0.18))
HAIR_PALETTE = ((0.06, 0.05, 0.05), (0.24, 0.14, 0.08), (0.48, 0.24, 0.11), (0.86, 0.7, 0.42), (0.72, 0.72, 0.72))


def _palette(colours: tuple[tuple[float, float, float], ...], t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear colour ramp. t # [B] in [0, 1] -> # [B, 3]"""
    ramp = torch.tensor(colours, dtype=torch.float32)  # [K, 3]
    pos = t.clamp(0, 1) * (len(colours) - 1)
    lo = pos.floor().clamp(max=len(colours) - 2).long()
    w = (pos - lo)[:, None]
    return ramp[lo] * (1 - w) + ramp[lo + 1] * w


def appearance_values(appearance: torch.Tensor) -> SimpleNamespace:
    """Map codes in [0, 1] # [B, n_app] to named physical values (each # [B])."""
    if appearance.dim() != 2 or appearance.shape[1] != N_APPEARANCE:
        raise ValueError(f"appearance must have shape [B, {N_APPEARANCE}], got {tuple(appearance.shape)}")
    lo = torch.tensor([f[1] for f in APPEARANCE_FIELDS], dtype=torch.float32)
    hi = torch.tensor([f[2] for f in APPEARANCE_FIELDS], dtype=torch.float32)
    values = lo + appearance.to(torch.float32) * (hi - lo)  # [B, n_app]
    return SimpleNamespace(**{name: values[:, i] for i, name in enumerate(APPEARANCE_NAMES)})


def colours(appearance: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-identity albedos in [0, 1]: skin, lips, hair, iris, background. Each # [B, 3]"""
    a = appearance_values(appearance)
    skin = _palette(SKIN_PALETTE, a.skin_tone)
    warm = (a.skin_warmth - 0.5)[:, None] * torch.tensor([0.06, -0.01, -0.05])
    skin = (skin + warm).clamp(0, 1)
    lips = skin * 0.55 + torch.tensor([0.3, 0.06, 0.08])
    dye = torch.stack([a.hair_r, a.hair_g, a.hair_b], -1)
    hair = _palette(HAIR_PALETTE, a.hair_tone) * 0.75 + dye * 0.25 * (0.3 + 0.7 * a.hair_tone[:, None])
    iris = 0.08 + 0.62 * torch.stack([a.iris_r, a.iris_g, a.iris_b], -1)
    background = 0.12 + 0.8 * torch.stack([a.bg_r, a.bg_g, a.bg_b], -1)
    return {"skin": skin, "lips": lips, "hair": hair, "iris": iris, "background": background}


def geometry_table(appearance: torch.Tensor, expression: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame primitive parameters (head-local units). appearance # [B, n_app], expression # [B, 6].

    Returns named tensors, each # [B]; the ray caster gathers them per ray.
    """
    if expression.dim() != 2 or expression.shape[1] != N_EXPRESSION or expression.shape[0] != appearance.shape[0]:
        raise ValueError(
            f"expression must have shape [{appearance.shape[0]}, {N_EXPRESSION}], got {tuple(expression.shape)}"
        )
    a = appearance_values(appearance)
    e = expression.to(torch.float32).clamp(0, 1)
    jaw, smile, blink_l, blink_r, brow, pucker = e.unbind(-1)
    er = a.eye_size
    lip_rx = a.mouth_width * (1 + 0.3 * smile - 0.4 * pucker)
    gap = 0.042 * jaw  # how far the lower lip and jaw drop
    hair_pad = 0.008 + 0.025 * a.hair_volume
    cran_rx = 0.142 * a.head_width
    cran_ry = 0.16 * a.head_height
    cheek_s = 0.85 + 0.3 * a.cheek_fullness
    t = {
        "size": a.head_size,
        "cran_rx": cran_rx,
        "cran_ry": cran_ry,
        "face_rx": 0.112 * a.face_width,
        "chin_cy": -0.12 - 0.02 * a.chin_length - 0.8 * gap,
        "chin_cz": 0.06 - 0.3 * gap,
        "chin_rx": 0.07 * a.jaw_width,
        "chin_ry": 0.055 + 0.012 * a.chin_length,
        "cheek_cx": 0.064 * a.face_width,
        "cheek_cy": -0.086 + 0.01 * smile,
        "cheek_cz": 0.09 + 0.014 * smile,
        "cheek_rx": 0.04 * cheek_s,
        "cheek_ry": 0.028 * cheek_s,
        "cheek_rz": 0.04 * cheek_s,
        "neck_r": 0.062 * a.face_width,
        "ear_cx": cran_rx - 0.004,
        "ear_ry": 0.042 * a.ear_size,
        "ear_rz": 0.028 * a.ear_size,
        "nose_bx": 0.5 * a.nose_width + 0.004,
        "nose_tx": a.nose_width,
        "nose_tz": 0.155 + a.nose_length,
        "eye_cx": a.eye_spacing,
        "eye_cz": 0.148 - er,
        "eye_r": er,
        "sock_r": 1.35 * er,
        "lid_r": 1.16 * er,
        "lidl_h": er * (a.eye_open - (a.eye_open + 1.15) * blink_l),
        "lidr_h": er * (a.eye_open - (a.eye_open + 1.15) * blink_r),
        "low_h": -0.72 * er,
        "brow_cx": a.eye_spacing + 0.004,
        "brow_cy": EYE_Y + er + 0.018 + 0.03 * brow,
        "brow_ry": a.brow_thickness,
        "brow_tilt": a.brow_tilt * (1 - 0.6 * brow),
        "bend": 7.0 * smile - 3.0 * pucker,
        "lip_rx": lip_rx,
        "lip_ry": a.lip_thickness * (1 + 0.45 * pucker),
        "lip_cz": 0.15 + 0.024 * pucker,
        "lip_rz": 0.017 + 0.008 * pucker,
        "ulip_cy": MOUTH_Y + 0.85 * a.lip_thickness,
        "llip_cy": MOUTH_Y - 0.85 * a.lip_thickness - gap,
        "cav_cy": MOUTH_Y - 0.5 * gap,
        "cav_rx": 0.85 * lip_rx,
        "cav_ry": 0.002 + 0.5 * gap,
        "teeth_rx": 0.75 * lip_rx,
        "hair_rx": cran_rx + hair_pad,
        "hair_ry": cran_ry + hair_pad,
        "hair_rz": 0.172 + hair_pad,
        "hair_y": 0.115 + 0.035 * a.hairline,
        "back_cy": -0.03 - 0.04 * a.hair_length,
        "back_rx": cran_rx + 0.006 + 0.01 * a.hair_volume,
        "back_ry": 0.1 + 0.055 * a.hair_length,
        "back_rz": 0.122 + 0.012 * a.hair_volume,
    }
    return t


TABLE_NAMES = tuple(geometry_table(torch.full((1, N_APPEARANCE), 0.5), torch.zeros(1, N_EXPRESSION)).keys())


def _ellipsoid(x, y, z, rx, ry, rz):
    """Approximate SDF of an axis-aligned ellipsoid centred at the origin (bound, not exact)."""
    a, b, c = x / rx, y / ry, z / rz
    k0 = torch.sqrt(a * a + b * b + c * c)
    a, b, c = a / rx, b / ry, c / rz
    k1 = torch.sqrt(a * a + b * b + c * c)
    return k0 * (k0 - 1) / k1.clamp_min(1e-9)


def _sphere(x, y, z, r):
    return torch.sqrt(x * x + y * y + z * z) - r


def _smin(a, b, k: float):
    """Polynomial smooth minimum; only acts where |a - b| < k, so blends stay local."""
    h = (k - (a - b).abs()).clamp_min(0) / k
    return torch.minimum(a, b) - h * h * (k * 0.25)


def _smax(a, b, k: float):
    return -_smin(-a, -b, k)


def _capsule_y(x, y, z, r, half):
    """Vertical capped cylinder of radius r and half-height ``half`` centred at the origin."""
    dr = torch.sqrt(x * x + z * z) - r
    dy = y.abs() - half
    pr, py = dr.clamp_min(0), dy.clamp_min(0)
    outside = torch.sqrt(pr * pr + py * py)
    return outside + torch.maximum(dr, dy).clamp_max(0)


def head_sdf(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, p: SimpleNamespace, parts: bool = False):
    """Signed distance (head-local units) at points x, y, z # [M] for per-point parameters p (each # [M]).

    With ``parts=True`` also returns the unsigned distances to each material group (each # [M]).
    """
    ax = x.abs()
    d = _smin(_ellipsoid(x, y - 0.05, z + 0.01, p.cran_rx, p.cran_ry, 0.172),
              _ellipsoid(x, y + 0.055, z - 0.035, p.face_rx, 0.125, 0.135), 0.05)
    d = _smin(d, _ellipsoid(x, y - p.chin_cy, z - p.chin_cz, p.chin_rx, p.chin_ry, 0.085), 0.04)
    cheek = _ellipsoid(ax - p.cheek_cx, y - p.cheek_cy, z - p.cheek_cz, p.cheek_rx, p.cheek_ry, p.cheek_rz)
    d = _smin(d, cheek, 0.025)
    d = _smin(d, _capsule_y(x, y + 0.155, z + 0.01, p.neck_r, 0.095), 0.04)
    d = _smin(d, _ellipsoid(ax - p.ear_cx, y, z, 0.018, p.ear_ry, p.ear_rz), 0.01)
    nose = _smin(_ellipsoid(x, y + 0.005, z - 0.143, p.nose_bx, 0.045, 0.025),
                 _ellipsoid(x, y + 0.042, z - p.nose_tz, p.nose_tx, 0.018, 0.02), 0.02)
    d = _smin(d, nose, 0.012)
    ex, ey, ez = ax - p.eye_cx, y - EYE_Y, z - p.eye_cz  # eye-local (mirrored) coordinates
    d = _smax(d, -_sphere(ex, y - (EYE_Y + 0.003), z - 0.155, p.sock_r), 0.008)  # eye sockets
    skin = d
    yb = y - p.bend * x * x  # mouth coordinates bent by smile (corners up) / pucker (corners down)
    cav = _ellipsoid(x, yb - p.cav_cy, z - 0.16, p.cav_rx, p.cav_ry, 0.045)
    d = _smax(d, -cav, 0.005)
    lips = torch.minimum(_ellipsoid(x, yb - p.ulip_cy, z - p.lip_cz, p.lip_rx, p.lip_ry, p.lip_rz),
                         _ellipsoid(x, yb - p.llip_cy, z - p.lip_cz, p.lip_rx, p.lip_ry, p.lip_rz))
    d = _smin(d, lips, 0.004)
    teeth = torch.maximum(_ellipsoid(x, yb - (MOUTH_Y - 0.003), z - 0.14, p.teeth_rx, 0.009, 0.025), cav)
    eye = _sphere(ex, ey, ez, p.eye_r)
    lid_ball = _sphere(ex, ey, ez, p.lid_r)
    lid_h = torch.where(x > 0, p.lidl_h, p.lidr_h)  # x > 0 is the subject's left
    lids = torch.minimum(torch.maximum(lid_ball, lid_h - ey), torch.maximum(lid_ball, ey - p.low_h))
    bx = ax - p.brow_cx
    brows = _ellipsoid(bx, y - p.brow_cy + p.brow_tilt * bx, z - 0.138, 0.03, p.brow_ry, 0.012)
    cap = _ellipsoid(x, y - 0.05, z + 0.01, p.hair_rx, p.hair_ry, p.hair_rz)
    cap = torch.maximum(cap, ((p.hair_y - y) - 0.6 * (0.16 - z)) / 1.1662)  # hairline: a tilted plane
    back = torch.maximum(_ellipsoid(x, y - p.back_cy, z + 0.05, p.back_rx, p.back_ry, p.back_rz), z - 0.02)
    hair = _smin(cap, back, 0.02)
    out = torch.minimum(torch.minimum(torch.minimum(d, teeth), torch.minimum(eye, lids)), torch.minimum(brows, hair))
    if not parts:
        return out
    groups = {
        "skin": torch.minimum(skin.abs(), lids.abs()),
        "lips": lips.abs(),
        "mouth": cav.abs(),
        "teeth": teeth.abs(),
        "eye": eye.abs(),
        "hair": torch.minimum(hair.abs(), brows.abs()),
    }
    return out, groups
