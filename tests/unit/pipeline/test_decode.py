"""A causal LM's decode and prefill budgets in the pipeline: the wall's cost from real decode
tables of gpt_tiny (a coarse grid, few runs), cached once; the pipeline's costs only price them
with tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.budgets.kinds import BudgetConfig, BudgetRequest, check_reachable, wall_budgets
from compressor.errors import UserError
from compressor.latency.decode import DecodeShape
from compressor.latency.probe import ProbeSettings
from compressor.pipeline.compress import _costs
from compressor.pipeline.decode import budgeted_phases, load_or_measure_tables, phase_costs
from compressor.pruning import PruningConfig, build_skeleton
from compressor.pruning.attention import explicit_attention
from compressor.zoo.embedded import gpt_tiny

QUICK = ProbeSettings(warmup=2, runs=5, blocks=2)
SHAPE = DecodeShape(past=32, prompt=16)
TOKENS = torch.tensor([list(b"def main(argv):\n    return 0\n")])
TWO_BLOCKS_HALF = {"blocks.0.attn": 0.5, "blocks.0.mlp.0": 0.5, "blocks.1": 0.9,
                   "blocks.2.attn": 0.5, "blocks.2.mlp.0": 0.5, "blocks.3": 0.9}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = explicit_attention(gpt_tiny().eval(), TOKENS)
    skeleton = build_skeleton(model, TOKENS, PruningConfig(round_to=16))
    cache = tmp_path_factory.mktemp("latency")
    said: list[str] = []
    tables = load_or_measure_tables(model, TOKENS, ["decode"], SHAPE, QUICK, 16, 2, 10, cache,
                                    "gpt_tiny", said.append)
    return model, skeleton, tables, cache, said


def test_the_phases_budgeted_are_decode_and_prefill_in_order():
    assert budgeted_phases({"latency": 0.5, "prefill": 0.7, "decode": 0.5}) == ["decode",
                                                                                "prefill"]
    assert budgeted_phases({"flops": 0.5}) == []


def test_the_decode_cost_prices_dense_at_one_pruned_below_and_never_rises_with_a_ratio(setup):
    _, skeleton, tables, _, _ = setup
    cost = phase_costs(skeleton, tables)["decode"]
    names = list(skeleton.names)
    vector = lambda policy: np.array([policy.get(n, 0.0) for n in names])  # noqa: E731
    assert cost(vector({})) == pytest.approx(1.0)
    narrower = cost(vector({u.name: 0.5 for u in skeleton.units if u.kind != "block"}))
    assert cost(vector(TWO_BLOCKS_HALF)) < narrower < 1.0
    # The wall assumes a cost non-increasing in every ratio (rounding to 16 channels only).
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.uniform(0, 0.8, len(names))
        i = rng.integers(len(names))
        more = v.copy()
        more[i] = min(0.8, v[i] + 0.2)
        assert cost(more) <= cost(v) + 1e-9


def test_the_pipelines_costs_price_a_decode_budget_only_with_tables(setup):
    _, skeleton, tables, _, _ = setup
    request = BudgetRequest.from_config(BudgetConfig(decode=0.5))
    with pytest.raises(UserError, match="decode budget cannot be priced"):
        wall_budgets(request, _costs(skeleton, lambda policy: 1.0), margin=0.1)
    budgets = wall_budgets(request, _costs(skeleton, lambda policy: 1.0, tables), margin=0.1)
    assert [(b.name, b.limit) for b in budgets] == [("decode", pytest.approx(0.45))]
    check_reachable(request, budgets, len(skeleton.units), 0.8, 0.1)  # 0.5 is reachable
    with pytest.raises(UserError, match="decode budget 0.01 is below the reachable minimum"):
        tight = BudgetRequest.from_config(BudgetConfig(decode=0.01))
        check_reachable(tight, wall_budgets(tight, _costs(skeleton, lambda p: 1.0, tables), 0.1),
                        len(skeleton.units), 0.8, 0.1)


def test_the_tables_are_measured_once_and_read_back_from_the_cache(setup):
    model, skeleton, tables, cache, said = setup
    assert any(s.startswith("measuring decode latency tables") for s in said)
    again: list[str] = []
    cached = load_or_measure_tables(model, TOKENS, ["decode"], SHAPE, QUICK, 16, 2, 10, cache,
                                    "gpt_tiny", again.append)
    assert again == [] and cached["decode"].dense_ms == tables["decode"].dense_ms
    shapes = skeleton.layer_shapes(TWO_BLOCKS_HALF)
    assert cached["decode"].predict_ratio(shapes) == pytest.approx(
        tables["decode"].predict_ratio(shapes))
    # A cache made for another setup (here: more runs per entry) is not read.
    path = next(cache.glob("gpt_tiny-decode-*.json"))
    blob = path.read_text().replace('"runs": 10', '"runs": 11')
    path.write_text(blob)
    rebuilt: list[str] = []
    load_or_measure_tables(model, TOKENS, ["decode"], SHAPE, QUICK, 16, 2, 10, cache,
                           "gpt_tiny", rebuilt.append)
    assert "built for another setup" in rebuilt[0]
