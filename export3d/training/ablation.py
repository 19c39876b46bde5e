"""The expression-encoding ablation of paper Table 3: ``python -m export3d.evaluate --ablation``.

Trains three variants of the ``tiny`` preset on the built-in synthetic data with the same generator
budget (same reconstruction / adversarial steps, batch, seed and data), then evaluates each on the
synthetic test identities and prints them side by side:

- ``direct``: "Direct 3DMM": the 64-d beta itself conditions the generator's EAdaLN (no LeBS).
- ``lebs``: "E2E LeBS (n = 10)": f_e trained jointly with the generator, no contrastive pre-training.
- ``clebs``: "Full (CLeBS)": the default recipe; f_e pre-trained contrastively (extra ``--clebs-steps``,
  as in the paper, where pre-training precedes the generator's budget), then frozen.

Columns: same- and cross-identity PSNR / SSIM / LPIPS (cross-identity against the rendered ground
truth) and the identity leak of each variant's expression code (held-out accuracy of a linear
identity probe, chance = 1 / test identities). Runs live in ``--out/<variant>``; a finished run is
reused, an interrupted one resumed. The defaults were chosen to finish in under 30 minutes on a
2-core CPU (measured: see the README).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from export3d.evaluation.loading import held_out_source, load_model
from export3d.evaluation.metrics import build_lpips
from export3d.evaluation.probe import identity_leak
from export3d.evaluation.scoring import evaluate
from export3d.training.config import TRAIN_PRESETS
from export3d.training.loop import main as train_main
from export3d.utils.checkpoint import atomic_write_json
from export3d.utils.distributed import resolve_device

VARIANTS = {"direct": "Direct 3DMM", "lebs": "E2E LeBS (n=10)", "clebs": "Full (CLeBS)"}
DEFAULTS = {"rec_steps": 300, "adv_steps": 0, "clebs_steps": 200}  # measured: ~12 min on an idle 2-core CPU
METRICS = ("psnr", "ssim", "lpips")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ablation (paper Table 3; uses --pairs, --device, --vgg-weights, --json, --probe too)")
    g.add_argument("--ablation", action="store_true", help="train and compare the expression-encoding variants")
    g.add_argument("--out", default="runs/ablation", help="folder for the variants' runs (default: runs/ablation)")
    g.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    for name, value in DEFAULTS.items():
        g.add_argument("--" + name.replace("_", "-"), type=int, default=value, help=f"(default: {value})")
    g.add_argument("--seed", type=int, default=0, help="training seed and synthetic data seed of every variant")
    g.add_argument("--threads", type=int, help="torch intra-op threads (default: PyTorch's, one per core)")


def _variants(spec: str) -> list[str]:
    names = [v.strip() for v in spec.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise ValueError(f"--variants: unknown variant(s) {bad}; choose from {','.join(VARIANTS)}")
    return names


def _finished(run: Path, steps: int) -> bool:
    last = run / "checkpoints" / "last.json"
    return last.is_file() and json.loads(last.read_text()).get("step") == steps


def train_variant(variant: str, args: argparse.Namespace) -> tuple[Path, float]:
    """Train one variant (or reuse / resume its run); returns (run folder, training seconds)."""
    run = Path(args.out) / variant
    cfg = dataclasses.replace(TRAIN_PRESETS["tiny"], out=str(run), expression_encoder=variant, seed=args.seed,
                              rec_steps=args.rec_steps, adv_steps=args.adv_steps, clebs_steps=args.clebs_steps,
                              eval_pairs=0, device=args.device, threads=args.threads, vgg_weights=args.vgg_weights,
                              sample_every=max(args.rec_steps, args.adv_steps, 1),
                              ckpt_every=max(args.rec_steps, args.adv_steps, 1))  # fmt: skip
    if _finished(run, cfg.steps("clebs") + cfg.rec_steps + cfg.adv_steps):
        print(f"[{variant}] reusing the finished run in {run}")
        return run, 0.0
    if (run / "config.json").is_file():
        cfg = dataclasses.replace(cfg, resume=str(run))
    print(f"[{variant}] training {VARIANTS[variant]} into {run}", flush=True)
    t0 = time.perf_counter()
    train_main(cfg)
    return run, time.perf_counter() - t0


def evaluate_variant(run: Path, args: argparse.Namespace, lpips_model, device) -> dict:
    model, meta, _ = load_model(run, device)
    source = held_out_source(meta, "synthetic", model.config.image_size)
    metrics = evaluate(model, source, lpips_model, device, pairs=args.pairs or 64, batch_size=args.batch_size,
                       seed=args.seed)  # fmt: skip
    return metrics | {"identity_leak": identity_leak(model, source, args.probe), "step": meta.get("step")}


def format_ablation(results: dict[str, dict]) -> str:
    """One row per variant (and copy-the-source): same / cross-identity metrics and the identity leak."""
    any_result = next(iter(results.values()))
    leak = any_result["identity_leak"]
    cols = "".join(f"{m.upper() + ('↓' if m == 'lpips' else '↑'):>8}" for m in METRICS)
    head1 = (f"{'':<18} | {'Same-identity (' + str(any_result['same_identity']['pairs']) + ')':<24} | "
             f"{'Cross-identity (' + str(any_result['cross_identity']['pairs']) + ')':<24} | "
             f"Identity leak, chance {leak['chance']:.3f}")  # fmt: skip
    head2 = f"{'Method':<18} | {cols} | {cols} | {'probe acc↓':>10}"
    lines = [head1, head2, "-" * len(head1)]

    def row(label: str, same: dict, cross: dict, acc: str) -> str:
        cells = [" ".join(f"{d[m]:>7.2f}" if m == "psnr" else f"{d[m]:>7.3f}" for m in METRICS) for d in (same, cross)]
        return f"{label:<18} |  {cells[0]} |  {cells[1]} | {acc:>10}".rstrip()

    for variant, r in results.items():
        code = "beta" if variant == "direct" else "beta'"
        acc = f"{r['identity_leak']['beta_prime']['accuracy']:.3f}"
        lines.append(row(VARIANTS[variant], r["same_identity"]["model"], r["cross_identity"]["model"], acc)
                     + f"  ({code})")  # fmt: skip
    lines.append(row("Copy source", any_result["same_identity"]["copy_source"],
                     any_result["cross_identity"]["copy_source"], ""))  # fmt: skip
    lines.append(f"identity probe ({leak['method']}) on the raw 3DMM beta: {leak['beta']['accuracy']:.3f}; chance "
                 f"{leak['chance']:.3f} ({leak['beta']['identities']} test identities)")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    variants = _variants(args.variants)
    if min(args.rec_steps, args.adv_steps, args.clebs_steps) < 0:
        raise ValueError("--rec-steps, --adv-steps and --clebs-steps must be >= 0")
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    runs = {v: train_variant(v, args) for v in variants}
    with torch.random.fork_rng():  # the random-VGG fallback is then the same network in every evaluation
        torch.manual_seed(0)
        lpips_model, lpips_info = build_lpips(args.vgg_weights)
    lpips_model.to(device)
    results = {}
    for variant, (path, seconds) in runs.items():
        results[variant] = evaluate_variant(path, args, lpips_model, device) | {"train_seconds": round(seconds, 1)}
    wall = time.perf_counter() - t_start
    print(f"\nAblation on the expression encoding (paper Table 3): tiny preset, synthetic data, seed {args.seed}; "
          f"{args.rec_steps} reconstruction + {args.adv_steps} adversarial steps per variant (CLeBS also "
          f"{args.clebs_steps} pre-training steps); {lpips_info.describe()}")  # fmt: skip
    print(format_ablation(results))
    print("training time: " + ", ".join(f"{v} {r['train_seconds']:.0f} s" for v, r in results.items())
          + f"; wall time {wall:.0f} s")  # fmt: skip
    summary = {"variants": results, "rec_steps": args.rec_steps, "adv_steps": args.adv_steps,
               "clebs_steps": args.clebs_steps, "seed": args.seed, "wall_seconds": round(wall, 1),
               "lpips_network": dataclasses.asdict(lpips_info)}  # fmt: skip
    out_json = Path(args.json) if args.json else Path(args.out) / "ablation.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_json, summary)
    print(f"wrote {out_json}")
    return summary
