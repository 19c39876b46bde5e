"""The paper's ablations in miniature (Tables 3 and 4): ``python -m export3d.evaluate --ablation``.

Every variant trains with the default training run's recipe and data (the ``tiny`` preset on the built-in
synthetic heads), for the same budget, with each of ``--seeds``:

- ``direct``  "Direct 3DMM": the 64-d beta itself conditions the generator's EAdaLN (no LeBS).
- ``lebs25``, ``lebs``, ``lebs5``  "E2E LeBS (n = 25 / 10 / 5)": f_e trained jointly with the generator,
  no contrastive pre-training (paper: "jointly trained with entire model without any pre-training").
- ``clebs``  "Full (CLeBS)": the default recipe: f_e pre-trained contrastively, then frozen.
- ``xattn``  "Full, cross-attention" (Table 4): CLeBS, with cross-attention to the code in place of EAdaLN
  in the generator's conditional blocks (``ModelConfig.conditioning``; the tokenisation is documented in
  :class:`export3d.model.blocks.CodeCrossAttention`).

Each run's own end-of-training evaluation (``metrics.json``: held-out same- and cross-identity PSNR /
SSIM / LPIPS, model and copy-the-source, weight-EMA model) is collected, plus the identity-leak probe of the
variant's expression code. The table shows mean +- half the range over seeds (the interval spans every
seed's value); ``ablation.json`` holds every number per seed and ``ablation.png`` shows the variants' images of
the same held-out cross-identity triples. Runs live in ``--out/<variant>/seed<k>``: a
finished run (``metrics.json`` present) is reused, an interrupted one resumed. On a CPU, ``--jobs`` runs
train side by side as separate processes, with the cores split between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from export3d.evaluation.loading import held_out_source, load_model
from export3d.evaluation.probe import identity_leak
from export3d.evaluation.scoring import cross_identity_batches
from export3d.training.config import TRAIN_PRESETS, TrainConfig
from export3d.training.loop import main as train_main
from export3d.utils.distributed import resolve_device
from export3d.utils.images import make_grid, save_png
from export3d.utils.outputs import atomic_write_json
from export3d.utils.signals import catch_sigterm, interrupts_ignored


@dataclass(frozen=True)
class Variant:
    label: str
    expression_encoder: str  # TrainConfig.expression_encoder: "clebs" | "lebs" | "direct"
    n_basis: int | None = None  # LeBS n (None: the preset's, 10)
    conditioning: str = "eadaln"


VARIANTS = {
    "direct": Variant("Direct 3DMM", "direct"),
    "lebs25": Variant("E2E LeBS (n=25)", "lebs", n_basis=25),
    "lebs": Variant("E2E LeBS (n=10)", "lebs", n_basis=10),
    "lebs5": Variant("E2E LeBS (n=5)", "lebs", n_basis=5),
    "clebs": Variant("Full (CLeBS)", "clebs"),
    "xattn": Variant("Full, cross-attention", "clebs", conditioning="cross_attention"),
}
TINY = TRAIN_PRESETS["tiny"]
# Budget per run: the tiny recipe's, the same as `make train`. 6 variants x 2 seeds, 2 runs at a time with one
# thread each, took 45 min (2,702 s) on the idle 2-core CPU (docs/evaluation.md).
DEFAULTS = {"rec_steps": TINY.rec_steps, "adv_steps": TINY.adv_steps, "clebs_steps": TINY.clebs_steps}
# --quick: what the test suite runs (seconds per run): a few steps on a small synthetic set
QUICK = {"rec_steps": 4, "adv_steps": 2, "clebs_steps": 3, "train_identities": 4, "test_identities": 3,
         "clips_per_identity": 2, "frames_per_clip": 6, "clebs_negatives": 4, "eval_pairs": 4}  # fmt: skip
METRICS = ("psnr", "ssim", "lpips")


# ----------------------------------------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ablation (paper Tables 3 and 4; also uses --device, --vgg-weights, --json, --probe)")
    g.add_argument("--ablation", action="store_true", help="train and compare the ablation variants")
    g.add_argument("--out", help="folder for the variants' runs (default: runs/ablation, runs/ablation-quick)")
    g.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    g.add_argument("--seeds", help="comma-separated training seeds of every variant (default: 0,1; --quick: 0)")
    for name, value in DEFAULTS.items():
        g.add_argument("--" + name.replace("_", "-"), type=int, help=f"steps per run (default: {value})")
    g.add_argument("--jobs", type=int, help="runs trained at once, in separate processes (default: 2 on a CPU with "
                                            ">= 2 cores, else 1 in this process)")  # fmt: skip
    g.add_argument("--threads", type=int, help="torch threads: of this process for --checkpoint (default: PyTorch's), "
                                               "of each run for --ablation (default: the cores divided by --jobs)")
    g.add_argument("--quick", action="store_true", help="a few steps on small data, one seed (what the tests run)")


# flags that mean something only with --ablation (evaluate refuses them otherwise)
ABLATION_ONLY = ("out", "seeds", "rec_steps", "adv_steps", "clebs_steps", "jobs", "quick")


def _names(spec: str, flag: str, allowed=None) -> list[str]:
    names = [v.strip() for v in spec.split(",") if v.strip()]
    bad = [v for v in names if allowed is not None and v not in allowed]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"{flag}: {spec!r} must list distinct names from {','.join(allowed or [])}")
    return names


@dataclass(frozen=True)
class Plan:
    variants: list[str]
    seeds: list[int]
    out: Path
    steps: dict[str, int]
    data: dict[str, int]  # TrainConfig overrides of --quick (empty otherwise)
    jobs: int
    threads: int


def make_plan(args: argparse.Namespace) -> Plan:
    variants = _names(args.variants, "--variants", VARIANTS)
    spec = args.seeds or ("0" if args.quick else "0,1")
    try:
        seeds = [int(s) for s in _names(spec, "--seeds")]
    except ValueError as exc:
        raise ValueError(f"--seeds: {spec!r} must be comma-separated distinct integers") from exc
    steps = {k: QUICK[k] if args.quick else v for k, v in DEFAULTS.items()}
    steps.update({k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None})
    if min(steps.values()) < 0 or steps["rec_steps"] < 1:
        raise ValueError("--rec-steps must be >= 1 and --adv-steps, --clebs-steps >= 0")
    cuda = resolve_device(args.device).type == "cuda"
    cores = os.cpu_count() or 1
    jobs = args.jobs if args.jobs is not None else (1 if cuda or cores < 2 else 2)
    threads = args.threads if args.threads is not None else max(1, cores // jobs)
    if jobs < 1 or threads < 1:
        raise ValueError(f"--jobs and --threads must be >= 1, got {jobs} and {threads}")
    out = Path(args.out or ("runs/ablation-quick" if args.quick else "runs/ablation"))
    data = {k: v for k, v in QUICK.items() if k not in DEFAULTS} if args.quick else {}
    if args.pairs is not None:
        data["eval_pairs"] = args.pairs
    return Plan(variants, seeds, out, steps, data, jobs, threads)


# ----------------------------------------------------------------------------------------------- runs
def run_config(plan: Plan, variant: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    v = VARIANTS[variant]
    run = plan.out / variant / f"seed{seed}"
    every = max(plan.steps["rec_steps"], plan.steps["adv_steps"], 1)
    return dataclasses.replace(TINY, out=str(run), seed=seed, expression_encoder=v.expression_encoder,
                               n_basis=v.n_basis, conditioning=v.conditioning, device=args.device,
                               threads=plan.threads, vgg_weights=args.vgg_weights, sample_every=every,
                               ckpt_every=every, **plan.steps, **plan.data)  # fmt: skip


def run_state(cfg: TrainConfig) -> str:
    """"finished" (metrics.json of the full budget), "partial" (a run folder to resume) or "new"."""
    out = Path(cfg.out)
    total = cfg.steps("clebs") + cfg.rec_steps + cfg.adv_steps
    metrics = out / "metrics.json"
    if metrics.is_file() and json.loads(metrics.read_text()).get("step") == total:
        return "finished"
    return "partial" if (out / "config.json").is_file() else "new"


def train_command(cfg: TrainConfig) -> list[str]:
    """The ``python -m export3d.train`` command line that trains ``cfg`` (resuming when it has a run folder)."""
    base = dataclasses.asdict(TINY)
    cmd = [sys.executable, "-m", "export3d.train", "--preset", cfg.preset]
    for key, value in dataclasses.asdict(cfg).items():
        if value != base[key] and value is not None and key != "resume":
            cmd += ["--" + key.replace("_", "-"), str(value)]
    if run_state(cfg) == "partial":
        cmd += ["--resume", cfg.out]
    return cmd


def _log_path(out: str) -> Path:
    return Path(out).with_name(Path(out).name + ".train.out")


def train_runs(configs: list[TrainConfig], jobs: int, quiet: bool) -> dict[str, float]:
    """Train every config not yet finished, ``jobs`` at a time; returns the training seconds of each run trained
    now (None for a finished run reused)."""
    todo = [c for c in configs if run_state(c) != "finished"]
    seconds: dict[str, float | None] = {c.out: None for c in configs}
    for c in configs:
        if c not in todo:
            print(f"reusing the finished run {c.out}")
    bar = tqdm(total=len(todo), desc="ablation runs", unit="run", disable=quiet)
    if jobs == 1:  # in this process: simplest to debug, and what the tests use
        for c in todo:
            t0 = time.perf_counter()
            train_main(dataclasses.replace(c, resume=c.out if run_state(c) == "partial" else None))
            seconds[c.out] = time.perf_counter() - t0
            bar.update()
        bar.close()
        return seconds
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    restore_handlers = catch_sigterm()
    try:
        failed = _train_in_processes(todo, jobs, running, seconds, bar)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Terminated)
        bar.close()
        print(f"\nablation: interrupted; stopping {len(running)} run(s), each writes a checkpoint first ...",
              file=sys.stderr, flush=True)  # fmt: skip
        _stop(running)
        print("ablation: stopped. The same command resumes the interrupted runs and reuses the finished ones.",
              file=sys.stderr)  # fmt: skip
        raise
    finally:
        restore_handlers()
    bar.close()
    if failed:
        raise RuntimeError("ablation: training failed for " + ", ".join(failed))
    return seconds


def _stop(running: dict[str, tuple[subprocess.Popen, float, object]]) -> None:
    """Ctrl-C reaches every process of the terminal's group; a signal sent to the runner alone does not. So each
    run still going gets a SIGTERM: harmless if it already has a Ctrl-C (training ignores both while it writes its
    interrupt checkpoint), and it stops one that had none."""
    with interrupts_ignored():  # waiting for the runs' checkpoints, not to be cut short by another Ctrl-C
        time.sleep(1.0)  # let the runs that got the terminal's Ctrl-C reach their checkpoint first
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, log in running.values():
            proc.wait()
            log.close()


def _train_in_processes(todo: list[TrainConfig], jobs: int, running: dict, seconds: dict, bar) -> list[str]:
    """Keep ``jobs`` ``export3d.train`` processes busy until ``todo`` is done; ``running`` is kept current so
    that an interrupt can stop them. Returns the failed runs."""
    queue = list(todo)
    failed = []
    while queue or running:
        while queue and len(running) < jobs:
            c = queue.pop(0)
            # beside the run folder, not in it: export3d.train starts a new run only in a new or empty folder
            Path(c.out).parent.mkdir(parents=True, exist_ok=True)
            log = open(_log_path(c.out), "a")  # closed when the process ends
            proc = subprocess.Popen(train_command(c), stdout=log, stderr=subprocess.STDOUT)
            running[c.out] = (proc, time.perf_counter(), log)
        time.sleep(1.0)
        for out, (proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[out]
            seconds[out] = time.perf_counter() - t0
            if proc.returncode != 0:
                failed.append(f"{out} (exit {proc.returncode}; see {_log_path(out)})")
            bar.update()
            bar.set_postfix_str(Path(out).parent.name + "/" + Path(out).name)
    return failed


# ----------------------------------------------------------------------------------------------- results
def collect(cfg: TrainConfig, probe: str, device: torch.device) -> dict:
    """One run's numbers: its end-of-training metrics.json and the identity leak of its expression code."""
    metrics = json.loads((Path(cfg.out) / "metrics.json").read_text())
    model, meta, _ = load_model(cfg.out, device)
    source = held_out_source(meta, "synthetic", model.config.image_size)
    return metrics | {"identity_leak": identity_leak(model, source, probe)}


@torch.no_grad()
def comparison_grid(configs: list[TrainConfig], device: torch.device, rows: int = 6) -> torch.Tensor:
    """The paper's Figs. 6 and 7 in miniature: ``rows`` held-out cross-identity triples of one seed's test data,
    columns source | driving | target | each config's image (its weight-EMA model). ``[3, H, W]`` in [-1, 1]."""
    cols, batch = [], None
    for cfg in configs:
        model, meta, _ = load_model(cfg.out, device)
        if batch is None:  # every variant of one seed has the same data
            source = held_out_source(meta, "synthetic", model.config.image_size)
            batch = cross_identity_batches(source, rows, rows, seed=cfg.seed)[0]
            cols += [batch.source, batch.driving, batch.target]
        cols.append(model(batch.source.to(device), batch.beta.to(device), batch.camera.to(device)).image.float().cpu())
    return make_grid([c.clamp(-1, 1) for c in cols])


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, half the range): ``mean +- half`` covers every value."""
    return sum(values) / len(values), (max(values) - min(values)) / 2


def _cross_psnr(run: dict, method: str = "model") -> float:
    return run["cross_identity"][method]["psnr"]


def summarise(per_seed: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Mean and half-range over seeds of every metric of every variant, and of copy-the-source.

    A seed fixes the synthetic data and test pairs as well as the initialisation, so the paired differences
    (cross-identity PSNR minus copy-the-source's, and minus the ``clebs`` run's, seed by seed) are sharper
    than the spread of the plain values.
    """
    out = {}
    full = per_seed.get("clebs", {})
    for variant, seeds in per_seed.items():
        runs = list(seeds.values())
        row = {f"{s}_{m}": spread([r[s]["model"][m] for r in runs]) for s in ("same_identity", "cross_identity")
               for m in METRICS}  # fmt: skip
        row["cross_identity_psnr_gain"] = spread([_cross_psnr(r) - _cross_psnr(r, "copy_source") for r in runs])
        paired = [_cross_psnr(r) - _cross_psnr(full[k]) for k, r in seeds.items() if k in full]
        if variant != "clebs" and paired:
            row["cross_identity_psnr_vs_full"] = spread(paired)
        row["probe_accuracy"] = spread([r["identity_leak"]["beta_prime"]["accuracy"] for r in runs])
        out[variant] = row
    first = next(iter(per_seed.values()))
    out["copy_source"] = {f"{s}_{m}": spread([r[s]["copy_source"][m] for r in first.values()])
                          for s in ("same_identity", "cross_identity") for m in METRICS}  # fmt: skip
    out["copy_source"]["raw_beta_probe_accuracy"] = spread([r["identity_leak"]["beta"]["accuracy"]
                                                            for r in first.values()])  # fmt: skip
    return out


def _cell(value: tuple[float, float] | None, metric: str) -> str:
    if value is None:
        return "-"
    mean, half = value
    return f"{mean:.2f}±{half:.2f}" if metric == "psnr" else f"{mean:.3f}±{half:.3f}"


def format_ablation(summary: dict[str, dict], seeds: int, pairs: int, chance: float) -> str:
    arrows = {"psnr": "↑", "ssim": "↑", "lpips": "↓"}
    widths = {"psnr": 12, "ssim": 13, "lpips": 13}
    cols = "".join(f"{m.upper() + arrows[m]:>{widths[m]}}" for m in METRICS)
    head = (f"{'':<22} | {'Same-identity (' + str(pairs) + ' pairs)':<38} | {'Cross-identity':<38} | "
            f"{'cross PSNR paired':<23} | probe acc↓ (chance {chance:.3f})")  # fmt: skip
    lines = [head, f"{'Method':<22} | {cols} | {cols} | {'-copy':>11}{'-Full':>12} |", "-" * len(head)]
    for variant, row in summary.items():
        label = "Copy source" if variant == "copy_source" else VARIANTS[variant].label
        cells = [" ".join(f"{_cell(row[f'{s}_{m}'], m):>{widths[m] - 1}}" for m in METRICS)
                 for s in ("same_identity", "cross_identity")]  # fmt: skip
        paired = " ".join(f"{_cell(row.get(k), 'psnr'):>11}" for k in ("cross_identity_psnr_gain",
                                                                         "cross_identity_psnr_vs_full"))
        acc = row.get("probe_accuracy") or row["raw_beta_probe_accuracy"]
        code = "raw beta" if variant == "copy_source" else ("beta" if variant == "direct" else "beta'")
        lines.append(f"{label:<22} |  {cells[0]} |  {cells[1]} | {paired} | {_cell(acc, 'ssim')} ({code})")
    lines.append(f"mean ± half the range over {seeds} seed(s); same data, recipe and budget for every variant. "
                 "Paired: each seed's cross-identity PSNR minus copy-the-source's and minus Full (CLeBS)'s, "
                 "same seed (the seed also fixes the data)")  # fmt: skip
    return "\n".join(lines)


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
    for (variant, seed), cfg in configs.items():
        took = seconds[cfg.out]
        took = round(took, 1) if took is not None else earlier.get((variant, seed))  # a reused run: when trained
        per_seed[variant][seed] = collect(cfg, args.probe, device) | {"train_seconds": took}
    wall = time.perf_counter() - t0
    reused = sum(t is None for t in seconds.values())
    summary = summarise(per_seed)
    first = per_seed[plan.variants[0]][plan.seeds[0]]
    print(format_ablation(summary, len(plan.seeds), first["same_identity"]["pairs"],
                          first["identity_leak"]["chance"]))  # fmt: skip
    print(f"wall time {wall:.0f} s ({reused} of {len(configs)} runs reused); LPIPS network: {first['lpips_network']}")
    result = {"variants": {v: {**dataclasses.asdict(VARIANTS[v]), "seeds": {str(k): r for k, r in per_seed[v].items()}}
                           for v in plan.variants},
              "summary": summary, "steps": plan.steps, "data_overrides": plan.data, "seeds": plan.seeds,
              "jobs": plan.jobs, "threads": plan.threads, "wall_seconds": round(wall, 1),
              "reused_runs": reused}  # fmt: skip
    atomic_write_json(json_path, result)
    grid = comparison_grid([configs[v, plan.seeds[0]] for v in plan.variants], device)
    png = save_png(grid, json_path.with_suffix(".png"))
    print(f"wrote {json_path} and {png} (seed {plan.seeds[0]}, cross identity; columns: source | driving | "
          f"target | {' | '.join(plan.variants)})")
    return result
