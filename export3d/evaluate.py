"""Evaluation: ``python -m export3d.evaluate --checkpoint RUN`` (paper Table 1 layout) and ``--ablation`` (Table 3).

For a checkpoint: the model is rebuilt from the checkpoint's ``meta.json`` ("model_config"), the test
data from its "train_config" (the synthetic generator's seed and sizes) unless ``--data`` says
otherwise. Reported: same-identity PSNR / SSIM / LPIPS against the driving frame; cross-identity PSNR /
SSIM / LPIPS against the rendered ground truth (synthetic data only); the copy-the-source baseline;
the identity leak of the expression code (held-out accuracy of a linear identity probe on beta and
on beta' = encode_expression(beta), with chance level); and the paper's AKD / CSIM / AED / APD when
face models are supplied (``--landmarks-weights``, ``--identity-weights``, ``--3dmm-weights``).
Without them those columns read "not run: <reason>", never a number.

Extractor contract (any callable). A weights file is loaded as a ``torch.export`` program when it ends
in ``.pt2`` (``torch.export.save``; export the network together with its pre/post-processing), else as
a TorchScript module; or ``--extractor-plugin MODULE`` builds it: its ``build_landmarks(path)`` /
``build_identity(path)`` / ``build_3dmm(path)`` return the callable. Input: images ``[B, 3, H, W]`` in
[-1, 1] at the model's resolution (the extractor resizes/normalises for its network). Output:

- landmarks: ``[B, 68, 2]`` pixel coordinates (x, y) in the input image (face-alignment's FAN);
  AKD = mean over points of the Euclidean distance to the driving frame's points, in pixels.
- identity: ``[B, D]`` embeddings (ArcFace); CSIM = cosine similarity of source and generated image.
- 3dmm: ``[B, 70]`` = 64 expression + 6 pose coefficients, or a tuple (``[B, 64]``, ``[B, 6]``)
  (Deep3DFaceRecon); AED / APD = mean absolute difference to the driving frame's.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from export3d.checkpoint import CheckpointError, atomic_write_json, load_checkpoint
from export3d.config import PAPER, PRESETS, ModelConfig
from export3d.data import ClipFolder, SyntheticClips, SyntheticConfig
from export3d.distributed import resolve_device
from export3d.evaluation import evaluate
from export3d.metrics import build_lpips
from export3d.model import Export3D
from export3d.probe import PROBES, identity_probe, split_rows

EXTRACTORS = {"landmarks": ("AKD",), "identity": ("CSIM",), "3dmm": ("AED", "APD")}
EXTRACTOR_FLAGS = {"landmarks": "--landmarks-weights", "identity": "--identity-weights", "3dmm": "--3dmm-weights"}
COLUMNS = {"same_identity": ("PSNR", "SSIM", "LPIPS", "AKD", "CSIM", "AED", "APD"),
           "cross_identity": ("PSNR", "SSIM", "LPIPS", "CSIM", "AED", "APD")}  # fmt: skip
HIGHER_IS_BETTER = {"PSNR", "SSIM", "CSIM"}


# ----------------------------------------------------------------------------------------------- checkpoints
def model_config_from_meta(meta: dict, where: str) -> ModelConfig:
    """Rebuild the ``ModelConfig`` stored in a checkpoint's meta.json (lists back to tuples; fields the
    checkpoint predates take their defaults)."""
    raw = meta.get("model_config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint: {where}/meta.json has no 'model_config' (not written by export3d.train?)")
    base = PRESETS.get(raw.get("name"), PAPER)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise CheckpointError(f"checkpoint: {where}/meta.json model_config has unknown fields {unknown}")
    kwargs = {}
    try:
        for key, value in raw.items():
            default = getattr(base, key)
            if dataclasses.is_dataclass(default):
                value = dataclasses.replace(default, **{k: tuple(v) if isinstance(v, list) else v
                                                        for k, v in value.items()})  # fmt: skip
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return ModelConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {where}/meta.json model_config is invalid ({exc})") from exc


def load_model(path: str | Path, device: torch.device | str = "cpu", preset: str | None = None,
               image_size: int | None = None, use_ema: bool = True) -> tuple[Export3D, dict, Path]:  # fmt: skip
    """``(model in eval mode, meta, checkpoint folder)``; ``preset`` / ``image_size`` are what the caller expects.

    The weight EMA (``model_ema.*`` tensors, EG3D's G_ema) is loaded when the checkpoint has it and ``use_ema``;
    otherwise the trained weights (``model.*``). ``meta["weights"]`` says which.
    """
    weights, state, folder = load_checkpoint(path)
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
    cfg = dataclasses.replace(model_config_from_meta(meta, str(folder)), compile=False)
    if preset is not None and cfg.name != preset:
        raise CheckpointError(f"--checkpoint: {folder} holds a {cfg.name!r} model ({cfg.image_size} px), "
                              f"not the requested preset {preset!r}")  # fmt: skip
    if image_size is not None and cfg.image_size != image_size:
        raise CheckpointError(f"--checkpoint: {folder} holds a {cfg.image_size} px model ({cfg.name!r}), "
                              f"not the requested resolution {image_size}")  # fmt: skip
    if "model" not in weights:
        raise CheckpointError(f"checkpoint: {folder}/weights.safetensors has no 'model.' tensors")
    key = "model_ema" if use_ema and "model_ema" in weights else "model"
    model = Export3D(cfg)
    try:
        model.load_state_dict(weights[key])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint: {folder} weights do not fit its model_config ({exc})") from exc
    meta.setdefault("step", state.get("step"))
    meta["weights"] = key
    return model.to(device).eval(), meta, folder


def held_out_source(meta: dict, data: str | None, resolution: int):
    """The held-out split: the synthetic test identities of the run's settings, or a clip folder's test split."""
    train_cfg = meta.get("train_config") or {}
    data = data or train_cfg.get("data", "synthetic")
    if data == "synthetic":
        names = {f.name for f in dataclasses.fields(SyntheticConfig)} - {"resolution"}
        settings = {k: v for k, v in train_cfg.items() if k in names}  # seed, identities, clips, frames, fps
        return SyntheticClips(SyntheticConfig(resolution=resolution, **settings), "test")
    folder = Path(data)
    if not folder.is_dir():
        raise FileNotFoundError(f"--data: {folder} is not a folder (expected 'synthetic' or a clip-format folder)")
    source = ClipFolder(folder, split="test", resolution=resolution)
    if not source.clips:
        print(f"note: {folder}/manifest.json lists no 'test' clips; evaluating on all clips", file=sys.stderr)
        source = ClipFolder(folder, resolution=resolution)
    return source


# ----------------------------------------------------------------------------------------------- identity leak
def expression_table(source) -> dict[str, torch.Tensor]:
    """Every frame's beta ``[N, 64]`` with its identity / clip / frame ``[N]`` (no image is read or rendered)."""
    betas, ids, clips, frames = [], [], [], []
    for index, clip in enumerate(source.clips):
        if isinstance(source, SyntheticClips):
            beta = source.heads.beta([source.key(index, f) for f in range(clip.frames)])
        else:
            with np.load(source.root / clip.name / "params.npz") as params:
                beta = torch.from_numpy(params["expression"].astype(np.float32))
        betas.append(beta)
        ids.append(torch.full((clip.frames,), clip.identity))
        clips.append(torch.full((clip.frames,), index))
        frames.append(torch.arange(clip.frames))
    return {"beta": torch.cat(betas), "identity": torch.cat(ids), "clip": torch.cat(clips), "frame": torch.cat(frames)}


@torch.no_grad()
def identity_leak(model: Export3D, source, method: str = "ridge") -> dict:
    """Held-out identity-probe accuracy on beta and on beta' (fit on some clips/frames, test on others)."""
    table = expression_table(source)
    if len(torch.unique(table["identity"])) < 2:
        return {"not_run": "needs at least 2 test identities"}
    fit, test = split_rows(table["identity"], table["clip"], table["frame"])
    device = next(model.parameters()).device
    codes = {"beta": table["beta"], "beta_prime": model.encode_expression(table["beta"].to(device)).float().cpu()}
    y = table["identity"]
    out = {name: identity_probe(x[fit], y[fit], x[test], y[test], method).to_dict() for name, x in codes.items()}
    return out | {"chance": out["beta"]["chance"], "method": method,
                  "encoder": model.config.expression_encoder}  # fmt: skip


# ----------------------------------------------------------------------------------------------- extractors
Extractor = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def load_extractor(kind: str, path: str | Path, device: torch.device, plugin: str | None = None) -> Extractor:
    """A face-model extractor from a weights file (TorchScript, or ``plugin.build_<kind>(path)``)."""
    flag = EXTRACTOR_FLAGS[kind]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: no file at {path}")
    if plugin is not None:
        module = importlib.import_module(plugin)
        builder = getattr(module, f"build_{kind}", None)
        if builder is not None:
            return builder(path)
    kind_name = "torch.export program (.pt2)" if path.suffix == ".pt2" else "TorchScript module"
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module().to(device)
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # both loaders raise several types (RuntimeError, BadZipFile, ...) for a bad file
        raise ValueError(f"{flag}: {path} is not a {kind_name} ({str(exc).splitlines()[0]}); export the network "
                         "with its pre/post-processing via torch.export.save (.pt2), or pass --extractor-plugin "
                         f"MODULE defining build_{kind}(path) (contract: python -m export3d.evaluate --help)") from exc


class ExtractorMetrics:
    """Accumulates AKD / CSIM / AED / APD per setting and method through whichever extractors are present."""

    def __init__(self, extractors: dict[str, Extractor | None], reasons: dict[str, str]):
        self.extractors, self.reasons = extractors, reasons
        self.sums: dict[tuple[str, str, str], float] = {}
        self.counts: dict[tuple[str, str, str], int] = {}

    def _add(self, setting: str, method: str, metric: str, values: torch.Tensor) -> None:
        key = (setting, method, metric)
        self.sums[key] = self.sums.get(key, 0.0) + values.double().sum().item()
        self.counts[key] = self.counts.get(key, 0) + values.numel()

    def _run(self, kind: str, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.extractors[kind](images)
        B = images.shape[0]
        tensor = isinstance(out, torch.Tensor)
        ok = {"landmarks": tensor and out.dim() == 3 and out.shape[0] == B and out.shape[-1] == 2,
              "identity": tensor and out.dim() == 2 and out.shape[0] == B,
              "3dmm": (isinstance(out, tuple) and len(out) == 2) or (tensor and out.shape == (B, 70))}[kind]
        if not ok:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{EXTRACTOR_FLAGS[kind]}: the extractor returned {got}; see the contract in --help")
        if kind == "3dmm" and isinstance(out, torch.Tensor):
            out = (out[:, :64], out[:, 64:])
        return out

    @torch.no_grad()
    def update(self, setting: str, batch, predictions: dict[str, torch.Tensor]) -> None:
        src = predictions["copy_source"]
        driving = batch.driving.to(src.device)
        if self.extractors.get("landmarks") is not None and setting == "same_identity":
            ref = self._run("landmarks", driving).float()  # [B, 68, 2]
            for method, image in predictions.items():
                dist = (self._run("landmarks", image).float() - ref).norm(dim=-1).mean(1)  # [B]
                self._add(setting, method, "AKD", dist)
        if self.extractors.get("identity") is not None:
            ref = self._run("identity", src).float()  # [B, D]
            for method, image in predictions.items():
                emb = self._run("identity", image).float()  # [B, D]
                self._add(setting, method, "CSIM", F.cosine_similarity(emb, ref, dim=1))
        if self.extractors.get("3dmm") is not None:
            ref_exp, ref_pose = (t.float() for t in self._run("3dmm", driving))
            for method, image in predictions.items():
                exp, pose = (t.float() for t in self._run("3dmm", image))
                self._add(setting, method, "AED", (exp - ref_exp).abs().mean(1))
                self._add(setting, method, "APD", (pose - ref_pose).abs().mean(1))

    def results(self, setting: str, method: str) -> dict[str, float | str]:
        out: dict[str, float | str] = {}
        for kind, metrics in EXTRACTORS.items():
            for metric in metrics:
                if metric not in COLUMNS[setting]:
                    continue
                key = (setting, method, metric)
                out[metric.lower()] = (self.sums[key] / self.counts[key] if self.counts.get(key)
                                       else f"not run: {self.reasons.get(kind, 'no samples')}")  # fmt: skip
        return out


def build_extractors(args: argparse.Namespace, device: torch.device) -> ExtractorMetrics:
    paths = {"landmarks": args.landmarks_weights, "identity": args.identity_weights, "3dmm": args.threedmm_weights}
    needs = {"landmarks": "face-alignment's 68-point FAN", "identity": "ArcFace", "3dmm": "Deep3DFaceRecon"}
    extractors, reasons = {}, {}
    for kind, path in paths.items():
        extractors[kind] = None if path is None else load_extractor(kind, path, device, args.extractor_plugin)
        if path is None:
            reasons[kind] = f"no {EXTRACTOR_FLAGS[kind]} given ({needs[kind]} weights; none ship with export3d)"
    return ExtractorMetrics(extractors, reasons)


# ----------------------------------------------------------------------------------------------- table
def _cell(value, metric: str) -> str:
    if isinstance(value, str):
        return f"{'not run':>8}"
    return f"{value:>8.2f}" if metric == "PSNR" else f"{value:>8.3f}"


def format_paper_table(result: dict) -> str:
    """Rows = methods, column groups = same- / cross-identity (paper Table 1), then notes and the identity leak."""
    arrow = {m: "↑" if m in HIGHER_IS_BETTER else "↓" for cols in COLUMNS.values() for m in cols}
    groups = [s for s in COLUMNS if result.get(s)]
    titles = {s: f"{s.replace('_', '-').capitalize()} ({result[s]['pairs']} pairs)" for s in groups}
    head1 = f"{'':<18}" + "".join(f" | {titles[s]:<{8 * len(COLUMNS[s])}}" for s in groups)
    head2 = f"{'Method':<18}" + "".join(" | " + "".join(f"{m + arrow[m]:>8}" for m in COLUMNS[s]) for s in groups)
    lines = [head1.rstrip(), head2, "-" * len(head2)]
    for method, label in (("model", "Export3D (ours)"), ("copy_source", "Copy source")):
        row = f"{label:<18}"
        for s in groups:
            values = result[s][method]
            row += " | " + "".join(_cell(values[m.lower()], m) for m in COLUMNS[s])
        lines.append(row)
    for s in COLUMNS:
        if not result.get(s):
            lines.append(f"{s.replace('_', '-')}: not available (no ground truth for this data)")
    notes = {}
    for s in groups:
        for m in COLUMNS[s]:
            value = result[s]["model"][m.lower()]
            if isinstance(value, str):
                notes.setdefault(value, []).append(m)
    for reason, metrics in notes.items():
        lines.append(f"{'/'.join(dict.fromkeys(metrics))}: {reason}")
    leak = result.get("identity_leak") or {}
    if "beta" in leak:
        b, bp = leak["beta"], leak["beta_prime"]
        lines.append(f"Identity leak (linear {leak['method']} probe, held-out accuracy, {b['identities']} identities, "
                     f"chance {leak['chance']:.3f}): beta {b['accuracy']:.3f} | beta' {bp['accuracy']:.3f} "
                     f"(expression encoder {leak['encoder']})")  # fmt: skip
    elif leak:
        lines.append(f"Identity leak: not run: {leak.get('not_run')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI
def run_checkpoint(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    model, meta, folder = load_model(args.checkpoint, device, args.preset, args.resolution,
                                     use_ema=not args.trained_weights)  # fmt: skip
    train_cfg = meta.get("train_config") or {}
    source = held_out_source(meta, args.data, model.config.image_size)
    pairs = args.pairs if args.pairs is not None else train_cfg.get("eval_pairs") or 64
    extra = build_extractors(args, device)
    lpips_model, lpips_info = build_lpips(args.vgg_weights)  # its random-VGG fallback is seeded: repeatable
    metrics = evaluate(model, source, lpips_model.to(device), device, pairs=pairs, batch_size=args.batch_size,
                       seed=train_cfg.get("seed", 0), on_batch=extra.update)  # fmt: skip
    for setting, block in metrics.items():
        for method in ("model", "copy_source") if block else ():
            block[method].update(extra.results(setting, method))
    data = args.data or train_cfg.get("data", "synthetic")
    result = {"checkpoint": str(folder), "step": meta.get("step"), "weights": meta["weights"],
              "preset": model.config.name, "image_size": model.config.image_size,
              "expression_encoder": model.config.expression_encoder, "data": data, **metrics,
              "identity_leak": identity_leak(model, source, args.probe),
              "lpips_network": dataclasses.asdict(lpips_info),
              "extractors": {k: (EXTRACTOR_FLAGS[k] + " " + str(p) if p else "not run: " + extra.reasons[k])
                             for k, p in (("landmarks", args.landmarks_weights), ("identity", args.identity_weights),
                                          ("3dmm", args.threedmm_weights))}}  # fmt: skip
    print(f"export3d.evaluate: {folder} (step {result['step']}, {result['weights']} weights, "
          f"preset {result['preset']}, {result['image_size']} px, expression encoder {result['expression_encoder']}), "
          f"{data} test split; {lpips_info.describe()}")
    print(format_paper_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    return result


def build_parser() -> argparse.ArgumentParser:
    from export3d import ablation

    p = argparse.ArgumentParser(prog="python -m export3d.evaluate", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--checkpoint", help="a run folder, its checkpoints/ folder, last.json or a step_* folder")
    p.add_argument("--data", help="'synthetic' or a clip-format folder (default: the run's training data)")
    p.add_argument("--json", help="write every number (and every 'not run' reason) to this JSON file")
    p.add_argument("--pairs", type=int, help="same-identity pairs and cross-identity triples (default: the run's "
                                             "eval_pairs)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--trained-weights", action="store_true",
                   help="evaluate the trained weights, not their EMA (model_ema; used when the checkpoint has it)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="fail unless the checkpoint holds this preset")
    p.add_argument("--resolution", type=int, help="fail unless the checkpoint's model has this image size")
    p.add_argument("--vgg-weights", help="torchvision VGG16 weights for LPIPS (else the torch hub cache, else random)")
    p.add_argument("--probe", choices=PROBES, default="ridge", help="identity probe: least squares or logistic")
    p.add_argument("--landmarks-weights", help="68-point landmark extractor (.pt2 / TorchScript) -> AKD")
    p.add_argument("--identity-weights", help="face identity embedder, e.g. ArcFace (.pt2 / TorchScript) -> CSIM")
    p.add_argument("--3dmm-weights", dest="threedmm_weights", help="3DMM fitter (.pt2 / TorchScript) -> AED, APD")
    p.add_argument("--extractor-plugin", help="module with build_landmarks/build_identity/build_3dmm(path)")
    ablation.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pairs is not None and args.pairs < 1:
        parser.error("--pairs must be >= 1")
    if args.ablation == (args.checkpoint is not None):
        parser.error("give exactly one of --checkpoint PATH or --ablation")
    try:
        if args.ablation:
            from export3d import ablation

            ablation.run(args)
        else:
            run_checkpoint(args)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"export3d.evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
