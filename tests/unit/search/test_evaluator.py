"""The episode evaluator's probes feeding the latency correction: real pruning, real ONNX Runtime
probes, on the tiny real setup of test_methods (TinyNet on Fashion-MNIST)."""

# ruff: noqa: F811 (test_methods' fixtures, imported below, are parameters of the tests)
from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from compressor.latency import Probe, ProbeCorrection, ProbeSettings
from compressor.search.evaluator import EpisodeEvaluator, EvaluatorConfig
from tests.unit.search.test_methods import EXAMPLE, PRUNING, skeleton, trained  # noqa: F401

QUICK = ProbeSettings(batch_size=4, warmup=2, runs=5, blocks=4)


def _evaluator(trained, skeleton, fmnist, enabled):
    dense = skeleton.macs({})
    correction = ProbeCorrection(lambda policy: skeleton.macs(policy) / dense, skeleton.names,
                                 enabled=enabled)
    return EpisodeEvaluator(trained, skeleton, EXAMPLE, PRUNING,
                            EvaluatorConfig(search_images=100, bn_batches=2, batch_size=32,
                                            finetune_steps=0),
                            fmnist, torch.device("cpu"), latency_ratio=correction,
                            probe=Probe(trained, EXAMPLE, QUICK), probe_every=1,
                            correction=correction)


def _policies(skeleton):
    return [{name: ratio for name in skeleton.names} for ratio in (0.25, 0.5, 0.75)]


@pytest.mark.parametrize("enabled", [False, True])
def test_every_probe_is_observed_and_its_running_bias_logged(trained, skeleton, fmnist,
                                                             enabled):
    evaluator = _evaluator(trained, skeleton, fmnist, enabled)
    records = [evaluator(policy).metrics for policy in _policies(skeleton)]
    probes = evaluator.correction.probes
    assert [p.measured for p in probes] == [r["latency_measured"] for r in records]
    # What the wall saw for each episode, and the bias against it up to that probe.
    assert [p.used for p in probes] == [r["latency_predicted"] for r in records]
    for n, record in enumerate(records, start=1):
        assert record["probe_bias_median"] == pytest.approx(statistics.median(
            r["latency_measured"] / r["latency_predicted"] - 1 for r in records[:n]))
    assert ("latency_predicted_uncorrected" in records[-1]) == enabled
    policy = _policies(skeleton)[1]
    raw = evaluator.correction.predict(policy)
    # MACs are no latency model: the probes disagree with them, and corrected the wall would
    # see it; off, the prediction is MACs as given.
    assert (evaluator.latency_ratio(policy) != raw) == enabled


def test_a_resumed_search_replays_its_logged_probes_into_the_correction(trained, skeleton,
                                                                         fmnist):
    original = _evaluator(trained, skeleton, fmnist, True)
    records = [{**original(policy).metrics, "policy": policy} for policy in _policies(skeleton)]
    records.append({**records[0], "cached": True})  # a cache hit repeats, it is not a new probe
    resumed = _evaluator(trained, skeleton, fmnist, True)
    resumed.replay_probes(records)
    assert np.array_equal(resumed.correction.weights, original.correction.weights)
    assert len(resumed.correction.probes) == 3
