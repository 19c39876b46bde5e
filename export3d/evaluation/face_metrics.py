"""AKD / CSIM / AED / APD from the offline extractors (:mod:`~export3d.evaluation.face_features`), by default.

Paper definitions (Table 1) with this project's extractors: AKD between the output and the driving frame
(same identity only), CSIM between the output and the source, AED and APD between the output and the driving
frame. A pair where either image has no face is counted (``no_face``) and not scored. Two more readings:

- ``ground_truth``: the ground-truth frame scored as if it were an output (same identity: the driving frame
  itself, so AKD / AED / APD are 0 and CSIM is the source-vs-driving similarity of one person; cross identity,
  synthetic data only: person A rendered with B's expression from B's camera). What a perfect model scores.
- ``against_ground_truth`` (cross identity): AKD / AED / APD of each method against that ground-truth frame
  instead of person B's driving frame, i.e. without B's face shape in the comparison.

A user-supplied extractor (``--landmarks-weights``, ``--identity-weights``, ``--3dmm-weights``;
:mod:`~export3d.evaluation.extractors`) replaces the offline one for its metrics. ``--no-face-metrics`` turns
the offline ones off; without the ``faces`` extra they read "not run" with the install command.
"""

from __future__ import annotations

import argparse

import torch

from export3d.evaluation.extractors import COLUMNS, EXTRACTORS, ExtractorMetrics, build_extractors

HOOK_OF = {metric: kind for kind, metrics in EXTRACTORS.items() for metric in metrics}  # "AKD" -> "landmarks"
DRIVING_METRICS = ("AKD", "AED", "APD")  # compared with the driving frame (CSIM: with the source)


class _Sums:
    """Running sums and counts per key, plus the pairs left unscored because a face was missing."""

    def __init__(self):
        self.sums: dict[tuple, float] = {}
        self.counts: dict[tuple, int] = {}
        self.missing: dict[tuple, int] = {}

    def add(self, key: tuple, value: float | None) -> None:
        if value is None:
            self.missing[key] = self.missing.get(key, 0) + 1
            return
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def value(self, key: tuple) -> float | str:
        n, m = self.counts.get(key, 0), self.missing.get(key, 0)
        if n:
            return self.sums[key] / n
        return f"not run: no face found in {m} of {m} pairs" if m else "not run: no samples"

    def faces(self, keys: list[tuple]) -> dict:
        return {"scored": {k[-1]: self.counts.get(k, 0) for k in keys},
                "no_face": {k[-1]: self.missing.get(k, 0) for k in keys}}  # fmt: skip


class OfflineFaceMetrics:
    """Accumulates the offline metrics per setting and method (``update`` has ExtractorMetrics' signature)."""

    def __init__(self, extractor, metrics: tuple[str, ...] = ("AKD", "CSIM", "AED", "APD")):
        self.extractor = extractor
        self.metrics = metrics
        self.sums = _Sums()
        self.gt_settings: set[str] = set()

    def _score(self, key: tuple, metric: str, out, ref) -> None:
        from export3d.evaluation.face_features import METRICS

        self.sums.add((*key, metric), None if out is None or ref is None else METRICS[metric](out, ref))

    @torch.no_grad()
    def update(self, setting: str, batch, predictions: dict[str, torch.Tensor]) -> None:
        metrics = [m for m in self.metrics if m in COLUMNS[setting]]
        if not metrics:
            return
        ident = "CSIM" in metrics
        src = predictions["copy_source"]
        feats_src = self.extractor(src, descriptor=ident)
        has_gt = batch.target is not batch.driving  # cross identity on synthetic data: a rendered ground truth
        # the driving frame's descriptor only serves the ground-truth row, where the driving frame is the ground truth
        feats_drv = self.extractor(batch.driving, descriptor=ident and not has_gt)
        feats_gt = self.extractor(batch.target, descriptor=ident) if has_gt else feats_drv
        outputs = {m: feats_src if image is src else self.extractor(image, descriptor=ident)
                   for m, image in predictions.items()}  # fmt: skip
        outputs["ground_truth"] = feats_gt
        if has_gt:
            self.gt_settings.add(setting)
        elif setting == "same_identity":
            self.gt_settings.add(setting)  # the driving frame is the ground truth of a reconstruction
        for method, feats in outputs.items():
            for i, out in enumerate(feats):
                for metric in metrics:
                    ref = feats_src[i] if metric == "CSIM" else feats_drv[i]
                    self._score((setting, method), metric, out, ref)
                if has_gt and method != "ground_truth":
                    for metric in (m for m in DRIVING_METRICS if m in self.metrics):
                        self._score((setting, method, "vs_gt"), metric, out, feats_gt[i])

    def results(self, setting: str, method: str) -> dict:
        metrics = [m for m in self.metrics if m in COLUMNS[setting]]
        out = {m.lower(): self.sums.value((setting, method, m)) for m in metrics}
        return out | {"faces": self.sums.faces([(setting, method, m) for m in metrics])}

    def ground_truth(self, setting: str, methods: tuple[str, ...]) -> dict | None:
        if setting not in self.gt_settings:
            return None
        block = {"ground_truth": self.results(setting, "ground_truth")}
        if setting == "cross_identity":
            metrics = [m for m in DRIVING_METRICS if m in self.metrics]
            block["against_ground_truth"] = {
                method: {m.lower(): self.sums.value((setting, method, "vs_gt", m)) for m in metrics}
                for method in methods}  # fmt: skip
        return block


class FaceMetricSuite:
    """The user's extractors (``--*-weights``) where given, else the offline ones, else a "not run" reason."""

    def __init__(self, hooks: ExtractorMetrics, offline: OfflineFaceMetrics | None, offline_reason: str):
        self.hooks, self.offline, self.offline_reason = hooks, offline, offline_reason

    def update(self, setting: str, batch, predictions: dict[str, torch.Tensor]) -> None:
        self.hooks.update(setting, batch, predictions)
        if self.offline is not None:
            self.offline.update(setting, batch, predictions)

    def source_of(self, metric: str) -> str:
        if self.hooks.extractors.get(HOOK_OF[metric]) is not None:
            return "hook"
        return "offline" if self.offline is not None and metric in self.offline.metrics else "none"

    def results(self, setting: str, method: str) -> dict:
        out = self.hooks.results(setting, method)
        offline = self.offline.results(setting, method) if self.offline is not None else {}
        for metric in COLUMNS[setting]:
            if metric not in HOOK_OF:
                continue
            where = self.source_of(metric)
            if where == "offline":
                out[metric.lower()] = offline[metric.lower()]
            elif where == "none":
                out[metric.lower()] = f"not run: {self.offline_reason}"
        if "faces" in offline:
            out["faces"] = offline["faces"]
        return out

    def close(self) -> None:
        """Release the landmarker (MediaPipe complains at interpreter exit about one left open)."""
        if self.offline is not None:
            self.offline.extractor.close()

    def describe(self) -> dict:
        """What computed each metric (for the JSON), with the offline definitions and their differences."""
        from export3d.evaluation.face_features import DESCRIPTION

        out = {}
        for metric, kind in HOOK_OF.items():
            where = self.source_of(metric)
            out[metric] = {"hook": f"{kind} extractor from {self.hooks.paths.get(kind)}",
                           "offline": DESCRIPTION[metric],
                           "none": f"not run: {self.offline_reason}"}[where]  # fmt: skip
        if self.offline is not None:
            out["detector"], out["resize"] = DESCRIPTION["detector"], DESCRIPTION["resize"]
        return out

    def footer(self, result: dict) -> list[str]:
        """Table notes: where each offline metric comes from, faceless pairs, the ground-truth reading."""
        if self.offline is None:
            return []
        lines = [f"{m} (offline): {d}" for m, d in self.describe().items() if m in HOOK_OF and self.source_of(m) ==
                 "offline"]  # fmt: skip
        for setting in COLUMNS:
            block = result.get(setting) or {}
            faces = (block.get("model") or {}).get("faces")
            if faces:
                missing = {m: n for m, n in faces["no_face"].items() if n}
                lines.append(f"{setting.replace('_', '-')}: pairs without a face (not scored): "
                             f"{missing or 'none'}")  # fmt: skip
            gt = block.get("face_ground_truth")
            if gt:
                row = gt["ground_truth"]
                cells = ", ".join(f"{k.upper()} {_fmt(v)}" for k, v in row.items() if k != "faces")
                lines.append(f"{setting.replace('_', '-')} ground-truth frame scored as an output: {cells}")
                for method, values in (gt.get("against_ground_truth") or {}).items():
                    cells = ", ".join(f"{k.upper()} {_fmt(v)}" for k, v in values.items())
                    lines.append(f"  {method} against the ground-truth frame instead of the driving frame: {cells}")
        return lines

    def add_to(self, metrics: dict) -> None:
        """Write the face metrics of every setting and method into ``evaluate``'s result blocks."""
        for setting, block in metrics.items():
            methods = tuple(m for m in ("model", "copy_source") if block and m in block)
            for method in methods:
                block[method].update(self.results(setting, method))
            if block and self.offline is not None:
                gt = self.offline.ground_truth(setting, methods)
                if gt is not None:
                    block["face_ground_truth"] = gt


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def build_face_metrics(args: argparse.Namespace, device: torch.device) -> FaceMetricSuite:
    """The hooks of ``args`` plus, unless ``--no-face-metrics`` or the extra is missing, the offline extractors."""
    from export3d.data.landmarker import MissingExtraError

    hooks = build_extractors(args, device)
    if getattr(args, "no_face_metrics", False):
        return FaceMetricSuite(hooks, None, "--no-face-metrics given")
    needed = tuple(m for m, kind in HOOK_OF.items() if hooks.extractors.get(kind) is None)
    if not needed:
        return FaceMetricSuite(hooks, None, "")
    from export3d.evaluation.face_features import FaceFeatureExtractor

    try:
        extractor = FaceFeatureExtractor()
    except MissingExtraError as err:
        return FaceMetricSuite(hooks, None, str(err))
    return FaceMetricSuite(hooks, OfflineFaceMetrics(extractor, needed), "")
