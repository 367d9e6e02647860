"""The per-unit sensitivity measurement shared by greedy and the agent's state."""

import numpy as np
import pytest

from compressor.errors import UserError
from compressor.search.env import Evaluation
from compressor.search.loop import one_by_one
from compressor.search.sensitivity import Sensitivity, evaluations_needed, greedy_policy, measure


def test_features_are_the_drops_on_one_scale_in_0_1():
    sens = Sensitivity((0.25, 0.5), 80.0, {"a": [1.0, 4.0], "b": [-0.5, 8.0], "c": [0.0, 0.0]}, 7)
    features = sens.features(["c", "a", "b"])  # rows in the order asked for
    assert features.shape == (3, 2)
    np.testing.assert_allclose(features, [[0, 0], [0.125, 0.5], [0, 1]])  # a negative drop is 0
    assert features.min() >= 0 and features.max() == 1
    flat = Sensitivity((0.5,), 80.0, {"a": [-1.0], "b": [0.0]}, 3)  # nothing hurts: all zero
    np.testing.assert_array_equal(flat.features(["a", "b"]), [[0], [0]])


def test_measure_asks_for_the_dense_network_then_each_unit_alone_at_each_ratio():
    asked = []

    def evaluate(policy):
        asked.append(policy)
        return Evaluation(top1=90 - 10 * sum(policy.values()) * (2 if "b" in policy else 1),
                          flops_ratio=1.0, metrics={})

    sens = measure(one_by_one(evaluate), ["a", "b"], (0.25, 0.5))
    assert asked == [{}, {"a": 0.25}, {"a": 0.5}, {"b": 0.25}, {"b": 0.5}]
    assert sens.evaluations == evaluations_needed(2, (0.25, 0.5)) == len(asked)
    assert sens.drops == {"a": [2.5, 5.0], "b": [5.0, 10.0]}
    # Greedy prunes the robust unit at least as much; an unreachable budget is a UserError.
    policy = greedy_policy(sens, lambda p: 1.5 - p["a"] - p["b"], 0.8)
    assert policy["a"] >= policy["b"] and 1.5 - policy["a"] - policy["b"] <= 1
    with pytest.raises(UserError, match="ratio grid"):
        greedy_policy(sens, lambda p: 2.0, 0.8)
