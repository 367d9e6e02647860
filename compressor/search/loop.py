"""The search loop: episodes of the agent in the pruning environment, logged, checkpointed, resumable.

A run directory holds the resolved config (`config.json`), one JSON line per episode
(`episodes.jsonl`: the policy, its evaluation, and what the agent learned) and an atomic checkpoint
(`checkpoint.pt`: agent with its RNG and replay buffer, the evaluation cache, the best policies, the
prepass). `--resume RUN_DIR` reloads the checkpoint, drops log lines written after it, and replays
from there: the evaluator is deterministic and every random draw comes from the agent's saved
generator, so a resumed run ends where an uninterrupted one would.

Episodes run in batches (one episode per batch in-process; one per Ray worker with `--workers`):
the current agent proposes every episode of a batch (walking the env with its own draws, so the
proposals do not depend on which worker finishes first), the batch is evaluated together, then
its episodes are stored and learned from in order. Checkpoints fall on batch boundaries.

Before the first episode an optional prepass measures what the agent may know up front (each unit's
sensitivity, as extra state features) and the demonstrations to play as the first episodes (warm
start); it runs once per search, is checkpointed at once, and its evaluations count in the episodes.
With a TensorBoard directory the log's numbers are also written as scalars.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import numpy as np
import torch

from compressor.errors import UserError
from compressor.flags import HIDDEN, flag
from compressor.io import atomic
from compressor.pruning.skeleton import precision_key
from compressor.search.agent import AgentConfig, make_agent
from compressor.search.env import Evaluation, PruningEnv

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
EPISODES = "episodes.jsonl"
CONFIG = "config.json"


@dataclass(frozen=True)
class LoopConfig:
    """How long the search runs and how it is saved."""

    episodes: Annotated[int, flag("--episodes")] = 200
    """Episodes of the agent (each prunes, recovers and scores one network)."""
    agent: Annotated[str, HIDDEN] = "ddpg"
    """`ddpg` (AMC) or `random` (the same loop with uniform random actions: a baseline); the
    search method sets it (`--method`)."""
    checkpoint_every: Annotated[int, flag("--checkpoint-every")] = 5
    """Episodes between atomic checkpoints of the whole search state."""
    keep_best: int = 5
    """Distinct best policies (by reward) kept for the final stage."""


@dataclass
class Candidate:
    """One policy worth keeping, with what the search measured of it."""

    episode: int
    reward: float
    top1: float
    policy: dict[str, float]
    metrics: dict[str, Any] = field(default_factory=dict)


class Demonstration(NamedTuple):
    """A policy played as an episode before the agent acts (warm start), e.g. uniform or greedy."""

    name: str
    policy: dict[str, float]


@dataclass
class Prepass:
    """What a search measures once, before its first episode."""

    extra_features: list[list[float]] | None = None
    """One row per unit appended to its state (the env's `extra_features`), or None."""
    demonstrations: list[Demonstration] = field(default_factory=list)
    """Policies played as the first episodes (each one evaluation, logged like any episode)."""
    evaluations: int = 0
    """Evaluator calls the prepass made; they count in the search's episodes."""
    record: dict = field(default_factory=dict)
    """What it measured, for the checkpoint's reader (e.g. the sensitivity drops)."""


@dataclass
class SearchState:
    """Everything a checkpoint holds besides the agent."""

    next_episode: int = 0
    best: list[Candidate] = field(default_factory=list)
    evaluator_calls: int = 0
    cache: dict = field(default_factory=dict)
    prepass: Prepass | None = None
    """None until the prepass has run."""


def _remember(best: list[Candidate], candidate: Candidate, key, keep: int, keys: dict) -> None:
    """Keep the `keep` best distinct networks (distinct rounded channel configurations)."""
    if key in keys.values():
        return
    best.append(candidate)
    keys[id(candidate)] = key
    best.sort(key=lambda c: (-c.reward, c.episode))
    for dropped in best[keep:]:
        keys.pop(id(dropped), None)
    del best[keep:]


def save_checkpoint(run_dir: Path, state: SearchState, agent_state: dict | None) -> None:
    """The whole search state; `agent_state` None: the agent has not acted yet (after the prepass)."""
    prepass = None if state.prepass is None else {
        **asdict(state.prepass), "demonstrations": [list(d) for d in state.prepass.demonstrations]}
    atomic.torch_save(run_dir / CHECKPOINT, {
        "format": "compressor-search-v2", "state": {
            "next_episode": state.next_episode, "best": [asdict(c) for c in state.best],
            "evaluator_calls": state.evaluator_calls, "cache": state.cache, "prepass": prepass},
        "agent": agent_state,
    })


def load_checkpoint(run_dir: Path, config_dict: dict) -> tuple[SearchState | None, dict | None]:
    """The saved search state and agent state, (None, None) before the first checkpoint; refuses a
    run directory made with another configuration."""
    saved_config = run_dir / CONFIG
    if not saved_config.exists():
        raise UserError(f"{run_dir} is not a search run directory (no {CONFIG}); pass the --out "
                        "directory of an earlier `compressor compress`")
    saved = json.loads(saved_config.read_text())
    # Compare as JSON sees them (tuples become lists on disk).
    config_dict = json.loads(json.dumps(config_dict, default=str))
    if saved.get("search") != config_dict.get("search"):
        diff = sorted(k for k in set(saved.get("search", {})) | set(config_dict["search"])
                      if saved.get("search", {}).get(k) != config_dict["search"].get(k))
        raise UserError(f"{run_dir} was searched with a different configuration "
                        f"({', '.join(diff)[:200]}); resume with the same options or use a new --out")
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None, None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is corrupt ({type(exc).__name__}); delete the run "
                        "directory to start again") from None
    if blob.get("format") != "compressor-search-v2":
        raise UserError(f"checkpoint {path} was written by an older compressor "
                        f"({blob.get('format')}); delete the run directory to start again")
    raw = blob["state"]
    prepass = raw["prepass"] and Prepass(**{
        **raw["prepass"], "demonstrations": [Demonstration(*d) for d in
                                              raw["prepass"]["demonstrations"]]})
    return SearchState(raw["next_episode"], [Candidate(**c) for c in raw["best"]],
                       raw["evaluator_calls"], raw["cache"], prepass), blob["agent"]


def _truncate_log(path: Path, episodes: int) -> None:
    """Keep the first `episodes` lines: episodes after the checkpoint are replayed."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()[:episodes]
    atomic.write_text(path, "".join(line + "\n" for line in lines))


def summary_writer_class():
    """TensorBoard's SummaryWriter, imported only when asked for (an optional dependency)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: "
                        "pip install 'compressor[tensorboard]'") from None
    return SummaryWriter


class Rollout(NamedTuple):
    """One episode as proposed, before its policy is evaluated."""

    observations: list[np.ndarray]
    actions: list[float]
    """The actions applied (after the budget wall), one per step: per unit, or two per unit
    (ratio, precision) when precisions are searched."""
    wanted: list[float]
    """The actions the agent (or the demonstration) chose."""
    policy: dict[str, float]


def propose(env: PruningEnv, agent, episode: int, demo: Demonstration | None) -> Rollout:
    """Walk the env's units with the agent's actions (or the demonstration's), evaluating nothing
    (the env is in proposal mode)."""
    obs, _ = env.reset(seed=None)
    observations, actions, wanted = [obs], [], []
    while True:
        action = agent.act(obs, episode) if demo is None else _demonstrated(env, demo.policy)
        # float64, not the space's float32: a demonstration sits on the budget's edge,
        # where float32 rounding of its ratio would let the wall raise it.
        obs, _, terminated, _, info = env.step(np.array([action]))
        wanted.append(action)
        actions.append(info["applied_action"])
        if terminated:
            return Rollout(observations, actions, wanted, info["policy"])
        observations.append(obs)


def _demonstrated(env: PruningEnv, policy: dict[str, float]) -> float:
    """The demonstration's action for the env's next step: its ratio for the unit, or on a
    precision step its precision for it (INT8 if it has none: the wall flips it when needed)."""
    name = env.names[env.unit]
    if env.deciding_precision:
        return policy.get(precision_key(name), 1.0)
    return policy.get(name, 0.0) / env.max_ratio


def one_by_one(evaluator: Callable[[dict[str, float]], Evaluation]
               ) -> Callable[[list[dict[str, float]]], list[Evaluation]]:
    """A batch evaluated in-process, policy after policy (what `--workers 1` does)."""
    def evaluate_all(policies: list[dict[str, float]]) -> list[Evaluation]:
        return [evaluator(p) for p in policies]
    return evaluate_all


def run_search(make_env: Callable[[np.ndarray | None], PruningEnv], evaluator, loop: LoopConfig,
               agent_config: AgentConfig, run_dir: Path, config_dict: dict, resume: bool = False,
               progress: bool = True, prepare: Callable[[], Prepass] | None = None,
               tensorboard: str | Path | None = None,
               evaluate_all: Callable[[list[dict[str, float]]], list[Evaluation]] | None = None,
               batch: int = 1) -> list[Candidate]:
    """Run (or continue) the episodes; returns the best distinct policies, best first.

    `make_env(extra_features)` builds the environment once the prepass is known; `prepare()` is
    the prepass (None: nothing measured, no demonstrations). `loop.episodes` is the evaluation
    budget: the prepass's evaluations are taken from it. `tensorboard`: a directory for scalars.
    `batch` episodes are proposed before they are evaluated, by `evaluate_all(policies)` (in
    order; default: `evaluator` on each in turn, e.g. a `search.distributed.EvaluatorPool.map`).
    A resumed search needs the same `batch`.
    """
    from tqdm.auto import tqdm

    writer_class = summary_writer_class() if tensorboard is not None else None  # fail fast
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / EPISODES
    state, agent_state = _open_run(run_dir, config_dict, resume, evaluator)
    pre = _prepass(state, prepare, evaluator, run_dir)
    episodes = loop.episodes - pre.evaluations
    if episodes < 1:
        raise UserError(f"the search's prepass took {pre.evaluations} of its {loop.episodes} "
                        "episodes; raise --episodes")
    features = None if pre.extra_features is None else np.array(pre.extra_features)
    env = make_env(features)
    env.evaluate = None  # proposal mode: episodes are evaluated a batch at a time, below
    evaluate_all = evaluate_all or one_by_one(evaluator)
    agent = make_agent(loop.agent, env.observation_space.shape[0], agent_config,
                       torch.device("cpu"), episodes=episodes)
    if agent_state is not None:
        agent.load_state_dict(agent_state)
    keys = {id(c): evaluator.key(c.policy) for c in state.best}

    # The agent as it was after the last finished batch: what Ctrl-C saves, so that a resumed
    # run never sees the random draws of a half-played batch.
    finished_agent = copy.deepcopy(agent.state_dict())
    # On resume, TensorBoard drops the scalars of the episodes that are replayed.
    writer = writer_class(str(tensorboard), purge_step=state.next_episode or None) \
        if writer_class else None
    bar = tqdm(total=episodes, initial=state.next_episode, unit="ep", desc="search",
               disable=not progress, dynamic_ncols=True)
    started = time.time()
    try:
        while state.next_episode < episodes:
            numbers = range(state.next_episode, min(state.next_episode + batch, episodes))
            demos = [pre.demonstrations[n] if n < len(pre.demonstrations) else None
                     for n in numbers]
            rollouts = [propose(env, agent, n, demo) for n, demo in zip(numbers, demos,
                                                                         strict=True)]
            evaluations = evaluate_all([r.policy for r in rollouts])
            for episode, demo, rollout, evaluation in zip(numbers, demos, rollouts, evaluations,
                                                          strict=True):
                record = learn_episode(env, agent, episode, demo, rollout, evaluation, started)
                atomic.append_line(log_path, json.dumps(record, default=float))
                _remember(state.best, Candidate(episode, record["reward"], evaluation.top1,
                                                rollout.policy,
                                                {k: v for k, v in evaluation.metrics.items()
                                                 if k != "seconds"}),
                          evaluator.key(rollout.policy), loop.keep_best, keys)
                _show(bar, writer, episode, record, state.best[0])
            before, state.next_episode = state.next_episode, numbers[-1] + 1
            state.cache, state.evaluator_calls = evaluator.cache, evaluator.calls
            finished_agent = copy.deepcopy(agent.state_dict())
            # Every `checkpoint_every` episodes, at the end of the batch that reaches them.
            if state.next_episode // loop.checkpoint_every > before // loop.checkpoint_every \
                    or state.next_episode == episodes:
                save_checkpoint(run_dir, state, finished_agent)
    except KeyboardInterrupt:
        save_checkpoint(run_dir, state, finished_agent)
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return state.best


def _open_run(run_dir: Path, config_dict: dict, resume: bool, evaluator
              ) -> tuple[SearchState, dict | None]:
    """A new run directory (its config written; one holding a search is refused), or with
    `resume` the saved search state and agent state, the log cut back to the checkpoint and the
    evaluator's cache and call count restored."""
    log_path = run_dir / EPISODES
    state, agent_state = None, None
    if resume:
        # A process killed inside an atomic write leaves its temporary file, never a half target.
        for stale in run_dir.glob(".*.tmp"):
            stale.unlink()
        state, agent_state = load_checkpoint(run_dir, config_dict)
        _truncate_log(log_path, state.next_episode if state else 0)
        if state is not None:
            evaluator.cache.update(state.cache)
            evaluator.calls = state.evaluator_calls
            replay = getattr(evaluator, "replay_probes", None)  # `EpisodeEvaluator`'s
            if replay is not None and log_path.exists():
                replay([json.loads(line) for line in log_path.read_text().splitlines()])
    else:
        if (run_dir / CHECKPOINT).exists() or log_path.exists():
            raise UserError(f"{run_dir} already holds a search; pass --resume {run_dir} to "
                            "continue it or choose another --out")
        atomic.write_json(run_dir / CONFIG, config_dict)
    return state or SearchState(), agent_state


def _prepass(state: SearchState, prepare: Callable[[], Prepass] | None, evaluator,
             run_dir: Path) -> Prepass:
    """The search's prepass, run and checkpointed at once the first time (a resumed search never
    measures again)."""
    if state.prepass is None:
        state.prepass = prepare() if prepare is not None else Prepass()
        state.cache, state.evaluator_calls = evaluator.cache, evaluator.calls
        save_checkpoint(run_dir, state, None)
    return state.prepass


def learn_episode(env: PruningEnv, agent, episode: int, demo: Demonstration | None,
                  rollout: Rollout, evaluation: Evaluation, started: float) -> dict[str, Any]:
    """The agent stores and learns from one evaluated episode; its line of the episode log."""
    reward = float(env.reward_fn(evaluation))
    agent.observe_episode(rollout.observations, rollout.actions, reward)
    learned = agent.episode_stats(rollout.observations, episode)
    if demo is not None:
        learned = {**learned, "sigma": None}  # no noise: the demonstration's own
    return {
        "episode": episode, **({"demonstration": demo.name} if demo else {}),
        "reward": reward, "top1": evaluation.top1,
        "flops_ratio": evaluation.flops_ratio,
        **{k: v for k, v in evaluation.metrics.items()},
        "policy": rollout.policy, "wanted_actions": rollout.wanted, **learned,
        "elapsed": time.time() - started,
    }


def _show(bar, writer, episode: int, record: dict[str, Any], best: Candidate) -> None:
    """One episode on the progress bar and, with a TensorBoard writer, as scalars."""
    if writer is not None:
        _write_scalars(writer, episode, record, best)
    bar.update(1)
    bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['top1']:.1f}",
                    lat=f"{record.get('latency_predicted', float('nan')):.3f}",
                    best=f"{best.top1:.1f}@{best.episode}", refresh=False)


AGENT_SCALARS = ("critic_loss", "actor_loss", "q_mean", "actor_mean", "actor_std", "sigma")
"""The log's per-episode agent numbers, written to TensorBoard as agent/<name>."""


def _write_scalars(writer, episode: int, record: dict, best: Candidate) -> None:
    for name in ("reward", "top1", "flops_ratio", "latency_predicted"):
        if record.get(name) is not None:
            writer.add_scalar(f"search/{name}", record[name], episode)
    writer.add_scalar("search/best_reward", best.reward, episode)
    for name in AGENT_SCALARS:
        if record.get(name) is not None:
            writer.add_scalar(f"agent/{name}", record[name], episode)


def default_agent_config(episodes: int, seed: int, **overrides) -> AgentConfig:
    """The project's DDPG settings (`AgentConfig`'s defaults), warm-up scaled to the episode count;
    `overrides` (e.g. from `--agent-option`) win over both."""
    return AgentConfig(**overrides).resolved(episodes, seed)
