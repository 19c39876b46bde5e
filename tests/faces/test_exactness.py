"""The port against TFLite's own interpreter on identical inputs (fp32): landmarks within 0.05 px and blendshapes
within 1e-3 on real and synthetic face crops; and against MediaPipe's whole landmarker on the same faces."""

import numpy as np
import pytest
import torch

LANDMARK_TOL = 0.05  # px, at 256 px
BLENDSHAPE_TOL = 1e-3


@pytest.mark.parametrize("kind", ["astronaut", "synthetic"])
def test_landmarks_and_presence_match_tflite(mesh, tflite, faces, kind):
    images = faces[kind]
    with torch.no_grad():
        got = mesh.predict(images, align=0)
    landmarks, presence = tflite.landmarks(images)
    assert landmarks.abs().amax() > 50  # pixels of a 256 px crop, not normalised coordinates
    err = (got.landmarks - landmarks).abs().amax((1, 2))  # [B]
    assert err.max() <= LANDMARK_TOL, f"per image max |port - TFLite| (px): {err.tolist()}"
    torch.testing.assert_close(got.presence, presence, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["astronaut", "synthetic"])
def test_blendshapes_match_tflite(mesh, tflite, faces, kind):
    images = faces[kind]
    with torch.no_grad():
        got = mesh.predict(images, align=0)
    landmarks, _ = tflite.landmarks(images)
    expected = tflite.blendshapes(landmarks[:, mesh.subset, :2])  # TFLite end to end: its landmarks, its blendshapes
    err = (got.blendshapes - expected).abs().amax(1)
    assert err.max() <= BLENDSHAPE_TOL, f"per image max |port - TFLite|: {err.tolist()}"
    assert expected.amax() > 0.2  # some expression is read, the comparison is not of zeros
    # the blendshape network alone, on identical points
    torch.testing.assert_close(mesh.blendshapes_of(landmarks), expected, atol=1e-4, rtol=0)


def test_blendshape_network_on_perturbed_points(mesh, tflite, faces):
    """Points far from any training face: the normalisation and the mixer still agree with TFLite."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        points = mesh.predict(faces["astronaut"][:2], align=0).landmarks[:, mesh.subset, :2]
    points = torch.cat([points + 6 * torch.randn(points.shape, generator=gen), 500 * torch.rand(2, 146, 2,
                                                                                                 generator=gen)])
    torch.testing.assert_close(mesh.blendshaper(points), tflite.blendshapes(points), atol=1e-4, rtol=0)


def test_detector_matches_tflite(mesh, tflite, faces):
    from export3d.faces.detection import anchors
    from export3d.faces.roi import Roi

    images = torch.cat([faces["astronaut"][:3], faces["synthetic"][:3]])
    inputs = Roi.whole(images).crop(images, 128, border="zeros")  # [-1, 1] is the detector's own range
    with torch.no_grad():
        got = mesh.detector(inputs)
    logits, raw = tflite.detector(inputs)
    torch.testing.assert_close(got.logits, logits, atol=2e-3, rtol=0)
    torch.testing.assert_close(got.raw, raw, atol=2e-3, rtol=0)  # pixels of the 128 px input
    assert logits.amax(1).min() > 1.0  # every face is found (sigmoid > 0.73)
    centres = anchors()
    assert centres.shape == (896, 2)
    torch.testing.assert_close(centres[[0, 1, 2, 512, 517, 518]], torch.tensor(
        [[1 / 32, 1 / 32], [1 / 32, 1 / 32], [3 / 32, 1 / 32], [1 / 16, 1 / 16], [1 / 16, 1 / 16], [3 / 16, 1 / 16]]))


def test_end_to_end_against_mediapipe(mesh, faces):
    """MediaPipe's FaceLandmarker (IMAGE mode) detects the face, cuts it out and runs the landmark model on that
    crop: the port's roi="detector" does the same (within a fraction of a pixel); the network on the whole crop
    (roi="whole") is off by pixels; MediaPipe's tracking crop (align 2) brings it within about one pixel."""
    pytest.importorskip("mediapipe")
    from export3d.data.landmarker import FaceLandmarker
    from export3d.utils.images import to_uint8

    pixels = to_uint8(torch.cat([faces["astronaut"], faces["synthetic"]]))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1  # MediaPipe's very input
    with FaceLandmarker(video=False) as landmarker:
        found = [landmarker.detect(px) for px in pixels]
    assert all(f is not None for f in found)
    reference = torch.from_numpy(np.stack([f.landmarks for f in found])).float()  # [B, 478, 2]
    blendshapes = torch.from_numpy(np.stack([f.blendshapes for f in found]))
    dist, aed = {}, {}
    with torch.no_grad():
        for name, roi, align in (("detector", "detector", 0), ("whole", "whole", 0), ("tracked", "whole", 2)):
            out = mesh.predict(images, roi=roi, align=align)
            dist[name] = (out.landmarks[..., :2] - reference).norm(dim=-1).mean(1)  # [B] px
            aed[name] = (out.blendshapes - blendshapes).abs().mean(1)  # [B]
            assert out.face.all() or name == "whole"
    assert dist["detector"].max() < 0.5 and aed["detector"].max() < 0.01, (dist["detector"], aed["detector"])
    assert dist["tracked"].mean() < 1.5 and aed["tracked"].mean() < 0.04, (dist["tracked"], aed["tracked"])
    assert dist["whole"].mean() > 2 * dist["tracked"].mean()  # the crop is what separates them
