"""Offline AKD / CSIM / AED / APD: each near zero for a frame against itself and clearly not for another frame;
every method scored on the same pairs (those where every compared image has a face), each method's face rate;
the ground-truth readings; user hooks take precedence. The port's AKD / AED (--face-backend port) and how close
they come to the MediaPipe path's on the same images."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from export3d.evaluate import format_paper_table
from export3d.evaluation.extractors import ExtractorMetrics
from export3d.evaluation.face_features import FaceFeatures, akd, apd
from export3d.evaluation.face_metrics import FaceMetricSuite, OfflineFaceMetrics
from export3d.evaluation.scoring import EvalBatch
from tests.data.faces import PIVOT, motion

SIZE = 64


def astronaut(t: int) -> torch.Tensor:
    """The astronaut's face with frame t's in-plane rotation of the test clip, 64 px. # [3, 64, 64]"""
    import cv2
    import skimage.data

    m = cv2.getRotationMatrix2D(PIVOT, motion(t)[0], 1.0)  # counter-clockwise on screen about the face
    m[:, 2] -= (PIVOT[0] - 110, PIVOT[1] - 100)  # a 220 px window with the face in the middle
    face = cv2.warpAffine(skimage.data.astronaut(), m, (220, 220), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
    face = cv2.resize(face, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(face).permute(2, 0, 1).float() / 127.5 - 1


# The port's AKD (478 MediaPipe points, pixels at 64 px) and AED against the MediaPipe path's on the same pair,
# at most: measured 0.089 px and 0.0072 over 30 pairs of astronaut crops and synthetic heads at 64 px
# (python -m benchmarks.bench_faces; docs/faces.md)
PORT_AKD_TOL, PORT_AED_TOL = 0.25, 0.015


@pytest.fixture(scope="module")
def images():
    from export3d.data import SyntheticClips, SyntheticConfig

    heads = SyntheticClips(SyntheticConfig(resolution=SIZE, test_identities=1, clips_per_identity=1,
                                           frames_per_clip=1), "test")  # fmt: skip
    return torch.stack([astronaut(0), astronaut(5), heads.load([(0, [0])])[0]["image"][0],
                        torch.zeros(3, SIZE, SIZE)])  # fmt: skip


@pytest.fixture(scope="module")
def features(images):
    from export3d.evaluation.face_features import FaceFeatureExtractor

    extractor = FaceFeatureExtractor()
    try:
        return extractor(images, descriptor=True)
    finally:
        extractor.close()


def test_every_metric_is_zero_for_a_frame_against_itself(features):
    from export3d.evaluation.face_features import METRICS

    for f in features[:3]:
        got = {name: fn(f, f) for name, fn in METRICS.items()}
        assert got == {"AKD": 0.0, "CSIM": 1.0, "AED": 0.0, "APD": 0.0}


def test_metrics_separate_other_frames(features):
    from export3d.evaluation.face_features import METRICS

    a0, a5, head, blank = features
    assert blank is None  # a black frame: no face, so no features
    assert a0.landmarks68.shape == (68, 2) and a0.blendshapes.shape == (52,) and a0.descriptor.shape == (128,)
    assert ((a0.landmarks68 >= 0) & (a0.landmarks68 < SIZE)).all()  # pixels at the model's 64 px
    roll = motion(5)[0] - motion(0)[0]  # the applied in-plane rotation between the two frames
    assert roll > 8
    assert abs(a5.pose[2] - a0.pose[2] - roll) < 3  # the PnP roll follows it
    assert akd(a0, a5) > 1.0 and apd(a0, a5) > roll / 3 - 1
    same, other = METRICS["CSIM"](a0, a5), METRICS["CSIM"](a0, head)
    assert 0.75 < same < 1.0 and other < 0.72  # same person rotated vs a synthetic head
    assert METRICS["AED"](a0, head) > 0.05
    assert a0.mesh.shape == (478, 2) and ((a0.mesh >= 0) & (a0.mesh < SIZE)).all()  # MediaPipe's, at 64 px


@pytest.fixture(scope="module")
def port():
    from export3d.evaluation.face_features import MeshFeatureExtractor
    from export3d.utils.extras import MissingExtraError

    try:
        return MeshFeatureExtractor("cpu")
    except MissingExtraError as err:
        pytest.skip(f"the face model bundle is not installed: {err}")


def test_port_features_separate_frames_and_skip_a_blank(port, images):
    from export3d.evaluation.face_features import MESH_METRICS, mesh_scores

    a0, a5, head, blank = port(images)
    assert blank is None  # the landmark network's presence score is below 0.5 on a black frame
    assert a0.mesh.shape == (478, 2) and a0.blendshapes.shape == (52,) and a0.landmarks68 is None
    assert ((a0.mesh >= 0) & (a0.mesh < SIZE)).all()
    for f in (a0, a5, head):
        assert {name: fn(f, f) for name, fn in MESH_METRICS.items()} == {"AKD": 0.0, "AED": 0.0}
    assert MESH_METRICS["AKD"](a0, a5) > 1.0 and MESH_METRICS["AED"](a0, head) > 0.05
    # the batched scores on the device are the per-image ones
    out = port.predict(images)
    scores = mesh_scores(tuple(t[:3] for t in out), tuple(t[[1, 2, 0]] for t in out))
    expected = [MESH_METRICS["AKD"](a, b) for a, b in ((a0, a5), (a5, head), (head, a0))]
    torch.testing.assert_close(scores["akd"].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)
    assert scores["faces"].all() and not out[2][3]


def test_port_agrees_with_the_mediapipe_path(port, features, images):
    from export3d.evaluation.face_features import MESH_METRICS

    ours = port(images)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        for metric, tol in (("AKD", PORT_AKD_TOL), ("AED", PORT_AED_TOL)):
            fn = MESH_METRICS[metric]
            port_value, mediapipe_value = fn(ours[i], ours[j]), fn(features[i], features[j])
            assert abs(port_value - mediapipe_value) <= tol, (metric, i, j, port_value, mediapipe_value)


def test_build_face_metrics_with_the_port(port):
    from export3d.evaluation.face_metrics import build_face_metrics

    args = SimpleNamespace(landmarks_weights=None, identity_weights=None, threedmm_weights=None,
                           extractor_plugin=None, no_face_metrics=False, face_backend="port")  # fmt: skip
    suite = build_face_metrics(args, torch.device("cpu"))
    assert suite.offline.metrics == ("AKD", "AED") and suite.source_of("CSIM") == "none"
    source, driving = _images(0.0, 0.1), _images(0.5, 0.5)
    suite.update("same_identity", EvalBatch(source, driving, None, None, driving),
                 {"model": _images(0.2, 0.3), "copy_source": source})  # fmt: skip
    got = suite.results("same_identity", "model")
    assert got["csim"].startswith("not run: the port (--face-backend port) gives AKD and AED only")
    assert got["face_rate"] == 0.0  # flat grey frames: no face for the landmark network either
    assert suite.describe()["AKD"].startswith("mean distance of MediaPipe's 478 landmarks")
    with pytest.raises(ValueError, match="--face-backend must be one of"):
        build_face_metrics(SimpleNamespace(**{**vars(args), "face_backend": "dlib"}), torch.device("cpu"))


class FakeExtractor:
    """Features from an image's mean value m: points at (m, m), blendshapes m, pose (m, 0, 0), descriptor (m, 0);
    an image whose mean is below -0.9 has no face."""

    def __call__(self, images, descriptor=False):
        out = []
        for m in images.float().mean((1, 2, 3)).tolist():
            if m < -0.9:
                out.append(None)
                continue
            out.append(FaceFeatures(np.full((68, 2), m), np.full(52, m, np.float32), np.array([m, 0.0, 0.0]),
                                    np.array([m, 0.0]) if descriptor else None))  # fmt: skip
        return out


def _images(*values):
    return torch.stack([torch.full((3, 4, 4), v) for v in values])


def test_faceless_pairs_are_counted_not_scored_and_ground_truth_readings():
    metrics = OfflineFaceMetrics(FakeExtractor())
    source, driving = _images(0.0, 0.0), _images(0.5, 0.5)
    model = _images(1.0, -1.0)  # the second output has no face
    metrics.update("same_identity", EvalBatch(source, driving, None, None, driving),
                   {"model": model, "copy_source": source})  # fmt: skip
    got = metrics.results("same_identity", "model")
    assert got["akd"] == pytest.approx(0.5 * math.sqrt(2)) and got["aed"] == pytest.approx(0.5)
    assert got["apd"] == pytest.approx(0.5 / 3) and got["csim"] == pytest.approx(1 - 1.0 / 2)
    assert got["faces"] == {"pairs": 2, "found": 1, "scored": {"AKD": 1, "CSIM": 1, "AED": 1, "APD": 1}}
    assert got["face_rate"] == 0.5
    copy = metrics.results("same_identity", "copy_source")
    assert copy["csim"] == 1.0 and copy["aed"] == pytest.approx(0.5) and copy["face_rate"] == 1.0
    assert copy["faces"]["scored"] == got["faces"]["scored"]  # the pair without the model's face is nobody's
    gt = metrics.ground_truth("same_identity", ("model", "copy_source"))["ground_truth"]
    assert gt["akd"] == 0.0 and gt["aed"] == 0.0 and gt["csim"] == pytest.approx(0.75)  # the driving frame itself
    target = _images(0.25, 0.25)
    metrics.update("cross_identity", EvalBatch(source, driving, None, None, target),
                   {"model": _images(-1.0, -1.0), "copy_source": source})  # fmt: skip
    reason = "not run: no face found in all of a pair's images in any of the 2 pairs (faces: model 0/2, " \
             "copy_source 2/2, ground_truth 2/2)"
    assert metrics.results("cross_identity", "model")["aed"] == reason
    assert metrics.results("cross_identity", "copy_source")["aed"] == reason  # not on other pairs than the model
    assert metrics.results("cross_identity", "model")["face_rate"] == 0.0
    assert "akd" not in metrics.results("cross_identity", "model")  # AKD is same-identity only (paper Table 1)
    block = metrics.ground_truth("cross_identity", ("model", "copy_source"))
    assert block["ground_truth"]["aed"] == reason and block["ground_truth"]["face_rate"] == 1.0
    assert block["against_ground_truth"]["copy_source"]["aed"] == reason


def test_every_method_is_scored_on_the_pairs_where_all_have_a_face():
    metrics = OfflineFaceMetrics(FakeExtractor())
    source, driving = _images(0.0, 0.1, 0.2, 0.3), _images(0.5, 0.5, 0.5, 0.5)
    model = _images(0.9, -1.0, 0.6, -1.0)  # no face in pairs 1 and 3
    metrics.update("same_identity", EvalBatch(source, driving, None, None, driving),
                   {"model": model, "copy_source": source})  # fmt: skip
    copy = metrics.results("same_identity", "copy_source")
    # pairs 0 and 2 only: |0.0 - 0.5| and |0.2 - 0.5| (all four pairs would give 0.35)
    assert copy["aed"] == pytest.approx((0.5 + 0.3) / 2) and copy["apd"] == pytest.approx((0.5 + 0.3) / 2 / 3)
    assert copy["akd"] == pytest.approx((0.5 + 0.3) / 2 * math.sqrt(2)) and copy["csim"] == 1.0
    got = metrics.results("same_identity", "model")
    assert got["aed"] == pytest.approx((0.4 + 0.1) / 2) and got["csim"] == pytest.approx(1 - (0.9 + 0.4) / 2 / 2)
    gt = metrics.ground_truth("same_identity", ("model", "copy_source"))["ground_truth"]
    assert gt["csim"] == pytest.approx(1 - (0.5 + 0.3) / 2 / 2)  # the driving frame vs the source, same two pairs
    assert (got["face_rate"], copy["face_rate"], gt["face_rate"]) == (0.5, 1.0, 1.0)
    for row in (got, copy, gt):
        assert row["faces"]["scored"] == {"AKD": 2, "CSIM": 2, "AED": 2, "APD": 2} and row["faces"]["pairs"] == 4

    # cross identity: B's driving frame is the reference of AED / APD only, so its missing face drops the pair
    # from those two metrics and not from CSIM (against the source)
    source, driving, target = _images(0.0, 0.0), _images(0.5, -1.0), _images(0.25, 0.25)
    metrics.update("cross_identity", EvalBatch(source, driving, None, None, target),
                   {"model": _images(0.2, 0.4), "copy_source": source})  # fmt: skip
    got, copy = metrics.results("cross_identity", "model"), metrics.results("cross_identity", "copy_source")
    assert got["faces"]["scored"] == {"CSIM": 2, "AED": 1, "APD": 1} and got["face_rate"] == 1.0
    assert got["csim"] == pytest.approx(1 - 0.3 / 2) and got["aed"] == pytest.approx(0.3)  # AED: pair 0 only
    assert copy["csim"] == 1.0 and copy["aed"] == pytest.approx(0.5)
    block = metrics.ground_truth("cross_identity", ("model", "copy_source"))
    assert block["ground_truth"]["aed"] == pytest.approx(0.25) and block["ground_truth"]["csim"] == 0.875
    against = block["against_ground_truth"]  # the ground-truth frame as reference: both pairs
    assert against["model"]["aed"] == pytest.approx((0.05 + 0.15) / 2) and against["copy_source"]["aed"] == 0.25
    assert block["against_ground_truth_scored"] == {"AKD": 2, "AED": 2, "APD": 2}


def test_table_shows_each_methods_face_rate_and_the_pairs_scored():
    suite = FaceMetricSuite(ExtractorMetrics({"landmarks": None, "identity": None, "3dmm": None}, {}),
                            OfflineFaceMetrics(FakeExtractor()), "")  # fmt: skip
    source, driving = _images(0.0, 0.1, 0.2, 0.3), _images(0.5, 0.5, 0.5, 0.5)
    suite.update("same_identity", EvalBatch(source, driving, None, None, driving),
                 {"model": _images(0.9, -1.0, 0.6, 0.7), "copy_source": source})  # fmt: skip
    pixels = {"psnr": 20.0, "ssim": 0.5, "lpips_random_vgg": 0.1}
    result = {"same_identity": {"model": dict(pixels), "copy_source": dict(pixels), "pairs": 4},
              "cross_identity": None, "lpips_network": {"pretrained": False, "source": "none"}}  # fmt: skip
    suite.add_to(result)
    assert result["same_identity"]["model"]["face_rate"] == 0.75
    assert result["same_identity"]["copy_source"]["face_rate"] == 1.0
    lines = format_paper_table(result).splitlines()
    assert "Same-identity (4 pairs; face metrics on 3)" in lines[0]
    assert lines[1].split() == ["Method", "|", "PSNR↑", "SSIM↑", "LPIPS(rand)↓", "AKD↓", "CSIM↑", "AED↓", "APD↓",
                                "Faces↑"]  # fmt: skip
    assert lines[3].startswith("Export3D (ours)") and lines[3].endswith(" 3/4")
    assert lines[4].startswith("Copy source") and lines[4].endswith(" 4/4")
    footer = "\n".join(suite.footer(result))
    assert "same-identity: face metrics on the same 3 pairs of 4 for every method" in footer
    assert "faces found: model 3/4, copy_source 4/4, ground truth 4/4" in footer


def test_user_hooks_replace_the_offline_metrics():
    mean = lambda x: x.mean((1, 2, 3))  # noqa: E731
    hooks = ExtractorMetrics({"landmarks": None, "identity": lambda x: torch.stack([mean(x), mean(x) * 0 + 1], 1),
                              "3dmm": None}, {"landmarks": "no flag"}, {"identity": "arcface.pt2"})  # fmt: skip
    suite = FaceMetricSuite(hooks, OfflineFaceMetrics(FakeExtractor(), ("AKD", "AED", "APD")), "")
    source, driving = _images(0.0), _images(0.5)
    batch = EvalBatch(source, driving, None, None, driving)
    suite.update("same_identity", batch, {"model": _images(1.0), "copy_source": source})
    got = suite.results("same_identity", "model")
    assert got["csim"] == pytest.approx(1 / math.sqrt(2))  # the hook's cosine, not the offline 1 - L2 / 2
    assert got["akd"] == pytest.approx(0.5 * math.sqrt(2)) and got["aed"] == pytest.approx(0.5)
    described = suite.describe()
    assert described["CSIM"] == "identity extractor from arcface.pt2" and described["AED"].startswith("mean absolute")
    none = FaceMetricSuite(ExtractorMetrics({"landmarks": None, "identity": None, "3dmm": None}, {}), None,
                           "mediapipe is needed ...")  # fmt: skip
    assert none.results("cross_identity", "model")["csim"] == "not run: mediapipe is needed ..."
    assert none.footer({}) == []


def test_build_face_metrics_respects_the_flags_and_a_missing_extra(monkeypatch):
    from export3d.evaluation import face_features
    from export3d.evaluation.face_metrics import build_face_metrics
    from export3d.utils.extras import MissingExtraError

    args = SimpleNamespace(landmarks_weights=None, identity_weights=None, threedmm_weights=None,
                           extractor_plugin=None, no_face_metrics=True)  # fmt: skip
    suite = build_face_metrics(args, torch.device("cpu"))
    assert suite.offline is None and suite.offline_reason == "--no-face-metrics given"

    def missing(self):
        raise MissingExtraError("dlib is needed by the face tools ... pip install -e '.[faces]'")

    monkeypatch.setattr(face_features.FaceFeatureExtractor, "__init__", missing)
    suite = build_face_metrics(SimpleNamespace(**{**vars(args), "no_face_metrics": False}), torch.device("cpu"))
    assert suite.offline is None
    assert suite.results("same_identity", "model")["akd"] == "not run: dlib is needed by the face tools ... " \
                                                             "pip install -e '.[faces]'"
