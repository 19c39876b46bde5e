"""AKD / CSIM / AED / APD from the offline extractors (:mod:`~export3d.evaluation.face_features`), by default.

Paper definitions (Table 1) with this project's extractors: AKD between the output and the driving frame
(same identity only), CSIM between the output and the source, AED and APD between the output and the driving
frame. Every method of a setting is scored on the same pairs: those where every compared image (the model's
output, copy-the-source's, the ground-truth frame) and the metric's reference have a face. Each method's
face rate (faces found / pairs, ``face_rate``) and the pairs scored (``faces``) are reported beside the means.
Two more readings:

- ``ground_truth``: the ground-truth frame scored as if it were an output (same identity: the driving frame
  itself, so AKD / AED / APD are 0 and CSIM is the source-vs-driving similarity of one person; cross identity,
  synthetic data only: person A rendered with B's expression from B's camera). What a perfect model scores.
- ``against_ground_truth`` (cross identity): AKD / AED / APD of each method against that ground-truth frame
  instead of person B's driving frame, i.e. without B's face shape in the comparison.

A user-supplied extractor (``--landmarks-weights``, ``--identity-weights``, ``--3dmm-weights``;
:mod:`~export3d.evaluation.extractors`) replaces the offline one for its metrics. ``--no-face-metrics`` turns
the offline ones off; without the ``faces`` extra they read "not run" with the install command.

``face_backend="port"`` (``args.face_backend``) computes AKD and AED with the PyTorch port of MediaPipe's
networks (:class:`~export3d.evaluation.face_features.MeshFeatureExtractor`: batched, on the evaluation device,
no dlib and no MediaPipe runtime; AKD over MediaPipe's 478 points); CSIM and APD then read "not run".
"""

from __future__ import annotations

import argparse

import torch

from export3d.evaluation.extractors import COLUMNS, EXTRACTORS, ExtractorMetrics, build_extractors

HOOK_OF = {metric: kind for kind, metrics in EXTRACTORS.items() for metric in metrics}  # "AKD" -> "landmarks"
DRIVING_METRICS = ("AKD", "AED", "APD")  # compared with the driving frame (CSIM: with the source)
FACE_BACKENDS = ("mediapipe", "port")
FACE_BACKEND_HELP = ("offline face metrics from MediaPipe + dlib (mediapipe: AKD / CSIM / AED / APD, one image at a "
                     "time on the CPU) or from the PyTorch port of MediaPipe's networks (port: AKD over its 478 "
                     "points and AED, batched on the device)")  # fmt: skip
PORT_METRICS = ("AKD", "AED")


class OfflineFaceMetrics:
    """Accumulates the offline metrics per setting and method (``update`` has ExtractorMetrics' signature).

    Every method compared in a setting (the model, copy-the-source and the ground-truth frame) is scored on
    the same pairs: those where MediaPipe finds a face in every method's image and in the metric's reference
    (the source for CSIM, the driving frame for AKD / AED / APD). Otherwise a method that draws faces less
    often would be averaged over fewer, and other, pairs than the baseline beside it. Each method's own
    detection rate (faces found / pairs) is kept apart, so a low one shows instead of hiding in the means.
    """

    def __init__(self, extractor, metrics: tuple[str, ...] = ("AKD", "CSIM", "AED", "APD")):
        from export3d.evaluation.face_features import METRICS

        self.extractor = extractor
        self.metrics = metrics
        self.functions = getattr(extractor, "metric_functions", METRICS)  # metric name -> fn(features, reference)
        self.pairs: dict[str, int] = {}  # setting -> pairs seen
        self.methods: dict[str, tuple[str, ...]] = {}  # setting -> the methods compared ("ground_truth" included)
        self.found: dict[tuple[str, str], int] = {}  # (setting, method) -> pairs whose image has a face
        self.scored: dict[tuple, int] = {}  # (setting, metric) or (setting, "vs_gt", metric) -> pairs scored
        self.sums: dict[tuple, float] = {}  # the scored key + (method,) -> sum over the scored pairs

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
        if has_gt or setting == "same_identity":  # a reconstruction's ground truth is its driving frame
            outputs["ground_truth"] = feats_gt
        self.methods[setting] = tuple(outputs)
        for i, (src_i, drv_i) in enumerate(zip(feats_src, feats_drv, strict=True)):
            self._pair(setting, metrics, {m: feats[i] for m, feats in outputs.items()}, src_i, drv_i, has_gt)

    def _pair(self, setting: str, metrics: list[str], outs: dict, src, drv, vs_gt: bool) -> None:
        """One pair: count the faces found; score it where every compared image and the reference have one."""
        self.pairs[setting] = self.pairs.get(setting, 0) + 1
        for method, feats in outs.items():
            self.found[setting, method] = self.found.get((setting, method), 0) + (feats is not None)
        if any(feats is None for feats in outs.values()):
            return  # a method without a face here: the pair is scored for none of them
        for metric in metrics:
            ref = src if metric == "CSIM" else drv
            if ref is not None:
                self._add((setting, metric), {m: self.functions[metric](out, ref) for m, out in outs.items()})
        if vs_gt:
            gt = outs["ground_truth"]
            for metric in (m for m in DRIVING_METRICS if m in self.metrics):
                score = self.functions[metric]
                self._add((setting, "vs_gt", metric), {m: score(o, gt) for m, o in outs.items() if m != "ground_truth"})

    def _add(self, key: tuple, values: dict[str, float]) -> None:
        self.scored[key] = self.scored.get(key, 0) + 1
        for method, value in values.items():
            self.sums[(*key, method)] = self.sums.get((*key, method), 0.0) + value

    def _mean(self, key: tuple, method: str) -> float | str:
        n = self.scored.get(key, 0)
        return self.sums[(*key, method)] / n if n else self._not_run(key[0])

    def _not_run(self, setting: str) -> str:
        pairs = self.pairs.get(setting, 0)
        if not pairs:
            return "not run: no samples"
        found = ", ".join(f"{m} {self.found[setting, m]}/{pairs}" for m in self.methods[setting])
        return f"not run: no face found in all of a pair's images in any of the {pairs} pairs (faces: {found})"

    def face_rate(self, setting: str, method: str) -> float | str:
        """Pairs whose ``method`` image has a face / pairs."""
        pairs = self.pairs.get(setting, 0)
        return self.found.get((setting, method), 0) / pairs if pairs else "not run: no samples"

    def results(self, setting: str, method: str) -> dict:
        """The metrics of ``method`` on the common pairs, its face rate, and the counts behind both."""
        metrics = [m for m in self.metrics if m in COLUMNS[setting]]
        out = {m.lower(): self._mean((setting, m), method) for m in metrics}
        faces = {"pairs": self.pairs.get(setting, 0), "found": self.found.get((setting, method), 0),
                 "scored": {m: self.scored.get((setting, m), 0) for m in metrics}}  # fmt: skip
        return out | {"face_rate": self.face_rate(setting, method), "faces": faces}

    def ground_truth(self, setting: str, methods: tuple[str, ...]) -> dict | None:
        if "ground_truth" not in self.methods.get(setting, ()):
            return None
        block = {"ground_truth": self.results(setting, "ground_truth")}
        if setting == "cross_identity":
            metrics = [m for m in DRIVING_METRICS if m in self.metrics]
            block["against_ground_truth"] = {
                method: {m.lower(): self._mean((setting, "vs_gt", m), method) for m in metrics}
                for method in methods}  # fmt: skip
            block["against_ground_truth_scored"] = {m: self.scored.get((setting, "vs_gt", m), 0) for m in metrics}
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
            out["face_rate"], out["faces"] = offline["face_rate"], offline["faces"]
        return out

    def close(self) -> None:
        """Release the landmarker (MediaPipe complains at interpreter exit about one left open)."""
        if self.offline is not None:
            self.offline.extractor.close()

    def describe(self) -> dict:
        """What computed each metric (for the JSON), with the offline definitions and their differences."""
        from export3d.evaluation.face_features import DESCRIPTION

        offline = getattr(self.offline.extractor, "description", DESCRIPTION) if self.offline else DESCRIPTION
        out = {}
        for metric, kind in HOOK_OF.items():
            where = self.source_of(metric)
            out[metric] = {"hook": f"{kind} extractor from {self.hooks.paths.get(kind)}",
                           "offline": offline.get(metric),
                           "none": f"not run: {self.offline_reason}"}[where]  # fmt: skip
        if self.offline is not None:
            out["detector"], out["resize"] = offline["detector"], offline["resize"]
        return out

    def footer(self, result: dict) -> list[str]:
        """Table notes: where each offline metric comes from, the pairs scored, the ground-truth reading."""
        if self.offline is None:
            return []
        lines = [f"{m} (offline): {d}" for m, d in self.describe().items() if m in HOOK_OF and self.source_of(m) ==
                 "offline"]  # fmt: skip
        for setting in COLUMNS:
            block = result.get(setting) or {}
            gt = block.get("face_ground_truth")
            rows = {m: block[m] for m in ("model", "copy_source") if "faces" in (block.get(m) or {})}
            if gt:
                rows["ground truth"] = gt["ground_truth"]
            faces = next(iter(rows.values()))["faces"] if rows else {"pairs": 0}
            if not faces["pairs"]:
                continue
            name = setting.replace("_", "-")
            found = ", ".join(f"{who} {r['faces']['found']}/{r['faces']['pairs']}" for who, r in rows.items())
            lines.append(f"{name}: face metrics on the same {_counts(faces['scored'])} of {faces['pairs']} for every "
                         "method, those where every compared image and the metric's reference (source for CSIM, "
                         f"driving frame for AKD / AED / APD) have a face; faces found: {found}")  # fmt: skip
            if gt:
                cells = ", ".join(f"{k.upper()} {_fmt(v)}" for k, v in gt["ground_truth"].items()
                                  if k not in ("faces", "face_rate"))  # fmt: skip
                lines.append(f"{name} ground-truth frame scored as an output: {cells}")
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


def _counts(scored: dict[str, int]) -> str:
    """``{"AKD": 9, "CSIM": 9}`` -> "9 pairs"; differing counts are listed per metric."""
    if len(set(scored.values())) == 1:
        return f"{next(iter(scored.values()))} pairs"
    return "pairs " + ", ".join(f"{m} {n}" for m, n in scored.items())


def build_face_metrics(args: argparse.Namespace, device: torch.device) -> FaceMetricSuite:
    """The hooks of ``args`` plus, unless ``--no-face-metrics`` or the extra is missing, the offline extractors
    of ``args.face_backend`` (:data:`FACE_BACKENDS`; "mediapipe" when the attribute is absent)."""
    from export3d.utils.extras import MissingExtraError

    hooks = build_extractors(args, device)
    if getattr(args, "no_face_metrics", False):
        return FaceMetricSuite(hooks, None, "--no-face-metrics given")
    needed = tuple(m for m, kind in HOOK_OF.items() if hooks.extractors.get(kind) is None)
    if not needed:
        return FaceMetricSuite(hooks, None, "")
    backend = getattr(args, "face_backend", None) or "mediapipe"
    if backend not in FACE_BACKENDS:
        raise ValueError(f"--face-backend must be one of {FACE_BACKENDS}, got {backend!r}")
    from export3d.evaluation.face_features import FaceFeatureExtractor, MeshFeatureExtractor

    try:
        extractor = MeshFeatureExtractor(device) if backend == "port" else FaceFeatureExtractor()
    except MissingExtraError as err:
        return FaceMetricSuite(hooks, None, str(err))
    if backend == "port":
        reason = "the port (--face-backend port) gives AKD and AED only; --face-backend mediapipe computes it"
        return FaceMetricSuite(hooks, OfflineFaceMetrics(extractor, tuple(m for m in needed if m in PORT_METRICS)),
                               reason)  # fmt: skip
    return FaceMetricSuite(hooks, OfflineFaceMetrics(extractor, needed), "")
