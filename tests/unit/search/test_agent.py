"""DDPG as AMC uses it: it learns a small episodic problem, explores as specified, resumes exactly."""

from __future__ import annotations

import copy
import io
from dataclasses import replace
from statistics import NormalDist

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from compressor.errors import UserError
from compressor.search.agent import (
    AgentConfig,
    DDPGAgent,
    RandomAgent,
    exploration_sigma,
    make_agent,
    parse_options,
    soft_update,
    truncated_normal,
    warmup_for,
)

torch.set_num_threads(1)

# A synthetic "pruning" episode: 6 steps, the observation is the step as a one-hot plus t / 5, and the
# reward (given once, at the end) is -sum_t (a_t - target_t)^2. The optimum is 0 at a_t = target_t.
TARGETS = np.array([0.15, 0.85, 0.2, 0.8, 0.25, 0.75])
STEPS = len(TARGETS)
OBS_DIM = STEPS + 1


def observation(t: int) -> np.ndarray:
    obs = np.zeros(OBS_DIM, dtype=np.float32)
    obs[t] = 1.0
    obs[STEPS] = t / (STEPS - 1)
    return obs


OBSERVATIONS = [observation(t) for t in range(STEPS)]


def reward(actions: list[float]) -> float:
    return -float(np.sum((np.asarray(actions) - TARGETS) ** 2))


def run(agent: DDPGAgent | RandomAgent, episodes: int, first: int = 0) -> list[list[float]]:
    """Play ``episodes`` episodes as the search loop will; return the actions taken."""
    taken = []
    for episode in range(first, first + episodes):
        actions = [agent.act(obs, episode) for obs in OBSERVATIONS]
        agent.observe_episode(OBSERVATIONS, actions, reward(actions))
        taken.append(actions)
    return taken


# AMC's schedule (sigma * 0.95 per episode, no floor) unless a test says otherwise: it needs no
# episode count, and the tests of the budget schedule below say what differs.
SMALL = AgentConfig(hidden=32, batch_size=16, replay_size=60, warmup_episodes=3, seed=0,
                    noise_schedule="decay", noise_floor=0.0)


def test_ddpg_learns_the_synthetic_problem():
    # Smaller than AMC (hidden 64, 50 warm-up, 300 episodes) so it runs in ~10 s on one thread;
    # the default exploration (sigma from 0.5 to the 0.05 floor by the last episode).
    config = AgentConfig(hidden=64, warmup_episodes=50, seed=0)
    episodes = 300
    agent = DDPGAgent(OBS_DIM, config, episodes=episodes)
    run(agent, episodes)
    learned = reward([agent.greedy(obs) for obs in OBSERVATIONS])

    random_rewards = [reward(a) for a in run(RandomAgent(OBS_DIM, config), episodes)]
    # Ignoring the observation, the best any policy can do is the constant mean target: -0.55.
    # The untrained actor (~0.5 everywhere) scores about that, random episodes -1.08 on average.
    best_constant = reward([float(TARGETS.mean())] * STEPS)
    # Verified with seeds 0-11: learned from -0.007 to -0.095 (seed 0: -0.076; AMC's old 0.98
    # decay without a floor: -0.03 to -0.16); the random 95th percentile from -0.29 to -0.39.
    # The best random episode (-0.03 to -0.11) is not always beaten.
    assert learned > best_constant / 2, learned
    assert learned > np.percentile(random_rewards, 95), (learned, random_rewards)


def test_actions_are_ratios_in_unit_interval():
    agent = DDPGAgent(OBS_DIM, SMALL)
    extreme = [np.full(OBS_DIM, v, dtype=np.float32) for v in (-1e4, 0.0, 1e4)]
    for episode in (0, SMALL.warmup_episodes, SMALL.warmup_episodes + 50):
        for obs in OBSERVATIONS + extreme:
            for _ in range(20):
                action = agent.act(obs, episode)
                assert isinstance(action, float) and 0.0 <= action <= 1.0
            assert 0.0 <= agent.greedy(obs) <= 1.0


def test_warmup_actions_are_the_generators_uniform_draws():
    config = replace(SMALL, warmup_episodes=5, seed=7)
    agent = DDPGAgent(OBS_DIM, config)
    actions = [a for episode in run(agent, 5) for a in episode]
    # Uniform from the agent's own Generator, independent of the observation and of the actor.
    assert actions == list(np.random.default_rng(7).random(5 * STEPS))
    assert agent.updates_done == 0  # nothing is learned during warm-up


def test_noise_sigma_decays_by_095_per_episode_after_warmup():
    agent = DDPGAgent(OBS_DIM, SMALL)
    warm = SMALL.warmup_episodes
    assert agent.noise_sigma(0) == agent.noise_sigma(warm) == 0.5
    for k in range(1, 30):
        assert agent.noise_sigma(warm + k) == pytest.approx(0.5 * 0.95**k, rel=1e-12)
    # And act() really uses it: the spread around the greedy action shrinks with the episode.
    obs = OBSERVATIONS[2]
    spread = [np.std([agent.act(obs, warm + k) for _ in range(400)]) for k in (0, 40, 120)]
    assert spread[0] > 0.2 and spread[1] < 0.1 and spread[2] < 0.002, spread


@given(sigma=st.floats(0.0, 1.0), floor_fraction=st.floats(0.0, 1.0),
       decay=st.floats(0.0, 1.0), warmup=st.integers(0, 1000), episodes=st.integers(1, 5000),
       episode=st.integers(0, 10_000), schedule=st.sampled_from(["budget", "decay"]))
def test_sigma_stays_between_its_floor_and_its_start(sigma, floor_fraction, decay, warmup,
                                                     episodes, episode, schedule):
    floor = sigma * floor_fraction
    if schedule == "budget" and floor == 0 < sigma:
        floor = sigma  # a budget schedule needs a positive floor (refused otherwise, below)
    config = AgentConfig(noise_sigma=sigma, noise_floor=floor, noise_decay=decay,
                         warmup_episodes=warmup, noise_schedule=schedule)
    value = exploration_sigma(config, episode, episodes)
    assert floor <= value <= sigma


def test_budget_schedule_decays_from_sigma_to_the_floor_by_the_last_episode():
    config = AgentConfig(warmup_episodes=25)  # the defaults of a 200-episode search
    sigmas = [exploration_sigma(config, e, 200) for e in range(250)]
    assert sigmas[:26] == [0.5] * 26  # warm-up, then the first noisy episode at full sigma
    assert all(a > b for a, b in zip(sigmas[25:199], sigmas[26:200], strict=True))
    assert sigmas[199] == pytest.approx(0.05) and min(sigmas) == pytest.approx(0.05)
    assert sigmas[112] == pytest.approx(0.5 * 0.1 ** (87 / 174))  # geometric: halfway in log
    # AMC's decay alone is at 0.003 by episode 125; with the floor it stops at 0.05.
    amc = replace(config, noise_schedule="decay", noise_floor=0.0)
    assert exploration_sigma(amc, 125, 200) == pytest.approx(0.5 * 0.95**100)
    assert exploration_sigma(replace(amc, noise_floor=0.05), 125, 200) == 0.05
    with pytest.raises(ValueError, match="episode count"):
        DDPGAgent(OBS_DIM, config)
    with pytest.raises(UserError, match="positive"):
        AgentConfig(noise_floor=0.0)
    with pytest.raises(UserError, match="noise_floor"):
        AgentConfig(noise_floor=0.6)


def test_the_floor_keeps_act_exploring_late_in_the_search():
    config = replace(SMALL, noise_schedule="budget", noise_floor=0.05)
    agent = DDPGAgent(OBS_DIM, config, episodes=100)
    spread = np.std([agent.act(OBSERVATIONS[2], 99) for _ in range(2000)])
    assert spread == pytest.approx(0.05, rel=0.1)


def test_episode_stats_report_what_the_agent_learned():
    config = replace(SMALL, noise_schedule="budget", noise_floor=0.05)
    agent = DDPGAgent(OBS_DIM, config, episodes=10)
    run(agent, 1)
    stats = agent.episode_stats(OBSERVATIONS, 0)
    assert stats["critic_loss"] is None and stats["sigma"] is None  # warm-up: nothing learned
    run(agent, 3, first=1)
    stats = agent.episode_stats(OBSERVATIONS, 3)
    assert stats["sigma"] == agent.noise_sigma(3) and 0.05 < stats["sigma"] <= 0.5
    assert np.isfinite(stats["critic_loss"]) and stats["critic_loss"] > 0
    greedy = [agent.greedy(obs) for obs in OBSERVATIONS]
    assert stats["actor_mean"] == pytest.approx(np.mean(greedy), abs=1e-6)
    assert stats["actor_std"] == pytest.approx(np.std(greedy), abs=1e-6)
    # The losses and Q are the means over the episode's gradient steps (one per unit here).
    twin = copy.deepcopy(agent)
    actions = [0.3] * STEPS
    agent.observe_episode(OBSERVATIONS, actions, -0.5)
    twin.config = replace(config, updates_per_episode=0)  # store only, then step by hand
    twin.observe_episode(OBSERVATIONS, actions, -0.5)
    steps = np.array([twin._update() for _ in range(STEPS)])
    np.testing.assert_allclose(agent.episode_update, steps.mean(axis=0), rtol=1e-12)
    assert RandomAgent(OBS_DIM, SMALL).episode_stats(OBSERVATIONS, 0) == {}


def test_agent_options_parse_by_field_type():
    assert parse_options(["warm_start=true", "sensitivity=off", "noise_floor=0.1",
                          "noise-schedule=decay", "sensitivity_ratios=0.5,0.75",
                          "updates_per_episode=none", "hidden=64"]) == {
        "warm_start": True, "sensitivity": False, "noise_floor": 0.1, "noise_schedule": "decay",
        "sensitivity_ratios": (0.5, 0.75), "updates_per_episode": None, "hidden": 64}
    with pytest.raises(UserError, match="KEY one of: hidden"):
        parse_options(["warmstart=true"])
    with pytest.raises(UserError, match="warm_start: cannot read 'yes please'"):
        parse_options(["warm_start=yes please"])
    with pytest.raises(UserError, match="hidden: cannot read '1.5'"):
        parse_options(["hidden=1.5"])


@pytest.mark.parametrize(("mean", "sigma"), [(0.5, 0.05), (0.9, 0.5), (0.02, 0.3), (0.5, 5.0)])
def test_truncated_normal_matches_the_truncated_distribution(mean: float, sigma: float):
    rng = np.random.default_rng(0)
    draws = np.array([truncated_normal(mean, sigma, rng) for _ in range(20_000)])
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    normal = NormalDist()
    alpha, beta = (0 - mean) / sigma, (1 - mean) / sigma
    mass = normal.cdf(beta) - normal.cdf(alpha)
    expected = mean + sigma * (normal.pdf(alpha) - normal.pdf(beta)) / mass
    assert draws.mean() == pytest.approx(expected, abs=0.01)


def test_truncated_normal_without_noise_is_the_mean():
    assert truncated_normal(0.3, 0.0, np.random.default_rng(0)) == 0.3


def test_final_reward_goes_to_every_step_minus_a_moving_average_baseline():
    agent = DDPGAgent(OBS_DIM, replace(SMALL, warmup_episodes=10))
    actions = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    agent.observe_episode(OBSERVATIONS, actions, -0.8)  # first episode: baseline is its own reward
    agent.observe_episode(OBSERVATIONS, actions, -0.4)  # baseline -0.8, then -0.8 + 0.5 * 0.4
    replay = agent.replay
    assert replay.size == 2 * STEPS
    np.testing.assert_allclose(replay.rewards[: 2 * STEPS, 0], [0.0] * STEPS + [0.4] * STEPS)
    assert agent.moving_average == pytest.approx(-0.6)
    np.testing.assert_array_equal(replay.actions[:STEPS, 0], np.float32(actions))
    np.testing.assert_array_equal(replay.dones[:STEPS, 0], [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(replay.next_obs[: STEPS - 1], np.stack(OBSERVATIONS[1:]))


def test_replay_buffer_is_fifo_of_fixed_size():
    agent = DDPGAgent(OBS_DIM, replace(SMALL, replay_size=10, warmup_episodes=10))
    for value in (0.1, 0.2):
        agent.observe_episode(OBSERVATIONS, [value] * STEPS, -1.0)
    assert agent.replay.size == 10 and agent.replay.pointer == 2
    # 12 transitions in 10 slots: the newest episode's last two overwrote the two oldest.
    np.testing.assert_allclose(agent.replay.actions[:, 0], [0.2] * 2 + [0.1] * 4 + [0.2] * 4)


def test_updates_start_after_warmup_and_follow_the_config():
    agent = DDPGAgent(OBS_DIM, SMALL)
    run(agent, SMALL.warmup_episodes)
    assert agent.updates_done == 0 and agent.episode_update is None
    run(agent, 2, first=SMALL.warmup_episodes)
    assert agent.updates_done == 2 * STEPS  # default: one gradient step per stored transition
    assert agent.episode_update is not None and np.isfinite(agent.episode_update.critic_loss)
    fixed = DDPGAgent(OBS_DIM, replace(SMALL, warmup_episodes=0, updates_per_episode=3))
    run(fixed, 2)
    assert fixed.updates_done == 6


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run_exactly():
    n, m = SMALL.warmup_episodes + 3, 4  # past warm-up, so Adam state and replay matter
    config = replace(SMALL, noise_schedule="budget", noise_floor=0.05)  # the defaults
    uninterrupted = DDPGAgent(OBS_DIM, config, episodes=n + m)
    expected = run(uninterrupted, n + m)

    first = DDPGAgent(OBS_DIM, config, episodes=n + m)
    assert run(first, n) == expected[:n]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    # A different seed proves the checkpoint, not the constructor, decides everything.
    resumed = DDPGAgent(OBS_DIM, replace(config, seed=123), episodes=n + m)
    resumed.load_state_dict(torch.load(buffer))  # weights_only=True: a safe checkpoint
    assert run(resumed, m, first=n) == expected[n:]
    for name in ("actor", "critic", "actor_target", "critic_target"):
        for a, b in zip(getattr(resumed, name).parameters(),
                        getattr(uninterrupted, name).parameters(), strict=True):
            assert torch.equal(a, b)


def test_random_agent_learns_nothing_and_resumes_exactly():
    expected = run(RandomAgent(OBS_DIM, SMALL), 4)
    first = RandomAgent(OBS_DIM, SMALL)
    run(first, 2)
    resumed = RandomAgent(OBS_DIM, replace(SMALL, seed=5))
    resumed.load_state_dict(first.state_dict())
    assert run(resumed, 2, first=2) == expected[2:]
    assert resumed.episodes_observed == 4


def test_agents_leave_the_global_rngs_alone():
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    agent = DDPGAgent(OBS_DIM, replace(SMALL, warmup_episodes=1))
    run(agent, 3)
    run(RandomAgent(OBS_DIM, SMALL), 1)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_state_dict_is_a_snapshot_and_mismatches_are_refused():
    agent = DDPGAgent(OBS_DIM, replace(SMALL, warmup_episodes=0))
    state = agent.state_dict()
    run(agent, 1)
    assert state["episodes_observed"] == 0 and state["replay"]["size"] == 0
    assert not torch.equal(state["actor"]["net.0.weight"], agent.actor.state_dict()["net.0.weight"])
    with pytest.raises(ValueError, match="obs_dim"):
        DDPGAgent(OBS_DIM + 1, SMALL).load_state_dict(state)
    with pytest.raises(ValueError, match="random"):
        DDPGAgent(OBS_DIM, SMALL).load_state_dict(RandomAgent(OBS_DIM, SMALL).state_dict())


def test_observe_episode_checks_its_arguments():
    agent = DDPGAgent(OBS_DIM, SMALL)
    with pytest.raises(ValueError, match="one observation per action"):
        agent.observe_episode(OBSERVATIONS, [0.5], -1.0)
    with pytest.raises(ValueError, match="shape"):
        agent.observe_episode([np.zeros(3)], [0.5], -1.0)


def test_soft_update_moves_a_tau_fraction():
    source, target = nn.Linear(2, 1), nn.Linear(2, 1)
    before = target.weight.detach().clone()
    soft_update(target, source, 0.25)
    torch.testing.assert_close(target.weight, 0.25 * source.weight + 0.75 * before)


def test_make_agent_and_config_validation():
    assert isinstance(make_agent("ddpg", OBS_DIM, SMALL, torch.device("cpu")), DDPGAgent)
    assert isinstance(make_agent("random", OBS_DIM, SMALL, torch.device("cpu")), RandomAgent)
    with pytest.raises(UserError, match="unknown agent 'ppo'; choose one of: ddpg, random"):
        make_agent("ppo", OBS_DIM, SMALL, torch.device("cpu"))
    with pytest.raises(UserError, match="tau"):
        AgentConfig(tau=1.5)
    with pytest.raises(UserError, match="batch_size"):
        AgentConfig(batch_size=0)


def test_warmup_scales_like_amc():
    assert warmup_for(800) == 100  # AMC's 100 of 800
    assert warmup_for(200) == 25
    assert warmup_for(30) == 10  # the minimum
    assert warmup_for(5) == 5  # never more than the search
