"""A skeleton checked against real prunes: prune what can be pruned, keep the rest dense and say why.

`trace_skeleton` predicts every pruned layer's shape from torch-pruning's coupled groups, and
already keeps dense the groups it can see it cannot predict (concatenated segments). Other groups
torch-pruning prunes in ways the prediction does not follow, or into a network that no longer
runs (a split into a cross-stage concat, a user's hard-coded reshape, an exception deep inside
torch-pruning). Rather than refuse the model, the units are really pruned (at 0.5, as an episode
would) and checked: the units a wrong shape implicates, or that a failure is narrowed down to by
halving the set, are kept dense and listed with the reason (`Skeleton.excluded`). The model is
refused only when no unit is left. Each check re-traces the model, so the checks together get a
time limit (`VERIFY_SECONDS`), as the trace has: units still unverified when it passes are kept
dense too.

    skeleton = build_skeleton(model, x, PruningConfig())
    policy = skeleton.policy_from_vector([0.5] * len(skeleton.units))
    assert skeleton.layer_shapes(policy) == measure_layer_shapes(apply_policy(model, policy, x, config), x)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import nn

from compressor.errors import UserError
from compressor.pruning.apply import apply_policy
from compressor.pruning.attention import has_attention
from compressor.pruning.config import PruningConfig
from compressor.pruning.shapes import measure_layer_shapes
from compressor.pruning.skeleton import Skeleton, trace_skeleton
from compressor.pruning.transformer import TransformerSkeleton, build_transformer_skeleton

log = logging.getLogger(__name__)

TRIAL_RATIO = 0.5
"""Pruning ratio every checked unit is pruned at (the middle of the action range)."""

VERIFY_SECONDS = 90.0
"""Longest the checks may take together, after the trace (which has its own `TRACE_SECONDS`); a
check under way when it passes is finished, not interrupted. Each check re-traces the model: on a
2-core Xeon timm's eca_vovnet39b (ECA gates, whose channel reshape torch-pruning expands index by
index) takes 31-46 s a check and regnetz_d8_evos (79 units, nearly all failing alone) over
110 checks of ~2 s; either took over 4 minutes before this limit. Most CNNs check in one pass under
a second (results/coverage)."""


class _OutOfTime(Exception):
    """The checks ran past their time limit."""


class Failure(NamedTuple):
    """Why pruning a set of units did not give the predicted network."""

    reason: str
    units: tuple[str, ...]
    """The units the failure implicates (the ones setting a wrongly shaped layer); empty when the
    failure does not say (an exception), so the set must be narrowed down by halving."""


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:160]}"


def prune_and_compare(skeleton: Skeleton, model: nn.Module, x: torch.Tensor,
                      config: PruningConfig, names: Sequence[str]) -> Failure | None:
    """Prune the `names` units of `model` at TRIAL_RATIO and compare the pruned network's layer
    shapes with `skeleton`'s prediction: None when they agree."""
    policy = {name: TRIAL_RATIO for name in names}
    try:
        pruned = apply_policy(model, policy, x, replace(config, importance="l2"))
    except Exception as exc:  # torch-pruning fails deep inside on groups it cannot index
        return Failure(f"torch-pruning fails to prune it ({_one_line(exc)})", ())
    try:
        measured = measure_layer_shapes(pruned, x)
    except Exception as exc:
        return Failure(f"the network no longer runs once it is pruned ({_one_line(exc)})", ())
    predicted = skeleton.layer_shapes(policy)
    if [s.name for s in predicted] != [s.name for s in measured]:
        return Failure("a different set of layers runs once it is pruned", ())
    wrong = [(want, got) for want, got in zip(predicted, measured, strict=True) if want != got]
    if not wrong:
        return None
    want, got = wrong[0]
    reason = (f"layer {got.name} was pruned to {got.in_channels}->{got.out_channels} channels, "
              f"predicted {want.in_channels}->{want.out_channels}")
    # The units that set the side that came out wrong; none when the prediction kept it dense.
    implicated = {unit for want, got in wrong
                  for side, differs in (("out", want.out_channels != got.out_channels),
                                        ("in", want.in_channels != got.in_channels
                                         or want.groups != got.groups))
                  if differs for unit in skeleton.setting(got.name, side)}
    return Failure(reason, tuple(sorted(implicated)))


def culprits(names: Sequence[str], check: Callable[[Sequence[str]], Failure | None],
             failure: Failure) -> dict[str, str]:
    """The units of `names` (which failed with `failure`) to keep dense, each with its reason:
    the implicated ones, or those a failure is narrowed down to by checking each half."""
    if failure.units:
        return {name: failure.reason for name in failure.units}
    if len(names) == 1:
        return {names[0]: failure.reason}
    found: dict[str, str] = {}
    for half in (names[:len(names) // 2], names[len(names) // 2:]):
        again = check(half)
        if again is not None:
            found |= culprits(half, check, again)
    # Each half prunes fine alone: the failure needs units from both, so all of them stay dense.
    return found or {name: f"{failure.reason}; only together with other units"
                     for name in names}


def build_skeleton(model: nn.Module, example_input: torch.Tensor, config: PruningConfig,
                   verify: bool = True) -> Skeleton | TransformerSkeleton:
    """Trace `model` once (on a copy) and tabulate which unit sets which layer's channels
    (`trace_skeleton`); with `verify`, without the units that do not prune as predicted
    (`verify_skeleton`)."""
    if has_attention(model):  # heads, MLP width and blocks: `pruning.transformer`
        return build_transformer_skeleton(model, example_input, config, verify)
    example_input = example_input.to(next(model.parameters()).device)
    skeleton = trace_skeleton(model, example_input, config)
    return verify_skeleton(skeleton, model, example_input, config) if verify else skeleton


def verify_skeleton(skeleton: Skeleton, model: nn.Module, x: torch.Tensor,
                    config: PruningConfig, time_limit: float = VERIFY_SECONDS) -> Skeleton:
    """`skeleton` without the units that do not prune as it predicts (kept dense, in
    `excluded`); a UserError naming the reasons when no unit is left. Units still unverified
    after `time_limit` seconds of checks are kept dense as well, with that reason."""
    model_name = type(model).__name__
    reasons: dict[str, str] = {}
    deadline, checks = time.monotonic() + time_limit, [0]

    def check(names: Sequence[str]) -> Failure | None:
        if time.monotonic() > deadline:
            raise _OutOfTime
        checks[0] += 1
        return prune_and_compare(skeleton.without(reasons), model, x, config, names)

    remaining = list(skeleton.names)
    try:
        failure = check(remaining) if remaining else None
        while failure is not None and remaining:
            found = culprits(remaining, check, failure)
            reasons |= found
            remaining = [name for name in remaining if name not in found]
            failure = check(remaining) if remaining else None
    except _OutOfTime:
        why = (f"not verified: checking the units did not finish in {time_limit:.0f} s "
               f"({checks[0]} checks, each re-tracing {model_name})")
        reasons |= {name: why for name in remaining if name not in reasons}
    result = skeleton.without(reasons)
    for gone in result.excluded:
        log.warning("%s: unit %s kept dense: %s", model_name, gone.name, gone.reason)
    if not result.units:
        said = "; ".join(f"{e.name}: {e.reason}" for e in result.excluded[:3])
        raise UserError(f"nothing in {model_name} can be pruned as predicted ({said}); "
                        "choose another model")
    return result


__all__ = ["TRIAL_RATIO", "VERIFY_SECONDS", "Failure", "build_skeleton", "culprits", "prune_and_compare",
           "verify_skeleton"]
