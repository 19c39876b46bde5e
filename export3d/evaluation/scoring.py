"""Held-out evaluation shared by training and ``python -m export3d.evaluate``.

Same identity: source and driving frames from one clip of a test identity; the model renders the
driving expression and camera from the source, and is scored against the driving frame.
Cross identity (synthetic data only): person A's frame, person B's expression and camera, scored
against the ground-truth render of A with B's expression from B's camera. Both are compared with the
copy-the-source baseline (the source image itself as the prediction).

LPIPS values go under the name of the network that computed them (``LPIPSInfo.metric_name``: ``lpips``
with ImageNet VGG16 weights, ``lpips_random_vgg`` with the random fallback), and the result records that
network (``lpips_network``), from which :func:`format_table` takes its column header.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.data import default_collate

from export3d.data import CrossIdentityTriples, ReconstructionPairs, SyntheticClips
from export3d.evaluation.metrics import LPIPSInfo, lpips_distance, lpips_info_of, psnr, ssim


@dataclass(frozen=True)
class EvalBatch:
    source: torch.Tensor  # [B, 3, H, W]
    driving: torch.Tensor  # [B, 3, H, W]
    beta: torch.Tensor  # [B, 64] of the driving frame
    camera: torch.Tensor  # [B, 25] of the driving frame
    target: torch.Tensor  # [B, 3, H, W]: the driving frame (same identity) or the ground truth (cross)


def spread_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)`` (a fixed, reproducible subset)."""
    count = min(count, length)
    return [int(i * length / count) for i in range(count)]


def same_identity_batches(source, pairs: int, batch_size: int, seed: int = 0) -> list[EvalBatch]:
    data = ReconstructionPairs(source, seed=seed)
    idx = spread_indices(len(data), pairs)
    out = []
    for i in range(0, len(idx), batch_size):
        b = default_collate(data.__getitems__(idx[i : i + batch_size]))
        out.append(EvalBatch(b["source"], b["driving"], b["beta"], b["camera"], b["driving"]))
    return out


def cross_identity_batches(source, pairs: int, batch_size: int, seed: int = 0) -> list[EvalBatch]:
    """Empty for data without ground truth (anything but the synthetic generator)."""
    if not isinstance(source, SyntheticClips) or len({c.identity for c in source.clips}) < 2:
        return []
    data = CrossIdentityTriples(source, length=pairs, seed=seed)
    out = []
    for i in range(0, pairs, batch_size):
        b = default_collate(data.__getitems__(list(range(i, min(i + batch_size, pairs)))))
        out.append(EvalBatch(b["source"], b["driving"], b["beta"], b["camera"], b["target"]))
    return out


@torch.no_grad()
def score(model: nn.Module, batches: list[EvalBatch], lpips_model: nn.Module, device: torch.device,
          on_batch: Callable[[EvalBatch, dict[str, torch.Tensor]], None] | None = None) -> dict:  # fmt: skip
    """Mean PSNR / SSIM / LPIPS of the model and of copy-the-source over ``batches`` (LPIPS under the name
    :attr:`LPIPSInfo.metric_name` of ``lpips_model``'s network).

    ``on_batch(batch, {"model": prediction, "copy_source": source})`` (images ``[B, 3, H, W]`` on ``device``)
    sees every batch, e.g. to run face-model extractors on the same predictions.
    """
    lpips_name = lpips_info_of(lpips_model).metric_name
    sums = {name: {"psnr": 0.0, "ssim": 0.0, lpips_name: 0.0} for name in ("model", "copy_source")}
    n = 0
    for b in batches:
        src, tgt = b.source.to(device), b.target.to(device)
        pred = model(src, b.beta.to(device), b.camera.to(device)).image.float().clamp(-1, 1)
        if on_batch is not None:
            on_batch(b, {"model": pred, "copy_source": src})
        for name, image in (("model", pred), ("copy_source", src)):
            sums[name]["psnr"] += psnr(image, tgt).sum().item()
            sums[name]["ssim"] += ssim(image, tgt).sum().item()
            sums[name][lpips_name] += lpips_distance(lpips_model, image, tgt).sum().item()
        n += src.shape[0]
    return {name: {k: v / max(n, 1) for k, v in m.items()} for name, m in sums.items()} | {"pairs": n}


def evaluate(model: nn.Module, source, lpips_model: nn.Module, device: torch.device, pairs: int = 64,
             batch_size: int = 8, seed: int = 0, on_batch: Callable[..., None] | None = None) -> dict:  # fmt: skip
    """Same- and (where ground truth exists) cross-identity metrics on ``source`` (a test split), and the LPIPS
    network they were measured with (``lpips_network``: :class:`LPIPSInfo` as a dict).

    ``on_batch(setting, batch, predictions)``, if given, is called for every batch of both settings.
    """
    hook = (lambda setting: None if on_batch is None else partial(on_batch, setting))  # noqa: E731
    was_training = model.training
    model.eval()
    try:
        result = {"same_identity": score(model, same_identity_batches(source, pairs, batch_size, seed), lpips_model,
                                         device, hook("same_identity"))}  # fmt: skip
        cross = cross_identity_batches(source, pairs, batch_size, seed)
        result["cross_identity"] = score(model, cross, lpips_model, device, hook("cross_identity")) if cross else None
        result["lpips_network"] = dataclasses.asdict(lpips_info_of(lpips_model))
    finally:
        model.train(was_training)
    return result


def evaluate_sources(model: nn.Module, sources: list[tuple[str, object]], lpips_model: nn.Module,
                     device: torch.device, pairs: int = 64, batch_size: int = 8, seed: int = 0,
                     on_batch_of: Callable[[str], Callable[..., None] | None] | None = None) -> dict:  # fmt: skip
    """:func:`evaluate` on each held-out source ((name, source) pairs), each reported separately.

    One source: :func:`evaluate`'s result as it is. Several: ``{"sources": {name: its result}, "lpips_network"}``.
    ``on_batch_of(name)`` gives the ``on_batch`` hook of one source (or None)."""
    results = {}
    for name, source in sources:
        hook = on_batch_of(name) if on_batch_of is not None else None
        results[name] = evaluate(model, source, lpips_model, device, pairs, batch_size, seed, hook)
    if len(results) == 1:
        return next(iter(results.values()))
    network = [r.pop("lpips_network") for r in results.values()][0]
    return {"sources": results, "lpips_network": network}


def per_source(metrics: dict) -> list[tuple[str | None, dict]]:
    """(source name, its block) of an :func:`evaluate_sources` result; the name is None for a single source."""
    if "sources" in metrics:
        return list(metrics["sources"].items())
    return [(None, metrics)]


def format_table(metrics: dict) -> str:
    """A plain-text table in the layout of the paper's Table 1 (rows: methods; columns: metrics) of
    :func:`evaluate`'s (or :func:`evaluate_sources`') result, one block per source, each with its memorisation line
    when measured; the LPIPS column is headed by the network's label (``LPIPS(rand)``: random VGG)."""
    lines = []
    for name, block in per_source(metrics):
        if name is not None:
            lines.append(f"held-out data: {name}")
        lines.append(_format_block(block, metrics["lpips_network"]))
        if "memorisation" in block:
            lines.append(format_memorisation(block["memorisation"]))
    return "\n".join(lines)


def _format_block(metrics: dict, lpips_network: dict) -> str:
    lpips = LPIPSInfo(**lpips_network)
    width = max(8, len(lpips.label) + 1)
    lines = [f"{'':<22}{'PSNR':>8}{'SSIM':>8}{lpips.label:>{width}}"]
    for setting in ("same_identity", "cross_identity"):
        block = metrics.get(setting)
        if not block:
            lines.append(f"{setting.replace('_', '-')}: not available (no ground truth)")
            continue
        lines.append(f"{setting.replace('_', '-')} ({block['pairs']} pairs)")
        for name in ("model", "copy_source"):
            m = block[name]
            lines.append(f"  {name:<20}{m['psnr']:>8.2f}{m['ssim']:>8.3f}{m[lpips.metric_name]:>{width}.3f}")
    return "\n".join(lines)


def format_memorisation(result: dict | None, label: str = "") -> str:
    """One line for the evaluation tables."""
    head = f"Memorisation{f' ({label})' if label else ''}: "
    if not result or "not_run" in result:
        return head + f"not run: {(result or {}).get('not_run', 'no face tools')}"
    if not result["scored"]:
        return head + f"no output scored ({result['no_face_output']} outputs, {result['no_face_source']} sources " \
                      "without a face)"  # fmt: skip
    gt = result["driving_follows_source"]
    return (head + f"{result['follow']}/{result['scored']} outputs nearer the source than any of "
            f"{result['training_identities']} training identities ({result['follows_source']:.3f}; the driving frames: "
            f"{'-' if gt is None else f'{gt:.3f}'}); not scored: {result['no_face_output']} outputs, "
            f"{result['no_face_source']} sources without a face (dlib descriptors, {result['frames_per_identity']} "
            "frames per training identity)")  # fmt: skip
