"""The pipeline's INT8 plan: the search's latency ratio from the INT8 tables (or the curve), and
FP32 shipped when INT8 cannot reach the budget."""

import itertools
import math
from dataclasses import replace

import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from compressor.budgets.kinds import BudgetConfig
from compressor.io.export import onnx_bytes
from compressor.latency import model as lm
from compressor.pipeline import compress as pipeline
from compressor.pipeline.int8 import (
    Int8Plan,
    cheapest_precisions,
    chosen_precisions,
    find_sensitive_layers,
)
from compressor.pruning import precision_key
from compressor.pruning.policies import policy_vector
from compressor.quantize import (
    FormatChoice,
    FormatTrial,
    Int8Curve,
    QuantizeConfig,
    layer_nodes,
    node_layers,
)
from tests.unit.pipeline.test_final import SHAPE, TinyNet, _config
from tests.unit.quantize.test_accuracy import trained_cnn, with_an_outlier_channel


def _plan_with(root, factor: float):
    config = _config(root, BudgetConfig(latency=0.6))
    found = pipeline.plan(TinyNet().eval(), torch.zeros(1, *SHAPE), config, "TinyNet")
    fp32 = pipeline.Plan(found.skeleton, found.latency_model, found.request, [])
    found.int8 = Int8Plan(QuantizeConfig(mode="int8"), FormatChoice("qdq-u8s8", 1.0, []),
                          Int8Curve("qdq-u8s8", [0.01, 1.0], [factor, factor]), 0.0,
                          fp32_tables=found.latency_model)
    said = []
    pipeline.set_budgets(found, config, say=said.append)
    return found, fp32, said


def test_the_search_sees_the_int8_ratio_when_int8_pays(tmp_path):
    found, fp32, said = _plan_with(tmp_path, 0.5)
    policy = {name: 0.25 for name in found.skeleton.names}
    assert found.int8.format is not None and not said
    assert abs(found.latency_ratio(policy) - 0.5 * fp32.latency_ratio(policy)) < 1e-12
    vector = policy_vector(found.skeleton, policy)
    latency_budget = next(b for b in found.budgets if b.name == "latency")
    assert abs(latency_budget.cost(vector) - found.latency_ratio(policy)) < 1e-12


def test_a_budget_int8_cannot_reach_ships_fp32_instead_of_refusing(tmp_path):
    # An INT8 a hundred times slower than FP32 everywhere cannot reach 0.6 of dense FP32 (three
    # times slower could, where the pruned TinyNet measures under 0.2 of its dense latency).
    found, fp32, said = _plan_with(tmp_path, 100.0)
    assert found.int8.format is None
    assert "in INT8 the latency budget" in found.int8.warning
    assert found.int8.warning.endswith("shipping FP32") and said == [found.int8.warning]
    policy = {name: 0.5 for name in found.skeleton.names}
    assert found.latency_ratio(policy) == fp32.latency_ratio(policy)
    assert replace(found.int8, unreachable=None).format is not None


def test_int8_tables_times_the_dense_int8_ratio_is_what_the_search_sees(tmp_path):
    found, fp32, _ = _plan_with(tmp_path, 0.5)
    # A real latency model stands in for the INT8 tables: what matters is how they compose.
    found.int8 = replace(found.int8, choice=FormatChoice(
        "qdq-u8s8", 1.0, [FormatTrial("qdq-s8s8", 2.0), FormatTrial("qdq-u8s8", 0.6)]),
        tables=found.latency_model)
    policy = {name: 0.5 for name in found.skeleton.names}
    shapes = found.skeleton.layer_shapes(policy)
    assert found.int8.choice.chosen_ratio == 0.6
    assert found.latency_ratio(policy) == found.latency_model.predict_ratio(shapes) * 0.6
    assert found.latency_ratio(policy) != found.int8.curve.ratio(fp32.latency_ratio(policy))


def test_planning_int8_builds_and_caches_int8_tables_in_the_chosen_format(tmp_path):
    config = replace(_config(tmp_path, BudgetConfig(latency=0.8)),
                     quantize=QuantizeConfig(mode="int8", format="qdq-u8s8"))
    found = pipeline.plan(TinyNet().eval(), torch.zeros(1, *SHAPE), config, "TinyNet")
    if found.int8.format is None:  # INT8 slower than FP32 on this CPU: nothing to build
        assert found.int8.tables is None
        return
    tables = found.int8.tables
    assert tables is not None and tables.key["precision"] == "qdq-u8s8"
    assert set(tables.tables) == set(found.latency_model.tables)
    name = f"TinyNet-3x16x16-t1-all-r{config.pruning.round_to}-qdq-u8s8.json"
    assert (tmp_path / "models" / "latency" / name).exists()
    light = {name: 0.25 for name in found.skeleton.names}
    heavy = {name: 0.75 for name in found.skeleton.names}
    assert found.latency_ratio(heavy) < found.latency_ratio(light)


def _mixed(found, int8_tables, dense_int8: float, fmt: str = "qdq-u8s8"):
    """`found`'s plan in mixed mode, with `int8_tables` standing in for the INT8 tables."""
    return replace(found.int8, config=QuantizeConfig(mode="mixed"), tables=int8_tables,
                   choice=FormatChoice(fmt, 1.0, [FormatTrial(fmt, dense_int8)]))



def _scaled(model, factor) -> lm.LatencyModel:
    """`model` with each layer's times multiplied by `factor(name)`: INT8 tables by hand (they
    time no edges, so a switch costs the FP32 layer's own reorders)."""
    tables = {name: lm.LayerTable(t.ins, t.outs, [[v * factor(name) for v in row] for row in t.ms],
                                  t.depthwise) for name, t in model.tables.items()}
    return lm.LatencyModel(tables, 0.0, 0.0, model.dense_ms, model.dense_shapes, model.metadata)


def test_mixed_keeps_fp32_exactly_the_layers_int8_would_slow_down(tmp_path):
    found, fp32, _ = _plan_with(tmp_path, 0.5)
    model = found.latency_model
    policy = {name: 0.5 for name in found.skeleton.names}
    shapes = found.skeleton.layer_shapes(policy)
    # INT8 tables where one layer is a hundred times slower than the others (and the dense INT8
    # network twice FP32's time): that layer is slower in INT8, every other one faster.
    slow = shapes[1].name
    int8_model = _scaled(model, lambda name: 100.0 if name == slow else 1.0)
    found.int8 = _mixed(found, int8_model, 2.0)
    int8_parts = [r * 2.0 for r in int8_model.layer_ratios(shapes)]
    fp32_parts = model.layer_ratios(shapes)
    expected = [s.name for s, a, b in zip(shapes, int8_parts, fp32_parts, strict=True) if a >= b]
    assert found.int8.fp32_layers(shapes) == expected == [slow]
    mixed = found.latency_ratio(policy)
    # These INT8 tables time no edges, so the switches cost the FP32 layer's own reorders.
    entry, exit_ = model.layer_edges(shapes)[1]
    assert math.isclose(mixed, sum(map(min, int8_parts, fp32_parts)) + entry + exit_,
                        rel_tol=1e-12)
    all_int8 = replace(found.int8, config=QuantizeConfig(mode="int8")).ratio(shapes)
    assert mixed < min(all_int8, fp32.latency_ratio(policy))
    # Where INT8 is faster everywhere, mixed is all-INT8.
    found.int8 = _mixed(found, model, 0.5)
    assert found.int8.fp32_layers(shapes) == []
    assert math.isclose(found.latency_ratio(policy), 0.5 * model.predict_ratio(shapes))


def test_the_mixed_converter_keeps_the_modules_fp32_layers_float(tmp_path):
    found, _, _ = _plan_with(tmp_path, 0.5)
    model = found.latency_model
    # INT8 "tables" slower than FP32 on the first conv alone.
    first = model.dense_shapes[0].name
    found.int8 = _mixed(found, _scaled(model, lambda name: 9.0 if name == first else 0.1), 1.0,
                        "qoperator-u8s8")
    net, example = TinyNet().eval(), torch.zeros(1, *SHAPE)
    convert = found.int8.converter((2, *SHAPE), example)
    fp32 = onnx_bytes(net, example)
    ops = [(n.name, n.op_type) for n in onnx.load_from_string(convert(fp32, net)).graph.node]
    layers = [s.name for s in model.dense_shapes]
    assert [name for name, op in ops if op == "Conv"] == layer_nodes(fp32, layers, [first])
    assert [op for _, op in ops].count("QLinearConv") == 2


def test_a_sensitive_layer_is_priced_fp32_in_both_modes_and_kept_float(tmp_path):
    found, _, _ = _plan_with(tmp_path, 0.5)
    model = found.latency_model
    policy = {name: 0.5 for name in found.skeleton.names}
    shapes = found.skeleton.layer_shapes(policy)
    first = shapes[0].name
    # INT8 twice as fast as FP32 on every layer, and no switch timed by the INT8 tables.
    int8_model = _scaled(model, lambda name: 0.5)
    # QOperator: a quantized conv is a QLinearConv, so the one left a Conv is the one kept float.
    plain = replace(_mixed(found, int8_model, 1.0, "qoperator-u8s8"),
                    config=QuantizeConfig(mode="int8"))
    assert plain.fp32_layers(shapes) == [] and not plain.priced_per_layer
    int8_parts, fp32_parts = int8_model.layer_ratios(shapes), model.layer_ratios(shapes)
    # The first layer FP32, the rest INT8: one switch, at the first layer's exit (FP32 edges).
    expected = fp32_parts[0] + sum(int8_parts[1:]) + model.layer_edges(shapes)[0][1]
    kept = replace(plain, sensitive=(first,))
    assert kept.priced_per_layer and kept.fp32_layers(shapes) == [first]
    assert math.isclose(kept.ratio(shapes), expected, rel_tol=1e-12)
    assert kept.ratio(shapes) > plain.ratio(shapes)  # the search pays for the FP32 layer
    # Mixed keeps it FP32 too, and may keep more where the switch back costs more than INT8 saves.
    mixed = replace(kept, config=QuantizeConfig(mode="mixed"))
    free = replace(mixed, sensitive=())
    assert first in mixed.fp32_layers(shapes) and first not in free.fp32_layers(shapes)
    assert free.ratio(shapes) <= mixed.ratio(shapes) <= kept.ratio(shapes)
    net, example = TinyNet().eval(), torch.zeros(1, *SHAPE)
    fp32 = onnx_bytes(net, example)
    convert = replace(plain, sensitive=(first,)).converter((2, *SHAPE), example)
    ops = [(n.name, n.op_type) for n in onnx.load_from_string(convert(fp32, net)).graph.node]
    layers = [s.name for s in model.dense_shapes]
    assert [name for name, op in ops if op == "Conv"] == layer_nodes(fp32, layers, [first])
    assert node_layers(fp32, layers, layer_nodes(fp32, layers, [first])) == [first]


def test_the_layer_behind_an_outlier_activation_is_found_sensitive_before_the_search(fmnist):
    model = with_an_outlier_channel(trained_cnn(fmnist))
    dense = onnx_bytes(model, torch.zeros(1, 3, 32, 32))
    config = QuantizeConfig(mode="int8", calibration_batches=2, calibration_batch_size=32)
    plan = Int8Plan(config, FormatChoice("qdq-u8s8", 1.0, [FormatTrial("qdq-u8s8", 0.6)]), None,
                    0.0)
    layers = ["0", "3", "6", "11"]  # the Sequential's convs and its linear layer
    found = find_sensitive_layers(plan, dense, layers, fmnist, seed=0)
    assert found.sensitive and set(found.sensitive) <= {"3", "6"}, found.dense_check
    assert found.dense_check["chosen"]["accuracy"]["drop"] <= config.max_drop
    assert found.as_dict()["sensitive_layers"] == list(found.sensitive)
    # The plain network loses nothing to INT8: no layer is kept.
    plain = onnx_bytes(trained_cnn(fmnist), torch.zeros(1, 3, 32, 32))
    assert find_sensitive_layers(plan, plain, layers, fmnist, seed=0).sensitive == ()
    shipping_fp32 = replace(plan, unreachable="out of reach")
    assert find_sensitive_layers(shipping_fp32, dense, layers, fmnist, 0) is shipping_fp32


def _priced(int8, fp32, int8_edges, fp32_edges, assignment) -> float:
    """A chain's cost with these precisions (True: INT8), switches priced by hand."""
    total = sum(a if q else b for a, b, q in zip(int8, fp32, assignment, strict=True))
    for i in range(1, len(assignment)):
        if assignment[i] != assignment[i - 1]:
            before, now = (int8_edges, fp32_edges) if assignment[i - 1] else (fp32_edges,
                                                                               int8_edges)
            total += before[i - 1][1] + now[i][0]
    return total


@given(st.lists(st.tuples(*[st.floats(0.0, 1.0)] * 6), min_size=1, max_size=7))
def test_cheapest_precisions_is_the_cheapest_assignment_of_the_chain(layers):
    int8, fp32 = [v[0] for v in layers], [v[1] for v in layers]
    int8_edges, fp32_edges = [v[2:4] for v in layers], [v[4:6] for v in layers]
    chosen, cost = cheapest_precisions(int8, fp32, int8_edges, fp32_edges)
    assert cost == pytest.approx(_priced(int8, fp32, int8_edges, fp32_edges, chosen))
    every = [_priced(int8, fp32, int8_edges, fp32_edges, a)
             for a in itertools.product((True, False), repeat=len(layers))]
    assert cost <= min(every) + 1e-9


def test_a_layer_slower_in_int8_stays_int8_when_its_switches_cost_more():
    int8, fp32 = [1.0, 1.1, 1.0], [2.0, 1.0, 2.0]  # the middle layer: 0.1 slower in INT8
    for edge, middle_fp32 in ((0.1, False), (0.01, True)):
        edges = [(edge, edge)] * 3
        chosen, cost = cheapest_precisions(int8, fp32, edges, edges)
        assert chosen == [True, not middle_fp32, True]
        assert cost == pytest.approx(3.1 if not middle_fp32 else 3.0 + 4 * edge)


def test_a_searched_policy_runs_its_units_in_the_precisions_it_names(tmp_path):
    found, _, _ = _plan_with(tmp_path, 0.5)
    model, sk = found.latency_model, found.skeleton
    # INT8 twice as fast as FP32 on every layer: the latency model alone would keep none FP32.
    found.int8 = replace(_mixed(found, _scaled(model, lambda name: 0.5), 1.0),
                         config=QuantizeConfig(mode="searched"))
    policy = {name: 0.5 for name in sk.names}
    shapes = sk.layer_shapes(policy)
    names, units = [s.name for s in shapes], sk.layer_units()
    unit = sk.names[0]
    chosen = {**policy, precision_key(unit): 0.0, **{precision_key(u): 1.0 for u in sk.names[1:]}}
    layers = chosen_precisions(sk, chosen)
    fp32 = [name for name, unit_of in zip(names, units, strict=True) if unit_of == unit]
    free = {name for name, unit_of in zip(names, units, strict=True) if unit_of is None}
    assert fp32 and free and set(layers) == set(names) - free
    # The unit's layers FP32 as chosen; the layers no unit sets (the head) priced as in mixed.
    kept = found.int8.fp32_layers(shapes, layers)
    assert set(fp32) <= set(kept) <= set(fp32) | free
    assert not set(fp32) & set(found.int8.fp32_layers(shapes))
    # The agent's FP32 unit costs latency the latency model's own choice does not pay.
    int8 = {**chosen, precision_key(unit): 1.0}
    assert found.latency_ratio(chosen) > found.latency_ratio(int8)
    # With every unit INT8 the agent pays at least the DP's own choice, the cheapest assignment:
    # equal when the measured switch costs leave every layer INT8 (CI on the Xeon once measured
    # switches that made the DP keep a layer FP32: 0.358 against all-INT8's 0.366).
    assert found.latency_ratio(policy) <= found.latency_ratio(int8) * (1 + 1e-9)
