"""A coupled group's channels as segments: what lets concatenations and splits be pruned as predicted.

torch-pruning couples every channel of a concatenation with the layers behind it, but maps each
of the group's channels (its root layer's) onto only part of those layers: one input of the
concat, one output of a split. Pruning the group's lowest-ranked channels then removes an
unpredictable share from each part (issue 36: "a.0 was pruned to 32->27, predicted 32->48").
So we split the group's channels into *segments*, the runs that every conv and linear layer of
the group sees whole or not at all, and prune each segment by the unit's ratio, ranked within
the segment: each layer then shrinks by a count the skeleton can predict.

Channels can also be *tied*: a ghost module concatenates a conv's output with a depthwise conv of
it, so a consumer's channels j and j + half both come from the conv's channel j, and must go
together; a channel shuffle (`splits.repair_shuffles`) ties each position across its groups, so
that the shuffled kept channels are still a shuffle. Tied channels form one *class*; segments
are runs of classes. For a plain group every class is one channel and there is one segment.

    segmented = segment_group(graph, group, channel_groups)
    segmented.parts  # per segment, its classes, each the group channels that go together
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch_pruning as tp
from torch import nn

ROOT_TYPES = (nn.Conv2d, nn.Linear)


class Segment(NamedTuple):
    """A run of a unit's channel classes that every layer of the group sees whole or not at all.
    Each segment keeps the unit's ratio of its own classes, rounded to `step`."""

    channels: int  # classes in the segment (group channels, unless some are tied)
    step: int  # kept counts are multiples of it (or all `channels`)
    width: int = 1  # the group's (root layer's) channels per class: 2 where a ghost ties pairs


class Member(NamedTuple):
    """One conv or linear layer of a group, and which segments set its channels on one side."""

    layer: str
    out: bool  # its out channels (also a depthwise conv's in channels); else its in channels
    segments: tuple[int, ...]
    per_class: int  # the layer's channels per class of those segments


class Segmented(NamedTuple):
    """A group's channels as the segments its layers see (`segment_group`)."""

    parts: tuple[tuple[tuple[int, ...], ...], ...]  # per segment, its classes (group channels)
    members: tuple[Member, ...]  # with a reason: the layers, as one segment (for order and cost)
    reason: str  # why the segments cannot be predicted ("" when they can)


def channel_step(channels: int, channel_groups: int, round_to: int) -> int:
    step = math.lcm(channel_groups, round_to)
    return step if channels % channel_groups == 0 else channels  # uneven groups: never prune


def segments_of(segmented: Segmented, channel_groups: int, round_to: int) -> tuple[Segment, ...]:
    """Each segment's class count and the step its kept count is a multiple of."""
    return tuple(Segment(len(p), channel_step(len(p), channel_groups, round_to), len(p[0]))
                 for p in segmented.parts)


def _reached(group: tp.Group) -> dict[tuple, set[tuple[int, int]]]:
    """Every (layer channel, group channel) pair torch-pruning's traversal reaches from the
    group's root, per (node, pruning function), as `get_pruning_group` walks them but before
    it merges them: its merge keeps one group channel per layer channel, which hides ties."""
    dep0 = group[0].dep
    channels = len(group[0].idxs)
    start = [tp._helpers._HybridIndex(idx=i, root_idx=i) for i in range(channels)]
    reached = {(dep0.target, dep0.handler): {(i, i) for i in range(channels)}}
    stack = [(dep0, start)]
    while stack:
        dep, idxs = stack.pop()
        for new_dep in dep.target.dependencies:
            if not new_dep.is_triggered_by(dep.handler):
                continue
            mapped = idxs
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    mapped = mapping(mapped)
            # Only the pairs not reached yet go on (mappings map each channel on its own):
            # through ReXNet's chained partial residuals, whole sets took ~1.6 s a group.
            known = reached.setdefault((new_dep.target, new_dep.handler), set())
            fresh = [i for i in dict.fromkeys(mapped) if (i.idx, i.root_idx) not in known]
            if fresh:
                known.update((i.idx, i.root_idx) for i in fresh)
                stack.append((new_dep, fresh))
    return {key: pairs for key, pairs in reached.items() if pairs}


def _classes(ties: Iterable[set[tuple[int, int]]], channels: int) -> list[int]:
    """Per group channel, the smallest channel tied to it: by one (key, group channel) pair set
    of `ties`, group channels sharing a key (a layer channel reached from both) go together."""
    parent = list(range(channels))

    def find(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for pairs in ties:
        first: dict[int, int] = {}
        for idx, root in pairs:
            a, b = find(first.setdefault(idx, root)), find(root)
            parent[max(a, b)] = min(a, b)
    return [find(c) for c in range(channels)]


def _channels(module: nn.Module, out: bool) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    return module.out_channels if out else module.in_channels


def _unpredictable(graph: tp.DependencyGraph, group: tp.Group, reason: str) -> Segmented:
    members = {(graph._module2name[dep.target.module], graph.is_out_channel_pruning_fn(dep.handler))
               for dep, _ in group if isinstance(dep.target.module, ROOT_TYPES)}
    return Segmented((tuple((c,) for c in range(len(group[0].idxs))),),
                     tuple(Member(name, out, (0,), 1) for name, out in sorted(members)), reason)


def _layer_pairs(graph: tp.DependencyGraph, group: tp.Group, shuffles: dict,
                 ties: list[set[tuple[int, int]]]
                 ) -> dict[tuple[str, bool], set[tuple[int, int]]] | str:
    """Per (conv or linear layer, out side?), the (layer channel, group channel) pairs the
    group reaches; or why they cannot be trusted (torch-pruning maps past a layer's channels).
    Adds to `ties` the group channels each shuffle (`shuffles`: start node -> (groups, width))
    needs pruned together: those at the same position of every shuffle group."""
    channels, root = len(group[0].idxs), group[0].dep.target.module
    layers: dict[tuple[str, bool], set[tuple[int, int]]] = {}
    for (node, handler), pairs in _reached(group).items():
        if node in shuffles:
            ties.append({(idx % shuffles[node][1], r) for idx, r in pairs})
        if not isinstance(node.module, ROOT_TYPES):
            continue
        name, out = graph._module2name[node.module], graph.is_out_channel_pruning_fn(handler)
        size = _channels(node.module, out)
        if max(idx for idx, _ in pairs) >= size or (node.module is root and out
                                                    and size != channels):
            side = "out" if out else "in"
            return (f"torch-pruning maps its {channels} channels beyond the {size} {side} "
                    f"channels of {name}")
        if any(r is None for _, r in pairs):
            return f"torch-pruning does not say which of its channels reach {name}"
        layers.setdefault((name, out), set()).update(pairs)
    return layers


def _one_per_group(classes: Iterable[list[int]], channels: int, channel_groups: int) -> bool:
    """Whether dropping any class keeps a grouped conv's groups equal: every class is one
    channel, or one channel of each group (a shuffle's ties before a grouped conv)."""
    block = channels // channel_groups
    return all(len(c) == 1 for c in classes) or all(
        sorted(channel // block for channel in c) == list(range(channel_groups)) for c in classes)


def segment_group(graph: tp.DependencyGraph, group: tp.Group, channel_groups: int,
                  shuffles: dict | None = None) -> Segmented:
    """The group's channels as classes and segments, and which segments set which layers; a
    group whose mapping cannot be followed (even one raising inside torch-pruning's index
    mappings) gets a reason instead, so that it is kept dense, never an internal error."""
    try:
        return _segment_group(graph, group, channel_groups, shuffles or {})
    except Exception as exc:  # torch-pruning's index mappings fail on shapes they do not know
        text = " ".join(str(exc).split())[:160] or "no message"
        return _unpredictable(graph, group, f"its channel mapping cannot be followed "
                                            f"({type(exc).__name__}: {text})")


def _segment_group(graph: tp.DependencyGraph, group: tp.Group, channel_groups: int,
                   shuffles: dict) -> Segmented:
    channels, ties = len(group[0].idxs), []
    layers = _layer_pairs(graph, group, shuffles, ties)
    if isinstance(layers, str):
        return _unpredictable(graph, group, layers)
    of = _classes([*layers.values(), *ties], channels)
    parts = [tuple(sorted(set(of)))]
    seen: dict[tuple[str, bool], Counter] = {}
    for (name, out), pairs in sorted(layers.items()):
        by_channel = dict(pairs)  # tied group channels of one layer channel share a class
        counts = seen[name, out] = Counter(of[root] for root in by_channel.values())
        if len(set(counts.values())) > 1:
            return _unpredictable(graph, group, f"torch-pruning maps it unevenly onto {name} "
                                                f"({len(by_channel)} of its channels for "
                                                f"{len(counts)} of the group's)")
        parts = [p for part in parts
                 for p in (tuple(c for c in part if c in counts),
                           tuple(c for c in part if c not in counts)) if p]
    parts.sort()
    tied: dict[int, list[int]] = {}
    for channel, cls in enumerate(of):
        tied.setdefault(cls, []).append(channel)
    if channel_groups > 1 and (len(parts) > 1 or not _one_per_group(tied.values(), channels,
                                                                     channel_groups)):
        return _unpredictable(graph, group, f"its {channels} channels are segments (of a "
                                            "concatenation or split) feeding a grouped conv")
    members = tuple(Member(name, out, tuple(s for s, p in enumerate(parts) if p[0] in counts),
                           next(iter(counts.values())))
                    for (name, out), counts in seen.items())
    return Segmented(tuple(tuple(tuple(tied[c]) for c in part) for part in parts), members, "")


def drop_by_segment(scores: Sequence[float], parts: Sequence[Sequence[Sequence[int]]],
                    kept: Sequence[int]) -> list[int]:
    """The group channels to remove: in each segment, its lowest-scored classes (a class scores
    the mean of its channels) beyond the segment's `kept` count, with all their channels."""
    drop = []
    for part, count in zip(parts, kept, strict=True):
        mean = [sum(scores[c] for c in cls) / len(cls) for cls in part]
        ranked = sorted(range(len(part)), key=mean.__getitem__)[: len(part) - count]
        drop += [c for i in ranked for c in part[i]]
    return sorted(drop)


def _partial_out_layer(graph: tp.DependencyGraph, group: tp.Group, taken: set[str]):
    """The first conv or linear layer whose out channels the group prunes only in part and that
    is not in `taken` (a unit's root, or a layer whose wider group cannot be a unit)."""
    for dep, idxs in group:
        module = dep.target.module
        if not isinstance(module, ROOT_TYPES) or not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        if graph._module2name[module] not in taken and len(idxs) < _channels(module, True):
            return dep
    return None


def widen_groups(graph: tp.DependencyGraph, groups: dict[str, tp.Group],
                 ignored: Sequence[nn.Module]) -> dict[str, tp.Group]:
    """Re-root a group that prunes only part of a layer's out channels at that layer, so that
    all its channels are one unit pruned by segment. torch-pruning roots a group at the first
    layer it meets: a CSP stage's block, whose group then holds half of the expand conv's
    channels; the expand conv, already in that group, is no root of its own, so its other half
    (the cross-stage shortcut) would never be pruned, and the split's halves could not stay
    equal. The wider group replaces every group rooted at one of its layers."""
    result, ignored, refused = dict(groups), set(ignored), set()
    for _ in range(2 * len(groups)):  # each round widens or refuses one layer: a bound
        for group in result.values():
            dep = _partial_out_layer(graph, group, set(result) | refused)
            if dep is not None:
                break
        else:
            return result
        module, name = dep.target.module, graph._module2name[dep.target.module]
        wider = graph.get_pruning_group(module, dep.handler, list(range(_channels(module, True))))
        outs = [d.target.module for d, _ in wider if graph.is_out_channel_pruning_fn(d.handler)]
        if any(m in ignored for m in outs):  # e.g. it would prune the classifier's outputs
            refused.add(name)
            continue
        names = {graph._module2name[m] for m in outs if isinstance(m, ROOT_TYPES)}
        result = {root: g for root, g in result.items() if root not in names}
        result[name] = wider
    return result
