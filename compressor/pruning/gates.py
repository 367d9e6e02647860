"""Channel gates as torch-pruning should see them: what sent its grouping into endless loops.

torch-pruning couples channels through every op of the autograd graph, and two kinds of gate
make its grouping (`get_pruning_group`) run for minutes or forever (issue 36: timm's ECA
networks and FocalNet, refused after a 90 s wait):

- **A conv over the channel axis** (ECA: `x.mean((2, 3)).view(B, 1, C)`, a `Conv1d(1, 1, k)`
  sliding along the C positions, `.view(B, C, 1, 1)`, then `x * gate`). Its reshape rule sees C
  channels become 1 and maps each channel index to C indices and back (a "flatten" of stride C):
  every trip around the gate squares the index list (2048 channels: 4 M index objects), in an
  order that changes each time (`list(set(...))`), so the walk never sees a step it has taken.
  The gate is channel-agnostic: its conv has one channel and slides over any length, so channel
  c of the gate is channel c of `x`. `find_channel_axis_gates` finds the section between the two
  reshapes; `ChannelGraph` maps both reshapes as identity and its convs as element-wise (never
  pruned), so the gate passes the group's channels straight through.
- **A one-channel operand broadcast over the channels** (FocalNet's `ctx * gates[:, l:l + 1]`,
  a spatial attention map times the features): torch-pruning couples channel c of the product
  with channel c of the one-channel operand, which does not exist, and then with whatever the
  slice and split offsets make of it, round and round. A broadcast operand shares no channel with
  the product: `cut_broadcast_operands` removes that edge of the graph.

Shapes are read from autograd (`grad_fn._input_metadata`: each op's output shape), so the
rules look at the traced tensors, not at module classes. `converging_group` bounds what is left:
a grouping that still grows past a limit stops within seconds, naming the layer it started from.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Number

import torch_pruning as tp
from torch import nn

from compressor.pruning.splits import ShuffleAwareGraph

SECTION_NODES = 16
"""Most ops between a gate's two reshapes (ECA with its MLP option has 5)."""


def output_shape(node) -> tuple[int, ...] | None:
    """The shape of the tensor a traced node outputs (from its autograd function), or None."""
    try:
        return tuple(int(s) for s in node.grad_fn._input_metadata[0].shape)
    except (AttributeError, IndexError, TypeError, RuntimeError):
        return None


def _input_shape(node) -> tuple[int, ...] | None:
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    return None if sizes is None else tuple(int(s) for s in sizes)


def _channels_to_length(node) -> int | None:
    """C when the reshape node turns [B, C] (or [B, C, 1, 1]) into [B, 1, C], else None."""
    before, after = _input_shape(node), output_shape(node)
    if before is None or after is None or len(before) not in (2, 4) or len(after) != 3:
        return None
    channels = before[1]
    if channels > 1 and all(s == 1 for s in before[2:]) and after[1:] == (1, channels):
        return channels
    return None


def _length_to_channels(node, channels: int) -> bool:
    """Whether the reshape node turns [B, 1, C] back into [B, C] or [B, C, 1, 1]."""
    before, after = _input_shape(node), output_shape(node)
    return (before is not None and after is not None and before[1:] == (1, channels)
            and len(after) in (2, 4) and after[1] == channels and all(s == 1 for s in after[2:]))


def find_channel_axis_gates(nodes: Sequence) -> list[tuple[object, object, list]]:
    """Per gate that moves the channels onto the length axis of a 1-D conv and back: (the reshape
    into [B, 1, C], the reshape back, the ops between them). The ops between must take their
    inputs from the section only (a circular pad's slices and concat may be among them), and its
    layers must be one-channel `Conv1d`s at either end."""
    gates = []
    for start in nodes:
        if start.type != tp.ops.OPTYPE.RESHAPE:
            continue
        channels = _channels_to_length(start)
        if channels is None:
            continue
        inner, ends, frontier, ok = [], [], list(start.outputs), True
        while frontier and ok:
            node = frontier.pop()
            if node in inner or node in ends:
                continue
            if node.type == tp.ops.OPTYPE.RESHAPE and _length_to_channels(node, channels):
                ends.append(node)
                continue
            ok = (len(inner) < SECTION_NODES
                  and node.type in (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.CONV,
                                    tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SLICE)
                  and (node.type != tp.ops.OPTYPE.CONV or isinstance(node.module, nn.Conv1d))
                  and all(i is start or i in inner or i.type == tp.ops.OPTYPE.PARAMETER
                          or i in frontier or i.inputs == [] for i in node.inputs))
            inner.append(node)
            frontier.extend(node.outputs)
        convs = [n.module for n in inner if isinstance(n.module, nn.Conv1d)]
        if ok and len(ends) == 1 and convs and all(_one_channel_ends(convs)):
            gates.append((start, ends[0], inner))
    return gates


def _one_channel_ends(convs: list[nn.Conv1d]) -> list[bool]:
    """The section's 1-D convs read and write one channel at its ends (ECA: 1 -> 1, or
    1 -> r -> 1 with its MLP option): the channel axis is their length, not their channels."""
    return [any(c.in_channels == 1 for c in convs), any(c.out_channels == 1 for c in convs)]


def cut_broadcast_operands(nodes: Sequence) -> int:
    """Remove the graph edges from a one-channel operand into an element-wise op whose output
    has more channels (a broadcast over the channels, 4-D tensors only); returns how many."""
    cut = 0
    for node in nodes:
        if node.type != tp.ops.OPTYPE.ELEMENTWISE or len(node.inputs) < 2:
            continue
        out = output_shape(node)
        if out is None or len(out) != 4 or out[1] <= 1:
            continue
        for operand in list(node.inputs):
            shape = output_shape(operand)
            if shape is not None and len(shape) == 4 and shape[1] == 1:
                node.inputs.remove(operand)
                operand.outputs.remove(node)
                cut += 1
    return cut


class GroupDiverges(Exception):
    """torch-pruning's grouping from one layer keeps growing (`converging_group`)."""


GROUP_ENTRIES = 1_000_000
"""Most channel index entries one group's walk may produce before it is stopped. The largest
legitimate groups seen (densenet201's concatenations: ~1920 channels reached along ~100 layers)
produce under 60 k (ReXNet's partial residuals 150 k before the walk kept only new channels); an
ECA loop at 2048 channels produces 4 M in one trip."""


class _Counted(list):
    """A dependency's index mappings, each counting the channel entries it produces into its
    graph's current walk (torch-pruning iterates the list; its updates assign items)."""

    def __init__(self, items, graph: ChannelGraph):
        super().__init__(items)
        self.graph = graph

    def __iter__(self):
        for mapping in super().__iter__():
            yield mapping if mapping is None or not self.graph.walking else \
                _CountingMapping(mapping, self.graph)


class _CountingMapping:
    def __init__(self, mapping, graph: ChannelGraph):
        self.mapping, self.graph = mapping, graph

    def __call__(self, idxs):
        result = self.mapping(idxs)
        self.graph.entries += len(result)
        if self.graph.entries > self.graph.entry_limit:
            raise GroupDiverges(f"torch-pruning's grouping from {self.graph.walking} does not "
                                f"converge (over {self.graph.entry_limit:,} channel index "
                                "entries; a reshape it maps as a flatten feeds back into itself)")
        return result


class ChannelGraph(ShuffleAwareGraph):
    """torch-pruning's dependency graph with channel shuffles mapped (`ShuffleAwareGraph`),
    channel-axis gates passed straight through (`find_channel_axis_gates`), broadcast operands
    cut (`cut_broadcast_operands`), and each group's walk bounded (`GroupDiverges`)."""

    def __init__(self, entry_limit: int | None = None):
        super().__init__()
        self.agnostic: set[nn.Module] = set()  # convs inside channel-axis gates: element-wise
        self.gates = 0
        self.broadcasts = 0
        self.entry_limit = GROUP_ENTRIES if entry_limit is None else entry_limit
        self.entries = 0
        self.walking = ""  # the root layer whose group is being walked ("" outside a walk)
        self.frozen = False  # nothing is pruned: the index mappings need no update per group

    def get_pruner_of_module(self, module):
        if module in self.agnostic:
            return self.REGISTERED_PRUNERS[tp.ops.OPTYPE.ELEMENTWISE]
        return super().get_pruner_of_module(module)

    def _build_dependency(self, module2node):
        nodes = list(module2node.values())
        self.broadcasts = cut_broadcast_operands(nodes)
        gates = find_channel_axis_gates(nodes)
        for start, end, inner in gates:
            start.type = end.type = tp.ops.OPTYPE.ELEMENTWISE  # identity: channel c stays c
            for node in inner:  # a circular pad's slices and concat (CecaModule) likewise
                if node.type in (tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SLICE):
                    node.type = tp.ops.OPTYPE.ELEMENTWISE
            self.agnostic.update(n.module for n in inner if isinstance(n.module, nn.Conv1d))
        self.gates = len(gates)
        result = super()._build_dependency(module2node)
        for node in nodes:
            for dep in node.dependencies:
                dep.index_mapping = _Counted(dep.index_mapping, self)
        return result

    def get_all_groups(self, ignored_layers=(), root_module_types=(nn.Conv2d, nn.Linear)):
        """torch-pruning's groups, every one from the same index mappings: nothing is pruned
        between them (its own walk re-derives every concat's mapping per group: densenet201
        spent 72 of 81 s there). Prune nothing while iterating."""
        tp.dependency.index_mapping.update_index_mapping(self)
        self.frozen = True
        try:
            yield from super().get_all_groups(list(ignored_layers), root_module_types)
        finally:
            self.frozen = False

    def get_pruning_group(self, module, pruning_fn, idxs):
        """torch-pruning's `get_pruning_group`, walking each step's new channels only.

        Its walk pushes a dependency again whenever it reaches it with a different index list,
        whole; through ReXNet's partial residuals (`cat([x[:, :c] + shortcut, x[:, c:]])`, one
        per block) the same channels come back in ever new subsets, and one group took 25 s of
        list comparisons (over 90 s under load). Index mappings map each channel on its own, so
        pushing only the (channel, root channel) pairs a dependency has not had yet reaches the
        same pairs; the merge below is torch-pruning's, so the group is the same."""
        if module not in self.module2node:
            raise ValueError(f"Module {module} is not in the dependency graph.")
        if isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels \
                and module.out_channels > 1:
            pruning_fn = tp.pruner.function.prune_depthwise_conv_out_channels
        if isinstance(idxs, Number):
            idxs = [idxs]
        make = tp._helpers._HybridIndex
        idxs = [make(idx=i, root_idx=i) for i in idxs]
        if not self.frozen:  # sizes may have changed since (a group was pruned)
            tp.dependency.index_mapping.update_index_mapping(self)
        self.entries, self.walking = 0, self._module2name.get(module, type(module).__name__)
        try:
            group = tp.dependency.Group()
            root = self.module2node[module]
            group.add_dep(tp.dependency.Dependency(pruning_fn, pruning_fn, source=root,
                                                   target=root), idxs)
            seen = {(root, pruning_fn): set(idxs)}
            stack = [(group[0].dep, idxs)]
            while stack:
                dep, current = stack.pop()
                for new_dep in dep.target.dependencies:
                    if not new_dep.is_triggered_by(dep.handler):
                        continue
                    mapped = current
                    for mapping in new_dep.index_mapping:
                        if mapping is not None:
                            mapped = mapping(mapped)
                    known = seen.setdefault((new_dep.target, new_dep.handler), set())
                    fresh = [i for i in dict.fromkeys(mapped) if i not in known]
                    if fresh:
                        known.update(fresh)
                        group.add_dep(new_dep, fresh)
                        stack.append((new_dep, fresh))
        finally:
            self.walking = ""
        return self._merged(group)

    def _merged(self, group):
        """torch-pruning's merge of a walked group: per (layer, pruning function) one item, its
        channels in first-reached order, each with the root channel that reached it first."""
        items: dict = {}  # (layer node, pruning function) -> [first dep, {channel: index}]
        for dep, idxs in group.items:
            if isinstance(dep.target.module, nn.Parameter) and any(
                    dep.target.module is p for p in self.ignored_params):
                continue
            first = items.setdefault((dep.target, dep.handler), [dep, {}])[1]
            for index in idxs:
                first.setdefault(index.idx, index)
        merged = tp.dependency.Group()
        for dep, first in items.values():
            merged.add_dep(dep, list(first.values()))
        merged._DG = self
        for i in range(len(merged)):
            hybrid = merged[i].idxs
            merged[i] = tp._helpers.GroupItem(merged[i].dep, tp._helpers.to_plain_idxs(hybrid))
            merged[i].root_idxs = tp._helpers.to_root_idxs(hybrid)
        return merged
