"""Channel importance: which channels of a unit go first (torch-pruning's criteria, per unit).

Criteria are registered by name in `IMPORTANCES` (name -> factory taking the config's seed); a
torch-pruning `Importance` object is used as given. Adding a criterion is one entry there: the
config's check and the CLI's choices read the registry.
"""

from __future__ import annotations

import types
import zlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from compressor.errors import UserError

Criterion = Callable[[tp.Group], torch.Tensor | None]
"""A torch-pruning importance: a coupled group -> one score per channel (higher is kept), or None
when it cannot score the group (then L1 magnitude does)."""


class RandomImportance:
    """Random scores, drawn per unit in `unit_importance` from `seed` and the unit's name, so a
    unit's choice does not depend on which other units are pruned."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, group: tp.Group) -> None:
        return None  # the group does not carry its unit's name: `unit_importance` draws

    def unit_scores(self, name: str, channels: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed ^ zlib.crc32(name.encode()))
        return torch.rand(channels, generator=gen)


IMPORTANCES: dict[str, Callable[[int], Criterion]] = {
    "l1": lambda seed: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda seed: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": lambda seed: tp.importance.BNScaleImportance(),
    "taylor": lambda seed: tp.importance.GroupTaylorImportance(),
    "random": RandomImportance,
}
"""The named channel criteria, name -> factory of the scorer from `PruningConfig.seed`: l1 / l2
(weight magnitude over the whole group), bn (BatchNorm scale; L1 for units without BatchNorm),
taylor (|weight x gradient| on a few batches), random (seeded per unit)."""


def check_importance(importance: str | Criterion) -> None:
    """A one-line UserError unless `importance` is a registered name or a callable plug-in."""
    if isinstance(importance, str) or not callable(importance):
        if importance not in IMPORTANCES:
            raise UserError(f"unknown importance {importance!r}; choose one of "
                            f"{', '.join(IMPORTANCES)} or pass a torch-pruning Importance")


def criterion_for(importance: str | Criterion, seed: int = 0) -> Criterion:
    """The scorer of `importance`: a plug-in object as given, a name from `IMPORTANCES`."""
    if not isinstance(importance, str):
        return importance  # a torch-pruning Importance (validated callable in the config)
    return IMPORTANCES[importance](seed)


def needs_gradients(importance: str | Callable) -> bool:
    """Whether the criterion reads gradients (taylor, by name or as torch-pruning's object): the
    caller must run `accumulate_gradients` on calibration batches before scoring."""
    return importance == "taylor" or isinstance(importance, tp.importance.GroupTaylorImportance)


def importance_label(importance: str | Callable) -> str:
    """A stable text for the saved config and policy files: the name, or a plug-in's class and
    its plain settings (`str()` of an object holds its memory address, so a resumed search would
    see a "different configuration").

    >>> importance_label(tp.importance.GroupMagnitudeImportance(p=1)).split("(")[0]
    'torch_pruning.pruner.importance.GroupMagnitudeImportance'
    """
    if isinstance(importance, str):
        return importance
    if isinstance(importance, types.FunctionType):
        return f"{importance.__module__}.{importance.__qualname__}"
    kind = type(importance)
    plain = {k: v for k, v in sorted(getattr(importance, "__dict__", {}).items())
             if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))}
    settings = ", ".join(f"{k}={v!r}" for k, v in plain.items())
    return f"{kind.__module__}.{kind.__qualname__}({settings})"


def unit_importance(name: str, group: tp.Group, channel_groups: int,
                    criterion: Criterion) -> torch.Tensor:
    """Mean-normalised score per channel of one channel group (channels / channel_groups long)."""
    channels = len(group[0].idxs)
    if isinstance(criterion, RandomImportance):
        scores = criterion.unit_scores(name, channels)
    else:
        scores = criterion(group)
        if scores is None:  # e.g. bn on a unit without BatchNorm
            scores = tp.importance.GroupMagnitudeImportance(p=1)(group)
    scores = torch.nan_to_num(scores.detach().float().cpu(), nan=0.0)
    return scores.view(channel_groups, -1).mean(dim=0)


def accumulate_gradients(model: nn.Module, batches: Iterable | None, count: int,
                          device: torch.device) -> None:
    if batches is None:
        raise UserError("taylor importance needs calibration batches; pass training data or "
                        "choose --importance l2")
    model.zero_grad(set_to_none=True)
    seen = 0
    with torch.enable_grad():
        for x, y in batches:
            if seen >= count:
                break
            # Eval mode: BatchNorm must not update the running stats of the network we return.
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            seen += 1
    if seen == 0:
        raise UserError("taylor importance got no calibration batches; pass training data")


def prune_indices(scores: torch.Tensor, channel_groups: int, kept: int) -> list[int]:
    """Lowest-ranked positions in one group-slice, repeated in every channel group."""
    size = len(scores)
    drop = torch.argsort(scores, stable=True)[: size - kept // channel_groups]
    return sorted(int(i) + g * size for g in range(channel_groups) for i in drop)
