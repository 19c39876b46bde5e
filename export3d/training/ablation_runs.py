"""The ablation variants (paper Tables 3 and 4) and the training of their runs, for ``python -m export3d.ablation``.

Every variant trains with the default training run's recipe and data (the ``tiny`` preset on the built-in
synthetic heads), for the same budget, with each seed of the plan (:func:`make_plan`):

- ``direct``  "Direct 3DMM": the 64-d beta itself conditions the generator's EAdaLN (no LeBS).
- ``lebs25``, ``lebs``, ``lebs5``  "E2E LeBS (n = 25 / 10 / 5)": f_e trained jointly with the generator,
  no contrastive pre-training (paper: "jointly trained with entire model without any pre-training").
- ``clebs``  "Full (CLeBS)": the default recipe: f_e pre-trained contrastively, then frozen.
- ``xattn``  "Full, cross-attention" (Table 4): CLeBS, with cross-attention to the code in place of EAdaLN
  in the generator's conditional blocks (``ModelConfig.conditioning``; the tokenisation is documented in
  :class:`export3d.model.blocks.CodeCrossAttention`).

Not in the paper, and not run unless named (``--variants``): the face losses of issue 27
(:mod:`export3d.training.face_losses`), each added to the full recipe on every step at the weight of
:data:`FACE_WEIGHTS`: ``face_lmk`` (landmarks), ``face_bs`` (blendshapes), ``face_feat`` (feature matching) and
``face_all`` (the three). Compared with ``clebs`` they measure what each loss does; run them with
``--expression-source landmarker`` so that the expression vector is MediaPipe's blendshapes and AED means what it
does on real videos.

Runs live in ``<out>/<variant>/seed<k>``: a finished run (``metrics.json`` of the full budget) is reused, an
interrupted one resumed. :func:`train_runs` trains the rest in this process, or ``jobs`` at a time as separate
``python -m export3d.train`` processes; Ctrl-C or SIGTERM stops every one of them at a fresh checkpoint.
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

from tqdm import tqdm

from export3d.training.config import TRAIN_PRESETS, TrainConfig
from export3d.training.loop import main as train_main
from export3d.utils.distributed import resolve_device
from export3d.utils.signals import catch_sigterm, interrupts_ignored


@dataclass(frozen=True)
class Variant:
    label: str
    expression_encoder: str  # TrainConfig.expression_encoder: "clebs" | "lebs" | "direct"
    n_basis: int | None = None  # LeBS n (None: the preset's, 10)
    conditioning: str = "eadaln"
    face: tuple[float, float, float] = (0.0, 0.0, 0.0)  # face landmark, blendshape, feature loss weights (0: off)

    @property
    def code(self) -> str:
        """The name of the code that conditions the generator (what the identity probe reads)."""
        return "beta" if self.expression_encoder == "direct" else "beta'"


VARIANTS = {
    "direct": Variant("Direct 3DMM", "direct"),
    "lebs25": Variant("E2E LeBS (n=25)", "lebs", n_basis=25),
    "lebs": Variant("E2E LeBS (n=10)", "lebs", n_basis=10),
    "lebs5": Variant("E2E LeBS (n=5)", "lebs", n_basis=5),
    "clebs": Variant("Full (CLeBS)", "clebs"),
    "xattn": Variant("Full, cross-attention", "clebs", conditioning="cross_attention"),
}
PAPER_VARIANTS = tuple(VARIANTS)  # Tables 3 and 4: what the runner trains by default
# Each face term's weight: its gradient on the final image about as large as MSE's (norm ratio 0.9-1.1, measured on
# 8 held-out pairs of a trained tiny checkpoint; docs/training.md, "Face losses").
FACE_WEIGHTS = {"landmark": 0.002, "blendshape": 0.002, "feature": 0.005}
_L, _B, _F = FACE_WEIGHTS.values()
VARIANTS |= {
    "face_lmk": Variant("Full + landmark loss", "clebs", face=(_L, 0.0, 0.0)),
    "face_bs": Variant("Full + blendshape loss", "clebs", face=(0.0, _B, 0.0)),
    "face_feat": Variant("Full + feature loss", "clebs", face=(0.0, 0.0, _F)),
    "face_all": Variant("Full + all face losses", "clebs", face=(_L, _B, _F)),
}
FULL = "clebs"  # the paper's full model: the variant the others are paired with
TINY = TRAIN_PRESETS["tiny"]
# Budget per run: the tiny recipe's, the same as `make train`. 6 variants x 2 seeds, 2 runs at a time with one
# thread each, took 45 min (2,702 s) on the idle 2-core CPU (docs/evaluation.md).
DEFAULTS = {"rec_steps": TINY.rec_steps, "adv_steps": TINY.adv_steps, "clebs_steps": TINY.clebs_steps}
# --quick: what the test suite runs (seconds per run): a few steps on a small synthetic set
QUICK = {"rec_steps": 4, "adv_steps": 2, "clebs_steps": 3, "train_identities": 4, "test_identities": 3,
         "clips_per_identity": 2, "frames_per_clip": 6, "clebs_negatives": 4, "eval_pairs": 4}  # fmt: skip


# ----------------------------------------------------------------------------------------------- plan
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
    data: dict[str, object]  # TrainConfig overrides of --quick, --pairs, --data and --expression-source (else empty)
    jobs: int
    threads: int


def make_plan(args: argparse.Namespace) -> Plan:
    """The runs ``python -m export3d.ablation``'s flags ask for, with every flag checked (ValueError names it)."""
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
        if args.pairs < 1:
            raise ValueError(f"--pairs must be >= 1, got {args.pairs}")
        data["eval_pairs"] = args.pairs
    folder = getattr(args, "data", None)
    if folder is not None and folder != "synthetic":
        if not Path(folder).is_dir():
            raise ValueError(f"--data: {folder} is not a folder (expected 'synthetic' or a prepared clip folder)")
        data["data"] = (folder,)
    source = getattr(args, "expression_source", None)
    if source is not None and source != TINY.expression_source:
        data["expression_source"] = source
    return Plan(variants, seeds, out, steps, data, jobs, threads)


# ----------------------------------------------------------------------------------------------- runs
def run_config(plan: Plan, variant: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    v = VARIANTS[variant]
    run = plan.out / variant / f"seed{seed}"
    every = max(plan.steps["rec_steps"], plan.steps["adv_steps"], 1)
    landmark, blendshape, feature = v.face
    return dataclasses.replace(TINY, out=str(run), seed=seed, expression_encoder=v.expression_encoder,
                               n_basis=v.n_basis, conditioning=v.conditioning, face_landmark_weight=landmark,
                               face_blendshape_weight=blendshape, face_feature_weight=feature, device=args.device,
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


def train_runs(configs: list[TrainConfig], jobs: int, quiet: bool) -> dict[str, float | None]:
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
