"""How a pruning run counts and chooses channels: `PruningConfig`, in a module of its own so the
skeleton, apply and the policies share it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch

from compressor.errors import UserError
from compressor.flags import REPEATABLE, choices, flag
from compressor.pruning.importance import IMPORTANCES, Criterion, check_importance

Importance = Annotated[str | Criterion, choices(sorted(IMPORTANCES))]
"""A channel criterion: one of IMPORTANCES by name (the command line's choices), or a plug-in."""


def kernel_channel_block() -> int:
    """The channel multiple ONNX Runtime's CPU conv kernels compute in: 16 with AVX-512, else 8.

    Its NCHWc layout pads channels to the vector width, so a count between two multiples costs
    the next one. Measured here (3x3 conv pairs, 8x8 maps, batch 32, AVX-512): 104 channels
    4.13 ms vs 112 4.04 ms, 120 4.61 vs 128 4.63, 136 5.36 vs 144 5.33: pruning 128 to 120 buys
    nothing. With AVX2 the block is 8.
    """
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


@dataclass(frozen=True)
class PruningConfig:
    """How channels are counted and chosen."""

    round_to: Annotated[int, flag("--round-to")] = field(default_factory=kernel_channel_block)
    """Kept channel counts are multiples of it (or a unit's full count); a unit keeps at least
    this many. Default: the CPU kernels' channel block (`kernel_channel_block`)."""
    importance: Annotated[Importance, flag("--importance")] = "l2"
    """Channel ranking: a name from `IMPORTANCES` (l1 / l2: weight magnitude over the whole group,
    bn: BatchNorm scale, L1 for units without BatchNorm, taylor: |weight x gradient| on a few
    batches, random); or a plug-in: any torch-pruning `Importance` (a callable from a `tp.Group`
    to one score per channel, higher kept), e.g. `tp.importance.GroupMagnitudeImportance(p=1)`."""
    ignored_layers: Annotated[tuple[str, ...], flag("--ignore"), REPEATABLE] = ()
    """Qualified names of Conv2d/Linear layers whose out channels are never pruned (the classifier
    is always kept)."""
    depth: Annotated[bool, flag("--depth")] = True
    """Transformer blocks are units too (pruning ratio >= 0.5 removes the block); `--no-depth`
    searches heads and MLP width only (the benchmark's depth ablation, results/vit)."""
    taylor_batches: int = 4
    """Calibration batches whose gradients the taylor criterion accumulates."""
    seed: int = 0
    """Seed of the random criterion (the same policy always gives the same network)."""

    def __post_init__(self) -> None:
        check_importance(self.importance)  # a plug-in is anything callable
        if self.round_to < 1 or self.taylor_batches < 1:
            raise UserError("round_to and taylor_batches must be at least 1")
