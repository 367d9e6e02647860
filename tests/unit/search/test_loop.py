import json
import sys

import pytest
import torch
import torchvision

from compressor.budgets.wall import Budget
from compressor.errors import UserError
from compressor.pruning import PruningConfig, build_skeleton
from compressor.search.agent import AgentConfig
from compressor.search.env import Evaluation, PruningEnv
from compressor.search.loop import CHECKPOINT, EPISODES, LoopConfig, default_agent_config, run_search


@pytest.fixture(scope="module")
def skeleton():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    return build_skeleton(model, torch.zeros(1, 3, 32, 32), PruningConfig())


class SizeEvaluator:
    """A small, real, deterministic evaluator: scores a policy by the MACs it keeps and by how
    evenly it prunes. `interrupt_at` raises KeyboardInterrupt on that call (a simulated Ctrl-C)."""

    def __init__(self, skeleton, interrupt_at=None):
        self.skeleton, self.cache, self.calls, self.interrupt_at = skeleton, {}, 0, interrupt_at

    def key(self, policy):
        kept = self.skeleton.kept_channels(policy)
        return tuple(kept[n] for n in sorted(kept))

    def __call__(self, policy):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        ratio = self.skeleton.macs(policy) / self.skeleton.macs({})
        spread = max(policy.values()) - min(policy.values())
        key = self.key(policy)
        cached = key in self.cache
        self.cache[key] = True
        return Evaluation(top1=60 + 30 * ratio - 10 * spread, flops_ratio=ratio,
                          metrics={"cached": cached})


def _search(skeleton, run_dir, episodes, evaluator, resume=False, prepare=None, tensorboard=None):
    dense = skeleton.macs({})

    def macs_ratio(v):
        return skeleton.macs(skeleton.policy_from_vector(v)) / dense

    def make_env(extra_features=None):
        return PruningEnv(skeleton.units, macs_ratio, [Budget("flops", macs_ratio, 0.5)],
                          evaluator, extra_features=extra_features)

    agent_config = AgentConfig(hidden=32, warmup_episodes=3, batch_size=16, seed=1)
    loop = LoopConfig(episodes=episodes, checkpoint_every=2)
    return run_search(make_env, evaluator, loop, agent_config, run_dir,
                      {"search": {"episodes": episodes}}, resume=resume, progress=False,
                      prepare=prepare, tensorboard=tensorboard)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / EPISODES).read_text().splitlines()]


def test_search_logs_every_episode_and_keeps_the_best(skeleton, tmp_path):
    best = _search(skeleton, tmp_path / "run", 8, SizeEvaluator(skeleton))
    log = _log(tmp_path / "run")
    assert [e["episode"] for e in log] == list(range(8))
    assert all(e["flops_ratio"] <= 0.5 for e in log)
    assert best[0].reward == max(e["reward"] for e in log)
    assert (tmp_path / "run" / CHECKPOINT).exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["search"]["episodes"] == 8


def test_resume_after_interruption_matches_an_uninterrupted_run(skeleton, tmp_path):
    whole = _search(skeleton, tmp_path / "whole", 10, SizeEvaluator(skeleton))
    with pytest.raises(KeyboardInterrupt):
        _search(skeleton, tmp_path / "cut", 10, SizeEvaluator(skeleton, interrupt_at=7))
    assert len(_log(tmp_path / "cut")) == 6
    resumed = _search(skeleton, tmp_path / "cut", 10, SizeEvaluator(skeleton), resume=True)
    strip = [({k: v for k, v in e.items() if k not in ("elapsed", "cached")})
             for e in _log(tmp_path / "whole")]
    again = [({k: v for k, v in e.items() if k not in ("elapsed", "cached")})
             for e in _log(tmp_path / "cut")]
    assert again == strip
    assert [c.policy for c in resumed] == [c.policy for c in whole]


def test_resume_refuses_another_configuration_and_fresh_run_refuses_an_old_dir(skeleton,
                                                                              tmp_path):
    _search(skeleton, tmp_path / "run", 4, SizeEvaluator(skeleton))
    with pytest.raises(UserError, match="different configuration"):
        _search(skeleton, tmp_path / "run", 6, SizeEvaluator(skeleton), resume=True)
    with pytest.raises(UserError, match="--resume"):
        _search(skeleton, tmp_path / "run", 4, SizeEvaluator(skeleton))
    with pytest.raises(UserError, match="not a search run directory"):
        _search(skeleton, tmp_path / "empty", 4, SizeEvaluator(skeleton), resume=True)


def test_tensorboard_gets_the_logs_numbers_as_scalars(skeleton, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _search(skeleton, tmp_path / "run", 6, SizeEvaluator(skeleton), tensorboard=tmp_path / "tb")
    log = _log(tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    rewards = events.Scalars("search/reward")
    assert [e.step for e in rewards] == list(range(6))
    assert [e.value for e in rewards] == pytest.approx([e["reward"] for e in log], rel=1e-6)
    # The agent's numbers from the first episode after warm-up (3) on, as in episodes.jsonl.
    for name in ("critic_loss", "q_mean", "sigma"):
        assert [e.value for e in events.Scalars(f"agent/{name}")] == pytest.approx(
            [e[name] for e in log[3:]], rel=1e-6)
    assert all(e[name] is None for e in log[:3] for name in ("critic_loss", "sigma"))
    assert len(events.Scalars("agent/actor_std")) == 6


def test_tensorboard_missing_is_a_one_line_user_error_before_any_work(skeleton, tmp_path,
                                                                     monkeypatch, capsys):
    from compressor.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'compressor\[tensorboard\]'"):
        _search(skeleton, tmp_path / "run", 4, SizeEvaluator(skeleton), tensorboard=tmp_path / "tb")
    assert not (tmp_path / "run").exists()
    # From the command line: refused before the dataset, the baseline or the search.
    assert main(["compress", "--tensorboard", str(tmp_path / "tb"), "--data-dir",
                 str(tmp_path / "no-data"), "--models-dir", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compressor[tensorboard]" in err[0]
    assert not (tmp_path / "models").exists() and not (tmp_path / "no-data").exists()


def test_agent_options_and_tensorboard_reach_the_compress_config():
    from compressor.cli import parse

    command = parse([
        "compress", "--episodes", "80", "--seed", "3", "--tensorboard", "tb",
        "--agent.warm-start", "--agent-option", "sensitivity=true",
        "--agent-option", "noise_floor=0.1"]).command
    config = command.run_config.resolved()
    assert config.tensorboard == "tb"
    assert config.agent == AgentConfig(seed=3, warmup_episodes=10, warm_start=True,
                                       sensitivity=True, noise_floor=0.1)
    defaults = parse(["compress", "--episodes", "80"]).command.config.resolved()
    assert defaults.agent == default_agent_config(80, 0)  # no option: the project's defaults
    assert defaults.agent.noise_floor == 0.05 and defaults.agent.noise_schedule == "budget"
    assert not defaults.agent.warm_start and not defaults.agent.sensitivity
    # A setting given wins over the derived one; warm-up and seed follow episodes and --seed.
    given = parse(["compress", "--agent.warmup-episodes", "4", "--agent.seed", "9"])
    assert given.command.config.resolved().agent == AgentConfig(seed=9, warmup_episodes=4)
    with pytest.raises(UserError, match="KEY=VALUE"):
        _ = parse(["compress", "--agent-option", "warm"]).command.run_config
