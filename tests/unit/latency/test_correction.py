"""The probe correction on a synthetic latency whose bias the search exploits."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.latency.correction import ProbeCorrection, fit_log_residual

UNITS = [f"u{i}" for i in range(10)]
COSTS = dict(zip(UNITS, [4, 8, 8, 16, 16, 16, 32, 32, 64, 64], strict=True))


def model(policy):
    """The latency model: each unit's cost scales with the channels it keeps."""
    return sum(c * (1 - policy.get(n, 0.0)) for n, c in COSTS.items()) / sum(COSTS.values())


def searched_policy(rng, biased):
    """What a search proposes: the units the model thinks cheap to prune (the biased ones,
    underestimated) pruned hard, the rest lightly."""
    return {n: rng.uniform(0.5, 0.8) if n in biased else rng.uniform(0.0, 0.5) for n in UNITS}


def log_error(predict, truth, policies):
    return statistics.mean(abs(math.log(predict(p) / truth(p))) for p in policies)


@given(st.sets(st.sampled_from(UNITS), min_size=1, max_size=4),
       st.floats(min_value=0.1, max_value=0.6), st.integers(min_value=8, max_value=20),
       st.integers(min_value=0, max_value=2**31))
@settings(max_examples=60, deadline=None, derandomize=True)
def test_the_correction_predicts_the_searched_policies_better_than_the_model(
        biased, bias, probes, seed):
    """True latency = model x exp(bias x pruning ratio of each biased unit), measured with 2%
    noise; the correction fitted on the probes of searched policies predicts new searched
    policies better than the model alone."""
    rng = random.Random(seed)

    def truth(policy):
        return model(policy) * math.exp(bias * sum(policy[n] for n in biased))

    correction = ProbeCorrection(model, UNITS)
    for _ in range(probes):
        policy = searched_policy(rng, biased)
        correction.observe(policy, truth(policy) * (1 + rng.uniform(-0.02, 0.02)))
    held_out = [searched_policy(rng, biased) for _ in range(30)]
    assert log_error(correction, truth, held_out) < log_error(model, truth, held_out)
    assert correction.bias_median > 0  # the model underestimated every probe's latency


@given(st.integers(min_value=0, max_value=2**31), st.integers(min_value=3, max_value=20))
@settings(max_examples=30, deadline=None, derandomize=True)
def test_an_unbiased_model_measured_with_noise_is_left_nearly_alone(seed, probes):
    rng = random.Random(seed)
    correction = ProbeCorrection(model, UNITS)
    for _ in range(probes):
        policy = {n: rng.uniform(0, 0.8) for n in UNITS}
        correction.observe(policy, model(policy) * (1 + rng.uniform(-0.03, 0.03)))
    for _ in range(10):
        policy = {n: rng.uniform(0, 0.8) for n in UNITS}
        assert abs(math.log(correction(policy) / model(policy))) < 0.02


def test_without_probes_or_pruning_nothing_is_corrected():
    correction = ProbeCorrection(model, UNITS)
    policy = dict.fromkeys(UNITS, 0.5)
    assert correction(policy) == model(policy) and correction.bias_median is None
    for _ in range(5):
        correction.observe(policy, 1.2 * model(policy))
    assert correction(policy) > model(policy)
    assert correction({}) == model({})  # the dense network is its own reference


def test_few_probes_are_trusted_less_and_one_wild_probe_moves_little():
    policy = dict.fromkeys(UNITS, 0.5)
    one, many = ProbeCorrection(model, UNITS), ProbeCorrection(model, UNITS)
    one.observe(policy, 1.1 * model(policy))
    for _ in range(20):
        many.observe(policy, 1.1 * model(policy))
    assert 1.0 < one(policy) / model(policy) < many(policy) / model(policy)
    assert many(policy) / model(policy) == pytest.approx(1.1, rel=0.02)
    wild = ProbeCorrection(model, UNITS, max_log=0.3)
    wild.observe(policy, 100 * model(policy))
    assert wild(policy) <= model(policy) * math.exp(0.3) + 1e-12


def test_disabled_it_records_the_bias_but_predicts_as_the_model():
    correction = ProbeCorrection(model, UNITS, enabled=False)
    policy = dict.fromkeys(UNITS, 0.4)
    correction.observe(policy, 1.06 * model(policy))
    correction.observe(policy, 1.10 * model(policy))
    assert correction(policy) == model(policy)
    assert correction.bias_median == pytest.approx(0.08)


def test_the_ridge_fit_recovers_an_exact_linear_residual_with_a_weak_penalty():
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 0.8, (40, 5))
    weights = np.array([0.2, -0.1, 0.0, 0.3, 0.05])
    fitted = fit_log_residual(features, features @ weights, 1e-6)
    assert fitted == pytest.approx(weights, abs=1e-4)
