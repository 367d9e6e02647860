"""The reward's slow parts: prune a policy, recover it briefly, score it, and read its latency.

One `EpisodeEvaluator` serves a whole search. Its batches are cut once and reused, so every episode
is scored on the same images, and results are cached by the rounded channel configuration: two
policies that round to the same network are evaluated once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any

import torch
from torch import nn

from compressor import latency, pruning
from compressor.errors import UserError
from compressor.flags import flag
from compressor.pruning.importance import needs_gradients
from compressor.search.env import Evaluation
from compressor.training import recovery
from compressor.training.train import evaluate_top1


@dataclass(frozen=True)
class EvaluatorConfig:
    """How each episode's network is recovered and scored."""

    search_images: Annotated[int, flag("--search-images")] = 2000
    """Images of the search split scored per episode (2000: ~0.5 point standard error)."""
    bn_batches: Annotated[int, flag("--bn-batches")] = 20
    """Training batches for adaptive BatchNorm recalibration (EagleEye)."""
    batch_size: int = 64
    """Batch size of recalibration, fine-tune and scoring batches."""
    finetune_steps: Annotated[int, flag("--episode-finetune-steps")] = 10
    """Short fine-tune after recalibration, in SGD steps (0: recalibration only). Measured in
    results/honesty-v2: recalibration alone does not rank policies like the final fine-tune
    (mean Spearman about 0 over resnet18 and mobilenet_v2 at budgets 0.2 and 0.3); 10 steps rank
    best of 10/25/50 and cost the least (+0.3-0.5 s per episode here)."""
    finetune_lr: float = 0.01
    """Learning rate of that short fine-tune."""
    distill: Annotated[float, flag("--episode-distill")] = 0.0
    """Share of that fine-tune's loss matching the dense network's softened logits (NViT's
    recovery of pruned ViTs; `training.recovery.distillation_loss`); 0: labels only."""


RECOVERY_SEED = 12345
"""Seed of the fixed recovery batches every episode (and the final stage's candidates) reuse."""


def checked_score(score: Callable[[nn.Module], float]) -> Callable[[nn.Module], float]:
    """`score` whose result must be a finite number: a user's `evaluate` returning anything else
    is a one-line error, not a crash deep inside the search."""
    def checked(model: nn.Module) -> float:
        value = score(model)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise UserError(f"evaluate(model) returned {value!r}; it must return a number, higher "
                            "is better (e.g. top-1 accuracy in percent)")
        model.eval()
        return float(value)
    return checked


class EpisodeEvaluator:
    """Callable from a policy to an `Evaluation`, with a cache and per-phase timings."""

    def __init__(self, dense: nn.Module, skeleton: pruning.Skeleton, example: torch.Tensor,
                 pruning_config: pruning.PruningConfig, config: EvaluatorConfig, dataset,
                 device: torch.device, latency_ratio=None, probe: latency.Probe | None = None,
                 probe_every: int = 0, latency_limit: float | None = None,
                 score: Callable[[nn.Module], float] | None = None,
                 finetune: Callable[[nn.Module, int], None] | None = None, int8=None,
                 correction: latency.ProbeCorrection | None = None):
        self.dense, self.skeleton, self.example = dense, skeleton, example
        self.pruning_config, self.config, self.device = pruning_config, config, device
        self.latency_ratio = latency_ratio  # policy -> predicted ratio, or None without a model
        self.probe, self.probe_every = probe, probe_every
        # Learns from every probe (`latency.correction`); `latency_ratio` is it when it corrects.
        self.correction = correction
        # With `--latency-source probe` a measured ratio over this limit voids the reward.
        self.latency_limit = latency_limit
        # A user's own scoring and fine-tune (`compressor.compress(evaluate=..., finetune=...)`)
        # replace top-1 on the search split and the cross-entropy fine-tune.
        self.score = checked_score(score) if score is not None else None
        self.user_finetune = finetune
        # `--quantize searched`: an object whose `top1(model, policy)` scores the policy's INT8
        # network and `fp32_layers(policy)` names what it keeps float (`pipeline.int8`), so the
        # reward sees what INT8 costs on the layers the agent quantized.
        self.int8 = int8
        self.recovery_config = recovery.RecoveryConfig(
            bn_batches=config.bn_batches, finetune_steps=config.finetune_steps,
            lr=config.finetune_lr, distill=config.distill)
        # Fixed images for every episode: the reward differs only through the policy.
        own_finetune = 0 if finetune is not None else config.finetune_steps
        self.train_batches = [] if dataset.train is None else list(dataset.train.batches(
            config.batch_size, shuffle=True, seed=RECOVERY_SEED,
            limit=config.bn_batches + own_finetune))
        self.search_batches = [] if score is not None else list(
            dataset.search.subset(config.search_images).batches(250))
        self.cache: dict[tuple[int, ...], Evaluation] = {}
        self.calls = 0

    def key(self, policy: dict[str, float]) -> tuple[int, ...]:
        kept = self.skeleton.kept_channels(policy)
        int8 = pruning.unit_precisions(policy)
        return tuple(kept[name] for name in sorted(kept)) + tuple(
            int(int8[name]) for name in sorted(int8))

    def prune(self, policy: dict[str, float]) -> nn.Module:
        calibration = self.train_batches[:self.pruning_config.taylor_batches] \
            if needs_gradients(self.pruning_config.importance) else None
        return pruning.apply_policy(self.dense, policy, self.example, self.pruning_config,
                                    calibration_batches=calibration)

    def recover(self, model: nn.Module, steps: int | None = None) -> None:
        """BatchNorm recalibration, then `steps` (default: the config's) of fine-tune."""
        steps = self.config.finetune_steps if steps is None else steps
        if self.user_finetune is None:
            recovery.recover(model, self.train_batches,
                             replace(self.recovery_config, finetune_steps=steps), self.device,
                             teacher=self.dense)
            return
        if self.train_batches:
            recovery.recalibrate_bn(model, self.train_batches, self.config.bn_batches, self.device)
        if steps > 0:
            self.user_finetune(model, steps)
        model.eval()

    def quantized(self, policy: dict[str, float]) -> bool:
        """Whether `policy`'s score is its INT8 network's (precisions searched)."""
        return self.int8 is not None and bool(pruning.unit_precisions(policy))

    def evaluate(self, model: nn.Module, policy: dict[str, float] | None = None) -> float:
        """The search score: the user's `evaluate`, else top-1 (%) on the search images; of the
        INT8 network when `policy` has searched precisions."""
        if policy is not None and self.quantized(policy):
            return self.int8.top1(model, policy)
        if self.score is not None:
            return self.score(model)
        return evaluate_top1(model, self.search_batches, self.device)

    def probe_due(self, call: int) -> bool:
        """Whether call number `call` is also measured: every k-th (k=1: every call; k=0: never)."""
        every = self.probe_every
        return self.probe is not None and every > 0 and (every == 1 or call % every == 1)

    def latency_metrics(self, policy: dict[str, float], model: nn.Module | None,
                        must_probe: bool) -> dict[str, Any]:
        """The params ratio, the latency model's prediction and, when due, the measured ratio of
        `model` (pruned from `policy` here when None: only the architecture is timed)."""
        metrics: dict[str, Any] = {
            "params_ratio": self.skeleton.params(policy) / self.skeleton.params({}),
        }
        if self.latency_ratio is not None:
            metrics["latency_predicted"] = self.latency_ratio(policy)
        if must_probe:
            fp32_layers = self.int8.fp32_layers(policy) if self.quantized(policy) else None
            paired = self.probe.measure((model if model is not None else self.prune(policy)).cpu(),
                                        fp32_layers=fp32_layers)
            metrics["latency_measured"] = paired.ratio
            metrics["latency_measured_spread"] = list(paired.spread)
            if self.correction is not None:
                probed = self.correction.observe(policy, paired.ratio)
                metrics["probe_bias_median"] = self.correction.used_bias_median
                if self.correction.enabled:
                    metrics["latency_predicted_uncorrected"] = probed.predicted
            if self.latency_limit is not None:
                metrics["over_budget"] = paired.ratio > self.latency_limit
        return metrics

    def replay_probes(self, records: list[dict[str, Any]]) -> None:
        """A resumed search's logged episodes: the probes among them observed again in order
        (the correction learns as the uninterrupted search's did)."""
        if self.correction is not None:
            self.correction.replay([(r["policy"], r["latency_measured"]) for r in records
                                    if "latency_measured" in r and not r.get("cached")])

    def __call__(self, policy: dict[str, float]) -> Evaluation:
        self.calls += 1
        key = self.key(policy)
        must_probe = self.probe_due(self.calls)
        cached = self.cache.get(key)
        if cached is not None and (not must_probe or "latency_measured" in cached.metrics):
            return cached._replace(metrics={**cached.metrics, "cached": True,
                                            "seconds": {}})
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        model = self.prune(policy)
        seconds["prune"] = time.perf_counter() - started

        started = time.perf_counter()
        self.recover(model)
        seconds["recover"] = time.perf_counter() - started

        started = time.perf_counter()
        top1 = self.evaluate(model)
        seconds["evaluate"] = time.perf_counter() - started
        int8_metrics = {}
        if self.quantized(policy):
            started = time.perf_counter()
            int8_metrics = {"fp32_top1": top1}
            top1 = self.evaluate(model, policy)
            seconds["quantize"] = time.perf_counter() - started

        started = time.perf_counter()
        metrics = self.latency_metrics(policy, model, must_probe)
        seconds["latency"] = time.perf_counter() - started

        evaluation = Evaluation(top1=top1, flops_ratio=self.skeleton.macs(policy)
                                / self.skeleton.macs({}),
                                metrics={**metrics, **int8_metrics, "cached": False})
        self.cache[key] = evaluation
        return evaluation._replace(metrics={**evaluation.metrics, "seconds": seconds})
