"""Splits as torch-pruning should see them: each output's true size and position.

torch-pruning 1.6.1 under torch 2.x gets two things wrong about `chunk` and `split` along the
channels: it misses `chunk`/`split(int)` sizes (it looks for `_saved_self_sizes`; autograd now
saves `_saved_self_sym_sizes`) and guesses each output's channels from its consumers; and it
numbers a split's outputs in the order its tracer met the consumers, one consumer per output,
not by the output each consumer takes. A cross-stage split `a, b = x.chunk(2, 1)` then maps the
block on `b` onto `a`'s half of the concat (timm's cspresnet50: "pruned to 64->256, predicted
64->128"), and a split output feeding both a conv and a residual add cannot be mapped at all.
`repair_splits` sets each consumer's index mapping from the output number autograd records,
reading the output's span from the split's sizes as they shrink group by group.

Channel shuffles (`x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)`) it maps as
no change of order, pruning the consumer at the wrong positions without any error, and in
ShuffleNetV2 its reshape rule divides by zero: `ShuffleAwareGraph` maps them
(`repair_shuffles`) before that rule runs. `equal_split_roots` names the units that would prune
the parts of a `chunk` apart. A shuffle written with `permute` is not recognised.
"""

from __future__ import annotations

import torch_pruning as tp
from torch_pruning.dependency.index_mapping import _SplitIndexMapping


def _sizes(grad_fn) -> list[int] | None:
    """The channel count of each output of a split along dim 1 of a 4-D tensor, else None."""
    shape = getattr(grad_fn, "_saved_self_sym_sizes", ())
    if len(shape) != 4 or getattr(grad_fn, "_saved_dim", None) != 1:
        return None
    if hasattr(grad_fn, "_saved_split_sizes"):
        return [int(s) for s in grad_fn._saved_split_sizes]
    size, total = int(getattr(grad_fn, "_saved_split_size", 0)), int(shape[1])
    if size <= 0:
        return None
    return [size] * (total // size) + ([total % size] if total % size else [])


class _LiveSplitMapping:
    """torch-pruning's split mapping for one output, its span read from the split's sizes when
    called: torch-pruning's split pruner shrinks them as each group is pruned, so a later group
    maps onto the split as it is by then (fixed offsets would be those of the dense network)."""

    def __init__(self, split_op, number: int, reverse: bool):
        self.split_op, self.number, self.reverse = split_op, number, reverse

    def __call__(self, idxs):
        sizes = self.split_op.split_sizes
        start = sum(sizes[:self.number])
        span = [start, start + sizes[self.number]]
        return _SplitIndexMapping(offset=span, reverse=self.reverse)(idxs)


def _output_numbers(node) -> dict | None:
    """Consumer node -> the split output it takes (from its autograd edge), or None when a
    consumer takes several outputs or none can be found."""
    numbers = {}
    for consumer in node.outputs:
        edges = {n for f, n in getattr(consumer.grad_fn, "next_functions", ())
                 if f is node.grad_fn}
        if len(edges) != 1:
            return None
        numbers[consumer] = edges.pop()
    return numbers


def repair_splits(graph: tp.DependencyGraph) -> None:
    """Map every channel split's consumers onto the outputs they take. torch-pruning's own
    mapping of a repaired split is switched off (its offsets unset, which it skips), and the
    concats are re-sized from the repaired splits. Splits that cannot be repaired are left as
    they were (the skeleton's checks find what they break)."""
    repaired = {}
    for node in graph.module2node.values():
        if node.type != tp.ops.OPTYPE.SPLIT:
            continue
        sizes, numbers = _sizes(node.grad_fn), _output_numbers(node)
        if sizes is None or numbers is None or max(numbers.values(), default=len(sizes)) >= len(sizes):
            continue
        for consumer, number in numbers.items():
            for dep in node.dependencies:
                if dep.target is consumer:
                    dep.index_mapping[0] = _LiveSplitMapping(node.module, number, reverse=False)
            for dep in consumer.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _LiveSplitMapping(node.module, number, reverse=True)
        # Per consumer, the channels it takes: what torch-pruning's shape inference reads.
        node.module.split_sizes = [sizes[numbers[c]] for c in node.outputs]
        node.module.offsets = None
        repaired[node.module] = sizes
    if repaired:
        for node in graph.module2node.values():
            if node.type == tp.ops.OPTYPE.CONCAT:  # sized from the splits before repair
                node.module.concat_sizes = None
        tp.dependency.index_mapping.update_index_mapping(graph)
        for split_op, sizes in repaired.items():  # per output, as its pruner updates them
            split_op.split_sizes = sizes


def equal_split_roots(graph: tp.DependencyGraph, groups: dict[str, tp.Group]) -> dict[str, str]:
    """Units to keep dense because they cover only part of a `chunk`/`split(int)`: its parts
    take their sizes from the tensor at run time, so they stay equal only when one unit prunes
    all of its channels by one ratio; units pruning its parts apart would unbalance it."""
    covered: dict = {}  # split node -> (roots, channels their groups map onto it)
    for root, group in groups.items():
        for dep, idxs in group:
            node = graph.module2node.get(dep.target.module)
            if node is not None and node.type == tp.ops.OPTYPE.SPLIT and \
                    hasattr(node.grad_fn, "_saved_split_size"):
                roots, count = covered.get(node, ((), 0))
                covered[node] = (roots + (root,), count + len(idxs))
    reasons = {}
    for node, (roots, count) in covered.items():
        total = _sizes(node.grad_fn)
        if len(roots) > 1 or total is None or count != sum(total):
            why = (f"its channels are part of a split into equal parts (chunk) that "
                   f"{' and '.join(sorted(set(roots)))} would prune apart")
            reasons |= dict.fromkeys(roots, why)
    return reasons


class _ShuffleIndexMapping:
    """Channel c = g * width + i of a shuffle's input is channel i * groups + g of its output
    (`x.view(n, groups, width, h, w).transpose(1, 2).reshape(n, c, h, w)`); `reverse` maps back."""

    def __init__(self, groups: int, width: int, reverse: bool = False):
        self.groups, self.width, self.reverse = groups, width, reverse

    def __call__(self, idxs):
        make = tp._helpers._HybridIndex
        if self.reverse:  # output i * groups + g -> input g * width + i
            return [make(idx=(i.idx % self.groups) * self.width + i.idx // self.groups,
                         root_idx=i.root_idx) for i in idxs]
        return [make(idx=(i.idx % self.width) * self.groups + i.idx // self.width,
                     root_idx=i.root_idx) for i in idxs]


def _shuffle_end(node):
    """The reshape that ends a channel shuffle from `node` (a transpose of dims 1 and 2),
    through element-wise copies (contiguous, clone), or None."""
    while len(node.outputs) == 1:
        node = node.outputs[0]
        if node.type == tp.ops.OPTYPE.RESHAPE:
            return node
        if node.type != tp.ops.OPTYPE.ELEMENTWISE:
            return None
    return None


def repair_shuffles(graph: tp.DependencyGraph) -> dict:
    """Map channel shuffles' indices (torch-pruning sees `view` + `transpose` + `reshape` of
    the channels as no change of order, so it prunes a consumer's input channels at the wrong
    positions, silently); returns each shuffle's start node -> (groups, width), which a unit
    through it must prune alike (the same positions in every group) for the shuffle to stay
    a shuffle of the kept channels."""
    shuffles = {}
    for node in graph.module2node.values():
        grad_fn = node.grad_fn
        if not str(getattr(grad_fn, "name", lambda: "")()).startswith("TransposeBackward") or \
                {getattr(grad_fn, "_saved_dim0", 0), getattr(grad_fn, "_saved_dim1", 0)} != {1, 2}:
            continue
        start, end = (node.inputs[0] if len(node.inputs) == 1 else None), _shuffle_end(node)
        before = getattr(getattr(start, "grad_fn", None), "_saved_self_sym_sizes", ())
        after = getattr(getattr(end, "grad_fn", None), "_saved_self_sym_sizes", ())
        if start is None or start.type != tp.ops.OPTYPE.RESHAPE or len(before) != 4 or \
                len(after) != 5 or after[1] * after[2] != before[1]:
            continue
        width, groups = int(after[1]), int(after[2])  # the view was (n, groups, width, h, w)
        for dep in start.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _ShuffleIndexMapping(groups, width)
        for dep in node.dependencies:
            if dep.target is start:
                dep.index_mapping[0] = _ShuffleIndexMapping(groups, width, reverse=True)
        # Its own reshape mappings would undo these (or, in ShuffleNetV2, divide by zero).
        start.type = end.type = tp.ops.OPTYPE.ELEMENTWISE
        shuffles[start] = (groups, width)
    return shuffles


class ShuffleAwareGraph(tp.DependencyGraph):
    """torch-pruning's dependency graph with channel shuffles mapped (`repair_shuffles`) as
    soon as its dependencies are built: before its own index mappings, whose reshape rule
    fails on a shuffle's 5-D view (ShuffleNetV2: "integer division or modulo by zero")."""

    def __init__(self):
        super().__init__()
        self.shuffles: dict = {}  # shuffle start node -> (groups, width)

    def _build_dependency(self, module2node):
        result = super()._build_dependency(module2node)
        self.shuffles = repair_shuffles(self)
        return result
