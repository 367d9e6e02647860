"""Attention that can lose heads: `ExplicitAttention`, and `explicit_attention`, which rewrites a
model's self-attention into it.

torchvision's `nn.MultiheadAttention` keeps its head count in C++ kernels and one packed weight:
torch-pruning can only shrink its embedding width (its `MultiheadAttentionPruner`). Written out
as Linear projections and plain matmul / softmax, attention loses whole heads by slicing rows of
q, k, v and columns of the output projection, and each module keeps its own `num_heads`, so a
pruned network may hold a different head count in every block (and exports so, ONNX opset 17).

The rewrite is a pruning step verified by equal outputs: `explicit_attention` replaces three
layouts on a deep copy of the model, runs each replacement on the very inputs the original
received on the example batch, and refuses (a one-line UserError naming the module) any whose
outputs differ by more than `REWRITE_TOLERANCE`:

- torchvision: `nn.MultiheadAttention` called as self-attention, `attn(x, x, x, need_weights=False)`
  returning `(out, None)` (`vision_transformer.EncoderBlock`), batch first or not, unmasked or
  with a 2-D `attn_mask` and / or `is_causal=True` given by keyword (a decoder's causal mask);
- timm: a module with a fused `qkv` Linear (3 x width), a `proj` Linear and `num_heads`;
- Hugging Face: a self-attention module with `query`, `key`, `value` Linears and
  `num_attention_heads` (or `num_heads`), whose parent also holds the output projection (the one
  other Linear, e.g. `output.dense`): the parent is replaced.
- Hugging Face decoders (`transformers`, never imported here: found by their attributes), as
  `DecoderAttention` under a causal mask: GPT-2's `GPT2Attention` (a fused `c_attn`, `c_proj`;
  its `Conv1D` layers, transposed Linears, become `nn.Linear` first, the MLP's too) and the
  Llama family's (`q_proj`, `k_proj`, `v_proj`, `o_proj`, grouped-query: fewer key/value heads
  than query heads, rotary position embeddings applied per head). They run as the model calls
  them without a KV cache (`zoo.huggingface.causal_lm` calls the model with `use_cache=False`);
  cross-attention, a cache, returned attention weights and attention implementations other than
  eager and sdpa are refused. A model holding these is also checked whole: its output after the
  rewrite equals its output before, within `REWRITE_TOLERANCE`.

    work = explicit_attention(model, x)          # a deep copy; `model` is untouched
    [m.num_heads for m in work.modules() if isinstance(m, ExplicitAttention)]
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import UserError
from compressor.io.export import Tolerance

REWRITE_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)
"""Accepted |explicit - original| per output value of a rewritten attention, relative to the
largest |original output| on the example batch (plus an absolute slack). The two compute the same
sums, at most in another order (scores scaled before or after the product). Measured here, per
module: torchvision's MultiheadAttention bitwise equal (ViT-B/16 and B/32 at 224 px, untrained,
and the 32-px ViT of the tests), the timm and Hugging Face layouts of tests/vit_layouts.py 0 to
3.8e-7 relative; a wrong rewrite errs by the order of the outputs."""

IGNORED_ARGUMENTS = ("average_attn_weights",)
"""Keyword arguments of the replaced modules that do not change a self-attention's output."""


class ExplicitAttention(nn.Module):
    """Multi-head self-attention over [batch, tokens, dim] written out in plain operations.

    `qkv` (one fused Linear, rows [q; k; v], heads contiguous within each) or `q`, `k`, `v`
    (three Linears), then `proj`; `num_heads`, `kv_heads` and `head_dim` are plain ints of this
    module, so pruning sets them per block. With `kv_heads` < `num_heads` (grouped-query
    attention, separate q/k/v only) k and v hold `kv_heads` heads, each serving the
    `group_size` query heads after it. Scores are scaled by `scale`, head_dim ** -0.5 unless
    given (head_dim is never pruned); `rotary` rotates every query and key head by the
    position embeddings a decoder passes (`attend`). `returns` mimics the call convention of
    the module replaced: 0 returns the output tensor, n > 0 a tuple of n, the output then None
    (MultiheadAttention's `(out, None)`, a Hugging Face attention's `(out,)`).

    A mask is a per-call keyword, as MultiheadAttention takes it: `attn_mask` [tokens, tokens]
    (bool: True where a query may not attend; float: added to the scores), or `is_causal=True`
    without one (each token attends to itself and the tokens before it). A given `attn_mask` is
    used as it is, `is_causal` being only a hint that it is causal: so does MultiheadAttention in
    eval mode (in training mode it trusts the hint instead; torch calls a wrong hint undefined).
    A mask per batch or head (3-D) is refused: heads are pruned. Other extra arguments
    must not change the result: the input itself (self-attention's key and value), None or False
    (no padding mask, no weights returned); anything else is a ValueError rather than a silently
    different attention.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, *, fused: bool = True,
                 qkv_bias: bool = True, proj_bias: bool = True, attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0, returns: int = 0, batch_first: bool = True,
                 kv_heads: int | None = None, scale: float | None = None, rotary: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.fused = num_heads, head_dim, fused
        self.kv_heads = num_heads if kv_heads is None else kv_heads
        self.scale = head_dim ** -0.5 if scale is None else scale
        self.rotary = rotary
        self.attn_dropout, self.proj_dropout = attn_dropout, proj_dropout
        self.returns, self.batch_first = returns, batch_first
        if num_heads % self.kv_heads or (fused and self.kv_heads != num_heads):
            raise ValueError(f"{num_heads} query heads do not share {self.kv_heads} key/value "
                             "heads evenly (or a fused qkv with fewer key/value heads)")
        width = num_heads * head_dim
        if fused:
            self.qkv = nn.Linear(dim, 3 * width, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, width, bias=qkv_bias)
            self.k, self.v = (nn.Linear(dim, self.kv_heads * head_dim, bias=qkv_bias)
                              for _ in range(2))
        self.proj = nn.Linear(width, dim, bias=proj_bias)

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.kv_heads

    def projection_names(self) -> tuple[str, ...]:
        """Names of the Linears whose output rows hold the heads: ("qkv",) or ("q", "k", "v")."""
        return ("qkv",) if self.fused else ("q", "k", "v")

    def projections(self) -> tuple[nn.Linear, ...]:
        return tuple(getattr(self, name) for name in self.projection_names())

    def forward(self, x: torch.Tensor, *args: Any, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, **kwargs: Any):
        _check_self_attention(x, args, kwargs)
        if not self.batch_first:
            x = x.transpose(0, 1)
        out = self.attend(x, attn_mask, is_causal)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self._returned(out)

    def attend(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
               is_causal: bool = False,
               position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> torch.Tensor:
        """The attention of batch-first `x` [batch, tokens, dim] -> [batch, tokens, dim]: the mask
        as `forward` takes it, and the rotary (cos, sin) [batch or 1, tokens, head_dim] when
        `rotary` (Hugging Face's rotate-half convention, applied to every query and key head)."""
        return self.combine(*self.project(x, position_embeddings), attn_mask, is_causal)

    def project(self, x: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [batch, num_heads, tokens, head_dim], k and v [batch, kv_heads, tokens, head_dim] of
        batch-first `x`, rotary applied when `rotary` (cos, sin at these tokens' positions):
        what a KV cache holds is this k and v."""
        b, t, _ = x.shape
        h, g, d = self.num_heads, self.kv_heads, self.head_dim
        if self.fused:
            q, k, v = self.qkv(x).reshape(b, t, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q(x).reshape(b, t, h, d).transpose(1, 2)
            k, v = (layer(x).reshape(b, t, g, d).transpose(1, 2) for layer in (self.k, self.v))
        if self.rotary:
            if position_embeddings is None:
                raise ValueError("rotary attention is called without position_embeddings")
            cos, sin = (e.unsqueeze(1) for e in position_embeddings)
            q, k = _rotated(q, cos, sin), _rotated(k, cos, sin)
        return q, k, v

    def combine(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """The output [batch, queries, dim] of queries q over keys and values k, v (`project`'s;
        k and v may hold more positions than q, a cache's before them): each key/value head
        serves the `group_size` query heads after it; `is_causal` lets the last query see every
        key, the ones before it one fewer each."""
        b, _, n, d = q.shape
        h, g, t = self.num_heads, self.kv_heads, k.shape[2]  # plain ints: no branch traced
        if g != h:
            k, v = (z[:, :, None].expand(b, g, h // g, t, d).reshape(b, h, t, d) for z in (k, v))
        scores = (q * self.scale) @ k.transpose(-2, -1)
        weights = _masked(scores, attn_mask, is_causal).softmax(dim=-1)
        weights = F.dropout(weights, self.attn_dropout, self.training)
        out = (weights @ v).transpose(1, 2).reshape(b, n, h * d)
        return F.dropout(self.proj(out), self.proj_dropout, self.training)

    def _returned(self, out: torch.Tensor):
        return out if self.returns == 0 else (out, *([None] * (self.returns - 1)))

    def extra_repr(self) -> str:
        grouped = f", kv_heads={self.kv_heads}" if self.kv_heads != self.num_heads else ""
        return (f"num_heads={self.num_heads}{grouped}, head_dim={self.head_dim}, "
                f"fused={self.fused}" + (", rotary=True" if self.rotary else ""))


DECODER_IGNORED = ("position_ids", "cache_position", "use_cache")
"""Keyword arguments a Hugging Face decoder passes its attention that do not change its output
without a cache (positions reach rotary attention as `position_embeddings`)."""


class DecoderAttention(ExplicitAttention):
    """`ExplicitAttention` called as a Hugging Face decoder layer calls its self-attention:
    `hidden_states` (by position or keyword), `attention_mask` as the model built it ([batch or 1,
    1, tokens, tokens], bool True where a query may attend, or float added to the scores; None
    for a causal mask sdpa applies itself), `position_embeddings` (cos, sin) for rotary
    attention; returns `(out, None)`. A cache (`cache` or `past_key_values`), cross-attention
    states and `output_attentions` are refused (ValueError), as is any other argument that is
    not None or False."""

    def forward(self, hidden_states: torch.Tensor, *args: Any,
                attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                **kwargs: Any):
        named = [(f"argument {i + 2}", v) for i, v in enumerate(args)] + list(kwargs.items())
        for name, value in named:
            if value is None or value is False or name in DECODER_IGNORED:
                continue
            raise ValueError(f"a decoder's explicit attention runs without a KV cache or "
                             f"cross-attention; {name} is {type(value).__name__} (call the model "
                             "with use_cache=False: compressor.zoo.huggingface.causal_lm)")
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            attention_mask = ~attention_mask  # Hugging Face: True where it may attend
        out = self.attend(hidden_states, attention_mask, attention_mask is None,
                          position_embeddings)
        return self._returned(out)


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x [batch, heads, tokens, head_dim], halves rotated."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _masked(scores: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool
            ) -> torch.Tensor:
    """Attention scores [batch, heads, tokens, tokens] with `attn_mask` applied (bool: -inf
    where True; float: added), or the causal mask when `is_causal` comes without one."""
    if attn_mask is None and is_causal:  # queries are the last n of t positions
        n, t = scores.shape[-2:]
        attn_mask = torch.ones(n, t, dtype=torch.bool, device=scores.device).triu(t - n + 1)
    if attn_mask is None:
        return scores
    if not torch.jit.is_tracing() and attn_mask.dim() != 2 and \
            not (attn_mask.dim() == 4 and attn_mask.shape[1] == 1):  # checked before export
        raise ValueError(f"ExplicitAttention takes a [tokens, tokens] attn_mask, not one of "
                         f"{attn_mask.dim()} dimensions (per batch or head; a decoder's [batch, "
                         "1, tokens, tokens] is taken)")
    if attn_mask.dtype == torch.bool:
        return scores.masked_fill(attn_mask, float("-inf"))
    return scores + attn_mask


def _check_self_attention(x: torch.Tensor, args: tuple, kwargs: dict) -> None:
    named = [(f"argument {i + 2}", v) for i, v in enumerate(args)] + list(kwargs.items())
    for name, value in named:
        if value is x or value is None or value is False or name in IGNORED_ARGUMENTS:
            continue
        raise ValueError(f"ExplicitAttention computes self-attention with at most an attn_mask "
                         f"or is_causal; {name} is {type(value).__name__}, not the input, None "
                         "or False")


# --- finding the layouts --------------------------------------------------------------------------


class _Site(NamedTuple):
    """One module to replace: its name, the module and its layout (a key of `BUILDERS`)."""

    name: str
    module: nn.Module
    layout: str  # "torchvision", "timm", "huggingface", "gpt2" or "llama"


def _linear(module: nn.Module, name: str) -> nn.Linear | None:
    child = getattr(module, name, None)
    return child if isinstance(child, nn.Linear) else None


def _heads_attribute(module: nn.Module) -> int | None:
    for name in ("num_attention_heads", "num_heads"):
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _has_layer(module: nn.Module, name: str) -> bool:
    """Whether `module` has a child `name` that is a Linear or a Hugging Face `Conv1D`."""
    child = getattr(module, name, None)
    return isinstance(child, nn.Linear) or _is_conv1d(child)


def _is_conv1d(module: Any) -> bool:
    """Hugging Face's `Conv1D` (transformers.pytorch_utils): a Linear whose weight is stored
    transposed, [in, out]; found by its name and attributes, `transformers` not imported."""
    return isinstance(module, nn.Module) and type(module).__name__ == "Conv1D" and \
        isinstance(getattr(module, "nf", None), int) and \
        isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2


def _decoder_layout(module: nn.Module) -> str | None:
    """"gpt2" or "llama" when `module` is a Hugging Face decoder's attention of that layout."""
    if _has_layer(module, "c_attn") and _has_layer(module, "c_proj") and \
            isinstance(getattr(module, "head_dim", None), int) and _heads_attribute(module):
        return "gpt2"
    if all(_linear(module, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) and \
            isinstance(getattr(module, "head_dim", None), int):
        return "llama"
    return None


def _sites(model: nn.Module) -> list[_Site]:
    """The self-attention modules of the five layouts, outermost first (none nested in another)."""
    found: list[_Site] = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if any(name.startswith(s.name + ".") or s.name == name for s in found if s.name):
            continue
        if isinstance(module, ExplicitAttention):
            continue
        if isinstance(module, nn.MultiheadAttention):
            found.append(_Site(name, module, "torchvision"))
        elif (layout := _decoder_layout(module)) is not None:
            found.append(_Site(name, module, layout))
        elif _linear(module, "qkv") and _linear(module, "proj") and _heads_attribute(module):
            found.append(_Site(name, module, "timm"))
        elif all(_linear(module, n) for n in ("query", "key", "value")) and \
                _heads_attribute(module) and "." in name:
            parent = name.rsplit(".", 1)[0]
            found = [s for s in found if not s.name.startswith(parent + ".")]
            found.append(_Site(parent, modules[parent], "huggingface"))
    return found


def has_attention(model: nn.Module) -> bool:
    """Whether `model` holds self-attention that `explicit_attention` rewrites, or already holds
    `ExplicitAttention`: such a model is pruned by transformer units (`pruning.transformer`)."""
    return any(isinstance(m, ExplicitAttention) for m in model.modules()) or bool(_sites(model))


# --- building the explicit form -------------------------------------------------------------------


def _dropout_p(modules: Iterable[nn.Module | None]) -> float:
    """The probability of the first Dropout among `modules` (0 without one)."""
    return next((m.p for m in modules if isinstance(m, nn.Dropout)), 0.0)


def _copy_linear(target: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        target.weight.copy_(weight)
        if target.bias is not None:
            target.bias.copy_(bias)


def _from_torchvision(m: nn.MultiheadAttention, returns: int) -> ExplicitAttention:
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise ValueError("it has separate key/value widths, bias_k/bias_v or add_zero_attn")
    explicit = ExplicitAttention(
        m.embed_dim, m.num_heads, m.head_dim, qkv_bias=m.in_proj_bias is not None,
        proj_bias=m.out_proj.bias is not None, attn_dropout=m.dropout, returns=returns,
        batch_first=m.batch_first)
    _copy_linear(explicit.qkv, m.in_proj_weight, m.in_proj_bias)
    _copy_linear(explicit.proj, m.out_proj.weight, m.out_proj.bias)
    return explicit


def _from_timm(m: nn.Module, returns: int) -> ExplicitAttention:
    qkv, proj, heads = m.qkv, m.proj, _heads_attribute(m)
    width = qkv.out_features // 3
    if qkv.out_features != 3 * width or width % heads or proj.in_features != width:
        raise ValueError(f"qkv has {qkv.out_features} outputs for {heads} heads and a "
                         f"projection of {proj.in_features} inputs")
    explicit = ExplicitAttention(
        qkv.in_features, heads, width // heads, qkv_bias=qkv.bias is not None,
        proj_bias=proj.bias is not None, attn_dropout=_dropout_p([getattr(m, "attn_drop", None)]),
        proj_dropout=_dropout_p([getattr(m, "proj_drop", None)]), returns=returns)
    _copy_linear(explicit.qkv, qkv.weight, qkv.bias)
    _copy_linear(explicit.proj, proj.weight, proj.bias)
    return explicit


def _from_huggingface(parent: nn.Module, returns: int) -> ExplicitAttention:
    inner = next(m for m in parent.modules() if m is not parent
                 and all(_linear(m, n) for n in ("query", "key", "value")))
    mine = {id(m) for m in inner.modules()}
    outputs = [m for m in parent.modules() if isinstance(m, nn.Linear) and id(m) not in mine]
    q, k, v = inner.query, inner.key, inner.value
    heads, width = _heads_attribute(inner), q.out_features
    if len(outputs) != 1 or width % heads or {k.out_features, v.out_features} != {width}:
        raise ValueError(f"{len(outputs)} output projections beside query/key/value (need one) "
                         f"or {width} channels for {heads} heads")
    proj = outputs[0]
    explicit = ExplicitAttention(
        q.in_features, heads, width // heads, fused=False, qkv_bias=q.bias is not None,
        proj_bias=proj.bias is not None, attn_dropout=_dropout_p(inner.modules()),
        proj_dropout=_dropout_p(m for m in parent.modules() if id(m) not in mine),
        returns=returns)
    for mine_layer, theirs in ((explicit.q, q), (explicit.k, k), (explicit.v, v),
                               (explicit.proj, proj)):
        _copy_linear(mine_layer, theirs.weight, theirs.bias)
    return explicit


ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
"""Hugging Face attention implementations (`config._attn_implementation`) rewritten: the others
(flash attention, flex, paged) compute the same attention but are not checked here."""


def _check_decoder(m: nn.Module) -> None:
    """A ValueError naming what a Hugging Face decoder attention holds that is not rewritten."""
    if getattr(m, "is_cross_attention", False) or hasattr(m, "q_attn"):
        raise ValueError("it is cross-attention (encoder states as keys and values)")
    implementation = getattr(getattr(m, "config", None), "_attn_implementation", None)
    if implementation not in (None, *ATTENTION_IMPLEMENTATIONS):
        raise ValueError(f"its attention implementation is {implementation!r} (eager and sdpa "
                         "are rewritten: load the model with attn_implementation='eager')")
    mine = {"c_attn", "c_proj", "q_proj", "k_proj", "v_proj", "o_proj"}
    other = sorted(n for n, c in m.named_children() if n not in mine
                   and any(True for _ in c.parameters()))
    if other:
        raise ValueError(f"it holds {', '.join(other)} beside its projections (e.g. a q/k norm)")


def _decoder_dropout(m: nn.Module) -> float:
    p = getattr(m, "attention_dropout", None)
    return p if isinstance(p, float) else _dropout_p([getattr(m, "attn_dropout", None)])


def _from_gpt2(m: nn.Module) -> DecoderAttention:
    """GPT-2's attention (its Conv1D layers already Linears): c_attn's rows are [q; k; v], heads
    contiguous within each, as a fused qkv; `scaling` kept (it may also divide by the layer
    index)."""
    qkv, proj, heads, d = m.c_attn, m.c_proj, _heads_attribute(m), m.head_dim
    if not isinstance(qkv, nn.Linear) or qkv.out_features != 3 * heads * d or \
            proj.in_features != heads * d:
        raise ValueError(f"c_attn has {qkv.out_features} outputs for {heads} heads of {d}")
    explicit = DecoderAttention(
        qkv.in_features, heads, d, qkv_bias=qkv.bias is not None,
        proj_bias=proj.bias is not None, attn_dropout=_decoder_dropout(m),
        proj_dropout=_dropout_p([getattr(m, "resid_dropout", None)]), returns=2,
        scale=float(getattr(m, "scaling", d ** -0.5)))
    _copy_linear(explicit.qkv, qkv.weight, qkv.bias)
    _copy_linear(explicit.proj, proj.weight, proj.bias)
    return explicit


def _from_llama(m: nn.Module, rotary: bool) -> DecoderAttention:
    """The Llama family's attention: q_proj, k_proj, v_proj (grouped-query: k and v hold fewer
    heads), o_proj; rotary when the model passes it `position_embeddings`."""
    q, k, v, o, d = m.q_proj, m.k_proj, m.v_proj, m.o_proj, m.head_dim
    heads, kv_heads = q.out_features // d, k.out_features // d
    if q.out_features % d or k.out_features % d or v.out_features != k.out_features or \
            o.in_features != q.out_features or heads % kv_heads:
        raise ValueError(f"q/k/v_proj have {q.out_features}/{k.out_features}/{v.out_features} "
                         f"outputs for heads of {d}")
    if len({layer.bias is not None for layer in (q, k, v)}) != 1:
        raise ValueError("only some of q/k/v_proj have a bias")
    explicit = DecoderAttention(
        q.in_features, heads, d, fused=False, qkv_bias=q.bias is not None,
        proj_bias=o.bias is not None, attn_dropout=_decoder_dropout(m), returns=2,
        kv_heads=kv_heads, scale=float(getattr(m, "scaling", d ** -0.5)), rotary=rotary)
    for mine_layer, theirs in ((explicit.q, q), (explicit.k, k), (explicit.v, v),
                               (explicit.proj, o)):
        _copy_linear(mine_layer, theirs.weight, theirs.bias)
    return explicit


BUILDERS = {"torchvision": _from_torchvision, "timm": _from_timm,
            "huggingface": _from_huggingface}
DECODERS = ("gpt2", "llama")
"""Layouts of Hugging Face decoders: refused by `_check_decoder` for what is not rewritten, and
checked whole by `explicit_attention`."""


# --- the rewrite ----------------------------------------------------------------------------------


class Call(NamedTuple):
    """One recorded call of a module: its arguments, its output, and when it returned."""

    args: tuple
    kwargs: dict
    output: Any
    order: int  # calls of all the recorded modules, numbered in the order they returned


def record_calls(model: nn.Module, example_input: torch.Tensor, names: list[str]
                 ) -> dict[str, list[Call]]:
    """Run `model` once (eval mode, no gradients) and record every call of the named modules."""
    calls: dict[str, list[Call]] = {name: [] for name in names}
    returned = [0]

    def hook_for(name: str):
        def hook(module, args, kwargs, output):
            calls[name].append(Call(args, kwargs, output, returned[0]))
            returned[0] += 1
        return hook

    hooks = [model.get_submodule(name).register_forward_hook(hook_for(name), with_kwargs=True)
             for name in names]
    modes = {m: m.training for m in model.modules()}  # restored module by module
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for m, training in modes.items():
            m.training = training
        for hook in hooks:
            hook.remove()
    return calls


def first_tensor(output: Any) -> torch.Tensor:
    """The output tensor of a module that returns a tensor or a tuple starting with one."""
    return output[0] if isinstance(output, tuple | list) else output


def returns_of(output: Any) -> int:
    """`ExplicitAttention.returns` for a module whose output was `output`: 0 for a tensor, the
    tuple's length for a tuple whose other items are None (a ValueError otherwise)."""
    if isinstance(output, torch.Tensor):
        return 0
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor) \
            and all(item is None for item in output[1:]):
        return len(output)
    raise ValueError("it returns more than its output (attention weights?)")


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _rewrite(site: _Site, calls: list[Call]) -> tuple[ExplicitAttention, float]:
    """The explicit form of one site and its max |difference| relative to the largest |output|."""
    if site.layout in DECODERS:
        _check_decoder(site.module)
    if len(calls) != 1:
        raise ValueError(f"it runs {len(calls)} times on one example (need once)")
    call = calls[0]
    if call.args and call.args[0].dim() != 3:
        raise ValueError(f"its input has {call.args[0].dim()} dimensions, not [batch, tokens, "
                         "dim] (windowed attention)")
    weight = next(site.module.parameters())
    # A decoder's attention returns (output, weights): its callers drop the weights, and
    # DecoderAttention returns (output, None).
    if site.layout == "llama":
        explicit = _from_llama(site.module, call.kwargs.get("position_embeddings") is not None)
    elif site.layout == "gpt2":
        explicit = _from_gpt2(site.module)
    else:
        explicit = BUILDERS[site.layout](site.module, returns_of(call.output))
    explicit = explicit.to(device=weight.device, dtype=weight.dtype).eval()
    with torch.no_grad():
        got = first_tensor(explicit(*call.args, **call.kwargs))
    want = first_tensor(call.output)
    scale = float(want.abs().max())
    diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    if not diff <= REWRITE_TOLERANCE.limit(scale):
        raise ValueError(f"its explicit form differs by {diff:.2e} at max |output| {scale:.2e}")
    explicit.train(site.module.training)
    return explicit, diff / max(scale, 1e-30)


def linear_conv1d(model: nn.Module) -> list[str]:
    """Replace, in place, every Hugging Face `Conv1D` of `model` (GPT-2's attention and MLP) by
    the `nn.Linear` computing the same (its weight transposed); the names replaced."""
    names = [name for name, m in model.named_modules() if _is_conv1d(m)]
    for name in names:
        conv = model.get_submodule(name)
        weight = conv.weight
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=conv.bias is not None)
        linear = linear.to(device=weight.device, dtype=weight.dtype)
        _copy_linear(linear, weight.t(), conv.bias)
        linear.weight.requires_grad_(weight.requires_grad)
        linear.train(conv.training)
        set_module(model, name, linear)
    return names


def output_tensor(output: Any) -> torch.Tensor:
    """A model's output as one tensor: itself, the `logits` of an output object, or the first
    item of a tuple."""
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else first_tensor(output)


def _check_whole(model: nn.Module, work: nn.Module, example_input: torch.Tensor) -> None:
    """A ValueError when the rewritten model's output on `example_input` differs from the
    original's by more than `REWRITE_TOLERANCE` (eval mode, no gradients)."""
    outputs = []
    for m in (model, work):
        modes = {sub: sub.training for sub in m.modules()}  # restored module by module
        try:
            with torch.no_grad():
                outputs.append(output_tensor(m.eval()(example_input)))
        finally:
            for sub, training in modes.items():
                sub.training = training
    want, got = outputs
    scale = float(want.abs().max())
    diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    if not diff <= REWRITE_TOLERANCE.limit(scale):
        raise ValueError(f"its output differs by {diff:.2e} at max |output| {scale:.2e} once "
                         "rewritten")


def explicit_attention(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A deep copy of `model` with every self-attention of the five layouts (module docstring)
    replaced by an equal `ExplicitAttention`, each checked on the inputs it received on
    `example_input` within `REWRITE_TOLERANCE` (a model holding a Hugging Face decoder's
    attention, or Conv1D layers, is checked whole too). A model without them comes back as a
    plain copy; a module that cannot be rewritten is a one-line UserError naming it."""
    work = copy.deepcopy(model)
    sites = _sites(work)
    if not sites:
        return work
    example_input = example_input.to(next(work.parameters()).device)
    converted = linear_conv1d(work)
    sites = _sites(work)
    calls = record_calls(work, example_input, [s.name for s in sites])
    for site in sites:
        try:
            explicit, _ = _rewrite(site, calls[site.name])
        except (ValueError, RuntimeError, TypeError, AttributeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise UserError(f"cannot rewrite {site.name} ({type(site.module).__name__}) of "
                            f"{type(model).__name__} into explicit attention: {reason}; choose "
                            "another model") from None
        set_module(work, site.name, explicit)
    if converted or any(s.layout in DECODERS for s in sites):
        try:
            _check_whole(model, work, example_input)
        except (ValueError, RuntimeError, TypeError, AttributeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise UserError(f"cannot rewrite the attention of {type(model).__name__} into "
                            f"explicit attention: {reason}; choose another model") from None
    return work
