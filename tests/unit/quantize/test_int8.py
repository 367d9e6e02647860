"""INT8 quantization: real onnxruntime quantizer and sessions, real torch-pruning, real images."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compressor import pruning
from compressor.errors import InternalError, UserError
from compressor.io.export import onnx_bytes
from compressor.pruning.shapes import measure_layer_shapes
from compressor.quantize import (
    FORMATS,
    QuantizeConfig,
    calibration_batches,
    layer_nodes,
    preprocess,
    quantize_bytes,
    random_calibration,
    weighted_nodes,
)
from compressor.quantize.int8 import _Reader
from compressor.zoo.models import build_model


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def op_types(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(data).graph.node]


def test_config_refuses_bad_values_in_one_line():
    for kwargs, flag in (({"mode": "int4"}, "--quantize"), ({"format": "fp16"}, "--int8-format"),
                         ({"calibration": "kl"}, "--calibration")):
        with pytest.raises(UserError, match=flag):
            QuantizeConfig(**kwargs)
    assert not QuantizeConfig().enabled and QuantizeConfig(mode="int8").enabled
    mixed = QuantizeConfig(mode="mixed")
    assert mixed.enabled and mixed.mixed and not QuantizeConfig(mode="int8").mixed


def test_calibration_yields_the_requested_batches(fmnist):
    config = QuantizeConfig(mode="int8", calibration_batches=3, calibration_batch_size=8)
    batches = calibration_batches(fmnist.train, config, seed=1)
    assert [b.shape for b in batches] == [(8, 3, 32, 32)] * 3
    assert all(b.dtype == np.float32 for b in batches)
    again = calibration_batches(fmnist.train, config, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    reader = _Reader("input", batches)
    fed = [reader.get_next() for _ in range(4)]
    assert fed[3] is None
    assert all(np.array_equal(f["input"], b) for f, b in zip(fed[:3], batches, strict=True))


def test_pruned_resnet18_quantizes_and_runs_in_onnxruntime(fmnist_batch):
    images, _ = fmnist_batch
    dense = build_model("resnet18", 10).eval()
    example = torch.zeros(1, 3, 32, 32)
    skeleton = pruning.build_skeleton(dense, example, pruning.PruningConfig())
    policy = {name: 0.5 for name in skeleton.names}
    pruned = pruning.apply_policy(dense, policy, example, pruning.PruningConfig())
    fp32 = onnx_bytes(pruned, example)
    int8 = quantize_bytes(fp32, [images.numpy()], FORMATS["qdq-u8s8"],
                          QuantizeConfig(mode="int8"))
    onnx.checker.check_model(onnx.load_from_string(int8))
    assert "QuantizeLinear" in op_types(int8) and "DequantizeLinear" in op_types(int8)
    session = ort.InferenceSession(int8, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": images.numpy()})
    assert logits.shape == (16, 10) and np.isfinite(logits).all()


def test_excluded_nodes_stay_float():
    fp32 = preprocess(onnx_bytes(small_cnn(), torch.zeros(1, 3, 32, 32)))
    nodes = weighted_nodes(fp32)
    assert len(nodes) == 4  # three convs and the head
    config = QuantizeConfig(mode="int8")
    calibration = random_calibration((4, 3, 32, 32))
    everything = op_types(quantize_bytes(fp32, calibration, FORMATS["qoperator-u8s8"], config,
                                         preprocessed=True))
    assert "Conv" not in everything and everything.count("QLinearConv") == 3
    kept = quantize_bytes(fp32, calibration, FORMATS["qoperator-u8s8"], config,
                          exclude=[nodes[0]], preprocessed=True)
    graph = onnx.load_from_string(kept).graph
    float_convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert float_convs == [nodes[0]]
    assert [n.op_type for n in graph.node].count("QLinearConv") == 2


def test_a_node_kept_float_gets_its_own_copy_of_a_shared_bias():
    # Untrained BatchNorms fold to zero biases, which the exporter stores once for both convs; the
    # quantizer then feeds the float conv a dequantized bias, keeping onnxruntime's fast kernels off.
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)).eval()
    fp32 = preprocess(onnx_bytes(model, torch.zeros(1, 3, 16, 16)))
    graph = onnx.load_from_string(fp32).graph
    biases = [n.input[2] for n in graph.node if n.op_type == "Conv"]
    assert len(set(biases)) < len(biases)  # the premise: the export shares a bias
    last = weighted_nodes(fp32)[-1]
    kept = quantize_bytes(fp32, random_calibration((2, 3, 16, 16)), FORMATS["qdq-u8s8"],
                          QuantizeConfig(mode="mixed"), exclude=[last], preprocessed=True)
    graph = onnx.load_from_string(kept).graph
    initializers = {i.name: i for i in graph.initializer}
    node = next(n for n in graph.node if n.name == last)
    assert all(initializers[name].data_type == onnx.TensorProto.FLOAT for name in node.input[1:])
    session = ort.InferenceSession(kept, providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((2, 3, 16, 16), np.float32)})[0].shape[0] == 2


def test_layer_nodes_finds_the_nodes_a_module_runs_by_position_and_scope():
    model, example = build_model("resnet18", 10).eval(), torch.zeros(1, 3, 32, 32)
    layers = [s.name for s in measure_layer_shapes(model, example)]
    fp32 = onnx_bytes(model, example)
    assert layer_nodes(fp32, layers, ["layer1.0.conv1", "fc"]) == [
        "/layer1/layer1.0/conv1/Conv", "/fc/Gemm"]
    downsample = layer_nodes(fp32, layers, ["layer2.0.downsample.0"])
    assert downsample == ["/layer2/layer2.0/downsample/downsample.0/Conv"]
    assert downsample[0] in weighted_nodes(preprocess(fp32))  # what `exclude` names
    assert layer_nodes(fp32, layers, []) == []
    with pytest.raises(InternalError, match="cannot be found"):
        layer_nodes(fp32, layers[1:], ["fc"])  # a layer list of another network
    with pytest.raises(InternalError, match="does not run layer"):
        layer_nodes(fp32, list(reversed(layers)), ["fc"])
    mobilenet = build_model("mobilenet_v2", 10).eval()
    names = [s.name for s in measure_layer_shapes(mobilenet, example)]
    assert layer_nodes(onnx_bytes(mobilenet, example), names, ["features.1.conv.0.0"]) == [
        "/features/features.1/conv/conv.0/conv.0.0/Conv"]


def test_dynamic_int8_quantizes_a_vits_matmuls_with_parity():
    from compressor.pruning import explicit_attention
    from tests.vit_layouts import example, torchvision_vit

    x = example(2)
    vit = explicit_attention(torchvision_vit(layers=2).eval(), x)
    fp32 = onnx_bytes(vit, x)
    int8 = quantize_bytes(fp32, random_calibration(tuple(x.shape)), FORMATS["dynamic-u8s8"],
                          QuantizeConfig(mode="int8"))
    ops = op_types(int8)
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops  # nothing calibrated
    assert ops.count("MatMulInteger") >= 4 * 2  # q/k/v/proj or qkv, fc1, fc2 per block

    def run(data):
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]

    want, got = run(fp32), run(int8)
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()


def test_a_quantized_graph_onnxruntime_cannot_load_is_an_internal_error_naming_the_format():
    # onnxruntime's QOperator quantizer writes an int32 bias into QLinearAdd for a ViT's
    # projections: the measured choice must see a failed trial, not a crash later.
    from compressor.pruning import explicit_attention
    from tests.vit_layouts import example, torchvision_vit

    x = example(1)
    vit = explicit_attention(torchvision_vit(layers=1).eval(), x)
    fp32 = onnx_bytes(vit, x)
    try:
        quantize_bytes(fp32, random_calibration(tuple(x.shape)), FORMATS["qoperator-u8s8"],
                       QuantizeConfig(mode="int8"))
    except InternalError as exc:
        assert "qoperator-u8s8" in str(exc) and "cannot load" in str(exc)
    else:  # a fixed onnxruntime: the graph loads, and then it must run
        pytest.skip("this onnxruntime quantizes the ViT to QOperator correctly")
