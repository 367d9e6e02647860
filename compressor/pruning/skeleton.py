"""Channel pruning by coupled groups: the units an agent decides on, their shapes, the pruner.

A *unit* is one of torch-pruning's coupled channel groups: the out channels of one or more layers
that must shrink together (a ResNet residual stream, a MobileNet expand conv and its depthwise
conv), plus the in channels of every consumer. A policy gives each unit a pruning ratio,
`{name: ratio}`; units left out keep all their channels.

We decide the kept channel counts ourselves (`kept_count`) and make torch-pruning remove exactly
that many channels (ranked by importance, lowest first), so `Skeleton` can predict the pruned
network's layer shapes without pruning anything. For any model, input x and policy:

    skeleton = build_skeleton(model, x, PruningConfig())  # trace_skeleton, checked by real prunes
    policy = skeleton.policy_from_vector([0.5] * len(skeleton.units))
    pruned = apply_policy(model, policy, x, PruningConfig())
    assert skeleton.layer_shapes(policy) == measure_layer_shapes(pruned, x)
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import re
import signal
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch_pruning as tp
from torch import nn

from compressor.errors import UserError
from compressor.pruning.config import PruningConfig
from compressor.pruning.gates import ChannelGraph
from compressor.pruning.segments import (
    ROOT_TYPES,
    Segment,
    Segmented,
    segment_group,
    segments_of,
    widen_groups,
)
from compressor.pruning.shapes import LayerShape, measure_layer_shapes
from compressor.pruning.splits import equal_split_roots, repair_splits
from compressor.zoo.models import classifier_name

log = logging.getLogger(__name__)

class Unit(NamedTuple):
    """One coupled channel group: one agent decision."""

    index: int  # position in graph order (input to output)
    name: str  # qualified name of torch-pruning's root layer of the group
    kind: str  # "residual", "depthwise", "conv" or "linear"; "heads", "mlp", "block" (transformer)
    channels: int  # out channels of the group, dense (heads; hidden width; 1 for a block)
    in_channels: int  # of the root layer
    kernel: int  # of the root layer; the larger side of a non-square kernel (one state feature)
    stride: int  # likewise the larger of the two strides
    macs: int  # dense MACs of the layers whose in or out channels the unit changes
    params: int  # dense params of those layers


def kept_count(channels: int, step: int, ratio: float) -> int:
    """Channels kept when pruning `ratio` of `channels`: the allowed count nearest to the target.

    Allowed counts are the multiples of `step` up to `channels`, and `channels` itself; ties keep
    more. A unit no larger than `step` is never pruned. Non-increasing in `ratio`; 0 keeps all.

    >>> [kept_count(64, 8, 0.5), kept_count(10, 8, 0.0), kept_count(10, 8, 0.5)]
    [32, 10, 8]
    >>> [kept_count(24, 8, 0.5), kept_count(1280, 8, 0.001)]  # a tie keeps more
    [16, 1280]
    """
    if channels <= step:
        return channels
    target = channels * (1.0 - ratio)
    lower = max(step, int(target // step) * step)
    upper = min(channels, lower + step)
    return upper if upper - target <= target - lower else lower


class Exclusion(NamedTuple):
    """A coupled group left dense and out of the search, and why."""

    name: str  # root layer of the group, as a unit would be named
    reason: str
    channels: int  # out channels of the group, dense
    macs: int  # dense MACs of the layers whose in or out channels the group sets


Term = tuple[int, int, int]
"""(unit, segment, layer channels per unit channel): one segment of a unit sets this many of a
layer's in or out channels per kept channel (2 for a ghost module's concat of a conv and its
cheap depthwise copy, a flatten's spatial size for a classifier)."""


class _Layer(NamedTuple):
    dense: LayerShape
    out_terms: tuple[Term, ...]  # the unit segments whose pruning removes its out channels
    in_terms: tuple[Term, ...]  # likewise its in channels
    depthwise: bool  # in channels and groups follow the out channels


class Skeleton:
    """Units and the layer graph of one model: predicts shapes and costs of any policy, fast.

    Pure Python over precomputed tables (no torch): the budget wall calls it hundreds of times per
    episode. `layers` mirror `measure_layer_shapes` (same names, same order).
    """

    def __init__(self, units: Sequence[Unit], segments: Sequence[Sequence[Segment]],
                 layers: Sequence[_Layer], excluded: Sequence[Exclusion] = ()):
        self.units = tuple(units)
        self.excluded = tuple(excluded)
        """Groups kept dense, with the reason: the backend cannot prune them as predicted."""
        self.names = tuple(u.name for u in self.units)
        self.dense_shapes = [layer.dense for layer in layers]
        self._index = {name: i for i, name in enumerate(self.names)}
        self._segments = tuple(tuple(parts) for parts in segments)
        """Per unit, its segments (one for a unit whose layers all see every channel)."""
        self._layers = tuple(layers)
        # Flat per-layer constants for the cost loops, which run hundreds of times per episode.
        self._costs = [(d.kernel_area * d.out_pixels, d.kernel_area, d.bias)
                       for d in self.dense_shapes]

    def _cuts(self, policy: dict[str, float]) -> list[list[int]]:
        """Channels removed per unit and segment."""
        cuts = [[0] * len(parts) for parts in self._segments]
        for name, ratio in check_policy(policy, self._index).items():
            i = self._index[name]
            cuts[i] = [s.channels - kept_count(s.channels, s.step, ratio)
                       for s in self._segments[i]]
        return cuts

    def kept_vector(self, policy: dict[str, float]) -> list[int]:
        """Kept channels per unit, in unit order."""
        return [u.channels - sum(c * s.width for c, s in zip(cut, parts, strict=True))
                for u, cut, parts in zip(self.units, self._cuts(policy), self._segments,
                                         strict=True)]

    def layer_units(self) -> list[str | None]:
        """Per layer (`dense_shapes` order), the unit setting its output channels (None: none)."""
        return [self.names[layer.out_terms[0][0]] if layer.out_terms else None
                for layer in self._layers]

    def kept_channels(self, policy: dict[str, float]) -> dict[str, int]:
        """Kept channels per unit name (every unit, pruned or not)."""
        return dict(zip(self.names, self.kept_vector(policy), strict=True))

    def _channels_of(self, policy: dict[str, float]) -> list[tuple[int, int, int]]:
        """(in channels, out channels, groups) of every layer under `policy`."""
        cuts = self._cuts(policy)
        rows = []
        for dense, out_terms, in_terms, depthwise in self._layers:
            out = dense.out_channels
            for unit, segment, per_channel in out_terms:
                out -= per_channel * cuts[unit][segment]
            if depthwise:
                rows.append((out, out, out))
                continue
            in_channels = dense.in_channels
            for unit, segment, per_channel in in_terms:
                in_channels -= per_channel * cuts[unit][segment]
            rows.append((in_channels, out, dense.groups))
        return rows

    def layer_shapes(self, policy: dict[str, float]) -> list[LayerShape]:
        """The shapes `measure_layer_shapes` will read off `apply_policy(model, policy, ...)`."""
        return [d._replace(in_channels=i, out_channels=o, groups=g)
                for d, (i, o, g) in zip(self.dense_shapes, self._channels_of(policy), strict=True)]

    def macs(self, policy: dict[str, float]) -> int:
        """Multiply-accumulates per image of the pruned network (conv and linear layers)."""
        return sum(per_weight * (i // g) * o for (per_weight, _, _), (i, o, g)
                   in zip(self._costs, self._channels_of(policy), strict=True))

    def params(self, policy: dict[str, float]) -> int:
        """Conv and linear parameters of the pruned network (BatchNorm excluded)."""
        return sum(k2 * (i // g) * o + (o if bias else 0) for (_, k2, bias), (i, o, g)
                   in zip(self._costs, self._channels_of(policy), strict=True))

    def kept_dense(self) -> dict[str, str]:
        """The groups kept dense (`excluded`): name -> why (what a report and policy file say)."""
        return {e.name: e.reason for e in self.excluded}

    def setting(self, layer: str, side: str) -> list[str]:
        """The units that set the `side` ("out" or "in") channels of the named layer."""
        found = [term[0] for layer_ in self._layers if layer_.dense.name == layer
                 for term in (layer_.out_terms if side == "out" or layer_.depthwise
                              else layer_.in_terms)]
        return [self.names[i] for i in dict.fromkeys(found)]

    def without(self, reasons: dict[str, str]) -> Skeleton:
        """This skeleton with the named units kept dense (their layers keep every channel) and
        listed in `excluded` with their reasons."""
        kept = [u for u in self.units if u.name not in reasons]
        index = {u.index: i for i, u in enumerate(kept)}

        def remap(terms: tuple[Term, ...]) -> tuple[Term, ...]:
            return tuple((index[u], s, m) for u, s, m in terms if u in index)

        layers = [layer._replace(out_terms=remap(layer.out_terms), in_terms=remap(layer.in_terms))
                  for layer in self._layers]
        gone = [Exclusion(u.name, reasons[u.name], u.channels, u.macs)
                for u in self.units if u.name in reasons]
        return Skeleton([u._replace(index=index[u.index]) for u in kept],
                        [self._segments[u.index] for u in kept], layers,
                        self.excluded + tuple(gone))

    def policy_from_vector(self, ratios: Sequence[float]) -> dict[str, float]:
        """`{unit name: ratio}` from ratios in unit order."""
        if len(ratios) != len(self.names):
            raise ValueError(f"{len(ratios)} ratios for {len(self.names)} units")
        return dict(zip(self.names, (float(r) for r in ratios), strict=True))


PRECISION = "int8:"
"""Prefix of a policy's precision entries: `{"int8:" + unit: 1.0}` runs the layers whose output
channels the unit sets in INT8, 0.0 keeps them FP32 (`--quantize searched`, where the agent chooses
them). A policy without them leaves precisions to the latency model."""


def precision_key(unit: str) -> str:
    return PRECISION + unit


def unit_precisions(policy: dict[str, float]) -> dict[str, bool]:
    """The policy's precision entries: unit name -> whether its layers run INT8."""
    return {name[len(PRECISION):]: value >= 0.5 for name, value in policy.items()
            if name.startswith(PRECISION)}


def precision_entries(policy: dict[str, float]) -> dict[str, float]:
    """The policy's precision entries as they are stored (`precision_key(unit)` -> 1.0 or 0.0)."""
    return {name: value for name, value in policy.items() if name.startswith(PRECISION)}


def pruning_ratios(policy: dict[str, float]) -> dict[str, float]:
    """The policy without its precision entries: unit name -> pruning ratio."""
    return {name: ratio for name, ratio in policy.items() if not name.startswith(PRECISION)}


def check_policy(policy: dict[str, float], valid: Iterable[str]) -> dict[str, float]:
    """The policy's pruning ratios, or a one-line UserError naming the unknown unit or bad value."""
    for name, value in policy.items():
        unit = name[len(PRECISION):] if name.startswith(PRECISION) else name
        if unit not in valid:
            raise UserError(f"unknown unit {unit!r} in policy; valid units: {', '.join(valid)}")
        if unit != name and value not in (0.0, 1.0):
            raise UserError(f"precision {value} for unit {unit!r} must be 1 (INT8) or 0 (FP32)")
        if unit == name and not 0.0 <= value < 1.0:
            raise UserError(f"pruning ratio {value} for unit {name!r} is outside [0, 1)")
    return pruning_ratios(policy)


# --- tracing -------------------------------------------------------------------------------------


class _Traced(NamedTuple):
    graph: tp.DependencyGraph
    groups: dict[str, tp.Group]  # root name -> group with all indices, torch-pruning's order
    channel_groups: dict[str, int]  # root name -> groups every kept count must split evenly into
    segments: dict[str, Segmented]  # root name -> its channels as segments


def _ignored_modules(model: nn.Module, config: PruningConfig) -> list[nn.Module]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, ROOT_TYPES)}
    for name in config.ignored_layers:
        if name not in layers:
            close = difflib.get_close_matches(name, list(layers), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "pass a Conv2d/Linear name"
            raise UserError(f"ignored layer {name!r} is not a Conv2d/Linear of "
                            f"{type(model).__name__}: {hint}")
    head = classifier_name(model)
    return [layers[name] for name in {head, *config.ignored_layers} if name in layers]


def _is_depthwise(module: nn.Module) -> bool:
    return tp.ops.module2type(module) == tp.ops.OPTYPE.DEPTHWISE_CONV


def _channel_groups(graph: tp.DependencyGraph, group: tp.Group) -> int:
    """Grouped convs (and GroupNorm) need the same channels removed from every group, as in
    MetaPruner; the lcm keeps every member's grouping even. Depthwise convs drop groups instead."""
    result = 1
    for dep, _ in group:
        module = dep.target.module
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or not isinstance(module, nn.Module) or _is_depthwise(module):
            continue
        if graph.is_out_channel_pruning_fn(dep.handler):
            count = getattr(pruner, "get_out_channel_groups", lambda m: 1)(module)
        else:
            count = getattr(pruner, "get_in_channel_groups", lambda m: 1)(module)
        result = math.lcm(result, count or 1)
    return result


_LOGGED_ONCE: set[str] = set()
"""torch-pruning warnings already logged by this process (a search traces a model many times)."""
_ONCE_PREFIXES = ("Unwrapped parameters detected",)


def _pass_on(caught: list[warnings.WarningMessage]) -> None:
    """Re-issue the tracer's warnings; the ones it repeats on every trace (convnext_tiny's
    "Unwrapped parameters", 15 times a run) are logged once per process instead."""
    for record in caught:
        text = str(record.message)
        if text.startswith(_ONCE_PREFIXES):
            # The names come from a set: their order changes from one copy of the model to the next.
            key = " ".join(sorted(re.findall(r"'([^']*)'", text))) or text
            if key not in _LOGGED_ONCE:
                _LOGGED_ONCE.add(key)
                log.warning("torch-pruning: %s", " ".join(text.split()))
            continue
        warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)


TRACE_SECONDS = 90.0
"""Longest the tracer may take. On windowed attention (swin_t, torch-pruning issues 430 and 527)
its grouping loop never ends and grows by ~85 MB/s until the OOM killer stops it (24 GiB in
282 s); the slowest CNN traced here, densenet201, takes 7 s on a 2-core Xeon (3-5x that on AVX2)."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after `seconds`, and again every second until it leaves:
    torch-pruning's tracer runs the model inside a bare `except:`, which would swallow a single
    alarm and let the endless loop go on (SIGALRM: main thread only; elsewhere, e.g. in a worker
    thread, the block runs unbounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"grouping did not finish in {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _refuse_endless_tracing(model: nn.Module) -> None:
    """Architectures known to send the tracer into its endless loop, refused without waiting for
    the time limit: torchvision's shifted-window attention (every swin_*, seen here)."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    if any(isinstance(m, ShiftedWindowAttention) for m in model.modules()):
        raise UserError(f"torch-pruning cannot trace {type(model).__name__} (its shifted-window "
                        "attention sends torch-pruning's grouping into an endless loop); choose "
                        "another model")


def trace(model: nn.Module, example_input: torch.Tensor, config: PruningConfig,
          time_limit: float = TRACE_SECONDS) -> _Traced:
    """torch-pruning's graph and coupled groups of `model` (which the tracer puts in eval mode);
    a tracer that fails, or runs past `time_limit` seconds, is a UserError."""
    _refuse_endless_tracing(model)
    ignored = _ignored_modules(model, config)
    try:
        # The tracer follows autograd; its warnings are recorded and handed to `_pass_on`.
        with torch.enable_grad(), warnings.catch_warnings(record=True) as caught, \
                _time_limit(time_limit):
            for prefix in _ONCE_PREFIXES:  # dedup is ours, whatever the caller's filters say
                warnings.filterwarnings("always", message=prefix)
            graph = ChannelGraph().build_dependency(model, example_inputs=example_input)
            repair_splits(graph)
            groups = list(graph.get_all_groups(ignored_layers=ignored,
                                               root_module_types=list(ROOT_TYPES)))
    except Exception as exc:  # the tracer fails deep inside on unsupported ops
        reason = " ".join(str(exc).split()) or "no message"
        raise UserError(f"torch-pruning cannot trace {type(model).__name__} "
                        f"({type(exc).__name__}: {reason[:200]}); channel reshapes other than a "
                        "transposed shuffle and attention are unsupported, choose another model") from None
    _pass_on(caught)
    by_root = widen_groups(graph, {graph._module2name[g[0].dep.target.module]: g for g in groups},
                           ignored)
    channel_groups = {n: _channel_groups(graph, g) for n, g in by_root.items()}
    return _Traced(graph, by_root, channel_groups,
                   {n: segment_group(graph, g, channel_groups[n], graph.shuffles)
                    for n, g in by_root.items()})


def _tabulate(root: str, group: tp.Group, segmented: Segmented,
              outs: dict[str, list[tuple[str, int, int]]],
              ins: dict[str, list[tuple[str, int, int]]]) -> tuple[list[str], bool]:
    """Record in `outs` and `ins` which segments of the unit `root` set which layers' out and in
    channels; return the layers whose out channels it sets, and whether a residual add joins them."""
    added = any(isinstance(dep.target.module, tp.ops._ElementWiseOp)
                and str(dep.target.module._grad_fn).startswith("Add") for dep, _ in group)
    out_layers = []
    for layer, out, segments, per_class in segmented.members:
        (outs if out else ins).setdefault(layer, []).extend(
            (root, s, per_class) for s in segments)
        if out:
            out_layers.append(layer)
    return out_layers, added


def _kind(model: nn.Module, root: str, out_layers: Sequence[str], added: bool) -> str:
    plain = [n for n in out_layers if not _is_depthwise(model.get_submodule(n))]
    return ("residual" if added and len(plain) > 1
            else "depthwise" if len(plain) < len(out_layers)
            else "linear" if isinstance(model.get_submodule(root), nn.Linear) else "conv")


def trace_skeleton(model: nn.Module, example_input: torch.Tensor, config: PruningConfig
                   ) -> Skeleton:
    """Trace `model` once (on a copy) and tabulate which unit sets which layer's channels.

    A unit whose channels torch-pruning maps onto part of a layer (a concatenation, a split) is
    pruned by segment (`segments.segment_group`); one whose mapping cannot be predicted (a residual
    added into part of the channels, parts of a chunk in two units) is kept dense
    (`Skeleton.excluded`). Nothing is pruned here: `pruning.build_skeleton` (in `verify`) also
    checks the prediction against real prunes.
    """
    example_input = example_input.to(next(model.parameters()).device)
    work = copy.deepcopy(model)
    traced = trace(work, example_input, config)
    dense = measure_layer_shapes(work, example_input)
    position = {}
    for i, shape in enumerate(dense):
        position.setdefault(shape.name, i)

    outs: dict[str, list[tuple[str, int, int]]] = {}
    ins: dict[str, list[tuple[str, int, int]]] = {}
    order, kinds = {}, {}
    for root, group in traced.groups.items():
        out_layers, added = _tabulate(root, group, traced.segments[root], outs, ins)
        order[root] = min(position.get(n, len(dense)) for n in out_layers)
        kinds[root] = _kind(work, root, out_layers, added)

    roots = sorted(traced.groups, key=lambda r: (order[r], r))
    index = {r: i for i, r in enumerate(roots)}

    def terms(found: Iterable[tuple[str, int, int]]) -> tuple[Term, ...]:
        return tuple((index[r], s, m) for r, s, m in found)

    layers = [_Layer(shape, terms(outs.get(shape.name, ())), terms(ins.get(shape.name, ())),
                     shape.name in outs and _is_depthwise(work.get_submodule(shape.name)))
              for shape in dense]
    units, segments = [], []
    for i, root in enumerate(roots):
        touched = [layer.dense for layer in layers
                   if any(t[0] == i for t in layer.out_terms + layer.in_terms)]
        shape = next(s for s in dense if s.name == root)
        units.append(Unit(i, root, kinds[root], shape.out_channels, shape.in_channels,
                          max(shape.kernel_h, shape.kernel_w), max(shape.stride_h, shape.stride_w),
                          sum(s.macs for s in touched),
                          sum(s.params for s in touched)))
        segments.append(segments_of(traced.segments[root], traced.channel_groups[root],
                                    config.round_to))
    uneven = {r: seg.reason for r, seg in traced.segments.items() if seg.reason}
    uneven = equal_split_roots(traced.graph, traced.groups) | uneven
    return Skeleton(units, segments, layers).without(uneven)
