"""Fitting a policy to a measured latency budget: the shrink rule, and a real fit against ORT."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor import pruning
from compressor.latency import fit
from compressor.latency.probe import PairedLatency, Probe, ProbeSettings
from compressor.zoo.models import build_model

UNITS = ["a", "b", "c", "d"]
ratios = st.floats(min_value=0.0, max_value=0.8, allow_nan=False)


@given(st.lists(ratios, min_size=4, max_size=4), st.floats(min_value=0.0, max_value=4.0))
@settings(max_examples=200, deadline=None)
def test_scale_policy_moves_every_unit_one_way_within_bounds(values, scale):
    policy = dict(zip(UNITS, values, strict=True))
    scaled = fit.scale_policy(policy, UNITS, scale, max_ratio=0.8)
    for name in UNITS:
        assert 0.0 <= scaled[name] <= 0.8 + 1e-12
        if scale <= 1:
            assert scaled[name] >= policy[name] - 1e-12
        else:
            assert scaled[name] <= policy[name] + 1e-12
        # The shared factor is what each unit keeps, unless a bound stops it.
        if 1e-9 < scaled[name] < 0.8 - 1e-9:
            assert 1 - scaled[name] == pytest.approx((1 - policy[name]) * scale)


def test_scale_one_keeps_the_policy_and_missing_units_count_as_unpruned():
    assert fit.scale_policy({"a": 0.3}, UNITS, 1.0, 0.8) == pytest.approx(
        {"a": 0.3, "b": 0.0, "c": 0.0, "d": 0.0})
    assert fit.scale_policy({}, UNITS, 0.5, 0.8) == dict.fromkeys(UNITS, 0.5)


def test_a_policy_within_the_budget_is_not_touched():
    calls = []
    result = fit.fit_to_latency({"a": 0.2}, UNITS, lambda p: 0.5,
                                lambda p: calls.append(p) or 0.45, limit=0.5, max_ratio=0.8)
    assert result.ok and result.steps == [] and result.policy == {"a": 0.2}
    assert len(calls) == 1


def test_gives_up_when_every_unit_is_at_max_ratio():
    result = fit.fit_to_latency(dict.fromkeys(UNITS, 0.8), UNITS, lambda p: 0.3,
                                lambda p: 0.4, limit=0.2, max_ratio=0.8)
    assert not result.ok and result.measured == 0.4


def true_ratio(policy):
    return sum((1 - policy.get(n, 0.0)) ** 2 for n in UNITS) / len(UNITS)


def test_a_policy_far_under_the_budget_grows_into_it():
    start = dict.fromkeys(UNITS, 0.7)  # true ratio 0.09 for a 0.5 budget
    result = fit.fit_to_latency(start, UNITS, lambda p: true_ratio(p) * 1.5, true_ratio,
                                limit=0.5, max_ratio=0.8)
    assert result.ok and result.steps
    assert 0.5 * (1 - 0.12) <= result.measured <= 0.5 * (1 - 0.04)
    assert all(result.policy[n] < start[n] for n in UNITS)


def test_keeps_the_best_policy_within_budget_when_later_tries_overshoot():
    measurements = iter([0.3, 0.6, 0.7, 0.8])  # the later tries measure over 0.5
    result = fit.fit_to_latency(dict.fromkeys(UNITS, 0.5), UNITS, true_ratio,
                                lambda p: next(measurements), limit=0.5, max_ratio=0.8)
    assert result.ok and result.measured == 0.3 and result.policy == dict.fromkeys(UNITS, 0.5)
    assert len(result.steps) == 3


def test_bias_correction_aims_the_shrink_at_the_measured_limit():
    # A latency model that is 20% optimistic everywhere: one step, aimed with the measured bias.
    result = fit.fit_to_latency({}, UNITS, lambda p: true_ratio(p) / 1.2, true_ratio, limit=0.5,
                                max_ratio=0.8, margin=0.04)
    assert result.ok and len(result.steps) == 1
    assert result.measured == pytest.approx(0.5 * 0.94, rel=1e-3)


def test_fits_a_real_pruned_network_to_a_measured_budget():
    """MACs as the (imperfect) latency model, a real paired ORT measurement as the judge."""
    torch.manual_seed(0)
    dense = build_model("resnet18", 10).eval()
    example = torch.zeros(1, 3, 32, 32)
    skeleton = pruning.build_skeleton(dense, example, pruning.PruningConfig())
    probe = Probe(dense, example, ProbeSettings(batch_size=4, warmup=3, runs=10, blocks=6))
    config = pruning.PruningConfig()
    names = [u.name for u in skeleton.units]
    dense_macs = skeleton.macs({})

    def measure(policy):
        return probe.measure(pruning.apply_policy(dense, policy, example, config)).ratio

    start = pruning.uniform_policy(skeleton, 0.2)
    first = measure(start)
    limit = 0.7 * first
    # A margin of 0.3 aims every try at ~0.55 of the limit: within it does not hang on one
    # window (the default 0.04 aims 6% under, which a busy machine can miss three times running).
    result = fit.fit_to_latency(start, names, lambda p: skeleton.macs(p) / dense_macs, measure,
                                limit, max_ratio=0.8, margin=0.3, measured=first)
    assert result.ok, result
    assert result.measured <= limit and result.steps
    assert all(result.policy[n] >= start[n] for n in names)
    assert skeleton.macs(result.policy) < skeleton.macs(start)


def _paired(ratio: float, half_spread: float) -> PairedLatency:
    """A measurement of `ratio` whose blocks spread `half_spread` (relative) either side."""
    blocks = [ratio * (1 - half_spread), ratio, ratio, ratio * (1 + half_spread)]
    return PairedLatency(ratio, ratio, 1.0, blocks, {})


def test_the_margin_widens_to_half_a_noisy_measurements_spread():
    assert fit.needed_margin(0.45, 0.04) == 0.04  # a bare ratio: the configured margin
    assert fit.needed_margin(_paired(0.45, 0.01), 0.04) == 0.04
    assert fit.needed_margin(_paired(0.45, 0.13), 0.04) == pytest.approx(0.13)


def test_a_noisy_measurement_just_under_the_budget_is_not_trusted():
    # 0.47 for a 0.5 budget would pass a 4% margin, but its own blocks spread 13% either side.
    quiet = fit.fit_to_latency({"a": 0.2}, UNITS, true_ratio, lambda p: _paired(0.47, 0.01),
                               limit=0.5, max_ratio=0.8)
    assert quiet.ok and not quiet.steps and quiet.margin == 0.04

    def noisy(policy):
        return _paired(true_ratio(policy), 0.13)

    start = {"a": 0.2}
    result = fit.fit_to_latency(start, UNITS, true_ratio, noisy, limit=0.5, max_ratio=0.8,
                                measured=_paired(0.47, 0.13))
    assert result.ok and result.steps
    assert result.margin == pytest.approx(0.13)
    assert 0.5 * (1 - 0.12 - 0.09) <= result.measured <= 0.5 * (1 - 0.13)
    assert result.steps[-1].margin == pytest.approx(0.13)
