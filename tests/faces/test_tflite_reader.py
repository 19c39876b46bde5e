"""The TFLite reader: the bundle's two graphs (their ops, tensors, constants, metadata) as TFLite itself sees them,
and clear errors for what is not a TFLite model."""

from collections import Counter

import numpy as np
import pytest

from export3d.faces.tflite_reader import TFLiteFormatError, read_tflite, tensor_infos


@pytest.fixture(scope="module")
def bundle():
    from export3d.faces.weights import read_bundle
    from export3d.utils.extras import MissingExtraError

    try:
        return read_bundle()
    except MissingExtraError as err:
        pytest.skip(f"the face model bundle is not installed: {err}")


def test_landmark_graph_is_a_plain_cnn_of_nine_op_kinds(bundle):
    g = bundle.landmarks
    kinds = Counter(op.kind for op in g.ops)
    assert len(g.ops) == 471
    assert kinds == {"DEQUANTIZE": 251, "CONV_2D": 72, "PRELU": 69, "DEPTHWISE_CONV_2D": 34, "ADD": 34,
                     "MAX_POOL_2D": 6, "PAD": 3, "LOGISTIC": 1, "RESHAPE": 1}  # fmt: skip
    assert [g.tensors[i].shape for i in g.inputs] == [(1, 256, 256, 3)]
    assert [g.tensors[i].shape for i in g.outputs] == [(1, 1, 1, 1434), (1, 1, 1, 1), (1, 1)]
    # every DEQUANTIZE widens a stored fp16 constant; none touches the image
    dequantized = [g.tensors[op.inputs[0]] for op in g.ops if op.kind == "DEQUANTIZE"]
    assert {t.dtype for t in dequantized} == {"<f2"} and len(g.compute_ops()) == 471 - 251
    stem = g.compute_ops()[0]
    assert stem.kind == "CONV_2D" and stem.options["stride_h"] == 2 and stem.options["padding"] == 0  # SAME
    weight = g.constant(stem.inputs[1])
    assert weight.shape == (16, 3, 3, 3) and weight.dtype == np.float32 and np.abs(weight).max() > 0.01


def test_landmark_metadata_gives_the_input_range_and_the_outputs(bundle):
    inputs, outputs = tensor_infos(bundle.landmarks)
    assert (inputs[0].mean, inputs[0].std) == ((0.0,), (255.0,))  # (pixel - 0) / 255: [0, 1]
    assert [t.name for t in outputs] == ["face_landmarks", "presence", "tongue_out"]
    assert tensor_infos(bundle.blendshapes) == ([], [])  # the blendshape model has none


def test_blendshape_graph_is_an_mlp_mixer(bundle):
    g = bundle.blendshapes
    kinds = Counter(op.kind for op in g.compute_ops())
    assert kinds["CONV_2D"] == 19 and kinds["RSQRT"] == 8 and kinds["TRANSPOSE"] == 10  # 4 blocks, 2 norms each
    assert [g.tensors[i].shape for i in g.inputs] == [(1, 146, 2)]
    assert [g.tensors[i].shape for i in g.outputs] == [(52,)]
    concat = next(op for op in g.ops if op.kind == "CONCATENATION")
    assert concat.options["axis"] == -2 and g.constant(concat.inputs[0]).shape == (1, 1, 1, 64)


def test_detector_graph_is_blazeface(bundle):
    g = bundle.detector
    kinds = Counter(op.kind for op in g.compute_ops())
    assert kinds == {"CONV_2D": 21, "RELU": 17, "DEPTHWISE_CONV_2D": 16, "ADD": 16, "PAD": 11, "RESHAPE": 4,
                     "MAX_POOL_2D": 3, "CONCATENATION": 2}  # fmt: skip
    assert [g.tensors[i].shape for i in g.inputs] == [(1, 128, 128, 3)]
    assert [g.tensors[i].shape for i in g.outputs] == [(1, 896, 16), (1, 896, 1)]
    inputs, _ = tensor_infos(g)
    assert (inputs[0].mean, inputs[0].std) == ((127.5,), (127.5,))  # [-1, 1]


def test_ops_match_the_interpreters_list(bundle, tflite):
    from export3d.faces.weights import BLENDSHAPE_MODEL, DETECTOR_MODEL, LANDMARK_MODEL

    for name, graph in ((LANDMARK_MODEL, bundle.landmarks), (BLENDSHAPE_MODEL, bundle.blendshapes),
                        (DETECTOR_MODEL, bundle.detector)):  # fmt: skip
        interpreter = tflite.interpreters[name]
        tensors = interpreter.get_tensor_details()
        assert [t["name"] for t in tensors] == [t.name for t in graph.tensors]
        assert [tuple(t["shape"]) for t in tensors] == [t.shape for t in graph.tensors]
        ops = interpreter._get_ops_details()  # the op list as loaded, before any delegate
        got = [(op.kind, op.inputs, op.outputs) for op in graph.ops]
        assert [(o["op_name"], tuple(o["inputs"]), tuple(o["outputs"])) for o in ops[:len(got)]] == got


def test_not_a_tflite_model_is_refused_with_its_name(tmp_path):
    with pytest.raises(TFLiteFormatError, match=r"model\.bin: not a TFLite model .*'TFL3'"):
        read_tflite(b"\x10\x00\x00\x00PK\x03\x04" + bytes(32), "model.bin")
    with pytest.raises(TFLiteFormatError, match="short: not a TFLite model"):
        read_tflite(b"TFL3", "short")


def test_missing_bundle_entry_names_the_file(tmp_path):
    import zipfile

    from export3d.faces.weights import read_bundle

    path = tmp_path / "face_landmarker.task"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("face_detector.tflite", b"")
    with pytest.raises(ValueError, match=r"face_landmarker\.task: cannot read face_landmarks_detector\.tflite"):
        read_bundle(path)
