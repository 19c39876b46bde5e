"""A ruler for held-out numbers: the driving frames themselves, blurred, scored as if they were outputs.

    python -m export3d.evaluation.blur_reference --checkpoint RUN --data heldout/ --split all --pairs 128

A same-identity output is compared with its driving frame. A model that got everything right except fine detail
would produce the driving frame blurred. This command scores exactly that, for several blur factors k: each
driving frame is area-averaged down by k and resized back with bilinear interpolation, so it keeps detail down to
k pixels. The frames are the pairs :mod:`export3d.evaluate` scores (same seed, same ``--pairs``). Each factor gets
PSNR, SSIM and LPIPS against the sharp driving frame and, for clip folders, the memorisation share
(:mod:`export3d.evaluation.memorisation`) of the blurred frames. Factor 1 is the driving frame itself: its share
is the measure's ceiling, as in ``evaluate``'s ``driving_follows_source``.

Read a model's numbers against these rows: a model's PSNR between two rows says how much detail it carries, and a
low memorisation share is a finding only if blurred ground truth of the same PSNR scores higher.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from export3d.evaluation.loading import SPLITS, held_out_sources, model_config_from_meta
from export3d.evaluation.memorisation import DEFAULT_FRAMES, Memorisation
from export3d.evaluation.metrics import build_lpips, lpips_distance, lpips_info_of, psnr, ssim
from export3d.evaluation.scoring import same_identity_batches
from export3d.utils.checkpoint import CheckpointError, read_meta, resolve_checkpoint
from export3d.utils.cli import add_debug_flag, run_command
from export3d.utils.outputs import atomic_write_json, check_output_file
from export3d.utils.signals import exit_status

DEFAULT_FACTORS = (1, 2, 4, 8)


def blur(images: torch.Tensor, factor: int) -> torch.Tensor:
    """``images`` [B, C, H, W] keeping detail down to ``factor`` pixels: area-averaged to H / factor (rounded
    down, at least 1), then resized back to H x W (bilinear). Factor 1 returns ``images`` unchanged."""
    if factor < 1:
        raise ValueError(f"blur factor must be >= 1, got {factor}")
    if factor == 1:
        return images
    h, w = images.shape[-2:]
    small = F.adaptive_avg_pool2d(images.float(), (max(h // factor, 1), max(w // factor, 1)))
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).to(images.dtype)


@torch.no_grad()
def blur_reference(source, lpips_model, factors=DEFAULT_FACTORS, pairs: int = 64, batch_size: int = 8,
                   seed: int = 0, memo: Memorisation | None = None) -> dict:  # fmt: skip
    """``{str(k): {"psnr", "ssim", <lpips name>, "pairs"[, "memorisation"]}}`` for each blur factor ``k`` of the
    same-identity pairs of ``source``. ``memo`` (built on the run's training identities) adds each factor's
    memorisation result."""
    batches = same_identity_batches(source, pairs, batch_size, seed)
    lpips_name = lpips_info_of(lpips_model).metric_name
    out = {}
    for k in factors:
        sums, n = {"psnr": 0.0, "ssim": 0.0, lpips_name: 0.0}, 0
        hook = memo.hook(f"blur{k}") if memo is not None else None
        for b in batches:
            target = b.target.float()
            blurred = blur(target, k)  # [B, 3, H, W]; averages of [-1, 1] values stay in [-1, 1]
            if hook is not None:
                hook("same_identity", b, {"model": blurred})
            sums["psnr"] += psnr(blurred, target).sum().item()
            sums["ssim"] += ssim(blurred, target).sum().item()
            sums[lpips_name] += lpips_distance(lpips_model, blurred, target).sum().item()
            n += target.shape[0]
        out[str(k)] = {name: v / max(n, 1) for name, v in sums.items()} | {"pairs": n}
        if hook is not None:
            out[str(k)]["memorisation"] = memo.result(f"blur{k}")
    return out


def format_rows(result: dict, lpips_name: str) -> str:
    lines = ["| blur factor | PSNR | SSIM | LPIPS | follows the source | scored |", "|---|---|---|---|---|---|"]
    for k, row in result.items():
        m = row.get("memorisation") or {}
        share = m.get("follows_source")
        lines.append(f"| {k} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row[lpips_name]:.3f} | "
                     f"{'-' if share is None else f'{share:.2f}'} | "
                     f"{m.get('scored', '-')} / {m.get('pairs', row['pairs'])} |")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    if args.json:
        check_output_file(args.json, "--json")
    folder = resolve_checkpoint(args.checkpoint)
    meta = read_meta(folder)
    size = model_config_from_meta(meta, str(folder)).image_size
    seed = (meta.get("train_config") or {}).get("seed", 0)
    lpips_model, lpips_info = build_lpips(args.vgg_weights)
    sources = held_out_sources(meta, args.data, size, args.split)
    memo = Memorisation.for_run(meta, [name for name, _ in sources], size, args.memorisation_frames)
    result = {"checkpoint": str(folder), "split": args.split, "pairs": args.pairs, "lpips": lpips_info.describe(),
              "sources": {}}  # fmt: skip
    try:
        for name, source in sources:
            rows = blur_reference(source, lpips_model, args.factors, args.pairs, args.batch_size, seed,
                                  memo if name != "synthetic" else None)  # fmt: skip
            result["sources"][name] = rows
            print(f"{name}: the driving frames blurred, scored against themselves ({args.pairs} pairs; "
                  f"{lpips_info.describe()})\n{format_rows(rows, lpips_info.metric_name)}")
    finally:
        if memo is not None:
            memo.close()
    if memo is not None and memo.reason:
        print(f"memorisation not run: {memo.reason}")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


def _factors(text: str) -> tuple[int, ...]:
    try:
        factors = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not factors or min(factors) < 1:
        raise argparse.ArgumentTypeError(f"every factor must be >= 1, got {text!r}")
    return factors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export3d.evaluation.blur_reference",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="a run folder or checkpoint: its training data and seed")
    p.add_argument("--data", action="append", help="'synthetic' or a clip-format folder (default: the run's data)")
    p.add_argument("--split", choices=SPLITS, default="test", help="as in export3d.evaluate")
    p.add_argument("--pairs", type=int, default=64, help="same-identity pairs (default: 64)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per batch (default: 8)")
    p.add_argument("--factors", type=_factors, default=DEFAULT_FACTORS,
                   help="blur factors, comma-separated (default: 1,2,4,8)")
    p.add_argument("--memorisation-frames", type=int, default=DEFAULT_FRAMES,
                   help=f"frames per training identity (0: no memorisation share; default: {DEFAULT_FRAMES})")
    p.add_argument("--vgg-weights", help="torchvision VGG16 weights for LPIPS (else the torch hub cache, else random)")
    p.add_argument("--json", help="write every number to this JSON file")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: PyTorch's)")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, low in (("--pairs", args.pairs, 1), ("--batch-size", args.batch_size, 1),
                             ("--memorisation-frames", args.memorisation_frames, 0)):  # fmt: skip
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        return run_command("export3d.evaluation.blur_reference", run, args,
                           user_errors=(ValueError, OSError, CheckpointError))  # fmt: skip
    except KeyboardInterrupt as exc:
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
