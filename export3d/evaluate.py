"""Evaluation: ``python -m export3d.evaluate --checkpoint RUN`` (paper Table 1 layout).

For a checkpoint: the model is rebuilt from the checkpoint's ``meta.json`` ("model_config"), the test
data from its "train_config" (the synthetic generator's seed and sizes) unless ``--data`` says
otherwise. Reported: same-identity PSNR / SSIM / LPIPS against the driving frame; cross-identity PSNR /
SSIM / LPIPS against the rendered ground truth (synthetic data only); the copy-the-source baseline;
the identity leak of the expression code (held-out accuracy of a linear identity probe on beta and
on beta' = encode_expression(beta), with chance level); and the paper's AKD / CSIM / AED / APD, by default
from offline face tools when the ``faces`` extra is installed (MediaPipe landmarks, blendshapes and PnP pose;
dlib 68 points and face descriptor: :mod:`export3d.evaluation.face_metrics`), or from the paper's face models
when supplied (``--landmarks-weights``, ``--identity-weights``, ``--3dmm-weights``). A column with neither
reads "not run: <reason>", never a number. The face metrics score every method on the same pairs (those where
every compared image has a face) and each method's face rate is a column of its own. LPIPS is named after its
network: ``LPIPS(rand)`` / ``lpips_random_vgg`` unless ``--vgg-weights`` (or the torch hub cache) gives the real
VGG16. With several ``--data`` sources (or a run that mixed several) each is reported on its own; ``--split all``
scores every clip of a folder (held-out people prepared on their own). For clip folders, the memorisation measure
(:mod:`export3d.evaluation.memorisation`): the share of outputs whose dlib face descriptor is nearer the source's
than any training identity's; ``--grid PATH`` draws the outputs beside their nearest training faces. The extractor
contract is in :mod:`export3d.evaluation.extractors`. The ablations (paper Tables 3 and 4)
have their own command, ``python -m export3d.ablation``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from export3d.evaluation import extractors
from export3d.evaluation.extractors import COLUMNS, HIGHER_IS_BETTER
from export3d.evaluation.face_metrics import FACE_BACKEND_HELP, FACE_BACKENDS, FaceMetricSuite, build_face_metrics
from export3d.evaluation.loading import (
    SPLITS,
    held_out_source,
    held_out_sources,
    load_model,
    model_config_from_meta,
    source_label,
)
from export3d.evaluation.memorisation import DEFAULT_FRAMES, Memorisation, memorisation_grid
from export3d.evaluation.metrics import LPIPSInfo, build_lpips
from export3d.evaluation.probe import PROBES, identity_leak
from export3d.evaluation.scoring import evaluate, format_memorisation
from export3d.model.config import PRESETS
from export3d.utils.checkpoint import CheckpointError
from export3d.utils.cli import add_debug_flag, run_command
from export3d.utils.distributed import resolve_device
from export3d.utils.outputs import atomic_write_json, check_output_file
from export3d.utils.signals import exit_status

__all__ = ["format_paper_table", "held_out_source", "identity_leak", "load_model", "main", "model_config_from_meta"]


# ----------------------------------------------------------------------------------------------- table
def _cell(value, metric: str, width: int = 8) -> str:
    if isinstance(value, str):
        return f"{'not run':>{width}}"
    return f"{value:>{width}.2f}" if metric == "PSNR" else f"{value:>{width}.3f}"


def _faces_cell(values: dict) -> str:
    """The face-rate column: faces found / pairs of one method (the JSON's ``face_rate`` as a fraction)."""
    faces = values.get("faces")
    return f"{faces['found']}/{faces['pairs']}" if faces else "-"


def _title(setting: str, block: dict) -> str:
    """``Same-identity (64 pairs; face metrics on 9)``: the pairs, and those the face metrics were scored on."""
    title = f"{setting.replace('_', '-').capitalize()} ({block['pairs']} pairs"
    scored = sorted(set((block["model"].get("faces") or {}).get("scored", {}).values()))
    if scored:
        title += f"; face metrics on {scored[0]}" + (f"-{scored[-1]}" if len(scored) > 1 else "")
    return title + ")"


def format_paper_table(result: dict) -> str:
    """Rows = methods, column groups = same- / cross-identity (paper Table 1), then notes and the identity leak.

    LPIPS is headed and read by its network's name (:class:`LPIPSInfo`); a group whose face metrics came from the
    offline detector gets a Faces column: faces found / pairs of each method's images."""
    lpips = LPIPSInfo(**result["lpips_network"])
    key = {m: lpips.metric_name if m == "LPIPS" else m.lower() for cols in COLUMNS.values() for m in cols}
    head = {m: (lpips.label if m == "LPIPS" else m) + ("↑" if m in HIGHER_IS_BETTER else "↓") for m in key}
    width = {m: max(8, len(h) + 1) for m, h in head.items()}
    groups = [s for s in COLUMNS if result.get(s)]
    faces = {s: any("faces" in result[s][m] for m in ("model", "copy_source")) for s in groups}
    cols = {s: sum(width[m] for m in COLUMNS[s]) + 8 * faces[s] for s in groups}
    head1 = f"{'':<18}" + "".join(f" | {_title(s, result[s]):<{cols[s]}}" for s in groups)
    head2 = f"{'Method':<18}" + "".join(" | " + "".join(f"{head[m]:>{width[m]}}" for m in COLUMNS[s])
                                         + (f"{'Faces↑':>8}" if faces[s] else "") for s in groups)  # fmt: skip
    lines = [head1.rstrip(), head2, "-" * len(head2)]
    for method, label in (("model", "Export3D (ours)"), ("copy_source", "Copy source")):
        row = f"{label:<18}"
        for s in groups:
            values = result[s][method]
            row += " | " + "".join(_cell(values[key[m]], m, width[m]) for m in COLUMNS[s])
            row += f"{_faces_cell(values):>8}" if faces[s] else ""
        lines.append(row)
    for s in COLUMNS:
        if not result.get(s):
            lines.append(f"{s.replace('_', '-')}: not available (no ground truth for this data)")
    notes = {}
    for s in groups:
        for m in COLUMNS[s]:
            value = result[s]["model"][key[m]]
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
def evaluate_source(args: argparse.Namespace, model, source, lpips_model, device, seed: int, pairs: int,
                    memo: Memorisation | None, name: str) -> tuple[dict, FaceMetricSuite]:  # fmt: skip
    """One held-out source: the metrics, the face metrics, its memorisation (clip folders) and identity leak."""
    extra = build_face_metrics(args, device)
    hook = memo.hook(name) if memo is not None and name != "synthetic" else None

    def on_batch(setting, batch, predictions):
        extra.update(setting, batch, predictions)
        if hook is not None:
            hook(setting, batch, predictions)

    try:
        metrics = evaluate(model, source, lpips_model.to(device), device, pairs=pairs, batch_size=args.batch_size,
                           seed=seed, on_batch=on_batch)  # fmt: skip
        extra.add_to(metrics)
    finally:
        extra.close()
    if memo is not None and name != "synthetic":
        metrics["memorisation"] = memo.result(name)
    metrics["identity_leak"] = identity_leak(model, source, args.probe)
    return metrics, extra


def run_checkpoint(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    for path, flag in ((args.json, "--json"), (args.grid, "--grid")):
        if path:
            check_output_file(path, flag)  # before the evaluation, not after it
    model, meta, folder = load_model(args.checkpoint, device, args.preset, args.resolution,
                                     use_ema=not args.trained_weights)  # fmt: skip
    train_cfg = meta.get("train_config") or {}
    sources = held_out_sources(meta, args.data, model.config.image_size, args.split)
    pairs = args.pairs if args.pairs is not None else train_cfg.get("eval_pairs") or 64
    lpips_model, lpips_info = build_lpips(args.vgg_weights)  # its random-VGG fallback is seeded: repeatable
    memo = Memorisation.for_run(meta, [n for n, _ in sources], model.config.image_size, args.memorisation_frames)
    check_grid(args.grid, memo, [n for n, _ in sources])  # before the evaluation, not after it
    blocks, extra = {}, None
    try:
        for name, source in sources:
            blocks[name], extra = evaluate_source(args, model, source, lpips_model, device, train_cfg.get("seed", 0),
                                                  pairs, memo, name)  # fmt: skip
        grids = write_grids(args.grid, memo, [n for n, _ in sources])
    finally:
        if memo is not None:
            memo.close()
    names = list(blocks)
    result = {"checkpoint": str(folder), "step": meta.get("step"), "weights": meta["weights"],
              "preset": model.config.name, "image_size": model.config.image_size,
              "expression_encoder": model.config.expression_encoder, "data": names[0] if len(names) == 1 else names,
              "split": args.split}  # fmt: skip
    network = [b.pop("lpips_network") for b in blocks.values()][0]
    result.update(blocks[names[0]] if len(names) == 1 else {"sources": blocks})
    result.update(lpips_network=network, extractors=extra.describe(), grids=grids)
    print(f"export3d.evaluate: {folder} (step {result['step']}, {result['weights']} weights, "
          f"preset {result['preset']}, {result['image_size']} px, expression encoder {result['expression_encoder']}), "
          f"{', '.join(names)} ({args.split} split); {lpips_info.describe()}")
    for name in names:
        block = {**blocks[name], "lpips_network": network}
        lines = [f"held-out data: {name}"] if len(names) > 1 else []
        lines += [format_paper_table(block), *extra.footer(block)]
        if "memorisation" in block:
            lines.append(format_memorisation(block["memorisation"]))
        print("\n".join(lines))
    for path in grids.values():
        print(f"wrote {path} (source | driving | output | nearest training face)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    return result


def check_grid(path: str | None, memo: Memorisation | None, names: list[str]) -> None:
    """``--grid`` needs the memorisation measured on at least one clip folder; ValueError says why it is not."""
    if path and (memo is None or memo.bank is None or all(n == "synthetic" for n in names)):
        why = memo.reason if memo is not None and memo.reason else "no held-out clip folder or --memorisation-frames 0"
        raise ValueError(f"--grid: the memorisation was not measured ({why})")


def write_grids(path: str | None, memo: Memorisation | None, names: list[str]) -> dict[str, str]:
    """``--grid PATH``: each clip folder's memorisation grid (PATH itself for one, ``PATH-<folder>.png`` for
    several)."""
    real = [n for n in names if n != "synthetic"]
    if not path:
        return {}
    check_grid(path, memo, names)
    out = {}
    for name in real:
        target = Path(path) if len(real) == 1 else Path(path).with_name(f"{Path(path).stem}-{source_label(name)}.png")
        out[name] = str(memorisation_grid(memo.probes[name], target))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export3d.evaluate", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1] + "\n" + extractors.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--checkpoint", required=True,
                   help="a run folder, its checkpoints/ folder, last.json or a step_* folder")
    p.add_argument("--data", action="append",
                   help="'synthetic' or a clip-format folder; repeat for several, each reported on its own (default: "
                        "the run's training data)")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="test: each folder's test split; all: every clip of the folders (a folder of held-out people "
                        "prepared on its own; synthetic data: its held-out identities either way)")
    p.add_argument("--memorisation-frames", type=int, default=DEFAULT_FRAMES,
                   help="frames per training identity for the memorisation measure of clip folders (dlib face "
                        f"descriptors; 0: off; default: {DEFAULT_FRAMES})")
    p.add_argument("--grid", help="write a PNG per held-out clip folder: source | driving | output | nearest "
                                  "training identity's face, with both descriptor distances")
    p.add_argument("--json", help="write every number (and every 'not run' reason) to this JSON file")
    p.add_argument("--pairs", type=int, help="same-identity pairs and cross-identity triples (default: the run's "
                                             "eval_pairs)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
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
    p.add_argument("--no-face-metrics", action="store_true",
                   help="skip the offline AKD / CSIM / AED / APD (MediaPipe + dlib; the default with the faces extra)")
    p.add_argument("--face-backend", choices=FACE_BACKENDS, default="mediapipe", help=FACE_BACKEND_HELP)
    p.add_argument("--threads", type=int, help="torch intra-op threads of this process (default: PyTorch's)")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pairs is not None and args.pairs < 1:
        parser.error("--pairs must be >= 1")
    if args.memorisation_frames < 0:
        parser.error(f"--memorisation-frames must be >= 0, got {args.memorisation_frames}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return run_command("export3d.evaluate", run_checkpoint, args,
                           user_errors=(ValueError, OSError, CheckpointError))  # fmt: skip
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
