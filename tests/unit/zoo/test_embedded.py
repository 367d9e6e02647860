"""Our own models: gpt_tiny maps token ids to next-byte logits, causally, at the stated size."""

from __future__ import annotations

import torch
from torch import nn

from compressor.zoo.embedded import EMBEDDED, TinyGPT
from compressor.zoo.models import build_model, classifier_name


def test_gpt_tiny_maps_token_ids_to_next_byte_logits_with_multihead_attention(stdlib_text):
    torch.manual_seed(0)
    model = build_model("gpt_tiny", 256).eval()
    assert isinstance(model, TinyGPT) and model.context == 128
    assert sum(p.numel() for p in model.parameters()) == 875_264  # "0.88 M" in its summary
    assert "0.88 M" in EMBEDDED["gpt_tiny"].summary
    assert sum(isinstance(m, nn.MultiheadAttention) for m in model.modules()) == 4
    assert classifier_name(model) == "head"  # the output layer stays dense when pruning
    tokens, _ = next(stdlib_text.validation.windows(2, context=128))
    with torch.no_grad():
        logits = model(tokens)
        assert logits.shape == (2, 128, 256)
        assert torch.allclose(model(tokens[:, :50]), logits[:, :50], atol=1e-5)  # causal
    assert EMBEDDED["gpt_tiny"].recipe["optimizer"] == "adamw"
