"""Hugging Face causal LMs as token ids -> logits: the wrapper's ready-made causal mask gives the
model's own logits, local directories load offline, and what is not compressed is refused in
one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.errors import UserError
from compressor.pruning import PruningConfig, apply_policy
from compressor.pruning.transformer import RemovedBlock
from compressor.zoo.huggingface import CausalLM, causal_lm, load_causal_lm
from tests.hf_models import VOCAB, gpt2, llama, tokens, transformers  # skips without it

X = tokens()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_the_wrapper_returns_the_models_own_logits_as_a_tensor(build, attention):
    lm = build(attention)
    with torch.no_grad():
        logits = lm(X)
        own = lm.model(input_ids=X).logits  # the model's own mask building and cache
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 16, VOCAB)
    torch.testing.assert_close(logits, own, rtol=1e-5, atol=1e-6)
    assert causal_lm(lm) is lm and not lm.training  # the wrapper follows the model's mode


def test_what_is_not_compressed_is_refused_in_one_line():
    with pytest.raises(UserError, match="cross-attention") as info:
        gpt2(add_cross_attention=True)
    assert "\n" not in str(info.value)
    model = llama().model
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(UserError, match="attention implementation is 'flex_attention'"):
        causal_lm(model)
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    with pytest.raises(UserError, match="encoder-decoder"):
        causal_lm(t5)
    with pytest.raises(UserError, match="no Hugging Face config"):
        causal_lm(nn.Linear(4, 4))


def test_a_local_directory_loads_offline_and_prunes(tmp_path):
    lm = llama()
    lm.model.save_pretrained(tmp_path / "tiny-llama")
    loaded = load_causal_lm(tmp_path / "tiny-llama")
    assert isinstance(loaded, CausalLM) and not loaded.training
    assert loaded.model.config._attn_implementation == "eager"
    with torch.no_grad():
        assert torch.equal(loaded(X), lm(X))
    policy = {"model.model.layers.0.self_attn": 0.5, "model.model.layers.1": 0.9}
    pruned = apply_policy(loaded, policy, X, PruningConfig(round_to=16))
    assert isinstance(pruned.model.model.layers[1], RemovedBlock)
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(tmp_path / "nothing")
