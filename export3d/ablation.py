"""The paper's ablations in miniature (Tables 3 and 4): ``python -m export3d.ablation``.

Trains the expression-encoding and conditioning variants (:mod:`export3d.training.ablation_runs`: Direct 3DMM,
E2E LeBS with n = 25 / 10 / 5, Full (CLeBS), Full with cross-attention) with the default training run's recipe,
data and budget, once per seed, then compares them (:mod:`export3d.training.ablation_results`): one table of
mean +- half the range over seeds, ``ablation.json`` with every number per seed, and ``ablation.png`` with the
variants' images of the same held-out cross-identity triples. With the face model bundle installed, a second
table gives AKD and AED of every run (:class:`~export3d.training.ablation_results.FaceScorer`); the face-loss
variants (``--variants face_lmk,face_bs,face_feat,face_all``, with ``--expression-source landmarker``) are
compared with ``clebs`` that way (docs/training.md, "Face losses"). Runs live in ``--out/<variant>/seed<k>``: a
finished run (``metrics.json`` present) is reused, an interrupted one resumed. On a CPU, ``--jobs`` runs
train side by side as separate processes, with the cores split between them; Ctrl-C or a SIGTERM to this
process stops every run at a checkpoint, and the same command then resumes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from export3d.data.expressions import EXPRESSION_SOURCES
from export3d.evaluation.probe import PROBES
from export3d.training.ablation_results import (
    FaceScorer,
    collect,
    comparison_grid,
    format_ablation,
    format_faces,
    lpips_network,
    summarise,
)
from export3d.training.ablation_runs import DEFAULTS, PAPER_VARIANTS, VARIANTS, make_plan, run_config, train_runs
from export3d.utils.checkpoint import CheckpointError
from export3d.utils.cli import add_debug_flag, run_command
from export3d.utils.distributed import resolve_device
from export3d.utils.images import save_png
from export3d.utils.outputs import atomic_write_json
from export3d.utils.signals import exit_status

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export3d.ablation", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", help="folder for the variants' runs (default: runs/ablation, runs/ablation-quick)")
    p.add_argument("--variants", default=",".join(PAPER_VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)} (default: the paper's, "
                        f"{','.join(PAPER_VARIANTS)})")  # fmt: skip
    p.add_argument("--expression-source", choices=EXPRESSION_SOURCES,
                   help="the synthetic expression vector of every run (default: the recipe's, beta; landmarker: "
                        "MediaPipe's 52 blendshapes, as for real videos)")  # fmt: skip
    p.add_argument("--data", help="'synthetic' (default) or a clip folder prepared by export3d.data.prepare: every "
                                   "run trains on its train split and is scored on its test split (same-identity "
                                   "pairs only: real clips have no cross-identity ground truth)")  # fmt: skip
    p.add_argument("--seeds", help="comma-separated training seeds of every variant (default: 0,1; --quick: 0)")
    for name, value in DEFAULTS.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"steps per run (default: {value})")
    p.add_argument("--jobs", type=int, help="runs trained at once, in separate processes (default: 2 on a CPU with "
                                            ">= 2 cores, else 1 in this process)")  # fmt: skip
    p.add_argument("--threads", type=int, help="torch threads of each run (default: the cores divided by --jobs)")
    p.add_argument("--quick", action="store_true", help="a few steps on small data, one seed (what the tests run)")
    p.add_argument("--pairs", type=int, help="held-out pairs of each run's metrics.json (default: the recipe's 64)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--vgg-weights", help="torchvision VGG16 weights for LPIPS (else the torch hub cache, else random)")
    p.add_argument("--probe", choices=PROBES, default="ridge", help="identity probe: least squares or logistic")
    p.add_argument("--json", help="where to write the results (default: OUT/ablation.json; the grid goes beside it)")
    p.add_argument("--no-face-metrics", action="store_true",
                   help="skip AKD / AED (the PyTorch port of MediaPipe's networks; run when its bundle is installed)")
    add_debug_flag(p)
    return p


def _earlier_seconds(json_path: Path) -> dict[tuple[str, int], float]:
    """The training seconds an earlier ``ablation.json`` recorded for each (variant, seed), kept for reused runs."""
    if not json_path.is_file():
        return {}
    try:
        earlier = json.loads(json_path.read_text())
    except json.JSONDecodeError:
        print(f"note: {json_path} is not valid JSON; the training times of reused runs are left empty", file=sys.stderr)
        return {}
    return {(v, int(k)): r.get("train_seconds") for v, entry in earlier.get("variants", {}).items()
            for k, r in entry.get("seeds", {}).items()}  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    """Train (or reuse) every run of the plan, then print the table and write ablation.json and ablation.png."""
    plan = make_plan(args)
    device = resolve_device(args.device)
    json_path = Path(args.json) if args.json else plan.out / "ablation.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if json_path.is_dir() or not os.access(json_path.parent, os.W_OK):
        raise ValueError(f"--json: cannot write {json_path}")
    configs = {(v, s): run_config(plan, v, s, args) for v in plan.variants for s in plan.seeds}
    print(f"ablation: {len(plan.variants)} variants x {len(plan.seeds)} seeds into {plan.out}; per run "
          f"{plan.steps['clebs_steps']} CLeBS (clebs / xattn only) + {plan.steps['rec_steps']} reconstruction + "
          f"{plan.steps['adv_steps']} adversarial steps; {plan.jobs} at a time, {plan.threads} thread(s) each")
    t0 = time.perf_counter()
    earlier = _earlier_seconds(json_path)
    seconds = train_runs(list(configs.values()), plan.jobs, quiet=getattr(args, "quiet", False))
    torch.set_num_threads(plan.threads * plan.jobs)
    per_seed: dict[str, dict[int, dict]] = {v: {} for v in plan.variants}
    faces, no_faces = (None, "--no-face-metrics given") if args.no_face_metrics else FaceScorer.build(device)
    for (variant, seed), cfg in configs.items():
        took = seconds[cfg.out]
        took = round(took, 1) if took is not None else earlier.get((variant, seed))  # a reused run: when trained
        per_seed[variant][seed] = collect(cfg, args.probe, device, faces) | {"train_seconds": took}
    wall = time.perf_counter() - t0
    reused = sum(t is None for t in seconds.values())
    summary = summarise(per_seed)
    first = per_seed[plan.variants[0]][plan.seeds[0]]
    lpips = lpips_network([r for seeds in per_seed.values() for r in seeds.values()])
    print(format_ablation(summary, len(plan.seeds), first["same_identity"]["pairs"],
                          first["identity_leak"]["chance"], lpips))  # fmt: skip
    print(format_faces(summary, len(plan.seeds)) or f"AKD / AED: not run ({no_faces})")
    print(f"wall time {wall:.0f} s ({reused} of {len(configs)} runs reused); {lpips.describe()}")
    result = {"variants": {v: {**dataclasses.asdict(VARIANTS[v]), "seeds": {str(k): r for k, r in per_seed[v].items()}}
                           for v in plan.variants},
              "summary": summary, "steps": plan.steps, "data_overrides": plan.data, "seeds": plan.seeds,
              "jobs": plan.jobs, "threads": plan.threads, "wall_seconds": round(wall, 1),
              "reused_runs": reused, "lpips_network": dataclasses.asdict(lpips),
              "face_metrics": FaceScorer.__doc__ if faces is not None else f"not run: {no_faces}"}  # fmt: skip
    atomic_write_json(json_path, result)
    grid = comparison_grid([configs[v, plan.seeds[0]] for v in plan.variants], device)
    png = save_png(grid, json_path.with_suffix(".png"))
    print(f"wrote {json_path} and {png} (seed {plan.seeds[0]}, cross identity; columns: source | driving | "
          f"target | {' | '.join(plan.variants)})")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command("export3d.ablation", run, args, user_errors=(ValueError, OSError, CheckpointError))
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the runs have written their checkpoints
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
