"""FaceMesh's API: shapes and names, batches, other sizes, gradients, bf16, features, alignment, loading errors."""

import math

import pytest
import torch

from export3d.faces import BLENDSHAPE_NAMES, SUBSET
from export3d.faces.roi import Roi
from tests.faces.crops import rotation_deg


def test_shapes_names_and_batch_independence(mesh, faces):
    images = faces["astronaut"][:3]
    with torch.no_grad():
        landmarks, blendshapes = mesh(images)
        single = [mesh(images[i:i + 1]) for i in range(3)]
    assert landmarks.shape == (3, 478, 3) and blendshapes.shape == (3, 52)
    assert len(BLENDSHAPE_NAMES) == 52 and BLENDSHAPE_NAMES[9] == "eyeBlinkLeft" and len(SUBSET) == 146
    assert ((blendshapes >= 0) & (blendshapes <= 1)).all()
    torch.testing.assert_close(landmarks, torch.cat([s.landmarks for s in single]), atol=1e-3, rtol=0)
    torch.testing.assert_close(blendshapes, torch.cat([s.blendshapes for s in single]), atol=1e-5, rtol=0)
    # crop 0 is upright and centred on the face: landmarks inside, eye line level, nose tip (1) near the middle
    assert ((landmarks[0, :, :2] > 0) & (landmarks[0, :, :2] < 256)).all()
    assert abs(rotation_deg(landmarks[0].numpy())) < 5
    assert (landmarks[0, 1, :2] - 128).abs().max() < 40


def test_other_sizes_are_resized_and_landmarks_stay_in_input_pixels(mesh, faces):
    images = faces["astronaut"][:2]
    small = torch.nn.functional.interpolate(images, size=128, mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        full, half = mesh(images), mesh(small)
    assert half.landmarks.shape == (2, 478, 3)
    err = (half.landmarks[..., :2] * 2 - full.landmarks[..., :2]).norm(dim=-1).mean()
    assert err < 2.0  # the same face at half the size: half the coordinates, up to the blur of going down and up
    assert (half.blendshapes - full.blendshapes).abs().mean() < 0.05
    for bad in (torch.zeros(1, 3, 256, 200), torch.zeros(1, 1, 256, 256), torch.zeros(3, 256, 256)):
        with pytest.raises(ValueError, match="square images"):
            mesh(bad)
    with pytest.raises(ValueError, match="float images"):
        mesh(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))


def test_blendshapes_ignore_where_the_face_is_and_its_size(mesh, faces):
    """The blendshape graph centres the points and divides by their mean distance from the centre first."""
    with torch.no_grad():
        landmarks = mesh.predict(faces["synthetic"][:2], roi="detector").landmarks
        base = mesh.blendshapes_of(landmarks)
        moved = mesh.blendshapes_of(landmarks * 3.0 + torch.tensor([40.0, -25.0, 7.0]))
        turned = mesh.blendshapes_of(landmarks[..., [1, 0, 2]])  # mirrored across the diagonal: another face
    torch.testing.assert_close(moved, base, atol=1e-5, rtol=0)
    assert (turned - base).abs().max() > 0.05


def test_gradients_reach_the_images_not_the_weights(mesh, faces):
    images = faces["synthetic"][:2].clone().requires_grad_(True)
    landmarks, blendshapes = mesh(images, align=1)
    (landmarks[..., :2].square().mean() + blendshapes.sum()).backward()
    grad = images.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    assert not any(p.requires_grad for p in mesh.parameters())


def test_bfloat16_is_close_to_float32(mesh, faces):
    """bf16 trunk, fp32 heads and blendshape network (FP32_PARTS): coordinates keep their sub-pixel precision."""
    images = faces["astronaut"][:3]
    half = type(mesh).from_bundle(dtype=torch.bfloat16)
    assert half.landmarker.stem.weight.dtype == torch.bfloat16 and half.blendshaper.head.weight.dtype == torch.float32
    with torch.no_grad():
        ref, got = mesh.predict(images, (2,), align=2), half.predict(images.bfloat16(), (2,), align=2)
    assert got.landmarks.dtype == torch.float32 and got.features[0].dtype == torch.bfloat16
    err = (got.landmarks - ref.landmarks)[..., :2].norm(dim=-1)
    assert err.mean() < 1.0 and err.max() < 6, (err.mean(), err.max())  # measured: 0.37 and 2.9 px (docs/faces.md)
    assert (got.blendshapes - ref.blendshapes).abs().mean() < 0.02
    assert half.float().landmarker.stem.weight.dtype == torch.float32


def test_features_are_the_stage_outputs(mesh, faces):
    images = faces["synthetic"][:2]
    with torch.no_grad():
        feats = mesh.features(images)
        every = mesh.predict(images, stages=tuple(range(7)), align=0).features
    assert [tuple(f.shape) for f in feats] == [(2, 32, 64, 64), (2, 64, 32, 32), (2, 128, 16, 16), (2, 128, 8, 8)]
    assert [tuple(f.shape[1:]) for f in every] == [(c, s, s) for c, s in mesh.landmarker.feature_shapes]
    for a, b in zip(feats, every[1:5], strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="stages must be indices 0-6"):
        mesh.features(images, stages=(7,))


def test_roi_crop_and_back_is_the_identity():
    torch.manual_seed(0)
    roi = Roi(torch.tensor([[100.0, 120.0]]), torch.tensor([[90.0, 90.0]]), torch.tensor([math.radians(20)]))
    points = torch.rand(1, 5, 3) * 256
    back = roi.to_image(points, 256)
    # a point at crop pixel p lies in the image where the crop sampled it from
    image = torch.zeros(1, 1, 256, 256)
    x, y = back[0, 0, :2].round().long().tolist()
    image[0, 0, y, x] = 1.0
    crop = roi.crop(image, 256)
    peak = torch.nonzero(crop[0, 0] == crop[0, 0].max()).float().mean(0).flip(0)  # (x, y)
    assert (peak - points[0, 0, :2]).norm() < 3  # one image pixel is 2.8 crop pixels here
    centre = roi.to_image(torch.tensor([[[128.0, 128.0, 10.0]]]), 256)
    torch.testing.assert_close(centre, torch.tensor([[[100.0, 120.0, 10.0 * 90 / 256]]]))
    # the whole image at its own size is the image itself (MediaPipe's corner-to-corner mapping)
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(Roi.whole(images).crop(images, 64), images)


def test_detector_finds_the_face_or_says_none(mesh, faces):
    images = torch.cat([faces["astronaut"][:2], faces["synthetic"][:2], torch.zeros(1, 3, 256, 256)])
    with torch.no_grad():
        out = mesh.predict(images, roi="detector")
        whole = mesh.predict(images[4:], roi="whole")
    assert out.face.tolist() == [True, True, True, True, False]
    assert out.detection[4] < 0.5 and (out.detection[:4] > 0.8).all()
    # no face: the whole image, as roi="whole" (up to the batch's float rounding)
    torch.testing.assert_close(out.landmarks[4], whole.landmarks[0], atol=1e-3, rtol=0)
    # the detector's crop: about 1.5x the face, around it, level with the eyes
    side = out.roi.size[:4, 0]
    face = (out.landmarks[:4, :, :2].amax(1) - out.landmarks[:4, :, :2].amin(1)).amax(1)
    assert ((side / face > 1.1) & (side / face < 2.0)).all(), (side / face).tolist()
    assert (out.roi.angle[:4].abs() < math.radians(20)).all()


def test_alignment_rights_a_rolled_face(mesh, faces):
    """A rotated face: the aligned crop is upright, so presence recovers and landmarks follow the roll."""
    images = faces["astronaut"]
    with torch.no_grad():
        whole, aligned = mesh.predict(images, align=0), mesh.predict(images, align=2)
    assert (aligned.presence > 0.99).all() and whole.presence.min() < 0.5  # some crops are too loose as they are
    roi = Roi.from_landmarks(aligned.landmarks)
    assert torch.allclose(roi.angle, torch.atan2(*(aligned.landmarks[:, 263, :2] - aligned.landmarks[:, 33, :2])
                                                  .flip(-1).unbind(-1)))  # fmt: skip


def test_a_different_network_shape_is_refused():
    from export3d.faces import FaceMesh
    from export3d.faces.landmark_net import LandmarkNet, LandmarkNetConfig
    from export3d.faces.weights import load_landmark_net, read_bundle

    graphs = read_bundle()
    with pytest.raises(ValueError, match=r"face_landmarks_detector\.tflite: the graph: expected 207 weighted trunk "
                                         r"layers .* got 172; the PyTorch port"):  # fmt: skip
        load_landmark_net(LandmarkNet(LandmarkNetConfig(blocks=5)), graphs.landmarks)
    with pytest.raises(ValueError, match=r"op 2 \(CONV_2D\): expected weights \(8, 3, 3, 3\)"):
        load_landmark_net(LandmarkNet(LandmarkNetConfig(stem=8, widths=(8, 32, 64, 128, 128, 128, 128))),
                          graphs.landmarks)  # fmt: skip
    assert isinstance(FaceMesh.from_bundle(graphs.path), FaceMesh)
