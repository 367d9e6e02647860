"""Every search method through the one interface, on a tiny real setup: a small CNN trained for a
few seconds on Fashion-MNIST, the real episode evaluator (prune, BatchNorm recalibration, top-1 on
search images), a FLOPs budget on the real skeleton."""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.budgets.wall import Budget
from compressor.errors import UserError
from compressor.pruning import PruningConfig, build_skeleton, uniform_policy_for_budget
from compressor.pruning.policies import policy_vector
from compressor.search.agent import AgentConfig
from compressor.search.env import PruningEnv, reward_error
from compressor.search.evaluator import EpisodeEvaluator, EvaluatorConfig
from compressor.search.loop import CHECKPOINT, EPISODES, LoopConfig
from compressor.search.methods import METHODS, SearchContext, budget_cost, get_method
from compressor.search.sensitivity import greedy_policy, measure

EXAMPLE = torch.zeros(1, 3, 32, 32)
PRUNING = PruningConfig(round_to=8)  # the same units on AVX2 and AVX-512 machines
FLOPS_LIMIT = 0.5
EPISODES_RUN = 4


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.fixture(scope="module")
def trained(fmnist):
    """TinyNet after 150 SGD steps (~70% top-1): pruning it visibly costs accuracy."""
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for x, y in fmnist.train.batches(64, shuffle=True, seed=0, limit=150):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def skeleton(trained):
    return build_skeleton(trained, EXAMPLE, PRUNING)


class RecordingEvaluator(EpisodeEvaluator):
    """The real evaluator, recording the policies asked; `interrupt_at` raises KeyboardInterrupt
    on that call (a simulated Ctrl-C)."""

    def __init__(self, *args, interrupt_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked, self.interrupt_at = [], interrupt_at

    def __call__(self, policy):
        if self.calls + 1 == self.interrupt_at:
            raise KeyboardInterrupt
        self.asked.append(dict(policy))
        return super().__call__(policy)


def context(trained, skeleton, fmnist, run_dir=None, resume=False, episodes=EPISODES_RUN,
            interrupt_at=None, **agent) -> SearchContext:
    evaluator = RecordingEvaluator(
        trained, skeleton, EXAMPLE, PRUNING,
        EvaluatorConfig(search_images=500, bn_batches=4, batch_size=64), fmnist,
        torch.device("cpu"), interrupt_at=interrupt_at)
    dense = skeleton.macs({})

    def macs_ratio(vector):
        return skeleton.macs(skeleton.policy_from_vector(vector)) / dense

    budgets = [Budget("flops", macs_ratio, FLOPS_LIMIT)]
    loop = LoopConfig(episodes=EPISODES_RUN, checkpoint_every=2)
    return SearchContext(
        skeleton=skeleton, evaluate=evaluator, budgets=budgets,
        make_env=lambda extra_features=None: PruningEnv(skeleton.units, macs_ratio, budgets,
                                                        evaluator, 0.8,
                                                        extra_features=extra_features),
        max_ratio=0.8, dense=trained, example_input=EXAMPLE, pruning_config=PRUNING, seed=0,
        episodes=episodes, loop=loop,
        agent=AgentConfig(hidden=16, warmup_episodes=2, batch_size=4, seed=0, **agent),
        run_dir=run_dir, config_dict={"search": {"test": True}}, resume=resume, progress=False)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_proposes_policies_within_the_budget(name, trained, skeleton, fmnist):
    ctx = context(trained, skeleton, fmnist)
    outcome = get_method(name).search(ctx)
    assert outcome.candidates and outcome.seconds >= 0
    assert outcome.evaluations == ctx.evaluate.calls > 0
    rewards = [c.reward for c in outcome.candidates]
    assert rewards == sorted(rewards, reverse=True)
    for candidate in outcome.candidates:
        assert ctx.budget_cost(candidate.policy) <= 1
        assert skeleton.macs(candidate.policy) / skeleton.macs({}) <= FLOPS_LIMIT
        assert set(candidate.policy) <= set(skeleton.names)
        assert all(0 <= r <= 0.8 for r in candidate.policy.values())
    if name in ("ddpg", "random"):
        assert outcome.evaluations == EPISODES_RUN
    else:  # one policy, evaluated once, with AMC's reward
        (only,) = outcome.candidates
        assert only.reward == pytest.approx(-(100 - only.top1) / 100)


def test_greedys_grid_tops_out_at_the_searchs_maximum_ratio():
    greedy = get_method("greedy")
    assert greedy.grid(0.8) == (0.25, 0.5, 0.75, 0.8)
    assert greedy.grid(0.6) == (0.25, 0.5, 0.6)


def test_greedy_asks_about_each_unit_at_each_ratio_and_prunes_the_robust_units_most(
        trained, skeleton, fmnist):
    ctx = context(trained, skeleton, fmnist)
    greedy = get_method("greedy")
    (chosen,) = greedy.search(ctx).candidates
    # The dense network, every unit alone at every grid ratio, then the chosen policy.
    grid = greedy.grid(ctx.max_ratio)
    assert ctx.evaluate.calls == 1 + len(grid) * len(skeleton.units) + 1
    assert set(chosen.policy.values()) <= {0.0, *grid}
    # Its own measurements again (cache hits): a unit whose accuracy drop is no larger than
    # another's at every ratio is pruned at least as much. (Greedy is not asserted to beat uniform:
    # on this 3-unit net its 0.25-step grid overshoots the budget, 48.6% vs uniform's 60.6%.)
    dense = ctx.evaluate({}).top1

    def envelope(name):
        drops, worst = [], 0.0
        for r in grid:
            worst = max(worst, dense - ctx.evaluate({name: r}).top1)
            drops.append(worst)
        return drops

    drops = {name: envelope(name) for name in skeleton.names}
    for a in skeleton.names:
        for b in skeleton.names:
            if all(x <= y for x, y in zip(drops[a], drops[b], strict=True)):
                assert chosen.policy[a] >= chosen.policy[b]
    # The least tolerated drop: tolerating any less (pruning the units at that drop one grid step
    # less, down to a step below it) breaks the budget.
    grid = (0.0, *greedy.ratios)

    def drop_at(name, ratio):
        return 0.0 if ratio == 0 else drops[name][greedy.ratios.index(ratio)]

    level = max(drop_at(n, r) for n, r in chosen.policy.items())
    looser = {n: max(g for g in grid if drop_at(n, g) < level) if drop_at(n, r) == level else r
              for n, r in chosen.policy.items()}
    assert looser != chosen.policy and ctx.budget_cost(looser) > 1


def test_agent_search_writes_its_run_directory_or_nothing(trained, skeleton, fmnist, tmp_path,
                                                         monkeypatch):
    run_dir = tmp_path / "run"
    get_method("random").search(context(trained, skeleton, fmnist, run_dir=run_dir))
    lines = (run_dir / EPISODES).read_text().splitlines()
    assert len(lines) == EPISODES_RUN
    assert json.loads((run_dir / "config.json").read_text()) == {"search": {"test": True}}

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the method's temporary dir goes
    outcome = get_method("ddpg").search(context(trained, skeleton, fmnist, run_dir=None))
    assert len(outcome.candidates) >= 1
    assert list(scratch.iterdir()) == []  # the temporary run directory is gone

    with pytest.raises(UserError, match="run directory"):
        get_method("ddpg").search(context(trained, skeleton, fmnist, run_dir=None, resume=True))


def test_an_unknown_method_is_a_user_error_listing_the_valid_names():
    with pytest.raises(UserError, match="unknown search method 'amc'") as info:
        get_method("amc")
    for name in ("ddpg", "random", "greedy", "uniform", "global"):
        assert name in str(info.value)


def test_budget_cost_is_the_worst_budget_over_its_limit(skeleton):
    dense = skeleton.macs({})

    def flops(vector):
        return skeleton.macs(skeleton.policy_from_vector(vector)) / dense

    budgets = [Budget("flops", flops, 0.5), Budget("loose", flops, 1.0)]
    assert budget_cost(skeleton, budgets, {}) == pytest.approx(2.0)  # dense: twice the budget
    half = {name: 0.5 for name in skeleton.names}
    assert budget_cost(skeleton, budgets, half) == pytest.approx(flops(policy_vector(skeleton,
                                                                                     half)) / 0.5)
    assert policy_vector(skeleton, {skeleton.names[1]: 0.25}) == [0.0, 0.25, 0.0]


def test_deterministic_methods_reward_is_amcs_error_reward(trained, skeleton, fmnist):
    ctx = context(trained, skeleton, fmnist)
    (candidate,) = get_method("uniform").search(ctx).candidates
    assert candidate.reward == pytest.approx(reward_error(ctx.evaluate(candidate.policy)))


def _checkpoint(run_dir):
    return torch.load(run_dir / CHECKPOINT, weights_only=False)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / EPISODES).read_text().splitlines()]


def _without_volatile(log):
    return [{k: v for k, v in e.items() if k not in ("elapsed", "cached", "seconds")} for e in log]


def test_sensitivity_features_are_measured_once_scaled_and_in_the_state(trained, skeleton,
                                                                       fmnist, tmp_path):
    units, ratios = len(skeleton.units), (0.25, 0.5, 0.75)
    prepass = 1 + units * len(ratios)
    episodes = prepass + 4
    ctx = context(trained, skeleton, fmnist, tmp_path / "whole", episodes=episodes,
                  sensitivity=True)
    outcome = get_method("ddpg").search(ctx)
    assert outcome.evaluations == ctx.evaluate.calls == episodes  # the prepass is in the budget
    asked = ctx.evaluate.asked
    singles = [{n: r} for n in skeleton.names for r in ratios]
    assert asked[:prepass] == [{}, *singles]  # once each, before the first episode
    assert all(p not in asked[prepass:] for p in singles)
    assert len(_log(tmp_path / "whole")) == 4

    blob = _checkpoint(tmp_path / "whole")
    features = np.array(blob["state"]["prepass"]["extra_features"])
    assert features.shape == (units, len(ratios))
    assert features.min() >= 0 and features.max() == 1
    expected = measure(ctx.evaluate_all, skeleton.names, ratios).features(skeleton.names)
    np.testing.assert_allclose(features, expected)  # the evaluator's own drops, scaled
    assert blob["agent"]["obs_dim"] == 11 + len(ratios)

    # Interrupted after the prepass and resumed by a new process: measured once in all.
    with pytest.raises(KeyboardInterrupt):
        get_method("ddpg").search(context(trained, skeleton, fmnist, tmp_path / "cut",
                                          episodes=episodes, sensitivity=True,
                                          interrupt_at=prepass + 3))
    resumed = context(trained, skeleton, fmnist, tmp_path / "cut", resume=True,
                      episodes=episodes, sensitivity=True)
    again = get_method("ddpg").search(resumed)
    assert {} not in resumed.evaluate.asked and all(p not in resumed.evaluate.asked
                                                    for p in singles)
    assert again.evaluations == episodes
    assert _without_volatile(_log(tmp_path / "cut")) == _without_volatile(_log(tmp_path / "whole"))


def test_warm_start_plays_uniform_and_greedy_first_and_stores_their_transitions(
        trained, skeleton, fmnist, tmp_path):
    units, ratios = len(skeleton.units), (0.5,)
    episodes = 1 + units * len(ratios) + 4
    ctx = context(trained, skeleton, fmnist, tmp_path / "run", episodes=episodes,
                  warm_start=True, sensitivity_ratios=ratios)
    outcome = get_method("ddpg").search(ctx)
    assert outcome.evaluations == episodes
    log = _log(tmp_path / "run")
    assert len(log) == 4 and [e.get("demonstration") for e in log] == ["uniform", "greedy",
                                                                       None, None]
    uniform, _ = uniform_policy_for_budget(skeleton, ctx.budget_cost, 1.0, 0.8)
    greedy = greedy_policy(measure(ctx.evaluate_all, skeleton.names, ratios), ctx.budget_cost, 0.8)
    for played, policy in zip(log[:2], (uniform, greedy), strict=True):
        assert played["policy"] == pytest.approx(policy, abs=1e-6)  # float32 actions
        assert played["sigma"] is None  # no noise on a demonstration
    assert not ctx.agent.sensitivity and _checkpoint(tmp_path / "run")["agent"]["obs_dim"] == 11

    # One transition per unit step, demonstrations first, with their real (baselined) rewards:
    # the first episode's baseline is its own reward, the second's the first's.
    replay = _checkpoint(tmp_path / "run")["agent"]["replay"]
    assert replay["size"] == 4 * units
    actions, rewards = replay["actions"][:, 0].numpy(), replay["rewards"][:, 0].numpy()
    for k, played in enumerate(log[:2]):
        rows = slice(k * units, (k + 1) * units)
        np.testing.assert_allclose(actions[rows], [played["policy"][n] / 0.8
                                                   for n in skeleton.names], rtol=1e-6)
        np.testing.assert_array_equal(replay["dones"][rows, 0].numpy(), [0] * (units - 1) + [1])
    np.testing.assert_allclose(rewards[:units], 0.0)
    np.testing.assert_allclose(rewards[units:2 * units], log[1]["reward"] - log[0]["reward"],
                               rtol=1e-5)


def test_the_prepass_is_refused_before_it_spends_a_budget_it_would_exhaust(trained, skeleton,
                                                                          fmnist):
    ctx = context(trained, skeleton, fmnist, episodes=10, sensitivity=True)  # needs 1 + 3 * 3
    with pytest.raises(UserError, match="raise --episodes"):
        get_method("ddpg").search(ctx)
    assert ctx.evaluate.calls == 0
    # The random agent is the baseline: no prepass whatever its agent options say.
    ctx = context(trained, skeleton, fmnist, episodes=4, sensitivity=True, warm_start=True)
    get_method("random").search(ctx)
    assert ctx.evaluate.calls == 4 and {} not in ctx.evaluate.asked
