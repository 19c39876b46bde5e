"""The ablation runs' results: collected per run, summarised over seeds, printed as one table, drawn as one grid.

Each run's own end-of-training evaluation (``metrics.json``: held-out same- and cross-identity PSNR / SSIM /
LPIPS, model and copy-the-source, weight-EMA model) is collected, plus the identity-leak probe of the
variant's expression code. The table shows mean +- half the range over seeds (the interval spans every
seed's value). LPIPS keeps the name of the network that measured it (``LPIPSInfo.metric_name``:
``lpips_random_vgg`` and the header ``LPIPS(rand)`` without real VGG16 weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from export3d.evaluation.loading import held_out_source, load_model
from export3d.evaluation.metrics import LPIPSInfo
from export3d.evaluation.probe import identity_leak
from export3d.evaluation.scoring import cross_identity_batches
from export3d.training.ablation_runs import FULL, VARIANTS
from export3d.training.config import TrainConfig
from export3d.utils.images import make_grid

SETTINGS = ("same_identity", "cross_identity")


# ----------------------------------------------------------------------------------------------- per run
def collect(cfg: TrainConfig, probe: str, device: torch.device) -> dict:
    """One run's numbers: its end-of-training metrics.json and the identity leak of its expression code."""
    metrics = _rename_lpips(json.loads((Path(cfg.out) / "metrics.json").read_text()))
    model, meta, _ = load_model(cfg.out, device)
    source = held_out_source(meta, "synthetic", model.config.image_size)
    return metrics | {"identity_leak": identity_leak(model, source, probe)}


def _rename_lpips(metrics: dict) -> dict:
    """A run finished before LPIPS values were named after their network keeps them under "lpips" whatever the
    network was; move them to the name of the network its ``lpips_network`` records, so reused runs fit in."""
    name = LPIPSInfo(**metrics["lpips_network"]).metric_name
    for setting in SETTINGS:
        for method in ("model", "copy_source"):
            values = (metrics.get(setting) or {}).get(method) or {}
            if "lpips" in values and name not in values:
                values[name] = values.pop("lpips")
    return metrics


def lpips_network(runs: list[dict]) -> LPIPSInfo:
    """The LPIPS network of every run (their LPIPS values are one metric only if it is the same one)."""
    infos = {LPIPSInfo(**r["lpips_network"]) for r in runs}
    if len({i.metric_name for i in infos}) != 1:
        raise ValueError("the ablation runs measured LPIPS with different networks (some with the real VGG16, "
                         "some with the random one); train them all with the same --vgg-weights")  # fmt: skip
    return next(iter(infos))


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


# ----------------------------------------------------------------------------------------------- over seeds
def spread(values: list[float]) -> tuple[float, float]:
    """(mean, half the range): ``mean +- half`` covers every value."""
    return sum(values) / len(values), (max(values) - min(values)) / 2


def _cross_psnr(run: dict, method: str = "model") -> float:
    return run["cross_identity"][method]["psnr"]


def summarise(per_seed: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Mean and half-range over seeds of every metric of every variant, and of copy-the-source.

    A seed fixes the synthetic data and test pairs as well as the initialisation, so the paired differences
    (cross-identity PSNR minus copy-the-source's, and minus the Full (CLeBS) run's, seed by seed) are sharper
    than the spread of the plain values.
    """
    metrics = ("psnr", "ssim", lpips_network([r for seeds in per_seed.values() for r in seeds.values()]).metric_name)
    out = {}
    full = per_seed.get(FULL, {})
    for variant, seeds in per_seed.items():
        runs = list(seeds.values())
        row = {f"{s}_{m}": spread([r[s]["model"][m] for r in runs]) for s in SETTINGS for m in metrics}
        row["cross_identity_psnr_gain"] = spread([_cross_psnr(r) - _cross_psnr(r, "copy_source") for r in runs])
        paired = [_cross_psnr(r) - _cross_psnr(full[k]) for k, r in seeds.items() if k in full]
        if variant != FULL and paired:
            row["cross_identity_psnr_vs_full"] = spread(paired)
        row["probe_accuracy"] = spread([r["identity_leak"]["beta_prime"]["accuracy"] for r in runs])
        out[variant] = row
    first = next(iter(per_seed.values()))
    out["copy_source"] = {f"{s}_{m}": spread([r[s]["copy_source"][m] for r in first.values()])
                          for s in SETTINGS for m in metrics}  # fmt: skip
    out["copy_source"]["raw_beta_probe_accuracy"] = spread([r["identity_leak"]["beta"]["accuracy"]
                                                            for r in first.values()])  # fmt: skip
    return out


def _cell(value: tuple[float, float] | None, metric: str) -> str:
    if value is None:
        return "-"
    mean, half = value
    return f"{mean:.2f}±{half:.2f}" if metric == "psnr" else f"{mean:.3f}±{half:.3f}"


def format_ablation(summary: dict[str, dict], seeds: int, pairs: int, chance: float, lpips: LPIPSInfo) -> str:
    """The summary as one table: a row per variant and copy-the-source, LPIPS headed by ``lpips``' label."""
    metrics = ("psnr", "ssim", lpips.metric_name)
    heads = {"psnr": "PSNR↑", "ssim": "SSIM↑", lpips.metric_name: lpips.label + "↓"}
    widths = {"psnr": 12, "ssim": 13, lpips.metric_name: max(13, len(heads[lpips.metric_name]) + 1)}
    cols = "".join(f"{heads[m]:>{widths[m]}}" for m in metrics)
    group = sum(widths.values())
    head = (f"{'':<22} | {'Same-identity (' + str(pairs) + ' pairs)':<{group}} | {'Cross-identity':<{group}} | "
            f"{'cross PSNR paired':<23} | probe acc↓ (chance {chance:.3f})")  # fmt: skip
    lines = [head, f"{'Method':<22} | {cols} | {cols} | {'-copy':>11}{'-Full':>12} |", "-" * len(head)]
    for variant, row in summary.items():
        label = "Copy source" if variant == "copy_source" else VARIANTS[variant].label
        cells = [" ".join(f"{_cell(row[f'{s}_{m}'], m):>{widths[m] - 1}}" for m in metrics) for s in SETTINGS]
        paired = " ".join(f"{_cell(row.get(k), 'psnr'):>11}" for k in ("cross_identity_psnr_gain",
                                                                         "cross_identity_psnr_vs_full"))
        acc = row.get("probe_accuracy") or row["raw_beta_probe_accuracy"]
        code = "raw beta" if variant == "copy_source" else VARIANTS[variant].code
        lines.append(f"{label:<22} |  {cells[0]} |  {cells[1]} | {paired} | {_cell(acc, 'ssim')} ({code})")
    lines.append(f"mean ± half the range over {seeds} seed(s); same data, recipe and budget for every variant. "
                 "Paired: each seed's cross-identity PSNR minus copy-the-source's and minus Full (CLeBS)'s, "
                 "same seed (the seed also fixes the data)")  # fmt: skip
    return "\n".join(lines)
