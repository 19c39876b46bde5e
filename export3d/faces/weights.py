"""The port's weights, read at run time from the installed ``face_landmarker.task`` (never stored in the repo).

The bundle (:func:`export3d.utils.extras.bundle_path`) is a zip; its three ``.tflite`` entries are decoded by
:mod:`~export3d.faces.tflite_reader`, and their constants are copied into :class:`LandmarkNet`,
:class:`BlendshapeNet` and :class:`DetectorNet` in the graph's order. Every layer's op kind, weight shape, stride,
padding and fused activation is checked against what the module computes, and an op the modules do not implement
is refused, so a different model in the bundle fails here with the file, the op and what was expected, not later
with wrong numbers. fp16 weights (stored as fp16 and widened by a DEQUANTIZE op) are widened to fp32 exactly as
TFLite does.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export3d.faces.blendshape_net import BlendshapeNet
from export3d.faces.detector_net import DetectorNet
from export3d.faces.landmark_net import LandmarkNet
from export3d.faces.tflite_reader import Graph, Op, read_tflite, tensor_infos
from export3d.utils.extras import bundle_path

LANDMARK_MODEL = "face_landmarks_detector.tflite"
BLENDSHAPE_MODEL = "face_blendshapes.tflite"
DETECTOR_MODEL = "face_detector.tflite"
MODELS = (LANDMARK_MODEL, BLENDSHAPE_MODEL, DETECTOR_MODEL)
LANDMARK_OUTPUTS = ("face_landmarks", "presence", "tongue_out")  # the model's outputs, in its metadata's order
# ops without weights that each network may contain (anything else is refused)
LANDMARK_GLUE = {"ADD", "MAX_POOL_2D", "PAD", "LOGISTIC", "RESHAPE"}
DETECTOR_GLUE = {"ADD", "RELU", "PAD", "MAX_POOL_2D", "RESHAPE", "CONCATENATION"}
BLENDSHAPE_GLUE = {"MEAN", "SUB", "MUL", "SUM", "SQRT", "DIV", "RESHAPE", "STRIDED_SLICE", "TRANSPOSE", "NEG",
                   "SQUARED_DIFFERENCE", "ADD", "RSQRT", "CONCATENATION", "LOGISTIC"}  # fmt: skip
SAME, VALID = 0, 1  # TFLite Padding
NONE, RELU = 0, 1  # TFLite ActivationFunctionType


@dataclass(frozen=True)
class Bundle:
    path: Path
    landmarks: Graph
    blendshapes: Graph
    detector: Graph


def read_bundle(bundle: str | Path | None = None) -> Bundle:
    """The three graphs of ``face_landmarker.task`` (the installed one by default)."""
    path = Path(bundle) if bundle else bundle_path()
    try:
        with zipfile.ZipFile(path) as z:
            data = {name: z.read(name) for name in MODELS}
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot read {', '.join(MODELS)} from the face landmarker bundle (a zip): "
                         f"{err}") from err  # fmt: skip
    return Bundle(path, *(read_tflite(data[n], f"{path}:{n}") for n in MODELS))


def _fail(graph: Graph, op: Op | None, expected: str):
    where = f"op {op.index} ({op.kind})" if op is not None else "the graph"
    raise ValueError(f"{graph.source}: {where}: expected {expected}; the PyTorch port (export3d.faces) does not "
                     "match this model")


def _const(graph: Graph, op: Op, slot: int) -> torch.Tensor:
    value = graph.constant(op.inputs[slot]) if slot < len(op.inputs) and op.inputs[slot] >= 0 else None
    if value is None:
        _fail(graph, op, f"a constant as input {slot}")
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


def _set(param: torch.Tensor, value: torch.Tensor, graph: Graph, op: Op) -> None:
    if value.numel() != param.numel():
        _fail(graph, op, f"{tuple(param.shape)} weights, got {tuple(value.shape)}")
    with torch.no_grad():
        param.copy_(value.reshape(param.shape))


def load_conv(graph: Graph, op: Op, layer: nn.Conv2d, padding: int | None = None, activation: int = NONE) -> None:
    """Copy a CONV_2D / DEPTHWISE_CONV_2D op into ``layer`` after checking its options. ``padding``: the TFLite
    padding the layer implements (None: either, as for a 1x1 kernel)."""
    kind = "DEPTHWISE_CONV_2D" if layer.groups > 1 else "CONV_2D"
    o = op.options
    got = (op.kind, o.get("stride_h"), o.get("stride_w"), o.get("dilation_h"), o.get("dilation_w"), o.get("activation"))
    if got != (kind, *layer.stride, 1, 1, activation) or (padding is not None and o.get("padding") != padding):
        _fail(graph, op, f"{kind} with stride {layer.stride}, no dilation, activation {activation}, padding "
                         f"{padding} (SAME = 0, VALID = 1); got {o}")  # fmt: skip
    weight = _const(graph, op, 1)  # CONV_2D [O, kh, kw, I]; DEPTHWISE_CONV_2D [1, kh, kw, C]
    weight = weight.permute(3, 0, 1, 2) if kind == "DEPTHWISE_CONV_2D" else weight.permute(0, 3, 1, 2)
    if weight.shape != layer.weight.shape:
        _fail(graph, op, f"weights {tuple(layer.weight.shape)} (torch layout), got {tuple(weight.shape)}")
    _set(layer.weight, weight, graph, op)
    _set(layer.bias, _const(graph, op, 2), graph, op)


def _head_ops(graph: Graph) -> dict[str, Op]:
    """Each output of the landmark model, by its metadata name, traced back to the conv that computes it."""
    _, outputs = tensor_infos(graph)
    names = [t.name for t in outputs] or list(LANDMARK_OUTPUTS)
    if sorted(names) != sorted(LANDMARK_OUTPUTS) or len(graph.outputs) != len(names):
        _fail(graph, None, f"outputs {LANDMARK_OUTPUTS}, got {names}")
    heads = {}
    for name, index in zip(names, graph.outputs, strict=True):
        op = graph.producer(index)
        while op is not None and op.kind in ("RESHAPE", "LOGISTIC"):
            op = graph.producer(op.inputs[0])
        if op is None or op.kind != "CONV_2D":
            _fail(graph, op, f"output {name!r} computed by a CONV_2D head")
        heads[name] = op
    return heads


def load_landmark_net(net: LandmarkNet, graph: Graph) -> tuple[float, float]:
    """Fill ``net`` from the landmark graph; returns the input normalisation (mean, std) of its metadata."""
    ops = graph.compute_ops()
    unknown = sorted({op.kind for op in ops} - LANDMARK_GLUE - {"CONV_2D", "DEPTHWISE_CONV_2D", "PRELU"})
    if unknown:
        _fail(graph, None, f"only CONV_2D, DEPTHWISE_CONV_2D, PRELU and {sorted(LANDMARK_GLUE)}; found {unknown}")
    heads = _head_ops(graph)
    head_ids = {op.index for op in heads.values()}
    trunk = [op for op in ops if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "PRELU") and op.index not in head_ids]
    layers = net.layers()
    if len(trunk) != len(layers):
        _fail(graph, None, f"{len(layers)} weighted trunk layers (LandmarkNetConfig {net.config}), got {len(trunk)}")
    for (kind, layer), op in zip(layers, trunk, strict=True):
        if op.kind != kind:
            _fail(graph, op, f"{kind} here")
        if kind == "PRELU":
            _set(layer.weight, _const(graph, op, 1), graph, op)
        else:
            k = layer.kernel_size[0]
            load_conv(graph, op, layer, None if k == 1 else SAME if k == 3 else VALID)
    for name, layer in zip(LANDMARK_OUTPUTS, (net.landmark_head, net.presence_head, net.tongue_head), strict=True):
        load_conv(graph, heads[name], layer, VALID)
    adds = sum(op.kind == "ADD" for op in ops)
    blocks = sum(len(stage) for stage in net.stages)
    if adds != blocks:
        _fail(graph, None, f"{blocks} residual ADDs, got {adds}")
    return _input_range(graph, (0.0, 255.0))


def _input_range(graph: Graph, default: tuple[float, float]) -> tuple[float, float]:
    """(mean, std) of the image input's NormalizationOptions (the model reads (pixel - mean) / std)."""
    inputs, _ = tensor_infos(graph)
    if inputs and inputs[0].mean and inputs[0].std:
        if len(set(inputs[0].mean)) > 1 or len(set(inputs[0].std)) > 1:
            _fail(graph, None, f"one mean and std for all channels (as MediaPipe), got {inputs[0]}")
        return float(inputs[0].mean[0]), float(inputs[0].std[0])
    return default


def load_blendshape_net(net: BlendshapeNet, graph: Graph) -> None:
    """Fill ``net`` from the blendshape graph (its MLP-Mixer's linear layers are 1x1 CONV_2D ops)."""
    ops = graph.compute_ops()
    unknown = sorted({op.kind for op in ops} - BLENDSHAPE_GLUE - {"CONV_2D"})
    if unknown:
        _fail(graph, None, f"only CONV_2D and {sorted(BLENDSHAPE_GLUE)}; found {unknown}")
    linears = [(net.to_tokens, NONE), (net.embed, NONE)]
    for block in net.blocks:
        linears += [(block.token_in, RELU), (block.token_out, NONE), (block.channel_in, RELU),
                    (block.channel_out, NONE)]  # fmt: skip
    linears.append((net.head, NONE))
    convs = [op for op in ops if op.kind == "CONV_2D"]
    if len(convs) != len(linears):
        _fail(graph, None, f"{len(linears)} CONV_2D ops (BlendshapeNetConfig {net.config}), got {len(convs)}")
    for (layer, act), op in zip(linears, convs, strict=True):
        if op.options.get("activation") != act:
            _fail(graph, op, f"fused activation {act} (NONE = 0, RELU = 1), got {op.options.get('activation')}")
        _set(layer.weight, _const(graph, op, 1)[:, 0, 0, :], graph, op)  # [O, 1, 1, I] -> [O, I]
        _set(layer.bias, _const(graph, op, 2), graph, op)
    consts = [(op, graph.constant(op.inputs[1])) for op in ops if op.kind in ("MUL", "ADD") and len(op.inputs) > 1]
    gammas = [(op, c) for op, c in consts if op.kind == "MUL" and c is not None and c.shape == (net.config.dim,)]
    norms = [n for block in net.blocks for n in (block.norm_tokens, block.norm_channels)]
    if len(gammas) != len(norms):
        _fail(graph, None, f"{len(norms)} LayerNorm scales of {net.config.dim}, got {len(gammas)}")
    eps = {float(c) for op, c in consts if op.kind == "ADD" and c is not None and c.size == 1}
    scale = [float(c) for op, c in consts if op.kind == "MUL" and c is not None and c.size == 1]
    if len(eps) != 1 or len(scale) != 1:
        _fail(graph, None, f"one LayerNorm epsilon and one input scale, got {sorted(eps)} and {scale}")
    epsilon = eps.pop()
    for norm, (op, gamma) in zip(norms, gammas, strict=True):
        _set(norm.weight, torch.from_numpy(gamma), graph, op)
        norm.eps = epsilon
    concat = next((op for op in ops if op.kind == "CONCATENATION"), None)
    if concat is None:
        _fail(graph, None, "a CONCATENATION that prepends the extra token")
    _set(net.extra_token, _const(graph, concat, 0), graph, concat)
    net.input_scale.fill_(scale[0])


def _detector_heads(graph: Graph) -> dict[str, list[Op]]:
    """The outputs of the detector ([1, 896, 16] boxes, [1, 896, 1] scores), each a CONCATENATION of two
    RESHAPEd conv heads (16 px, then 8 px): {"raw": [fine, coarse], "logits": [fine, coarse]}."""
    heads = {}
    for index in graph.outputs:
        name = "raw" if graph.tensors[index].shape[-1] > 1 else "logits"
        concat = graph.producer(index)
        if concat is None or concat.kind != "CONCATENATION" or len(concat.inputs) != 2:
            _fail(graph, concat, f"output {graph.tensors[index].name!r} made by a CONCATENATION of two heads")
        convs = []
        for part in concat.inputs:
            op = graph.producer(part)
            op = graph.producer(op.inputs[0]) if op is not None and op.kind == "RESHAPE" else op
            if op is None or op.kind != "CONV_2D":
                _fail(graph, op, "a CONV_2D head behind each RESHAPE")
            convs.append(op)
        heads[name] = convs
    if sorted(heads) != ["logits", "raw"]:
        _fail(graph, None, f"a box output and a score output, got {[graph.tensors[i].shape for i in graph.outputs]}")
    return heads


def load_detector_net(net: DetectorNet, graph: Graph) -> tuple[float, float]:
    """Fill ``net`` from the face detector graph; returns the input normalisation (mean, std) of its metadata."""
    ops = graph.compute_ops()
    unknown = sorted({op.kind for op in ops} - DETECTOR_GLUE - {"CONV_2D", "DEPTHWISE_CONV_2D"})
    if unknown:
        _fail(graph, None, f"only CONV_2D, DEPTHWISE_CONV_2D and {sorted(DETECTOR_GLUE)}; found {unknown}")
    heads = _detector_heads(graph)
    head_ids = {op.index for pair in heads.values() for op in pair}
    trunk = [op for op in ops if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D") and op.index not in head_ids]
    layers = net.layers()
    if len(trunk) != len(layers):
        _fail(graph, None, f"{len(layers)} weighted trunk layers (DetectorNetConfig {net.config}), got {len(trunk)}")
    for (kind, layer), op in zip(layers, trunk, strict=True):
        if op.kind != kind:
            _fail(graph, op, f"{kind} here")
        k = layer.kernel_size[0]
        load_conv(graph, op, layer, None if k == 1 else SAME)
    for name, layers in (("logits", (net.score_fine, net.score_coarse)), ("raw", (net.box_fine, net.box_coarse))):
        for op, layer in zip(heads[name], layers, strict=True):
            load_conv(graph, op, layer)
    relus = sum(op.kind == "RELU" for op in ops)
    if relus != 1 + len(net.blocks):
        _fail(graph, None, f"{1 + len(net.blocks)} RELU ops (stem and blocks), got {relus}")
    return _input_range(graph, (127.5, 127.5))
