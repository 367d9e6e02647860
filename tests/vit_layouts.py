"""Small ViTs built the common ways, without timm or transformers installed: the layouts that
`compressor.pruning.attention` rewrites, written as those libraries write them.

- `TimmViT`: timm's layout (`blocks.N.attn.qkv` fused, `attn.proj`, `attn.num_heads`,
  `mlp.fc1` / `mlp.fc2`, LayerScale), pre-norm; a head count per block may differ.
- `HfViT`: Hugging Face's ViT layout (`encoder.layer.N.attention.attention.{query,key,value}`,
  `attention.output.dense`, `intermediate.dense`, `output.dense` adding the residual, layers
  returning tuples), pre-norm.
- `torchvision_vit`: torchvision's VisionTransformer (nn.MultiheadAttention).

Each takes [batch, 3, 32, 32] images (patch 4: 64 patches + a class token = 65 tokens) and has
its classifier initialised to non-zero weights, so outputs compare on more than zeros.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import nn

IMAGE, PATCH, DIM, MLP, CLASSES = 32, 4, 64, 128, 10
TOKENS = (IMAGE // PATCH) ** 2 + 1


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state, to show later that nothing changed it."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def example(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


class _Patches(nn.Module):
    """Conv patch embedding, a class token and position embeddings: [B, 3, H, W] -> [B, T, D]."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed


# --- timm ----------------------------------------------------------------------------------------


class TimmAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_scale: float | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, dim), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 0.5):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TimmBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, post_norm: bool = False):
        super().__init__()
        self.post_norm = post_norm
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(dim), TimmAttention(dim, num_heads), \
            LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(dim), Mlp(dim, hidden), LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:  # the original Transformer's order: add, then normalise
            x = self.norm1(x + self.ls1(self.attn(x)))
            return self.norm2(x + self.ls2(self.mlp(x)))
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class TimmViT(nn.Module):
    def __init__(self, heads: tuple[int, ...] = (4, 4, 4), dim: int = DIM, hidden: int = MLP,
                 post_norm: bool = False):
        super().__init__()
        self.patch_embed = _Patches(dim)
        self.blocks = nn.Sequential(*(TimmBlock(dim, h, hidden, post_norm) for h in heads))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.patch_embed(x)))[:, 0])


# --- Hugging Face --------------------------------------------------------------------------------


class HfSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_attention_heads = num_heads
        self.attention_head_size = dim // num_heads
        self.all_head_size = dim
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.dropout = nn.Dropout(0.0)

    def transpose_for_scores(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        return x.view(shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        query = self.transpose_for_scores(self.query(hidden_states))
        key = self.transpose_for_scores(self.key(hidden_states))
        value = self.transpose_for_scores(self.value(hidden_states))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        if head_mask is not None:
            probs = probs * head_mask
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.size()[:-2] + (self.all_head_size,))
        return (context, probs) if output_attentions else (context,)


class HfSelfOutput(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense, self.dropout = nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, hidden_states, input_tensor):
        return self.dropout(self.dense(hidden_states))  # the residual is added by the layer


class HfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attention, self.output = HfSelfAttention(dim, num_heads), HfSelfOutput(dim)

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        outputs = self.attention(hidden_states, head_mask, output_attentions)
        return (self.output(outputs[0], hidden_states),) + outputs[1:]


class HfIntermediate(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dense, self.intermediate_act_fn = nn.Linear(dim, hidden), nn.GELU()

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class HfOutput(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dense, self.dropout = nn.Linear(hidden, dim), nn.Dropout(0.0)

    def forward(self, hidden_states, input_tensor):
        return self.dropout(self.dense(hidden_states)) + input_tensor


class HfLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        self.attention = HfAttention(dim, num_heads)
        self.intermediate, self.output = HfIntermediate(dim, hidden), HfOutput(dim, hidden)
        self.layernorm_before, self.layernorm_after = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        outputs = self.attention(self.layernorm_before(hidden_states), head_mask,
                                 output_attentions)
        hidden_states = outputs[0] + hidden_states
        layer_output = self.output(self.intermediate(self.layernorm_after(hidden_states)),
                                   hidden_states)
        return (layer_output,) + outputs[1:]


class HfEncoder(nn.Module):
    def __init__(self, dim: int, heads: tuple[int, ...], hidden: int):
        super().__init__()
        self.layer = nn.ModuleList(HfLayer(dim, h, hidden) for h in heads)

    def forward(self, hidden_states):
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, None, False)[0]
        return hidden_states


class HfViT(nn.Module):
    def __init__(self, heads: tuple[int, ...] = (4, 4, 4), dim: int = DIM, hidden: int = MLP):
        super().__init__()
        self.embeddings = _Patches(dim)
        self.encoder = HfEncoder(dim, heads, hidden)
        self.layernorm, self.classifier = nn.LayerNorm(dim), nn.Linear(dim, CLASSES)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layernorm(self.encoder(self.embeddings(pixel_values)))[:, 0])


# --- torchvision ---------------------------------------------------------------------------------


def torchvision_vit(layers: int = 2, seed: int = 0) -> nn.Module:
    """torchvision's VisionTransformer at 32 px, patch 4, width 64, 4 heads, MLP 128."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(
        image_size=IMAGE, patch_size=PATCH, num_layers=layers, num_heads=4, hidden_dim=DIM,
        mlp_dim=MLP, num_classes=CLASSES)
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts the head at zero
    return model.eval()


def timm_vit(heads: tuple[int, ...] = (4, 4, 4), seed: int = 0, **kwargs) -> TimmViT:
    torch.manual_seed(seed)
    return TimmViT(heads, **kwargs).eval()


def hf_vit(heads: tuple[int, ...] = (4, 4, 4), seed: int = 0) -> HfViT:
    torch.manual_seed(seed)
    return HfViT(heads).eval()
