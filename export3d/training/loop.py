"""The training loop behind ``python -m export3d.train`` (the ``tiny`` preset on synthetic data by default).

Three stages (paper Sec. 3.4; docs/design.md, "Training"): CLeBS contrastive pre-training of the expression
encoder (then frozen), reconstruction (MSE + LPIPS on raw and final images), and reconstruction plus
``0.01 * L_adv`` with the camera-conditioned discriminator. Multi-GPU: ``torchrun --nproc_per_node=N
-m export3d.train ...`` (DistributedDataParallel; ``--batch-size`` is per process; only rank 0 writes).

Outputs in ``--out``: ``config.json``, ``checkpoints/`` (safetensors + training state, atomic),
``samples/*.png`` (source | driving | raw | final | target), ``log.jsonl``, ``tensorboard/`` and, at
the end, ``metrics.json`` (held-out same- and cross-identity PSNR / SSIM / LPIPS vs copy-the-source).

A step reads nothing on the host: its losses stay on the device (:class:`PendingLog`) until the next log interval
or checkpoint, where :func:`read_logs` fetches all of them at once and checks them, so on a GPU the steps in between
queue without a device-to-host synchronisation. A non-finite value is then reported with the step that produced it;
a checkpoint reads the pending values first and never saves a non-finite state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from export3d.data import ContrastiveGroups, ReconstructionPairs
from export3d.evaluation.loading import source_label
from export3d.evaluation.memorisation import Memorisation
from export3d.evaluation.metrics import LPIPSInfo, build_lpips
from export3d.evaluation.scoring import (
    EvalBatch,
    cross_identity_batches,
    evaluate_sources,
    format_table,
    per_source,
    same_identity_batches,
)
from export3d.model import Export3D
from export3d.model.clebs import CLeBS
from export3d.model.config import ModelConfig, preset
from export3d.model.discriminator import Discriminator
from export3d.training import runs
from export3d.training.batches import (
    BatchStream,
    DataSource,
    MixedStream,
    batch_stream,
    build_sources,
    describe_data,
)
from export3d.training.config import STAGES, TrainConfig, model_overrides
from export3d.training.face_losses import FaceLoss, build_face_loss
from export3d.training.losses import (
    discriminator_loss,
    generator_adversarial_loss,
    r1_penalty,
    reconstruction_loss,
    resize_to,
)
from export3d.training.runlog import Progress, RunLogger
from export3d.training.weight_ema import WeightEMA
from export3d.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from export3d.utils.distributed import DistInfo, init_distributed, shutdown
from export3d.utils.images import make_grid, save_png
from export3d.utils.outputs import atomic_write_json
from export3d.utils.signals import Terminated, catch_sigterm, interrupts_ignored


# ----------------------------------------------------------------------------------------------- helpers
def gather_rng(dist: DistInfo) -> list[dict]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    state = {"torch": torch.get_rng_state(), "cuda": cuda}
    if not dist.distributed:
        return [state]
    states = [None] * dist.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def restore_rng(states: list[dict], dist: DistInfo) -> None:
    if len(states) != dist.world_size:
        raise CheckpointError(f"checkpoint: saved by {len(states)} process(es), resumed with {dist.world_size}")
    torch.set_rng_state(states[dist.rank]["torch"])
    if states[dist.rank]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states[dist.rank]["cuda"])


def wrap(module: nn.Module, dist: DistInfo) -> nn.Module:
    """DDP for multi-process runs. Buffers are not broadcast: :func:`average_buffers` keeps them equal."""
    if not dist.distributed:
        return module
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


@torch.no_grad()
def average_buffers(module: nn.Module, dist: DistInfo) -> None:
    """Average floating-point buffers over ranks after a step. For the tri-plane EMA this is exact: every
    rank starts from the same EMA, so the mean of the updated EMAs is the EMA of the global batch mean."""
    if not dist.distributed:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            torch.distributed.all_reduce(buf)  # SUM (gloo has no AVG)
            buf.div_(dist.world_size)


@torch.no_grad()
def sample_grid(model: Export3D, batches, device) -> torch.Tensor:
    """Columns: source | driving | raw | final | target (target = ground truth for cross-identity rows)."""
    was_training = model.training
    model.eval()
    cols = [[], [], [], [], []]
    for b in batches:
        out = model(b.source.to(device), b.beta.to(device), b.camera.to(device))
        for col, image in zip(cols, (b.source, b.driving, out.image_raw, out.image, b.target), strict=True):
            col.append(image.float().cpu())
    model.train(was_training)
    return make_grid([torch.cat(c) for c in cols])


class ClipObjective(nn.Module):
    """CLeBS's clip loss as a module forward, so DistributedDataParallel synchronises its gradients."""

    def __init__(self, clebs: CLeBS):
        super().__init__()
        self.clebs = clebs

    def forward(self, images: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return self.clebs.clip_loss(images, beta)


def generator_images(state: dict, cfg: TrainConfig, dist: DistInfo) -> int:
    """Images the generator has trained on so far (all processes): the weight EMA's ramp-up clock."""
    steps = state["stage_step"] if state["stage"] != "clebs" else 0
    if state["stage"] == "adversarial":
        steps += cfg.steps("reconstruction")
    return steps * cfg.batch_size * dist.world_size


@dataclass
class TrainResult:
    out: Path
    metrics: dict | None
    model: Export3D  # the trained weights
    discriminator: Discriminator
    model_ema: Export3D | None  # the weight EMA (EG3D's G_ema) that samples and metrics.json use; None when off


# ----------------------------------------------------------------------------------------------- one run
@dataclass
class PendingLog:
    """The values one step logged, still on the device (0-d tensors), until :func:`read_logs` reads them."""

    step: int  # global step count after the step
    stage: str
    stage_step: int  # the step's count within its stage
    values: dict[str, torch.Tensor]


@dataclass
class Run:
    """One training run: what :func:`start_run` built, and how far it has got. The steps of :func:`main` share it.

    ``state`` (and the optimisers, weights and RNG) is what a checkpoint saves; ``last_saved`` names the newest
    checkpoint folder, which is always a finite state (a divergence message points to it).
    """

    cfg: TrainConfig
    dist: DistInfo
    out: Path  # the run folder (only rank 0 writes into it)
    model_cfg: ModelConfig
    sources: list[DataSource]  # the --data sources: training splits, held-out splits (samples, metrics.json)
    pairs: list[ReconstructionPairs]  # per source: what the reconstruction and adversarial stages train on
    groups: list[ContrastiveGroups]  # per source: what the CLeBS stage trains on
    model: Export3D
    clebs: CLeBS
    disc: Discriminator
    lpips_model: nn.Module
    lpips_info: LPIPSInfo
    optimisers: dict[str, torch.optim.Optimizer]  # "clebs", "generator", "discriminator"
    autocast: contextlib.AbstractContextManager  # bf16 autocast with --amp, else a no-op
    # stage, stage_step (steps done in it), step (steps done in all), positions (BatchStream position per stage)
    state: dict
    ema: WeightEMA | None = None  # None with --ema-half-life-images 0
    face_loss: FaceLoss | None = None  # the face terms (training/face_losses.py); None when their weights are all 0
    logger: RunLogger | None = None  # set by start_run once the run folder is written
    samples: list[EvalBatch] = field(default_factory=list)  # the held-out rows of every sample grid
    last_saved: Path | None = None  # the newest checkpoint folder (None: none written or resumed yet)
    pending: list[PendingLog] = field(default_factory=list)  # steps whose logged values have not been read yet
    shown_logs: dict[str, float] = field(default_factory=dict)  # the progress bar's values (the newest read ones)
    # throughput since the last log line: its start (minus sample grids and checkpoint writes), steps and images
    interval_start: float = field(default_factory=time.perf_counter)
    interval_steps: int = 0
    interval_images: int = 0

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "clebs": self.clebs, "discriminator": self.disc}

    @property
    def averaged(self) -> Export3D | None:
        """The weight EMA's model (EG3D's G_ema), or None when the EMA is off."""
        return self.ema.module if self.ema is not None else None

    @property
    def saved_modules(self) -> dict[str, nn.Module]:
        """The weights a checkpoint holds: the modules, plus ``model_ema`` when the EMA is on."""
        return {**self.modules, "model_ema": self.averaged} if self.averaged is not None else self.modules

    @property
    def shown(self) -> Export3D:
        """The weights that sample grids and metrics.json use: the EMA when it is on, else the trained ones."""
        return self.averaged if self.averaged is not None else self.model

    def result(self, metrics: dict | None) -> TrainResult:
        return TrainResult(self.out, metrics, self.model, self.disc, self.averaged)


# ----------------------------------------------------------------------------------------------- set-up
def resolve_output(cfg: TrainConfig) -> tuple[Path, Path | None, str | None]:
    """(output folder, resumed run folder or None, checkpoint to load or None), after every check of the folders
    and of a resume's settings, before anything is written. A resumed run without a checkpoint yet loads nothing:
    it starts again from step 0 with its saved settings."""
    out = Path(cfg.out)
    run = resume_from = None
    if cfg.resume is not None:
        run = runs.run_folder(cfg.resume)
        if out.resolve() == Path(cfg.resume).resolve():
            out = run  # --resume RUN/checkpoints/step_X continues writing into RUN
        runs.check_resume(cfg, run, runs.saved_settings(run))
        resume_from = cfg.resume if runs.has_checkpoint(run) else None
    if run is None or out.resolve() != run.resolve():
        runs.check_new_output(out)
    return out, run, resume_from


def build_run(cfg: TrainConfig, dist: DistInfo, out: Path) -> Run:
    """Data, models, LPIPS and optimisers at step 0; the models draw their initial weights from the global RNG,
    which the caller has seeded."""
    device = dist.device
    model_cfg = preset(cfg.preset, **model_overrides(cfg))
    sources = build_sources(cfg, model_cfg.image_size)
    dim = sources[0].train.expression_dim  # the same for every source (build_sources checks)
    if dim != model_cfg.expression_dim:  # E belongs to the data: 52 for MediaPipe blendshapes
        model_cfg = dataclasses.replace(model_cfg, lebs=dataclasses.replace(model_cfg.lebs, expression_dim=dim))
    pairs = [ReconstructionPairs(s.train, seed=cfg.seed, augment=s.augment) for s in sources]
    groups = [ContrastiveGroups(s.train, k=cfg.clebs_negatives, groups_per_clip=8, seed=cfg.seed, augment=s.augment)
              for s in sources]  # fmt: skip
    model = Export3D(model_cfg).to(device)
    clebs = CLeBS(model_cfg.lebs).to(device)
    disc = Discriminator(model_cfg).to(device)
    lpips_model, lpips_info = build_lpips(cfg.vgg_weights)
    lpips_model.to(device)
    adam = dict(betas=cfg.betas)
    # f_e joins the generator optimiser only when it is trained end to end ("lebs"; "direct" has no parameters)
    trained_fe = cfg.expression_encoder != "clebs"
    generator = [p for n, p in model.named_parameters() if trained_fe or not n.startswith("lebs.")]
    optimisers = {"clebs": torch.optim.Adam(clebs.parameters(), lr=cfg.clebs_lr, **adam),
                  "generator": torch.optim.Adam(generator, lr=cfg.lr, **adam),
                  "discriminator": torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, **adam)}  # fmt: skip
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp else contextlib.nullcontext()
    state = {"stage": STAGES[0], "stage_step": 0, "step": 0, "positions": {}}
    return Run(cfg, dist, out, model_cfg, sources, pairs, groups, model, clebs, disc, lpips_model, lpips_info,
               optimisers, autocast, state, face_loss=build_face_loss(cfg, device))  # fmt: skip


def load_resumed(run: Run, resume_from: str) -> tuple[dict[str, dict[str, torch.Tensor]], Path]:
    """Weights, optimiser states, progress and every rank's RNG from a checkpoint; returns its weights and folder."""
    weights, saved, folder = load_checkpoint(resume_from)
    for name, module in run.modules.items():
        module.load_state_dict(weights[name])
    for name, opt in run.optimisers.items():
        opt.load_state_dict(saved["optimisers"][name])
    run.state = {k: saved[k] for k in run.state}
    restore_rng(saved["rng"], run.dist)
    if run.dist.is_main:
        state = run.state
        print(f"resumed from {folder} at step {state['step']} ({state['stage']} step {state['stage_step']})")
    return weights, folder


def write_run_folder(run: Run, restart: bool) -> None:
    """Rank 0 writes the settings and cuts the log back to the current step, once every rank has checked the folder
    and built everything. ``restart``: a resumed run that has no checkpoint yet loses its logs and samples."""
    if run.dist.distributed:
        torch.distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
    if run.dist.is_main:
        if restart:
            runs.restart_empty_run(run.out)
        runs.truncate_log(run.out, run.state["step"])
        runs.write_config(run.out, run.cfg)


def build_ema(run: Run, weights: dict[str, dict[str, torch.Tensor]], folder: Path | None) -> WeightEMA | None:
    """The weight EMA (None when off): a copy of the model as it is now, or the resumed checkpoint's ``model_ema``.
    ``folder``: the resumed checkpoint, whose ``weights`` are given (None for a run from step 0)."""
    cfg = run.cfg
    if cfg.ema_half_life_images <= 0:
        return None
    ema = WeightEMA(run.model, cfg.ema_half_life_images, cfg.ema_rampup)
    if folder is not None:
        if "model_ema" in weights:
            ema.module.load_state_dict(weights["model_ema"])
        elif run.dist.is_main:
            print(f"note: {folder} holds no weight EMA (model_ema); it restarts from the trained weights")
    return ema


def start_run(cfg: TrainConfig) -> Run:
    """Set-up, in this order: resolve the output and the resume (writing nothing until all checks pass), seed,
    build, load a resumed checkpoint, write the run folder, freeze f_e past the CLeBS stage, the weight EMA,
    the logger and the fixed sample rows."""
    dist = init_distributed(cfg.device)
    if cfg.amp and dist.device.type != "cuda":
        raise ValueError(f"--amp runs bf16 autocast on CUDA; this run is on {dist.device}")
    out, resumed, resume_from = resolve_output(cfg)
    torch.manual_seed(cfg.seed * 1000 + dist.rank)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    run = build_run(cfg, dist, out)
    weights, folder = {}, None
    if resume_from is not None:
        weights, folder = load_resumed(run, resume_from)
    elif cfg.resume is not None and dist.is_main:
        print(f"{resumed} has no checkpoint yet: starting it again from step 0 with its saved settings")
    write_run_folder(run, restart=cfg.resume is not None and resume_from is None and out.resolve() == resumed.resolve())
    if STAGES.index(run.state["stage"]) > 0 and cfg.expression_encoder == "clebs":
        run.model.freeze_expression_encoder()
    run.ema = build_ema(run, weights, folder)
    run.last_saved = folder
    # TensorBoard drops the events at and after the resumed step, as log.jsonl is cut back to it
    run.logger = RunLogger(out, enabled=dist.is_main, purge_step=run.state["step"] if folder is not None else None)
    run.samples = [b for s in run.sources for b in same_identity_batches(s.test, 4, 4, seed=cfg.seed)] \
        + [b for s in run.sources for b in cross_identity_batches(s.test, 4, 4, cfg.seed)]  # fmt: skip
    if dist.is_main:
        print(f"export3d.train: preset {cfg.preset}, {describe_data(cfg)}, device {dist.device}, {dist.world_size} "
              f"process(es); {run.lpips_info.describe()}", flush=True)  # fmt: skip
    return run


# ----------------------------------------------------------------------------------------------- checkpoints
def checkpoint(run: Run) -> None:
    """Save the weights, optimisers, progress and RNG of every rank (all ranks call it; rank 0 writes). A state
    holding NaN or Inf is never saved over the last finite one: that is a divergence. The values logged since the
    last read are read and checked first, so a divergence is reported at the step whose loss went non-finite."""
    read_logs(run)
    for name, module in run.saved_modules.items():
        bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            diverged(run, f"{name}.{bad[0]} holds NaN or Inf values")
    payload = {
        **run.state,
        "optimisers": {k: o.state_dict() for k, o in run.optimisers.items()},
        "rng": gather_rng(run.dist),
        "config": run.cfg.to_dict(),
        "lpips": dataclasses.asdict(run.lpips_info),
    }
    if run.dist.is_main:
        meta = {"model_config": dataclasses.asdict(run.model_cfg), "train_config": run.cfg.to_dict()}
        run.last_saved = save_checkpoint(run.out / "checkpoints", run.state["step"], run.saved_modules, payload,
                                         meta=meta)  # fmt: skip


def diverged(run: Run, what: str, at: PendingLog | None = None) -> NoReturn:
    """Raise :class:`runs.TrainingDiverged` naming the step, ``what`` went wrong and the last finite checkpoint.
    ``at``: the step whose logged values went non-finite (default: the last step taken)."""
    last = run.last_saved
    step, stage, stage_step = (at.step, at.stage, at.stage_step) if at is not None else \
        (run.state["step"], run.state["stage"], run.state["stage_step"])  # fmt: skip
    kept = f"the last finite checkpoint is {last}" if last else "no checkpoint was written"
    raise runs.TrainingDiverged(f"training diverged in step {step} ({stage} step {stage_step}): {what}; it was not "
                                f"saved, {kept}. Lower --lr / --adv-weight or check the data.")  # fmt: skip


def read_logs(run: Run) -> PendingLog | None:
    """Read every pending logged value on the host in one transfer (on a GPU, the one synchronisation of the steps
    since the last read) and check them in step order: the first non-finite one raises :class:`runs.TrainingDiverged`
    naming its step. Returns the newest step's log with its values as floats (None when nothing was pending)."""
    pending, run.pending = run.pending, []
    if not pending:
        return None
    flat = torch.stack([v.detach().float().reshape(()) for p in pending for v in p.values.values()]).tolist()
    i = 0
    for p in pending:
        p.values = dict(zip(p.values, flat[i : i + len(p.values)], strict=True))
        i += len(p.values)
        bad = runs.non_finite(p.values)
        if bad:
            diverged(run, f"{bad[0]} = {p.values[bad[0]]} (logged values: {', '.join(bad)} non-finite)", p)
    return pending[-1]


# ----------------------------------------------------------------------------------------------- stages
def stop_reached(run: Run) -> bool:
    """``--stop-after`` steps are done."""
    return run.cfg.stop_after is not None and run.state["step"] >= run.cfg.stop_after


def stage_networks(run: Run, stage: str) -> tuple[nn.Module, nn.Module | None, nn.Module | None]:
    """(CLeBS clip objective, generator, discriminator) of ``stage``, wrapped for DDP in multi-process runs; the
    generator and discriminator are None in stages that do not train them."""
    net_c, net_g, net_d = wrap(ClipObjective(run.clebs), run.dist), None, None
    if stage != "clebs":
        net_g, net_d = wrap(run.model, run.dist), wrap(run.disc, run.dist) if stage == "adversarial" else None
    return net_c, net_g, net_d


def train_stage(run: Run, stage: str) -> None:
    """The remaining steps of ``stage``, with logging, sample grids and periodic checkpoints. Returns after the
    stage's last step or at ``--stop-after``; the caller saves either once."""
    cfg, state = run.cfg, run.state
    if state["stage"] != stage:
        state.update(stage=stage, stage_step=0)
    total = cfg.steps(stage)
    data, batch_size = (run.groups, cfg.clebs_clips) if stage == "clebs" else (run.pairs, cfg.batch_size)
    stream = batch_stream(cfg, stage, data, batch_size, run.dist, state)
    nets = stage_networks(run, stage)
    if stage != "clebs" and run.ema is not None and generator_images(state, cfg, run.dist) == 0:
        run.ema.reset(run.model)  # the average starts from the weights DDP has just made equal on every rank
    progress = Progress(stage, state["stage_step"], total, enabled=run.dist.is_main, log_every=cfg.log_every)
    run.interval_start, run.interval_steps, run.interval_images = time.perf_counter(), 0, 0
    try:
        while state["stage_step"] < total:
            take_step(run, stage, stream, *nets)
            report_step(run, stage, total, progress)
            stop = stop_reached(run)
            if state["stage_step"] % cfg.ckpt_every == 0 and state["stage_step"] < total and not stop:
                read_logs(run)  # waits for the steps' work, which belongs to their time; the write does not
                t0 = time.perf_counter()
                checkpoint(run)  # a stage's last step and a --stop-after step are saved once, after the loop
                run.interval_start += time.perf_counter() - t0
            if stop:
                break
    except runs.TrainingDiverged:
        progress.close()
        raise
    progress.close()


def take_step(run: Run, stage: str, stream: BatchStream | MixedStream, net_c: nn.Module, net_g: nn.Module | None,
              net_d: nn.Module | None) -> None:  # fmt: skip
    """One optimiser step of ``stage``, then the buffer average, the weight EMA and the progress counters. Its logged
    values join ``run.pending``, unread: nothing here waits for the device."""
    cfg, dist, state, opts = run.cfg, run.dist, run.state, run.optimisers
    batch = {k: v.to(dist.device) for k, v in stream.next().items()}
    if stage == "clebs":
        loss = net_c(batch["images"], batch["beta"])  # images [clips, K+1, 3, H, W], beta [clips, K+1, E]
        opts["clebs"].zero_grad(set_to_none=True)
        loss.backward()
        opts["clebs"].step()
        logs = {"infonce": loss.detach()}
        images = batch["images"].shape[0] * batch["images"].shape[1]
    else:
        logs = train_generator_step(net_g, net_d, run.disc, opts["generator"], opts["discriminator"], batch,
                                    run.lpips_model, cfg, state["stage_step"], run.autocast,
                                    face_loss=run.face_loss)  # fmt: skip
        average_buffers(run.model, dist)
        images = batch["source"].shape[0]  # source [B, 3, H, W]
    state["stage_step"] += 1
    if run.ema is not None and stage != "clebs":
        run.ema.update(run.model, generator_images(state, cfg, dist), images * dist.world_size)
    state["step"] += 1
    state["positions"][stage] = stream.position
    run.pending.append(PendingLog(state["step"], stage, state["stage_step"], logs))
    run.interval_steps += 1
    run.interval_images += images


def report_step(run: Run, stage: str, total: int, progress: Progress) -> None:
    """Progress line every step; every --log-every steps and at the stage end, the read of the pending values (the
    divergence check) and their log.jsonl / TensorBoard scalars; and (rank 0, generator stages) a sample grid every
    --sample-every steps and at the stage end. Step time and throughput are averages over the steps since the last
    log line, measured after the read (on a GPU the first moment their work is known to be done), without the time
    of sample grids and checkpoint writes."""
    cfg, dist, state = run.cfg, run.dist, run.state
    end = state["stage_step"] == total
    if state["stage_step"] % cfg.log_every == 0 or end:
        logs = dict(read_logs(run).values)  # this step's values: it is pending, since nothing read after it
        dt = time.perf_counter() - run.interval_start
        optimiser = run.optimisers["clebs" if stage == "clebs" else "generator"]
        logs.update(step_time=dt / max(run.interval_steps, 1),
                    images_per_s=run.interval_images * dist.world_size / max(dt, 1e-9),
                    lr=optimiser.param_groups[0]["lr"])  # fmt: skip
        run.logger.scalars(state["step"], stage, logs)
        run.shown_logs = {"loss": logs.get("loss", logs.get("infonce")), "img/s": round(logs["images_per_s"], 1)}
        run.interval_start, run.interval_steps, run.interval_images = time.perf_counter(), 0, 0
    progress.update(state["stage_step"], run.shown_logs)
    if stage != "clebs" and dist.is_main and (state["stage_step"] % cfg.sample_every == 0 or end):
        t0 = time.perf_counter()
        grid = sample_grid(run.shown, run.samples, dist.device)  # [3, H', W']: a row per sample, 5 columns
        save_png(grid, run.out / "samples" / f"{stage}_{state['stage_step']:06d}.png")
        save_png(grid, run.out / "samples" / "latest.png")
        run.logger.image(state["step"], f"{stage}/samples", grid)
        run.interval_start += time.perf_counter() - t0


def end_stage(run: Run, stage: str) -> None:
    """After a stage's last step: f_e takes the CLeBS weights and is frozen (f_I is discarded, paper Sec. 3.1)
    when the recipe pre-trains it, then a checkpoint."""
    if stage == "clebs" and run.cfg.expression_encoder == "clebs":
        run.model.lebs.load_state_dict(run.clebs.lebs.state_dict())
        run.model.freeze_expression_encoder()
    checkpoint(run)


# ----------------------------------------------------------------------------------------------- shutdown
def close_run(run: Run) -> None:
    run.logger.close()
    shutdown(run.dist)


def stop_early(run: Run) -> TrainResult:
    """``--stop-after``: a checkpoint, and no evaluation; ``--resume`` continues the run."""
    checkpoint(run)
    if run.dist.is_main:
        print(f"stopped after step {run.state['step']} (--stop-after); continue with --resume {run.out}")
    close_run(run)
    return run.result(None)


def save_on_interrupt(run: Run, exc: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM (:class:`Terminated`): a checkpoint of the current step, safe from a second signal."""
    with interrupts_ignored():
        if run.dist.is_main:
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            print(f"\n{what}: writing a checkpoint at step {run.state['step']} before exiting", file=sys.stderr)
        checkpoint(run)


def held_out_metrics(run: Run) -> dict | None:
    """Rank 0 (unless --eval-pairs 0) scores the shown weights on each source's held-out pairs and writes
    metrics.json (one block per source when there are several), with the memorisation of each clip folder's
    held-out outputs (``--memorisation-frames``); NaN or infinite values are written as null and listed under
    ``non_finite``."""
    cfg = run.cfg
    if not (run.dist.is_main and cfg.eval_pairs > 0):
        return None
    memo = None
    if cfg.memorisation_frames > 0 and any(name != "synthetic" for name in cfg.data):
        memo = Memorisation.build([(source_label(s.name), s.train) for s in run.sources], cfg.memorisation_frames)
    real = (lambda name: memo.hook(name) if memo is not None and name != "synthetic" else None)  # noqa: E731
    try:
        metrics = evaluate_sources(run.shown, [(s.name, s.test) for s in run.sources], run.lpips_model,
                                   run.dist.device, pairs=cfg.eval_pairs, batch_size=cfg.batch_size, seed=cfg.seed,
                                   on_batch_of=real)  # fmt: skip
    finally:
        if memo is not None:
            memo.close()
    for name, block in per_source(metrics):
        name = name or run.sources[0].name
        if memo is not None and name != "synthetic":
            block["memorisation"] = memo.result(name)
    metrics.update(step=run.state["step"], lpips_network=dataclasses.asdict(run.lpips_info),
                   weights="model_ema" if run.averaged is not None else "model")  # fmt: skip
    print(format_table(metrics))
    metrics, bad = runs.finite_metrics(metrics)
    if bad:
        metrics["non_finite"] = bad
        print(f"WARNING: metrics.json: {', '.join(bad)} came out NaN or infinite and are written as null",
              file=sys.stderr)  # fmt: skip
    atomic_write_json(run.out / "metrics.json", metrics)
    return metrics


# ----------------------------------------------------------------------------------------------- main
def main(cfg: TrainConfig) -> TrainResult:
    """Train the run ``cfg`` describes (or resumes) through its remaining stages, then score it on held-out data.

    Ctrl-C and SIGTERM write a checkpoint of the current step and re-raise; ``--stop-after`` returns after a
    checkpoint, without evaluation (``metrics`` None); a non-finite step raises :class:`runs.TrainingDiverged`.
    """
    run = start_run(cfg)
    restore_handlers = catch_sigterm()
    try:
        for stage in STAGES[STAGES.index(run.state["stage"]) :]:
            train_stage(run, stage)
            if stop_reached(run):
                return stop_early(run)
            end_stage(run, stage)
    except runs.TrainingDiverged:
        close_run(run)
        raise
    except KeyboardInterrupt as exc:
        try:
            save_on_interrupt(run, exc)  # raises TrainingDiverged instead when the pending values are not finite
        finally:
            close_run(run)
        raise
    finally:
        restore_handlers()
    metrics = held_out_metrics(run)
    run.logger.close()
    if run.dist.is_main:
        print(f"outputs: {run.out.resolve()} (checkpoints/, samples/latest.png, log.jsonl, tensorboard/, metrics.json)")
    shutdown(run.dist)
    return run.result(metrics)


def train_generator_step(net_g, net_d, disc, opt_g, opt_d, batch, lpips_model, cfg: TrainConfig, stage_step: int,
                         autocast, face_loss: FaceLoss | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """One reconstruction step, plus (stage 2) the adversarial term and one discriminator step with lazy R1.
    ``face_loss`` joins L_rec on every ``cfg.face_loss_every``-th step.

    Returns the logged values as detached 0-d tensors on the device. Nothing in the step reads a tensor on the host
    (``tests/training/test_fake_step.py`` runs it under ``FakeTensorMode``, where any such read raises)."""
    source, driving, beta, camera = batch["source"], batch["driving"], batch["beta"], batch["camera"]
    face_loss = face_loss if (stage_step + 1) % cfg.face_loss_every == 0 else None
    with autocast:
        out = net_g(source, beta, camera)
        loss, logs = reconstruction_loss(out.image, out.image_raw, driving, lpips_model, cfg.lpips_weight,
                                         with_lpips=(stage_step + 1) % cfg.lpips_every == 0,
                                         face_loss=face_loss)  # fmt: skip
        if net_d is not None:  # D is frozen here and called without its DDP wrapper: only G's gradients sync
            for p in disc.parameters():
                p.requires_grad_(False)
            g_adv = generator_adversarial_loss(disc(out.image, out.image_raw, camera))
            loss = loss + cfg.adv_weight * g_adv
            logs["g_adv"] = g_adv.detach()
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    logs["loss"] = loss.detach()
    if net_d is None:
        return logs
    for p in disc.parameters():
        p.requires_grad_(True)
    real_raw = resize_to(driving, out.image_raw.shape[-1])
    r1_step = stage_step % cfg.r1_every == 0
    real, real_raw = driving.detach().requires_grad_(r1_step), real_raw.detach().requires_grad_(r1_step)
    with autocast:
        real_logits = net_d(real, real_raw, camera)
        fake_logits = net_d(out.image.detach(), out.image_raw.detach(), camera)
        d_loss = discriminator_loss(real_logits, fake_logits)
    if r1_step:
        r1 = r1_penalty(real_logits.float(), [real, real_raw])
        d_loss = d_loss + cfg.r1_gamma / 2 * r1 * cfg.r1_every
        logs["r1"] = r1.detach()
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    logs["d_loss"] = d_loss.detach()
    return logs
