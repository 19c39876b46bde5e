"""Training configuration: a frozen dataclass and ``TRAIN_PRESETS`` (``paper``, ``tiny``).

The paper's recipe (docs/design.md, "Training"; paper supp. 6.3 and 6.4): CLeBS pre-training 60k steps
(Adam 1e-4, 1 positive + 32 negatives, tau 0.07), reconstruction 300k steps (Adam 1e-4, batch 8),
then 10k steps with ``0.01 * L_adv`` (discriminator Adam 1e-5, R1). The ``tiny`` preset keeps the
recipe's structure but shrinks everything so that the whole run takes minutes on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from export3d.data.expressions import EXPRESSION_SOURCES
from export3d.model.config import CONDITIONINGS, IMPLS, PRESETS

STAGES = ("clebs", "reconstruction", "adversarial")
FACE_CROPS = ("target", "whole")  # the face losses' crop (export3d.training.face_losses)
# Expression encoding (paper Table 3): "clebs" = contrastively pre-trained, then frozen f_e (the paper's recipe);
# "lebs" = f_e trained end to end with the generator (no CLeBS stage, never frozen); "direct" = beta itself
# conditions the generator (ModelConfig.expression_encoder="direct", no CLeBS stage).
EXPRESSION_ENCODERS = ("clebs", "lebs", "direct")


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "tiny"  # model preset (export3d.model.config.PRESETS)
    # Training data: one or more sources, each "synthetic" or a folder in the on-disk clip format (a single string is
    # taken as one source). Several sources are mixed per batch (every batch comes from one source) by data_weights
    # (None: equal), or by pretrain_weights during the first pretrain_steps steps (all stages counted): e.g.
    # data=("synthetic", "clips"), pretrain_weights=(1, 0), pretrain_steps=2000 pre-trains on synthetic heads alone.
    # The sources' expression vectors must agree (real clips: 52 blendshapes; synthetic: expression_source landmarker).
    data: tuple[str, ...] = ("synthetic",)
    data_weights: tuple[float, ...] | None = None
    pretrain_steps: int = 0
    pretrain_weights: tuple[float, ...] | None = None
    # Appearance augmentation of the real (clip-folder) sources, one draw per pair (export3d.data.augment): flip
    # probability (camera and blendshapes mirrored), hue rotation (+- degrees), colour (saturation and channel gains
    # within 1 +- x) and scale (zoom within [1 / (1 + x), 1 + x], focal length scaled with it). 0: off.
    aug_flip: float = 0.0
    aug_hue: float = 0.0
    aug_colour: float = 0.0
    aug_scale: float = 0.0
    out: str = "runs/tiny"  # output folder (config.json, checkpoints/, samples/, logs, metrics.json)
    # stage lengths, in optimiser steps
    clebs_steps: int = 150  # stage 0 (paper: 60k)
    rec_steps: int = 1750  # stage 1 (paper: 300k); sized so that `make train` stays under 10 min on the 2-core CPU
    adv_steps: int = 20  # stage 2 (paper: 10k)
    # batches (per process: with torchrun the global batch is batch_size * world size)
    batch_size: int = 8  # reconstruction / adversarial pairs per step (paper: 8)
    clebs_clips: int = 4  # clips per CLeBS step
    clebs_negatives: int = 8  # K negatives per anchor, from the same clip (paper: 32)
    # optimisers
    lr: float = 1e-3  # generator Adam (paper: 1e-4, kept by the paper preset; tiny trains few steps, so 10x)
    clebs_lr: float = 1e-3  # CLeBS Adam (paper: 1e-4; likewise 10x for tiny)
    d_lr: float = 1e-5  # discriminator Adam (paper: 1e-5)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas (paper: not stated; PyTorch's default)
    adv_weight: float = 0.01  # weight of L_adv in stage 2 (paper: 0.01)
    lpips_weight: float = 1.0  # weight of each LPIPS term in L_rec (paper: 1)
    # Lazy LPIPS: the two LPIPS terms join L_rec on every N-th generator step only (paper: every step, N = 1).
    # On the tiny preset an LPIPS step costs ~0.45 s more than a plain ~0.23 s CPU step, so tiny applies it every
    # 32nd step (every 8th, 16th or never gave the same PSNR per step; the time saved buys more steps).
    lpips_every: int = 32
    r1_gamma: float = 1.0  # R1 penalty weight (EG3D FFHQ uses 1)
    r1_every: int = 16  # lazy R1: applied every N discriminator steps, scaled by N (StyleGAN2)
    # Face losses (export3d.training.face_losses; docs/training.md, "Face losses"): MediaPipe's landmark CNN (the
    # PyTorch port, frozen) on the output and the target, both cut out with the target's MediaPipe crop. Weights of
    # the landmark distance (eyes, lips, face oval; in units of the crop side), the blendshape L1 and the feature
    # matching on the CNN's activations; 0 = off (all three off: the network is not even loaded). They join L_rec on
    # every N-th generator step (face_loss_every), on the final image and, with face_loss_raw, on the raw one too.
    # face_crop: "target" (MediaPipe's detector crop of the target frame) or "whole" (the whole image).
    face_landmark_weight: float = 0.0
    face_blendshape_weight: float = 0.0
    face_feature_weight: float = 0.0
    face_loss_every: int = 1
    face_loss_raw: bool = False
    face_crop: str = "target"
    # Weight EMA of the model (EG3D's G_ema; export3d.training.weight_ema), used for samples and metrics.json.
    # Half-life in images, capped at ema_rampup * images seen (EG3D: batch * 10 / 32 kimg = 2.5k images at batch 8;
    # ramp-up 0.05, its training loop's default). Tiny: 200 images = 25 steps, ramp-up 0.5 (measured: +0.16 to +0.45 dB
    # held-out PSNR over the trained weights at 800-1600 steps; half-lives of 50 / 100 / 200 steps gave less).
    # 0: no EMA.
    ema_half_life_images: float = 200.0
    ema_rampup: float | None = 0.5
    # synthetic data size (ignored for folders)
    train_identities: int = 32  # tiny: 32 x 2 x 16 = 1024 frames, ray-cast once and cached (~30 s on 2 cores)
    test_identities: int = 16
    clips_per_identity: int = 2
    frames_per_clip: int = 16
    fps: float = 5.0  # synthetic clip frame rate: 16 frames span 3.2 s of motion (at 25 fps, 0.64 s barely moves)
    # synthetic expression vector: "beta" (64-d, constructed from the true expression and the identity) or
    # "landmarker" (the 52 MediaPipe blendshapes read from each rendered frame, as for real videos; cached on disk)
    expression_source: str = "beta"
    cache_frames: int = 4096  # keep up to this many rendered training frames in memory (0: render every time)
    # evaluation at the end of training
    eval_pairs: int = 64  # same-identity pairs and cross-identity triples from the test identities
    # memorisation (export3d.evaluation.memorisation): frames per training identity whose dlib face descriptors are
    # averaged; metrics.json then says which share of held-out outputs is nearer the source than any training
    # identity (needs the faces extra; 0: not measured)
    memorisation_frames: int = 4
    # run
    device: str | None = None  # None: CUDA when available, else CPU
    impl: str = "fast"  # model impl: "reference" | "fast"
    compile: bool = False  # torch.compile the model body
    amp: bool = False  # bf16 autocast (CUDA only)
    seed: int = 0
    resume: str | None = None  # a run folder (or checkpoint) to continue from
    vgg_weights: str | None = None  # torchvision VGG16 weights for LPIPS (else the torch hub cache, else random)
    workers: int = 0  # DataLoader worker processes
    threads: int | None = None  # torch intra-op threads (None: PyTorch's default, one per core)
    log_every: int = 10
    sample_every: int = 100
    ckpt_every: int = 100
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume checks on CPU)
    stop_after: int | None = None  # stop (with a checkpoint, before evaluation) once this many steps are done
    expression_encoder: str = "clebs"  # "clebs" | "lebs" | "direct" (EXPRESSION_ENCODERS; Table 3 ablation)
    n_basis: int | None = None  # LeBS basis size n (None: the model preset's, 10; Table 3 varies 5 / 10 / 25)
    conditioning: str = "eadaln"  # "eadaln" | "cross_attention" (ModelConfig.conditioning; Table 4 ablation)

    def __post_init__(self) -> None:
        for name in ("data", "data_weights", "pretrain_weights"):  # a single source as a string; JSON lists as tuples
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                object.__setattr__(self, name, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._check_mixing()
        checks = [
            (self.preset in PRESETS, f"--preset: unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}"),
            (self.impl in IMPLS, f"--impl must be one of {IMPLS}, got {self.impl!r}"),
            (self.expression_source in EXPRESSION_SOURCES,
             f"--expression-source must be one of {EXPRESSION_SOURCES}, got {self.expression_source!r}"),
            (self.expression_encoder in EXPRESSION_ENCODERS,
             f"--expression-encoder must be one of {EXPRESSION_ENCODERS}, got {self.expression_encoder!r}"),
            (self.conditioning in CONDITIONINGS,
             f"--conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}"),
            (self.n_basis is None or self.n_basis >= 1, f"--n-basis must be >= 1, got {self.n_basis}"),
            (min(self.clebs_steps, self.rec_steps, self.adv_steps) >= 0, "step counts must be >= 0"),
            (self.batch_size >= 1 and self.clebs_clips >= 1, "--batch-size and --clebs-clips must be >= 1"),
            (self.clebs_negatives >= 1, "--clebs-negatives must be >= 1"),
            (self.frames_per_clip > self.clebs_negatives,
             f"frames_per_clip ({self.frames_per_clip}) must exceed clebs_negatives ({self.clebs_negatives})"),
            (min(self.lr, self.clebs_lr, self.d_lr) > 0, "learning rates must be > 0"),
            (min(self.log_every, self.sample_every, self.ckpt_every, self.r1_every, self.lpips_every) >= 1,
             "intervals (--log-every, --sample-every, --ckpt-every, --lpips-every, r1_every) must be >= 1"),
            (min(self.face_landmark_weight, self.face_blendshape_weight, self.face_feature_weight) >= 0,
             "--face-landmark-weight, --face-blendshape-weight and --face-feature-weight must be >= 0 (0: off)"),
            (self.face_loss_every >= 1, f"--face-loss-every must be >= 1, got {self.face_loss_every}"),
            (self.face_crop in FACE_CROPS, f"--face-crop must be one of {FACE_CROPS}, got {self.face_crop!r}"),
            (self.ema_half_life_images >= 0 and (self.ema_rampup is None or self.ema_rampup > 0),
             "--ema-half-life-images must be >= 0 (0: no weight EMA) and --ema-rampup > 0"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            (self.stop_after is None or self.stop_after >= 1, f"--stop-after must be >= 1, got {self.stop_after}"),
            (min(self.eval_pairs, self.workers, self.cache_frames, self.memorisation_frames) >= 0,
             "--eval-pairs, --workers, --cache-frames and --memorisation-frames must be >= 0"),
            (0 <= self.aug_flip <= 1, f"--aug-flip is a probability in [0, 1], got {self.aug_flip}"),
            (0 <= self.aug_hue <= 180, f"--aug-hue is in degrees, within [0, 180], got {self.aug_hue}"),
            (0 <= self.aug_colour < 1, f"--aug-colour must be in [0, 1), got {self.aug_colour}"),
            (0 <= self.aug_scale < 1, f"--aug-scale must be in [0, 1), got {self.aug_scale}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def _check_mixing(self) -> None:
        if not self.data or not all(isinstance(d, str) and d for d in self.data):
            raise ValueError(f"--data: give one or more sources ('synthetic' or a folder), got {self.data!r}")
        if len(set(self.data)) != len(self.data):
            raise ValueError(f"--data: a source is given twice: {list(self.data)}")
        if self.pretrain_steps < 0:
            raise ValueError(f"--pretrain-steps must be >= 0, got {self.pretrain_steps}")
        if (self.pretrain_weights is None) != (self.pretrain_steps == 0):
            raise ValueError("--pretrain-weights and --pretrain-steps go together: the first --pretrain-steps N steps "
                             "draw their batches by --pretrain-weights")
        for flag, weights in (("--data-weights", self.data_weights), ("--pretrain-weights", self.pretrain_weights)):
            if weights is None:
                continue
            if len(weights) != len(self.data):
                raise ValueError(f"{flag}: {len(weights)} weight(s) for {len(self.data)} --data source(s) "
                                 f"({', '.join(self.data)}); give one weight per source, in the order of --data")
            if min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"{flag}: weights must be >= 0 with a positive sum, got {list(weights)}")

    def weights_at(self, step: int) -> tuple[float, ...]:
        """The mixture weights of the sources for global step ``step`` (0-based), normalised to sum to 1."""
        weights = self.data_weights or (1.0,) * len(self.data)
        if step < self.pretrain_steps and self.pretrain_weights is not None:
            weights = self.pretrain_weights
        total = float(sum(weights))
        return tuple(w / total for w in weights)

    def steps(self, stage: str) -> int:
        if stage == "clebs" and self.expression_encoder != "clebs":
            return 0  # only the paper's recipe pre-trains f_e contrastively
        return {"clebs": self.clebs_steps, "reconstruction": self.rec_steps, "adversarial": self.adv_steps}[stage]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(),
    "paper": TrainConfig(
        preset="paper",
        out="runs/paper",
        lr=1e-4,
        clebs_lr=1e-4,
        clebs_steps=60_000,
        rec_steps=300_000,
        adv_steps=10_000,
        clebs_clips=8,
        clebs_negatives=32,
        lpips_every=1,
        ema_half_life_images=2500.0,
        ema_rampup=0.05,
        train_identities=2000,
        test_identities=50,
        clips_per_identity=3,
        frames_per_clip=100,
        cache_frames=0,  # 600k frames at 256 px do not fit in memory; use DataLoader workers instead
        eval_pairs=500,
        log_every=50,
        sample_every=2000,
        ckpt_every=5000,
        workers=4,
    ),
}


def model_overrides(cfg: TrainConfig) -> dict:
    """The :func:`export3d.model.config.preset` overrides that a training config implies."""
    overrides = {"impl": cfg.impl, "compile": cfg.compile, "conditioning": cfg.conditioning,
                 "expression_encoder": "direct" if cfg.expression_encoder == "direct" else "lebs"}  # fmt: skip
    if cfg.n_basis is not None:
        overrides["lebs"] = {"n_basis": cfg.n_basis}
    return overrides
