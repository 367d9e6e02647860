"""Models the project defines itself, by name, each with the recipe it is pretrained with.

torchvision's models are built for ImageNet; these are sized for the embedded 32-px default
(Fashion-MNIST padded to 32) so that a whole search runs on a laptop CPU. `vit_tiny` is what the
transformer units (attention heads, MLP width, whole blocks) are proven on: torchvision's own
`VisionTransformer`, so what a user builds from torchvision prunes the same way. `gpt_tiny` is a
causal language model over bytes (`zoo.text`): a GPT-style decoder whose attention is
`nn.MultiheadAttention` called with a causal mask, as users' decoders call it, so its heads, MLP
width and blocks are the same kinds of unit.

    model = build_embedded("vit_tiny", num_classes=10)
    recipe = EMBEDDED["vit_tiny"].recipe   # TrainConfig fields its pretrain overrides
    lm = build_embedded("gpt_tiny", num_classes=256)   # logits over the next byte
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer


class EmbeddedModel(NamedTuple):
    """A model of ours: how it is built and how its baseline is pretrained."""

    build: Callable[[int], nn.Module]  # num_classes -> an untrained model
    recipe: dict[str, Any]  # TrainConfig fields the pretrain overrides (the rest are defaults)
    summary: str  # one line for `compressor models`
    task: str = "image"  # "image" (a classifier of images) or "text" (a causal LM of token ids)


def vit_tiny(num_classes: int = 10) -> VisionTransformer:
    """A 6-block ViT for 32-px inputs: a three-conv stem (16, 32, 64 channels, stride 8: 4x4 = 16
    tokens plus the class token), width 96, 4 heads of 24, MLP 192; 0.5 M parameters.

    A conv stem (Xiao et al. 2021, "Early convolutions help transformers see better") instead of
    the patch embedding, and 16 tokens rather than 64: one training step at batch 128 took 0.38 s
    against 1.6 s for a 64-token width-64 ViT on this 2-core CPU (measured side by side), which
    decides whether the pretrain fits its 30 minutes."""
    stem = [ConvStemConfig(c, 3, 2, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU)
            for c in (16, 32, 64)]
    return VisionTransformer(image_size=32, patch_size=8, num_layers=6, num_heads=4,
                             hidden_dim=96, mlp_dim=192, num_classes=num_classes,
                             conv_stem_configs=stem)


VIT_RECIPE = {"optimizer": "adamw", "max_lr": 2e-3, "weight_decay": 0.05, "batch_size": 128,
              "warmup_fraction": 0.1, "channels_last": False, "epochs": 15}
"""AdamW one-cycle at 2e-3, flips and label smoothing, as the issue's measured starting point;
channels_last does not help a transformer (its tensors are tokens x width)."""

class DecoderBlock(nn.Module):
    """A pre-norm GPT block: x + attention(LayerNorm(x)) under a causal mask, then
    x + MLP(LayerNorm(x)) with a GELU between its two Linears."""

    def __init__(self, width: int, heads: int, mlp: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)  # True: may not see
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, is_causal=True, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """Token ids [batch, tokens] (int64, tokens <= context) -> next-token logits [batch, tokens,
    vocab_size]: token plus learned position embeddings, `DecoderBlock`s in `blocks`, a final
    LayerNorm and an output Linear (not tied to the token embedding, so it stays the one dense
    classifier the pruning leaves alone)."""

    def __init__(self, vocab_size: int = 256, context: int = 128, width: int = 128,
                 layers: int = 4, heads: int = 4, mlp: int = 512, dropout: float = 0.0):
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(DecoderBlock(width, heads, mlp, dropout)
                                      for _ in range(layers)))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        for module in self.modules():  # GPT-2's initialisation: N(0, 0.02)
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token(tokens) + self.position(positions)
        return self.head(self.ln_f(self.blocks(x)))


def gpt_tiny(num_classes: int = 256) -> TinyGPT:
    """A 4-block byte-level GPT: width 128, 4 heads of 32, MLP 512, context 128 tokens, a
    vocabulary of `num_classes` (256 bytes); 0.88 M parameters. Sized for a 2-core CPU (not yet
    pretrained: issue 35's next pieces)."""
    return TinyGPT(vocab_size=num_classes, context=128, width=128, layers=4, heads=4, mlp=512)


GPT_RECIPE = {"optimizer": "adamw", "max_lr": 1e-3, "weight_decay": 0.1, "batch_size": 32,
              "warmup_fraction": 0.05, "channels_last": False, "label_smoothing": 0.0,
              "augment": False, "steps": 1500}
"""AdamW as nanoGPT's small models train (peak 1e-3, weight decay 0.1), no label smoothing or
flips: a language model's recipe, applied by the causal-LM loop (`training.language`,
`zoo.baselines.lm_recipe`). 1500 steps of 32 windows of 128 bytes (6.1 M tokens, about 0.6 of
the corpus's training bytes): 0.69 s a step on one thread of this 2-core VM (measured), so the
pretrain stays under 20 minutes."""

EMBEDDED: dict[str, EmbeddedModel] = {
    "vit_tiny": EmbeddedModel(partial(vit_tiny), VIT_RECIPE,
                              "6-block ViT with a conv stem for 32-px inputs (0.5 M params)"),
    "gpt_tiny": EmbeddedModel(partial(gpt_tiny), GPT_RECIPE,
                              "4-block byte-level GPT, context 128 (causal LM, 0.88 M params)",
                              task="text"),
}


def build_embedded(name: str, num_classes: int) -> nn.Module:
    return EMBEDDED[name].build(num_classes)
