"""Transformer blocks priced as units: per-block ONNX Runtime tables over (heads, MLP width).

A pruned ViT's latency is not the sum of its Linear layers: in the 32-px ViT of
results/vit-latency (65 tokens, width 96, 6 blocks) the Linears' lone-layer tables add up to 44%
of the dense network's time; the attention's two matmuls, softmax, transposes, LayerNorms, GELU
and residual adds are the rest, and they shrink with the heads and blocks pruned, not with the
traffic term that prices a CNN's non-layer time. So each encoder block (`pruning.transformer`'s
`find_blocks`) is timed whole, as a lone ONNX graph of the block pruned to h heads and w hidden
channels at the model's tokens and the probe's batch and threads, over a grid of (h, w), and
interpolated bilinearly in between (a block costs close to a + b*h + c*w: attention scales with
the heads, the MLP with its width; bilinear interpolation reproduces that exactly). The time is
the kernel time of all of the graph's nodes (onnxruntime's profiler, fastest run of each node),
as the per-layer tables are timed. Blocks of equal structure share one table.

A block's (heads, hidden) are read off the layer shapes the skeleton predicts (`BlockSite.kept`):
its output projection's in channels over head_dim, its MLP's first Linear's out channels; a
removed block's layers are absent and it costs nothing. The layers inside a block are priced by
its table, not by layer tables (`LatencyModel`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from compressor.io.export import onnx_bytes
from compressor.latency.tables import LayerTable
from compressor.pruning.attention import record_calls, set_module
from compressor.pruning.shapes import LayerShape
from compressor.pruning.transformer import RemovedBlock, find_blocks, pruned_block

FORMAT = "compressor-block-tables-v1"

TimeGraph = Callable[[bytes, tuple[int, ...]], float]
"""ONNX bytes and the input shape -> kernel time (ms) of all the graph's nodes."""


class BlockSite(NamedTuple):
    """One encoder block: where its heads and MLP width are read off layer shapes."""

    name: str  # the block module
    proj: str  # the attention's output projection: in channels = heads * head_dim
    fc1: str  # the MLP's first Linear: out channels = hidden width
    head_dim: int  # proj in channels per heads unit: head_dim (x group_size for grouped-query)
    heads: int  # dense count of the heads unit (key/value groups under grouped-query attention)
    hidden: int  # dense
    layers: tuple[str, ...]  # every Conv2d/Linear inside the block (priced by the block table)
    signature: str  # blocks with equal signatures share one table

    def kept(self, by_name: dict[str, LayerShape]) -> tuple[int, int] | None:
        """(heads, hidden) of the block in these shapes; None when it was removed."""
        if self.proj not in by_name:
            return None
        return by_name[self.proj].in_channels // self.head_dim, by_name[self.fc1].out_channels


class BlockTable(NamedTuple):
    """Kernel time (ms) of one block over a (heads, hidden) grid, bilinear in between."""

    heads: list[int]
    hidden: list[int]
    ms: list[list[float]]  # [len(heads)][len(hidden)]

    def bilinear(self) -> LayerTable:
        """The table as a `LayerTable` over (heads, hidden): what predictions call."""
        return LayerTable(self.heads, self.hidden, self.ms, False)


class BlockTables:
    """The block tables of one network (by signature) and the sites they price."""

    def __init__(self, sites: list[BlockSite], tables: dict[str, BlockTable]):
        self.sites, self.tables = list(sites), dict(tables)
        self.inside = {layer for site in self.sites for layer in site.layers}
        """Names of the layers priced by a block table."""
        self._bilinear = {k: t.bilinear() for k, t in self.tables.items()}  # built once: hot

    def block_ms(self, shapes: list[LayerShape]) -> dict[str, float]:
        """Kernel time (ms) of every block that runs under these shapes (a removed one: absent)."""
        by_name = {s.name: s for s in shapes}
        times = {}
        for site in self.sites:
            kept = site.kept(by_name)
            if kept is not None:
                times[site.name] = self._bilinear[site.signature](*kept)
        return times

    def to_json(self) -> dict:
        return {"format": FORMAT, "sites": [list(s) for s in self.sites],
                "tables": {k: t._asdict() for k, t in self.tables.items()}}

    @classmethod
    def from_json(cls, blob: dict) -> BlockTables:
        if blob.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} blob")
        sites = [BlockSite(*s[:6], tuple(s[6]), s[7]) for s in blob["sites"]]
        return cls(sites, {k: BlockTable(**t) for k, t in blob["tables"].items()})


def block_sites(model: nn.Module, example_input: torch.Tensor
                ) -> tuple[list[BlockSite], dict[str, torch.Tensor]]:
    """The encoder blocks of a rewritten transformer (`pruning.explicit_attention`) in call order,
    and the input each block received on `example_input` (one sample)."""
    blocks = find_blocks(model, example_input)
    calls = record_calls(model, example_input, [b.name for b in blocks])
    sites, inputs = [], {}
    for block in blocks:
        attention = model.get_submodule(block.attention)
        fc1 = model.get_submodule(block.fc1)
        x = calls[block.name][0].args[0]
        prefix = block.name + "."
        layers = tuple(n for n, m in model.named_modules()
                       if n.startswith(prefix) and isinstance(m, nn.Conv2d | nn.Linear))
        signature = "-".join(str(v) for v in (
            type(model.get_submodule(block.name)).__name__, "x".join(map(str, x.shape[1:])),
            attention.num_heads, attention.head_dim, int(attention.fused), fc1.out_features))
        sites.append(BlockSite(block.name, f"{block.attention}.proj", block.fc1,
                               attention.head_dim * attention.group_size, attention.kv_heads,
                               fc1.out_features, layers, signature))
        inputs[block.name] = x
    return sites, inputs


def measure_block_tables(model: nn.Module, example_input: torch.Tensor, batch: int,
                         heads_grid: Callable[[int], list[int]],
                         hidden_grid: Callable[[int], list[int]], time_graph: TimeGraph
                         ) -> BlockTables:
    """Time one block of each signature, pruned to every (heads, hidden) of its grid
    (`heads_grid(dense heads)`, `hidden_grid(dense hidden)`), alone at `batch` x its tokens."""
    sites, inputs = block_sites(model, example_input)
    blocks = {b.name: b for b in find_blocks(model, example_input)}
    tables: dict[str, BlockTable] = {}
    for site in sites:
        if site.signature in tables:
            continue
        x = inputs[site.name]
        heads, hidden = heads_grid(site.heads), hidden_grid(site.hidden)
        ms = [[time_graph(onnx_bytes(pruned_block(model, blocks[site.name], h, w), x),
                          (batch, *x.shape[1:])) for w in hidden] for h in heads]
        tables[site.signature] = BlockTable(heads, hidden, ms)
    return BlockTables(sites, tables)


def without_blocks(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A copy of a rewritten transformer with every encoder block replaced by the identity: what
    runs outside the blocks (embedding, final norm, head), timed as the model's constant rest.
    Measured directly rather than as the dense network minus its block tables: on a busy machine
    that difference is mostly the tables' noise."""
    work = copy.deepcopy(model)
    for block in find_blocks(model, example_input):
        set_module(work, block.name, RemovedBlock(block.returns))
    return work
