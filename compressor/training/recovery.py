"""Recovery of a freshly pruned network: BatchNorm recalibration, then an optional short fine-tune.

Pruning leaves BatchNorm running statistics measured on the dense network's activations; EagleEye
(Li et al. 2020) showed that re-estimating them on a few training batches ("adaptive BN") makes the
accuracy of a pruned candidate a far better predictor of its accuracy after fine-tuning than the
stale statistics. Recalibration alone still does not rank policies the way the final fine-tune does
(results/honesty-v2): a few SGD steps on top do, hence the search's 10-step default.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compressor.training.train import memory_format

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryConfig:
    """How each pruned candidate is recovered before it is scored."""

    bn_batches: int = 20
    """Training batches over which BatchNorm statistics are re-estimated (EagleEye uses ~20)."""
    finetune_steps: int = 0
    """SGD steps after recalibration (K); 0 scores the recalibrated network as is."""
    lr: float = 0.01
    """Initial learning rate of the fine-tune, decayed to 0 by a cosine schedule over the steps."""
    momentum: float = 0.9
    """SGD (Nesterov) momentum."""
    weight_decay: float = 5e-4
    """L2 penalty on every weight."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing (as in the baseline recipe)."""
    channels_last: bool = True
    """Memory format; channels_last runs convolutions faster on the CPU here (measured)."""
    distill: float = 0.0
    """Share of the fine-tune's loss that matches the dense teacher's softened logits (KL at
    `temperature`, scaled by its square as Hinton et al. do), the rest cross-entropy on labels:
    NViT recovers pruned ViTs this way. 0 (or no teacher given): labels only."""
    temperature: float = 2.0
    """Softening temperature of the distillation term."""


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, num_batches: int,
                   device: torch.device, channels_last: bool = True) -> int:
    """Re-estimate every BatchNorm's running statistics on `num_batches` of (images, labels).

    The statistics are reset and averaged cumulatively (momentum None) over the batches, with only
    the BatchNorm layers in train mode (dropout stays off); the model ends in eval mode with its
    original momenta. Returns the number of batches used (0 leaves the statistics untouched).
    """
    norms = _batch_norms(model)
    if not norms or num_batches <= 0:
        model.eval()
        return 0
    fmt = memory_format(device, channels_last)
    model.to(device, memory_format=fmt)
    momenta = [bn.momentum for bn in norms]
    model.eval()
    used = 0
    try:
        for x, _ in batches:
            if used >= num_batches:
                break
            if used == 0:  # reset only once data is there: empty batches must not wipe the stats
                for bn in norms:
                    bn.reset_running_stats()
                    bn.momentum = None
                    bn.train()
            model(x.to(device, memory_format=fmt))
            used += 1
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    if used < num_batches:
        # warnings (not logging): shown once per process, not once per search episode.
        warnings.warn(f"BatchNorm recalibrated on {used} batches instead of {num_batches} "
                      "(the training data is smaller)", stacklevel=2)
    return used


def _cycle(batches: Iterable) -> Iterator:
    """Repeat `batches` forever; a one-shot iterator is replayed from the items it gave."""
    one_shot = iter(batches) is batches
    seen = []
    for batch in batches:
        if one_shot:
            seen.append(batch)
        yield batch
    source = seen if one_shot else batches
    while True:
        empty = True
        for batch in source:
            empty = False
            yield batch
        if empty:
            raise ValueError("fine-tuning needs at least one batch")


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                      config: RecoveryConfig) -> torch.Tensor:
    """(1 - distill) x cross-entropy on labels + distill x T^2 x KL(teacher || student) at T.

    >>> x = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
    >>> float(distillation_loss(x, y, x, RecoveryConfig(distill=1.0, label_smoothing=0.0)))
    0.0
    """
    hard = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    t = config.temperature
    soft = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t
    return (1 - config.distill) * hard + config.distill * soft


def finetune(model: nn.Module, batches: Iterable, steps: int, config: RecoveryConfig,
             device: torch.device, teacher: nn.Module | None = None) -> list[float]:
    """`steps` SGD (Nesterov, cosine-decayed) steps on `batches`, cycled if they run out; with a
    `teacher` (the dense network) and `config.distill` > 0 the loss also matches its logits.

    Returns the loss of every step; the model ends in eval mode.
    """
    if steps <= 0:
        return []
    fmt = memory_format(device, config.channels_last)
    model.to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    distill = teacher is not None and config.distill > 0
    if distill:
        teacher.to(device, memory_format=fmt).eval()
    losses = []
    model.train()
    with torch.enable_grad():
        for _, (x, y) in zip(range(steps), _cycle(batches), strict=False):
            x = x.to(device, memory_format=fmt)
            logits = model(x)
            if distill:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = distillation_loss(logits, y.to(device), teacher_logits, config)
            else:
                loss = F.cross_entropy(logits, y.to(device),
                                       label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    model.zero_grad(set_to_none=True)
    model.eval()
    return losses


def recover(model: nn.Module, train_batches: Iterable, config: RecoveryConfig,
            device: torch.device, teacher: nn.Module | None = None) -> list[float]:
    """Recalibrate BatchNorm on the first `bn_batches` batches, then fine-tune `finetune_steps`.

    When `train_batches` is a sequence longer than `bn_batches`, the fine-tune uses the batches
    after those (fresh images); otherwise it cycles through all of them. Returns the step losses.
    """
    recalibrate_bn(model, train_batches, config.bn_batches, device, config.channels_last)
    rest = train_batches
    if isinstance(train_batches, Sequence) and len(train_batches) > config.bn_batches:
        rest = train_batches[config.bn_batches:]
    return finetune(model, rest, config.finetune_steps, config, device, teacher)
