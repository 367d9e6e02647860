"""The pruning environment: one step per prunable unit, AMC's layer embedding as the observation.

Description:
    The agent visits the network's prunable units (torch-pruning's coupled channel groups) in graph
    order and chooses, for each, the fraction of its channels to remove. Before a choice takes
    effect, the action wall (`compressor.budgets.wall`) raises it to the least pruning that keeps every
    budget reachable, so every finished episode meets every budget by construction. After the last
    unit, the injected evaluator prunes, recovers and scores the network.

Action Space:
    Box(0, 1, (1,), float32), mapped linearly to a pruning ratio in [0, max_ratio]. Ratios near 1
    are silently skipped by torch-pruning, hence the cap (default 0.8, as in AMC's code).

    With `precision_budgets` (`--quantize searched`, HAQ-style) each unit takes a second step
    after its ratio: the unit's precision, INT8 for actions >= 0.5, else FP32. The precision wall
    flips a choice that would leave the budget out of reach even with every later unit at the
    maximum ratio in its cheapest precision; the other choice always reaches it (the invariant
    below, with the undecided units in their cheapest precisions).

Observation Space:
    Box(0, 1, (11,), float32): unit index, kind (`KINDS`), output channels (heads, MLP width, 1
    for a block), input channels (the residual width for a transformer unit), kernel, stride,
    MACs and params the unit controls, MACs already removed by earlier choices, MACs of the units
    still to come, and the previous action. Static features are divided by their maximum over the
    units (AMC scales every feature to [0, 1] over the episode's layers); the MACs features by the
    dense network's total. With `extra_features` (one row of k values in [0, 1] per unit, e.g.
    `search.sensitivity`'s score drops) it is Box(0, 1, (11 + k,)): the k columns follow the static
    ones, so the last three are always reduced, rest and the previous action. With
    `precision_budgets` one more column before those three is 1 on precision steps, 0 on ratio
    steps; the previous action is the last pruning ratio either way.

Rewards:
    0 on every step but the last; then `reward_fn(evaluation)` (default AMC's -error on the search
    split). The agent copies the final reward to every step of the episode, as AMC does. Without
    an evaluator (`evaluate=None`, proposal mode) the last reward is 0 too and the caller
    evaluates `info["policy"]` itself: the search loop scores episodes a batch at a time.

Episode End:
    Terminated after the last unit. Never truncated.

Arguments:
    units: the `compressor.pruning.Unit`s in order; cost: `macs(ratios)` as a fraction of dense (the
    "reduced" feature); budgets: `compressor.budgets.wall.Budget`s enforced by the wall; evaluate: a
    callable from a policy `{unit name: pruning_ratio}` to an `Evaluation`, or None (proposal
    mode, see Rewards); max_ratio; reward;
    extra_features: an array (units, k) appended to each unit's static features, or None;
    precision_budgets: the decided precisions `{unit name: INT8?}` -> the budgets pricing them
    (the undecided units in their cheapest precisions), or None: precisions are not searched.
    With it the policy also holds `pruning.precision_key(unit)`: 1.0 (INT8) or 0.0 (FP32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from compressor.budgets import wall as walls
from compressor.pruning.skeleton import precision_key

KINDS = ("conv", "linear", "depthwise", "residual", "heads", "mlp", "block")
"""Unit kinds in the order of the observation's kind feature (CNN units, then transformer units:
attention heads, MLP width, a whole block)."""
OBS_DIM = 11


class Evaluation(NamedTuple):
    """What the injected evaluator says of one pruned network."""

    top1: float  # the search score: top-1 (%) on the search split, a user's `evaluate`, or a
    # causal LM's minus validation cross-entropy (`pipeline.text`)
    flops_ratio: float  # MACs of the pruned network / dense MACs
    metrics: dict[str, Any]  # anything else worth logging (latency, timings, cache hit)


def reward_error(evaluation: Evaluation) -> float:
    """AMC's R_err: minus the error rate (the wall already enforces the budget).

    A network whose measured latency broke the budget (`--latency-source probe`) scores -1.
    """
    if evaluation.metrics.get("over_budget"):
        return -1.0
    return -(100.0 - evaluation.top1) / 100.0


def reward_error_log_flops(evaluation: Evaluation) -> float:
    """AMC's R_FLOPs: -error * log(FLOPs), for searches without a hard budget."""
    return -(100.0 - evaluation.top1) / 100.0 * math.log(max(evaluation.flops_ratio, 1e-9) * 1e9)


LM_OVER_BUDGET = -10.0
"""A causal LM's reward when its measured latency broke the budget: worse than a uniform guess
over 22,000 tokens (ln 22026 = 10 nats)."""


def reward_cross_entropy(evaluation: Evaluation) -> float:
    """A causal LM's reward: minus the held-out next-token cross-entropy (nats per token), which
    is its search score (`pipeline.text.TextTask.score`); the wall enforces the budget."""
    if evaluation.metrics.get("over_budget"):
        return LM_OVER_BUDGET
    return evaluation.top1


REWARDS: dict[str, Callable[[Evaluation], float]] = {
    "error": reward_error,
    "error-log-flops": reward_error_log_flops,
    "cross-entropy": reward_cross_entropy,
}


def unit_features(units: Sequence[Any]) -> np.ndarray:
    """The static part of AMC's embedding, one row per unit, each column scaled to [0, 1]."""
    rows = np.array([
        [u.index, KINDS.index(u.kind) if u.kind in KINDS else 0, u.channels, u.in_channels,
         u.kernel, u.stride, u.macs, u.params]
        for u in units
    ], dtype=np.float64)
    scale = rows.max(axis=0)
    scale[1] = len(KINDS) - 1
    scale[scale == 0] = 1.0
    return rows / scale


class PruningEnv(gym.Env):
    """See the module docstring (Pendulum's layout: description, spaces, rewards, episode end)."""

    metadata = {"render_modes": []}

    def __init__(self, units: Sequence[Any], macs_ratio: Callable[[Sequence[float]], float],
                 budgets: Sequence[walls.Budget],
                 evaluate: Callable[[dict[str, float]], Evaluation] | None,
                 max_ratio: float = 0.8, reward: str = "error",
                 extra_features: np.ndarray | None = None,
                 precision_budgets: Callable[[dict[str, bool]], Sequence[walls.Budget]] | None
                 = None):
        super().__init__()
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose from {sorted(REWARDS)}")
        self.units = list(units)
        self.names = [u.name for u in self.units]
        self.macs_ratio = macs_ratio
        self.budgets = list(budgets)
        self.evaluate = evaluate
        self.max_ratio = max_ratio
        self.reward_fn = REWARDS[reward]
        walls.check_feasible(self.budgets, len(self.units), max_ratio)
        extra = np.zeros((len(self.units), 0)) if extra_features is None else \
            np.asarray(extra_features, dtype=np.float64)
        if extra.ndim != 2 or len(extra) != len(self.units):
            raise ValueError(f"extra_features needs one row per unit ({len(self.units)}), got "
                             f"shape {extra.shape}")
        self.precision_budgets = precision_budgets
        self.static = np.hstack([unit_features(self.units), extra])
        if precision_budgets is not None:  # the step flag's column, set on precision steps
            self.static = np.hstack([self.static, np.zeros((len(self.units), 1))])
        total = sum(u.macs for u in self.units) or 1
        # MACs of the units after t, as a fraction of all units' MACs ("rest" in AMC).
        self.rest = np.array([sum(u.macs for u in self.units[t + 1:]) / total
                              for t in range(len(self.units))])
        # The static columns, then reduced, rest and the previous action.
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.static.shape[1] + 3,), np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.ratios: list[float] = []
        self.precisions: list[bool] = []  # INT8 per unit decided (`precision_budgets`)

    @property
    def unit(self) -> int:
        """Index of the unit the next step decides for."""
        return len(self.precisions) if self.deciding_precision else len(self.ratios)

    @property
    def deciding_precision(self) -> bool:
        """Whether the next step chooses the current unit's precision (else its ratio)."""
        return self.precision_budgets is not None and len(self.precisions) < len(self.ratios)

    def _observation(self) -> np.ndarray:
        t = self.unit
        reduced = 1.0 - self.macs_ratio(self.ratios + [0.0] * (len(self.units) - len(self.ratios)))
        previous = self.ratios[-1] / self.max_ratio if self.ratios else 0.0
        static = self.static[t].copy()
        if self.deciding_precision:
            static[-1] = 1.0
        obs = np.concatenate([static, [reduced, self.rest[t], previous]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.ratios, self.precisions = [], []
        return self._observation(), {}

    def _decided(self, precisions: Sequence[bool]) -> Sequence[walls.Budget]:
        """The budgets with these units' precisions (all budgets' when precisions are fixed)."""
        if self.precision_budgets is None:
            return self.budgets
        return self.precision_budgets(dict(zip(self.names[:len(precisions)], precisions, strict=True)))

    def wall(self) -> float:
        """The least pruning ratio the current unit may take (0 when the budget is loose)."""
        return walls.wall(self.ratios, self._decided(self.precisions), len(self.units),
                          self.max_ratio)

    def _decide_precision(self, wanted: float) -> dict[str, Any]:
        """The current unit's precision: the agent's, unless it leaves the budget out of reach
        (then the other, which reaches it by the invariant). Applied as the agent's action, or
        mirrored to the other side of 0.5 when flipped."""
        int8 = wanted >= 0.5
        rest = [self.max_ratio] * (len(self.units) - len(self.ratios))
        if not walls.meets(self.ratios + rest, self._decided(self.precisions + [int8])):
            int8 = not int8
        self.precisions.append(int8)
        return {"int8": int8, "applied_action": wanted if int8 == (wanted >= 0.5) else 1 - wanted}

    def step(self, action):
        wanted = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        if self.deciding_precision:
            info = self._decide_precision(wanted)
            if len(self.precisions) < len(self.units):
                return self._observation(), 0.0, False, False, info
            return self._finish(info)
        ratio = walls.clip_action(self.ratios, wanted * self.max_ratio,
                                  self._decided(self.precisions), len(self.units), self.max_ratio)
        self.ratios.append(ratio)
        info: dict[str, Any] = {"ratio": ratio, "applied_action": ratio / self.max_ratio}
        if len(self.ratios) < len(self.units) or self.precision_budgets is not None:
            return self._observation(), 0.0, False, False, info
        return self._finish(info)

    def _finish(self, info: dict[str, Any]):
        """The last step's result: the policy, evaluated unless in proposal mode."""
        ratio = self.ratios[-1]
        policy = dict(zip(self.names, self.ratios, strict=True))
        if self.precision_budgets is not None:
            policy.update({precision_key(name): float(int8)
                           for name, int8 in zip(self.names, self.precisions, strict=True)})
        info["policy"] = policy
        reward = 0.0
        if self.evaluate is not None:
            info["evaluation"] = self.evaluate(policy)
            reward = float(self.reward_fn(info["evaluation"]))
        # The terminal observation is never used by the agent (done=1); repeat the last unit's.
        last = np.concatenate([self.static[-1], [1.0 - self.macs_ratio(self.ratios), 0.0,
                                                 ratio / self.max_ratio]])
        return np.clip(last, 0, 1).astype(np.float32), reward, True, False, info
