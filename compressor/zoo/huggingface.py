"""Hugging Face `transformers` causal language models as compressor sees them: token ids in,
logits out, no KV cache.

A `transformers` model returns an output object (`.logits`, a cache, ...) and builds a KV cache
unless told not to; `causal_lm` wraps one so that `forward(input_ids)` returns the logits tensor
[batch, tokens, vocab] of `model(input_ids=..., use_cache=False)`: what the pruning
(`pruning.explicit_attention` rewrites GPT-2's and the Llama family's attention), the ONNX
export and the LM loss expect. Its layers are named `model.<name>` (e.g.
`model.transformer.h.0.attn` for GPT-2, `model.model.layers.0.self_attn` for Llama).

`transformers` is an optional extra (`pip install 'compressor[lm]'`), imported only when a model
is built here; nothing is downloaded (`local_files_only=True`).

    from transformers import GPT2Config, GPT2LMHeadModel
    lm = causal_lm(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4)))
    lm = load_causal_lm("path/to/local/llama")      # a directory saved by save_pretrained
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import UserError

SUPPORTED_ATTENTION = ("eager", "sdpa")
"""Attention implementations whose attention `pruning.explicit_attention` rewrites."""


class CausalLM(nn.Module):
    """A Hugging Face causal LM seen as a map from token ids [batch, tokens] (int64) to logits
    [batch, tokens, vocab]: called with `use_cache=False` and the causal mask given ready-made
    (`causal_mask`; every token of every row is real: no padding). The model takes a 4-D mask
    as it is, so its own mask building (which the TorchScript ONNX exporter cannot trace) does
    not run."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        dtype = self.model.get_input_embeddings().weight.dtype
        mask = causal_mask(input_ids.shape[1], dtype, input_ids.device)
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


def causal_mask(tokens: int, dtype: torch.dtype, device: torch.device | str = "cpu"
                ) -> torch.Tensor:
    """The additive causal mask [1, 1, tokens, tokens] Hugging Face's attentions take (eager
    adds it to the scores, sdpa passes it on): 0 where a query may attend, -inf after it.

    >>> causal_mask(3, torch.float32)[0, 0]
    tensor([[0., -inf, -inf],
            [0., 0., -inf],
            [0., 0., 0.]])
    """
    allowed = torch.ones(tokens, tokens, dtype=torch.bool, device=device).tril()
    mask = torch.zeros(tokens, tokens, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, float("-inf"))[None, None]


def _config_refusal(config: Any) -> str | None:
    """Why a model of this config is not compressed (the part named), or None."""
    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model (cross-attention)"
    if getattr(config, "add_cross_attention", False):
        return "its blocks hold cross-attention (add_cross_attention)"
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in (None, *SUPPORTED_ATTENTION):
        return (f"its attention implementation is {implementation!r} (eager and sdpa are "
                "rewritten: load it with attn_implementation='eager')")
    return None


def causal_lm(model: nn.Module) -> CausalLM:
    """`model` (a `transformers` causal LM, e.g. `GPT2LMHeadModel`, `LlamaForCausalLM`) wrapped
    as token ids -> logits (`CausalLM`; the model itself, not a copy). A one-line UserError for
    what is not compressed: an encoder-decoder, cross-attention, attention implementations other
    than eager and sdpa."""
    if isinstance(model, CausalLM):
        return model
    config = getattr(model, "config", None)
    refusal = _config_refusal(config) if config is not None else \
        "it has no Hugging Face config (wrap your own model so forward returns logits)"
    if refusal:
        raise UserError(f"cannot compress {type(model).__name__}: {refusal}")
    return CausalLM(model).train(model.training)


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> CausalLM:
    """A causal LM from a local directory (`save_pretrained`'s: config.json and weights) with
    `AutoModelForCausalLM`, offline, eager attention, in eval mode, wrapped by `causal_lm`."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise UserError("Hugging Face models need transformers: pip install "
                        "'compressor[lm]'") from None
    if not Path(path, "config.json").is_file():
        raise UserError(f"{path} is not a saved Hugging Face model (no config.json there)")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, attn_implementation="eager", dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load {path} as a causal LM: "
                        f"{' '.join(str(exc).split())[:200]}") from None
    return causal_lm(model.eval())
