"""The ablation runs' results: collected per run, summarised over seeds, printed as one table, drawn as one grid.

Each run's own end-of-training evaluation (``metrics.json``: held-out same- and cross-identity PSNR / SSIM /
LPIPS, model and copy-the-source, weight-EMA model; same-identity only on real clips, which have no cross-identity
ground truth, and the paired columns then compare same-identity PSNR) is collected, plus the identity-leak probe of the
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
from export3d.evaluation.scoring import cross_identity_batches, same_identity_batches
from export3d.training.ablation_runs import FULL, VARIANTS
from export3d.training.config import TrainConfig
from export3d.training.face_losses import crop_faces
from export3d.utils.images import make_grid

SETTINGS = ("same_identity", "cross_identity")
FACE_COLUMNS = ("akd", "aed", "face_rate", "crop_akd", "crop_aed")  # FaceScorer's numbers per method


# ----------------------------------------------------------------------------------------------- per run
def collect(cfg: TrainConfig, probe: str, device: torch.device, faces: FaceScorer | None = None) -> dict:
    """One run's numbers: its end-of-training metrics.json, the identity leak of its expression code and, with
    ``faces``, AKD / AED on the same held-out pairs (:class:`FaceScorer`)."""
    metrics = _rename_lpips(json.loads((Path(cfg.out) / "metrics.json").read_text()))
    model, meta, _ = load_model(cfg.out, device)
    source = held_out_source(meta, None, model.config.image_size)  # the run's data: synthetic or a clip folder
    extra = {"face_metrics": faces.score(model, source, cfg, device)} if faces is not None else {}
    return metrics | {"identity_leak": identity_leak(model, source, probe)} | extra


class FaceScorer:
    """AKD and AED of a run's held-out outputs (weight-EMA model, the pairs of its metrics.json) against the target,
    and of copy-the-source, from the PyTorch port of MediaPipe's networks, read two ways:

    - ``akd``, ``aed``: MediaPipe's still-image pipeline on each image (``evaluate --face-backend port``: detector,
      crop, 478 landmarks, blendshapes), scored on the pairs where the output, the source and the target all have
      a face; ``face_rate``: the share of pairs whose image has a face. A tiny model's 64 px outputs often have
      none, so these means cover a different subset of pairs for each run;
    - ``crop_akd``, ``crop_aed``: the landmark network on the target's MediaPipe crop cut out of both images (the
      face losses' reading, :mod:`export3d.training.face_losses`), on every pair whose target has a face, so every
      run is scored on the same pairs. This is what the face losses train on, so it favours them by construction.

    AKD: the mean distance of the 478 points in pixels of the model's image; AED: the mean absolute difference of
    the 52 blendshapes."""

    def __init__(self, device: torch.device | str):
        from export3d.evaluation.face_features import MeshFeatureExtractor
        from export3d.training.face_losses import FaceLoss

        self.extractor = MeshFeatureExtractor(device)
        self.reader = FaceLoss(self.extractor.mesh)  # crop="target"; its weights are not used

    @classmethod
    def build(cls, device: torch.device | str) -> tuple[FaceScorer | None, str]:
        """(a scorer, "") or (None, why not: the face model bundle is not installed)."""
        from export3d.utils.extras import MissingExtraError

        try:
            return cls(device), ""
        except MissingExtraError as err:
            return None, str(err)

    @torch.no_grad()
    def score(self, model: torch.nn.Module, source, cfg: TrainConfig, device: torch.device) -> dict:
        model.eval()
        out = {}
        for setting, make in (("same_identity", same_identity_batches), ("cross_identity", cross_identity_batches)):
            sums = {m: dict.fromkeys(FACE_COLUMNS, 0.0) for m in ("model", "copy_source")}
            counts = {"pairs": 0, "scored": 0, "crop_scored": 0}
            batches = make(source, cfg.eval_pairs, cfg.batch_size, seed=cfg.seed)
            if not batches:  # cross-identity needs ground truth: synthetic data only
                out[setting] = None
                continue
            for b in batches:
                src, target = b.source.to(device), b.target.to(device)
                images = {"model": model(src, b.beta.to(device), b.camera.to(device)).image.float().clamp(-1, 1),
                          "copy_source": src}  # fmt: skip
                self._add(images, target, sums, counts)
            n, k, c = max(counts["pairs"], 1), max(counts["scored"], 1), max(counts["crop_scored"], 1)
            divide = {"akd": k, "aed": k, "face_rate": n, "crop_akd": c, "crop_aed": c}
            out[setting] = {m: {key: v / divide[key] for key, v in values.items()} for m, values in sums.items()}
            out[setting] |= counts
        return out

    def _add(self, images: dict[str, torch.Tensor], target: torch.Tensor, sums: dict, counts: dict) -> None:
        from export3d.evaluation.face_features import mesh_scores

        want = self.extractor.predict(target)
        got = {m: self.extractor.predict(image) for m, image in images.items()}
        common = want[2] & got["model"][2] & got["copy_source"][2]  # [B] every compared image has a face
        roi, face = self.reader.target_crop(target)
        truth = self.reader.read(crop_faces(target, roi), roi)
        face = face & (truth.presence >= 0.5)
        side = roi.size[:, 0] / self.reader.size  # image pixels per crop pixel
        for m, image in images.items():
            scores = mesh_scores(got[m], want)
            sums[m]["akd"] += scores["akd"][common].sum().item()
            sums[m]["aed"] += scores["aed"][common].sum().item()
            sums[m]["face_rate"] += got[m][2].sum().item()
            read = self.reader.read(crop_faces(image, roi), roi)
            akd = (read.landmarks[..., :2] - truth.landmarks[..., :2]).norm(dim=-1).mean(1) * side
            sums[m]["crop_akd"] += akd[face].sum().item()
            sums[m]["crop_aed"] += (read.blendshapes - truth.blendshapes).abs().mean(1)[face].sum().item()
        counts["pairs"] += len(target)
        counts["scored"] += int(common.sum())
        counts["crop_scored"] += int(face.sum())


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
    """The paper's Figs. 6 and 7 in miniature: ``rows`` held-out cross-identity triples of one seed's test data
    (same-identity pairs for real clips, which have no cross-identity ground truth), columns source | driving |
    target | each config's image (its weight-EMA model). ``[3, H, W]`` in [-1, 1]."""
    cols, batch = [], None
    for cfg in configs:
        model, meta, _ = load_model(cfg.out, device)
        if batch is None:  # every variant of one seed has the same data
            source = held_out_source(meta, None, model.config.image_size)
            batch = (cross_identity_batches(source, rows, rows, seed=cfg.seed)
                     or same_identity_batches(source, rows, rows, seed=cfg.seed))[0]  # fmt: skip
            cols += [batch.source, batch.driving, batch.target]
        cols.append(model(batch.source.to(device), batch.beta.to(device), batch.camera.to(device)).image.float().cpu())
    return make_grid([c.clamp(-1, 1) for c in cols])


# ----------------------------------------------------------------------------------------------- over seeds
def spread(values: list[float]) -> tuple[float, float]:
    """(mean, half the range): ``mean +- half`` covers every value."""
    return sum(values) / len(values), (max(values) - min(values)) / 2


def primary(run: dict) -> str:
    """The setting the paired columns compare: cross-identity when the data has its ground truth (synthetic heads),
    else same-identity (real clips)."""
    return "cross_identity" if run.get("cross_identity") else "same_identity"


def settings(run: dict) -> tuple[str, ...]:
    """The settings a run's metrics.json scored (real clips have no cross-identity ground truth)."""
    return tuple(s for s in SETTINGS if run.get(s))


def _psnr(run: dict, setting: str, method: str = "model") -> float:
    return run[setting][method]["psnr"]


def summarise(per_seed: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Mean and half-range over seeds of every metric of every variant, and of copy-the-source.

    A seed fixes the synthetic data and test pairs as well as the initialisation, so the paired differences
    (cross-identity PSNR minus copy-the-source's, and minus the Full (CLeBS) run's, seed by seed) are sharper
    than the spread of the plain values.
    """
    metrics = ("psnr", "ssim", lpips_network([r for seeds in per_seed.values() for r in seeds.values()]).metric_name)
    out = {}
    full = per_seed.get(FULL, {})
    runs_all = [r for seeds in per_seed.values() for r in seeds.values()]
    scored, main = settings(runs_all[0]), primary(runs_all[0])
    if any(settings(r) != scored for r in runs_all):
        raise ValueError("the ablation runs were scored on different data (some with cross-identity ground truth, "
                         "some without); give every run the same --data")  # fmt: skip
    for variant, seeds in per_seed.items():
        runs = list(seeds.values())
        row = {f"{s}_{m}": spread([r[s]["model"][m] for r in runs]) for s in scored for m in metrics}
        row[f"{main}_psnr_gain"] = spread([_psnr(r, main) - _psnr(r, main, "copy_source") for r in runs])
        paired = [_psnr(r, main) - _psnr(full[k], main) for k, r in seeds.items() if k in full]
        if variant != FULL and paired:
            row[f"{main}_psnr_vs_full"] = spread(paired)
        row["probe_accuracy"] = spread([r["identity_leak"]["beta_prime"]["accuracy"] for r in runs])
        if all("face_metrics" in r for r in runs):
            row |= _face_row(runs, "model")
            for col in ("crop_akd", "crop_aed"):  # the same pairs in every run: paired with Full, seed by seed
                paired = [_face(r, col, main) - _face(full[k], col, main) for k, r in seeds.items() if k in full]
                if variant != FULL and paired and all("face_metrics" in full[k] for k in seeds if k in full):
                    row[f"face_{main}_{col}_vs_full"] = spread(paired)
        out[variant] = row
    first = next(iter(per_seed.values()))
    out["copy_source"] = {f"{s}_{m}": spread([r[s]["copy_source"][m] for r in first.values()])
                          for s in scored for m in metrics}  # fmt: skip
    out["copy_source"]["raw_beta_probe_accuracy"] = spread([r["identity_leak"]["beta"]["accuracy"]
                                                            for r in first.values()])  # fmt: skip
    if all("face_metrics" in r for r in first.values()):
        out["copy_source"] |= _face_row(list(first.values()), "copy_source")
    return out


def _face(run: dict, column: str, setting: str = "cross_identity", method: str = "model") -> float:
    return run["face_metrics"][setting][method][column]


def _face_row(runs: list[dict], method: str) -> dict[str, tuple[float, float]]:
    """``face_<setting>_<column>``: mean and half-range over the runs of :class:`FaceScorer`'s numbers."""
    return {f"face_{s}_{c}": spread([_face(r, c, s, method) for r in runs])
            for s in SETTINGS if runs[0]["face_metrics"].get(s) for c in FACE_COLUMNS}  # fmt: skip


def format_faces(summary: dict[str, dict], seeds: int) -> str:
    """The face metrics of the summary (rows that have them) as one table, both readings of :class:`FaceScorer`."""
    rows = {v: r for v, r in summary.items() if "face_same_identity_akd" in r}
    if not rows:
        return ""
    group = " AKD↓    AED↓   faces"
    crop = " AKD↓    AED↓"
    head = (f"{'':<22} | {'pipeline, same-id':<{len(group)}} | {'cross-identity':<{len(group)}} | "
            f"{'crop, same':<{len(crop)}} | {'cross':<{len(crop)}} | paired -Full")  # fmt: skip
    lines = [head, f"{'Method':<22} |{group}  |{group}  |{crop}  |{crop}  |   AKD     AED", "-" * len(head)]
    for variant, row in rows.items():
        label = "Copy source" if variant == "copy_source" else VARIANTS[variant].label
        cells = []
        for s in SETTINGS:  # "-" where the data has no such pairs (real clips: no cross-identity ground truth)
            cells.append(" ".join(_short(row.get(f"face_{s}_{c}")) for c in ("akd", "aed", "face_rate")))
        for s in SETTINGS:
            cells.append(" ".join(_short(row.get(f"face_{s}_{c}")) for c in ("crop_akd", "crop_aed")))
        vs_full = [row.get(f"face_{s}_{c}_vs_full") for c in ("crop_akd", "crop_aed") for s in SETTINGS[::-1]]
        paired = " ".join(_short(v) for v in vs_full if v is not None) or f"{_short(None)} {_short(None)}"
        lines.append(f"{label:<22} | " + " | ".join(cells) + f" | {paired}")
    lines.append(f"mean over {seeds} seed(s) (± half the range in ablation.json). AKD: pixels of the model's image "
                 "(478 points), AED: blendshapes. Pipeline: pairs where every image has a face (faces: the share "
                 "of outputs that have one); target crop: every pair, the face losses' own reading")  # fmt: skip
    return "\n".join(lines)


def _short(value: tuple[float, float] | None) -> str:
    return "   -  " if value is None else f"{value[0]:6.3f}"


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
    main = "cross_identity" if any("cross_identity_psnr_gain" in r for r in summary.values()) else "same_identity"
    head = (f"{'':<22} | {'Same-identity (' + str(pairs) + ' pairs)':<{group}} | {'Cross-identity':<{group}} | "
            f"{main.split('_')[0] + ' PSNR paired':<23} | probe acc↓ (chance {chance:.3f})")  # fmt: skip
    lines = [head, f"{'Method':<22} | {cols} | {cols} | {'-copy':>11}{'-Full':>12} |", "-" * len(head)]
    for variant, row in summary.items():
        label = "Copy source" if variant == "copy_source" else VARIANTS[variant].label
        cells = [" ".join(f"{_cell(row.get(f'{s}_{m}'), m):>{widths[m] - 1}}" for m in metrics) for s in SETTINGS]
        paired = " ".join(f"{_cell(row.get(k), 'psnr'):>11}" for k in (f"{main}_psnr_gain", f"{main}_psnr_vs_full"))
        acc = row.get("probe_accuracy") or row["raw_beta_probe_accuracy"]
        code = "raw beta" if variant == "copy_source" else VARIANTS[variant].code
        lines.append(f"{label:<22} |  {cells[0]} |  {cells[1]} | {paired} | {_cell(acc, 'ssim')} ({code})")
    lines.append(f"mean ± half the range over {seeds} seed(s); same data, recipe and budget for every variant. "
                 f"Paired: each seed's {main.replace('_', '-')} PSNR minus copy-the-source's and minus Full (CLeBS)'s, "
                 "same seed (the seed also fixes the data; '-': no such pairs, real clips have no cross-identity "
                 "ground truth)")  # fmt: skip
    return "\n".join(lines)
