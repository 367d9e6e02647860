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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from torch import nn

from compressor.errors import UserError
from compressor.flags import flag
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
from compressor.pruning.decoder_export import decoder_onnx_bytes, empty_cache, read_layers

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
