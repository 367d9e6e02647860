import numpy as np
import pytest
import torch
import torchvision
from gymnasium.utils.env_checker import check_env

from compressor.budgets.wall import Budget
from compressor.errors import UserError
from compressor.pruning import PruningConfig, build_skeleton
from compressor.search.env import OBS_DIM, Evaluation, PruningEnv, reward_error, unit_features


@pytest.fixture(scope="module")
def skeleton():
    model = torchvision.models.resnet18(num_classes=10)
    return build_skeleton(model, torch.zeros(1, 3, 32, 32), PruningConfig())


def _env(skeleton, limit=0.5, evaluate=None, extra_features=None):
    dense = skeleton.macs({})

    def macs_ratio(vector):
        return skeleton.macs(skeleton.policy_from_vector(vector)) / dense

    def evaluate_by_macs(policy):
        # A small real evaluator: a deterministic score of the pruned network's size.
        ratio = skeleton.macs(policy) / dense
        return Evaluation(top1=50 + 40 * ratio, flops_ratio=ratio, metrics={})

    budgets = [Budget("flops", macs_ratio, limit)]
    return PruningEnv(skeleton.units, macs_ratio, budgets, evaluate or evaluate_by_macs,
                      max_ratio=0.8, extra_features=extra_features)


def test_check_env_passes(skeleton):
    check_env(_env(skeleton), skip_render_check=True)


def test_episode_visits_every_unit_and_meets_the_budget_for_any_actions(skeleton):
    env = _env(skeleton, limit=0.4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, _ = env.reset()
        assert obs.shape == (OBS_DIM,) and env.observation_space.contains(obs)
        steps, terminated = 0, False
        while not terminated:
            obs, reward, terminated, truncated, info = env.step(rng.uniform(0, 1, 1))
            assert env.observation_space.contains(obs) and not truncated
            assert 0 <= info["ratio"] <= 0.8
            steps += 1
        assert steps == len(skeleton.units) == 12
        evaluation = info["evaluation"]
        assert evaluation.flops_ratio <= 0.4
        assert reward == pytest.approx(reward_error(evaluation))
        assert set(info["policy"]) == set(skeleton.names)


def test_zero_actions_are_raised_by_the_wall(skeleton):
    env = _env(skeleton, limit=0.5)
    env.reset()
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(np.zeros(1, np.float32))
    assert info["evaluation"].flops_ratio <= 0.5
    assert max(info["policy"].values()) > 0


def test_observation_tracks_removed_macs_and_previous_action(skeleton):
    env = _env(skeleton, limit=0.9)
    obs0, _ = env.reset()
    assert obs0[-3] == 0.0 and obs0[-1] == 0.0  # nothing removed yet, no previous action
    obs1, *_ = env.step(np.array([1.0], np.float32))
    assert obs1[-1] == pytest.approx(1.0)
    assert obs1[-3] > 0.0


def test_impossible_budget_is_rejected_with_the_reachable_minimum(skeleton):
    with pytest.raises(UserError, match="reachable minimum"):
        _env(skeleton, limit=0.01)
    with pytest.raises(UserError, match="between 0 and 1"):
        _env(skeleton, limit=1.5)


def test_extra_features_follow_the_static_ones_in_every_observation(skeleton):
    extra = np.linspace(0, 1, 12 * 3).reshape(12, 3)  # e.g. 3 sensitivity columns per unit
    env = _env(skeleton, extra_features=extra)
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (OBS_DIM + 3,)
    plain, _ = _env(skeleton).reset()
    obs, _ = env.reset()
    static = OBS_DIM - 3  # the unit's own features; then reduced, rest, previous action
    np.testing.assert_allclose(obs[static:static + 3], extra[0], rtol=1e-6)
    np.testing.assert_array_equal(np.delete(obs, range(static, static + 3)), plain)
    obs, *_ = env.step(np.array([1.0], np.float32))
    np.testing.assert_allclose(obs[static:static + 3], extra[1], rtol=1e-6)
    assert obs[-1] == pytest.approx(1.0)  # the previous action is still last
    with pytest.raises(ValueError, match="one row per unit"):
        _env(skeleton, extra_features=extra[:5])


def test_proposal_mode_hands_over_the_policy_and_evaluates_nothing(skeleton):
    scored = _env(skeleton, limit=0.4)
    proposing = _env(skeleton, limit=0.4)
    proposing.evaluate = None
    check_env(proposing, skip_render_check=True)
    actions = np.random.default_rng(1).uniform(0, 1, (len(skeleton.units), 1))
    infos, rewards = [], []
    for env in (scored, proposing):
        env.reset()
        for action in actions:
            _, reward, terminated, _, info = env.step(action)
        assert terminated
        infos.append(info)
        rewards.append(reward)
    assert rewards[1] == 0.0 and "evaluation" not in infos[1]
    assert rewards[0] == pytest.approx(reward_error(infos[0]["evaluation"])) != 0.0
    assert infos[1]["policy"] == infos[0]["policy"]  # the same walk, the wall included


def _precision_env(skeleton, limit):
    """Precisions searched: a unit kept FP32 doubles the cost of its share of the network."""
    dense = skeleton.macs({})
    n = len(skeleton.units)

    def macs_ratio(vector):
        return skeleton.macs(skeleton.policy_from_vector(vector)) / dense

    def budgets(decided):  # the undecided units in their cheapest precision, INT8
        fp32 = sum(not int8 for int8 in decided.values())
        return [Budget("latency", lambda v: macs_ratio(v) * (0.5 + 0.5 * fp32 / n), limit)]

    def evaluate(policy):
        ratio = skeleton.macs(policy) / dense
        return Evaluation(top1=50 + 40 * ratio, flops_ratio=ratio, metrics={"policy": policy})

    return PruningEnv(skeleton.units, macs_ratio, budgets({}), evaluate, max_ratio=0.8,
                      precision_budgets=budgets), budgets


def test_check_env_passes_with_precision_steps(skeleton):
    check_env(_precision_env(skeleton, 0.4)[0], skip_render_check=True)


def test_precision_steps_follow_each_ratio_and_the_policy_meets_the_budget_they_price(skeleton):
    env, budgets = _precision_env(skeleton, 0.2)
    rng = np.random.default_rng(1)
    for _ in range(4):
        obs, _ = env.reset()
        assert obs.shape == (OBS_DIM + 1,) and obs[-4] == 0.0  # a ratio step
        steps, terminated = 0, False
        while not terminated:
            deciding = env.deciding_precision
            obs, _, terminated, _, info = env.step(rng.uniform(0, 1, 1))
            assert ("int8" in info) == deciding and deciding == (steps % 2 == 1)
            if not terminated:
                assert obs[-4] == float(env.deciding_precision)
            steps += 1
        assert steps == 2 * len(skeleton.units)
        policy = info["policy"]
        precisions = {u: v == 1.0 for u, v in policy.items() if u.startswith("int8:")}
        assert len(precisions) == len(skeleton.units)
        ratios = [policy[name] for name in skeleton.names]
        decided = {u[len("int8:"):]: int8 for u, int8 in precisions.items()}
        assert budgets(decided)[0].cost(ratios) <= 0.2


def test_the_precision_wall_flips_only_a_choice_that_breaks_the_budget(skeleton):
    loose, _ = _precision_env(skeleton, 0.95)
    loose.reset()
    while True:  # wants the most pruning and FP32 everywhere: affordable under 0.95
        _, _, done, _, info = loose.step(np.zeros(1) if loose.deciding_precision else np.ones(1))
        if done:
            break
    assert not any(v for k, v in info["policy"].items() if k.startswith("int8:"))
    env, _ = _precision_env(skeleton, 0.2)
    minimum = env.budgets[0].cost([0.8] * len(skeleton.units))  # all INT8 at the maximum ratio
    tight, _ = _precision_env(skeleton, minimum * 1.0001)
    tight.reset()
    while True:  # FP32 anywhere is out of reach: every choice is flipped to INT8
        _, _, done, _, info = tight.step(np.zeros(1))
        if "int8" in info:
            assert info["int8"] and info["applied_action"] == 1.0
        if done:
            break


def test_transformer_units_are_told_apart_by_their_kind_feature():
    from tests.vit_layouts import example, torchvision_vit

    skeleton = build_skeleton(torchvision_vit(layers=2), example(1), PruningConfig(round_to=16))
    features = unit_features(skeleton.units)
    by_kind = {u.kind: features[i, 1] for i, u in enumerate(skeleton.units)}
    assert set(by_kind) == {"block", "heads", "mlp"}
    assert len(set(by_kind.values())) == 3 and all(0.0 < v <= 1.0 for v in by_kind.values())
