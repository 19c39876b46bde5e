"""Tri-plane generator: EMA buffer, zero-initialised expression modulation, attention helper."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from export3d.model import attention as attention_mod
from export3d.model.config import preset
from export3d.model.generator import TriplaneGenerator
from tests.model.helpers import inputs, small_model


def _generator(seed=0):
    torch.manual_seed(seed)
    return TriplaneGenerator(preset("tiny", image_size=32), kernel_impl="reference", attention_backend="sdpa")


def test_triplane_ema_follows_its_formula_in_training_and_is_frozen_otherwise():
    gen = _generator()
    g = torch.Generator().manual_seed(0)
    src, code = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.randn(3, 32, generator=g)
    assert gen.triplane_ema.shape == (3, 16, 16, 16) and (gen.triplane_ema == 0).all()
    gen.train()
    ema = torch.zeros_like(gen.triplane_ema)
    for step in range(3):
        src_step = src + 0.1 * step
        with torch.no_grad():
            raw = gen.generate_raw(src_step, code)  # [B, 3, C, P, P]
        out = gen(src_step, code)  # a generator training step
        torch.testing.assert_close(out, raw + ema, atol=1e-6, rtol=1e-6)  # T = T_raw + T_ema(previous)
        ema = 0.998 * ema + 0.002 * raw.mean(dim=0)
        torch.testing.assert_close(gen.triplane_ema, ema, atol=1e-7, rtol=1e-5)
        assert not gen.triplane_ema.requires_grad
        out.sum().backward()  # the buffer update did not break autograd
    assert gen.triplane_ema.abs().max() > 0
    stored = gen.triplane_ema.clone()
    with torch.no_grad():  # no_grad forwards in training mode (D steps, sampling) do not advance it
        gen(src, code)
    torch.testing.assert_close(gen.triplane_ema, stored, atol=0, rtol=0)
    gen.eval()  # eval: the stored buffer is used and never updated
    out = gen(src, code)
    torch.testing.assert_close(gen.triplane_ema, stored, atol=0, rtol=0)
    torch.testing.assert_close(out, gen.generate_raw(src, code) + stored, atol=1e-6, rtol=1e-6)
    assert "triplane_ema" in gen.state_dict()


def test_expression_has_no_effect_at_init_and_does_after_one_step():
    model = small_model().set_impl("reference")
    src, beta, cam = inputs(model, batch=2)
    beta_other = torch.randn_like(beta) * 3
    model.eval()
    with torch.no_grad():
        a, b = model(src, beta, cam), model(src, beta_other, cam)
        c = model(torch.flip(src, dims=[0]), beta, cam)
    # Zero-initialised EAdaLN modulation: beta' has exactly no effect ...
    torch.testing.assert_close(a.image, b.image, atol=0, rtol=0)
    torch.testing.assert_close(a.triplane, b.triplane, atol=0, rtol=0)
    # ... while the source image does.
    assert (a.triplane[0] - c.triplane[0]).abs().max() > 1e-3
    # One training step moves the modulation weights (their gradient is dscale x SiLU(beta') != 0).
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model(src, beta, cam)
    loss = (out.image - src).square().mean() + (out.image_raw - F.interpolate(src, size=8)).square().mean()
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        a, b = model(src, beta, cam), model(src, beta_other, cam)
    assert (a.triplane - b.triplane).abs().max() > 1e-4
    assert (a.image - b.image).abs().max() > 1e-5


def test_attention_backends_agree_and_the_choice_is_recorded():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g) for n in (37, 9, 9))
    ref = attention_mod.attention(q, k, v, "math")
    assert attention_mod.last_backend_used() == "math"
    out = attention_mod.attention(q, k, v, "auto")
    assert attention_mod.last_backend == "sdpa"  # CPU tensors: never xformers
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="xformers"):
        attention_mod.attention(q, k, v, "xformers")
    with pytest.raises(ValueError, match="backend"):
        attention_mod.attention(q, k, v, "flash")


def test_model_attention_follows_impl():
    model = small_model()
    src, beta, cam = inputs(model, batch=1)
    model.eval()
    with torch.no_grad():
        model.set_impl("reference")(src, beta, cam)
        assert attention_mod.last_backend == "math"
        model.set_impl("fast")(src, beta, cam)
        assert attention_mod.last_backend == "sdpa"


def test_import_and_cpu_forward_do_not_import_xformers_or_lpips():
    code = (
        "import sys, torch\n"
        "import export3d\n"
        "from export3d import Export3D\n"
        "from export3d.cameras import orbit_camera\n"
        "m = Export3D.from_preset('tiny', image_size=32, render={'n_coarse': 4, 'n_fine': 4}).eval()\n"
        "with torch.no_grad():\n"
        "    m(torch.zeros(1, 3, 32, 32), torch.zeros(1, 64), orbit_camera(torch.zeros(1), torch.zeros(1)))\n"
        "bad = [n for n in ('xformers', 'lpips') if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_source_resampling_lines_up_a_frontal_image_with_the_xy_plane():
    """A source pixel lands, after ``to_plane_frame`` and the generator's row flip, on the xy-plane cell that
    triplane_sample reads for the world point seen through that pixel (frontal camera, pivot depth)."""
    from export3d.cameras import RADIUS, camera_rays, orbit_camera_deg

    gen = _generator()
    H = P = 32  # a full-resolution check of the resampling itself
    origins, dirs = camera_rays(orbit_camera_deg(0.0, 0.0)[None], H)  # [1, H*H, 3]
    for row, col in ((4, 9), (20, 27), (28, 3)):
        source = torch.full((1, 3, H, H), -1.0)
        source[0, :, row, col] = 1.0
        framed = gen.to_plane_frame(source)[0, 0].flip(0)  # [P, P]: the generator writes plane rows flipped
        r, c = divmod(int(framed.argmax()), P)
        plane_uv = torch.tensor([(c + 0.5) / P * 2 - 1, (r + 0.5) / P * 2 - 1])  # grid_sample coords (u, v)
        ray = row * H + col
        point = origins[0, ray] + RADIUS / -dirs[0, ray, 2] * dirs[0, ray]  # on the plane through the pivot
        world_uv = point[:2] / 0.5  # xy plane, box_warp 1
        assert (plane_uv - world_uv).abs().max() <= 2.0 / P + 1e-6, (row, col, plane_uv, world_uv)


def test_generator_writes_the_image_top_into_the_planes_upper_rows():
    gen = _generator().eval()
    g = torch.Generator().manual_seed(1)
    src, code = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.randn(1, 32, generator=g)
    changed = src.clone()
    changed[:, :, :6] = torch.rand(1, 3, 6, 32, generator=g) * 2 - 1  # the top rows of the image (world +y)
    with torch.no_grad():
        delta = (gen.generate_raw(changed, code) - gen.generate_raw(src, code))[0, 0].abs()  # xy plane [C, P, P]
    P = delta.shape[-1]
    upper, lower = delta[:, P // 2 :].mean(), delta[:, : P // 2].mean()  # rows at v > 0 hold world y > 0
    assert upper > 3 * lower, (upper, lower)


def test_source_features_computed_once_serve_every_code():
    """animate encodes the source once and decodes one tri-plane per driving frame: the same planes as the full
    forward of the source repeated for every code."""
    from tests.model.helpers import perturb_modulation

    model = small_model().eval()
    perturb_modulation(model)  # so that the codes really change the planes
    source, _, _ = inputs(model, batch=1)
    betas = torch.randn(5, model.config.expression_dim, generator=torch.Generator().manual_seed(4))
    codes = model.encode_expression(betas)
    with torch.no_grad():
        features = model.encode_source(source)
        once = model.generate_triplane(features, codes)  # [5, 3, C, P, P]
        full = model.generate_triplane(source.expand(5, -1, -1, -1), codes)
    torch.testing.assert_close(once, full, atol=1e-5, rtol=1e-5)
    assert (once[0] - once[1]).abs().max() > 1e-3  # the codes do change the planes
    with pytest.raises(ValueError, match="code"):
        model.generate_triplane(features, codes[:, :3])  # a code of the wrong width still gets a clear error
