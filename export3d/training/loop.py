"""The training loop behind ``python -m export3d.train`` (the ``tiny`` preset on synthetic data by default).

Three stages (paper Sec. 3.4, DESIGN.md section 6): CLeBS contrastive pre-training of the expression
encoder (then frozen), reconstruction (MSE + LPIPS on raw and final images), and reconstruction plus
``0.01 * L_adv`` with the camera-conditioned discriminator. Multi-GPU: ``torchrun --nproc_per_node=N
-m export3d.train ...`` (DistributedDataParallel; ``--batch-size`` is per process; only rank 0 writes).

Outputs in ``--out``: ``config.json``, ``checkpoints/`` (safetensors + training state, atomic),
``samples/*.png`` (source | driving | raw | final | target), ``log.jsonl``, ``tensorboard/`` and, at
the end, ``metrics.json`` (held-out same- and cross-identity PSNR / SSIM / LPIPS vs copy-the-source).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from export3d.data import ContrastiveGroups, ReconstructionPairs
from export3d.evaluation.metrics import build_lpips
from export3d.evaluation.scoring import cross_identity_batches, evaluate, format_table, same_identity_batches
from export3d.model import Export3D
from export3d.model.clebs import CLeBS
from export3d.model.config import preset
from export3d.model.discriminator import Discriminator
from export3d.training import runs
from export3d.training.batches import BatchStream, build_sources
from export3d.training.config import STAGES, TrainConfig, model_overrides
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


# ----------------------------------------------------------------------------------------------- main
def main(cfg: TrainConfig) -> TrainResult:
    dist = init_distributed(cfg.device)
    device = dist.device
    if cfg.amp and device.type != "cuda":
        raise ValueError(f"--amp runs bf16 autocast on CUDA; this run is on {device}")
    out = Path(cfg.out)
    run = resume_from = None
    if cfg.resume is not None:  # every check before anything is written
        run = runs.run_folder(cfg.resume)
        if out.resolve() == Path(cfg.resume).resolve():
            out = run  # --resume RUN/checkpoints/step_X continues writing into RUN
        runs.check_resume(cfg, run, runs.saved_settings(run))
        resume_from = cfg.resume if runs.has_checkpoint(run) else None
    if run is None or out.resolve() != run.resolve():
        runs.check_new_output(out)
    torch.manual_seed(cfg.seed * 1000 + dist.rank)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)

    # data, model, losses, optimisers
    model_cfg = preset(cfg.preset, **model_overrides(cfg))
    train_src, test_src = build_sources(cfg, model_cfg.image_size)
    if train_src.expression_dim != model_cfg.expression_dim:  # E belongs to the data: 52 for MediaPipe blendshapes
        model_cfg = dataclasses.replace(model_cfg, lebs=dataclasses.replace(model_cfg.lebs,
                                                                            expression_dim=train_src.expression_dim))
    pairs = ReconstructionPairs(train_src, seed=cfg.seed)
    groups = ContrastiveGroups(train_src, k=cfg.clebs_negatives, groups_per_clip=8, seed=cfg.seed)
    model = Export3D(model_cfg).to(device)
    clebs = CLeBS(model_cfg.lebs).to(device)
    disc = Discriminator(model_cfg).to(device)
    lpips_model, lpips_info = build_lpips(cfg.vgg_weights)
    lpips_model.to(device)
    adam = dict(betas=cfg.betas)
    opt_c = torch.optim.Adam(clebs.parameters(), lr=cfg.clebs_lr, **adam)
    # f_e joins the generator optimiser only when it is trained end to end ("lebs"; "direct" has no parameters)
    trained_fe = cfg.expression_encoder != "clebs"
    opt_g = torch.optim.Adam([p for n, p in model.named_parameters() if trained_fe or not n.startswith("lebs.")],
                             lr=cfg.lr, **adam)  # fmt: skip
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, **adam)
    modules = {"model": model, "clebs": clebs, "discriminator": disc}
    optimisers = {"clebs": opt_c, "generator": opt_g, "discriminator": opt_d}
    state = {"stage": STAGES[0], "stage_step": 0, "step": 0, "positions": {}}

    if resume_from is not None:
        weights, saved, folder = load_checkpoint(resume_from)
        for name, module in modules.items():
            module.load_state_dict(weights[name])
        for name, opt in optimisers.items():
            opt.load_state_dict(saved["optimisers"][name])
        state = {k: saved[k] for k in state}
        restore_rng(saved["rng"], dist)
        if dist.is_main:
            print(f"resumed from {folder} at step {state['step']} ({state['stage']} step {state['stage_step']})")
    elif cfg.resume is not None and dist.is_main:
        print(f"{run} has no checkpoint yet: starting it again from step 0 with its saved settings")
    if dist.distributed:
        torch.distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
    if dist.is_main:  # the run folder is known to be valid (or new) and everything has been built: write
        if cfg.resume is not None and resume_from is None and out.resolve() == run.resolve():
            runs.restart_empty_run(out)
        runs.truncate_log(out, state["step"])
        runs.write_config(out, cfg)
    if STAGES.index(state["stage"]) > 0 and cfg.expression_encoder == "clebs":
        model.freeze_expression_encoder()
    ema = WeightEMA(model, cfg.ema_half_life_images, cfg.ema_rampup) if cfg.ema_half_life_images > 0 else None
    if ema is not None and resume_from is not None:
        if "model_ema" in weights:
            ema.module.load_state_dict(weights["model_ema"])
        elif dist.is_main:
            print(f"note: {folder} holds no weight EMA (model_ema); it restarts from the trained weights")
    averaged = ema.module if ema is not None else None
    saved_modules = {**modules, "model_ema": averaged} if averaged is not None else modules
    shown = averaged if averaged is not None else model  # what samples and metrics.json use

    # TensorBoard drops the events at and after the resumed step, as log.jsonl is cut back to it
    logger = RunLogger(out, enabled=dist.is_main, purge_step=state["step"] if resume_from is not None else None)
    samples = same_identity_batches(test_src, 4, 4, seed=cfg.seed) + cross_identity_batches(test_src, 4, 4, cfg.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp else contextlib.nullcontext()

    last_saved = [folder if resume_from is not None else None]

    def checkpoint() -> None:
        for name, module in saved_modules.items():  # never save a diverged state over the last finite one
            bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
            if bad:
                diverged(f"{name}.{bad[0]} holds NaN or Inf values", 0)
        payload = {**state, "optimisers": {k: o.state_dict() for k, o in optimisers.items()}, "rng": gather_rng(dist),
                   "config": cfg.to_dict(), "lpips": dataclasses.asdict(lpips_info)}  # fmt: skip
        if dist.is_main:
            last_saved[0] = save_checkpoint(out / "checkpoints", state["step"], saved_modules, payload,
                                            meta={"model_config": dataclasses.asdict(model_cfg),
                                                  "train_config": cfg.to_dict()})  # fmt: skip

    def diverged(what: str, ahead: int) -> None:
        """``ahead``: 1 when the step being taken (not yet counted in ``state``) diverged."""
        kept = f"the last finite checkpoint is {last_saved[0]}" if last_saved[0] else "no checkpoint was written"
        raise runs.TrainingDiverged(f"training diverged in step {state['step'] + ahead} ({state['stage']} step "
                                    f"{state['stage_step'] + ahead}): {what}; it was not saved, {kept}. "
                                    "Lower --lr / --adv-weight or check the data.")  # fmt: skip

    if dist.is_main:
        print(f"export3d.train: preset {cfg.preset}, {cfg.data} data, device {device}, {dist.world_size} process(es); "
              f"{lpips_info.describe()}", flush=True)  # fmt: skip

    # the three stages; Ctrl-C and SIGTERM both write a checkpoint before exiting
    restore_handlers = catch_sigterm()
    try:
        for stage in STAGES[STAGES.index(state["stage"]) :]:
            if state["stage"] != stage:
                state.update(stage=stage, stage_step=0)
            total = cfg.steps(stage)
            stream = BatchStream(groups if stage == "clebs" else pairs, cfg.clebs_clips if stage == "clebs"
                                 else cfg.batch_size, cfg.seed + STAGES.index(stage), dist, cfg.workers,
                                 state["positions"].get(stage, (0, 0)))  # fmt: skip
            net_c, net_g, net_d = wrap(ClipObjective(clebs), dist), None, None
            if stage != "clebs":
                net_g, net_d = wrap(model, dist), wrap(disc, dist) if stage == "adversarial" else None
                if ema is not None and generator_images(state, cfg, dist) == 0:
                    ema.reset(model)  # the average starts from the weights DDP has just made equal on every rank
            progress = Progress(stage, state["stage_step"], total, enabled=dist.is_main, log_every=cfg.log_every)
            while state["stage_step"] < total:
                t0 = time.perf_counter()
                batch = {k: v.to(device) for k, v in stream.next().items()}
                if stage == "clebs":
                    loss = net_c(batch["images"], batch["beta"])
                    opt_c.zero_grad(set_to_none=True)
                    loss.backward()
                    opt_c.step()
                    logs = {"infonce": loss.item()}
                    images = batch["images"].shape[0] * batch["images"].shape[1]
                else:
                    logs = train_generator_step(net_g, net_d, disc, opt_g, opt_d, batch, lpips_model, cfg,
                                                state["stage_step"], autocast)  # fmt: skip
                    average_buffers(model, dist)
                    images = batch["source"].shape[0]
                bad = runs.non_finite(logs)
                if bad:
                    diverged(f"{bad[0]} = {logs[bad[0]]} (logged values: {', '.join(bad)} non-finite)", 1)
                state["stage_step"] += 1
                if ema is not None and stage != "clebs":
                    ema.update(model, generator_images(state, cfg, dist), images * dist.world_size)
                state["step"] += 1
                state["positions"][stage] = stream.position
                dt = time.perf_counter() - t0
                logs.update(step_time=dt, images_per_s=images * dist.world_size / dt, lr=optimisers[
                    "clebs" if stage == "clebs" else "generator"].param_groups[0]["lr"])  # fmt: skip
                progress.update(state["stage_step"], {"loss": logs.get("loss", logs.get("infonce")),
                                                      "img/s": round(logs["images_per_s"], 1)})  # fmt: skip
                if state["stage_step"] % cfg.log_every == 0 or state["stage_step"] == total:
                    logger.scalars(state["step"], stage, logs)
                if stage != "clebs" and dist.is_main and (state["stage_step"] % cfg.sample_every == 0
                                                          or state["stage_step"] == total):  # fmt: skip
                    grid = sample_grid(shown, samples, device)
                    save_png(grid, out / "samples" / f"{stage}_{state['stage_step']:06d}.png")
                    save_png(grid, out / "samples" / "latest.png")
                    logger.image(state["step"], f"{stage}/samples", grid)
                stop = cfg.stop_after is not None and state["step"] >= cfg.stop_after
                if state["stage_step"] % cfg.ckpt_every == 0 and state["stage_step"] < total and not stop:
                    checkpoint()  # a stage's last step and a --stop-after step are saved once, after the loop
                if stop:
                    break
            progress.close()
            if cfg.stop_after is not None and state["step"] >= cfg.stop_after:
                checkpoint()
                if dist.is_main:
                    print(f"stopped after step {state['step']} (--stop-after); continue with --resume {out}")
                logger.close()
                shutdown(dist)
                return TrainResult(out, None, model, disc, averaged)
            if stage == "clebs" and cfg.expression_encoder == "clebs":  # f_e kept and frozen, f_I discarded (Sec. 3.1)
                model.lebs.load_state_dict(clebs.lebs.state_dict())
                model.freeze_expression_encoder()
            checkpoint()
    except runs.TrainingDiverged:
        progress.close()
        logger.close()
        shutdown(dist)
        raise
    except KeyboardInterrupt as exc:
        with interrupts_ignored():
            if dist.is_main:
                what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
                print(f"\n{what}: writing a checkpoint at step {state['step']} before exiting", file=sys.stderr)
            checkpoint()
        logger.close()
        shutdown(dist)
        raise
    finally:
        restore_handlers()

    # held-out evaluation
    metrics = None
    if dist.is_main and cfg.eval_pairs > 0:
        metrics = evaluate(shown, test_src, lpips_model, device, pairs=cfg.eval_pairs, batch_size=cfg.batch_size,
                           seed=cfg.seed)  # fmt: skip
        metrics.update(step=state["step"], lpips_network=dataclasses.asdict(lpips_info),
                       weights="model_ema" if averaged is not None else "model")  # fmt: skip
        print(format_table(metrics))
        metrics, bad = runs.finite_metrics(metrics)
        if bad:
            metrics["non_finite"] = bad
            print(f"WARNING: metrics.json: {', '.join(bad)} came out NaN or infinite and are written as null",
                  file=sys.stderr)  # fmt: skip
        atomic_write_json(out / "metrics.json", metrics)
    logger.close()
    if dist.is_main:
        print(f"outputs: {out.resolve()} (checkpoints/, samples/latest.png, log.jsonl, tensorboard/, metrics.json)")
    shutdown(dist)
    return TrainResult(out, metrics, model, disc, averaged)


def train_generator_step(net_g, net_d, disc, opt_g, opt_d, batch, lpips_model, cfg: TrainConfig, stage_step: int,
                         autocast) -> dict[str, float]:  # fmt: skip
    """One reconstruction step, plus (stage 2) the adversarial term and one discriminator step with lazy R1."""
    source, driving, beta, camera = batch["source"], batch["driving"], batch["beta"], batch["camera"]
    with autocast:
        out = net_g(source, beta, camera)
        loss, logs = reconstruction_loss(out.image, out.image_raw, driving, lpips_model, cfg.lpips_weight,
                                         with_lpips=(stage_step + 1) % cfg.lpips_every == 0)  # fmt: skip
        if net_d is not None:  # D is frozen here and called without its DDP wrapper: only G's gradients sync
            for p in disc.parameters():
                p.requires_grad_(False)
            g_adv = generator_adversarial_loss(disc(out.image, out.image_raw, camera))
            loss = loss + cfg.adv_weight * g_adv
            logs["g_adv"] = g_adv.item()
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    logs["loss"] = loss.item()
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
        logs["r1"] = r1.item()
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    logs["d_loss"] = d_loss.item()
    return logs
