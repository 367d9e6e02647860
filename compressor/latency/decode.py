"""The latency a language model's user feels: one decoded token, and the prefill of a prompt.

Both are timed on the KV-cache graph that ships (`pruning.decoder_export`), batch 1, by the same
paired probe as every other latency (`latency.probe`: blocks of runs alternating with the dense
graph, ratio the median block ratio, settings reported):

- `decode`: one new token after `DecodeShape.past` cached positions (96 of gpt_tiny's 128): the
  cache goes in and comes out, the output layer is included; ms per token.
- `prefill`: a prompt of `DecodeShape.prompt` tokens after an empty cache, returning the logits of
  every position and the cache.

    probe = DecodeProbe(dense, ProbeSettings(), DecodeShape(past=96, prompt=128))
    probe.measure(pruned, "decode").ratio       # e.g. 0.55 of the dense model's ms per token
    probe.dense_ms("prefill")                   # the dense model alone

`measure_decode_tables` prices a policy at either phase without exporting it (`DecodeTables`:
per-block tables over heads x MLP width at the phase's shape, plus a constant rest), for the
action wall's decode and prefill costs.
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, NamedTuple

import numpy as np
import torch
from torch import nn

from compressor.errors import UserError
from compressor.flags import flag
from compressor.latency.blocks import BlockTable, BlockTables, block_sites
from compressor.latency.probe import (
    LatencyResult,
    PairedLatency,
    ProbeSettings,
    Session,
    architecture_key,
    measure_ms,
    measure_pair,
    session_options,
)
from compressor.pruning.attention import ExplicitAttention, first_tensor, set_module
from compressor.pruning.decoder_export import (
    CachedAttention,
    cache_names,
    decoder_onnx_bytes,
    empty_cache,
    read_layers,
)
from compressor.pruning.shapes import LayerShape, measure_layer_shapes
from compressor.pruning.transformer import RemovedBlock, find_blocks, pruned_block

PHASES = ("decode", "prefill")


@dataclass(frozen=True)
class DecodeShape:
    """What a decode and a prefill latency are measured at (batch 1)."""

    past: Annotated[int, flag("--decode-past")] = 96
    """Cached positions before the timed token (decode). gpt_tiny: 96 of its 128-token context,
    late in a window, where attention over the cache costs most."""
    prompt: Annotated[int, flag("--prefill-tokens")] = 128
    """Tokens of the timed prompt (prefill), after an empty cache."""

    def __post_init__(self) -> None:
        if self.past < 0 or self.prompt < 1:
            raise UserError(f"decode past {self.past} must be >= 0 and prefill tokens "
                            f"{self.prompt} >= 1")

    def feed(self, layers: list, phase: str, vocab: int, seed: int = 0
             ) -> dict[str, np.ndarray]:
        """The timed inputs of `phase`: seeded random tokens below `vocab` and (decode) a random
        cache."""
        rng = np.random.default_rng(seed)
        if phase == "decode":
            tokens, cache = rng.integers(0, vocab, (1, 1)), empty_cache(layers, 1, self.past)
            cache = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in cache.items()}
        elif phase == "prefill":
            tokens, cache = rng.integers(0, vocab, (1, self.prompt)), empty_cache(layers, 1, 0)
        else:
            raise ValueError(f"phase {phase!r} is not one of {PHASES}")
        return {"tokens": tokens.astype(np.int64), **cache}


def decoder_timing_session(model: bytes | str | Path, settings: ProbeSettings, shape: DecodeShape,
                           phase: str) -> Session:
    """A probe `Session` of a KV-cache decoder graph, prepared with the inputs of `phase`: it
    times and pairs like an image model's (`measure_ms`, `measure_pair`)."""
    import onnxruntime as ort

    source = "<ONNX bytes>" if isinstance(model, bytes) else str(model)
    inner = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                 session_options(settings), providers=["CPUExecutionProvider"])
    names = [i.name for i in inner.get_inputs()]
    if not names or names[0] != "tokens":
        raise UserError(f"{source} is not a KV-cache decoder graph (inputs {names[:3]})")
    session = Session(inner, "tokens", list(inner.get_inputs()[0].shape), source, settings)
    vocab = inner.get_outputs()[0].shape[-1]
    session.feed = shape.feed(read_layers(inner)[0], phase, vocab if isinstance(vocab, int) else 2)
    return session


class DecodeProbe:
    """Paired decode and prefill latency of pruned decoders against the dense one: each exported
    with its KV cache (`decoder_onnx_bytes`), the dense sessions kept warm between measurements."""

    def __init__(self, dense: nn.Module, settings: ProbeSettings, shape: DecodeShape = DecodeShape(),
                 positions: str = "position"):
        self.settings, self.shape, self.positions = settings, shape, positions
        self.dense_onnx = decoder_onnx_bytes(dense, positions)
        self.references = {phase: decoder_timing_session(self.dense_onnx, settings, shape, phase)
                           for phase in PHASES}

    def dense_ms(self, phase: str) -> LatencyResult:
        """The dense graph alone at `phase` (ms per decoded token, or per prefill)."""
        return measure_ms(self.references[phase], self.settings)

    def measure(self, model: nn.Module, phase: str) -> PairedLatency:
        """One paired round of `model`'s graph against the dense one at `phase`."""
        data = decoder_onnx_bytes(model, self.positions)
        return self.measure_onnx(data, phase)

    def measure_onnx(self, data: bytes, phase: str) -> PairedLatency:
        """Like `measure`, for a graph already exported (e.g. quantized)."""
        candidate = decoder_timing_session(data, self.settings, self.shape, phase)
        paired = measure_pair(candidate, self.references[phase], self.settings)
        return paired._replace(settings={**paired.settings, "phase": phase,
                                         **asdict(self.shape)},
                               architecture=architecture_key(data))


# --- the decode latency model: per-block tables at the decode (or prefill) shape ---------------


class DecodingBlocks(nn.Module):
    """`copies` copies of one decoder block in a row, each with its attention cached
    (`CachedAttention`) and its own cache: `(x [1, n, width], past_key_0, past_value_0, ...) ->
    (out, present_key_0, present_value_0, ...)`. The copies' weights differ by noise far below
    float32's resolution of the outputs that matter here, so neither the exporter nor
    onnxruntime shares them: each copy reads its own, as the decoder's blocks do."""

    def __init__(self, block: nn.Module, copies: int):
        super().__init__()
        self.blocks, self.cached = nn.ModuleList(), nn.ModuleList()
        generator = torch.Generator().manual_seed(0)
        for _ in range(copies):
            work = copy.deepcopy(block).eval()
            with torch.no_grad():
                for p in work.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * 1e-6)
            name, attention = next((n, m) for n, m in work.named_modules()
                                   if isinstance(m, ExplicitAttention))
            cached = CachedAttention(attention)
            set_module(work, name, cached)
            self.blocks.append(work)
            self.cached.append(cached)

    def forward(self, x: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        presents = []
        for i, (block, cached) in enumerate(zip(self.blocks, self.cached, strict=True)):
            cached.past = (past[2 * i], past[2 * i + 1])
            x = first_tensor(block(x))
            presents += cached.present
            cached.past = cached.present = None
        return (x, *presents)


def decoding_blocks_graph(block: nn.Module, copies: int, width: int, tokens: int, past: int
                          ) -> tuple[bytes, dict[str, np.ndarray]]:
    """ONNX bytes of `DecodingBlocks(block, copies)` and a seeded feed of `tokens` new after
    `past` cached. Its axes are dynamic as the decoder's are: a graph of fixed shapes folds the
    shape arithmetic (Shape, Gather, Concat of sizes) that the decoder runs in every block."""
    module = DecodingBlocks(block, copies)
    attention = module.cached[0].attention
    cache = (1, attention.num_heads, past, attention.head_dim)
    rng = np.random.default_rng(0)
    pasts, presents = cache_names(copies, "past"), cache_names(copies, "present")
    feed = {"x": rng.standard_normal((1, tokens, width)).astype(np.float32),
            **{name: rng.standard_normal(cache).astype(np.float32) for name in pasts}}
    axes = {"x": {0: "batch", 1: "tokens"}, "out": {0: "batch", 1: "tokens"},
            **{name: {0: "batch", 2: "past"} for name in pasts},
            **{name: {0: "batch", 2: "total"} for name in presents}}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, tuple(torch.from_numpy(v) for v in feed.values()), buffer,
                          opset_version=17, dynamo=False, input_names=list(feed),
                          output_names=["out", *presents], dynamic_axes=axes)
    return buffer.getvalue(), feed


def passthrough_graph(feed: dict[str, np.ndarray]) -> bytes:
    """A graph that returns its inputs (Identity each): what a lone graph of these inputs pays
    for a run without doing anything (onnxruntime's per-run overhead, the copies)."""
    import onnx
    from onnx import helper

    inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(value.shape))
              for name, value in feed.items()]
    outputs = [helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT,
                                             list(value.shape)) for name, value in feed.items()]
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in feed]
    graph = helper.make_graph(nodes, "passthrough", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def fastest_ms(data: bytes, feed: dict[str, np.ndarray], settings: ProbeSettings,
               runs: int = 300) -> float:
    """The fastest of `runs` wall-clock runs (ms) after `settings.warmup`: on this machine noise
    only ever adds time."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, session_options(settings),
                                   providers=["CPUExecutionProvider"])
    for _ in range(settings.warmup):
        session.run(None, feed)
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - started)
    return best * 1000.0


class DecodeTables(NamedTuple):
    """A decoder's predicted latency at one phase: per-block tables over (heads, MLP width) at
    that phase's shape, one set per number of blocks that run, plus a constant rest.

    The entry for c blocks times c copies of the pruned block in a row, each with its own
    weights and cache (`DecodingBlocks`: one token after `shape.past` cached positions for
    decode, `shape.prompt` tokens after none for prefill), as wall time, the fastest of many
    runs, less that of a graph passing the same inputs through (`passthrough_graph`), divided
    by c. Over a grid, bilinear in between (`latency.blocks.BlockTable`). A network whose k
    blocks run is priced by the tables for k (the nearest measured count) plus the rest for k:
    the fastest run of the KV-cache graph with its first k blocks dense and the others removed,
    less their tables (the embeddings, final norm, output layer and per-run overhead, which
    pruning does not change, but which also read faster from a warmer cache). A removed block
    costs nothing.

    Why not as the ViT tables are (`latency.blocks`: one block alone, onnxruntime's per-node
    kernel times): measured on gpt_tiny (decode, past 96, 1 thread, Xeon with AVX-512), a
    decode block's ~30 nodes take 1-3 us each, at the profiler's own cost and resolution, and
    its tables came out flat (0.068-0.085 ms at any heads and width) while measured ratios
    ranged 0.26-0.98. And why per count of blocks: one block alone, timed by wall clock, stays
    in the core's cache and cost 0.027 ms, but each block added to the decoder cost 0.07-0.085
    ms (dense gpt_tiny with 1, 2, 3, 4 blocks: 0.038, 0.110, 0.195, 0.268 ms, fastest of 500
    runs, repeatable to 1%): decode reads every weight once per token, and four blocks' 3.2 MB
    do not stay in cache between runs while one block's 0.8 MB does. Over 50 random policies
    (benchmarks/decode_latency.py, a shared machine at load 7-15), decode erred by median 5.8%,
    max 81% with tables at the dense count alone (heavily pruned networks fit the cache again:
    46-81% off with one or two blocks left), 2.7% / 79% with tables per count and one rest, and
    3.9% / 11.0% with both per count."""

    phase: str
    shape: DecodeShape
    blocks: dict[int, BlockTables]  # by the number of blocks that run
    rest_ms: dict[int, float]  # likewise
    dense_ms: float  # the dense graph measured: its rest plus its blocks' tables

    def predict_ms(self, shapes: list[LayerShape]) -> float:
        """Predicted ms of the network whose layers have `shapes` (`Skeleton.layer_shapes`)."""
        any_tables = next(iter(self.blocks.values()))
        running = len(any_tables.block_ms(shapes))
        count = min(self.blocks, key=lambda c: (abs(c - running), -c))
        if running == 0:
            return self.rest_ms[count]
        return self.rest_ms[count] + sum(self.blocks[count].block_ms(shapes).values())

    def predict_ratio(self, shapes: list[LayerShape]) -> float:
        """`predict_ms` as a ratio of the dense graph's: what a decode or prefill budget costs."""
        return self.predict_ms(shapes) / self.dense_ms

    def to_json(self) -> dict:
        return {"phase": self.phase, "shape": asdict(self.shape),
                "blocks": {str(c): t.to_json() for c, t in self.blocks.items()},
                "rest_ms": {str(c): ms for c, ms in self.rest_ms.items()},
                "dense_ms": self.dense_ms}

    @classmethod
    def from_json(cls, blob: dict) -> DecodeTables:
        return cls(blob["phase"], DecodeShape(**blob["shape"]),
                   {int(c): BlockTables.from_json(t) for c, t in blob["blocks"].items()},
                   {int(c): float(ms) for c, ms in blob["rest_ms"].items()},
                   float(blob["dense_ms"]))


def measure_decode_tables(model: nn.Module, tokens: torch.Tensor, settings: ProbeSettings,
                          shape: DecodeShape, phase: str, heads_grid: Callable[[int], list[int]],
                          hidden_grid: Callable[[int], list[int]],
                          counts: list[int] | None = None, runs: int = 300,
                          positions: str = "position") -> DecodeTables:
    """Time one block of each signature of a rewritten decoder (`pruning.explicit_attention`)
    pruned to every (heads, hidden) of its grid at `phase`'s shape, in a row of c copies for each
    c of `counts` (None: 1 to the number of blocks), and the KV-cache graph whole with c dense
    blocks (`DecodeTables`). `tokens` [1, n] is an example the blocks are found on."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {PHASES}")
    new, past = (1, shape.past) if phase == "decode" else (shape.prompt, 0)
    sites, inputs = block_sites(model, tokens)
    blocks = {b.name: b for b in find_blocks(model, tokens)}
    counts = sorted(set(counts or range(1, len(sites) + 1)) | {len(sites)})

    def timed(block: nn.Module, width: int, copies: int) -> float:
        graph, feed = decoding_blocks_graph(block, copies, width, new, past)
        return max(0.0, fastest_ms(graph, feed, settings, runs)
                   - fastest_ms(passthrough_graph(feed), feed, settings, runs)) / copies

    by_count = {}
    for copies in counts:
        tables: dict[str, BlockTable] = {}
        for site in sites:
            if site.signature not in tables:
                width = inputs[site.name].shape[-1]
                heads, hidden = heads_grid(site.heads), hidden_grid(site.hidden)
                tables[site.signature] = BlockTable(heads, hidden, [
                    [timed(pruned_block(model, blocks[site.name], h, w), width, copies)
                     for w in hidden] for h in heads])
        by_count[copies] = BlockTables(sites, tables)
    rests, dense_ms = {}, 0.0
    for copies in counts:  # the first `copies` blocks dense, the others removed
        work = copy.deepcopy(model)
        for site in sites[copies:]:
            set_module(work, site.name, RemovedBlock(blocks[site.name].returns))
        data = decoder_onnx_bytes(work, positions)
        measured = fastest_ms(data, decoder_timing_session(data, settings, shape, phase).feed,
                              settings, runs)
        tabled = sum(by_count[copies].block_ms(measure_layer_shapes(work, tokens)).values())
        rests[copies] = max(0.0, measured - tabled)
        dense_ms = rests[copies] + tabled  # the last count is the dense network's
    return DecodeTables(phase, shape, by_count, rests, dense_ms)
