"""Causal language models: next-token cross-entropy, held-out perplexity, and a short AdamW loop.

A causal LM maps token ids [batch, tokens] to logits [batch, tokens, vocab]; position t predicts
token t + 1. Batches are (inputs, targets) pairs of int64 [batch, tokens], targets the inputs
shifted by one (`zoo.text`). Perplexity is exp of the mean cross-entropy per predicted token, so
it is comparable across batch sizes and window counts; the search will reward its negative log
(the cross-entropy) after a short recovery by `train_lm`.

    score = evaluate_lm(model, corpus.validation.windows(32, context=128, limit=8), device)
    losses = train_lm(model, corpus.train.batches(32, context=128, seed=0), 50, LMConfig(), device)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from compressor.training.train import main_output


@dataclass(frozen=True)
class LMConfig:
    """How a causal LM is trained for a few steps (a recovery) or longer (a pretrain)."""

    lr: float = 1e-3
    """Peak AdamW learning rate (nanoGPT's small models train at 1e-3)."""
    weight_decay: float = 0.1
    """AdamW weight decay, on matrices and embeddings only (not on biases or norm gains)."""
    warmup_steps: int = 10
    """Steps rising linearly to `lr` before the cosine decay to `lr / 10`."""
    grad_clip: float = 1.0
    """Gradient norm clipped to this (0: no clipping)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas, as GPT-2-style models are trained."""


class LMScore(NamedTuple):
    """A causal LM on held-out windows."""

    cross_entropy: float  # mean nats per predicted token
    perplexity: float  # exp(cross_entropy)
    tokens: int  # predicted tokens it is the mean over
    top1: float = float("nan")  # percent of tokens whose most likely prediction is the next one

    @property
    def bits_per_token(self) -> float:
        """Cross-entropy in bits (bits per byte when tokens are bytes)."""
        return self.cross_entropy / math.log(2)


def lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `model` on one batch (a scalar tensor with gradients)."""
    logits = main_output(model(inputs))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate_lm(model: nn.Module, windows: Iterable[tuple[torch.Tensor, torch.Tensor]],
                device: torch.device) -> LMScore:
    """Mean next-token cross-entropy, perplexity and top-1 next-token accuracy over every token
    of `windows` (eval mode; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    total, count, right = 0.0, 0, 0
    try:
        for inputs, targets in windows:
            logits = main_output(model(inputs.to(device)))
            targets = targets.to(device)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           targets.reshape(-1), reduction="sum"))
            right += int((logits.argmax(-1) == targets).sum())
            count += targets.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_lm needs at least one window")
    mean = total / count
    return LMScore(mean, math.exp(mean), count, 100.0 * right / count)


def lm_optimizer(model: nn.Module, config: LMConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of two or more dimensions only (Linear weights,
    embeddings), as nanoGPT configures it: decaying LayerNorm gains and biases only hurts."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def lm_schedule(step: int, steps: int, config: LMConfig) -> float:
    """Learning-rate factor of `step` (0-based) of `steps`: linear warm-up over
    `warmup_steps`, then cosine from 1 to 0.1.

    >>> [round(lm_schedule(s, 20, LMConfig(warmup_steps=10)), 3) for s in (0, 9, 10, 19)]
    [0.1, 1.0, 1.0, 0.1]
    """
    warmup = min(config.warmup_steps, max(steps - 1, 0))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - 1 - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_lm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int,
             config: LMConfig, device: torch.device) -> list[float]:
    """Up to `steps` AdamW steps of next-token loss on `batches` (fewer if they run out);
    returns every step's loss. The model is trained in place and left in eval mode."""
    if steps <= 0:
        return []
    model.to(device)
    optimizer = lm_optimizer(model, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lm_schedule(step, steps, config))
    losses = []
    model.train()
    with torch.enable_grad():
        for _, (inputs, targets) in zip(range(steps), batches, strict=False):
            loss = lm_loss(model, inputs.to(device), targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
    model.zero_grad(set_to_none=True)
    model.eval()
    return losses
