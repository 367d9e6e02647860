"""Models the project defines itself, by name, each with the recipe it is pretrained with.

torchvision's models are built for ImageNet; these are sized for the embedded 32-px default
(Fashion-MNIST padded to 32) so that a whole search runs on a laptop CPU. `vit_tiny` is what the
transformer units (attention heads, MLP width, whole blocks) are proven on: torchvision's own
`VisionTransformer`, so what a user builds from torchvision prunes the same way.

    model = build_embedded("vit_tiny", num_classes=10)
    recipe = EMBEDDED["vit_tiny"].recipe   # TrainConfig fields its pretrain overrides
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from torch import nn
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer


class EmbeddedModel(NamedTuple):
    """A model of ours: how it is built and how its baseline is pretrained."""

    build: Callable[[int], nn.Module]  # num_classes -> an untrained model
    recipe: dict[str, Any]  # TrainConfig fields the pretrain overrides (the rest are defaults)
    summary: str  # one line for `compressor models`


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

EMBEDDED: dict[str, EmbeddedModel] = {
    "vit_tiny": EmbeddedModel(partial(vit_tiny), VIT_RECIPE,
                              "6-block ViT with a conv stem for 32-px inputs (0.5 M params)"),
}


def build_embedded(name: str, num_classes: int) -> nn.Module:
    return EMBEDDED[name].build(num_classes)
