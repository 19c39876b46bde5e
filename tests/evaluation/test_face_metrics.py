"""Offline AKD / CSIM / AED / APD: each near zero for a frame against itself and clearly not for another frame;
faceless pairs counted, not scored; the ground-truth readings; user hooks take precedence."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

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


@pytest.fixture(scope="module")
def features():
    from export3d.data import SyntheticClips, SyntheticConfig
    from export3d.evaluation.face_features import FaceFeatureExtractor

    heads = SyntheticClips(SyntheticConfig(resolution=SIZE, test_identities=1, clips_per_identity=1,
                                           frames_per_clip=1), "test")  # fmt: skip
    images = torch.stack([astronaut(0), astronaut(5), heads.load([(0, [0])])[0]["image"][0],
                          torch.zeros(3, SIZE, SIZE)])  # fmt: skip
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
    assert got["faces"]["scored"]["AKD"] == 1 and got["faces"]["no_face"] == {"AKD": 1, "CSIM": 1, "AED": 1, "APD": 1}
    copy = metrics.results("same_identity", "copy_source")
    assert copy["csim"] == 1.0 and copy["aed"] == pytest.approx(0.5)
    gt = metrics.ground_truth("same_identity", ("model", "copy_source"))["ground_truth"]
    assert gt["akd"] == 0.0 and gt["aed"] == 0.0 and gt["csim"] == pytest.approx(0.75)  # the driving frame itself
    target = _images(0.25, 0.25)
    metrics.update("cross_identity", EvalBatch(source, driving, None, None, target),
                   {"model": _images(-1.0, -1.0), "copy_source": source})  # fmt: skip
    assert metrics.results("cross_identity", "model")["aed"] == "not run: no face found in 2 of 2 pairs"
    assert "akd" not in metrics.results("cross_identity", "model")  # AKD is same-identity only (paper Table 1)
    block = metrics.ground_truth("cross_identity", ("model", "copy_source"))
    assert block["ground_truth"]["aed"] == pytest.approx(0.25)  # the rendered ground truth vs the driving frame
    assert block["against_ground_truth"]["copy_source"]["aed"] == pytest.approx(0.25)


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
    from export3d.data.landmarker import MissingExtraError
    from export3d.evaluation import face_features
    from export3d.evaluation.face_metrics import build_face_metrics

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
