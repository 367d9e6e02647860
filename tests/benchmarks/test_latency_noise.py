"""The latency-noise benchmark: real paired rounds, and each margin rule's miss rate."""

from benchmarks.latency_noise import RULES, _judge_rules, _summary, measure_rounds
from compressor.latency.probe import PairedLatency


def _round(ratio: float, half_range: float) -> PairedLatency:
    blocks = [ratio * (1 - half_range), ratio, ratio * (1 + half_range)]
    return PairedLatency(ratio, ratio, 1.0, blocks, {})


def test_rounds_that_agree_never_miss():
    rules = _judge_rules([_round(0.4, 0.01)] * 3)
    assert set(rules) == set(RULES) and all(v["miss_rate"] == 0.0 for v in rules.values())


def test_a_second_round_10pct_higher_misses_a_fixed_4pct_margin_but_not_its_spread():
    # Accepted on the low round at the threshold, the high one measures over the budget: one of
    # the two ordered pairs misses. Blocks spreading +-30% widen the fit's margin to 30%.
    rules = _judge_rules([_round(0.40, 0.30), _round(0.44, 0.30)])
    assert rules["fixed 4%"]["miss_rate"] == 0.5
    assert rules["max(4%, half range)"]["miss_rate"] == 0.0
    assert abs(rules["max(4%, half range)"]["median_margin"] - 0.30) < 1e-9


def test_real_rounds_of_a_pruned_network_are_measured_and_summarised():
    row = measure_rounds("resnet18", 0.5, rounds=2)
    assert len(row["rounds"]) == 2 and row["batch_size"] >= 1
    assert all(0 < r["ratio"] < 1 for r in row["rounds"])  # half the channels: faster
    doc = {"command": "test", "date": "today", "cpu": "cpu", "versions": {}, "rows": [row]}
    table = [line for line in _summary(doc).splitlines() if line.startswith("| resnet18 |")]
    assert len(table) == 1 and table[0].count("%") >= 2 * len(RULES)
