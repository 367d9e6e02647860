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
                       r"unmasked self-attention; argument 2 is Tensor"),
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
