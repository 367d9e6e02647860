"""The KV-cache decoder export: gpt_tiny, dense and pruned to a different head count per block with
a block removed, runs in onnxruntime with its cache and decodes the same greedy tokens as PyTorch;
a graph that does not match its model is refused."""

from __future__ import annotations

import functools
import json

import onnx
import pytest
import torch

from compressor.errors import ExportError
from compressor.pruning import PruningConfig, apply_policy
from compressor.pruning.attention import explicit_attention
from compressor.pruning.decoder_export import (
    DECODER_METADATA,
    GREEDY_STEPS,
    CacheLayer,
    decoder_onnx_bytes,
    decoder_session,
    empty_cache,
    export_decoder,
    generate,
    greedy_torch,
    read_layers,
    run_cached,
    verify_decoder,
)
from compressor.zoo.embedded import DecoderBlock, gpt_tiny

PROMPT = b"import os\ndef main(argv):\n    return "
POLICY = {"blocks.0.attn": 0.5, "blocks.1.mlp.0": 0.25, "blocks.2": 0.9,
          "blocks.3.attn": 0.25, "blocks.3.mlp.0": 0.5}
"""Heads 2, 4, -, 3 (block 2 removed), MLP widths 512, 384, -, 256."""


def tokens(text: bytes = PROMPT) -> torch.Tensor:
    return torch.tensor([list(text)])


@functools.cache
def gpt() -> torch.nn.Module:
    """gpt_tiny with its weights x3: untrained logits at N(0, 0.02) are so flat that greedy
    decoding repeats one byte; larger weights make the tokens vary, so a wrong cache shows."""
    torch.manual_seed(0)
    model = gpt_tiny().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    return model


@functools.cache
def pruned() -> torch.nn.Module:
    return apply_policy(gpt(), POLICY, tokens(), PruningConfig(round_to=16)).eval()


@functools.cache
def pruned_onnx() -> bytes:
    return decoder_onnx_bytes(pruned())


def test_the_graph_records_each_layers_heads_in_its_inputs_and_metadata():
    session = decoder_session(pruned_onnx())
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes["tokens"] == ["batch", "tokens"]
    assert [shapes[f"past_key_{i}"] for i in range(3)] == [
        ["batch", 2, "past", 32], ["batch", 4, "past", 32], ["batch", 3, "past", 32]]
    assert "past_key_3" not in shapes  # the removed block has no cache
    assert [o.name for o in session.get_outputs()][:3] == ["logits", "present_key_0",
                                                           "present_value_0"]
    layers, context = read_layers(session)
    assert layers == [CacheLayer("blocks.0.attn", 2, 32), CacheLayer("blocks.1.attn", 4, 32),
                      CacheLayer("blocks.3.attn", 3, 32)]
    assert context == 128
    meta = {p.key: p.value for p in onnx.load_from_string(pruned_onnx()).metadata_props}
    assert json.loads(meta[DECODER_METADATA])["layers"][0]["name"] == "blocks.0.attn"
    assert [m.num_heads for m in pruned().modules() if hasattr(m, "num_heads")] == [2, 4, 3]


def test_the_cache_grows_by_the_tokens_fed():
    session = decoder_session(pruned_onnx())
    layers, _ = read_layers(session)
    logits, cache = run_cached(session, tokens().numpy(), empty_cache(layers))
    assert logits.shape == (1, len(PROMPT), 256)
    assert cache["past_key_2"].shape == (1, 3, len(PROMPT), 32)
    logits, cache = run_cached(session, tokens(b"x").numpy(), cache)
    assert logits.shape == (1, 1, 256) and cache["past_value_0"].shape == (1, 2, len(PROMPT) + 1, 32)


@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_onnxruntime_with_the_cache_matches_pytorch_logits_and_greedy_tokens(which):
    model = explicit_attention(gpt(), tokens()) if which == "dense" else pruned()
    data = decoder_onnx_bytes(model) if which == "dense" else pruned_onnx()
    result = verify_decoder(model, data, tokens())
    assert result.failure is None, result.failure
    assert result.relative_diff < 1e-4 and result.top1_agreement == 1.0
    assert result.greedy_steps == GREEDY_STEPS == 32 and result.greedy_agreement == 1.0
    assert len(set(greedy_torch(model, list(PROMPT), 32))) > 3  # the tokens vary


def test_export_writes_a_verified_file_that_generates_text(tmp_path):
    report = export_decoder(pruned(), tmp_path / "gpt.onnx", tokens())
    assert report.parity.failure is None and [layer.heads for layer in report.layers] == [2, 4, 3]
    text = generate(tmp_path / "gpt.onnx", b"def ", 16)
    assert isinstance(text, bytes) and len(text) == 16
    assert list(text) == greedy_torch(pruned(), list(b"def "), 16)
    with pytest.raises(ValueError, match="exceed the context of 128"):
        generate(tmp_path / "gpt.onnx", b"x" * 120, 16)


class Bidirectional(DecoderBlock):
    """A block that lets every token see every other: not a decoder, so no cache can serve it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def test_a_model_the_cache_cannot_reproduce_is_refused_and_nothing_written(tmp_path):
    model = gpt_tiny().eval()
    model.blocks[1] = Bidirectional(128, 4, 512)
    work = explicit_attention(model, tokens())
    with pytest.raises(ExportError, match="does not match PyTorch: max"):
        export_decoder(work, tmp_path / "bad.onnx", tokens())
    assert not (tmp_path / "bad.onnx").exists()
    assert verify_decoder(work, decoder_onnx_bytes(work), tokens()).failure is not None
