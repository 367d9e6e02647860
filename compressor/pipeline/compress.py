"""`compressor compress`: baseline -> search -> candidates -> final fine-tune -> export -> report.

This module wires the pieces together; each piece lives in its own module and is tested there.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from compressor import latency, pruning
from compressor.budgets.wall import Budget
from compressor.errors import UserError
from compressor.io import atomic, checkpoints, export, policies, report
from compressor.latency import fit
from compressor.latency.model import load_or_build
from compressor.pipeline import recovery
from compressor.pipeline.train import TrainConfig, evaluate_top1, train
from compressor.provenance import pick_device, provenance, seed_everything
from compressor.search.env import PruningEnv
from compressor.search.evaluator import EpisodeEvaluator, EvaluatorConfig
from compressor.search.loop import LoopConfig, default_agent_config, run_search
from compressor.zoo import baselines as baseline
from compressor.zoo.datasets import DataConfig, load_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetConfig:
    """What the pruned network must fit in. Several budgets may be given at once."""

    latency: float | None = None
    """Measured ONNX Runtime latency as a ratio of the dense model's (e.g. 0.5)."""
    latency_ms: float | None = None
    """Absolute latency in ms at the probe settings, converted through the dense latency."""
    flops: float | None = None
    """MACs as a ratio of the dense model's."""
    params: float | None = None
    """Parameters as a ratio of the dense model's."""
    margin: float = 0.04
    """The search aims this fraction under a latency budget: the latency model's error on
    held-out policies (results/latency_model.md) plus measurement spread."""
    latency_source: str = "model"
    """`model`: the latency model drives the wall and the reward; every `probe_every`-th
    episode is also measured. `probe`: every episode is exported and measured (slow, exact)."""
    probe_every: int = 10
    """With `latency_source=model`, measure every k-th episode too (0: never)."""


@dataclass(frozen=True)
class FinalConfig:
    """What happens to the best policies after the search."""

    candidates: int = 3
    """Best distinct policies (by reward) that get a short fine-tune; the best of them wins."""
    candidate_steps: int = 100
    """SGD steps of that short fine-tune (batch 64)."""
    epochs: int = 1
    """Epochs of the winner's full fine-tune on the train split."""
    lr: float = 0.05
    """Peak learning rate of the full fine-tune (one-cycle)."""
    latency_blocks: int = 12
    """Alternating blocks of the final paired latency measurement."""
    fit: bool = True
    """Rescale each candidate until it measures at least `margin` under the latency budget and no
    more than 12% under it (`compressor.latency.fit`). It measures, so the final policy can differ between
    runs by that factor; off, the policy is exactly the search's (over-budget ones are rejected)."""


@dataclass(frozen=True)
class CompressConfig:
    model: str = "resnet18"
    seed: int = 0
    device: str = "auto"
    models_dir: str = "models"
    checkpoint: str | None = None
    out: str | None = None
    policies_dir: str = "policies"
    results_dir: str = "results"
    max_ratio: float = 0.8
    reward: str = "error"
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    pruning: pruning.PruningConfig = field(default_factory=pruning.PruningConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    probe: latency.ProbeSettings = field(default_factory=latency.ProbeSettings)

    @property
    def run_name(self) -> str:
        parts = [self.model, self.data.dataset.replace(":", "-").replace("/", "_")]
        b = self.budget
        for tag, value in (("lat", b.latency), ("ms", b.latency_ms), ("flops", b.flops),
                           ("params", b.params)):
            if value is not None:
                parts.append(f"{tag}{value:g}")
        if self.loop.agent != "ddpg":
            parts.append(self.loop.agent)
        parts.append(f"s{self.seed}")
        return "-".join(parts)


def _search_fields(config: CompressConfig) -> dict:
    """The settings a resumed search must share with the original (not output paths)."""
    d = asdict(config)
    for key in ("out", "policies_dir", "results_dir", "device", "final"):
        d.pop(key)
    return d


def build_budgets(config: CompressConfig, skeleton, latency_ratio, dense_ms: float | None
                  ) -> tuple[list[Budget], dict]:
    """The budgets as wall cost functions of the ratio vector, and what they ask for."""
    b, budgets, asked = config.budget, [], {}
    latency_limit = b.latency
    if b.latency_ms is not None:
        if dense_ms is None or dense_ms <= 0:
            raise UserError("--latency-ms needs the dense model's measured latency")
        ratio = b.latency_ms / dense_ms
        asked["latency_ms"] = b.latency_ms
        if not 0 < ratio < 1:
            raise UserError(f"--latency-ms {b.latency_ms} is {ratio:.2f} of the dense model's "
                            f"{dense_ms:.2f} ms at these probe settings; give less than {dense_ms:.2f}")
        latency_limit = min(latency_limit, ratio) if latency_limit is not None else ratio
    if b.latency is not None:
        asked["latency"] = b.latency
    dense_macs, dense_params = skeleton.macs({}), skeleton.params({})

    def as_policy(vector):
        return skeleton.policy_from_vector(vector)

    if latency_limit is not None:
        if not 0 < latency_limit < 1:
            raise UserError(f"latency budget {latency_limit} is out of range; give a ratio of "
                            "the dense model strictly between 0 and 1")
        asked["latency_ratio"] = latency_limit
        budgets.append(Budget("latency", lambda v: latency_ratio(as_policy(v)),
                              latency_limit * (1 - b.margin)))
    if b.flops is not None:
        asked["flops"] = b.flops
        budgets.append(Budget("flops", lambda v: skeleton.macs(as_policy(v)) / dense_macs,
                              b.flops))
    if b.params is not None:
        asked["params"] = b.params
        budgets.append(Budget("params", lambda v: skeleton.params(as_policy(v)) / dense_params,
                              b.params))
    if not budgets:
        raise UserError("no budget given; pass --latency-budget, --latency-ms, --flops-budget "
                        "or --params-budget")
    return budgets, asked


def _finetune(model, dataset, epochs: int, lr: float, seed: int, device) -> None:
    config = TrainConfig(epochs=epochs, max_lr=lr, warmup_fraction=0.1, seed=seed,
                         batch_size=128)
    train(model, dataset.train, None, config, device, progress=True)


@dataclass
class Workspace:
    """Everything a search and the final stage share, built once per run."""

    config: CompressConfig
    dataset: object
    dense: torch.nn.Module
    meta: dict
    skeleton: pruning.Skeleton
    latency_ratio: object
    probe: latency.Probe
    budgets: list
    asked: dict
    evaluator: EpisodeEvaluator
    device: torch.device
    times: dict


def prepare(config: CompressConfig, say=print) -> Workspace:
    """Data, baseline (pretrained once if missing), skeleton, latency model, budgets, evaluator."""
    times: dict[str, float] = {}
    t0 = time.time()
    seed_everything(config.seed)
    device = pick_device(config.device)
    dataset = load_dataset(config.data)
    dense, meta = baseline.load_or_pretrain(
        config.model, dataset, config.data, TrainConfig(seed=config.seed), config.models_dir,
        device, config.checkpoint, say=say)
    dense = dense.cpu().eval()
    times["baseline"] = time.time() - t0
    example = torch.zeros(1, 3, config.data.input_size, config.data.input_size)

    t = time.time()
    skeleton = pruning.build_skeleton(dense, example, config.pruning)
    latency_model = load_or_build(Path(config.models_dir) / "latency", config.model, dense,
                                  example, config.probe, round_to=config.pruning.round_to,
                                  skeleton=skeleton, say=say)
    settings = replace(config.probe, batch_size=latency_model.batch_size)
    probe = latency.Probe(dense, example, settings)
    times["latency_model"] = time.time() - t

    def latency_ratio(policy):
        return latency_model.predict_ratio(skeleton.layer_shapes(policy))

    budgets, asked = build_budgets(config, skeleton, latency_ratio, latency_model.dense_ms)
    source_probe = config.budget.latency_source == "probe"
    evaluator = EpisodeEvaluator(
        dense, skeleton, example, config.pruning, config.evaluator, dataset, device,
        latency_ratio=latency_ratio, probe=probe,
        probe_every=1 if source_probe else config.budget.probe_every,
        latency_limit=asked.get("latency_ratio") if source_probe else None)
    return Workspace(config, dataset, dense, meta, skeleton, latency_ratio, probe, budgets,
                     asked, evaluator, device, times)


def make_env(ws: Workspace) -> PruningEnv:
    sk = ws.skeleton
    dense_macs = sk.macs({})
    return PruningEnv(sk.units, lambda v: sk.macs(sk.policy_from_vector(v)) / dense_macs,
                      ws.budgets, ws.evaluator, ws.config.max_ratio, ws.config.reward)


def compress(config: CompressConfig, resume: str | None = None, say=print,
             argv: list[str] | None = None) -> dict:
    """Run the whole job; returns the report dict (also written to disk)."""
    ws = prepare(config, say)
    env = make_env(ws)
    run_dir = Path(resume or config.out or Path("runs") / config.run_name)
    config_dict = {"search": _search_fields(config), "full": asdict(config),
                   "provenance": provenance(), "command": argv}
    agent_config = default_agent_config(config.loop.episodes, config.seed)
    t = time.time()
    say(f"searching {config.loop.episodes} episodes over {len(ws.skeleton.units)} units of "
        f"{config.model} ({config.loop.agent}); run directory {run_dir}")
    try:
        best = run_search(env, ws.evaluator, config.loop, agent_config, run_dir, config_dict,
                          resume=resume is not None)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"search state saved in {run_dir}; continue with the same "
                                f"command plus --resume {run_dir}") from None
    ws.times["search"] = time.time() - t
    return finish(ws, best, run_dir, argv, say)


def finish(ws: Workspace, best, run_dir: Path, argv, say) -> dict:
    """Short fine-tune of the best candidates, full fine-tune of the winner, export, report."""
    config, evaluator, dense, meta, dataset = ws.config, ws.evaluator, ws.dense, ws.meta, ws.dataset
    skeleton, probe, budgets, asked = ws.skeleton, ws.probe, ws.budgets, ws.asked
    times, device = ws.times, ws.device
    t = time.time()
    fin = config.final
    limit = asked.get("latency_ratio")
    rows, scored = [], []
    units = [u.name for u in skeleton.units]

    def measure(policy):
        return probe.measure(evaluator.prune(policy)).ratio

    for cand in best[: fin.candidates]:
        row = {"episode": cand.episode, "reward": cand.reward, "top1": cand.top1}
        rows.append(row)
        policy = cand.policy
        if limit is None or not fin.fit:
            row["latency_measured"] = measure(policy)
            if limit is not None and row["latency_measured"] > limit:
                row["rejected"] = f"measured {row['latency_measured']:.3f} > budget {limit:.3f}"
                continue
        else:
            first = measure(policy)
            fitted = fit.fit_to_latency(policy, units, ws.latency_ratio, measure, limit,
                                        config.max_ratio, config.budget.margin, measured=first)
            row["latency_measured_as_searched"] = first
            row["latency_measured"] = fitted.measured
            if fitted.steps:
                row["fitted"] = [asdict(step) for step in fitted.steps]
                say(f"candidate of episode {cand.episode}: measured {first:.3f} of the dense "
                    f"latency for a {limit:.3f} budget; rescaled to {fitted.measured:.3f} in "
                    f"{len(fitted.steps)} step(s)")
            if not fitted.ok:
                row["rejected"] = f"measured {fitted.measured:.3f} > budget {limit:.3f}"
                continue
            policy = fitted.policy
        cand = replace(cand, policy=policy)
        model = evaluator.prune(policy)
        cfg = recovery.RecoveryConfig(bn_batches=config.evaluator.bn_batches,
                                      finetune_steps=fin.candidate_steps,
                                      lr=config.evaluator.finetune_lr)
        batches = list(dataset.train.batches(64, shuffle=True, seed=config.seed + 7,
                                             limit=fin.candidate_steps + cfg.bn_batches))
        recovery.recover(model, batches, cfg, device)
        row["finetuned_top1"] = evaluate_top1(model, dataset.search.batches(250), device)
        scored.append((row["finetuned_top1"], cand, model, row))
    if not scored:
        measured = ", ".join(f"{r['latency_measured']:.3f}" for r in rows)
        raise UserError(f"every candidate policy measured over the latency budget {limit} "
                        f"even after shrinking (measured {measured}); raise the budget or "
                        "--max-ratio (see the run's episodes.jsonl)")
    scored.sort(key=lambda s: -s[0])
    _, winner, model, row = scored[0]
    row["chosen"] = True
    times["candidates"] = time.time() - t

    t = time.time()
    say(f"fine-tuning the winner (episode {winner.episode}) for {fin.epochs} epoch(s)")
    _finetune(model, dataset, fin.epochs, fin.lr, config.seed, device)
    model = model.cpu().eval()
    top1 = evaluate_top1(model, dataset.test.batches(500), torch.device("cpu"))
    times["final_finetune"] = time.time() - t

    t = time.time()
    example_batch = next(dataset.test.batches(16))[0]
    onnx_path = run_dir / "model.onnx"
    exported = export.export_onnx(model, example_batch, onnx_path)
    dense_onnx = run_dir / "dense.onnx"
    export.export_onnx(dense, example_batch, dense_onnx)
    final_settings = replace(probe.settings, blocks=fin.latency_blocks)
    paired = latency.measure_pair(latency.make_session(onnx_path, final_settings),
                                  latency.make_session(dense_onnx, final_settings),
                                  final_settings)
    times["export_and_measure"] = time.time() - t
    times["total"] = sum(times.values())

    macs = skeleton.macs(winner.policy)
    params = skeleton.params(winner.policy)
    checks = {}
    if limit is not None:
        checks["latency"] = paired.ratio <= limit
    if config.budget.flops is not None:
        checks["flops"] = macs / skeleton.macs({}) <= config.budget.flops + 1e-9
    if config.budget.params is not None:
        checks["params"] = params / skeleton.params({}) <= config.budget.params + 1e-9
    verdict = "within budget" if all(checks.values()) else "OVER BUDGET"

    uniform, _ = pruning.uniform_policy_for_budget(
        skeleton, lambda p: max(b.cost(skeleton_vector(skeleton, p)) / b.limit for b in budgets),
        1.0, config.max_ratio)
    log_path = run_dir / "episodes.jsonl"
    episodes = report.read_episodes(log_path) if log_path.exists() else []
    fresh = [e for e in episodes if not e.get("cached")]
    per_episode = {}
    for phase in ("prune", "recover", "evaluate", "latency"):
        values = [e["seconds"][phase] for e in fresh if phase in e.get("seconds", {})]
        per_episode[phase] = sum(values) / max(len(values), 1)

    results_dir = Path(config.results_dir) / run_dir.name
    policy_path = Path(config.policies_dir) / f"{run_dir.name}.json"
    metrics = {"test_top1": top1, "baseline_test_top1": meta.get("test_top1"),
               "latency_ratio_measured": paired.ratio, "macs": macs, "params": params}
    policies.write_policy(policy_path, model=config.model, dataset=config.data.dataset,
                        input_size=config.data.input_size, policy=winner.policy,
                        units=[u.name for u in skeleton.units], budget=asked, metrics=metrics,
                        extra={"round_to": config.pruning.round_to, "seed": config.seed,
                               "importance": config.pruning.importance})
    checkpoints.save_pruned_checkpoint(model, run_dir / "model.pt",
                                  {"model": config.model, "policy": winner.policy, **metrics})
    plots = report.plot_search(episodes, results_dir, f"{config.model}: {run_dir.name}") \
        if episodes else []
    plots.append(report.plot_policy(winner.policy, uniform, results_dir,
                                    "pruning ratio per unit"))
    base_top1 = meta.get("test_top1", float("nan"))
    rep = {
        "model": config.model, "dataset": config.data.dataset, "run": run_dir.name,
        "command": " ".join(shlex.quote(a) for a in (argv or sys.argv)),
        "headline": f"{top1:.2f}% top-1 ({top1 - base_top1:+.2f}) at {paired.ratio:.3f} of the "
                    f"dense latency",
        "verdict": verdict, "checks": checks, "budgets": asked,
        "search_target": {b.name: b.limit for b in budgets},
        "margin_note": f"latency budgets are aimed {config.budget.margin:.0%} under the budget "
                       "(the latency model's held-out error plus the paired measurement spread, "
                       "results/latency_model.md); before fine-tuning each candidate is rescaled "
                       "(every unit's kept fraction times one factor, aimed with the policy's "
                       "measured/predicted bias) and measured again until it measures between "
                       "12% and the margin under the budget, at most 3 times; a candidate never "
                       "measured within the budget is rejected.",
        "baseline": {"test_top1": base_top1, "macs": skeleton.macs({}),
                     "params": skeleton.params({})},
        "final": {"test_top1": top1, "macs": macs, "params": params,
                  "latency": paired.as_dict(), "onnx_max_abs_diff": exported.max_abs_diff,
                  "onnx": str(onnx_path), "checkpoint": str(run_dir / "model.pt"),
                  "policy_file": str(policy_path)},
        "policy": winner.policy, "uniform_policy": uniform, "candidates": rows,
        "episodes": len(episodes), "cache_hits": len(episodes) - len(fresh),
        "per_episode_seconds": per_episode, "time": times, "plots": plots,
        "config": asdict(config), "provenance": provenance(),
    }
    report.write_report(results_dir, rep)
    if episodes:
        atomic.write_bytes(results_dir / "episodes.jsonl", log_path.read_bytes())
    say(f"{config.model}: test top-1 {top1:.2f}% (dense {base_top1:.2f}%), latency ratio "
        f"{paired.ratio:.3f} measured, {macs / 1e6:.1f} MMACs; {verdict}")
    say(f"wrote {onnx_path}, {run_dir / 'model.pt'}, {policy_path}, {results_dir / 'report.md'}")
    return rep


def skeleton_vector(skeleton, policy: dict[str, float]) -> list[float]:
    return [policy.get(u.name, 0.0) for u in skeleton.units]
