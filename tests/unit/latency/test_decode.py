"""Decode and prefill latency: real onnxruntime sessions of gpt_tiny's KV-cache graph, paired with
the dense one; a pruned decoder is faster at both."""

from __future__ import annotations

import functools

import pytest
import torch

from compressor.errors import UserError
from compressor.io.export import onnx_bytes
from compressor.latency.decode import (
    DecodeProbe,
    DecodeShape,
    decoder_timing_session,
    measure_decode_tables,
)
from compressor.latency.probe import ProbeSettings
from compressor.pruning import PruningConfig, apply_policy, build_skeleton
from compressor.pruning.attention import explicit_attention
from compressor.zoo.embedded import gpt_tiny

QUICK = ProbeSettings(warmup=3, runs=10, blocks=4)
TOKENS = torch.tensor([list(b"def main(argv):\n    return 0\n")])
HALF = {"blocks.0.attn": 0.5, "blocks.0.mlp.0": 0.5, "blocks.1": 0.9, "blocks.2.attn": 0.5,
        "blocks.2.mlp.0": 0.5, "blocks.3": 0.9}
"""Two blocks removed, the other two at half their heads and MLP width: about a quarter of the
dense decoder's work."""


@functools.cache
def dense() -> torch.nn.Module:
    torch.manual_seed(0)
    return explicit_attention(gpt_tiny().eval(), TOKENS)


@functools.cache
def probe() -> DecodeProbe:
    return DecodeProbe(dense(), QUICK, DecodeShape(past=96, prompt=64))


def test_the_timed_inputs_are_one_token_after_the_past_or_a_prompt_after_none():
    decode, prefill = probe().references["decode"], probe().references["prefill"]
    assert decode.feed["tokens"].shape == (1, 1) and prefill.feed["tokens"].shape == (1, 64)
    assert decode.feed["past_key_3"].shape == (1, 4, 96, 32)
    assert prefill.feed["past_value_0"].shape == (1, 4, 0, 32)
    assert decode.batch_size == 1


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_a_pruned_decoder_is_faster_at_decode_and_prefill(phase):
    pruned = apply_policy(gpt_tiny().eval(), HALF, TOKENS, PruningConfig(round_to=16))
    paired = probe().measure(pruned, phase)
    assert paired.ratio < 0.9, paired.block_ratios
    assert paired.settings["phase"] == phase and paired.settings["past"] == 96
    assert paired.settings["batch_size"] == 1 and paired.architecture
    assert probe().dense_ms(phase).ms > 0


def test_an_image_model_or_a_bad_shape_is_refused():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UserError, match="not a KV-cache decoder graph"):
        decoder_timing_session(onnx_bytes(torch.nn.Conv2d(3, 4, 3), x), QUICK, DecodeShape(),
                               "decode")
    with pytest.raises(UserError, match="prefill tokens 0"):
        DecodeShape(prompt=0)


@functools.cache
def tables(phase: str):
    return measure_decode_tables(dense(), TOKENS, QUICK, DecodeShape(past=96, prompt=64), phase,
                                 lambda heads: [1, heads], lambda hidden: [16, hidden],
                                 counts=[2], runs=30)


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_the_tables_rank_a_pruned_decoder_faster_and_price_the_dense_one_at_one(phase):
    skeleton = build_skeleton(gpt_tiny().eval(), TOKENS, PruningConfig(round_to=16))
    found = tables(phase)
    assert found.predict_ratio(skeleton.layer_shapes({})) == pytest.approx(1.0)
    narrower = found.predict_ratio(skeleton.layer_shapes(
        {unit.name: 0.5 for unit in skeleton.units if unit.kind != "block"}))
    fewer = found.predict_ratio(skeleton.layer_shapes(HALF))
    assert fewer < narrower < 1.0
    assert sorted(found.blocks) == [2, 4]  # the dense count is always measured
    assert sorted(found.rest_ms) == [2, 4] and min(found.rest_ms.values()) >= 0
    assert len(found.blocks[4].tables) == 1  # four equal blocks, one table
