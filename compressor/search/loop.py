"""The search loop: episodes of the agent in the pruning environment, logged, checkpointed, resumable.

A run directory holds the resolved config (`config.json`), one JSON line per episode
(`episodes.jsonl`) and an atomic checkpoint (`checkpoint.pt`: agent with its RNG and replay buffer,
the evaluation cache, the best policies). `--resume RUN_DIR` reloads the checkpoint, drops log lines
written after it, and replays from there: the evaluator is deterministic and every random draw comes
from the agent's saved generator, so a resumed run ends where an uninterrupted one would.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.errors import UserError
from compressor.io import atomic
from compressor.search.agent import AgentConfig, make_agent, warmup_for
from compressor.search.env import PruningEnv

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
EPISODES = "episodes.jsonl"
CONFIG = "config.json"


@dataclass(frozen=True)
class LoopConfig:
    """How long the search runs and how it is saved."""

    episodes: int = 200
    """Episodes of the agent (each prunes, recovers and scores one network)."""
    agent: str = "ddpg"
    """`ddpg` (AMC) or `random` (the same loop with uniform random actions: a baseline)."""
    checkpoint_every: int = 5
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


@dataclass
class SearchState:
    """Everything a checkpoint holds besides the agent."""

    next_episode: int = 0
    best: list[Candidate] = field(default_factory=list)
    evaluator_calls: int = 0
    cache: dict = field(default_factory=dict)


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


def save_checkpoint(run_dir: Path, state: SearchState, agent_state: dict) -> None:
    atomic.torch_save(run_dir / CHECKPOINT, {
        "format": "compressor-search-v1", "state": {
            "next_episode": state.next_episode, "best": [asdict(c) for c in state.best],
            "evaluator_calls": state.evaluator_calls, "cache": state.cache},
        "agent": agent_state,
    })


def load_checkpoint(run_dir: Path, config_dict: dict, agent) -> SearchState:
    """Restore a search; refuses a run directory made with another configuration."""
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
        return SearchState()
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is corrupt ({type(exc).__name__}); delete the run "
                        "directory to start again") from None
    agent.load_state_dict(blob["agent"])
    raw = blob["state"]
    return SearchState(raw["next_episode"], [Candidate(**c) for c in raw["best"]],
                       raw["evaluator_calls"], raw["cache"])


def _truncate_log(path: Path, episodes: int) -> None:
    """Keep the first `episodes` lines: episodes after the checkpoint are replayed."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()[:episodes]
    atomic.write_text(path, "".join(line + "\n" for line in lines))


def run_search(env: PruningEnv, evaluator, loop: LoopConfig, agent_config: AgentConfig,
               run_dir: Path, config_dict: dict, resume: bool = False,
               progress: bool = True) -> list[Candidate]:
    """Run (or continue) the episodes; returns the best distinct policies, best first."""
    from tqdm.auto import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    agent = make_agent(loop.agent, env.observation_space.shape[0], agent_config,
                       torch.device("cpu"))
    log_path = run_dir / EPISODES
    if resume:
        # A process killed inside an atomic write leaves its temporary file, never a half target.
        for stale in run_dir.glob(".*.tmp"):
            stale.unlink()
        state = load_checkpoint(run_dir, config_dict, agent)
        _truncate_log(log_path, state.next_episode)
        evaluator.cache.update(state.cache)
        evaluator.calls = state.evaluator_calls
    else:
        if (run_dir / CHECKPOINT).exists() or log_path.exists():
            raise UserError(f"{run_dir} already holds a search; pass --resume {run_dir} to "
                            "continue it or choose another --out")
        atomic.write_json(run_dir / CONFIG, config_dict)
        state = SearchState()
    keys = {id(c): evaluator.key(c.policy) for c in state.best}

    # The agent as it was after the last finished episode: what Ctrl-C saves, so that a resumed
    # run never sees the random draws of a half-played episode.
    finished_agent = copy.deepcopy(agent.state_dict())
    bar = tqdm(total=loop.episodes, initial=state.next_episode, unit="ep", desc="search",
               disable=not progress, dynamic_ncols=True)
    started = time.time()
    try:
        for episode in range(state.next_episode, loop.episodes):
            obs, _ = env.reset(seed=None)
            observations, actions, wanted = [obs], [], []
            while True:
                action = agent.act(obs, episode)
                obs, reward, terminated, _, info = env.step(np.array([action], np.float32))
                wanted.append(action)
                actions.append(info["applied_action"])
                if terminated:
                    break
                observations.append(obs)
            agent.observe_episode(observations, actions, reward)
            evaluation = info["evaluation"]
            record = {
                "episode": episode, "reward": reward, "top1": evaluation.top1,
                "flops_ratio": evaluation.flops_ratio,
                **{k: v for k, v in evaluation.metrics.items()},
                "policy": info["policy"], "wanted_actions": wanted,
                "elapsed": time.time() - started,
            }
            atomic.append_line(log_path, json.dumps(record, default=float))
            _remember(state.best, Candidate(episode, reward, evaluation.top1, info["policy"],
                                            {k: v for k, v in evaluation.metrics.items()
                                             if k != "seconds"}),
                      evaluator.key(info["policy"]), loop.keep_best, keys)
            state.next_episode = episode + 1
            state.cache, state.evaluator_calls = evaluator.cache, evaluator.calls
            finished_agent = copy.deepcopy(agent.state_dict())
            best = state.best[0]
            bar.update(1)
            bar.set_postfix(reward=f"{reward:.3f}", acc=f"{evaluation.top1:.1f}",
                            lat=f"{evaluation.metrics.get('latency_predicted', float('nan')):.3f}",
                            best=f"{best.top1:.1f}@{best.episode}", refresh=False)
            if state.next_episode % loop.checkpoint_every == 0 or \
                    state.next_episode == loop.episodes:
                save_checkpoint(run_dir, state, finished_agent)
    except KeyboardInterrupt:
        save_checkpoint(run_dir, state, finished_agent)
        bar.close()
        raise
    bar.close()
    return state.best


def default_agent_config(episodes: int, seed: int, **overrides) -> AgentConfig:
    """AMC's DDPG settings with warm-up scaled to the episode count."""
    return AgentConfig(seed=seed, warmup_episodes=warmup_for(episodes), **overrides)
