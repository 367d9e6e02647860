"""A latency model: predict a pruned network's ONNX Runtime latency (ratio) without exporting it.

NetAdapt's lookup table, per layer: every Conv2d/Linear of the dense network is timed alone (a
Conv + bias + ReLU, or Gemm, ONNX graph at the probe's batch, feature-map size and threads) over a
grid of (in, out) channel counts that are multiples of `round_to`, and interpolated bilinearly in
between (a conv's cost is close to a + b*in*out + c*in + d*out, which bilinear interpolation
reproduces exactly; the grid catches the rest). Layers with the same signature share one table.
The tables hold kernel time from onnxruntime's profiler, not wall time: a lone graph also pays a
per-run overhead and NCHW <-> NCHWc reorders that the layer does not pay inside the network.

What the sum S of the tables misses is, measured here (ORT profiles of whole networks), not the
non-conv nodes (BatchNorm is folded, activations and residual adds are fused into the convs,
pooling and the head take < 2% of a run) but memory traffic: a lone layer runs with its weights
and activations in cache, a whole network whose weights and activations outgrow its share of the
cache streams them from DRAM on every run. Measured for resnet18 at 32x32, batch 4 (45 MB of
weights; the L3 here is 32 MB, shared with whatever else runs): the dense network took 2.35 ms
more than the sum of its lone layers, uniformly pruned to 11 MB of weights 0.68 ms more, below
3 MB nothing. So the model is

    latency(shapes) = S(shapes) + beta * max(0, T(shapes) - knee)
    T = megabytes moved per run: float32 weights + the batch's layer outputs
    ratio(shapes)   = latency(shapes) / latency(dense shapes)

By default (no calibration) the knee is 0 and beta spreads the dense network's measured excess
(its latency minus S) over its traffic T: the excess shrinks with the bytes a pruned network
moves. With pruned calibration networks measured against the dense one (paired, same window),
beta >= 0 and the knee can be fitted to their ratios instead (`fit_traffic`); on this machine
that was not more accurate (results/latency-model), so it is optional. Prediction is pure
Python over a few dozen small tables (tens of microseconds), so the budget wall can call it
hundreds of times per episode. Models are cached on disk per network, input, batch, threads,
onnxruntime version and CPU, since they hold only for the machine that measured them.

Transformers (`pruning.has_attention`): a ViT's Linears are a minority of its time (44% of the
32-px ViT of results/vit-latency); the attention matmuls, softmax, norms and GELU shrink with
the heads and blocks pruned. So each encoder block is priced whole by a block table over (heads,
MLP width) (`latency.blocks`), the rest of the network as a constant, with no traffic term.

INT8 (`quantize` given: FP32 ONNX bytes and the input shape -> the INT8 graph in the shipped
format): every lone layer and the dense network are quantized before they are timed, so the tables
hold the quantized kernels' time (the Quantize/DequantizeLinear and layout nodes a lone layer needs
at its edges are left out: inside the network activations stay INT8 from layer to layer), traffic
counts one byte per value, and the ratio is to the dense *INT8* network. INT8's gain depends on
which layers are pruned, not only on how much (resnet18 policies of one FP32 ratio range 0.52-1.01
of FP32 in INT8, results/int8), which one curve over the FP32 ratio cannot know.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from compressor.io import atomic
from compressor.latency.blocks import FORMAT as BLOCKS_FORMAT
from compressor.latency.blocks import BlockTables, measure_block_tables, without_blocks
from compressor.latency.probe import (
    ProbeSettings,
    make_session,
    measure_ms,
    measure_pair,
    random_input,
    resolve_batch_size,
    session_options,
)
from compressor.latency.tables import LayerTable, channel_grid
from compressor.provenance import cpu_name
from compressor.pruning.attention import explicit_attention, has_attention
from compressor.pruning.shapes import LayerShape, measure_layer_shapes

log = logging.getLogger(__name__)

FORMAT = "compressor-latency-model-v6"  # v6: the tables time the layers' edge nodes too

BLOCK_RUNS = 4
"""A block table's grid points run this many times `target_ms`: with ~8 runs per point, a busy
moment on a shared machine shifted single points of the 32-px ViT's table by 5-10%."""

EDGE_OPS = ("Reorder", "QuantizeLinear", "DequantizeLinear", "Transpose")
"""Nodes a lone layer's graph runs at its edges but the layer does not run inside the network
(layout changes, and the INT8 graph's entry and exit from float)."""

Quantize = Callable[[bytes, tuple[int, ...]], bytes]
"""FP32 ONNX bytes and the graph's input shape -> its INT8 graph."""


# --- per-layer tables ----------------------------------------------------------------------------


def _padding(shape: LayerShape) -> tuple[int, int]:
    """The symmetric (height, width) padding that maps the input map to the output map
    (LayerShape does not carry it)."""
    def side(size_in: int, size_out: int, kernel: int, stride: int) -> int:
        return max(0, math.ceil(((size_out - 1) * stride + kernel - size_in) / 2))

    return (side(shape.in_h, shape.out_h, shape.kernel_h, shape.stride_h),
            side(shape.in_w, shape.out_w, shape.kernel_w, shape.stride_w))


def _input_dims(shape: LayerShape, cin: int, batch: int) -> tuple[int, ...]:
    """The lone layer graph's input: [batch, cin, h, w] for a conv; for a linear layer one row
    per token of the batch, [batch * tokens, cin] (tokens = in_h * in_w, 1 for a classifier)."""
    if shape.kind == "linear":
        return (batch * shape.in_h * shape.in_w, cin)
    return (batch, cin, shape.in_h, shape.in_w)


def _layer_graph(shape: LayerShape, cin: int, cout: int, batch: int) -> bytes:
    """One layer as ONNX, as it runs inside the exported network: Conv + bias + ReLU (BatchNorm is
    folded into the conv's bias at export and the activation fused by onnxruntime), or Gemm over
    the batch's tokens (`_input_dims`)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if shape.kind == "linear":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, _input_dims(shape, cin, batch))
        w = rng.standard_normal((cout, cin)).astype(np.float32) * 0.1
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(
            np.zeros(cout, np.float32), "b")]
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    else:
        groups = cin if shape.depthwise else shape.groups
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, _input_dims(shape, cin, batch))
        w = rng.standard_normal((cout, cin // groups, shape.kernel_h, shape.kernel_w)) * 0.1
        pad_h, pad_w = _padding(shape)
        inits = [numpy_helper.from_array(w.astype(np.float32), "w"),
                 numpy_helper.from_array(np.zeros(cout, np.float32), "b")]
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=groups,
                                  kernel_shape=[shape.kernel_h, shape.kernel_w],
                                  strides=[shape.stride_h, shape.stride_w],
                                  pads=[pad_h, pad_w, pad_h, pad_w]),
                 helper.make_node("Relu", ["c"], ["y"])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "layer", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class GraphTime(NamedTuple):
    """A lone layer graph's kernel time (ms): the layer's, and its edge nodes' before and after."""

    layer_ms: float
    entry_ms: float
    exit_ms: float


def _time_graph(data: bytes, input_shape: tuple[int, ...], settings: ProbeSettings,
                target_ms: float, profile_dir: str, edge_ops: tuple[str, ...] = EDGE_OPS
                ) -> GraphTime:
    """Kernel time (ms) of the layer in a lone graph: the fastest run of each node, summed over
    the nodes other than `edge_ops`, from onnxruntime's profiler; the edge nodes' apart, split
    into those run before the first layer node (entry) and after it (exit). With `edge_ops`
    empty, every node counts as the layer's (a whole block or network: its Transposes are its
    own).

    Kernel time, not wall time: a lone graph also pays ~25 us of per-run overhead and two
    NCHW <-> NCHWc reorders that the layer does not pay inside the exported network (where
    onnxruntime keeps the whole chain in NCHWc); on small layers that is as much as the layer.
    They are paid where a mixed-precision network switches between FP32 and INT8 (a lone INT8
    conv of 64 channels at 8x8, batch 32: 272 us, entry 55 us, exit 33 us, on the Xeon).
    The minimum: on this machine noise only ever adds time.
    """
    import onnxruntime as ort

    options = session_options(settings)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(profile_dir) / "layer")
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    feed = {first.name: random_input(input_shape, first.type)}
    spent, runs = 0.0, 0
    while runs < 2 + 5 or (spent < target_ms and runs < 60):  # two warm-up runs
        started = time.perf_counter()
        session.run(None, feed)
        spent += (time.perf_counter() - started) * 1000.0 if runs >= 2 else 0.0
        runs += 1
    path = Path(session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    kernels: dict[str, list[float]] = {}  # node -> its runs' times; nodes in execution order
    edge: dict[str, bool] = {}
    for event in sorted(events, key=lambda e: e.get("ts", 0)):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kernels.setdefault(event["name"], []).append(event["dur"] / 1000.0)
            edge[event["name"]] = bool(edge_ops) and \
                event["args"]["op_name"].startswith(edge_ops)
    fastest = {name: min(times[2:]) for name, times in kernels.items()}
    first = next((i for i, name in enumerate(fastest) if not edge[name]), len(fastest))
    parts = [0.0, 0.0, 0.0]  # layer, entry, exit
    for i, (name, ms) in enumerate(fastest.items()):
        parts[0 if not edge[name] else 1 if i < first else 2] += ms
    return GraphTime(*parts)


def _signature(shape: LayerShape, first: bool) -> tuple:
    """Layers with equal signatures have equal tables (resnet18's repeated blocks, for one)."""
    return (shape.kind, shape.kernel_h, shape.kernel_w, shape.stride_h, shape.stride_w,
            shape.groups if not shape.depthwise else -1, shape.in_h, shape.in_w, shape.out_h,
            shape.out_w, shape.in_channels, shape.out_channels, first)


def _axes(shape: LayerShape, first: bool, round_to: int, points: int) -> tuple[list, list]:
    """Grid of in and out channel counts for one layer's table."""
    if shape.depthwise:
        return [shape.in_channels], channel_grid(shape.out_channels, round_to, points)
    step = math.lcm(round_to, shape.groups)  # grouped convs keep their groups: widths shrink
    ins = [shape.in_channels] if first else channel_grid(shape.in_channels, step, points)
    return ins, channel_grid(shape.out_channels, step, points)


def _measure_table(shape: LayerShape, first: bool, round_to: int, points: int, batch: int,
                   settings: ProbeSettings, target_ms: float, profile_dir: str,
                   quantize: Quantize | None = None) -> LayerTable:
    ins, outs = _axes(shape, first, round_to, points)
    rows = []
    for cin in ins:
        row = []
        for cout in outs:
            c_in = cout * shape.in_channels // shape.out_channels if shape.depthwise else cin
            dims = _input_dims(shape, c_in, batch)
            graph = _layer_graph(shape, c_in, cout, batch)
            if quantize is not None:
                graph = quantize(graph, dims)
            row.append(_time_graph(graph, dims, settings, target_ms, profile_dir))
        rows.append(row)
    return LayerTable(ins, outs, [[t.layer_ms for t in row] for row in rows], shape.depthwise,
                      [[t.entry_ms for t in row] for row in rows],
                      [[t.exit_ms for t in row] for row in rows])


# --- the model -----------------------------------------------------------------------------------


def traffic_mb(shapes: list[LayerShape], batch: int, bytes_per_value: int = 4) -> float:
    """Megabytes a run moves through memory: the conv/linear weights (BatchNorm is folded into
    them at export) plus the batch's layer outputs, at 4 bytes a value in FP32 and 1 in INT8."""
    weights = sum(s.params for s in shapes)
    outputs = batch * sum(s.out_channels * s.out_pixels for s in shapes)
    return (weights + outputs) * bytes_per_value * 1e-6


class LatencyModel:
    """Predicts latency (ms) and the ratio to the dense network from predicted layer shapes.

    `metadata` holds the key (model, input size, batch, threads, onnxruntime, cpu, and the INT8
    format when the tables are INT8) and how the model was built (grid, fit, calibration, build
    seconds).
    """

    def __init__(self, tables: dict[str, LayerTable], beta: float, knee_mb: float,
                 dense_ms: float, dense_shapes: list[LayerShape], metadata: dict[str, Any],
                 blocks: BlockTables | None = None, rest_ms: float = 0.0):
        self.tables, self.beta, self.knee_mb = tables, beta, knee_mb
        self.blocks, self.rest_ms = blocks, rest_ms
        self._inside = blocks.inside if blocks is not None else set()
        self.batch = int(metadata["batch_size"])
        self.bytes_per_value = 1 if metadata.get("precision") else 4
        self.dense_ms, self.metadata = dense_ms, metadata
        self.dense_shapes = list(dense_shapes)
        missing = [s.name for s in dense_shapes if s.name not in tables
                   and s.name not in self._inside]
        if missing:
            raise ValueError(f"latency model has no table for layers {missing[:5]}")
        self.dense_sum = self.layer_sum(dense_shapes)
        self.dense_cost = self.cost(self.dense_sum, self.traffic(dense_shapes))

    @property
    def batch_size(self) -> int:
        return self.metadata["batch_size"]

    @property
    def key(self) -> dict[str, Any]:
        return self.metadata["key"]

    def traffic(self, shapes: list[LayerShape]) -> float:
        """`traffic_mb` at this model's precision."""
        return traffic_mb(shapes, self.batch, self.bytes_per_value)

    def layer_sum(self, shapes: list[LayerShape]) -> float:
        """Sum of the layers' table latencies (ms); a transformer block's layers count through
        its block table (`latency.blocks`)."""
        try:
            total = sum(self.tables[s.name](s.in_channels, s.out_channels) for s in shapes
                        if s.name not in self._inside)
            return total + (sum(self.blocks.block_ms(shapes).values()) if self.blocks else 0.0)
        except KeyError as exc:
            raise ValueError(f"layer {exc.args[0]!r} is not in the latency model of "
                             f"{self.metadata.get('model') or 'this network'}; shapes must "
                             "come from the network it was built for") from None

    def cost(self, layer_sum: float, traffic: float) -> float:
        """Modelled latency (ms) from a layer sum and the megabytes moved per run."""
        return layer_sum + self.rest_ms + self.beta * max(0.0, traffic - self.knee_mb)

    def predict_ratio(self, shapes: list[LayerShape]) -> float:
        """Latency of the network with these layer shapes over the dense network's latency."""
        return self.cost(self.layer_sum(shapes), self.traffic(shapes)) / self.dense_cost

    def layer_ratios(self, shapes: list[LayerShape]) -> list[float]:
        """Each layer's share of `predict_ratio(shapes)` (they sum to it): its table time plus
        its part of the traffic term, the knee split in proportion to the layers' traffic. What
        a mixed-precision network adds up layer by layer from two models (`pipeline.int8`).
        A transformer block's time is split over its layers in proportion to their MACs, and
        the constant rest over all layers in proportion to their time."""
        mb = [traffic_mb([s], self.batch, self.bytes_per_value) for s in shapes]
        total = sum(mb)
        excess = max(0.0, total - self.knee_mb)
        share = excess / total if total > 0 else 0.0
        times = self._layer_ms(shapes)
        rest = self.rest_ms / sum(times) if sum(times) > 0 else 0.0
        return [(t * (1 + rest) + self.beta * m * share) / self.dense_cost
                for t, m in zip(times, mb, strict=True)]

    def _layer_ms(self, shapes: list[LayerShape]) -> list[float]:
        """Each layer's table time; inside a block, the block's time split by MACs."""
        blocks = self.blocks.block_ms(shapes) if self.blocks else {}
        owner = {layer: site.name for site in (self.blocks.sites if self.blocks else [])
                 for layer in site.layers}
        macs: dict[str, int] = {}
        for s in shapes:
            if s.name in owner:
                macs[owner[s.name]] = macs.get(owner[s.name], 0) + s.macs
        return [blocks[owner[s.name]] * s.macs / macs[owner[s.name]] if s.name in owner
                else self.tables[s.name](s.in_channels, s.out_channels) for s in shapes]

    def layer_edges(self, shapes: list[LayerShape]) -> list[tuple[float, float]]:
        """Each layer's (entry, exit) edge time as ratios of the dense network's modelled cost:
        what a switch of precision at its input or output adds (`pipeline.int8`)."""
        return [(0.0, 0.0) if s.name in self._inside else  # a block's table has no edges
                tuple(ms / self.dense_cost for ms in self.tables[s.name].edges(
                    s.in_channels, s.out_channels)) for s in shapes]

    def predict_ms(self, shapes: list[LayerShape]) -> float:
        """Absolute latency at the probe settings: the ratio times the dense network's measured
        (median) latency."""
        return self.predict_ratio(shapes) * self.dense_ms

    def to_json(self) -> dict:
        return {"format": FORMAT, "tables": {k: t.to_json() for k, t in self.tables.items()},
                "beta": self.beta, "knee_mb": self.knee_mb, "dense_ms": self.dense_ms,
                "dense_shapes": [list(s) for s in self.dense_shapes], "metadata": self.metadata,
                "blocks": self.blocks.to_json() if self.blocks else None, "rest_ms": self.rest_ms}

    @classmethod
    def from_json(cls, blob: dict) -> LatencyModel:
        if blob.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        return cls({k: LayerTable.from_json(t) for k, t in blob["tables"].items()},
                   blob["beta"], blob["knee_mb"], blob["dense_ms"],
                   [LayerShape(*s) for s in blob["dense_shapes"]], blob["metadata"],
                   BlockTables.from_json(blob["blocks"]) if blob.get("blocks") else None,
                   blob.get("rest_ms", 0.0))


def fit_traffic(dense_sum: float, dense_mb: float, excess_ms: float,
                calibration: list[tuple[float, float, float]],
                knees: int = 40) -> tuple[float, float]:
    """(beta, knee) of latency = S + beta * max(0, T - knee), beta >= 0 (T: `traffic_mb`).

    `calibration` holds (layer sum S_i, traffic MB T_i, measured ratio r_i) per pruned network.
    For each knee on a grid over [0, T_dense), beta solves the linearised equations
    S_i + beta*h_i = r_i * (S_d + beta*h_d) (h = the hinge) by least squares, each divided by
    r_i * S_d so that it weighs a relative error; the pair with the smallest squared relative
    error of the predicted ratios wins (beta = 0, the plain layer sum, is a candidate too).
    Fewer than two calibrations: knee 0 and beta = `excess_ms` (the dense network's measured
    latency minus its layer sum) per dense megabyte moved.
    """
    if len(calibration) < 2:
        return max(0.0, excess_ms) / dense_mb if dense_mb > 0 else 0.0, 0.0
    s, w, r = (np.array(v, float) for v in zip(*calibration, strict=True))

    def error(beta: float, knee: float) -> float:
        cost_d = dense_sum + beta * max(0.0, dense_mb - knee)
        return float(np.sum(((s + beta * np.maximum(0.0, w - knee)) / cost_d / r - 1) ** 2))

    best = (error(0.0, 0.0), 0.0, 0.0)
    for knee in np.linspace(0.0, dense_mb, knees, endpoint=False):
        h, h_d = np.maximum(0.0, w - knee), max(0.0, dense_mb - knee)
        x = (h - r * h_d) / (r * dense_sum)
        y = (r * dense_sum - s) / (r * dense_sum)
        if not np.any(x):
            continue
        beta = max(0.0, float(x @ y / (x @ x)))
        candidate = (error(beta, float(knee)), beta, float(knee))
        if candidate[0] < best[0]:
            best = candidate
    return best[1], best[2]


def _fingerprint(shapes: list[LayerShape]) -> str:
    return hashlib.sha256(json.dumps([list(s) for s in shapes]).encode()).hexdigest()[:16]


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def cache_key(model_name: str, dense_shapes: list[LayerShape], settings: ProbeSettings,
              round_to: int, precision: str | None = None, blocks: bool = False
              ) -> dict[str, Any]:
    """What a latency model is valid for; a cached model with another key is rebuilt.
    `settings.example_shape` is the (C, H, W) the network runs on (`_for_example`); `precision`
    the INT8 format of INT8 tables (None: FP32, and no entry, so FP32 caches stay valid);
    `blocks` whether a transformer's blocks are priced by block tables (an entry only then: a
    transformer's cache from before them is rebuilt, a CNN's stays valid)."""
    key = {"model": model_name, "layers": _fingerprint(dense_shapes),
           "input_shape": list(settings.example_shape), "batch_size": settings.batch_size,
           "threads": settings.threads, "graph_optimization": settings.graph_optimization,
           "round_to": round_to, "cpu": cpu_name(), "onnxruntime": _ort_version()}
    if precision is not None:
        key["precision"] = precision
    if blocks:
        key["blocks"] = BLOCKS_FORMAT
    return key


def _for_example(settings: ProbeSettings, example_input: torch.Tensor) -> ProbeSettings:
    """The settings with the example's (C, H, W): the network's input decides what is timed."""
    return replace(settings, input_shape=tuple(example_input.shape[1:]))


def _layer_tables(shapes: list[LayerShape], skip: set[str], first_channels: int, round_to: int,
                  grid_points: int, batch: int, settings: ProbeSettings, target_ms: float,
                  profile_dir: str, quantize: Quantize | None) -> tuple[dict[str, LayerTable], int]:
    """A table per layer (but those in `skip`, priced by block tables), shared by equal
    signatures; and how many distinct tables were measured."""
    by_signature: dict[tuple, LayerTable] = {}
    tables: dict[str, LayerTable] = {}
    for i, shape in enumerate(shapes):
        if shape.name in skip:
            continue
        # The input's channels are never pruned: a layer that reads them keeps one row.
        first = i == 0 or shape.in_channels == first_channels
        key = _signature(shape, first)
        if key not in by_signature:
            by_signature[key] = _measure_table(shape, first, round_to, grid_points, batch,
                                               settings, target_ms, profile_dir, quantize)
        tables[shape.name] = by_signature[key]
    return tables, len(by_signature)


def _block_tables(dense_model: nn.Module, one: torch.Tensor, batch: int, settings: ProbeSettings,
                  round_to: int, grid_points: int, target_ms: float, profile_dir: str,
                  quantize: Quantize | None) -> BlockTables | None:
    """Per-block tables of a transformer (`latency.blocks`), None for a network without
    attention. Heads on a grid of step 1, hidden width of step `round_to`."""
    if not has_attention(dense_model):
        return None

    def time_graph(data: bytes, dims: tuple[int, ...]) -> float:
        graph = data if quantize is None else quantize(data, dims)
        return _time_graph(graph, dims, settings, BLOCK_RUNS * target_ms, profile_dir,
                           edge_ops=()).layer_ms

    return measure_block_tables(
        dense_model, one, batch, lambda heads: channel_grid(heads, 1, grid_points),
        lambda hidden: channel_grid(hidden, round_to, grid_points), time_graph)


def build_latency_model(dense_model: nn.Module, example_input: torch.Tensor,
                        settings: ProbeSettings, round_to: int, grid_points: int = 4,
                        calibration_models: list[nn.Module] | None = None,
                        model_name: str = "", target_ms: float = 15.0,
                        quantize: Quantize | None = None,
                        precision: str | None = None, price_blocks: bool = True) -> LatencyModel:
    """Time every layer over its grid, measure the dense network, set the traffic term from its
    excess or fit it on the `calibration_models` (pruned copies of `dense_model`; `fit_traffic`).

    A transformer (`pruning.has_attention`; rewritten by `pruning.explicit_attention` first) gets
    block tables instead for the layers of its encoder blocks (`latency.blocks`), and the rest
    of its time as a constant: the kernel time of the network with its blocks removed
    (`blocks.without_blocks`) less the tables of the layers outside the blocks (patch
    embedding, head); no traffic term, no calibration. `price_blocks`
    False times a transformer's layers alone as a CNN's (the ablation of results/vit-latency).
    `settings.batch_size` None picks it with `auto_batch_size`. `target_ms` is the time each grid
    point is run for. Calibration uses `settings`' blocks and runs. With `quantize` (and the
    format's name as `precision`) every graph timed is its INT8 version (module docstring).
    """
    from compressor.io.export import onnx_bytes

    started = time.perf_counter()
    one = example_input[:1].detach().cpu()
    settings = _for_example(settings, one)
    dense_model = _explicit(dense_model, one)
    dense_onnx = onnx_bytes(dense_model, one)
    dense_session = make_session(dense_onnx, settings)
    settings = resolve_batch_size(settings, dense_session)
    batch = settings.batch_size

    def export(network: nn.Module) -> bytes:
        data = onnx_bytes(network, one)
        return data if quantize is None else quantize(data, (batch, *one.shape[1:]))

    if quantize is not None:
        dense_onnx = export(dense_model)
        dense_session = make_session(dense_onnx, settings)
    dense_session.prepare(batch)
    shapes = measure_layer_shapes(dense_model, one)
    with tempfile.TemporaryDirectory(prefix="compressor-latency-") as profile_dir:
        blocks = _block_tables(dense_model, one, batch, settings, round_to, grid_points,
                               target_ms, profile_dir, quantize) if price_blocks else None
        tables, distinct = _layer_tables(shapes, blocks.inside if blocks else set(),
                                         one.shape[1], round_to, grid_points, batch, settings,
                                         target_ms, profile_dir, quantize)
        without_ms = _time_graph(export(without_blocks(dense_model, one)), (batch, *one.shape[1:]),
                              settings, BLOCK_RUNS * target_ms, profile_dir,
                              edge_ops=()).layer_ms if blocks else 0.0
    table_seconds = time.perf_counter() - started
    dense = measure_ms(dense_session, replace(settings, statistic="min"))
    dense_median = statistics.median(dense.runs_ms)

    key = cache_key(model_name, shapes, settings, round_to, precision, blocks is not None)
    metadata: dict[str, Any] = {
        "key": key, **key, "grid_points": grid_points, "target_ms": target_ms,
        "settings": settings.as_dict(), "distinct_tables": distinct,
        "grid_measurements": sum(len(t.ins) * len(t.outs) for t in set(tables.values())) + (
            sum(len(t.heads) * len(t.hidden) for t in blocks.tables.values()) if blocks else 0),
        "table_seconds": table_seconds, "dense_min_ms": dense.min_ms}
    model = LatencyModel(tables, 0.0, 0.0, dense_median, shapes, metadata, blocks)
    if blocks is not None:  # the layers outside the blocks (patch embedding, head) have tables
        rest = max(0.0, without_ms - sum(tables[s.name](s.in_channels, s.out_channels)
                                         for s in shapes if s.name in tables))
        metadata.update({"without_blocks_ms": without_ms, "rest_ms": rest,
                         "block_tables": len(blocks.tables)})
        return _finish(LatencyModel(tables, 0.0, 0.0, dense_median, shapes, metadata, blocks,
                                    rest), dense.min_ms, [], started)
    excess = dense.min_ms - model.dense_sum
    calibration = []
    for pruned in calibration_models or []:
        session = make_session(export(pruned), settings)
        pruned_shapes = measure_layer_shapes(pruned, one)
        ratio = measure_pair(session, dense_session, settings).ratio
        calibration.append((model.layer_sum(pruned_shapes), model.traffic(pruned_shapes), ratio))
    beta, knee = fit_traffic(model.dense_sum, model.traffic(shapes), excess, calibration)
    return _finish(LatencyModel(tables, beta, knee, dense_median, shapes, metadata), dense.min_ms,
                   calibration, started)


def _finish(model: LatencyModel, dense_min_ms: float,
            calibration: list[tuple[float, float, float]], started: float) -> LatencyModel:
    """The model with its fit and build time recorded in its metadata."""
    model.metadata.update({
        "dense_layer_sum_ms": model.dense_sum, "dense_excess_ms": dense_min_ms - model.dense_sum,
        "dense_traffic_mb": model.traffic(model.dense_shapes), "beta_ms_per_mb": model.beta,
        "knee_mb": model.knee_mb,
        "calibration": [{"measured": r, "predicted": model.cost(s, t) / model.dense_cost,
                         "traffic_mb": t} for s, t, r in calibration],
        "build_seconds": time.perf_counter() - started})
    return model


def _explicit(model: nn.Module, one: torch.Tensor) -> nn.Module:
    """A transformer in the form every pruned copy has (`pruning.explicit_attention`, checked
    equal); any other network as it is."""
    return explicit_attention(model, one) if has_attention(model) else model


# --- cache ---------------------------------------------------------------------------------------


def calibration_policies(skeleton, count: int, seed: int = 0,
                         max_ratio: float = 0.8) -> list[dict[str, float]]:
    """`count` pruning policies that spread over the cost range (the knee needs small networks
    as well as large ones): uniform at 0.25, 0.5 and 0.75, then random per-unit ratios under a
    random ceiling (seeded: the same every build)."""
    rng = random.Random(seed)
    uniform = [{name: r for name in skeleton.names} for r in (0.5, 0.25, 0.75)][:count]
    randoms = []
    for _ in range(count - len(uniform)):
        ceiling = rng.uniform(0.2, max_ratio)
        randoms.append({name: rng.uniform(0.0, ceiling) for name in skeleton.names})
    return uniform + randoms


def load_or_build(cache_dir: str | Path, model_name: str, dense: nn.Module,
                  example_input: torch.Tensor, settings: ProbeSettings, round_to: int,
                  skeleton=None, say: Callable[[str], None] | None = None,
                  calibration: int = 0, grid_points: int = 4, quantize: Quantize | None = None,
                  precision: str | None = None) -> LatencyModel:
    """The cached model for this network/input/batch/threads/runtime/CPU, else build and cache one.

    With `skeleton` (compressor.pruning.Skeleton of `dense`) and `calibration` > 0, that many
    pruned copies (`calibration_policies`) fit the traffic term; the default (0) uses the
    dense network's measured excess instead, which was as accurate in results/latency-model
    and saves their export and measurement. `settings.batch_size` None accepts a cached model of
    any batch (it was picked automatically too). `quantize` and `precision`: INT8 tables in that
    format, cached beside the FP32 ones.
    """
    say = say or log.info
    one = example_input[:1].detach().cpu()
    settings = _for_example(settings, one)
    transformer = has_attention(dense)
    dense_shapes = measure_layer_shapes(_explicit(dense, one), one)
    key = cache_key(model_name, dense_shapes, settings, round_to, precision, transformer)
    # One file per setup, whatever the batch: an automatic batch then finds the model built with
    # the batch it picked last time.
    name = "-".join(str(v) for v in (model_name or "model",
                                      "x".join(str(d) for d in settings.example_shape),
                                      f"t{settings.threads}", settings.graph_optimization,
                                      f"r{round_to}", *([precision] if precision else [])))
    path = Path(cache_dir) / f"{name}.json"
    if path.exists():
        try:
            cached = LatencyModel.from_json(json.loads(path.read_text()))
            if all(cached.key.get(k) == v for k, v in key.items()
                   if not (k == "batch_size" and v is None)):
                return cached
            say(f"latency model cache {path} was built for another setup; rebuilding")
        except (ValueError, KeyError, TypeError) as exc:  # damaged or older: rebuild
            say(f"latency model cache {path} is unreadable ({type(exc).__name__}); rebuilding")
    what = f"{precision} latency model" if precision else "latency model"
    say(f"measuring a {what} for {model_name} (once per model, input, runtime and CPU)")
    models = None
    if skeleton is not None and calibration > 0:
        from compressor import pruning

        config = pruning.PruningConfig(round_to=round_to)
        models = [pruning.apply_policy(dense, policy, one, config)
                  for policy in calibration_policies(skeleton, calibration)]
    model = build_latency_model(dense, one, settings, round_to, grid_points,
                                calibration_models=models, model_name=model_name,
                                quantize=quantize, precision=precision)
    atomic.write_json(path, model.to_json())
    say(f"{what} for {model_name} built in {model.metadata['build_seconds']:.0f} s "
        f"(batch {model.batch_size}); cached in {path}")
    return model
