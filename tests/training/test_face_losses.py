"""Face losses (issue 27): the crop, the three terms, their gradients, the wiring into training, the flags."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from export3d.faces import FaceMesh
from export3d.faces.roi import Roi
from export3d.profiling.memory import _fake_module
from export3d.train import parse_args
from export3d.training.config import TrainConfig
from export3d.training.face_losses import (
    FACE_OVAL,
    LANDMARK_GROUPS,
    LEFT_EYE,
    LIPS,
    RIGHT_EYE,
    FaceLoss,
    build_face_loss,
    crop_faces,
)
from export3d.training.losses import reconstruction_loss
from tests.faces.crops import synthetic_heads
from tests.model.helpers import SMALL, inputs


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    from export3d.utils.extras import MissingExtraError

    try:
        return FaceMesh.from_bundle()
    except MissingExtraError as err:
        pytest.skip(f"the face model bundle is not installed: {err}")


@pytest.fixture(scope="module")
def heads() -> torch.Tensor:
    """Four synthetic test heads at the tiny preset's 64 px: each a face MediaPipe finds, with its own expression."""
    return synthetic_heads(4, size=64)


# ----------------------------------------------------------------------------------------------- landmark sets
def test_landmark_groups_are_mediapipes_connection_sets():
    assert len(RIGHT_EYE) == len(LEFT_EYE) == 16 and len(LIPS) == 40 and len(FACE_OVAL) == 36
    every = [i for ids in LANDMARK_GROUPS.values() for i in ids]
    assert len(set(every)) == len(every) and max(every) < 468  # mesh points only, each once, no iris
    vision = pytest.importorskip("mediapipe.tasks.python.vision.face_landmarker")
    c = vision.FaceLandmarksConnections

    def points(connections) -> set[int]:
        return {i for con in connections for i in (con.start, con.end)}

    assert set(RIGHT_EYE) == points(c.FACE_LANDMARKS_RIGHT_EYE)
    assert set(LEFT_EYE) == points(c.FACE_LANDMARKS_LEFT_EYE)
    assert set(LIPS) == points(c.FACE_LANDMARKS_LIPS)
    assert set(FACE_OVAL) == points(c.FACE_LANDMARKS_FACE_OVAL)


# ----------------------------------------------------------------------------------------------- the crop
def test_crop_maps_a_known_face_box_to_256_px_and_is_differentiable():
    """A face box in a 64 px image fills the 256 px crop; a box 1.5x its size shows it in its middle; the crop is
    linear in the pixels and its gradient is that linear map's transpose. Coordinates are MediaPipe's (OpenCV's):
    pixel i's centre sits at i, and output pixel j samples the box at fraction j / 256 of its side."""
    image = -torch.ones(1, 3, 64, 64)
    image[..., 20:53, 10:43] = 1.0  # pixels 10-42 across, 20-52 down: the box [10, 42] x [20, 52]
    box = Roi(torch.tensor([[26.0, 36.0]]), torch.tensor([[32.0, 32.0]]), torch.zeros(1))
    crop = crop_faces(image, box)
    assert crop.shape == (1, 3, 256, 256)
    assert (crop == 1).all()  # x = 10 + j / 8 for j = 0 ... 255 (up to 41.9): every sample inside the box
    wide = crop_faces(image, Roi(box.centre, box.size * 1.5, box.angle))  # x = 2 + 0.1875 j
    assert (wide[..., 48:208, 48:208] == 1).all()  # samples at 11 ... 41
    assert (wide[..., :, :37] == -1).all() and (wide[..., :, 219:] == -1).all() and (wide[..., :37, :] == -1).all()
    assert ((wide[..., 40, 40:200] > -1) & (wide[..., 40, 40:200] < 1)).all()  # row y = 19.5: half in, half out

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=gen, requires_grad=True)
    y = torch.randn(2, 3, 256, 256, generator=gen)
    turned = Roi(torch.tensor([[30.0, 34.0], [33.0, 30.0]]), torch.tensor([[40.0, 40.0], [36.0, 36.0]]),
                 torch.tensor([0.2, -0.1]))  # fmt: skip
    (grad,) = torch.autograd.grad((crop_faces(x, turned) * y).sum(), x)
    assert grad.abs().sum() > 0 and (grad[..., :5, :] == 0).all()  # rows far above the crop get nothing
    for k in [(0, 0, 30, 30), (1, 2, 25, 40), (0, 1, 45, 20)]:  # linear: d<crop(x), y>/dx_k = <crop(e_k), y>
        e = torch.zeros_like(x)
        e[k] = 1.0
        assert torch.allclose(grad[k], (crop_faces(e, turned) * y).sum(), rtol=1e-4, atol=1e-5)


def test_target_crop_is_mediapipes_detector_crop_of_the_target(mesh, heads):
    loss = FaceLoss(mesh, 1.0)
    roi, face = loss.target_crop(heads)
    expected, score = mesh.first_roi(heads, "detector")
    assert face.all() and (score >= 0.5).all()
    torch.testing.assert_close(roi.centre, expected.centre)
    torch.testing.assert_close(roi.size, expected.size)
    # a synthetic head's crop: about two thirds of the 64 px image, below its middle (docs/training.md)
    assert ((roi.size[:, 0] > 0.55 * 64) & (roi.size[:, 0] < 0.8 * 64)).all() and (roi.centre[:, 1] > 32).all()
    whole, all_faces = FaceLoss(mesh, 1.0, crop="whole").target_crop(heads)
    assert all_faces.all() and torch.equal(whole.size, torch.full((4, 2), 64.0))


# ----------------------------------------------------------------------------------------------- the terms
def test_terms_are_zero_for_identical_images_and_positive_with_a_gradient_otherwise(mesh, heads):
    loss = FaceLoss(mesh, 1.0, 1.0, 1.0)
    same, parts = loss(heads, None, heads)
    assert same == 0 and all(parts[k] == 0 for k in ("face_landmarks", "face_blendshapes", "face_features"))
    assert parts["face_pairs"] == 1
    image = heads.roll(1, 0).clone().requires_grad_(True)  # another head and expression for each target
    total, parts = loss(image, None, heads)
    for name in ("face_landmarks", "face_blendshapes", "face_features"):
        assert parts[name] > 0, name
        single = FaceLoss(mesh, **{f"{name[5:].rstrip('s')}_weight": 1.0})(image, None, heads)[0]
        torch.testing.assert_close(single, parts[name])  # the weight picks its term
        (grad,) = torch.autograd.grad(single, image)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    torch.testing.assert_close(total, parts["face_landmarks"] + parts["face_blendshapes"] + parts["face_features"])
    assert parts["face_landmarks"] < 0.2  # units of the crop's side: heads differ by a few percent of it


def test_a_target_without_a_face_adds_nothing(mesh, heads):
    blank = torch.zeros_like(heads[:2])
    target = torch.cat([heads[:2], blank])  # pairs 2 and 3: no face in the target
    image = heads.roll(1, 0).clone().requires_grad_(True)
    loss, parts = FaceLoss(mesh, 1.0, 1.0, 1.0)(image, None, target)
    kept, _ = FaceLoss(mesh, 1.0, 1.0, 1.0)(image[:2], None, target[:2])
    assert parts["face_pairs"] == 0.5
    torch.testing.assert_close(loss, kept)  # the mean over the pairs with a face
    (grad,) = torch.autograd.grad(loss, image)
    assert (grad[2:] == 0).all() and grad[:2].abs().sum() > 0
    none, parts = FaceLoss(mesh, 1.0, 1.0, 1.0)(image[2:], None, target[2:])
    assert none == 0 and parts["face_pairs"] == 0  # no NaN when no pair counts


def test_raw_image_terms_use_the_scaled_crop(mesh, heads):
    """At 32 px (a 128 px model's raw image) the heads are still faces; at the tiny preset's 16 px most are not
    (presence below 0.5), so there the raw terms count few pairs (docs/training.md)."""
    small = torch.nn.functional.interpolate(heads, size=(32, 32), mode="bilinear", antialias=True)
    loss, parts = FaceLoss(mesh, 1.0, 1.0, 1.0, raw=True)(heads, small, heads, small)
    assert loss == 0 and parts["face_landmarks_raw"] == 0  # identical raw images too
    raw = small.roll(1, 0).clone().requires_grad_(True)
    loss, parts = FaceLoss(mesh, 1.0, raw=True)(heads, raw, heads, small)
    assert parts["face_landmarks"] == 0 and parts["face_landmarks_raw"] > 0
    assert torch.autograd.grad(loss, raw)[0].abs().sum() > 0


def test_the_gradient_reaches_the_generator(mesh, heads):
    """Through reconstruction_loss: the face terms join L_rec and their gradient reaches the generator's weights."""
    from export3d import Export3D

    torch.manual_seed(0)
    model = Export3D.from_preset("tiny", **{**SMALL, "image_size": 64}).train()
    source, beta, camera = inputs(model, batch=2)
    out = model(source, beta, camera)
    target = heads[:2]
    base, parts = reconstruction_loss(out.image, out.image_raw, target, torch.nn.Identity(), with_lpips=False)
    face = FaceLoss(mesh, 1.0, 1.0, 1.0)
    both, parts = reconstruction_loss(out.image, out.image_raw, target, torch.nn.Identity(), with_lpips=False,
                                      face_loss=face)  # fmt: skip
    assert {"face_landmarks", "face_blendshapes", "face_features", "face_pairs"} <= set(parts)
    assert all(not v.requires_grad and v.dim() == 0 for v in parts.values())
    terms = parts["face_landmarks"] + parts["face_blendshapes"] + parts["face_features"]
    torch.testing.assert_close(both - base, terms)
    (grad_image,) = torch.autograd.grad(both - base, out.image, retain_graph=True)
    assert grad_image.abs().sum() > 0
    (both - base).backward()
    head = model.generator.head.weight.grad
    assert head is not None and torch.isfinite(head).all() and head.abs().sum() > 0
    assert all(p.grad is None for p in face.parameters())  # the face networks stay frozen


def test_the_network_stays_frozen_and_in_eval_mode(mesh):
    face = FaceLoss(mesh, 1.0).train()
    assert face.training and not face.mesh.training and not any(m.training for m in face.mesh.modules())
    assert not any(p.requires_grad for p in face.parameters())


def test_bf16_trunk_gives_the_fp32_terms_closely(heads):
    from export3d.utils.extras import MissingExtraError

    try:
        half = FaceMesh.from_bundle(dtype=torch.bfloat16)
    except MissingExtraError as err:
        pytest.skip(f"the face model bundle is not installed: {err}")
    full = FaceMesh.from_bundle()
    image = heads.roll(1, 0).clone().requires_grad_(True)
    a = FaceLoss(full, 1.0, 1.0, 1.0)(image, None, heads)[1]
    b_loss, b = FaceLoss(half, 1.0, 1.0, 1.0)(image, None, heads)
    for name in ("face_landmarks", "face_blendshapes", "face_features"):
        assert b[name].dtype == torch.float32 and abs(b[name] - a[name]) < 0.2 * a[name], (name, a[name], b[name])
    (grad,) = torch.autograd.grad(b_loss, image)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_the_face_loss_reads_nothing_on_the_host():
    """Under FakeTensorMode any host read raises: the loss, the detector's crop and the backward queue on a GPU."""
    mode = FakeTensorMode()
    mesh = _fake_module(FaceMesh().eval().requires_grad_(False), mode, "cpu")  # random weights: shapes only
    with mode:
        image = torch.rand(2, 3, 64, 64, requires_grad=True)
        raw = torch.rand(2, 3, 16, 16, requires_grad=True)
        loss, parts = FaceLoss(mesh, 1.0, 1.0, 1.0, raw=True)(image, raw, torch.rand(2, 3, 64, 64))
        loss.backward()
        assert image.grad.shape == image.shape and raw.grad.shape == raw.shape
    assert {"face_landmarks_raw", "face_features", "face_pairs"} <= set(parts)


# ----------------------------------------------------------------------------------------------- config and run
def test_config_flags_and_build():
    cfg = parse_args(["--face-landmark-weight", "0.5", "--face-blendshape-weight", "0.25", "--face-feature-weight",
                      "2", "--face-loss-every", "3", "--face-loss-raw", "--face-crop", "whole"])  # fmt: skip
    assert (cfg.face_landmark_weight, cfg.face_blendshape_weight, cfg.face_feature_weight) == (0.5, 0.25, 2.0)
    assert cfg.face_loss_every == 3 and cfg.face_loss_raw and cfg.face_crop == "whole"
    default = TrainConfig()
    assert (default.face_landmark_weight, default.face_blendshape_weight, default.face_feature_weight) == (0, 0, 0)
    assert build_face_loss(default, "cpu") is None  # off: the network is not loaded
    for bad, match in [({"face_feature_weight": -1.0}, "must be >= 0"), ({"face_loss_every": 0}, "--face-loss-every"),
                       ({"face_crop": "detector"}, "--face-crop must be one of")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_training_logs_the_face_terms_on_every_nth_step(tmp_path, mesh):
    from export3d.training.loop import main as train_main

    cfg = TrainConfig(out=str(tmp_path / "run"), clebs_steps=0, rec_steps=4, adv_steps=0, train_identities=2,
                      test_identities=2, clips_per_identity=1, frames_per_clip=6, clebs_negatives=3, eval_pairs=0,
                      log_every=1, threads=1, expression_encoder="lebs", face_blendshape_weight=0.5,
                      face_loss_every=2, device="cpu")  # fmt: skip
    built = build_face_loss(cfg, "cpu")
    assert built.blendshape_weight == 0.5 and built.landmark_weight == built.feature_weight == 0
    result = train_main(dataclasses.replace(cfg))
    assert result.metrics is None
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = {entry["step"]: entry for entry in logs if entry.get("stage") == "reconstruction"}
    assert sorted(steps) == [1, 2, 3, 4]
    assert [("face_blendshapes" in steps[s]) for s in (1, 2, 3, 4)] == [False, True, False, True]
    assert all(steps[s]["face_pairs"] == 1 and steps[s]["face_blendshapes"] > 0 for s in (2, 4))
