"""Attention rewritten into explicit projections: equal outputs for the torchvision, timm and
Hugging Face layouts, per-block head counts kept, and a one-line refusal naming what cannot be."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from compressor.errors import UserError
from compressor.pruning.attention import (
    REWRITE_TOLERANCE,
    ExplicitAttention,
    explicit_attention,
    has_attention,
)
from compressor.pruning.shapes import measure_layer_shapes
from compressor.zoo.embedded import gpt_tiny
from tests.vit_layouts import (
    DIM,
    TimmViT,
    example,
    hf_vit,
    relative_diff,
    same_state,
    state,
    timm_vit,
    torchvision_vit,
)
from tests.vit_layouts import outputs as shared_outputs

X = example(2)


def outputs(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    return shared_outputs(model, x)


# --- the rewrite ----------------------------------------------------------------------------------


def test_rewritten_torchvision_attention_gives_identical_outputs():
    model = torchvision_vit(layers=2)
    before = state(model)
    work = explicit_attention(model, X)
    rewritten = [m for m in work.modules() if isinstance(m, ExplicitAttention)]
    assert [(m.num_heads, m.head_dim, m.fused) for m in rewritten] == [(4, 16, True)] * 2
    assert not any(isinstance(m, nn.MultiheadAttention) for m in work.modules())
    # Measured: bitwise equal here (the same products in the same order); the bound is the
    # rewrite's tolerance, far below a wrong rewrite's error (of the order of the outputs).
    assert relative_diff(outputs(model), outputs(work)) <= REWRITE_TOLERANCE.rtol
    assert relative_diff(outputs(model, example(3, seed=1)), outputs(work, example(3, seed=1))) \
        <= REWRITE_TOLERANCE.rtol  # not only on the example it was checked on
    assert same_state(model.state_dict(), before)  # the input is untouched: still MHA
    assert isinstance(model.encoder.layers[0].self_attention, nn.MultiheadAttention)


@pytest.mark.parametrize(("layout", "projections"), [
    ("timm", ["blocks.0.attn.qkv", "blocks.0.attn.proj"]),
    ("hf", [f"encoder.layer.0.attention.{n}" for n in ("q", "k", "v", "proj")]),
])
def test_timm_and_hugging_face_layouts_are_rewritten_with_equal_outputs(layout, projections):
    model = {"timm": timm_vit, "hf": hf_vit}[layout]()
    work = explicit_attention(model, X)
    assert relative_diff(outputs(model), outputs(work)) <= REWRITE_TOLERANCE.rtol
    assert [s.name for s in measure_layer_shapes(work, X)][1:1 + len(projections)] == projections
    assert explicit_attention(work, X).state_dict().keys() == work.state_dict().keys()  # idempotent


def test_per_block_head_counts_are_kept_by_the_rewrite():
    for model in (timm_vit(heads=(4, 2, 1)), hf_vit(heads=(2, 4))):
        work = explicit_attention(model, X)
        heads = [m.num_heads for m in work.modules() if isinstance(m, ExplicitAttention)]
        assert heads == ([4, 2, 1] if isinstance(model, TimmViT) else [2, 4])
        assert relative_diff(outputs(model), outputs(work)) <= REWRITE_TOLERANCE.rtol


class SequenceFirst(nn.Module):
    """nn.MultiheadAttention with batch_first=False: tokens first, [tokens, batch, dim]."""

    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, DIM, 4, 4)
        self.attn = nn.MultiheadAttention(DIM, 4, dropout=0.1)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).permute(2, 0, 1)
        return self.head(self.attn(tokens, tokens, tokens, need_weights=False)[0].mean(0))


def test_sequence_first_attention_is_rewritten_with_equal_outputs():
    model = SequenceFirst().eval()
    work = explicit_attention(model, X)
    assert not work.attn.batch_first and work.attn.attn_dropout == 0.1
    assert relative_diff(outputs(model), outputs(work)) <= REWRITE_TOLERANCE.rtol
    assert [s.in_h for s in measure_layer_shapes(work, X)][1:3] == [64, 64]  # tokens, not batch


class CrossAttention(nn.Module):
    """nn.MultiheadAttention attending from the tokens to a learned memory: not self-attention."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3 * 32 * 32, DIM * 4)
        self.memory = nn.Parameter(torch.randn(1, 5, DIM))
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)

    def forward(self, x):
        tokens = self.embed(x.flatten(1)).view(len(x), 4, DIM)
        out, _ = self.attn(tokens, self.memory.expand(len(x), -1, -1),
                           self.memory.expand(len(x), -1, -1), need_weights=False)
        return out.mean(1)


class ScaledTimmViT(nn.Module):
    """timm's layout with a score scale other than head_dim ** -0.5 (timm's old qk_scale)."""

    def __init__(self):
        super().__init__()
        self.vit = timm_vit()
        self.vit.blocks[1].attn.scale = 0.5

    def forward(self, x):
        return self.vit(x)


@pytest.mark.parametrize(("model", "match"), [
    (CrossAttention(), r"cannot rewrite attn \(MultiheadAttention\) of CrossAttention .*"
                       r"at most an attn_mask or is_causal; argument 2 is Tensor"),
    (ScaledTimmViT(), r"cannot rewrite vit.blocks.1.attn \(TimmAttention\) .*differs by"),
])
def test_a_module_that_cannot_be_rewritten_is_a_one_line_user_error_naming_it(model, match):
    with pytest.raises(UserError, match=match) as info:
        explicit_attention(model.eval(), X)
    assert "\n" not in str(info.value)


def test_only_models_with_self_attention_count_as_transformers():
    assert has_attention(torchvision_vit()) and has_attention(timm_vit()) and has_attention(hf_vit())
    assert has_attention(explicit_attention(timm_vit(), X))
    assert not has_attention(torchvision.models.resnet18())


def test_windowed_attention_is_refused_in_seconds_naming_the_module():
    """Swin's shifted-window attention has timm's names (qkv, proj, num_heads) but runs on
    [batch, h, w, dim] windows: refused by the rewrite, before torch-pruning's tracer (which
    loops on it without end)."""
    model = torchvision.models.get_model("swin_t", num_classes=10).eval()
    with pytest.raises(UserError, match=r"cannot rewrite features.1.0.attn "
                                        r"\(ShiftedWindowAttention\) of SwinTransformer .*4 "
                                        r"dimensions.*windowed attention") as info:
        explicit_attention(model, X)
    assert "\n" not in str(info.value)


# --- causal self-attention (decoders) -------------------------------------------------------------


def text_windows(corpus, count: int = 2, context: int = 48) -> torch.Tensor:
    """Real token ids: `count` windows of standard-library source."""
    return next(corpus.validation.windows(count, context=context))[0]


def test_gpt_tiny_causal_attention_is_rewritten_with_equal_outputs_on_real_text(stdlib_text):
    torch.manual_seed(0)
    model = gpt_tiny().eval()
    tokens = text_windows(stdlib_text)
    before = state(model)
    work = explicit_attention(model, tokens)
    assert [m.num_heads for m in work.modules() if isinstance(m, ExplicitAttention)] == [4] * 4
    # Measured ~6e-7 relative: MultiheadAttention takes the is_causal hint to SDPA, ours masks.
    assert relative_diff(outputs(model, tokens), outputs(work, tokens)) <= REWRITE_TOLERANCE.rtol
    other = text_windows(stdlib_text, 3, context=80)  # other windows, another length
    assert relative_diff(outputs(model, other), outputs(work, other)) <= REWRITE_TOLERANCE.rtol
    assert same_state(model.state_dict(), before)
    # Causal: a token's logits do not depend on the tokens after it.
    changed = tokens.clone()
    changed[:, 30:] = (changed[:, 30:] + 7) % 256
    assert torch.equal(outputs(work, tokens)[:, :30], outputs(work, changed)[:, :30])
    assert not torch.allclose(outputs(work, tokens)[:, 30:], outputs(work, changed)[:, 30:])


class Decoder(nn.Module):
    """One causal self-attention over embedded token ids, its mask given one of the ways users
    give it: a bool mask ("bool"), a float -inf mask as nn.Transformer makes it ("float"), either
    with the is_causal hint, or a 3-D mask per batch and head ("3d")."""

    def __init__(self, mask: str, hint: bool):
        super().__init__()
        self.mask, self.hint = mask, hint
        self.embed = nn.Embedding(256, DIM)
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)
        self.head = nn.Linear(DIM, 256)

    def forward(self, tokens):
        x = self.embed(tokens)
        t = tokens.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        mask = {"bool": causal, "float": nn.Transformer.generate_square_subsequent_mask(t),
                "3d": causal.expand(len(x) * 4, t, t)}[self.mask]
        return self.head(self.attn(x, x, x, attn_mask=mask, is_causal=self.hint,
                                   need_weights=False)[0])


@pytest.mark.parametrize(("mask", "hint"), [("bool", True), ("bool", False), ("float", True),
                                            ("float", False)])
def test_causal_masks_given_either_way_are_rewritten_with_equal_outputs(stdlib_text, mask, hint):
    torch.manual_seed(0)
    model = Decoder(mask, hint).eval()
    tokens = text_windows(stdlib_text)
    work = explicit_attention(model, tokens)
    assert isinstance(work.attn, ExplicitAttention)
    assert relative_diff(outputs(model, tokens), outputs(work, tokens)) <= REWRITE_TOLERANCE.rtol


def test_is_causal_alone_masks_as_the_causal_mask_does():
    torch.manual_seed(0)
    attention = ExplicitAttention(DIM, 4, DIM // 4).eval()
    x = torch.randn(2, 10, DIM)
    causal = torch.ones(10, 10, dtype=torch.bool).triu(1)
    with torch.no_grad():
        assert torch.equal(attention(x, is_causal=True), attention(x, attn_mask=causal))
        assert not torch.allclose(attention(x), attention(x, is_causal=True))


def test_a_mask_per_batch_and_head_is_refused_naming_the_module(stdlib_text):
    with pytest.raises(UserError, match=r"cannot rewrite attn \(MultiheadAttention\) of Decoder"
                                        r" .*attn_mask, not one of 3 dimensions") as info:
        explicit_attention(Decoder("3d", False).eval(), text_windows(stdlib_text))
    assert "\n" not in str(info.value)
