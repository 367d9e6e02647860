"""The pipeline's INT8 plan: the search's latency ratio through the INT8 curve, and FP32 shipped
when INT8 cannot reach the budget."""

from dataclasses import replace

import torch

from compressor.budgets.kinds import BudgetConfig
from compressor.pipeline import compress as pipeline
from compressor.pipeline.int8 import Int8Plan
from compressor.pruning.policies import policy_vector
from compressor.quantize import FormatChoice, Int8Curve, QuantizeConfig
from tests.unit.pipeline.test_final import SHAPE, TinyNet, _config


def _plan_with(root, factor: float):
    config = _config(root, BudgetConfig(latency=0.6))
    found = pipeline.plan(TinyNet().eval(), torch.zeros(1, *SHAPE), config, "TinyNet")
    fp32 = pipeline.Plan(found.skeleton, found.latency_model, found.request, [])
    found.int8 = Int8Plan(QuantizeConfig(mode="int8"), FormatChoice("qdq-u8s8", 1.0, []),
                          Int8Curve("qdq-u8s8", [0.01, 1.0], [factor, factor]), 0.0)
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
    # An INT8 three times slower than FP32 everywhere cannot reach 0.6 of dense FP32.
    found, fp32, said = _plan_with(tmp_path, 3.0)
    assert found.int8.format is None
    assert "in INT8 the latency budget" in found.int8.warning
    assert found.int8.warning.endswith("shipping FP32") and said == [found.int8.warning]
    policy = {name: 0.5 for name in found.skeleton.names}
    assert found.latency_ratio(policy) == fp32.latency_ratio(policy)
    assert replace(found.int8, unreachable=None).format is not None
