"""Hugging Face decoders (real `transformers` models built from small configs, nothing
downloaded): GPT-2's Conv1D attention and the Llama family's grouped-query rotary attention are
rewritten with equal logits, lose heads (key/value groups), MLP width (gate and up together) and
blocks to the shapes the skeleton predicts, and export to ONNX with parity."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from compressor.errors import UserError
from compressor.io.export import export_onnx, onnx_session
from compressor.pruning import PruningConfig, apply_policy, build_skeleton, uniform_policy
from compressor.pruning.attention import (
    REWRITE_TOLERANCE,
    DecoderAttention,
    ExplicitAttention,
    explicit_attention,
)
from compressor.pruning.shapes import measure_layer_shapes
from compressor.pruning.transformer import (
    RemovedBlock,
    TransformerSkeleton,
    find_blocks,
    pruned_block,
    unit_scores,
)
from compressor.zoo.huggingface import CausalLM, causal_lm
from tests.hf_models import VOCAB, gpt2, llama, tokens, transformers  # skips without it
from tests.vit_layouts import outputs, relative_diff, same_state, state

CONFIG = PruningConfig(round_to=16)
GPT2 = "model.transformer.h."
LLAMA = "model.model.layers."
X = tokens()


@functools.cache
def model_of(family: str) -> CausalLM:
    return {"gpt2": gpt2, "llama": llama}[family]()


@functools.cache
def skeleton_of(family: str) -> TransformerSkeleton:
    return build_skeleton(model_of(family), X, CONFIG)  # verified: one real prune


# --- the rewrite ----------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoders_are_rewritten_with_equal_logits(family, attention):
    model = {"gpt2": gpt2, "llama": llama}[family](attention)
    before = state(model)
    work = explicit_attention(model, X)
    rewritten = [m for m in work.modules() if isinstance(m, ExplicitAttention)]
    assert len(rewritten) == 2 and all(isinstance(m, DecoderAttention) for m in rewritten)
    assert outputs(model, X).shape == (2, 16, VOCAB)
    assert relative_diff(outputs(model, X), outputs(work, X)) <= REWRITE_TOLERANCE.rtol
    longer = tokens(24, batch=3, seed=1)  # other positions (rotary), another batch
    assert relative_diff(outputs(model, longer), outputs(work, longer)) <= REWRITE_TOLERANCE.rtol
    assert same_state(model.state_dict(), before)  # the input is untouched
    assert not any(type(m).__name__ == "Conv1D" for m in work.modules())


def test_gpt2s_conv1d_become_linears_and_its_attention_a_fused_causal_one():
    model = gpt2()
    work = explicit_attention(model, X)
    attention = work.model.transformer.h[0].attn
    assert (attention.num_heads, attention.kv_heads, attention.head_dim, attention.fused) == \
        (4, 4, 16, True)
    assert isinstance(work.model.transformer.h[0].mlp.c_fc, nn.Linear)
    assert type(model.model.transformer.h[0].mlp.c_fc).__name__ == "Conv1D"  # not the input's
    # The tied embedding stays tied in the copy: the output layer is the token embedding.
    assert work.model.lm_head.weight is work.model.transformer.wte.weight


@pytest.mark.parametrize("option", ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"])
def test_gpt2s_attention_options_are_rewritten_with_equal_logits(option):
    model = gpt2(**{option: True})
    work = explicit_attention(model, X)
    assert relative_diff(outputs(model, X), outputs(work, X)) <= REWRITE_TOLERANCE.rtol
    if option == "scale_attn_by_inverse_layer_idx":  # head_dim ** -0.5 / (layer + 1)
        assert work.model.transformer.h[1].attn.scale == pytest.approx(16 ** -0.5 / 2)


def test_llamas_attention_keeps_its_key_value_groups_and_rotary():
    work = explicit_attention(llama(), X)
    attention = work.model.model.layers[0].self_attn
    assert (attention.num_heads, attention.kv_heads, attention.group_size, attention.rotary) == \
        (4, 2, 2, True)
    assert (attention.q.out_features, attention.k.out_features, attention.v.out_features) == \
        (64, 32, 32)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_rewritten_decoder_is_still_causal(family):
    work = explicit_attention(model_of(family), X)
    changed = X.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
    assert torch.equal(outputs(work, X)[:, :10], outputs(work, changed)[:, :10])
    assert not torch.equal(outputs(work, X)[:, 10:], outputs(work, changed)[:, 10:])


def test_decoder_attention_takes_hugging_faces_masks_either_way():
    """A bool mask is True where a query may attend (sdpa's), a float one is added (eager's);
    without one the attention is causal; a KV cache is refused."""
    torch.manual_seed(0)
    attention = DecoderAttention(64, 4, 16, fused=False, kv_heads=2, returns=2).eval()
    x = torch.randn(2, 8, 64)
    allowed = torch.ones(8, 8, dtype=torch.bool).tril()
    additive = torch.zeros(8, 8).masked_fill(~allowed, float("-inf"))
    causal = attention(x)[0]
    assert attention(x, attention_mask=allowed[None, None])[1] is None
    for mask in (allowed[None, None], additive[None, None].expand(2, 1, 8, 8)):
        torch.testing.assert_close(attention(hidden_states=x, attention_mask=mask)[0], causal)
    with pytest.raises(ValueError, match="past_key_values is object"):
        attention(x, past_key_values=object())


def test_a_llamas_attention_over_cached_keys_equals_it_over_the_whole_sequence():
    """`project` gives the key/value heads a KV cache holds (rotary applied at their positions),
    `combine` attends new queries over cached plus new keys: split anywhere, the same output."""
    model = llama()
    work = explicit_attention(model, X)
    attention = work.model.model.layers[0].self_attn
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    cos, sin = work.model.model.rotary_emb(x, torch.arange(16)[None])
    with torch.no_grad():
        whole = attention.attend(x, is_causal=True, position_embeddings=(cos, sin))
        past = attention.project(x[:, :11], (cos[:, :11], sin[:, :11]))
        q, k, v = attention.project(x[:, 11:], (cos[:, 11:], sin[:, 11:]))
        assert past[1].shape == (2, 2, 11, 16)  # kv_heads cached, not query heads
        new = attention.combine(q, torch.cat([past[1], k], 2), torch.cat([past[2], v], 2),
                                is_causal=True)
    torch.testing.assert_close(new, whole[:, 11:], rtol=1e-5, atol=1e-6)


def test_what_is_not_rewritten_is_a_one_line_user_error_naming_it():
    raw = model_of("gpt2").model  # unwrapped: called with its KV cache (use_cache)
    with pytest.raises(UserError, match=r"cannot rewrite transformer.h.0.attn \(GPT2Attention\)"
                                        r".*KV cache"):
        explicit_attention(raw, X)
    with pytest.raises(UserError, match=r"GPT2Attention.*KV cache.*causal_lm") as info:
        explicit_attention(raw, X)
    assert "\n" not in str(info.value)
    torch.manual_seed(0)
    qwen3 = causal_lm(transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=VOCAB)).eval())
    with pytest.raises(UserError, match=r"self_attn \(Qwen3Attention\).*k_norm, q_norm"):
        explicit_attention(qwen3, X)


# --- units and pruning ----------------------------------------------------------------------------


def test_gpt2s_units_are_blocks_heads_and_mlp_width_and_the_embedding_stays():
    skeleton = skeleton_of("gpt2")
    assert [(u.name, u.kind, u.channels) for u in skeleton.units] == [
        (f"{GPT2}0", "block", 1), (f"{GPT2}0.attn", "heads", 4), (f"{GPT2}0.mlp.c_fc", "mlp", 256),
        (f"{GPT2}1", "block", 1), (f"{GPT2}1.attn", "heads", 4), (f"{GPT2}1.mlp.c_fc", "mlp", 256)]
    dense = skeleton.dense_shapes
    assert dense[-1].name == "model.lm_head" and (dense[-1].in_channels, dense[-1].out_channels) \
        == (64, VOCAB)


def test_llamas_units_count_key_value_groups_and_name_the_gated_mlp_by_gate_proj():
    skeleton = skeleton_of("llama")
    assert [(u.name, u.kind, u.channels) for u in skeleton.units] == [
        (f"{LLAMA}0", "block", 1), (f"{LLAMA}0.self_attn", "heads", 2),
        (f"{LLAMA}0.mlp.gate_proj", "mlp", 128), (f"{LLAMA}1", "block", 1),
        (f"{LLAMA}1.self_attn", "heads", 2), (f"{LLAMA}1.mlp.gate_proj", "mlp", 128)]
    block = find_blocks(explicit_attention(model_of("llama"), X), X)[0]
    assert (block.fc1, block.up, block.fc2) == (
        f"{LLAMA}0.mlp.gate_proj", f"{LLAMA}0.mlp.up_proj", f"{LLAMA}0.mlp.down_proj")
    units = dict(zip([s.name for s in skeleton.dense_shapes], skeleton.layer_units(), strict=True))
    assert units[f"{LLAMA}0.mlp.up_proj"] == f"{LLAMA}0.mlp.gate_proj"
    assert units[f"{LLAMA}0.self_attn.k"] == f"{LLAMA}0.self_attn"


GPT2_POLICY = {f"{GPT2}0.attn": 0.5, f"{GPT2}0.mlp.c_fc": 0.25, f"{GPT2}1": 0.9}
LLAMA_POLICY = {f"{LLAMA}0.self_attn": 0.5, f"{LLAMA}0.mlp.gate_proj": 0.5, f"{LLAMA}1": 0.9}


def test_gpt2_prunes_to_the_predicted_shapes_and_keeps_its_tied_embedding():
    model = model_of("gpt2")
    before = state(model)
    pruned = apply_policy(model, GPT2_POLICY, X, CONFIG)
    assert same_state(model.state_dict(), before)
    assert measure_layer_shapes(pruned, X) == skeleton_of("gpt2").layer_shapes(GPT2_POLICY)
    block = pruned.model.transformer.h[0]
    assert (block.attn.num_heads, block.attn.qkv.out_features, block.attn.proj.in_features) == \
        (2, 96, 32)
    assert (block.mlp.c_fc.out_features, block.mlp.c_proj.in_features) == (192, 192)
    assert isinstance(pruned.model.transformer.h[1], RemovedBlock)
    assert pruned.model.lm_head.weight is pruned.model.transformer.wte.weight
    assert pruned.model.transformer.wte.weight.shape == (VOCAB, 64)


def test_a_gpt2_in_train_mode_prunes_and_trains_leaving_the_input_as_it_was():
    model = gpt2().train()  # dropout 0.1 in attention, residual and embedding
    before = state(model)
    pruned = apply_policy(model, GPT2_POLICY, X, CONFIG)
    assert same_state(model.state_dict(), before)
    assert model.training and all(m.training for m in model.modules())
    assert pruned.training and pruned.model.transformer.h[0].attn.attn_dropout == 0.1
    logits = pruned(X)
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), X[:, 1:].reshape(-1))
    loss.backward()
    assert pruned.model.transformer.h[0].attn.qkv.weight.grad is not None


def test_llama_loses_a_key_value_group_with_its_query_heads_and_gate_and_up_together():
    model = model_of("llama")
    pruned = apply_policy(model, LLAMA_POLICY, X, CONFIG)
    assert measure_layer_shapes(pruned, X) == skeleton_of("llama").layer_shapes(LLAMA_POLICY)
    attention = pruned.model.model.layers[0].self_attn
    assert (attention.num_heads, attention.kv_heads, attention.head_dim) == (2, 1, 16)
    assert (attention.q.out_features, attention.k.out_features, attention.v.out_features,
            attention.proj.in_features) == (32, 16, 16, 32)
    mlp = pruned.model.model.layers[0].mlp
    assert (mlp.gate_proj.out_features, mlp.up_proj.out_features, mlp.down_proj.in_features) == \
        (64, 64, 64)
    assert isinstance(pruned.model.model.layers[1], RemovedBlock)
    skeleton = skeleton_of("llama")
    assert skeleton.kept_channels(LLAMA_POLICY)[f"{LLAMA}0.self_attn"] == 1
    assert skeleton.params(LLAMA_POLICY) == sum(s.params for s in measure_layer_shapes(pruned, X))
    assert skeleton.macs(LLAMA_POLICY) < skeleton.macs({})


def test_pruned_llama_is_the_dense_one_with_the_removed_group_and_channels_zeroed():
    """Slicing a key/value group is exact: the pruned network is the dense one whose removed
    query heads' o_proj columns, removed hidden channels' down_proj columns and removed block's
    branch outputs are zero; rotary stays right because head_dim is kept."""
    model = model_of("llama")
    pruned = apply_policy(model, LLAMA_POLICY, X, CONFIG)
    dense = explicit_attention(model, X)
    with torch.no_grad():
        attention = dense.model.model.layers[0].self_attn
        kept_k = pruned.model.model.layers[0].self_attn.k.weight
        groups = [g for g in range(2) if torch.equal(attention.k.weight[g * 16:(g + 1) * 16],
                                                     kept_k)]
        assert len(groups) == 1
        removed = 1 - groups[0]  # its two query heads: 32 columns of o_proj
        attention.proj.weight[:, removed * 32:(removed + 1) * 32] = 0
        mlp = dense.model.model.layers[0].mlp
        kept_gate = pruned.model.model.layers[0].mlp.gate_proj.weight
        rows = [r for r in range(128) if any(torch.equal(mlp.gate_proj.weight[r], w)
                                             for w in kept_gate)]
        assert len(rows) == 64
        assert torch.equal(mlp.up_proj.weight[rows], pruned.model.model.layers[0].mlp.up_proj.weight)
        mlp.down_proj.weight[:, [r for r in range(128) if r not in rows]] = 0
        last = dense.model.model.layers[1]
        last.self_attn.proj.weight.zero_()
        last.mlp.down_proj.weight.zero_()
    longer = tokens(24, seed=2)
    assert relative_diff(outputs(dense, longer), outputs(pruned, longer)) <= 1e-5


def test_key_value_groups_rank_by_all_their_weights():
    model = llama(layers=1)
    with torch.no_grad():  # group 0 (query heads 0 and 1, key/value head 0) is the weakest
        attention = model.model.model.layers[0].self_attn
        attention.q_proj.weight[:32] *= 0.01
        attention.k_proj.weight[:16] *= 0.01
        attention.v_proj.weight[:16] *= 0.01
    scores = unit_scores(model, X, CONFIG)[f"{LLAMA}0.self_attn"]
    assert scores.shape == (2,) and scores[0] < scores[1]
    pruned = apply_policy(model, {f"{LLAMA}0.self_attn": 0.5}, X, CONFIG)
    assert torch.equal(pruned.model.model.layers[0].self_attn.k.weight,
                       attention.k_proj.weight[16:])
    assert torch.equal(pruned.model.model.layers[0].self_attn.proj.weight,
                       attention.o_proj.weight[:, 32:])


def test_a_pruned_llama_block_alone_keeps_the_asked_key_value_groups():
    dense = explicit_attention(model_of("llama"), X)
    block = find_blocks(dense, X)[0]
    alone = pruned_block(dense, block, 1, 64)
    assert (alone.self_attn.num_heads, alone.self_attn.kv_heads, alone.mlp.up_proj.out_features,
            alone.mlp.gate_proj.out_features) == (2, 1, 64, 64)
    assert dense.model.model.layers[0].self_attn.kv_heads == 2  # left as it was


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_pruned_decoders_export_with_parity(family, tmp_path):
    policy = {"gpt2": GPT2_POLICY, "llama": LLAMA_POLICY}[family]
    pruned = apply_policy(model_of(family), policy, X, CONFIG)
    report = export_onnx(pruned, X, tmp_path / "lm.onnx")
    assert report.relative_diff <= 1e-5 and report.top1_agreement == 1.0
    session = onnx_session(tmp_path / "lm.onnx")
    assert session.get_inputs()[0].type == "tensor(int64)"
    one = tokens(16, batch=1, seed=3)  # the batch axis stays dynamic
    (logits,) = session.run(None, {"input": one.numpy()})
    np.testing.assert_allclose(logits, outputs(pruned, one).numpy(), rtol=1e-4, atol=1e-4)


def test_uniform_pruning_of_a_llama_without_grouped_query_attention():
    model = llama(kv_heads=4)
    skeleton = build_skeleton(model, X, CONFIG)
    assert [u.channels for u in skeleton.units if u.kind == "heads"] == [4, 4]
    policy = uniform_policy(skeleton, 0.5)
    pruned = apply_policy(model, policy, X, CONFIG)
    assert measure_layer_shapes(pruned, X) == skeleton.layer_shapes(policy)


@pytest.mark.parametrize("family", ["Mistral", "Qwen2"])
def test_llama_layout_relatives_rewrite_and_prune_alike(family):
    """Mistral and Qwen2 (biased q/k/v) share the Llama layout: the same units, equal logits."""
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)
    model = causal_lm(getattr(transformers, f"{family}ForCausalLM")(config).eval())
    work = explicit_attention(model, X)
    assert relative_diff(outputs(model, X), outputs(work, X)) <= REWRITE_TOLERANCE.rtol
    skeleton = build_skeleton(model, X, CONFIG)
    assert [(u.kind, u.channels) for u in skeleton.units] == [
        ("block", 1), ("heads", 2), ("mlp", 128)] * 2
    pruned = apply_policy(model, LLAMA_POLICY, X, CONFIG)
    assert measure_layer_shapes(pruned, X) == skeleton.layer_shapes(LLAMA_POLICY)


def test_a_mixture_of_experts_mlp_is_a_one_line_user_error():
    torch.manual_seed(0)
    moe = causal_lm(transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_experts=2,
        num_experts_per_tok=1, shared_expert_intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB)).eval())
    with pytest.raises(UserError, match=r"cannot prune model.model.layers.0.self_attn of "
                                        r"CausalLM as a transformer block") as info:
        build_skeleton(moe, X, CONFIG)
    assert "\n" not in str(info.value)
