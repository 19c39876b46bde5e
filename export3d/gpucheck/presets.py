"""The kernel configurations the ``paper`` and ``tiny`` presets launch: ``python -m export3d.gpucheck.presets``.

Walks each preset's model at its real sizes with ``kernel_impl="triton"`` and every launch recorded but not
run (:func:`export3d.kernels.launches.record_launches` with ``execute=False``), so it takes seconds on a CPU
and needs no GPU. Workloads per preset: a training step (batch 1 for paper, 2 for tiny) in fp32 and under bf16
autocast (``--amp``): the generator's forward, the discriminator on its images, backward, then the discriminator on a
real image with R1's double backward (so the super-resolution's and discriminator's upfirdn2d and bias_act launches
are the model's own); and inference (no grad, batch 1, and one tri-plane rendered from two cameras, the stride-0 planes
of ``Export3D.render``). Needs ``TRITON_INTERPRET=1`` (set
before triton is imported), which lets the launchers accept CPU tensors;
:func:`export3d.kernels.aot.preset_configs` runs this in a subprocess.

Autocast runs on the CPU here: PyTorch's CPU and CUDA autocast lists agree on what this model runs (linear
and conv in bf16, layer norm and softmax in fp32), so the fused ops see the dtypes they would see on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path

import torch

from export3d.kernels.launches import LaunchConfig, dumps, record_launches
from export3d.kernels.utils import interpreter_enabled

PRESET_NAMES = ("paper", "tiny")


def _cameras(n: int) -> torch.Tensor:
    from export3d.cameras import orbit_camera_deg

    return torch.stack([orbit_camera_deg(yaw, 5.0) for yaw in torch.linspace(-25.0, 25.0, n).tolist()])


def _workloads(preset: str):
    """``(tag, callable)`` pairs; each callable runs one workload of a fresh ``preset`` model."""
    import torch.nn.functional as F

    from export3d import Export3D
    from export3d.model.discriminator import Discriminator

    torch.manual_seed(0)
    model = Export3D.from_preset(preset, impl="fast", kernel_impl="triton")
    disc = Discriminator(model.config)  # the same kernel_impl
    # No kernel takes the batch as an argument (it only scales grids), so the paper step is walked at batch 1,
    # half the CPU time; the tiny one at 2. Batch > 1 with stride-0 planes is walked by the 2-camera render.
    train_batch = 1 if preset == "paper" else 2
    H, E = model.config.image_size, model.config.expression_dim

    def batch(n):
        return torch.rand(n, 3, H, H) * 2 - 1, torch.randn(n, E), _cameras(n)

    def train(amp: bool):
        def run():
            model.train()
            source, beta, camera = batch(train_batch)
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
            with ctx:  # the generator step: reconstruction-like terms and the adversarial term through D
                out = model(source, beta, camera)
                loss = out.image.float().square().mean() + out.image_raw.float().square().mean()
                loss = loss + disc(out.image, out.image_raw, camera).float().mean()
            loss.backward()
            real = source.requires_grad_(True)  # the discriminator step on a real image, with R1
            real_raw = F.interpolate(real, size=out.image_raw.shape[-2:], mode="bilinear", antialias=True)
            with ctx:
                logits = disc(real, real_raw, camera).float()
            (grad,) = torch.autograd.grad(logits.sum(), [real], create_graph=True)
            (logits.mean() + grad.square().sum()).backward()
            model.zero_grad(set_to_none=True)
            disc.zero_grad(set_to_none=True)

        return run

    def infer():
        model.eval()
        with torch.no_grad():
            source, beta, camera = batch(1)
            model(source, beta, camera)
            planes = model.generate_triplane(source, model.encode_expression(beta))
            model.render(planes, _cameras(2))

    return [(f"{preset} train fp32", train(False)), (f"{preset} train bf16", train(True)), (f"{preset} infer", infer)]


@contextlib.contextmanager
def _launch_choices_as_on_cuda():
    """Launchers that choose their launches by device do it here as on a GPU: render_rays' backward is one fused
    launch under the interpreter but two on CUDA (plane gradient, decoder gradient; see its ``_bwd_parts``)."""
    render_rays = importlib.import_module("export3d.kernels.render_rays")
    on_cpu = render_rays._bwd_parts
    render_rays._bwd_parts = lambda device: on_cpu(torch.device("cuda"))
    try:
        yield
    finally:
        render_rays._bwd_parts = on_cpu


def preset_configs(presets: tuple[str, ...] = PRESET_NAMES) -> dict[LaunchConfig, list[str]]:
    """Every distinct configuration launched, with the workloads (``"paper train bf16"`` ...) that launch it."""
    if not interpreter_enabled():
        raise RuntimeError("recording needs TRITON_INTERPRET=1 set before triton is imported (CPU tensors)")
    found: dict[LaunchConfig, list[str]] = {}
    for preset in presets:
        for tag, run in _workloads(preset):
            with _launch_choices_as_on_cuda(), record_launches(execute=False) as seen:
                run()
            for config in seen:
                tags = found.setdefault(config, [])
                if tag not in tags:
                    tags.append(tag)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export3d.gpucheck.presets", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the configurations here (default: print them)")
    parser.add_argument("--preset", nargs="+", default=list(PRESET_NAMES), choices=PRESET_NAMES)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    text = dumps(preset_configs(tuple(args.preset)))
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
