"""DDPG as AMC (He et al. 2018) uses it to choose one pruning ratio per unit, plus a random baseline.

Read top to bottom: the config, the two networks, the replay buffer, the exploration noise, then the
agent. The AMC-specific parts are small:

* an episode visits every unit once; the single reward at its end is given to every step, minus a
  moving-average baseline of past rewards (``observe_episode``);
* the first ``warmup_episodes`` act uniformly at random; after that the actor's action is perturbed by
  truncated-normal noise whose sigma decays from ``noise_sigma`` to ``noise_floor``, either by the
  end of the search (``noise_schedule="budget"``, the default) or by ``noise_decay`` per episode as
  in AMC (``"decay"``), and never below the floor (``exploration_sigma``);
* the actions stored are the ones actually applied, i.e. after the budget wall raised them.

Every random draw (actions, noise, minibatch indices) comes from the agent's own
``numpy.random.Generator``, and the networks are initialised from a torch RNG forked and seeded with
``config.seed``; so ``state_dict``/``load_state_dict`` resume a search bit-identically and the
global RNGs are never touched.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from statistics import NormalDist
from typing import Annotated, Any, NamedTuple, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import UserError
from compressor.flags import choices

CPU = torch.device("cpu")  # the default device (a call in a default argument trips ruff's B008)


NOISE_SCHEDULES = ("budget", "decay")


@dataclass(frozen=True)
class AgentConfig:
    """DDPG settings; the defaults are AMC's but for the exploration floor and schedule, which keep
    the agent exploring to the last episode (AMC's 0.5 * 0.95**100 is 0.003 by episode 125)."""

    hidden: int = 300
    """Units in each of the two hidden layers of the actor and of the critic."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic."""
    tau: float = 0.01
    """Soft target update: target <- tau * online + (1 - tau) * target, after every gradient step."""
    discount: float = 1.0
    """Discount of the critic's bootstrap target; AMC uses 1 (the episode reward is not discounted)."""
    batch_size: int = 64
    """Transitions per gradient step, sampled uniformly (with replacement) from the replay buffer."""
    replay_size: int = 2000
    """Transitions kept, oldest dropped first. AMC keeps about 100 per unit."""
    warmup_episodes: int | None = None
    """Episodes of uniform random actions before the actor acts and learns (AMC: 100 of 800).
    None: AMC's share of the search's episodes, ``warmup_for(episodes)`` (see ``resolved``)."""
    noise_sigma: float = 0.5
    """Sigma of the truncated-normal exploration noise in the first episode after warm-up."""
    noise_decay: float = 0.95
    """With ``noise_schedule="decay"``: sigma is multiplied by this once per episode after warm-up."""
    noise_floor: float = 0.05
    """Sigma never goes below this. 0.05 in action units is one 8-channel rounding step of the
    median unit of resnet18 and mobilenet_v2 (8 / channels / max_ratio 0.8): noise of that size
    still changes the network most episodes, yet keeps it near the actor's policy. 0 is AMC."""
    noise_schedule: Annotated[str, choices(NOISE_SCHEDULES)] = "budget"
    """``budget``: sigma decays geometrically from ``noise_sigma`` after warm-up to ``noise_floor``
    at the search's last episode, whatever its length. ``decay``: AMC's ``noise_decay`` per
    episode (then floored)."""
    warm_start: bool = False
    """Play the uniform and the sensitivity-greedy policies as the first two episodes, so their
    transitions and real rewards are in the replay buffer before the agent acts. Greedy's
    measurement (see ``sensitivity``) and both episodes count in the search's episodes."""
    sensitivity: bool = False
    """Append each unit's sensitivity (its search score drop when pruned alone at
    ``sensitivity_ratios``, scaled to [0, 1]) to its state. Measured once per search, before the
    first episode: 1 + units * ratios evaluations, counted in the search's episodes."""
    sensitivity_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    """The pruning ratios of that measurement (sensitivity-greedy's grid)."""
    updates_per_episode: int | None = None
    """Gradient steps after each post-warm-up episode; None means one per step of the episode,
    which is AMC's one update per stored transition."""
    moving_average_alpha: float = 0.5
    """Weight of the newest reward in the moving-average baseline subtracted from rewards."""
    seed: int | None = None
    """Seeds the network initialisation and the agent's numpy Generator; None: the run's seed."""

    def __post_init__(self) -> None:
        positive = {"hidden": self.hidden, "batch_size": self.batch_size,
                    "replay_size": self.replay_size, "actor_lr": self.actor_lr,
                    "critic_lr": self.critic_lr}
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"agent {name} must be positive, got {value}")
        fractions = {"tau": self.tau, "discount": self.discount, "noise_decay": self.noise_decay,
                     "moving_average_alpha": self.moving_average_alpha}
        for name, value in fractions.items():
            if not 0 <= value <= 1:
                raise UserError(f"agent {name} must be between 0 and 1, got {value}")
        if (self.warmup_episodes or 0) < 0 or self.noise_sigma < 0:
            raise UserError("agent warmup_episodes and noise_sigma must not be negative")
        if not 0 <= self.noise_floor <= self.noise_sigma:
            raise UserError(f"agent noise_floor must be between 0 and noise_sigma "
                            f"({self.noise_sigma}), got {self.noise_floor}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise UserError(f"agent noise_schedule must be one of {', '.join(NOISE_SCHEDULES)}, "
                            f"got {self.noise_schedule!r}")
        if self.noise_schedule == "budget" and self.noise_floor == 0 < self.noise_sigma:
            raise UserError("agent noise_schedule=budget decays to noise_floor, which must be "
                            "positive; noise_schedule=decay is AMC's schedule without a floor")
        if not self.sensitivity_ratios or not all(0 < r < 1 for r in self.sensitivity_ratios):
            raise UserError("agent sensitivity_ratios must be pruning ratios between 0 and 1, "
                            f"got {self.sensitivity_ratios}")
        if self.updates_per_episode is not None and self.updates_per_episode < 0:
            raise UserError("agent updates_per_episode must not be negative")

    def resolved(self, episodes: int, seed: int) -> AgentConfig:
        """The settings of a search of `episodes` seeded `seed`: warm-up and seed filled in where
        they were left None (an agent is built only from resolved settings)."""
        return replace(self, seed=seed if self.seed is None else self.seed,
                       warmup_episodes=warmup_for(episodes) if self.warmup_episodes is None
                       else self.warmup_episodes)


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["warm_start=true", "noise_floor=0.1"]`` -> AgentConfig overrides, typed by the fields.

    Booleans take true/false, tuples comma-separated numbers; a bad key or value is a UserError
    listing what is valid.
    """
    hints = get_type_hints(AgentConfig)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            raise UserError(f"--agent-option takes KEY=VALUE with KEY one of: "
                            f"{', '.join(f.name for f in fields(AgentConfig))}; got {pair!r}")
        kind, text = hints[key], text.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "on", "off"):
                    raise ValueError
                out[key] = text.lower() in ("true", "1", "on")
            elif kind == tuple[float, ...]:
                out[key] = tuple(float(v) for v in text.split(","))
            elif kind == int | None:
                out[key] = None if text.lower() == "none" else int(text)
            else:
                out[key] = kind(text)
        except ValueError:
            raise UserError(f"--agent-option {key}: cannot read {text!r} as "
                            f"{getattr(kind, '__name__', kind)}") from None
    return out


def warmup_for(episodes: int, minimum: int = 10) -> int:
    """Warm-up episodes for a search of ``episodes``: AMC's 1/8, at least ``minimum``, at most all.

    >>> warmup_for(800), warmup_for(200), warmup_for(30), warmup_for(5)
    (100, 25, 10, 5)
    """
    return min(episodes, max(minimum, round(episodes / 8)))


# ---------------------------------------------------------------------------------------------
# Networks


class Actor(nn.Module):
    """Observation -> pruning ratio in (0, 1) through two hidden layers and a sigmoid."""

    def __init__(self, obs_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1), nn.Sigmoid(),
        )
        _small_last_layer(self.net[-2])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class Critic(nn.Module):
    """Q(observation, action) through two hidden layers."""

    def __init__(self, obs_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim + 1, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        _small_last_layer(self.net[-1])

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=1))


def _small_last_layer(layer: nn.Linear, bound: float = 3e-3) -> None:
    # As in the DDPG paper and AMC's code: the actor starts near 0.5 everywhere and Q near 0,
    # so early updates are not driven by arbitrary initial outputs.
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.uniform_(layer.bias, -bound, bound)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Move every target parameter a fraction ``tau`` of the way towards the source's."""
    with torch.no_grad():
        for target_param, param in zip(target.parameters(), source.parameters(), strict=True):
            target_param.copy_(tau * param + (1 - tau) * target_param)


# ---------------------------------------------------------------------------------------------
# Replay buffer


class Batch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor


class ReplayBuffer:
    """A fixed-size FIFO of transitions in numpy arrays; the oldest is overwritten first."""

    FIELDS = ("obs", "actions", "rewards", "next_obs", "dones")

    def __init__(self, capacity: int, obs_dim: int):
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, 1), dtype=np.float32)
        self.rewards = np.zeros((capacity, 1), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.dones = np.zeros((capacity, 1), dtype=np.float32)
        self.pointer = 0  # where the next transition goes
        self.size = 0

    def add(self, obs: np.ndarray, action: float, reward: float, next_obs: np.ndarray,
            done: bool) -> None:
        i = self.pointer
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_obs[i], self.dones[i] = next_obs, float(done)
        self.pointer = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> Batch:
        index = rng.integers(0, self.size, size=batch_size)
        return Batch(*(torch.as_tensor(getattr(self, f)[index], device=device)
                       for f in self.FIELDS))

    def state_dict(self) -> dict[str, Any]:
        # Tensors rather than arrays, so torch.load(weights_only=True) accepts the checkpoint.
        state: dict[str, Any] = {f: torch.from_numpy(getattr(self, f).copy()) for f in self.FIELDS}
        return {**state, "pointer": self.pointer, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in self.FIELDS:
            array = state[f].numpy()
            if array.shape != getattr(self, f).shape:
                raise ValueError(f"replay {f} has shape {array.shape}, "
                                 f"expected {getattr(self, f).shape}")
            setattr(self, f, array.copy())
        self.pointer, self.size = int(state["pointer"]), int(state["size"])


# ---------------------------------------------------------------------------------------------
# Exploration noise

_NORMAL = NormalDist()


def exploration_sigma(config: AgentConfig, episode: int, episodes: int | None = None) -> float:
    """Sigma of the exploration noise in ``episode`` (0-based) of a search of ``episodes``.

    ``noise_sigma`` up to the first episode after warm-up, then decaying: to ``noise_floor`` at
    the last episode (``budget``), or by ``noise_decay`` per episode (``decay``); always within
    [noise_floor, noise_sigma]. A pure function of the episode index, so it needs no state.

    >>> c = AgentConfig(warmup_episodes=10)
    >>> exploration_sigma(c, 10, 100), round(exploration_sigma(c, 99, 100), 12)
    (0.5, 0.05)
    """
    after = max(0, episode - config.warmup_episodes)
    if config.noise_schedule == "budget":
        if episodes is None:
            raise ValueError("the budget noise schedule needs the search's episode count")
        if config.noise_sigma == 0:
            return 0.0
        span = max(1, episodes - 1 - config.warmup_episodes)
        sigma = config.noise_sigma * (config.noise_floor / config.noise_sigma) ** min(1, after / span)
    else:
        sigma = config.noise_sigma * config.noise_decay**after
    return min(config.noise_sigma, max(config.noise_floor, sigma))


def truncated_normal(mean: float, sigma: float, rng: np.random.Generator,
                     low: float = 0.0, high: float = 1.0) -> float:
    """One draw from N(mean, sigma) truncated to [low, high], by the inverse CDF.

    One uniform draw per sample (no rejection loop), so the Generator advances the same way
    whatever the mean. Accurate while ``mean`` lies in [low, high], as the actor's sigmoid does.
    """
    if sigma <= 0:
        return min(max(mean, low), high)
    cdf_low = _NORMAL.cdf((low - mean) / sigma)
    cdf_high = _NORMAL.cdf((high - mean) / sigma)
    p = cdf_low + rng.random() * (cdf_high - cdf_low)
    # inv_cdf needs 0 < p < 1; the clamp only matters in the far tails, where the clip below wins.
    p = min(max(p, sys.float_info.min), 1 - sys.float_info.epsilon)
    return min(max(mean + sigma * _NORMAL.inv_cdf(p), low), high)


# ---------------------------------------------------------------------------------------------
# Agents


class UpdateStats(NamedTuple):
    """Gradient steps summarised for the run log (means over the steps)."""

    critic_loss: float
    actor_loss: float
    q_mean: float


def _check_episode(observations: list[np.ndarray], actions: list[float]) -> None:
    if not actions or len(observations) != len(actions):
        raise ValueError(f"an episode needs one observation per action, got "
                         f"{len(observations)} observations and {len(actions)} actions")


class DDPGAgent:
    """AMC's agent: one continuous action (a pruning ratio in [0, 1]) per step of an episode.

    The search loop calls ``act`` for every unit, then ``observe_episode`` once with the
    observations, the actions actually applied, and the episode's reward. ``episodes`` is the
    search's length, which the budget noise schedule decays over. With batched rollouts
    (``--workers``) the loop plays several episodes with ``act`` before it observes them, in the
    same order: every draw still comes from the one generator in call order, so a seeded batched
    search repeats itself whichever worker finishes first.
    """

    def __init__(self, obs_dim: int, config: AgentConfig, device: torch.device = CPU,
                 episodes: int | None = None):
        if config.noise_schedule == "budget" and episodes is None:
            raise ValueError("the budget noise schedule needs the search's episode count")
        self.obs_dim, self.config, self.device, self.episodes = obs_dim, config, device, episodes
        self.rng = np.random.default_rng(config.seed)
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the global RNG
            torch.manual_seed(config.seed)
            self.actor = Actor(obs_dim, config.hidden).to(device)
            self.critic = Critic(obs_dim, config.hidden).to(device)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.replay = ReplayBuffer(config.replay_size, obs_dim)
        self.moving_average: float | None = None  # the reward baseline; None before any episode
        self.episodes_observed = 0
        self.updates_done = 0
        self.episode_update: UpdateStats | None = None  # the last episode's steps; None: none

    def noise_sigma(self, episode: int) -> float:
        """Exploration sigma in ``episode`` (``exploration_sigma``)."""
        return exploration_sigma(self.config, episode, self.episodes)

    def act(self, obs: np.ndarray, episode: int) -> float:
        """The pruning ratio to try: uniform during warm-up, else the actor's plus noise."""
        if episode < self.config.warmup_episodes:
            return float(self.rng.random())
        return truncated_normal(self.greedy(obs), self.noise_sigma(episode), self.rng)

    def greedy(self, obs: np.ndarray) -> float:
        """The actor's pruning ratio, without noise."""
        with torch.no_grad():
            return float(self.actor(self._tensor(obs)).item())

    def observe_episode(self, observations: list[np.ndarray], actions: list[float],
                        reward: float) -> None:
        """Store the episode's transitions, each with the baselined final reward, then learn.

        ``observations[t]`` is what ``act`` saw for ``actions[t]``; the last step is terminal, so
        its next observation is never used (a copy of its own is stored). Learning starts with the
        first episode after warm-up.
        """
        _check_episode(observations, actions)
        # The baseline is subtracted once per episode, before storing. (AMC's code instead subtracts
        # a moving average of minibatch means at every update; on the synthetic problem in
        # tests/unit/test_agent.py that learned worse for each of seeds 0-9.)
        baseline = reward if self.moving_average is None else self.moving_average
        self.moving_average = baseline + self.config.moving_average_alpha * (reward - baseline)
        steps = len(actions)
        for t in range(steps):
            done = t == steps - 1
            next_obs = observations[t] if done else observations[t + 1]
            self.replay.add(self._array(observations[t]), actions[t], reward - baseline,
                            self._array(next_obs), done)
        learning = self.episodes_observed >= self.config.warmup_episodes
        self.episodes_observed += 1
        self.episode_update = None
        if learning:
            updates = self.config.updates_per_episode
            done = [self._update() for _ in range(steps if updates is None else updates)]
            if done:
                self.episode_update = UpdateStats(*np.mean(np.array(done), axis=0).tolist())

    def episode_stats(self, observations: list[np.ndarray], episode: int) -> dict[str, Any]:
        """What the agent has learned, for the run log after ``observe_episode``: the mean critic
        loss, actor loss and Q of the episode's gradient steps (None in warm-up), the actor's
        noise-free ratios over the episode's observations (mean and spread across units) and the
        exploration sigma (None in warm-up, where actions are uniform)."""
        update = self.episode_update
        with torch.no_grad():
            actions = self.actor(torch.as_tensor(np.stack([self._array(o) for o in observations]),
                                                 device=self.device))
        return {
            "critic_loss": update.critic_loss if update else None,
            "actor_loss": update.actor_loss if update else None,
            "q_mean": update.q_mean if update else None,
            "actor_mean": actions.mean().item(), "actor_std": actions.std(correction=0).item(),
            "sigma": None if episode < self.config.warmup_episodes else self.noise_sigma(episode),
        }

    def _update(self) -> UpdateStats:
        """One gradient step of the critic, then the actor, then both soft target updates."""
        cfg = self.config
        batch = self.replay.sample(cfg.batch_size, self.rng, self.device)
        with torch.no_grad():
            next_q = self.critic_target(batch.next_obs, self.actor_target(batch.next_obs))
            target_q = batch.rewards + cfg.discount * (1 - batch.dones) * next_q
        q = self.critic(batch.obs, batch.actions)
        critic_loss = F.mse_loss(q, target_q)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()

        actor_loss = -self.critic(batch.obs, self.actor(batch.obs)).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()

        soft_update(self.actor_target, self.actor, cfg.tau)
        soft_update(self.critic_target, self.critic, cfg.tau)
        self.updates_done += 1
        return UpdateStats(critic_loss.item(), actor_loss.item(), q.mean().item())

    def _array(self, obs: np.ndarray) -> np.ndarray:
        array = np.asarray(obs, dtype=np.float32)
        if array.shape != (self.obs_dim,):
            raise ValueError(f"observation has shape {array.shape}, expected ({self.obs_dim},)")
        return array

    def _tensor(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self._array(obs), device=self.device).unsqueeze(0)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (a deep copy, safe to keep or torch.save).

        The exploration sigma is not stored: it is a function of the episode index (and of the
        search's length, which the constructor is given again on resume). No torch RNG
        is used after initialisation, so none is stored either.
        """
        return copy.deepcopy({
            "kind": "ddpg",
            "obs_dim": self.obs_dim,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "moving_average": self.moving_average,
            "episodes_observed": self.episodes_observed,
            "updates_done": self.updates_done,
            "rng": self.rng.bit_generator.state,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "ddpg", self.obs_dim)
        for name in ("actor", "critic", "actor_target", "critic_target",
                     "actor_optimizer", "critic_optimizer", "replay"):
            getattr(self, name).load_state_dict(state[name])
        self.moving_average = state["moving_average"]
        self.episodes_observed = int(state["episodes_observed"])
        self.updates_done = int(state["updates_done"])
        self.rng.bit_generator.state = state["rng"]


class RandomAgent:
    """The baseline (``--agent random``): uniform pruning ratios, learns nothing."""

    def __init__(self, obs_dim: int, config: AgentConfig, device: torch.device = CPU,
                 episodes: int | None = None):
        self.obs_dim, self.config, self.device = obs_dim, config, device
        self.rng = np.random.default_rng(config.seed)
        self.episodes_observed = 0

    def act(self, obs: np.ndarray, episode: int) -> float:
        return float(self.rng.random())

    def greedy(self, obs: np.ndarray) -> float:
        """Also uniform: there is no learned policy (the search keeps its best episode instead)."""
        return float(self.rng.random())

    def observe_episode(self, observations: list[np.ndarray], actions: list[float],
                        reward: float) -> None:
        _check_episode(observations, actions)
        self.episodes_observed += 1

    def episode_stats(self, observations: list[np.ndarray], episode: int) -> dict[str, Any]:
        return {}  # nothing is learned

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({"kind": "random", "obs_dim": self.obs_dim,
                              "episodes_observed": self.episodes_observed,
                              "rng": self.rng.bit_generator.state})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "random", self.obs_dim)
        self.episodes_observed = int(state["episodes_observed"])
        self.rng.bit_generator.state = state["rng"]


def _check_state(state: dict[str, Any], kind: str, obs_dim: int) -> None:
    if state.get("kind") != kind or state.get("obs_dim") != obs_dim:
        raise ValueError(f"cannot load a {state.get('kind')} agent with obs_dim "
                         f"{state.get('obs_dim')} into a {kind} agent with obs_dim {obs_dim}")


AGENTS: dict[str, type[DDPGAgent] | type[RandomAgent]] = {"ddpg": DDPGAgent, "random": RandomAgent}


def make_agent(kind: str, obs_dim: int, config: AgentConfig, device: torch.device = CPU,
               episodes: int | None = None) -> DDPGAgent | RandomAgent:
    """The agent named ``kind`` ("ddpg" or "random") for a search of ``episodes``."""
    if kind not in AGENTS:
        raise UserError(f"unknown agent '{kind}'; choose one of: {', '.join(AGENTS)}")
    if config.warmup_episodes is None or config.seed is None:
        raise ValueError("an agent needs resolved settings: AgentConfig.resolved(episodes, seed)")
    return AGENTS[kind](obs_dim, config, device, episodes)
