"""The latency model: tables, the overhead fit, a real build against measurements, the cache."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
import torch_pruning as tp
from torch import nn

from compressor import latency
from compressor.io.export import onnx_bytes
from compressor.latency import model as lm
from compressor.latency import tables
from compressor.latency.probe import ProbeSettings
from compressor.pruning.shapes import LayerShape, measure_layer_shapes
from compressor.zoo.models import build_model, classifier_name
from tests.work import work_of

# A small build: 3 grid points per axis, short timings. Accuracy targets belong to the benchmark
# (benchmarks/latency_model.py, results/latency-model); these tests check the mechanics, and
# that a prediction has the magnitude of a paired measurement (within a factor of two).
SETTINGS = ProbeSettings(batch_size=4, warmup=2, runs=8, blocks=6)
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tp_prune(model: nn.Module, ratio: float, x: torch.Tensor) -> nn.Module:
    work = copy.deepcopy(model).eval()
    with torch.enable_grad():
        tp.pruner.BasePruner(
            work, x[:1], importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio, round_to=8,
            ignored_layers=[work.get_submodule(classifier_name(work))]).step()
    return work.eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet18", 10).eval()


@pytest.fixture(scope="module")
def pruned(resnet):
    return {r: tp_prune(resnet, r, X) for r in (0.1, 0.3, 0.6)}


@pytest.fixture(scope="module")
def built(resnet, pruned):
    return lm.build_latency_model(resnet, X, SETTINGS, round_to=8, grid_points=3, target_ms=4.0,
                                  calibration_models=[pruned[0.3], pruned[0.6]],
                                  model_name="resnet18")


# --- pure parts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("full, step, points", [(64, 8, 4), (512, 8, 5), (24, 8, 9), (8, 8, 3),
                                                (3, 8, 3), (10, 8, 4), (96, 32, 3)])
def test_grid_holds_multiples_of_the_step_and_the_full_count(full, step, points):
    grid = tables.channel_grid(full, step, points)
    assert grid == sorted(set(grid)) and grid[-1] == full and len(grid) <= points + 1
    assert all(v % step == 0 for v in grid[:-1]) and grid[0] == min(full, step)


def test_table_reproduces_a_bilinear_function_and_clamps():
    def f(i, o):
        return 0.1 + 0.002 * i * o + 0.01 * i + 0.03 * o

    ins, outs = [8, 32, 64], [8, 16, 48, 64]
    table = lm.LayerTable(ins, outs, [[f(i, o) for o in outs] for i in ins], depthwise=False)
    for i, o in [(8, 8), (24, 40), (56, 17), (64, 64)]:
        assert table(i, o) == pytest.approx(f(i, o))
    assert table(100, 100) == pytest.approx(f(64, 64)) and table(1, 1) == pytest.approx(f(8, 8))
    again = lm.LayerTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again(24, 40) == table(24, 40) and again.edges(24, 40) == (0.0, 0.0)
    # Edge times interpolate on the same grid.
    edged = lm.LayerTable(ins, outs, table.ms, False, [[f(i, o) for o in outs] for i in ins],
                          [[2 * f(i, o) for o in outs] for i in ins])
    again = lm.LayerTable.from_json(json.loads(json.dumps(edged.to_json())))
    assert again.edges(24, 40) == pytest.approx((f(24, 40), 2 * f(24, 40)))
    depthwise = lm.LayerTable([32], [8, 32], [[1.0, 4.0]], depthwise=True)
    assert depthwise(16, 16) == pytest.approx(2.0)


def test_padding_maps_the_input_side_to_the_output_side():
    for k, s, i, o in [(3, 1, 8, 8), (3, 2, 32, 16), (7, 2, 32, 16), (1, 2, 8, 4), (1, 1, 4, 4)]:
        pad_h, pad_w = lm._padding(LayerShape("c", "conv", 8, 8, k, k, s, s, 1, i, i, o, o, False))
        assert pad_h == pad_w and (i + 2 * pad_h - k) // s + 1 == o
    # Per axis: a 3x5 kernel, stride (2, 1), on a 28x40 map.
    shape = LayerShape("c", "conv", 8, 8, 3, 5, 2, 1, 1, 28, 40, 14, 40, False)
    pad_h, pad_w = lm._padding(shape)
    assert ((28 + 2 * pad_h - 3) // 2 + 1, (40 + 2 * pad_w - 5) // 1 + 1) == (14, 40)


def test_traffic_fit_recovers_a_known_hinge():
    beta, knee = 0.05, 10.0
    dense_s, dense_w = 4.0, 40.0

    def cost(s, w):
        return s + beta * max(0.0, w - knee)

    calibration = [(s, w, cost(s, w) / cost(dense_s, dense_w))
                   for s, w in [(2.5, 25.0), (1.0, 11.0), (0.4, 3.0), (3.0, 30.0), (1.5, 15.0)]]
    fitted_beta, fitted_knee = lm.fit_traffic(dense_s, dense_w, 0.0, calibration,
                                                     knees=40)
    assert fitted_knee == pytest.approx(knee) and fitted_beta == pytest.approx(beta, rel=1e-6)
    # Networks that run as their layer sums say: no weight term at all.
    plain = [(s, w, s / dense_s) for s, w, _ in calibration]
    assert lm.fit_traffic(dense_s, dense_w, 1.0, plain) == (0.0, 0.0)
    # Without calibration the dense network's measured excess goes onto its weight bytes.
    assert lm.fit_traffic(dense_s, dense_w, 2.0, []) == (pytest.approx(0.05), 0.0)
    assert lm.fit_traffic(dense_s, dense_w, -1.0, []) == (0.0, 0.0)


# --- a real build --------------------------------------------------------------------------------


def test_dense_shapes_predict_ratio_one_and_the_measured_latency(built, resnet):
    shapes = measure_layer_shapes(resnet, X)
    assert built.predict_ratio(shapes) == pytest.approx(1.0)
    assert built.predict_ms(shapes) == pytest.approx(built.dense_ms)
    meta = built.metadata
    for key in ("model", "input_shape", "batch_size", "threads", "onnxruntime", "cpu",
                "build_seconds"):
        assert key in meta and meta[key] == built.key.get(key, meta[key])
    assert meta["batch_size"] == 4 and meta["distinct_tables"] < len(shapes)  # shared tables
    assert len(meta["calibration"]) == 2 and built.beta >= 0


def test_more_pruning_is_predicted_faster(built, pruned):
    r = {k: built.predict_ratio(measure_layer_shapes(m, X)) for k, m in pruned.items()}
    assert r[0.6] < r[0.3] < r[0.1] < 1.0


def test_prediction_has_the_magnitude_of_a_paired_measurement(built, resnet, pruned):
    # How near is the benchmark's question (benchmarks.latency_model: median and worst error over
    # 50 policies, on a quiet machine). Here, on any machine: the most pruned network (~0.2 of
    # the dense latency) is predicted within a factor of two of its paired measurement, which a
    # table that missed the pruning or a wrong traffic term would not be, and which no paired
    # measurement's noise nor this small model's error (under 25%) comes near.
    reference = latency.make_session(onnx_bytes(resnet, X), SETTINGS)
    candidate = latency.make_session(onnx_bytes(pruned[0.6], X), SETTINGS)
    measured = latency.measure_pair(candidate, reference, SETTINGS).ratio
    predicted = built.predict_ratio(measure_layer_shapes(pruned[0.6], X))
    assert 0.5 < predicted / measured < 2.0, (predicted, measured)


def test_prediction_is_plain_python_over_the_tables_and_needs_known_layers(built, pruned):
    # The budget wall predicts thousands of times an episode: no session, no tensor, and a
    # bounded number of lines per layer (counted, not timed; ~25 a layer today).
    shapes = measure_layer_shapes(pruned[0.3], X)
    work = work_of(built.predict_ratio, shapes)
    assert work.packages <= {"compressor", "builtins", "math", "_bisect"}, work.packages
    assert work.lines <= 50 * len(shapes)
    with pytest.raises(ValueError, match="not in the latency model"):
        built.predict_ratio([shapes[0]._replace(name="nope")])


def test_depthwise_and_grouped_layers_get_tables():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),  # depthwise
        nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=16), nn.ReLU(),  # grouped
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    settings = ProbeSettings(batch_size=2, warmup=1, runs=3, blocks=2)
    model = lm.build_latency_model(net, X, settings, round_to=8, grid_points=3, target_ms=1.0)
    shapes = measure_layer_shapes(net, X)
    depthwise, grouped = model.tables["4"], model.tables["6"]
    assert depthwise.depthwise and depthwise.outs == [8.0, 16.0, 32.0]
    assert grouped.ins == grouped.outs == [16.0, 32.0]  # multiples of lcm(8, groups=16)
    assert model.tables["0"].ins == [3.0]  # the image's channels are never pruned
    half = [s._replace(in_channels=max(3, s.in_channels // 2) if s.name != "0" else 3,
                       out_channels=s.out_channels // 2 if s.name != "10" else 10,
                       groups=s.groups // 2 if s.name == "4" else s.groups) for s in shapes]
    assert model.predict_ratio(half) < 1.0


# --- cache ---------------------------------------------------------------------------------------


def test_cache_round_trip_and_rebuild_on_mismatch(built, resnet, tmp_path, monkeypatch):
    builds = []

    def fake_build(*args, **kwargs):
        builds.append(args)
        return built

    monkeypatch.setattr(lm, "build_latency_model", fake_build)
    monkeypatch.setattr(lm, "cache_key", lambda *a: built.key)  # the fixture's key
    first = lm.load_or_build(tmp_path, "resnet18", resnet, X, SETTINGS, round_to=8,
                             say=lambda m: None)
    assert len(builds) == 1 and first is built
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    shapes = measure_layer_shapes(resnet, X)
    half = [s._replace(out_channels=max(8, s.out_channels // 2)) for s in shapes]
    again = lm.load_or_build(tmp_path, "resnet18", resnet, X, SETTINGS, round_to=8,
                             say=lambda m: None)
    assert len(builds) == 1  # loaded, not rebuilt
    assert again.predict_ratio(half) == pytest.approx(built.predict_ratio(half))
    assert again.dense_ms == built.dense_ms and again.batch_size == built.batch_size
    # An automatic batch accepts the cached one.
    lm.load_or_build(tmp_path, "resnet18", resnet, X, replace(SETTINGS, batch_size=None),
                     round_to=8, say=lambda m: None)
    assert len(builds) == 1
    # Another CPU (or runtime, threads, ...) in the cached key: rebuilt.
    blob = json.loads(files[0].read_text())
    blob["metadata"]["key"]["cpu"] = "another CPU"
    files[0].write_text(json.dumps(blob))
    lm.load_or_build(tmp_path, "resnet18", resnet, X, SETTINGS, round_to=8, say=lambda m: None)
    assert len(builds) == 2
    # A damaged cache: rebuilt too.
    files[0].write_text("{ truncated")
    lm.load_or_build(tmp_path, "resnet18", resnet, X, SETTINGS, round_to=8, say=lambda m: None)
    assert len(builds) == 3


def test_cache_key_names_what_a_table_depends_on(resnet):
    shapes = measure_layer_shapes(resnet, X)
    key = lm.cache_key("resnet18", shapes, SETTINGS, 8)
    assert {"model", "input_shape", "batch_size", "threads", "onnxruntime", "cpu"} <= set(key)
    assert key["input_shape"] == [3, 32, 32]
    other = build_model("resnet18", 100)
    assert lm.cache_key("resnet18", measure_layer_shapes(other, X), SETTINGS, 8) != key


def test_calibration_policies_are_seeded_and_in_range():
    class FakeSkeleton:
        names = ("a", "b", "c")

    policies = lm.calibration_policies(FakeSkeleton(), 5)
    assert policies == lm.calibration_policies(FakeSkeleton(), 5) and len(policies) == 5
    assert all(0 <= r < 1 for p in policies for r in p.values())


# --- any input shape -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd():
    from tests.unit.pruning.test_shapes import odd_cnn, odd_input

    model, x = odd_cnn(), odd_input(1)
    settings = ProbeSettings(batch_size=4, warmup=1, runs=3, blocks=2)  # input_size 32 ignored
    built = lm.build_latency_model(model, x, settings, round_to=8, grid_points=3, target_ms=1.0,
                                   model_name="odd")
    return model, x, built


def test_a_one_channel_non_square_network_gets_a_model_of_its_real_shape(odd):
    from compressor.pruning import PruningConfig, build_skeleton, uniform_policy

    model, x, built = odd
    assert built.key["input_shape"] == [1, 28, 40]
    assert list(built.metadata["settings"]["input_shape"]) == [1, 28, 40]
    assert built.tables["stem.0"].ins == [1.0]  # the input's single channel is never pruned
    skeleton = build_skeleton(model, x, PruningConfig(round_to=8))
    assert built.predict_ratio(skeleton.layer_shapes({})) == pytest.approx(1.0)
    light, heavy = (built.predict_ratio(skeleton.layer_shapes(uniform_policy(skeleton, r)))
                    for r in (0.25, 0.75))
    assert math.isfinite(heavy) and 0 < heavy < light < 1.0


def test_a_per_layer_graph_runs_at_the_layers_real_height_and_width(odd):
    import onnx

    _, x, _ = odd
    shapes = {s.name: s for s in measure_layer_shapes(odd[0], x)}
    proto = onnx.load_from_string(lm._layer_graph(shapes["down.0"], 16, 32, batch=2))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    attrs = {a.name: list(a.ints) for a in conv.attribute if a.ints}
    assert dims == [2, 16, 28, 40] and attrs["strides"] == [2, 1]
    assert attrs["kernel_shape"] == [3, 3]
    stem = onnx.load_from_string(lm._layer_graph(shapes["stem.0"], 1, 16, batch=2))
    stem_conv = next(n for n in stem.graph.node if n.op_type == "Conv")
    assert {a.name: list(a.ints) for a in stem_conv.attribute}["kernel_shape"] == [3, 5]


def test_a_linear_layers_graph_maps_every_token_of_the_batch():
    import onnx

    tokens = LayerShape("blocks.0.mlp.fc1", "linear", 64, 128, 1, 1, 1, 1, 1, 65, 1, 65, 1, True)
    head = tokens._replace(name="head", in_h=1, out_h=1)
    for shape, rows in ((tokens, 4 * 65), (head, 4)):
        proto = onnx.load_from_string(lm._layer_graph(shape, 64, 32, batch=4))
        assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [rows, 64]


def test_the_cache_file_is_keyed_by_the_input_shape(odd, tmp_path, monkeypatch):
    model, x, built = odd
    monkeypatch.setattr(lm, "build_latency_model", lambda *a, **k: built)
    lm.load_or_build(tmp_path, "odd", model, x, ProbeSettings(batch_size=4), round_to=8,
                     say=lambda m: None)
    (path,) = tmp_path.glob("*.json")
    assert "1x28x40" in path.name
    again = lm.LatencyModel.from_json(json.loads(path.read_text()))
    assert again.dense_shapes == built.dense_shapes  # per-axis shapes survive the JSON


# --- INT8 tables ---------------------------------------------------------------------------------


def _quantize(data: bytes, shape: tuple[int, ...]) -> bytes:
    from compressor.quantize import FORMATS, QuantizeConfig, quantize_bytes, random_calibration

    return quantize_bytes(data, random_calibration(shape), FORMATS["qdq-u8s8"],
                          QuantizeConfig(mode="int8"))


def test_edge_nodes_are_left_out_of_a_lone_layers_kernel_time(tmp_path):
    # A graph of nothing but a layout change and the INT8 entry and exit times as zero.
    from onnx import TensorProto, helper, numpy_helper

    scale, zero = numpy_helper.from_array(torch.tensor(0.1).numpy(), "s"), \
        numpy_helper.from_array(torch.tensor(0, dtype=torch.uint8).numpy(), "z")
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("QuantizeLinear", ["t", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "edges", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scale, zero])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    edges_only = lm._time_graph(data.SerializeToString(), (2, 8, 4, 4), SETTINGS, 1.0,
                                str(tmp_path))
    assert edges_only.layer_ms == 0.0 and edges_only.entry_ms > 0.0
    conv = lm._layer_graph(LayerShape("c", "conv", 8, 16, 3, 3, 1, 1, 1, 4, 4, 4, 4, False),
                           8, 16, 2)
    timed = lm._time_graph(_quantize(conv, (2, 8, 4, 4)), (2, 8, 4, 4), SETTINGS, 1.0,
                           str(tmp_path))
    # The INT8 conv's entry (QuantizeLinear, layout) and exit (layout, DequantizeLinear) apart.
    assert timed.layer_ms > 0.0 and timed.entry_ms > 0.0 and timed.exit_ms > 0.0


@pytest.fixture(scope="module")
def built_int8(resnet):
    return lm.build_latency_model(resnet, X, SETTINGS, round_to=8, grid_points=3, target_ms=2.0,
                                  model_name="resnet18", quantize=_quantize,
                                  precision="qdq-u8s8")


def test_int8_tables_rank_pruned_int8_networks_and_count_one_byte_a_value(built_int8, built,
                                                                          resnet, pruned):
    shapes = measure_layer_shapes(resnet, X)
    assert built_int8.predict_ratio(shapes) == pytest.approx(1.0)
    assert built_int8.key["precision"] == "qdq-u8s8" and "precision" not in built.key
    assert built_int8.traffic(shapes) == pytest.approx(built.traffic(shapes) / 4)
    r = {k: built_int8.predict_ratio(measure_layer_shapes(m, X)) for k, m in pruned.items()}
    assert r[0.6] < r[0.3] < r[0.1] < 1.0
    # The magnitude of a paired measurement of the INT8 networks, as for FP32 above (accuracy
    # targets: benchmarks.int8_latency).
    shape = (SETTINGS.batch_size, *X.shape[1:])
    reference = latency.make_session(_quantize(onnx_bytes(resnet, X), shape), SETTINGS)
    candidate = latency.make_session(_quantize(onnx_bytes(pruned[0.6], X), shape), SETTINGS)
    measured = latency.measure_pair(candidate, reference, SETTINGS).ratio
    assert 0.5 < r[0.6] / measured < 2.0, (r[0.6], measured)


def test_int8_tables_are_cached_beside_the_fp32_ones(built_int8, resnet, tmp_path, monkeypatch):
    calls = []

    def fake_build(*args, **kwargs):
        calls.append(kwargs.get("precision"))
        return built_int8 if kwargs.get("precision") else built_fp32

    built_fp32 = lm.build_latency_model(resnet, X, SETTINGS, round_to=8, grid_points=2,
                                        target_ms=0.5, model_name="resnet18")
    monkeypatch.setattr(lm, "build_latency_model", fake_build)
    for _ in range(2):
        lm.load_or_build(tmp_path, "resnet18", resnet, X, SETTINGS, round_to=8,
                         say=lambda m: None)
        lm.load_or_build(tmp_path, "resnet18", resnet, X, SETTINGS, round_to=8,
                         say=lambda m: None, quantize=_quantize, precision="qdq-u8s8")
    assert calls == [None, "qdq-u8s8"]  # each built once, then read back
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "resnet18-3x32x32-t1-all-r8-qdq-u8s8.json", "resnet18-3x32x32-t1-all-r8.json"]


def test_layer_ratios_add_up_to_the_predicted_ratio_with_and_without_a_knee(built, pruned):
    shapes = measure_layer_shapes(pruned[0.3], X)
    kneed = lm.LatencyModel(built.tables, built.beta or 1e-3, built.traffic(shapes) / 2,
                            built.dense_ms, built.dense_shapes, built.metadata)
    for model in (built, kneed):
        for case in (shapes, built.dense_shapes):
            parts = model.layer_ratios(case)
            assert len(parts) == len(case) and all(p > 0 for p in parts)
            assert math.isclose(sum(parts), model.predict_ratio(case), rel_tol=1e-9)
