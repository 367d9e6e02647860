"""A latency model: predict a pruned network's ONNX Runtime latency ratio without exporting it.

NetAdapt's lookup table, per layer: every Conv2d/Linear of the dense network is timed alone (a
one-node ONNX graph plus its ReLU, at the probe's batch size and feature-map size) over a grid of
(in, out) channel counts that are multiples of `round_to`, and interpolated bilinearly in between.
The layers' sum misses what a whole graph adds or fuses away (BatchNorm folding, residual adds,
pooling, memory traffic between layers), so the ratio is predicted as

    ratio(policy) = (sum of table lookups(policy) + c) / (sum of table lookups(dense) + c)

with one constant c fitted on a few whole-network paired measurements (uniformly pruned copies).
Prediction is pure numpy over a few dozen tables: microseconds, so the budget wall can call it
hundreds of times per episode. Tables are cached on disk per model, input, batch, threads,
onnxruntime version and CPU, since they hold only for the machine that measured them.
"""

from __future__ import annotations

import bisect
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor import atomic
from compressor.latency import ProbeSettings, auto_batch_size, make_session, measure_pair
from compressor.provenance import cpu_name
from compressor.shapes import LayerShape, measure_layer_shapes

FORMAT = "compressor-latency-model-v1"


def _grid(full: int, step: int, points: int) -> list[int]:
    """Up to `points` channel counts from `step` to `full`, multiples of `step` plus `full`."""
    if full <= step:
        return [full]
    values = np.linspace(step, full, points)
    grid = sorted({min(full, max(step, int(round(v / step)) * step)) for v in values} | {full})
    return grid


def _layer_graph(shape: LayerShape, cin: int, cout: int, batch: int) -> bytes:
    """One layer (+ ReLU) as an ONNX model: what the layer costs inside the exported network."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if shape.kind == "linear":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin])
        w = numpy_helper.from_array(rng.standard_normal((cin, cout)).astype(np.float32), "w")
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cout])
        inits = [w]
    else:
        groups = cin if shape.depthwise else shape.groups
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                          [batch, cin, shape.in_hw, shape.in_hw])
        w = numpy_helper.from_array(rng.standard_normal(
            (cout, cin // groups, shape.kernel, shape.kernel)).astype(np.float32), "w")
        b = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
        pad = shape.kernel // 2
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=groups,
                                  kernel_shape=[shape.kernel] * 2, strides=[shape.stride] * 2,
                                  pads=[pad] * 4),
                 helper.make_node("Relu", ["c"], ["y"])]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        inits = [w, b]
    graph = helper.make_graph(nodes, "layer", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def _time_graph(data: bytes, settings: ProbeSettings, shape: LayerShape, cin: int,
                batch: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    if settings.threads > 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    dims = (batch, cin) if shape.kind == "linear" else (batch, cin, shape.in_hw, shape.in_hw)
    feed = {"x": np.random.default_rng(0).standard_normal(dims).astype(np.float32)}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(15):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    # The minimum: isolated layers are short, and the noise on this machine only ever adds time.
    return min(times) * 1000.0


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear interpolation, clamped at the ends (plain Python: ~10x np.interp on
    these 1-5 point grids, and the wall calls it thousands of times per episode)."""
    if x <= xs[0] or len(xs) == 1:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1 = xs[i - 1], xs[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


class LayerTable:
    """Latency of one layer over a grid of (in, out) channel counts, interpolated bilinearly."""

    def __init__(self, ins: list[int], outs: list[int], ms, depthwise: bool):
        self.ins, self.outs = [float(v) for v in ins], [float(v) for v in outs]
        self.ms = [[float(v) for v in row] for row in np.asarray(ms, float)]
        self.depthwise = depthwise

    def __call__(self, cin: int, cout: int) -> float:
        if self.depthwise or len(self.ins) == 1:
            return _interp(cout, self.outs, self.ms[0])
        column = [_interp(cout, self.outs, row) for row in self.ms]
        return _interp(cin, self.ins, column)

    def to_json(self) -> dict:
        return {"ins": self.ins, "outs": self.outs, "ms": self.ms,
                "depthwise": self.depthwise}

    @classmethod
    def from_json(cls, d: dict) -> LayerTable:
        return cls(d["ins"], d["outs"], np.asarray(d["ms"]), d["depthwise"])


class LatencyModel:
    """Predicts latency (ms) and the ratio to the dense network from predicted layer shapes."""

    def __init__(self, tables: dict[str, LayerTable], constant_ms: float, dense_ms: float,
                 dense_shapes: list[LayerShape], metadata: dict[str, Any]):
        self.tables, self.constant_ms, self.dense_ms = tables, constant_ms, dense_ms
        self.metadata = metadata
        self.dense_sum = self._sum(dense_shapes)

    @property
    def batch_size(self) -> int:
        return self.metadata["batch_size"]

    def _sum(self, shapes: list[LayerShape]) -> float:
        return sum(self.tables[s.name](s.in_channels, s.out_channels) for s in shapes)

    def predict_ratio(self, shapes: list[LayerShape]) -> float:
        return (self._sum(shapes) + self.constant_ms) / (self.dense_sum + self.constant_ms)

    def predict_ms(self, shapes: list[LayerShape]) -> float:
        """Absolute latency: the ratio times the dense network's measured latency."""
        return self.predict_ratio(shapes) * self.dense_ms

    def to_json(self) -> dict:
        return {"format": FORMAT, "tables": {k: t.to_json() for k, t in self.tables.items()},
                "constant_ms": self.constant_ms, "dense_ms": self.dense_ms,
                "metadata": self.metadata}


def _fit_constant(sums: list[float], dense_sum: float, ratios: list[float]) -> float:
    """c minimising the squared relative error of (s + c) / (dense + c) against measured ratios."""
    candidates = np.concatenate([[0.0], np.geomspace(dense_sum * 1e-3, dense_sum * 3, 400)])
    candidates = np.concatenate([candidates, -np.geomspace(dense_sum * 1e-3, min(sums) * 0.95,
                                                           200)])
    best, best_err = 0.0, float("inf")
    for c in candidates:
        if dense_sum + c <= 0 or min(sums) + c <= 0:
            continue
        err = sum(((s + c) / (dense_sum + c) / r - 1) ** 2 for s, r in zip(sums, ratios,
                                                                          strict=True))
        if err < best_err:
            best, best_err = float(c), err
    return best


def build_latency_model(dense: nn.Module, example_input: torch.Tensor, settings: ProbeSettings,
                        round_to: int = 8, grid_points: int = 5,
                        calibration: list[tuple[nn.Module, list[LayerShape]]] | None = None,
                        model_name: str = "") -> LatencyModel:
    """Time every layer over its grid, measure the dense network, fit c on `calibration` models."""
    from compressor.export import onnx_bytes

    started = time.perf_counter()
    example_input = example_input[:1]
    dense_session = make_session(onnx_bytes(dense, example_input), settings)
    if settings.batch_size is None:
        settings = replace(settings, batch_size=auto_batch_size(dense_session,
                                                                settings.input_size))
    dense_session.prepare(settings.batch_size, settings.input_size)
    batch = settings.batch_size
    shapes = measure_layer_shapes(dense, example_input)
    first = shapes[0].name
    tables: dict[str, LayerTable] = {}
    for shape in shapes:
        outs = _grid(shape.out_channels, round_to, grid_points)
        if shape.depthwise:
            ms = [[_time_graph(_layer_graph(shape, o, o, batch), settings, shape, o, batch)
                   for o in outs]]
            tables[shape.name] = LayerTable([shape.in_channels], outs, np.array(ms), True)
            continue
        ins = [shape.in_channels] if shape.name == first else _grid(shape.in_channels, round_to,
                                                                     grid_points)
        # Grouped (non-depthwise) convs need channel counts divisible by their groups.
        if shape.groups > 1:
            ins = [i for i in ins if i % shape.groups == 0] or [shape.in_channels]
            outs = [o for o in outs if o % shape.groups == 0] or [shape.out_channels]
        ms = np.array([[_time_graph(_layer_graph(shape, i, o, batch), settings, shape, i, batch)
                        for o in outs] for i in ins])
        tables[shape.name] = LayerTable(ins, outs, ms, False)
    reference = statistics.median(
        [statistics.median(dense_session.run_once() for _ in range(settings.runs))
         for _ in range(settings.blocks)])
    metadata = {"model": model_name, "input_size": settings.input_size, "batch_size": batch,
                "threads": settings.threads, "round_to": round_to, "grid_points": grid_points,
                "cpu": cpu_name(), "onnxruntime": _ort_version(), "settings": settings.as_dict()}
    model = LatencyModel(tables, 0.0, reference, shapes, metadata)
    if calibration:
        sums, ratios = [], []
        for pruned, pruned_shapes in calibration:
            session = make_session(onnx_bytes(pruned, example_input), settings)
            ratios.append(measure_pair(session, dense_session, settings).ratio)
            sums.append(model._sum(pruned_shapes))
        model.constant_ms = _fit_constant(sums, model.dense_sum, ratios)
        metadata["calibration_ratios"] = ratios
    metadata["build_seconds"] = time.perf_counter() - started
    return model


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def cache_key(model_name: str, settings: ProbeSettings, round_to: int) -> dict:
    return {"model": model_name, "input_size": settings.input_size,
            "batch_size": settings.batch_size, "threads": settings.threads,
            "round_to": round_to, "cpu": cpu_name(), "onnxruntime": _ort_version()}


def load_or_build(cache_dir: str | Path, model_name: str, dense: nn.Module,
                  example_input: torch.Tensor, settings: ProbeSettings, round_to: int = 8,
                  skeleton=None, say=print) -> LatencyModel:
    """The cached model for this network/input/runtime/machine, else build (and cache) one.

    With `skeleton`, uniformly pruned copies (ratios 0.25, 0.5, 0.75) calibrate the constant.
    """
    key = cache_key(model_name, settings, round_to)
    safe = "-".join(str(v) for v in (model_name, settings.input_size, settings.batch_size or "auto",
                                      settings.threads, round_to))
    path = Path(cache_dir) / f"{safe}.json"
    dense_shapes = measure_layer_shapes(dense, example_input[:1])
    if path.exists():
        try:
            blob = json.loads(path.read_text())
            meta = blob["metadata"]
            if blob.get("format") == FORMAT and all(
                    meta.get(k) == v for k, v in key.items() if k != "batch_size" or v):
                return LatencyModel({k: LayerTable.from_json(t) for k, t in blob["tables"].items()},
                                    blob["constant_ms"], blob["dense_ms"], dense_shapes, meta)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a damaged cache is rebuilt
    say(f"measuring a latency table for {model_name} (once per model, input, runtime and CPU)")
    calibration = None
    if skeleton is not None:
        from compressor import pruning

        config = pruning.PruningConfig(round_to=round_to)
        calibration = []
        for ratio in (0.25, 0.5, 0.75):
            policy = pruning.uniform_policy(skeleton, ratio)
            calibration.append((pruning.apply_policy(dense, policy, example_input[:1], config),
                                skeleton.layer_shapes(policy)))
    model = build_latency_model(dense, example_input, settings, round_to,
                                calibration=calibration, model_name=model_name)
    atomic.write_json(path, model.to_json())
    return model
