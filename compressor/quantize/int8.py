"""ONNX Runtime static INT8 quantization of a verified FP32 export.

    calibration = calibration_batches(dataset.train, config)    # real images, seeded
    int8 = quantize_bytes(fp32_onnx, calibration, FORMATS["qdq-u8s8"], config)

`quant_pre_process` (shape inference and graph optimisation) runs first, as onnxruntime's
quantization docs ask; then `quantize_static` with per-channel weights. Which format is fast depends
on the CPU and onnxruntime's version, never on a rule: measured on a 2-core Xeon with AVX-512 VNNI
(onnxruntime 1.32, resnet18 at 32 px) QDQ with uint8 activations and int8 weights ran at 0.58-0.60 of
FP32, the QDQ int8/int8 format onnxruntime's docs recommend at 2.22-2.27 (slower than FP32) and
QOperator int8/int8 at 21.7 (../shared/MEASURED.md). `choice.choose_format` measures.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NamedTuple

import numpy as np

from compressor.errors import InternalError, UserError
from compressor.flags import choices, flag

log = logging.getLogger(__name__)

MODES = ("none", "int8", "mixed", "searched")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class Int8Format(NamedTuple):
    """One way onnxruntime can lay out an INT8 graph."""

    name: str
    quant_format: str  # "QDQ" (Quantize/DequantizeLinear pairs), "QOperator" (QLinearConv, ...)
    # or "dynamic" (weights INT8 offline, activations quantized at run time: no calibration)
    activations: str  # "uint8" or "int8"
    weights: str  # "int8" or "uint8"


FORMATS = {f.name: f for f in (
    Int8Format("qdq-u8s8", "QDQ", "uint8", "int8"),
    Int8Format("qoperator-u8s8", "QOperator", "uint8", "int8"),
    Int8Format("qdq-s8s8", "QDQ", "int8", "int8"),
    Int8Format("qoperator-s8s8", "QOperator", "int8", "int8"),
    Int8Format("dynamic-u8s8", "dynamic", "uint8", "int8"),
)}
MEASURED_BY_DEFAULT = ("qdq-u8s8", "qoperator-u8s8", "qdq-s8s8", "dynamic-u8s8")
"""The formats the measured choice tries. QOperator S8S8 is left out: onnxruntime warns that it is
slow on x86-64 and it measured 21.7x FP32 here, so timing it costs 20x the others for nothing; give
it with `format` to measure it anyway. Dynamic quantization (`quantize_dynamic`: MatMul and Gemm
with INT8 weights, activations scaled per run) is how transformers usually run INT8 on CPUs."""


@dataclass(frozen=True)
class QuantizeConfig:
    """Post-training quantization of the shipped model."""

    mode: Annotated[str, flag("--quantize"), choices(MODES)] = "none"
    """none (ship FP32), int8 (onnxruntime static quantization of every layer), mixed (each
    layer in the precision the latency model prices faster, INT8 or FP32; `pipeline.int8`) or
    searched (the agent chooses each unit's precision, rewarded on the INT8 network's accuracy;
    layers no unit sets are priced as in mixed)."""
    format: Annotated[Annotated[str, choices(FORMATS)] | None, flag("--int8-format")] = None
    """One of FORMATS to force it; None: measure MEASURED_BY_DEFAULT on this machine, keep the
    fastest."""
    calibration: Annotated[str, flag("--calibration"), choices(CALIBRATION_METHODS)] = "minmax"
    """Calibration method: minmax, entropy or percentile (onnxruntime's CalibrationMethod)."""
    calibration_batches: Annotated[int, flag("--calibration-batches")] = 8
    """Train-split batches the activation ranges are calibrated on."""
    calibration_batch_size: int = 32
    per_channel: bool = True
    """Per-output-channel weight scales (per-tensor loses accuracy on pruned, uneven layers)."""
    max_drop: float = 0.5
    """Accepted top-1 loss (points, on the search split) against the FP32 model before the
    fallbacks run (another calibration, the most sensitive layers kept FP32)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--quantize {self.mode!r} is not one of {', '.join(MODES)}")
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"--int8-format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.calibration not in CALIBRATION_METHODS:
            raise UserError(f"--calibration {self.calibration!r} is not one of "
                            f"{', '.join(CALIBRATION_METHODS)}")
        if self.calibration_batches < 1 or self.calibration_batch_size < 1:
            raise UserError("--calibration-batches and its batch size must be >= 1")

    @property
    def enabled(self) -> bool:
        """Whether the shipped model is quantized at all (int8, mixed or searched)."""
        return self.mode != "none"

    @property
    def mixed(self) -> bool:
        """Whether layers may be kept FP32 for speed (mixed, and searched's unit-less layers)."""
        return self.mode in ("mixed", "searched")

    @property
    def searched(self) -> bool:
        """Whether the agent chooses each unit's precision."""
        return self.mode == "searched"


def calibration_batches(split, config: QuantizeConfig, seed: int = 0) -> list[np.ndarray]:
    """`config.calibration_batches` shuffled, seeded batches of a split, as float32 arrays."""
    return [x.numpy().astype(np.float32) for x, _ in split.batches(
        config.calibration_batch_size, shuffle=True, seed=seed, limit=config.calibration_batches)]


def random_calibration(shape: Sequence[int], batches: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Seeded normal inputs: enough to time an INT8 graph (its speed does not depend on the ranges),
    never to ship one."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(shape)).astype(np.float32) for _ in range(batches)]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of input arrays."""

    def __init__(self, input_name: str, arrays: Iterable[np.ndarray]):
        self._feeds = iter([{input_name: a} for a in arrays])

    def get_next(self):
        return next(self._feeds, None)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs every bias copy and shape-inference pass at INFO on the root
    logger (hundreds of lines per model); hold the root logger at WARNING while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def weighted_nodes(data: bytes) -> list[str]:
    """Names of the Conv, Gemm and MatMul nodes of an ONNX graph, in graph order (the layers a
    per-layer exclusion can keep FP32)."""
    import onnx

    graph = onnx.load_from_string(data).graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def _matched(data: bytes, layers: Sequence[str]) -> list[tuple[str, str]]:
    """(weighted node, module name) pairs of an exported graph (see `layer_nodes`)."""
    nodes = weighted_nodes(data)
    if len(nodes) != len(layers):
        raise InternalError(f"the ONNX graph has {len(nodes)} Conv/Gemm/MatMul nodes for "
                            f"{len(layers)} conv and linear layers, so the layers to keep FP32 "
                            "cannot be found in it; use --quantize int8")
    for node, layer in zip(nodes, layers, strict=True):
        scope = node.split("/")[-2] if node.count("/") >= 2 else ""
        if scope and layer != scope and not layer.endswith("." + scope):
            raise InternalError(f"ONNX node {node} does not run layer {layer}; the layers to "
                                "keep FP32 cannot be found in the graph; use --quantize int8")
    return list(zip(nodes, layers, strict=True))


def layer_nodes(data: bytes, layers: Sequence[str], wanted: Iterable[str]) -> list[str]:
    """The weighted nodes of an exported ONNX graph that run the modules named `wanted`.

    `layers`: the qualified names of every Conv2d/Linear of the exported module in call order
    (`measure_layer_shapes`). The exporter emits their nodes in that order, so the nodes are
    matched by position; the node's scope name must agree ("/layer1/layer1.0/conv1/Conv" ends in
    "conv1", the last part of `layer1.0.conv1`), else the graph is not that module's. Give the
    export itself, not `preprocess`'s output: its optimiser reorders nodes (the names survive, so
    the result serves `quantize_bytes`'s `exclude`).
    """
    wanted = set(wanted)
    if not wanted:
        return []
    return [node for node, layer in _matched(data, layers) if layer in wanted]


def node_layers(data: bytes, layers: Sequence[str], nodes: Iterable[str]) -> list[str]:
    """The modules (of `layers`, in call order) that the weighted `nodes` of an exported graph
    run: `layer_nodes` the other way."""
    nodes = set(nodes)
    if not nodes:
        return []
    return [layer for node, layer in _matched(data, layers) if node in nodes]


def preprocess(fp32: bytes) -> bytes:
    """`quant_pre_process` of an FP32 graph (shape inference plus onnxruntime's optimiser)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        src, dst = Path(scratch) / "fp32.onnx", Path(scratch) / "pre.onnx"
        src.write_bytes(fp32)
        with _quiet():
            quant_pre_process(str(src), str(dst))
        return dst.read_bytes()


def unshare_initializers(data: bytes, nodes: Iterable[str]) -> bytes:
    """`data` (ONNX bytes) with each of `nodes` given its own copy of every initializer it shares
    with another node.

    The exporter stores identical tensors once (the zero biases of convs after untrained
    BatchNorms, for one), and `quantize_static` quantizes a shared one for the INT8 consumer, so the
    node kept FP32 reads its bias through a DequantizeLinear: no longer a constant, which keeps
    onnxruntime's NCHWc and fused kernels off that conv (measured on a 2-core Xeon: a 1x1-spatial
    resnet18 layer4 conv 5.9 ms instead of 0.18 ms, the mixed network 2-3x slower than FP32).
    """
    import onnx

    nodes = set(nodes)
    model = onnx.load_from_string(data)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in graph.node:
        if node.name not in nodes:
            continue
        for k, name in enumerate(node.input):
            if name in initializers and uses[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}/{node.name}"
                graph.initializer.append(copy)
                node.input[k] = copy.name
                uses[name] -= 1
    return model.SerializeToString()


def quantize_bytes(fp32: bytes, calibration: Sequence[np.ndarray], fmt: Int8Format,
                   config: QuantizeConfig, exclude: Sequence[str] = (),
                   method: str | None = None, preprocessed: bool = False) -> bytes:
    """The INT8 graph of `fp32` (ONNX bytes) in `fmt`, calibrated on `calibration`.

    `exclude` names nodes of the preprocessed graph kept in FP32 (`weighted_nodes(preprocess(...))`).
    A graph onnxruntime cannot quantize is a one-line error naming the node or op that failed.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if not calibration:
        raise UserError("INT8 calibration needs at least one batch of inputs")
    with tempfile.TemporaryDirectory() as scratch:
        pre, out = Path(scratch) / "pre.onnx", Path(scratch) / "int8.onnx"
        pre.write_bytes(unshare_initializers(fp32 if preprocessed else preprocess(fp32), exclude))
        try:
            with _quiet():
                if fmt.quant_format == "dynamic":
                    quantize_dynamic(str(pre), str(out), weight_type=types[fmt.weights],
                                     per_channel=config.per_channel,
                                     nodes_to_exclude=list(exclude) or None)
                    return _loadable(out.read_bytes(), fmt)
                quantize_static(
                    str(pre), str(out), _Reader(_input_name(pre), calibration),
                    quant_format=getattr(QuantFormat, fmt.quant_format),
                    activation_type=types[fmt.activations], weight_type=types[fmt.weights],
                    per_channel=config.per_channel, nodes_to_exclude=list(exclude) or None,
                    calibrate_method=methods[method or config.calibration])
        except Exception as exc:  # onnxruntime's quantizer raises bare Exceptions and asserts
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise InternalError(f"onnxruntime could not quantize the model to {fmt.name} "
                                f"({reason}); ship it as FP32 with --quantize none") from exc
        return _loadable(out.read_bytes(), fmt)


def _loadable(data: bytes, fmt: Int8Format) -> bytes:
    """`data` if onnxruntime loads it, else an InternalError naming why: its QOperator quantizer
    writes graphs it cannot load for a ViT here (an int32 bias fed to QLinearAdd), and a failed
    format is a trial the measured choice skips, not a crash."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own InvalidGraph / Fail types
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InternalError(f"onnxruntime cannot load the {fmt.name} graph it quantized "
                            f"({reason}); ship it as FP32 with --quantize none") from None
    return data


__all__ = ["CALIBRATION_METHODS", "FORMATS", "MEASURED_BY_DEFAULT", "MODES", "Int8Format",
           "QuantizeConfig", "calibration_batches", "layer_nodes", "node_layers", "preprocess",
           "quantize_bytes", "random_calibration", "unshare_initializers", "weighted_nodes"]
