"""Channel importance: which channels of a unit go first (torch-pruning's criteria, per unit)."""

from __future__ import annotations

import types
import zlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from compressor.errors import UserError
from compressor.pruning.skeleton import PruningConfig


def criterion_for(config: PruningConfig) -> Callable[[tp.Group], torch.Tensor | None]:
    """The scorer of `config.importance`: a plug-in object as given, a name as torch-pruning's."""
    if not isinstance(config.importance, str):
        return config.importance  # a torch-pruning Importance (validated callable in the config)
    if config.importance == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if config.importance == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if config.importance == "bn":
        return tp.importance.BNScaleImportance()
    if config.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    return lambda group: None  # random: drawn per unit in `unit_importance`


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


def unit_importance(name: str, group: tp.Group, channel_groups: int, criterion,
                     config: PruningConfig) -> torch.Tensor:
    """Mean-normalised score per channel of one channel group (channels / channel_groups long)."""
    channels = len(group[0].idxs)
    if config.importance == "random":
        # Seeded per unit, so a unit's choice does not depend on which other units are pruned.
        gen = torch.Generator().manual_seed(config.seed ^ zlib.crc32(name.encode()))
        scores = torch.rand(channels, generator=gen)
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
