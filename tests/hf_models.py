"""Tiny Hugging Face causal LMs built from configs (nothing downloaded), wrapped as token ids ->
logits (`compressor.zoo.huggingface.causal_lm`): GPT-2 (Conv1D, fused c_attn, tied embedding)
and Llama (grouped-query rotary attention, RMSNorm, a gated SwiGLU MLP). Importing this module
skips the importing test module when `transformers` is not installed."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from compressor.zoo.huggingface import CausalLM, causal_lm  # noqa: E402

VOCAB = 256


def tokens(length: int = 16, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def gpt2(attention: str = "eager", **overrides) -> CausalLM:
    """2 blocks, width 64, 4 heads of 16, MLP 256, 64 positions."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB,
                                     n_positions=64, bos_token_id=0, eos_token_id=0,
                                     attn_implementation=attention, **overrides)
    return causal_lm(transformers.GPT2LMHeadModel(config).eval())


def llama(attention: str = "eager", kv_heads: int = 2, layers: int = 2) -> CausalLM:
    """`layers` blocks, width 64, 4 query heads of 16 sharing `kv_heads` key/value heads, MLP 128."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=kv_heads, vocab_size=VOCAB, max_position_embeddings=64,
        attn_implementation=attention)
    return causal_lm(transformers.LlamaForCausalLM(config).eval())
