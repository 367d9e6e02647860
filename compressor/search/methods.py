"""Every search method behind one interface: something that proposes policies for a budget.

    method = get_method("greedy")
    outcome = method.search(context)   # SearchOutcome(candidates best first, evaluations, seconds)

All methods go through the same final stage (`compressor.pipeline.final`), so only the policy they
propose differs. `ddpg` is the AMC agent, `random` the same loop with uniform random actions,
`greedy` sensitivity-greedy (AIMET's greedy ratio selection, ModelOpt FastNAS), `uniform` one shared
ratio, `global` torch-pruning's global importance ranking.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from compressor import pruning
from compressor.budgets.wall import Budget
from compressor.errors import UserError
from compressor.pruning.policies import policy_vector
from compressor.search import sensitivity
from compressor.search.agent import AgentConfig
from compressor.search.env import Evaluation, PruningEnv, reward_error
from compressor.search.loop import Candidate, Demonstration, LoopConfig, Prepass, one_by_one, run_search

log = logging.getLogger(__name__)


def budget_cost(skeleton: pruning.Skeleton, budgets: Sequence[Budget],
                policy: dict[str, float]) -> float:
    """max over budgets of cost / limit: <= 1 meets every budget.

    One number a method can bisect on, whatever budgets (latency, FLOPs, params) were given.
    """
    vector = policy_vector(skeleton, policy)
    return max(b.cost(vector) / b.limit for b in budgets)


@dataclass
class SearchContext:
    """What a search method may use: the units, the evaluator, the budgets, where to write."""

    skeleton: pruning.Skeleton
    """The model's units and the cost tables that predict any policy's shapes."""
    evaluate: Callable
    """The episode evaluator: policy -> Evaluation, with `.calls` (a counter of calls) and
    `.key(policy)` (the rounded channel configuration a cache hit is decided by)."""
    budgets: Sequence[Budget]
    """The wall's budgets over ratio vectors (`budgets.wall.Budget`), margins already applied."""
    make_env: Callable[..., PruningEnv]
    """A fresh pruning environment over the same units, budgets and evaluator; its optional
    argument is the env's `extra_features` (one row per unit, appended to its state)."""
    max_ratio: float
    """No unit is pruned by more than this ratio."""
    dense: nn.Module
    """The dense model (never modified: methods prune copies)."""
    example_input: torch.Tensor
    """One input (batch 1) shaped as the model takes it."""
    pruning_config: pruning.PruningConfig
    """Rounding and channel importance, as every pruned network of the run uses them."""
    seed: int
    """The run's seed."""
    episodes: int
    """Episodes of the agent methods (ddpg, random); the others ignore it."""
    loop: LoopConfig
    """The episode loop's settings (checkpoints, candidates kept); its `agent` is set per method."""
    agent: AgentConfig
    """DDPG settings (the random agent uses its seed and episode count only)."""
    run_dir: Path | None
    """Where the episode log and checkpoint go; None: a temporary directory, removed afterwards
    (nothing is written; such a search cannot be resumed)."""
    config_dict: dict
    """What the episode loop writes as config.json; a resume must match its "search" part."""
    resume: bool = False
    """Continue the search saved in `run_dir` (agent methods; the others just run again)."""
    progress: bool = True
    """A progress bar for the episode loop."""
    calibration_batches: Sequence | None = None
    """(images, labels) batches for criteria that read gradients (taylor), as the evaluator's
    pruning uses them; None: such a criterion is a UserError in `global`."""
    tensorboard: str | None = None
    """A directory for the agent methods' per-episode TensorBoard scalars; None: none."""
    pool: Any = None
    """Ray workers that score a batch of policies in parallel for `evaluate`
    (`search.distributed.EvaluatorPool`, with `.workers` and `.map(policies)`); None: every
    policy in-process, one after another."""

    def budget_cost(self, policy: dict[str, float]) -> float:
        """max over budgets of cost / limit: <= 1 meets every budget."""
        return budget_cost(self.skeleton, self.budgets, policy)

    @property
    def batch(self) -> int:
        """Episodes the agent methods propose before any is evaluated: one per worker."""
        return 1 if self.pool is None else self.pool.workers

    def evaluate_all(self, policies: list[dict[str, float]]) -> list[Evaluation]:
        """`evaluate` of every policy, in order; on the pool's workers when there is one (the
        same evaluations, cache hits and call count as one call after another)."""
        return (one_by_one(self.evaluate) if self.pool is None else self.pool.map)(policies)


@dataclass
class SearchOutcome:
    """What a method proposes, and what it cost to find."""

    candidates: list[Candidate]
    """Distinct policies, best first (by the search's reward, AMC's -error)."""
    evaluations: int
    """Evaluator calls the search made: every policy it asked about, cache hits included (each is
    a question the method asked; the evaluator's cache decides what it cost). A resumed agent
    search counts the calls made before the interruption too."""
    seconds: float
    """Wall time of the search."""


class SearchMethod(Protocol):
    """Something that proposes policies for a budget. Register new ones in `METHODS`."""

    name: str

    def search(self, ctx: SearchContext) -> SearchOutcome: ...


def _single(ctx: SearchContext, policy: dict[str, float], started: float, calls: int
            ) -> SearchOutcome:
    """A deterministic method's one policy, evaluated once so the final stage can rank it."""
    (evaluation,) = ctx.evaluate_all([policy])
    candidate = Candidate(0, reward_error(evaluation), evaluation.top1, policy,
                          {k: v for k, v in evaluation.metrics.items() if k != "seconds"})
    return SearchOutcome([candidate], ctx.evaluate.calls - calls, time.time() - started)


@dataclass(frozen=True)
class AgentSearch:
    """The episode loop (`search.loop.run_search`) with the DDPG or the random agent."""

    name: str
    """The method's name in `METHODS`."""
    agent_kind: str
    """`search.agent.make_agent`'s kind: ddpg or random."""

    def search(self, ctx: SearchContext) -> SearchOutcome:
        if ctx.run_dir is None and ctx.resume:
            raise UserError("resuming a search needs its run directory; pass the --out of the "
                            "interrupted run")
        started, calls = time.time(), ctx.evaluate.calls
        loop = replace(ctx.loop, episodes=ctx.episodes, agent=self.agent_kind)
        # The random agent is the baseline: uniform draws from the first episode to the last.
        prepare = (lambda: agent_prepass(ctx)) if self.agent_kind == "ddpg" else None
        with _run_directory(ctx.run_dir) as run_dir:
            best = run_search(ctx.make_env, ctx.evaluate, loop, ctx.agent, run_dir,
                              ctx.config_dict, resume=ctx.resume, progress=ctx.progress,
                              prepare=prepare, tensorboard=ctx.tensorboard,
                              evaluate_all=ctx.evaluate_all, batch=ctx.batch)
        return SearchOutcome(best, ctx.evaluate.calls - calls, time.time() - started)


def agent_prepass(ctx: SearchContext) -> Prepass:
    """What the DDPG agent gets before its first episode (`AgentConfig.sensitivity`,
    `warm_start`): greedy's per-unit measurement, made once, as state features and as the greedy
    demonstration, played after the uniform one. Its evaluations count in `ctx.episodes`."""
    cfg = ctx.agent
    if not (cfg.sensitivity or cfg.warm_start):
        return Prepass()
    names = ctx.skeleton.names
    needed = sensitivity.evaluations_needed(len(names), cfg.sensitivity_ratios)
    if needed + 2 * cfg.warm_start >= ctx.episodes:  # refused before anything is spent
        raise UserError(f"the agent's sensitivity measurement takes {needed} evaluations (1 + "
                        f"{len(names)} units x {len(cfg.sensitivity_ratios)} ratios)"
                        f"{' and the warm start 2 episodes' if cfg.warm_start else ''} of the "
                        f"{ctx.episodes} episodes, leaving none to the agent; raise --episodes or "
                        "give fewer sensitivity_ratios")
    measured = sensitivity.measure(ctx.evaluate_all, names, cfg.sensitivity_ratios)
    demonstrations = []
    if cfg.warm_start:
        try:
            uniform, _ = pruning.uniform_policy_for_budget(ctx.skeleton, ctx.budget_cost, 1.0,
                                                           ctx.max_ratio)
            demonstrations.append(Demonstration("uniform", uniform))
        except UserError as exc:  # a transformer's budget only removing blocks reaches
            log.info("warm start without the uniform demonstration: %s", exc)
        try:
            demonstrations.append(Demonstration("greedy", sensitivity.greedy_policy(
                measured, ctx.budget_cost, ctx.max_ratio)))
        except UserError as exc:  # its grid cannot meet the budget: warm start from uniform only
            log.info("warm start without the greedy demonstration: %s", exc)
    features = measured.features(names).tolist() if cfg.sensitivity else None
    return Prepass(features, demonstrations, measured.evaluations,
                   {"sensitivity": asdict(measured)})


@contextlib.contextmanager
def _run_directory(run_dir: Path | None) -> Iterator[Path]:
    """`run_dir` itself, or a scratch directory that is removed afterwards (the loop needs one
    for its log and checkpoints; with no output directory nothing may be left behind)."""
    if run_dir is not None:
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix="compressor-search-") as scratch:
        yield Path(scratch)


@dataclass(frozen=True)
class UniformSearch:
    """One shared pruning ratio for every unit, the least that meets every budget."""

    name: str = "uniform"

    def search(self, ctx: SearchContext) -> SearchOutcome:
        started, calls = time.time(), ctx.evaluate.calls
        policy, _ = pruning.uniform_policy_for_budget(ctx.skeleton, ctx.budget_cost, 1.0,
                                                      ctx.max_ratio)
        return _single(ctx, policy, started, calls)


@dataclass(frozen=True)
class GlobalRankingSearch:
    """torch-pruning's global ranking: the least important channels of the whole network go
    first (by `pruning_config.importance`), the removed fraction bisected to the budget."""

    name: str = "global"

    def search(self, ctx: SearchContext) -> SearchOutcome:
        started, calls = time.time(), ctx.evaluate.calls
        policy = pruning.global_ranking_policy(ctx.dense, ctx.example_input, ctx.pruning_config,
                                               ctx.budget_cost, 1.0, ctx.max_ratio,
                                               calibration_batches=ctx.calibration_batches)
        return _single(ctx, policy, started, calls)


@dataclass(frozen=True)
class GreedySearch:
    """Sensitivity greedy: each unit's search score alone at a few ratios, then one score-drop
    level bisected until the budget is met (AIMET's greedy ratio selection, FastNAS)."""

    name: str = "greedy"
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    """The pruning ratios each unit is scored at alone (0 is the dense score), below the search's
    maximum ratio, which `grid` adds as the top."""

    def grid(self, max_ratio: float) -> tuple[float, ...]:
        """The ratios measured: `ratios` below `max_ratio`, then `max_ratio` itself, so greedy
        reaches every budget the search can (0.75 could not reach mobilenet_v2 at 0.2)."""
        return (*(r for r in self.ratios if r < max_ratio), max_ratio)

    def search(self, ctx: SearchContext) -> SearchOutcome:
        started, calls = time.time(), ctx.evaluate.calls
        measured = sensitivity.measure(ctx.evaluate_all, ctx.skeleton.names,
                                       self.grid(ctx.max_ratio))
        policy = sensitivity.greedy_policy(measured, ctx.budget_cost, ctx.max_ratio)
        return _single(ctx, policy, started, calls)


METHODS: dict[str, SearchMethod] = {m.name: m for m in (
    AgentSearch("ddpg", "ddpg"), AgentSearch("random", "random"), GreedySearch(), UniformSearch(),
    GlobalRankingSearch())}


def get_method(name: str) -> SearchMethod:
    """The registered method called `name`; a UserError listing the valid names otherwise."""
    if name not in METHODS:
        raise UserError(f"unknown search method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
