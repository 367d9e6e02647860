"""Supervised training and evaluation: the baseline pretrain and the final fine-tune share this loop."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import UserError
from compressor.flags import flag
from compressor.io import atomic

log = logging.getLogger(__name__)

DIVERGENCE_FACTOR = 3.0
"""Training has diverged when the recent mean loss exceeds this multiple of the starting loss. A
healthy run's loss only falls after the warm-up; 3x the ~ln(classes) start is far beyond noise."""
REFERENCE_STEPS = 5
"""The mean loss of this many first steps is the starting loss."""
RECENT_STEPS = 5
"""Steps averaged before comparing, so one bad batch is not taken for divergence."""
LR_RETRIES = 3
"""A run that diverges is started again from the same weights at a quarter of the learning rate,
up to this many times (0.2 -> 0.05 -> 0.0125 -> 0.003), before training gives up."""
LR_STEP_DOWN = 4.0


class Diverged(UserError):
    """Training diverged (`LossWatch`): the learning rate is too high for this network."""


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained. Defaults are the measured baseline recipe (see README)."""

    epochs: Annotated[int, flag("--epochs")] = 6
    """Passes over the train split. The baseline recipe's accuracy curve flattens by the last one."""
    batch_size: int = 256
    """256 trains ~1.3x more images per second than 128 on 2 CPU cores (measured)."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """SGD with Nesterov momentum (the CNN recipe), or AdamW (what vision transformers train
    with: from scratch at SGD's rates they do not learn; `zoo.embedded` recipes pick it)."""
    max_lr: Annotated[float, flag("--lr")] = 0.2
    """Peak learning rate of the one-cycle schedule (SGD, Nesterov momentum). Measured against 0.4
    (same seed, 6 epochs): resnet18 92.04% vs 91.73%, mobilenet_v2 91.70% vs 89.75%; at 0.4
    mobilenet_v2's BatchNorm statistics lag its weights (21.6% test after epoch 1)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """L2 penalty on every weight."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing."""
    warmup_fraction: float = 0.25
    """Share of the steps spent rising to `max_lr` before the cosine decay."""
    augment: bool = True
    """Random horizontal flips (cheap; crops slowed convergence of short schedules here)."""
    channels_last: bool = True
    """Memory format: channels_last trains ~12% faster on the CPU here."""
    seed: Annotated[int, flag("--seed")] = 0
    """Seed of initialisation and batch order."""


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_top1: float
    test_top1: float | None
    seconds: float
    images_per_second: float


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    """Each learning rate tried, in order: {"max_lr", "diverged"} (the divergence message, or
    None for the run that finished)."""

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.history)


def loss_diverged(loss: float, recent_mean: float, reference: float | None,
                  past_warmup: bool, factor: float = DIVERGENCE_FACTOR) -> bool:
    """Whether training has diverged: the latest `loss` is NaN or infinite (at any step), or, once
    the warm-up is over, the mean of the recent steps exceeds `factor` x the `reference` (the
    mean of the first steps; None while those are still being collected).

    >>> loss_diverged(float("nan"), 2.3, None, past_warmup=False)
    True
    >>> loss_diverged(9.0, 8.0, 2.3, past_warmup=False), loss_diverged(9.0, 8.0, 2.3, True)
    (False, True)
    >>> loss_diverged(1.0, 1.1, 2.3, past_warmup=True)
    False
    """
    if not math.isfinite(loss):
        return True
    return past_warmup and reference is not None and recent_mean > factor * reference


class LossWatch:
    """Follows a run's losses step by step and stops it, with a UserError, once it diverges
    (`loss_diverged`). One watch spans every epoch of a run; `warmup_steps` are exempt from the
    comparison with the starting loss (the learning rate is still rising), not from NaN."""

    def __init__(self, max_lr: float, warmup_steps: int = 0):
        self.max_lr = max_lr
        self.warmup_steps = warmup_steps
        self.step = 0
        self._first: list[float] = []
        self._recent: deque[float] = deque(maxlen=RECENT_STEPS)

    @property
    def reference(self) -> float | None:
        """Mean loss of the first `REFERENCE_STEPS` steps, once they have run."""
        return sum(self._first) / len(self._first) if len(self._first) == REFERENCE_STEPS else None

    def observe(self, loss: float) -> None:
        self.step += 1
        if len(self._first) < REFERENCE_STEPS and math.isfinite(loss):
            self._first.append(loss)
        self._recent.append(loss)
        past_warmup = (self.step > self.warmup_steps
                       and self.step >= REFERENCE_STEPS + RECENT_STEPS)
        recent_mean = sum(self._recent) / len(self._recent)
        if loss_diverged(loss, recent_mean, self.reference, past_warmup):
            shown = loss if not math.isfinite(loss) else recent_mean
            raise Diverged(f"training diverged at step {self.step} (loss {shown:.4g}); lower "
                           f"the learning rate, e.g. --lr {self.max_lr / 4:.3g}")


def pretraining_warning(top1: float, num_classes: int) -> str | None:
    """A one-line warning when a pretrained baseline's test top-1 (percent) is far below what the
    recipe reaches, else None.

    Rule: warn below a quarter of the way from chance to perfect, chance + (100 - chance) / 4
    (10 classes: 32.5%; 100 classes: 25.75%). The recipe reaches ~90% on Fashion-MNIST and CIFAR-10
    in 6 epochs; a baseline under the line is mostly noise, and pruning it measures little.

    >>> pretraining_warning(12.0, 10).startswith("pretraining reached only 12.0%")
    True
    >>> pretraining_warning(85.0, 10) is None
    True
    """
    chance = 100.0 / max(num_classes, 1)
    floor = chance + (100.0 - chance) / 4
    if top1 >= floor:
        return None
    return (f"pretraining reached only {top1:.1f}% test top-1 ({num_classes} classes, chance "
            f"{chance:.1f}%, expected well above {floor:.1f}%): the baseline is far below what "
            "the recipe reaches; train longer (--epochs, --train-size) or lower --lr")


def main_output(output) -> torch.Tensor:
    """The logits of a forward pass: the tensor itself, or the main output of models that also
    return auxiliary heads in train mode (torchvision's GoogLeNetOutputs / InceptionOutputs)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the model returned a {type(output).__name__}, not logits")


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int, max_lr: float,
              warmup_fraction: float) -> torch.optim.lr_scheduler.OneCycleLR:
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=max(total_steps, 1),
        pct_start=warmup_fraction, anneal_strategy="cos", div_factor=10, final_div_factor=100)


def memory_format(device: torch.device, channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.no_grad()
def evaluate_top1(model: nn.Module, batches: Iterable, device: torch.device,
                  channels_last: bool = True) -> float:
    """Top-1 accuracy in percent over `batches` of (images, labels)."""
    model.eval()
    fmt = memory_format(device, channels_last)
    correct = total = 0
    for x, y in batches:
        logits = model(x.to(device, memory_format=fmt))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)


def train_steps(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer,
                scheduler, config: TrainConfig, device: torch.device,
                on_step: Callable[[float, float], None] | None = None,
                watch: LossWatch | None = None) -> tuple[float, float]:
    """One pass over `batches`; returns mean loss and train top-1 of the pass.

    Every loss is given to `watch` (a fresh `LossWatch` without warm-up when None), which raises
    a UserError once training diverges, before that step's update is applied.
    """
    model.train()
    watch = watch if watch is not None else LossWatch(config.max_lr)
    fmt = memory_format(device, config.channels_last)
    loss_sum = correct = seen = 0.0
    for x, y in batches:
        x, y = x.to(device, memory_format=fmt), y.to(device)
        logits = main_output(model(x))
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        watch.observe(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += float((logits.argmax(1) == y).sum())
        seen += len(y)
        if on_step is not None:
            on_step(float(loss.detach()), 100.0 * correct / seen)
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.max_lr,
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.max_lr, momentum=config.momentum,
                           nesterov=True, weight_decay=config.weight_decay)


def train(model: nn.Module, train_split, test_split, config: TrainConfig, device: torch.device,
          resume_path: str | Path | None = None, progress: bool = True) -> TrainResult:
    """Train `model` in place with a one-cycle schedule, evaluating on `test_split` after each epoch.

    A run that diverges (`LossWatch`) starts again from the weights it was given at a quarter of
    the learning rate, up to `LR_RETRIES` times; every rate tried is in `TrainResult.attempts`,
    and only a run that diverges at all of them stops, with a UserError. With `resume_path`, see
    `train_once`.
    """
    start = copy.deepcopy(model.state_dict())
    attempts: list[dict] = []
    while True:
        try:
            result = train_once(model, train_split, test_split, config, device, resume_path,
                                progress)
        except Diverged as exc:
            attempts.append({"max_lr": config.max_lr, "diverged": str(exc)})
            if len(attempts) > LR_RETRIES:
                tried = ", ".join(f"{a['max_lr']:.3g}" for a in attempts)
                raise UserError(f"training diverged at every learning rate tried ({tried}): "
                                f"{exc}") from None
            model.load_state_dict(start)
            config = replace(config, max_lr=config.max_lr / LR_STEP_DOWN)
            log.warning("%s; retrying from the same weights at lr %.3g", exc, config.max_lr)
            continue
        result.attempts = [*attempts, {"max_lr": config.max_lr, "diverged": None}]
        return result


def train_once(model: nn.Module, train_split, test_split, config: TrainConfig,
               device: torch.device, resume_path: str | Path | None = None,
               progress: bool = True) -> TrainResult:
    """One training run at `config`'s learning rate (`train` retries lower ones).

    With `resume_path`, the state after every epoch is saved there (atomically) and a matching
    saved state is picked up, so a killed pretrain loses at most the epoch in flight. A run that
    diverges (`LossWatch`) stops with `Diverged`; a resumed run takes its starting loss from the
    first steps after resuming.
    """
    from tqdm.auto import tqdm

    model.to(device, memory_format=memory_format(device, config.channels_last))
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    scheduler = one_cycle(optimizer, config.epochs * steps_per_epoch, config.max_lr,
                          config.warmup_fraction)
    watch = LossWatch(config.max_lr, warmup_steps=int(config.warmup_fraction * config.epochs
                                                      * steps_per_epoch))
    result, start_epoch = TrainResult(), 0
    if resume_path is not None and Path(resume_path).exists():
        try:
            # Tensors and plain types only: a planted file cannot run code here.
            state = torch.load(resume_path, map_location=device, weights_only=True)
        except Exception:  # truncated, or not ours: start from scratch (it is overwritten)
            state = {}
        if isinstance(state, dict) and state.get("config") == asdict(config):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            result.history = [EpochRecord(**r) for r in state["history"]]
            start_epoch = len(result.history)
            watch.step = start_epoch * steps_per_epoch  # step numbers and warm-up run on

    bar = tqdm(total=config.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               unit="step", disable=not progress, dynamic_ncols=True, desc="train")
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()

        def show(loss: float, top1: float, epoch=epoch) -> None:
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{loss:.3f}",
                            acc=f"{top1:.1f}%", refresh=False)

        batches = train_split.batches(config.batch_size, shuffle=True,
                                      seed=config.seed * 1000 + epoch, augment=config.augment)
        try:
            loss, top1 = train_steps(model, batches, optimizer, scheduler, config, device, show,
                                     watch)
        except Diverged:
            bar.close()
            raise
        seconds = time.perf_counter() - started
        test_top1 = None
        if test_split is not None:
            test_top1 = evaluate_top1(model, test_split.batches(500), device, config.channels_last)
            bar.write(f"epoch {epoch + 1}/{config.epochs}: loss {loss:.3f}, train {top1:.2f}%, "
                      f"test {test_top1:.2f}%, {seconds / 60:.1f} min")
        result.history.append(EpochRecord(epoch + 1, loss, top1, test_top1, seconds,
                                          len(train_split) / seconds))
        if resume_path is not None:
            atomic.torch_save(resume_path, {
                "config": asdict(config), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": [asdict(r) for r in result.history],
            })
    bar.close()
    model.to(memory_format=torch.contiguous_format)
    return result
