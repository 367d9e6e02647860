"""Episodes scored on a real local Ray cluster (2 workers x 1 thread), with the tiny real setup of
test_methods: TinyNet on Fashion-MNIST, the real episode evaluator, a FLOPs budget. One pool
serves the module (starting actors is the slow part); each search starts from an empty cache."""

# ruff: noqa: F811 (test_methods' fixtures, imported below, are parameters of the tests)
from __future__ import annotations

import json
import threading

import pytest
import ray
import torch

from compressor.budgets.wall import Budget
from compressor.errors import UserError
from compressor.latency import Probe, ProbeSettings
from compressor.search import distributed
from compressor.search.agent import AgentConfig
from compressor.search.distributed import DistributedConfig, connect, evaluator_pool
from compressor.search.env import PruningEnv
from compressor.search.evaluator import EpisodeEvaluator, EvaluatorConfig
from compressor.search.loop import EPISODES, LoopConfig, run_search
from compressor.search.methods import SearchContext, get_method
from tests.unit.search.test_methods import EXAMPLE, PRUNING, skeleton, trained  # noqa: F401

CONFIG = DistributedConfig(workers=2, worker_threads=1)
EPISODES_RUN = 8
VOLATILE = {"elapsed", "cached", "seconds"}


@pytest.fixture(scope="module")
def cluster():
    started = connect(CONFIG)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def evaluator(trained, skeleton, fmnist):
    dense = skeleton.macs({})
    return EpisodeEvaluator(trained, skeleton, EXAMPLE, PRUNING,
                            EvaluatorConfig(search_images=500, bn_batches=4, batch_size=64),
                            fmnist, torch.device("cpu"),
                            latency_ratio=lambda policy: skeleton.macs(policy) / dense)


@pytest.fixture(scope="module")
def pool(cluster, evaluator):
    with evaluator_pool(evaluator, CONFIG) as started:
        yield started


def _fresh(evaluator) -> None:
    """The driver's evaluator as a new process has it: nothing cached, nothing counted."""
    evaluator.cache.clear()
    evaluator.calls = 0


def _search(evaluator, skeleton, run_dir, evaluate_all=None, batch=2, resume=False):
    dense = skeleton.macs({})

    def macs_ratio(vector):
        return skeleton.macs(skeleton.policy_from_vector(vector)) / dense

    budgets = [Budget("flops", macs_ratio, 0.5)]

    def make_env(extra_features=None):
        return PruningEnv(skeleton.units, macs_ratio, budgets, evaluator, 0.8,
                          extra_features=extra_features)

    return run_search(make_env, evaluator, LoopConfig(episodes=EPISODES_RUN, checkpoint_every=2),
                      AgentConfig(hidden=16, warmup_episodes=2, batch_size=4, seed=0), run_dir,
                      {"search": {"test": True}}, resume=resume, progress=False,
                      evaluate_all=evaluate_all, batch=batch)


def _log(run_dir):
    lines = (run_dir / EPISODES).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


def _strip(evaluation):
    return (evaluation.top1, evaluation.flops_ratio,
            {k: v for k, v in evaluation.metrics.items()
             if k not in ("seconds", "latency_measured", "latency_measured_spread")})


def test_map_gives_the_serial_evaluations_in_order_with_probes_on_the_driver(
        pool, evaluator, skeleton, trained, monkeypatch):
    first, second = skeleton.names[:2]
    policies = [{}, {first: 0.5}, {first: 0.5}, {second: 0.25}]
    probe = Probe(trained, EXAMPLE, ProbeSettings(batch_size=2, warmup=1, runs=2, blocks=2))
    monkeypatch.setattr(evaluator, "probe", probe)
    monkeypatch.setattr(evaluator, "probe_every", 2)  # calls 1 and 3 are measured
    _fresh(evaluator)
    serial = [evaluator(p) for p in policies]
    _fresh(evaluator)
    parallel = pool.map(policies)
    assert evaluator.calls == len(policies)
    assert [_strip(e) for e in parallel] == [_strip(e) for e in serial]
    # The duplicate is cached, but due a measurement it lacked: measured, as in-process.
    assert [e.metrics["cached"] for e in parallel] == [False, False, False, False]
    assert ["latency_measured" in e.metrics for e in parallel] == [True, False, True, False]
    assert set(parallel[1].metrics["seconds"]) == {"prune", "recover", "evaluate", "latency"}
    (due,) = pool.map(policies[3:])  # call 5: due a measurement call 4 did not make
    assert due.metrics["cached"] is False and "latency_measured" in due.metrics
    assert pool.map(policies[3:])[0].metrics["cached"] is True  # call 6: not due


def test_batched_ddpg_on_two_workers_repeats_itself_and_equals_in_process_batches(
        pool, evaluator, skeleton, tmp_path):
    runs = {}
    for name, evaluate_all in (("first", pool.map), ("second", pool.map), ("serial", None)):
        _fresh(evaluator)
        _search(evaluator, skeleton, tmp_path / name, evaluate_all)
        runs[name] = _log(tmp_path / name)
        assert evaluator.calls == EPISODES_RUN
    assert [e["episode"] for e in runs["first"]] == list(range(EPISODES_RUN))
    assert runs["first"][-1]["critic_loss"] is not None  # the agent learned between batches
    assert runs["first"] == runs["second"] == runs["serial"]


def test_a_killed_worker_loses_no_episode_and_counts_none_twice(pool, evaluator, skeleton,
                                                                tmp_path):
    _fresh(evaluator)
    _search(evaluator, skeleton, tmp_path / "whole", pool.map)
    batches, restarts = [], pool.restarts

    def kill_during_the_second_batch(policies):
        batches.append(policies)
        if len(batches) == 2:  # while its episode runs (or, at worst, before it is sent)
            threading.Timer(0.02, ray.kill, [pool.actors[0]]).start()
        return pool.map(policies)

    _fresh(evaluator)
    _search(evaluator, skeleton, tmp_path / "killed", kill_during_the_second_batch)
    assert pool.restarts == restarts + 1
    killed = _log(tmp_path / "killed")
    assert [e["episode"] for e in killed] == list(range(EPISODES_RUN))
    assert evaluator.calls == EPISODES_RUN and len(evaluator.cache) <= EPISODES_RUN
    assert killed == _log(tmp_path / "whole")


def test_resume_with_workers_matches_an_uninterrupted_run(pool, evaluator, skeleton,
                                                          tmp_path):
    _fresh(evaluator)
    whole = _search(evaluator, skeleton, tmp_path / "whole", pool.map)
    batches = []

    def interrupted_in_the_third_batch(policies):
        batches.append(policies)
        if len(batches) == 3:
            raise KeyboardInterrupt
        return pool.map(policies)

    _fresh(evaluator)
    with pytest.raises(KeyboardInterrupt):
        _search(evaluator, skeleton, tmp_path / "cut", interrupted_in_the_third_batch)
    assert len(_log(tmp_path / "cut")) == 4  # two whole batches, checkpointed
    _fresh(evaluator)  # a new process: the checkpoint restores the cache and the count
    resumed = _search(evaluator, skeleton, tmp_path / "cut", pool.map, resume=True)
    assert _log(tmp_path / "cut") == _log(tmp_path / "whole")
    assert [c.policy for c in resumed] == [c.policy for c in whole]


def test_greedys_scan_runs_on_the_workers_with_the_same_result(pool, evaluator, skeleton,
                                                              trained):
    dense = skeleton.macs({})

    def macs_ratio(vector):
        return skeleton.macs(skeleton.policy_from_vector(vector)) / dense

    def context(with_pool):
        _fresh(evaluator)
        return SearchContext(
            skeleton=skeleton, evaluate=evaluator, budgets=[Budget("flops", macs_ratio, 0.5)],
            make_env=None, max_ratio=0.8, dense=trained, example_input=EXAMPLE,
            pruning_config=PRUNING, seed=0, episodes=1, loop=LoopConfig(), agent=AgentConfig(),
            run_dir=None, config_dict={}, progress=False, pool=pool if with_pool else None)

    greedy = get_method("greedy")
    serial, parallel = greedy.search(context(False)), greedy.search(context(True))
    assert parallel.evaluations == serial.evaluations == 1 + 4 * len(skeleton.names) + 1
    assert [c.policy for c in parallel.candidates] == [c.policy for c in serial.candidates]
    assert parallel.candidates[0].top1 == serial.candidates[0].top1


def test_a_workers_own_error_arrives_as_raised(pool):
    with pytest.raises(UserError, match="unknown unit 'no-such-unit'"):
        pool._score_all([{"no-such-unit": 0.5}])  # refused on the worker, by apply_policy


def test_ray_address_auto_is_resolved_before_any_work(monkeypatch, tmp_path):
    auto = DistributedConfig(workers=2, ray_address="auto")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(distributed, "CURRENT_CLUSTER", tmp_path / "ray_current_cluster")
    with pytest.raises(UserError, match="found no running Ray cluster"):
        distributed.check(auto)
    # A cluster file left by a stopped `ray start`: its address is tried and refused.
    (tmp_path / "ray_current_cluster").write_text("127.0.0.1:1\n")
    with pytest.raises(UserError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        distributed.check(auto)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.2:1")  # the environment comes first, as in Ray
    with pytest.raises(UserError, match="at 127.0.0.2:1"):
        distributed.check(auto)
