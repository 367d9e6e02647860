"""A causal decoder as one ONNX graph with its KV cache as inputs and outputs, verified, and
greedy generation in onnxruntime.

It lives beside `pruning.checkpoints` rather than in `io`: it exports the `ExplicitAttention` that
pruning rewrites attention into, through `io.export`'s tolerance and parity.

The graph (`decoder_onnx_bytes`) takes `tokens` [batch, n] (int64) and, per attention layer i that
still runs, `past_key_i` and `past_value_i` [batch, heads_i, past, head_dim]; it returns `logits`
[batch, n, vocab] and `present_key_i`, `present_value_i` [batch, heads_i, past + n, head_dim]. The
past length and n are dynamic: one graph prefills a prompt (past 0) and decodes a token (n 1).

Per-layer head counts. Stock exporters and runtimes (Hugging Face Optimum, onnxruntime-genai)
describe the cache by one `num_heads` for every layer; a pruned decoder here keeps a different
count in every block and drops whole blocks. Ours records each layer's count in the graph itself:
the heads axis of `past_key_i` / `past_value_i` is a fixed size, and the file's metadata
(`DECODER_METADATA`) names every cache layer's module, heads and head_dim in order. A removed
block has no cache inputs at all. Such a file runs in plain onnxruntime (`generate` below) but
not in runtimes that assume one head count.

What it exports: a model whose attention is `ExplicitAttention` (`pruning.explicit_attention`),
pruned or not, run by its own `forward` with two substitutions (`CachedDecoder`): every attention
reads its past keys and values and returns the present ones (`CachedAttention`), and the position
embedding (`positions`, an `nn.Embedding` called on `arange(n)`, as `zoo.embedded.TinyGPT` and
GPT-2 do) is shifted by the past length. That the substitutions are right for a given model is not
assumed but checked (`verify_decoder`): the cached graph's logits, fed a sequence in chunks, match
the plain model's on the whole sequence, and greedy decoding in onnxruntime with the cache picks
the same tokens as PyTorch without one over a prompt plus 32 steps.

    work = explicit_attention(gpt, tokens)                 # or a pruned copy
    report = export_decoder(work, "gpt.onnx", tokens)      # checker, parity, greedy tokens
    generate("gpt.onnx", b"def main(", 32)                 # text from onnxruntime
"""

from __future__ import annotations

import copy
import io
import json
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from compressor.errors import ExportError
from compressor.io import atomic
from compressor.io.export import DEFAULT_TOLERANCE, Tolerance, compare_outputs
from compressor.pruning.attention import ExplicitAttention, set_module

DECODER_METADATA = "compressor.decoder"
"""Key of the ONNX metadata entry (JSON): {"context": positions, "layers": [{"name", "heads",
"head_dim"} per cache layer, in input order]}."""

GREEDY_STEPS = 32
"""Decode steps after the prompt whose greedy tokens must agree (issue 35)."""


class CacheLayer(NamedTuple):
    """One attention layer's cache: its module, heads and head size."""

    name: str
    heads: int
    head_dim: int


# --- the torch side: the model's own forward with a cache -------------------------------------------


class CachedAttention(nn.Module):
    """An `ExplicitAttention` that attends over its past keys and values as well as the new tokens.

    `past` (key, value), each [batch, heads, past, head_dim], is set before the decoder's forward;
    the new tokens' queries see every past position and the new positions up to their own (the
    causal mask shifted by the past length); `present` holds (key, value) over past + new after it.
    The mask the block passes is for the new tokens alone and is not used: a block must call its
    attention causally, which `verify_decoder` checks by comparing with the model run whole.
    """

    def __init__(self, attention: ExplicitAttention):
        super().__init__()
        if not attention.batch_first:
            raise ValueError("a cached decoder needs batch-first attention")
        self.attention = attention
        self.past: tuple[torch.Tensor, torch.Tensor] | None = None
        self.present: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        a = self.attention
        b, n, _ = x.shape
        h, d = a.num_heads, a.head_dim
        if a.fused:
            q, k, v = a.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (layer(x).reshape(b, n, h, d).transpose(1, 2) for layer in (a.q, a.k, a.v))
        past_k, past_v = self.past
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        self.present = (k, v)
        query_at = torch.arange(n, device=x.device) + past_k.shape[2]
        key_at = torch.arange(k.shape[2], device=x.device)
        hidden = key_at[None, :] > query_at[:, None]  # True: a later position, may not see
        scores = ((q * d ** -0.5) @ k.transpose(-2, -1)).masked_fill(hidden, float("-inf"))
        out = a.proj((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, h * d))
        return out if a.returns == 0 else (out, *([None] * (a.returns - 1)))


class ShiftedPositions(nn.Module):
    """A position embedding looked up `offset` positions later (the past length)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        self.offset: torch.Tensor | int = 0

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.embedding(positions + self.offset)


class CachedDecoder(nn.Module):
    """`forward(tokens, past_key_0, past_value_0, ...) -> (logits, present_key_0,
    present_value_0, ...)`: a copy of `model` (left untouched) run by its own forward with every
    `ExplicitAttention` cached and the position embedding named `positions` shifted by the past
    length. `layers` lists the cache layers in argument order (the model's module order)."""

    def __init__(self, model: nn.Module, positions: str = "position"):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        embedding = self.model.get_submodule(positions)
        if not isinstance(embedding, nn.Embedding):
            raise ValueError(f"{positions} is a {type(embedding).__name__}, not the position "
                             "nn.Embedding")
        self.positions = ShiftedPositions(embedding)
        set_module(self.model, positions, self.positions)
        found = [(n, m) for n, m in self.model.named_modules() if isinstance(m, ExplicitAttention)]
        if not found:
            raise ValueError("no ExplicitAttention left to cache (rewrite the attention first, "
                             "and keep at least one block)")
        self.cached = nn.ModuleList()
        for name, attention in found:
            cached = CachedAttention(attention)
            set_module(self.model, name, cached)
            self.cached.append(cached)
        self.layers = [CacheLayer(n, m.num_heads, m.head_dim) for n, m in found]
        self.context = getattr(model, "context", embedding.num_embeddings)

    def forward(self, tokens: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(past) != 2 * len(self.cached):
            raise ValueError(f"{len(past)} past tensors for {len(self.cached)} cache layers")
        for i, cached in enumerate(self.cached):
            cached.past = (past[2 * i], past[2 * i + 1])
        self.positions.offset = past[0].shape[2]
        logits = self.model(tokens)
        presents = [t for cached in self.cached for t in cached.present]
        for cached in self.cached:
            cached.past = cached.present = None
        return (logits, *presents)

    def empty_past(self, batch: int = 1, length: int = 0) -> list[torch.Tensor]:
        """Zero past keys and values of `length` positions, in argument order."""
        return [torch.zeros(batch, layer.heads, length, layer.head_dim)
                for layer in self.layers for _ in range(2)]


# --- the ONNX graph -----------------------------------------------------------------------------


def cache_names(count: int, prefix: str) -> list[str]:
    """["{prefix}_key_0", "{prefix}_value_0", ...] for `count` cache layers."""
    return [f"{prefix}_{kind}_{i}" for i in range(count) for kind in ("key", "value")]


def decoder_onnx_bytes(model: nn.Module, positions: str = "position", opset: int = 17) -> bytes:
    """`CachedDecoder(model)` as ONNX bytes (the legacy TorchScript exporter, as `io.export`), with the
    batch, token and past axes dynamic and the cache layers in the metadata."""
    import onnx

    decoder = CachedDecoder(model, positions)
    tokens = torch.zeros(1, 3, dtype=torch.long)
    past = decoder.empty_past(1, 5)  # traced with a past, so no branch assumes it empty
    inputs, outputs = cache_names(len(decoder.layers), "past"), \
        cache_names(len(decoder.layers), "present")
    axes = {"tokens": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"},
            **{name: {0: "batch", 2: "past"} for name in inputs},
            **{name: {0: "batch", 2: "total"} for name in outputs}}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(decoder, (tokens, *past), buffer, opset_version=opset, dynamo=False,
                          input_names=["tokens", *inputs], output_names=["logits", *outputs],
                          dynamic_axes=axes)
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key = DECODER_METADATA
    entry.value = json.dumps({"context": int(decoder.context),
                              "layers": [layer._asdict() for layer in decoder.layers]})
    return proto.SerializeToString()


def read_layers(session: Any) -> tuple[list[CacheLayer], int | None]:
    """The cache layers of a decoder session (from its metadata, checked against its inputs) and
    its context (positions), None when the file does not say."""
    meta = session.get_modelmeta().custom_metadata_map.get(DECODER_METADATA)
    shapes = {i.name: i.shape for i in session.get_inputs()}
    count = sum(name.startswith("past_key_") for name in shapes)
    if meta is None:
        layers = [CacheLayer(f"layer {i}", shapes[f"past_key_{i}"][1], shapes[f"past_key_{i}"][3])
                  for i in range(count)]
        return layers, None
    blob = json.loads(meta)
    layers = [CacheLayer(**layer) for layer in blob["layers"]]
    for i, layer in enumerate(layers):
        if shapes[f"past_key_{i}"][1] != layer.heads:
            raise ValueError(f"past_key_{i} has {shapes[f'past_key_{i}'][1]} heads, the "
                             f"metadata says {layer.heads}")
    return layers, blob.get("context")


# --- running it in onnxruntime ------------------------------------------------------------------


def decoder_session(model: bytes | str | Path | Any, threads: int = 1) -> Any:
    """An onnxruntime CPU session of a decoder (bytes or a file; a session comes back as it is)."""
    if hasattr(model, "run"):
        return model
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def empty_cache(layers: list[CacheLayer], batch: int = 1, length: int = 0
                ) -> dict[str, np.ndarray]:
    """Past keys and values of `length` positions (zeros), by input name."""
    names = cache_names(len(layers), "past")
    return {name: np.zeros((batch, layer.heads, length, layer.head_dim), np.float32)
            for layer, pair in zip(layers, zip(names[::2], names[1::2], strict=True), strict=True)
            for name in pair}


def run_cached(session: Any, tokens: np.ndarray, cache: dict[str, np.ndarray]
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One call: logits of `tokens` [batch, n] after the past in `cache`, and the cache with
    them appended (renamed as the next call's inputs)."""
    outputs = session.run(None, {"tokens": tokens.astype(np.int64), **cache})
    names = [o.name for o in session.get_outputs()]
    present = {name.replace("present_", "past_", 1): value
               for name, value in zip(names[1:], outputs[1:], strict=True)}
    return outputs[0], present


def greedy_onnx(session: Any, prompt: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens after `prompt`: one prefill call, then one call per token with the
    cache (batch 1)."""
    layers, _ = read_layers(session)
    logits, cache = run_cached(session, np.array([prompt]), empty_cache(layers))
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[0, -1].argmax()))
        if len(tokens) < steps:
            logits, cache = run_cached(session, np.array([[tokens[-1]]]), cache)
    return tokens


def greedy_torch(model: nn.Module, prompt: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens after `prompt` from the plain model, the whole sequence rerun each
    step (no cache): the reference the cached graph must reproduce."""
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([sequence]))
            sequence.append(int(logits[0, -1].argmax()))
    return sequence[len(prompt):]


def generate(session_or_path: bytes | str | Path | Any, prompt: bytes, steps: int) -> bytes:
    """The prompt's greedy continuation of `steps` bytes from a byte-vocabulary decoder graph,
    run in onnxruntime with the KV cache. The prompt plus the steps must fit the model's context
    (its position embedding)."""
    session = decoder_session(session_or_path)
    _, context = read_layers(session)
    if not prompt:
        raise ValueError("generate needs a prompt of at least one byte")
    if context is not None and len(prompt) + steps > context:
        raise ValueError(f"{len(prompt)} prompt bytes + {steps} steps exceed the context of "
                         f"{context} positions")
    return bytes(greedy_onnx(session, list(prompt), steps))


# --- verification -------------------------------------------------------------------------------


class DecoderParity(NamedTuple):
    """The cached graph in onnxruntime against the plain model in PyTorch."""

    max_abs_diff: float  # over every logit of the sequence, fed in chunks with the cache
    max_abs_output: float
    relative_diff: float
    top1_agreement: float  # per token position
    greedy_agreement: float  # fraction of the greedy steps with the same token
    greedy_steps: int
    tolerance: Tolerance
    failure: str | None  # why verification fails, None when it passes


def verify_decoder(model: nn.Module, data: bytes | Any, tokens: torch.Tensor,
                   steps: int = GREEDY_STEPS, tolerance: Tolerance = DEFAULT_TOLERANCE
                   ) -> DecoderParity:
    """Check the cached graph against `model` on `tokens` [1, n] (real text, n >= 2):

    - logits: the sequence fed to onnxruntime as a prefill of its first half and then one token at
      a time (empty past, then a growing one), against `model` on the whole sequence, within
      `tolerance` (`io.export.compare_outputs`: relative to the largest logit, same top-1 per
      position outside close calls);
    - greedy tokens: `steps` greedy steps after the sequence from onnxruntime with the cache and
      from PyTorch without one must be identical (the sequence plus the steps must fit the
      context).
    """
    session = decoder_session(data)
    layers, _ = read_layers(session)
    sequence = tokens.detach().cpu().numpy()
    if sequence.ndim != 2 or sequence.shape[0] != 1 or sequence.shape[1] < 2:
        raise ValueError(f"verify a decoder on tokens [1, n >= 2], not {list(sequence.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(tokens.detach().cpu()).numpy()
        split = sequence.shape[1] // 2
        chunks, cache = [], empty_cache(layers)
        for piece in [sequence[:, :split], *np.split(sequence[:, split:],
                                                     sequence.shape[1] - split, axis=1)]:
            logits, cache = run_cached(session, piece, cache)
            chunks.append(logits)
        logits = compare_outputs(reference, np.concatenate(chunks, axis=1), tolerance)
        prompt = sequence[0].tolist()
        want = greedy_torch(model, prompt, steps)
    finally:
        model.train(was_training)
    got = greedy_onnx(session, prompt, steps)
    agreement = float(np.mean([a == b for a, b in zip(got, want, strict=True)])) if steps else 1.0
    failure = logits.failure
    if failure is None and got != want:
        first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        failure = (f"greedy tokens differ from step {first} of {steps} (onnxruntime {got[first]},"
                   f" PyTorch {want[first]}; {agreement:.0%} agree)")
    return DecoderParity(logits.max_abs_diff, logits.max_abs_output, logits.relative_diff,
                         logits.top1_agreement, agreement, steps, tolerance, failure)


class DecoderExportReport(NamedTuple):
    """One verified decoder export."""

    path: str
    opset: int
    layers: list[CacheLayer]  # the cache layers, in input order
    parity: DecoderParity
    seconds: float  # export + check + verification + write


def export_decoder(model: nn.Module, path: str | Path, tokens: torch.Tensor,
                   positions: str = "position", opset: int = 17,
                   tolerance: Tolerance = DEFAULT_TOLERANCE) -> DecoderExportReport:
    """Export `model` with its KV cache (`decoder_onnx_bytes`), check it with onnx.checker and
    `verify_decoder` on `tokens` [1, n] of real text, and write it atomically. A failed export or
    check raises `ExportError` with the numbers in one line and writes nothing."""
    import onnx

    started = time.perf_counter()
    name = type(model).__name__
    try:
        data = decoder_onnx_bytes(model, positions, opset)
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:  # the exporter and checker raise many types
        reason = " ".join(str(exc).split())[:200] or "no message"
        raise ExportError(f"KV-cache ONNX export of {name} failed ({type(exc).__name__}: "
                          f"{reason})") from exc
    session = decoder_session(data)
    result = verify_decoder(model, session, tokens, tolerance=tolerance)
    if result.failure is not None:
        raise ExportError(f"KV-cache ONNX export of {name} does not match PyTorch: "
                          f"{result.failure}")
    atomic.write_bytes(path, data)
    return DecoderExportReport(str(path), opset, read_layers(session)[0], result,
                               time.perf_counter() - started)
