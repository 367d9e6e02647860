"""Reference points for a byte-level LM's test bits per byte, measured on the same corpus split.

    python -m benchmarks.lm_reference --out runs/bench/lm/summary.json \
        --baseline models/gpt_tiny-stdlib.pt      # with the cached baseline's row and prefill ms

A model of the stdlib's source is only as good as what it beats: byte frequencies (a unigram
model), a bigram model (add-one counts of byte pairs, fitted on the train split) and general
compressors (zlib and lzma at their strongest, on the test split alone, so they see no training
text) give the bits per byte the embedded GPT's test cross-entropy is read against. Seconds, not
minutes: counts and compressors only.
"""

from __future__ import annotations

import argparse
import lzma
import math
import zlib

import numpy as np

from compressor.io import atomic
from compressor.zoo.text import TextConfig, load_corpus


def ngram_bits_per_byte(train: np.ndarray, test: np.ndarray, order: int) -> float:
    """Cross-entropy (bits per byte) on `test` of an add-one smoothed n-gram byte model
    (order 1: byte frequencies; 2: each byte given the one before) counted on `train`.

    >>> data = np.frombuffer(b"ab" * 1000, dtype=np.uint8)
    >>> round(ngram_bits_per_byte(data, data, 1), 2), round(ngram_bits_per_byte(data, data, 2), 2)
    (1.17, 0.33)
    """
    if order == 1:
        counts = np.bincount(train, minlength=256).astype(np.float64) + 1
        return float(-np.log2(counts[test] / counts.sum()).mean())
    pairs = np.zeros((256, 256))
    np.add.at(pairs, (train[:-1], train[1:]), 1)
    pairs += 1
    probs = pairs[test[:-1], test[1:]] / pairs.sum(axis=1)[test[:-1]]
    return float(-np.log2(probs).mean())


def compressor_bits_per_byte(data: bytes) -> dict[str, float]:
    """Bits per byte of `data` under zlib level 9 and lzma preset 9 (extreme)."""
    return {"zlib9": 8 * len(zlib.compress(data, 9)) / len(data),
            "lzma9e": 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data)}


def baseline_row(path: str) -> dict:
    """A cached causal LM's pretrain numbers (its checkpoint's metadata) and its prefill latency:
    the exported full-window forward at batch 1, one thread, in onnxruntime (ms)."""
    import torch

    from compressor.io.export import onnx_bytes
    from compressor.latency import ProbeSettings, make_session, measure_ms
    from compressor.pruning import explicit_attention
    from compressor.zoo.models import load_baseline

    model, meta = load_baseline(path)
    ids = torch.zeros(1, meta["context"], dtype=torch.long)
    session = make_session(onnx_bytes(explicit_attention(model.eval(), ids), ids),
                           ProbeSettings(batch_size=1))
    prefill = measure_ms(session, ProbeSettings(batch_size=1))
    return {"perplexity": meta["test_perplexity"], "bits_per_byte": meta["test_bits_per_byte"],
            "next_byte_top1": meta["test_next_byte_top1"],
            "pretrain_minutes": meta["train_minutes"],
            "pretrain_cpu_minutes": meta.get("train_cpu_minutes"), "steps": meta["steps"],
            "corpus_fingerprint": meta["data_fingerprint"],
            "python_version": meta["python_version"], "prefill_ms": prefill.ms,
            "prefill_settings": prefill.settings, "decode_ms": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-bytes", type=int, default=None)
    parser.add_argument("--baseline", default=None, help="a cached causal LM (models/*.pt)")
    parser.add_argument("--out", default="runs/bench/lm/summary.json")
    args = parser.parse_args(argv)
    corpus = load_corpus(TextConfig(max_bytes=args.max_bytes))
    train, test = corpus.train.data.numpy(), corpus.test.data.numpy()
    rows = {"unigram": ngram_bits_per_byte(train, test, 1),
            "bigram": ngram_bits_per_byte(train, test, 2),
            **compressor_bits_per_byte(test.tobytes())}
    result = {"reference": {
        "corpus_fingerprint": corpus.fingerprint, "python_version": corpus.python_version,
        "test_bytes": len(test), "train_bytes": len(train), "bits_per_byte": rows,
        "perplexity": {k: math.exp(v * math.log(2)) for k, v in rows.items()}}}
    for name, bits in rows.items():
        print(f"{name}: {bits:.3f} bits/byte (perplexity {2 ** bits:.2f})")
    if args.baseline:
        result["baseline"] = row = baseline_row(args.baseline)
        print(f"baseline: {row['bits_per_byte']:.3f} bits/byte (perplexity "
              f"{row['perplexity']:.2f}), prefill {row['prefill_ms']:.2f} ms")
    atomic.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
