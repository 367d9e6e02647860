"""Transformer units: attention heads, MLP width and whole blocks, with the skeleton that predicts
their shapes and the pruner that slices them.

Per encoder block (found structurally by `find_blocks`: a module holding one `ExplicitAttention`
and one Linear-act-Linear MLP, each branch added to the residual stream), three units, each named
by a real module of the rewritten model:

- `<block>` kind "block" (depth): pruning ratio >= 0.5 (`BLOCK_REMOVED`) removes both residual
  branches, the block becomes the identity (`RemovedBlock`): its layers no longer run, so they
  are absent from `measure_layer_shapes` and from `TransformerSkeleton.layer_shapes`, and its
  heads and MLP units keep 0. Kept "channels": 1, or 0 when removed. Only for blocks whose
  branches are plain residual adds (zeroing both branch outputs makes the block the identity);
  a post-norm block keeps its depth.
- `<attention>` kind "heads" (the ExplicitAttention's name): kept heads, head_dim fixed; the
  q/k/v (or fused qkv) rows and the proj columns of each removed head go together. Step 1 head.
  Under grouped-query attention (fewer key/value heads, a Llama's) the unit counts key/value
  head *groups*: removing one removes its key and value head and the `group_size` query heads
  that share it.
- `<fc1>` kind "mlp" (the MLP's first Linear, as a CNN unit is named by its root layer): kept
  hidden width, fc1 rows and fc2 columns, a multiple of `PruningConfig.round_to`. A gated MLP
  (act(fc1 x) * up x, a Llama's gate_proj and up_proj, then down_proj as fc2) is named by the one
  called first and prunes the rows of both.

The units of a block come in that order (the block encloses the other two), blocks in call order.
Heads and hidden channels are ranked by the magnitude of their weights (`config.importance` l1,
l2; bn has no BatchNorm here and ranks by l1 as for CNN units without one) or randomly
("random"); taylor and plug-in criteria are refused for now. The residual stream (embedding
width), the patch embedding, any conv layers (a conv stem) and the classifier stay dense.

    skeleton = build_transformer_skeleton(vit, x, PruningConfig())   # checked by one prune
    pruned = apply_transformer_policy(vit, {"encoder.layers.encoder_layer_1": 0.9}, x, config)
    assert skeleton.layer_shapes(policy) == measure_layer_shapes(pruned, x)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from compressor.errors import UserError
from compressor.pruning.attention import (
    REWRITE_TOLERANCE,
    Call,
    ExplicitAttention,
    explicit_attention,
    first_tensor,
    record_calls,
    returns_of,
    set_module,
)
from compressor.pruning.config import PruningConfig
from compressor.pruning.importance import RandomImportance, criterion_for, prune_indices
from compressor.pruning.shapes import LayerShape, measure_layer_shapes
from compressor.pruning.skeleton import Unit, _ignored_modules, check_policy, kept_count

BLOCK_REMOVED = 0.5
"""A block unit's pruning ratio at or above which the block is removed (the identity)."""


class Block(NamedTuple):
    """One encoder block of the rewritten model, by qualified module names."""

    name: str
    attention: str  # its ExplicitAttention
    fc1: str  # the MLP's first Linear (dim -> hidden)
    fc2: str  # its second (hidden -> dim)
    removable: bool  # both branches are residual adds: with them zeroed the block is the identity
    returns: int  # 0: the block returns a tensor; n: a tuple of n (what RemovedBlock returns)
    up: str = ""  # a gated MLP's other dim -> hidden Linear (act(fc1 x) * up x), "" for none

    def mlp_rows(self) -> tuple[str, ...]:
        """The Linears whose output rows are the MLP's hidden channels: fc1 (and up)."""
        return (self.fc1, self.up) if self.up else (self.fc1,)


class RemovedBlock(nn.Module):
    """A block removed by pruning: returns its input (in a tuple of `returns` when the block
    returned one, the input then None), whatever else it is called with."""

    def __init__(self, returns: int = 0):
        super().__init__()
        self.returns = returns

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        return x if self.returns == 0 else (x, *([None] * (self.returns - 1)))


# --- finding blocks -------------------------------------------------------------------------------


def _relative(name: str, block: str) -> str:
    return name[len(block) + 1:] if block else name


def _block_linears(model: nn.Module, block: str, attention: str) -> list[str]:
    """Qualified names of the Linears of `block` outside its attention."""
    prefix = f"{block}." if block else ""
    return [prefix + n for n, m in model.get_submodule(block).named_modules()
            if isinstance(m, nn.Linear) and not (prefix + n).startswith(attention + ".")]


def _enclosing(model: nn.Module, attention: str) -> str:
    """The nearest module above `attention` that holds Linears outside it: its block."""
    parts = attention.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if _block_linears(model, ".".join(parts[:i]), attention):
            return ".".join(parts[:i])
    return ""


def _same_output(model: nn.Module, block: str, call: Call, overrides: dict[str, torch.Tensor],
                 want: torch.Tensor) -> bool:
    """Whether `block`, run on its recorded call with `overrides` for some of its parameters
    (names relative to the block), gives `want` within the rewrite tolerance."""
    with torch.no_grad():
        got = first_tensor(functional_call(model.get_submodule(block), overrides, call.args,
                                           call.kwargs, strict=False))
    limit = REWRITE_TOLERANCE.limit(float(want.abs().max()))
    return got.shape == want.shape and float((got - want).abs().max()) <= limit


def _mlp_of(model: nn.Module, block: str, attention: str, calls: dict[str, list[Call]]
            ) -> tuple[str, str, str]:
    """(fc1, fc2, up) of the block (up "" unless the MLP is gated), or a ValueError saying which
    part of the pattern is missing."""
    attentions = [n for n, m in model.get_submodule(block).named_modules()
                  if isinstance(m, ExplicitAttention)]
    linears = _block_linears(model, block, attention)
    if len(attentions) != 1 or len(linears) not in (2, 3) or \
            any(len(calls[n]) != 1 for n in [block, *linears]):
        raise ValueError(f"holds {len(attentions)} attentions and {len(linears)} other Linears "
                         "(need one attention and one Linear-act-Linear MLP, or a gated one, "
                         "each run once)")
    ordered = sorted(linears, key=lambda n: calls[n][0].order)
    fc1, up, fc2 = ordered if len(ordered) == 3 else (ordered[0], "", ordered[1])
    rows = [model.get_submodule(n) for n in (fc1, up) if n]
    two = model.get_submodule(fc2)
    width = model.get_submodule(attention).proj.out_features
    if any(one.out_features != two.in_features or one.in_features != width for one in rows) or \
            two.out_features != width:
        raise ValueError(f"its MLP {' and '.join(n for n in (fc1, up) if n)} -> {fc2} does not "
                         f"map the attention's width {width} back to itself")
    # Hidden channels must be independent (an elementwise activation, or a gate, between the
    # Linears): permuting them in all leaves the block's output unchanged.
    call = calls[block][0]
    perm = torch.randperm(two.in_features, generator=torch.Generator().manual_seed(0))
    permuted = {f"{_relative(fc2, block)}.weight": two.weight[:, perm]}
    for name, one in zip((n for n in (fc1, up) if n), rows, strict=True):
        permuted[f"{_relative(name, block)}.weight"] = one.weight[perm]
        if one.bias is not None:
            permuted[f"{_relative(name, block)}.bias"] = one.bias[perm]
    if not _same_output(model, block, call, permuted, first_tensor(call.output)):
        raise ValueError(f"the channels between {fc1} and {fc2} mix (no elementwise activation)")
    return fc1, fc2, up


def _removable(model: nn.Module, block: str, outputs: Sequence[str], call: Call) -> bool:
    """Whether `block` is its input plus branches ending in `outputs`: with their weights and
    biases zeroed it returns its input. Checked on noise of another scale and offset than the
    recorded input: a post-norm block returns a normalised input as it is (LayerNorm of a
    LayerNorm's output), but not noise."""
    if not call.args or not isinstance(call.args[0], torch.Tensor):
        return False
    x = call.args[0]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x) * 3.0 + 1.0
    zeroed = {f"{_relative(layer, block)}.{p}": torch.zeros_like(t) for layer in outputs
              for p, t in model.get_submodule(layer).named_parameters()}
    return _same_output(model, block, call._replace(args=(noise, *call.args[1:])), zeroed, noise)


def find_blocks(model: nn.Module, example_input: torch.Tensor) -> list[Block]:
    """The encoder blocks of a model holding ExplicitAttention (`explicit_attention`'s output),
    in call order; a one-line UserError naming an attention that is not in such a block."""
    attentions = [n for n, m in model.named_modules() if isinstance(m, ExplicitAttention)]
    enclosing = {a: _enclosing(model, a) for a in attentions}
    names = sorted({*enclosing.values(), *(n for a, b in enclosing.items()
                                           for n in _block_linears(model, b, a))})
    calls = record_calls(model, example_input, names)
    blocks = []
    was_training = model.training
    model.eval()  # the checks run the blocks again: without dropout
    try:
        for attention, block in enclosing.items():
            blocks.append(_block(model, block, attention, calls))
    finally:
        model.train(was_training)
    return sorted(blocks, key=lambda b: calls[b.name][0].order)


def _block(model: nn.Module, block: str, attention: str, calls: dict[str, list[Call]]) -> Block:
    try:
        if not block:
            raise ValueError("is not inside a module that also holds an MLP")
        fc1, fc2, up = _mlp_of(model, block, attention, calls)
        call = calls[block][0]
        return Block(block, attention, fc1, fc2,
                     _removable(model, block, (f"{attention}.proj", fc2), call),
                     returns_of(call.output), up)
    except ValueError as exc:
        raise UserError(f"cannot prune {attention} of {type(model).__name__} as a transformer "
                        f"block: {block or 'it'} {exc}; choose another model") from None


# --- the skeleton ---------------------------------------------------------------------------------


class _Row(NamedTuple):
    """One layer (`measure_layer_shapes` order) and the units that shape it."""

    dense: LayerShape
    out_unit: int  # unit whose kept count sets the out channels, -1 for none
    out_per: int  # out channels per kept head (group) or hidden channel (head_dim, 3 x for fused
    # qkv, group_size x for the queries of grouped-query attention)
    in_unit: int  # likewise for the in channels
    in_per: int
    gate: int  # block unit whose removal removes the layer, -1 for none


class _Product(NamedTuple):
    """An attention's two matmuls (q k^T, weights v): MACs outside any layer."""

    heads: int  # its heads unit, -1 for none (the dense count then)
    gate: int  # its block unit, -1 for none
    macs_per_head: int  # per unit of `heads`: 2 x tokens^2 x head_dim x group_size
    dense_heads: int  # dense count of that unit (heads, or key/value groups)


def _kept_vector(kinds: Sequence[str], channels: Sequence[int], steps: Sequence[int],
                 index: dict[str, int], members: dict[int, tuple[int, ...]],
                 policy: dict[str, float]) -> list[int]:
    """`TransformerSkeleton.kept_vector`, and the counts `apply_transformer_policy` prunes to."""
    kept = list(channels)
    for name, ratio in check_policy(policy, index).items():
        i = index[name]
        if kinds[i] == "block":
            kept[i] = 0 if ratio >= BLOCK_REMOVED else 1
        else:
            kept[i] = kept_count(kept[i], steps[i], ratio)
    for block, inside in members.items():
        if kept[block] == 0:
            for i in inside:
                kept[i] = 0
    return kept


class TransformerSkeleton:
    """Units and layer table of a transformer: predicts the shapes and costs of any policy.

    The interface of `Skeleton` (`units`, `names`, `dense_shapes`, `kept_vector`,
    `kept_channels`, `layer_units`, `layer_shapes`, `macs`, `params`, `policy_from_vector`), pure
    Python over its tables. Layer names and order are those of the rewritten model
    (`explicit_attention`): what `apply_transformer_policy` returns and `measure_layer_shapes`
    reads. `macs` also counts the attention's two matmuls, which are no layer.
    """

    def __init__(self, units: Sequence[Unit], steps: Sequence[int], rows: Sequence[_Row],
                 products: Sequence[_Product], members: dict[int, tuple[int, ...]]):
        self.units = tuple(units)
        self.names = tuple(u.name for u in self.units)
        self.dense_shapes = [row.dense for row in rows]
        self._index = {name: i for i, name in enumerate(self.names)}
        self._channels = [u.channels for u in self.units]
        self._kinds = [u.kind for u in self.units]
        self._steps, self._rows, self._products = list(steps), tuple(rows), tuple(products)
        self._members = dict(members)  # block unit -> its heads and mlp units
        self.excluded: tuple = ()  # every block found is searched (`Skeleton.excluded`)

    def kept_dense(self) -> dict[str, str]:
        """The groups kept dense with why (`Skeleton.kept_dense`): none here."""
        return {}

    def kept_vector(self, policy: dict[str, float]) -> list[int]:
        """Kept heads / hidden channels / blocks (1 kept, 0 removed) per unit, in unit order;
        the heads and MLP of a removed block keep 0."""
        return _kept_vector(self._kinds, self._channels, self._steps, self._index,
                            self._members, policy)

    def kept_channels(self, policy: dict[str, float]) -> dict[str, int]:
        """`kept_vector` by unit name."""
        return dict(zip(self.names, self.kept_vector(policy), strict=True))

    def layer_units(self) -> list[str | None]:
        """Per layer (`dense_shapes` order), the unit setting its output channels (None: none)."""
        return [self.names[row.out_unit] if row.out_unit >= 0 else None for row in self._rows]

    def _layers_of(self, policy: dict[str, float]) -> tuple[list[tuple[int, int, int]], int]:
        """(row, in, out) of every layer that runs under `policy`, and the attention MACs."""
        kept = self.kept_vector(policy)
        layers = []
        for i, (dense, out_unit, out_per, in_unit, in_per, gate) in enumerate(self._rows):
            if gate >= 0 and kept[gate] == 0:
                continue
            layers.append((i, dense.in_channels if in_unit < 0 else kept[in_unit] * in_per,
                           dense.out_channels if out_unit < 0 else kept[out_unit] * out_per))
        attention = sum((kept[heads] if heads >= 0 else dense) * per_head
                        for heads, gate, per_head, dense in self._products
                        if gate < 0 or kept[gate])
        return layers, attention

    def layer_shapes(self, policy: dict[str, float]) -> list[LayerShape]:
        """The shapes `measure_layer_shapes` reads off `apply_transformer_policy(model, policy,
        ...)`: a removed block's layers are absent."""
        return [self._rows[i].dense._replace(in_channels=cin, out_channels=cout)
                for i, cin, cout in self._layers_of(policy)[0]]

    def macs(self, policy: dict[str, float]) -> int:
        """Multiply-accumulates per sample: conv and linear layers plus the attention matmuls."""
        layers, attention = self._layers_of(policy)
        total = attention
        for i, cin, cout in layers:
            dense = self._rows[i].dense
            total += dense.kernel_area * dense.out_pixels * (cin // dense.groups) * cout
        return total

    def params(self, policy: dict[str, float]) -> int:
        """Conv and linear parameters of the pruned network (norms and embeddings excluded)."""
        total = 0
        for i, cin, cout in self._layers_of(policy)[0]:
            dense = self._rows[i].dense
            total += dense.kernel_area * (cin // dense.groups) * cout + (cout if dense.bias else 0)
        return total

    def policy_from_vector(self, ratios: Sequence[float]) -> dict[str, float]:
        """`{unit name: ratio}` from ratios in unit order."""
        if len(ratios) != len(self.names):
            raise ValueError(f"{len(ratios)} ratios for {len(self.names)} units")
        return dict(zip(self.names, (float(r) for r in ratios), strict=True))


class _Planned(NamedTuple):
    kind: str
    name: str
    channels: int  # heads, hidden width, or 1 block
    width: int  # the residual stream's (the unit's in_channels)
    step: int


def _block_units(model: nn.Module, block: Block, config: PruningConfig, ignored: set[str]
                 ) -> list[_Planned]:
    """The block's units: block (when removable), heads, mlp; a unit that would change an
    ignored layer (`config.ignored_layers`) is left out."""
    attention = model.get_submodule(block.attention)
    fc1 = model.get_submodule(block.fc1)
    width = fc1.in_features
    projections = [f"{block.attention}.{n}" for n in (*attention.projection_names(), "proj")]
    inside = [n for n in ignored if n.startswith(block.name + ".")]
    candidates = [
        (_Planned("block", block.name, 1, width, 1),
         config.depth and block.removable and not inside),
        (_Planned("heads", block.attention, attention.kv_heads, width, 1),
         not ignored.intersection(projections)),
        (_Planned("mlp", block.fc1, fc1.out_features, width, config.round_to),
         not ignored.intersection((*block.mlp_rows(), block.fc2)))]
    return [unit for unit, wanted in candidates if wanted]


def _ignored(model: nn.Module, config: PruningConfig) -> set[str]:
    """Names of the layers never pruned: `config.ignored_layers` (checked: a one-line UserError
    for a name that is no Conv2d/Linear of the rewritten model) and the classifier."""
    modules = {id(m) for m in _ignored_modules(model, config)}
    return {name for name, m in model.named_modules() if id(m) in modules}


def _rows(model: nn.Module, blocks: Sequence[Block], index: dict[str, int],
          dense: Sequence[LayerShape]) -> tuple[list[_Row], list[_Product]]:
    """Which unit shapes which layer, and the attention products."""
    shaping: dict[str, tuple[int, int, int, int]] = {}  # layer -> out unit, per, in unit, per
    gates: dict[str, int] = {}  # block prefix -> its unit
    products = []
    by_name = {s.name: s for s in dense}
    for block in blocks:
        attention = model.get_submodule(block.attention)
        heads, d, gate = index.get(block.attention, -1), attention.head_dim, \
            index.get(block.name, -1)
        mlp = index.get(block.fc1, -1)
        if gate >= 0:
            gates[block.name + "."] = gate
        queries = d * attention.group_size  # query channels per unit (a head, or a group)
        per_unit = {"qkv": 3 * d, "q": queries, "k": d, "v": d}
        for layer in attention.projection_names():
            shaping[f"{block.attention}.{layer}"] = (heads, per_unit[layer], -1, 1)
        shaping[f"{block.attention}.proj"] = (-1, 1, heads, queries)
        for layer in block.mlp_rows():
            shaping[layer] = (mlp, 1, -1, 1)
        shaping[block.fc2] = (-1, 1, mlp, 1)
        first = by_name[f"{block.attention}.{attention.projection_names()[0]}"]
        tokens = first.in_h * first.in_w
        products.append(_Product(heads, gate, 2 * tokens * tokens * queries, attention.kv_heads))
    rows = [_Row(s, *shaping.get(s.name, (-1, 1, -1, 1)),
                 next((g for prefix, g in gates.items() if s.name.startswith(prefix)), -1))
            for s in dense]
    return rows, products


class _Plan(NamedTuple):
    units: list[_Planned]  # in unit order
    index: dict[str, int]  # unit name -> position
    members: dict[int, tuple[int, ...]]  # block unit -> its heads and mlp units

    def kept(self, policy: dict[str, float]) -> dict[str, int]:
        kept = _kept_vector([u.kind for u in self.units], [u.channels for u in self.units],
                            [u.step for u in self.units], self.index, self.members, policy)
        return dict(zip(self.index, kept, strict=True))


def _plan(model: nn.Module, blocks: Sequence[Block], config: PruningConfig) -> _Plan:
    ignored = _ignored(model, config)
    units = [unit for block in blocks for unit in _block_units(model, block, config, ignored)]
    index = {unit.name: i for i, unit in enumerate(units)}
    members = {index[b.name]: tuple(index[n] for n in (b.attention, b.fc1) if n in index)
               for b in blocks if b.name in index}
    return _Plan(units, index, members)


def _tabulate(model: nn.Module, blocks: Sequence[Block], example_input: torch.Tensor,
              config: PruningConfig) -> TransformerSkeleton:
    """The skeleton of a rewritten model whose blocks are `blocks`."""
    dense = measure_layer_shapes(model, example_input)
    plan, index, members = _plan(model, blocks, config)
    rows, products = _rows(model, blocks, index, dense)
    units = []
    for i, (kind, name, channels, width, _) in enumerate(plan):
        touched = [r.dense for r in rows if i in (r.out_unit, r.in_unit, r.gate)]
        attention = sum(p.macs_per_head * p.dense_heads for p in products
                        if i in (p.heads, p.gate))
        units.append(Unit(i, name, kind, channels, width, 1, 1,
                          sum(s.macs for s in touched) + attention,
                          sum(s.params for s in touched)))
    return TransformerSkeleton(units, [unit.step for unit in plan], rows, products, members)


def transformer_skeleton(model: nn.Module, example_input: torch.Tensor, config: PruningConfig
                         ) -> TransformerSkeleton:
    """Rewrite the attention (on a copy), find the blocks, tabulate: nothing is pruned here."""
    example_input = example_input.to(next(model.parameters()).device)
    work = explicit_attention(model, example_input)
    return _tabulate(work, find_blocks(work, example_input), example_input, config)


# --- pruning --------------------------------------------------------------------------------------


def _magnitude_power(config: PruningConfig) -> float | RandomImportance:
    """How heads and hidden channels are ranked: |weight|^p summed (p = 1 or 2), or randomly."""
    if config.importance in ("l1", "bn"):  # no BatchNorm here: l1, as CNN units without one
        return 1.0
    if config.importance == "l2":
        return 2.0
    if config.importance == "random":
        return criterion_for("random", config.seed)
    raise UserError(f"importance {config.importance!r} is not available for transformer units "
                    "(heads, MLP width) yet; choose l1, l2 or random")


def _magnitudes(rows: Sequence[nn.Linear], columns: Sequence[nn.Linear], p: float,
                groups: int, copies: int = 1) -> torch.Tensor:
    """Sum of |w|^p per group (a head, a key/value group, or one hidden channel) over the output
    rows of `rows` (bias included) and the input columns of `columns` that the group owns. Each
    is laid out [groups, size] (its own size: a group's queries outnumber its key rows), `rows`
    `copies` times over (3 for a fused qkv)."""
    total = torch.zeros(groups)
    for layer in rows:
        per_row = layer.weight.detach().abs().pow(p).sum(1)
        if layer.bias is not None:
            per_row = per_row + layer.bias.detach().abs().pow(p)
        total += per_row.cpu().view(copies, groups, -1).sum((0, 2))
    for layer in columns:
        total += layer.weight.detach().abs().pow(p).sum(0).cpu().view(groups, -1).sum(1)
    return total


class _Scored(NamedTuple):
    """A heads or MLP unit of a block as it is ranked and sliced."""

    name: str
    count: int  # its current count: heads (key/value groups), or hidden channels
    rows: tuple[nn.Linear, ...]  # the Linears whose output rows it owns
    columns: tuple[nn.Linear, ...]  # those whose input columns it owns
    copies: int  # times the rows repeat the unit's layout (3 for a fused qkv)


def _scored(block: Block, work: nn.Module) -> list[_Scored]:
    """The heads and MLP units of `block` in `work`, as they are ranked and sliced."""
    attention = work.get_submodule(block.attention)
    fc2 = work.get_submodule(block.fc2)
    return [_Scored(block.attention, attention.kv_heads, attention.projections(),
                    (attention.proj,), 3 if attention.fused else 1),
            _Scored(block.fc1, fc2.in_features,
                    tuple(work.get_submodule(n) for n in block.mlp_rows()), (fc2,), 1)]


def unit_scores(model: nn.Module, example_input: torch.Tensor, config: PruningConfig
                ) -> dict[str, torch.Tensor]:
    """Per heads and MLP unit, the score of each head or hidden channel that pruning ranks by
    (`config.importance`), by unit name; block units have none (global ranking keeps them)."""
    ranking = _magnitude_power(config)
    example_input = example_input.to(next(model.parameters()).device)
    work = explicit_attention(model, example_input)
    scores = {}
    for block in find_blocks(work, example_input):
        for name, count, rows, columns, copies in _scored(block, work):
            scores[name] = ranking.unit_scores(name, count) \
                if isinstance(ranking, RandomImportance) \
                else _magnitudes(rows, columns, ranking, count, copies)
    return scores


def _kept_indices(scores: torch.Tensor, kept: int) -> list[int]:
    """The `kept` highest-scored positions, in order (ties keep the earlier)."""
    dropped = set(prune_indices(scores, 1, kept))
    return [i for i in range(len(scores)) if i not in dropped]


def _slice(layer: nn.Linear, rows: list[int] | None = None, columns: list[int] | None = None
           ) -> None:
    """Keep the given output rows and / or input columns of `layer`, in place."""
    with torch.no_grad():
        weight = layer.weight
        if rows is not None:
            weight = weight[rows]
            if layer.bias is not None:
                layer.bias = nn.Parameter(layer.bias[rows].clone(),
                                          requires_grad=layer.bias.requires_grad)
            layer.out_features = len(rows)
        if columns is not None:
            weight = weight[:, columns]
            layer.in_features = len(columns)
        layer.weight = nn.Parameter(weight.clone(), requires_grad=layer.weight.requires_grad)


def _prune_heads(attention: ExplicitAttention, groups: list[int]) -> None:
    """Keep the given key/value groups (the heads themselves without grouped-query attention)
    and the query heads that share them."""
    d, r, width = attention.head_dim, attention.group_size, attention.num_heads * attention.head_dim
    queries = [(g * r + i) * d + j for g in groups for i in range(r) for j in range(d)]
    if attention.fused:  # rows [q; k; v], one key/value head per query head
        _slice(attention.qkv, rows=[c * width + i for c in range(3) for i in queries])
    else:
        _slice(attention.q, rows=queries)
        for layer in (attention.k, attention.v):
            _slice(layer, rows=[g * d + j for g in groups for j in range(d)])
    _slice(attention.proj, columns=queries)
    attention.num_heads, attention.kv_heads = len(groups) * r, len(groups)


def _prune_block(work: nn.Module, block: Block, kept: dict[str, int],
                 ranking: float | RandomImportance) -> None:
    """Remove the block, or slice its heads and hidden channels down to `kept`."""
    if kept.get(block.name) == 0:
        set_module(work, block.name, RemovedBlock(block.returns))
        return
    for name, count, rows, columns, copies in _scored(block, work):
        if kept.get(name, count) == count:
            continue
        scores = ranking.unit_scores(name, count) if isinstance(ranking, RandomImportance) \
            else _magnitudes(rows, columns, ranking, count, copies)
        keep = _kept_indices(scores, kept[name])
        if name == block.attention:
            _prune_heads(work.get_submodule(block.attention), keep)
        else:
            for layer in rows:
                _slice(layer, rows=keep)
            _slice(columns[0], columns=keep)


def apply_transformer_policy(model: nn.Module, policy: dict[str, float],
                             example_input: torch.Tensor, config: PruningConfig) -> nn.Module:
    """A pruned copy of a transformer (the input is never touched): attention rewritten
    (`explicit_attention`), then per block the kept heads and hidden channels sliced out by
    weight (ranked on the dense copy) or the block replaced by `RemovedBlock`."""
    ranking = _magnitude_power(config)
    example_input = example_input.to(next(model.parameters()).device)
    work = explicit_attention(model, example_input)
    blocks = find_blocks(work, example_input)
    kept = _plan(work, blocks, config).kept(policy)
    for block in blocks:
        _prune_block(work, block, kept, ranking)
    work.train(model.training)
    return work


def verify_transformer_skeleton(skeleton: TransformerSkeleton, model: nn.Module,
                                x: torch.Tensor, config: PruningConfig) -> None:
    """Prune every heads and MLP unit at 0.5 and remove every second removable block, then
    compare the measured layer shapes with the prediction; a one-line UserError otherwise."""
    blocks = [u.name for u in skeleton.units if u.kind == "block"]
    policy = {u.name: 0.5 for u in skeleton.units if u.kind != "block"}
    policy.update({name: 0.5 if i % 2 else 0.0 for i, name in enumerate(blocks)})
    name = type(model).__name__
    pruned = apply_transformer_policy(model, policy, x, replace(config, importance="l2"))
    try:
        measured = measure_layer_shapes(pruned, x)
    except Exception as exc:
        raise UserError(f"{name} no longer runs once its heads and MLP are pruned "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                        "choose another model") from None
    predicted = skeleton.layer_shapes(policy)
    if predicted != measured:
        first = next((f"layer {got.name} was pruned to {got.in_channels}->{got.out_channels}, "
                      f"predicted {want.in_channels}->{want.out_channels}"
                      for want, got in zip(predicted, measured, strict=False) if want != got),
                     f"{len(measured)} layers ran, {len(predicted)} predicted")
        raise UserError(f"pruning {name}'s transformer units goes wrong: {first}; choose "
                        "another model")


def build_transformer_skeleton(model: nn.Module, example_input: torch.Tensor,
                               config: PruningConfig, verify: bool = True) -> TransformerSkeleton:
    """`transformer_skeleton`, with `verify` checked by one real prune
    (`verify_transformer_skeleton`)."""
    example_input = example_input.to(next(model.parameters()).device)
    skeleton = transformer_skeleton(model, example_input, config)
    if verify:
        verify_transformer_skeleton(skeleton, model, example_input, config)
    return skeleton


def pruned_block(model: nn.Module, block: Block, heads: int, hidden: int) -> nn.Module:
    """A copy of one block of a rewritten model, alone, pruned to `heads` heads (key/value
    groups under grouped-query attention: the heads unit's count) and `hidden` MLP channels
    (ranked by l2): what the latency model times (`latency.blocks`). `model` is left as it
    was."""
    work = copy.deepcopy(model.get_submodule(block.name))
    inside = Block("", _relative(block.attention, block.name), _relative(block.fc1, block.name),
                   _relative(block.fc2, block.name), block.removable, block.returns,
                   _relative(block.up, block.name) if block.up else "")
    _prune_block(work, inside, {inside.attention: heads, inside.fc1: hidden}, 2.0)
    return work
