"""Transformer units: heads, MLP width and whole blocks found structurally, pruned by slicing to
exactly the shapes the skeleton predicts (the pruned network is the dense one with the removed
parts zeroed), the input untouched, and the result exported with parity."""

from __future__ import annotations

import functools
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from compressor.errors import UserError
from compressor.io.export import export_onnx, onnx_session
from compressor.pruning import (
    PruningConfig,
    Skeleton,
    apply_policy,
    build_skeleton,
    uniform_policy,
)
from compressor.pruning.attention import (
    REWRITE_TOLERANCE,
    ExplicitAttention,
    explicit_attention,
)
from compressor.pruning.shapes import measure_layer_shapes
from compressor.pruning.transformer import (
    RemovedBlock,
    TransformerSkeleton,
    find_blocks,
    pruned_block,
)
from tests.vit_layouts import (
    DIM,
    MLP,
    TOKENS,
    example,
    hf_vit,
    relative_diff,
    same_state,
    state,
    timm_vit,
    torchvision_vit,
)
from tests.vit_layouts import outputs as shared_outputs
from tests.work import work_of

X = example(2)
CONFIG = PruningConfig(round_to=16)  # the counts below are multiples of 16 on any CPU
TV = "encoder.layers.encoder_layer_"  # torchvision's block prefix
LAYOUTS = {"torchvision": lambda: torchvision_vit(layers=3), "timm": timm_vit, "hf": hf_vit}


@functools.cache
def model_of(layout: str) -> nn.Module:
    return LAYOUTS[layout]()


@functools.cache
def skeleton_of(layout: str) -> TransformerSkeleton:
    return build_skeleton(model_of(layout), X, CONFIG)  # verified: one real prune


def outputs(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    return shared_outputs(model, x)


# --- blocks and units -----------------------------------------------------------------------------


def test_units_per_block_are_block_heads_and_mlp_named_by_their_modules():
    skeleton = skeleton_of("torchvision")
    assert isinstance(build_skeleton(torchvision.models.resnet18(num_classes=10), torch.zeros(
        1, 3, 32, 32), CONFIG), Skeleton)  # a CNN keeps the channel skeleton
    assert [(u.name, u.kind, u.channels, u.in_channels) for u in skeleton.units[:3]] == [
        (f"{TV}0", "block", 1, DIM), (f"{TV}0.self_attention", "heads", 4, DIM),
        (f"{TV}0.mlp.0", "mlp", MLP, DIM)]
    assert [u.kind for u in skeleton.units] == ["block", "heads", "mlp"] * 3
    assert [u.index for u in skeleton.units] == list(range(9))
    assert skeleton_of("hf").names[:3] == (
        "encoder.layer.0", "encoder.layer.0.attention", "encoder.layer.0.intermediate.dense")
    units = dict(zip(skeleton.dense_shapes, skeleton.layer_units(), strict=True))
    assert {s.name: u for s, u in units.items() if u} == {
        f"{TV}{i}.{layer}": f"{TV}{i}.{unit}" for i in range(3)
        for layer, unit in (("self_attention.qkv", "self_attention"), ("mlp.0", "mlp.0"))}


def test_a_post_norm_block_keeps_its_depth_but_loses_heads_and_width():
    model = timm_vit(post_norm=True)
    skeleton = build_skeleton(model, X, CONFIG)
    assert [u.kind for u in skeleton.units] == ["heads", "mlp"] * 3
    assert not any(b.removable for b in find_blocks(explicit_attention(model, X), X))


class AttentionOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, DIM, 4, 4)
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(tokens, tokens, tokens, need_weights=False)[0].mean(1))


def test_attention_outside_a_transformer_block_is_a_user_error_naming_it():
    with pytest.raises(UserError, match="cannot prune attn of AttentionOnly as a transformer "
                                        "block: it is not inside a module that also holds an MLP"):
        build_skeleton(AttentionOnly().eval(), X, CONFIG)


def test_ignored_layers_drop_the_units_that_would_change_them():
    config = PruningConfig(round_to=16, ignored_layers=("blocks.0.attn.proj", "blocks.1.mlp.fc2"))
    skeleton = build_skeleton(model_of("timm"), X, config)
    assert skeleton.names == ("blocks.0.mlp.fc1", "blocks.1.attn", "blocks.2", "blocks.2.attn",
                              "blocks.2.mlp.fc1")
    policy = uniform_policy(skeleton, 0.5)
    pruned = apply_policy(model_of("timm"), policy, X, config)
    assert measure_layer_shapes(pruned, X) == skeleton.layer_shapes(policy)
    assert (pruned.blocks[0].attn.num_heads, pruned.blocks[1].mlp.fc1.out_features) == (4, MLP)
    with pytest.raises(UserError, match="ignored layer 'blocks.0.attn.qkvv' is not a Conv2d/Linear "
                                        "of TimmViT: did you mean blocks.0.attn.qkv"):
        build_skeleton(model_of("timm"), X, PruningConfig(ignored_layers=("blocks.0.attn.qkvv",)))


def test_a_prune_that_misses_the_prediction_is_refused(monkeypatch):
    from compressor.pruning import transformer

    monkeypatch.setattr(transformer, "apply_transformer_policy",
                        lambda model, policy, x, config: explicit_attention(model, x))
    with pytest.raises(UserError, match=r"pruning TimmViT's transformer units goes wrong: layer "
                                        r"blocks.0.attn.qkv was pruned to 64->192, predicted "
                                        r"64->96; choose another model"):
        build_skeleton(model_of("timm"), X, CONFIG)


def test_removing_heads_from_one_block_and_another_block_gives_the_predicted_shapes():
    model, skeleton = model_of("torchvision"), skeleton_of("torchvision")
    policy = {f"{TV}0.self_attention": 0.5, f"{TV}1": 0.5}  # 2 of 4 heads; the whole block
    pruned = apply_policy(model, policy, X, CONFIG)
    shapes = {s.name: s for s in measure_layer_shapes(pruned, X)}
    assert skeleton.layer_shapes(policy) == list(shapes.values())
    assert (shapes[f"{TV}0.self_attention.qkv"].out_channels,
            shapes[f"{TV}0.self_attention.proj"].in_channels) == (3 * 2 * 16, 2 * 16)
    assert not any(name.startswith(f"{TV}1.") for name in shapes)  # its layers no longer run
    assert isinstance(pruned.encoder.layers[1], RemovedBlock)
    assert pruned.encoder.layers[0].self_attention.num_heads == 2
    assert pruned.encoder.layers[2].self_attention.num_heads == 4
    kept = skeleton.kept_channels(policy)
    assert (kept[f"{TV}1"], kept[f"{TV}1.self_attention"], kept[f"{TV}1.mlp.0"]) == (0, 0, 0)
    assert outputs(pruned).shape == (2, 10)


def test_a_pruned_block_alone_keeps_the_asked_heads_and_width_and_leaves_the_model():
    model = explicit_attention(model_of("timm"), X)
    before = state(model)
    alone = pruned_block(model, find_blocks(model, X)[0], heads=2, hidden=32)
    assert (alone.attn.num_heads, alone.attn.qkv.out_features, alone.attn.proj.in_features) == \
        (2, 3 * 2 * 16, 2 * 16)
    assert (alone.mlp.fc1.out_features, alone.mlp.fc2.in_features) == (32, 32)
    with torch.no_grad():
        assert alone(torch.randn(1, TOKENS, DIM)).shape == (1, TOKENS, DIM)
    assert same_state(state(model), before)


def test_macs_count_the_attention_matmuls_and_params_the_layers():
    skeleton = skeleton_of("timm")
    policy = {"blocks.0.attn": 0.25, "blocks.1.mlp.fc1": 0.5, "blocks.2": 0.7}
    shapes = skeleton.layer_shapes(policy)
    heads = [3, 4]  # blocks 0 and 1 run; block 2 is removed
    attention = sum(2 * TOKENS * TOKENS * h * (DIM // 4) for h in heads)
    assert skeleton.macs(policy) == sum(s.macs for s in shapes) + attention
    assert skeleton.params(policy) == sum(s.params for s in shapes)
    assert skeleton.macs({}) > skeleton.macs(policy) and skeleton.params({}) > \
        skeleton.params(policy)
    assert [s.in_h for s in shapes[1:-1]] == [TOKENS] * (len(shapes) - 2)


@pytest.mark.parametrize("cost", ["macs", "params", "layer_shapes"])
def test_transformer_costs_are_plain_python_over_the_tables(cost):
    skeleton = skeleton_of("hf")
    work = work_of(getattr(skeleton, cost), uniform_policy(skeleton, 0.37))
    # No torch; `collections` is NamedTuple._replace (the shapes).
    assert work.packages <= {"compressor", "builtins", "math", "collections"}, work.packages
    assert work.lines <= 20 * (len(skeleton.dense_shapes) + len(skeleton.units))


# --- the key invariant: predicted shapes == really pruned shapes ----------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_skeleton_predicts_the_pruned_shapes(layout):
    model, skeleton = model_of(layout), skeleton_of(layout)
    before = state(model)

    @settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
    @given(st.integers(0, 2**32 - 1), st.sampled_from([0.5, 0.9]))
    def check(seed, high):
        rng = random.Random(seed)
        policy = skeleton.policy_from_vector([rng.uniform(0.0, high) for _ in skeleton.units])
        pruned = apply_policy(model, policy, X, CONFIG)
        measured = measure_layer_shapes(pruned, X)
        assert skeleton.layer_shapes(policy) == measured
        assert skeleton.params(policy) == sum(s.params for s in measured)
        assert outputs(pruned).shape == (2, 10)
        kept = skeleton.kept_channels(policy)
        for name, module in pruned.named_modules():
            if isinstance(module, ExplicitAttention):  # each holds its own kept head count
                assert module.num_heads == kept[name] > 0
        for unit in skeleton.units:
            if unit.kind == "mlp":
                assert kept[unit.name] in (0, unit.channels) or kept[unit.name] % 16 == 0

    check()
    assert same_state(model.state_dict(), before)  # the input is never touched


def test_ratio_zero_keeps_the_outputs_and_shapes():
    for layout in LAYOUTS:
        model, skeleton = model_of(layout), skeleton_of(layout)
        pruned = apply_policy(model, uniform_policy(skeleton, 0.0), X, CONFIG)
        assert measure_layer_shapes(pruned, X) == skeleton.dense_shapes
        assert relative_diff(outputs(model), outputs(pruned)) <= REWRITE_TOLERANCE.rtol


@pytest.mark.parametrize("layout", ["timm", "hf"])
def test_pruning_computes_the_dense_network_with_the_removed_parts_zeroed(layout):
    """Slicing is exact: the pruned network is the dense one whose removed heads' projection
    columns, removed hidden channels' fc2 columns and removed block's branch outputs are zero."""
    model = model_of(layout)
    skeleton = skeleton_of(layout)
    heads, mlp, block = (skeleton.names[i] for i in (1, 5, 6))  # block 0, block 1, block 2
    policy = {heads: 0.5, mlp: 0.5, block: 0.5}
    pruned = apply_policy(model, policy, X, CONFIG)
    dense = explicit_attention(model, X)
    with torch.no_grad():
        attention = dense.get_submodule(heads)
        keep_heads = pruned.get_submodule(heads).proj.weight
        proj = attention.proj.weight
        kept_columns = [c for c in range(DIM) if any(torch.equal(proj[:, c], keep_heads[:, k])
                                                     for k in range(keep_heads.shape[1]))]
        assert len(kept_columns) == 32
        proj[:, [c for c in range(DIM) if c not in kept_columns]] = 0
        fc1 = dense.get_submodule(mlp)
        fc2 = dense.get_submodule(find_blocks(dense, X)[1].fc2)
        kept_rows = [r for r in range(MLP) if any(torch.equal(fc1.weight[r], w)
                                                  for w in pruned.get_submodule(mlp).weight)]
        assert len(kept_rows) == 64
        fc2.weight[:, [r for r in range(MLP) if r not in kept_rows]] = 0
        removed = find_blocks(dense, X)[2]
        for layer in (f"{removed.attention}.proj", removed.fc2):
            for p in dense.get_submodule(layer).parameters():
                p.zero_()
    assert relative_diff(outputs(dense), outputs(pruned)) <= 1e-5


def test_heads_go_by_the_l2_norm_of_their_weights_and_random_is_seeded():
    model = timm_vit()
    with torch.no_grad():  # head 2 of block 0 is the weakest by far in q, k and v (fused)
        model.blocks[0].attn.qkv.weight.view(3, 4, 16, DIM)[:, 2] *= 0.01
        model.blocks[0].attn.qkv.bias.view(3, 4, 16)[:, 2] *= 0.01
    pruned = apply_policy(model, {"blocks.0.attn": 0.25}, X, CONFIG)
    kept = pruned.blocks[0].attn.proj.weight
    dense = model.blocks[0].attn.proj.weight
    assert torch.equal(kept, dense[:, [c for c in range(DIM) if not 32 <= c < 48]])
    separate = hf_vit()
    with torch.no_grad():  # head 1 of layer 0's projection (separate q/k/v) is the weakest
        separate.encoder.layer[0].attention.output.dense.weight[:, 16:32] *= 0.01
    pruned = apply_policy(separate, {"encoder.layer.0.attention": 0.25}, X, CONFIG)
    assert torch.equal(pruned.get_submodule("encoder.layer.0.attention.v").weight,
                       separate.encoder.layer[0].attention.attention.value.weight[
                           [r for r in range(DIM) if not 16 <= r < 32]])
    config = PruningConfig(round_to=16, importance="random", seed=3)
    one, two = (apply_policy(model, {"blocks.1.mlp.fc1": 0.5}, X, config) for _ in range(2))
    assert torch.equal(one.blocks[1].mlp.fc1.weight, two.blocks[1].mlp.fc1.weight)
    with pytest.raises(UserError, match="importance 'taylor' is not available for transformer"):
        apply_policy(model, {}, X, PruningConfig(importance="taylor"))


def test_input_model_is_untouched_in_train_mode_too():
    model = hf_vit().train()
    before = state(model)
    pruned = apply_policy(model, {"encoder.layer.0.attention": 0.5, "encoder.layer.1": 0.9}, X,
                          CONFIG)
    assert same_state(model.state_dict(), before)
    assert model.training and pruned.training
    assert all(p.requires_grad for p in pruned.parameters())
    assert model.encoder.layer[0].attention.attention.num_attention_heads == 4
    assert type(model.encoder.layer[1]).__name__ == "HfLayer"


def test_a_vit_with_dropout_in_train_mode_is_found_and_pruned_alike():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=DIM, mlp_dim=MLP,
        dropout=0.3, attention_dropout=0.3, num_classes=10).train()
    skeleton = build_skeleton(model, X, CONFIG)
    assert [u.kind for u in skeleton.units] == ["block", "heads", "mlp"] * 2
    pruned = apply_policy(model, {f"{TV}0.self_attention": 0.5, f"{TV}1": 0.5}, X, CONFIG)
    assert pruned.training and pruned.encoder.layers[0].self_attention.attn_dropout == 0.3
    assert measure_layer_shapes(pruned, X) == skeleton.layer_shapes(
        {f"{TV}0.self_attention": 0.5, f"{TV}1": 0.5})


# --- export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fused_and_separate_qkv_vits_prune_and_export_with_parity(layout, tmp_path):
    skeleton = skeleton_of(layout)
    policy = skeleton.policy_from_vector([0.0, 0.5, 0.5, 0.6, 0.25, 0.0, 0.0, 0.75, 0.3])
    pruned = apply_policy(model_of(layout), policy, X, CONFIG)
    report = export_onnx(pruned, example(4, seed=2), tmp_path / "vit.onnx")
    assert report.relative_diff <= 1e-5  # measured ~1e-6; export_onnx's limit is 1e-3
    session = onnx_session(tmp_path / "vit.onnx")  # the batch axis stays dynamic
    (logits,) = session.run(None, {"input": example(1, seed=5).numpy()})
    np.testing.assert_allclose(logits, outputs(pruned, example(1, seed=5)).numpy(), atol=1e-4)


def test_explicit_attention_with_different_head_counts_per_block_exports(tmp_path):
    model = timm_vit(heads=(4, 2, 1))
    policy = {"blocks.0.attn": 0.75, "blocks.1.attn": 0.5}  # 4 -> 1, 2 -> 1, 1 stays
    pruned = apply_policy(model, policy, X, CONFIG)
    heads = [m.num_heads for m in pruned.modules() if isinstance(m, ExplicitAttention)]
    head_dims = [m.head_dim for m in pruned.modules() if isinstance(m, ExplicitAttention)]
    assert heads == [1, 1, 1] and head_dims == [16, 32, 64]
    report = export_onnx(pruned, example(4, seed=2), tmp_path / "vit.onnx")
    assert report.relative_diff <= 1e-5
    mixed = apply_policy(model, {"blocks.0.attn": 0.5}, X, CONFIG)  # 2, 2, 1 heads
    assert export_onnx(mixed, example(4, seed=2), tmp_path / "mixed.onnx").relative_diff <= 1e-5


def test_a_pruned_vit_checkpoint_rebuilds_from_its_policy(tmp_path):
    """The checkpoint holds tensors and the policy; the architecture (per-block head counts, the
    removed block) is rebuilt by pruning the dense model again, on a zero image."""
    from compressor.pruning.checkpoints import load_pruned_checkpoint, save_pruned_checkpoint

    policy = {"blocks.0.attn": 0.5, "blocks.1": 0.6, "blocks.2.mlp.fc1": 0.75}
    pruned = apply_policy(model_of("timm"), policy, X, CONFIG)
    save_pruned_checkpoint(pruned, tmp_path / "vit.pt", {}, policy=policy, base_name=None,
                           num_classes=10, example_shape=X.shape, round_to=16)
    loaded, _ = load_pruned_checkpoint(tmp_path / "vit.pt", base_model=timm_vit(seed=1))
    assert isinstance(loaded.blocks[1], RemovedBlock) and loaded.blocks[0].attn.num_heads == 2
    assert torch.equal(outputs(loaded), outputs(pruned))


# --- the rivals' policies on transformer units ---------------------------------------------------


def test_uniform_keeps_every_block_and_prunes_heads_and_mlp_alike():
    skeleton = skeleton_of("torchvision")
    policy = uniform_policy(skeleton, 0.5)
    kept = skeleton.kept_channels(policy)
    assert {u.kind for u in skeleton.units if policy[u.name] == 0.0} == {"block"}
    assert all(kept[u.name] == 1 for u in skeleton.units if u.kind == "block")
    assert all(kept[u.name] < u.channels for u in skeleton.units if u.kind != "block")


@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_global_ranking_prunes_heads_and_mlp_to_the_cost_limit_and_keeps_blocks(layout):
    from compressor.pruning import global_ranking_policy

    skeleton = skeleton_of(layout)
    dense = skeleton.macs({})

    def cost(policy):
        return skeleton.macs(policy) / dense

    policy = global_ranking_policy(model_of(layout), X, CONFIG, cost, 0.6)
    assert cost(policy) <= 0.6
    assert all(policy.get(u.name, 0.0) == 0.0 for u in skeleton.units if u.kind == "block")
    assert len({round(policy[u.name], 3) for u in skeleton.units if u.kind != "block"}) > 1, \
        "global ranking gives the units different ratios"
    pruned = apply_policy(model_of(layout), policy, X, CONFIG)
    assert measure_layer_shapes(pruned, X) == skeleton.layer_shapes(policy)


def test_without_depth_the_blocks_are_not_units():
    skeleton = build_skeleton(model_of("torchvision"), X, replace(CONFIG, depth=False))
    assert [u.kind for u in skeleton.units] == ["heads", "mlp"] * 3


# --- causal decoders: gpt_tiny on token ids -------------------------------------------------------


@functools.cache
def gpt() -> nn.Module:
    from compressor.zoo.embedded import gpt_tiny

    torch.manual_seed(0)
    return gpt_tiny().eval()


@functools.cache
def gpt_tokens() -> torch.Tensor:
    """Real token ids [2, 32]: two windows of standard-library source (int64, not images)."""
    from compressor.zoo.text import TextConfig, load_corpus

    corpus = load_corpus(TextConfig(max_bytes=40_000))
    return next(corpus.validation.windows(2, context=32))[0]


@functools.cache
def gpt_skeleton() -> TransformerSkeleton:
    return build_skeleton(gpt(), gpt_tokens(), CONFIG)  # verified: one real prune


GPT_POLICY = {"blocks.0.attn": 0.5, "blocks.1.mlp.0": 0.25, "blocks.2": 0.9,
              "blocks.3.attn": 0.25, "blocks.3.mlp.0": 0.5}
"""Heads removed from blocks 0 and 3, MLP width from 1 and 3, block 2 removed whole."""


def test_a_decoders_blocks_heads_and_mlp_width_are_units_on_token_ids():
    skeleton = gpt_skeleton()
    assert isinstance(skeleton, TransformerSkeleton)
    assert [(u.name, u.kind, u.channels) for u in skeleton.units[:3]] == [
        ("blocks.0", "block", 1), ("blocks.0.attn", "heads", 4), ("blocks.0.mlp.0", "mlp", 512)]
    assert [u.kind for u in skeleton.units] == ["block", "heads", "mlp"] * 4
    dense = skeleton.dense_shapes
    assert dense == measure_layer_shapes(explicit_attention(gpt(), gpt_tokens()), gpt_tokens())
    assert {s.in_h for s in dense} == {32}  # every Linear maps the 32 tokens of a window
    assert dense[-1].name == "head" and dense[-1].out_channels == 256  # stays dense


def test_the_skeleton_predicts_the_pruned_decoders_shapes():
    before = state(gpt())
    pruned = apply_policy(gpt(), GPT_POLICY, gpt_tokens(), CONFIG)
    assert same_state(gpt().state_dict(), before)  # the input is untouched
    assert measure_layer_shapes(pruned, gpt_tokens()) == gpt_skeleton().layer_shapes(GPT_POLICY)
    assert [m.num_heads for m in pruned.modules() if isinstance(m, ExplicitAttention)] == \
        [2, 4, 3]
    assert isinstance(pruned.blocks[2], RemovedBlock)
    assert pruned.blocks[1].mlp[0].out_features == 384 and pruned.blocks[3].mlp[0].out_features \
        == 256
    kept = gpt_skeleton().kept_channels(GPT_POLICY)
    assert (kept["blocks.2"], kept["blocks.2.attn"], kept["blocks.2.mlp.0"]) == (0, 0, 0)
    skeleton = gpt_skeleton()
    assert skeleton.macs(GPT_POLICY) < skeleton.macs({})
    assert skeleton.params(GPT_POLICY) == sum(s.params for s in measure_layer_shapes(
        pruned, gpt_tokens()))
    # Still causal after pruning: a token's logits ignore the tokens after it.
    changed = gpt_tokens().clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 256
    assert torch.equal(outputs(pruned, gpt_tokens())[:, :20], outputs(pruned, changed)[:, :20])


def test_a_pruned_decoder_exports_full_sequence_logits_with_parity(tmp_path):
    pruned = apply_policy(gpt(), GPT_POLICY, gpt_tokens(), CONFIG)
    report = export_onnx(pruned, gpt_tokens(), tmp_path / "gpt.onnx")
    assert report.relative_diff <= 1e-5 and report.top1_agreement == 1.0  # per position
    assert report.input_shape == (2, 32)
    session = onnx_session(tmp_path / "gpt.onnx")
    assert session.get_inputs()[0].type == "tensor(int64)"
    one = gpt_tokens()[1:]  # the batch axis stays dynamic
    (logits,) = session.run(None, {"input": one.numpy()})
    assert logits.shape == (1, 32, 256)
    np.testing.assert_allclose(logits, outputs(pruned, one).numpy(), atol=1e-4)


def test_a_pruned_decoder_checkpoint_rebuilds_from_token_ids_with_weights_only(tmp_path):
    from compressor.pruning.checkpoints import (
        load_pruned_checkpoint,
        read_pruned_architecture,
        save_pruned_checkpoint,
    )

    pruned = apply_policy(gpt(), GPT_POLICY, gpt_tokens(), CONFIG)
    save_pruned_checkpoint(pruned, tmp_path / "gpt.pt", {}, policy=GPT_POLICY,
                           base_name="gpt_tiny", num_classes=256, example_shape=(1, 32),
                           round_to=CONFIG.round_to, example_dtype=torch.int64)
    assert read_pruned_architecture(tmp_path / "gpt.pt").example_dtype == "int64"
    loaded, _ = load_pruned_checkpoint(tmp_path / "gpt.pt")  # torch.load(weights_only=True)
    assert torch.equal(outputs(pruned, gpt_tokens()), outputs(loaded, gpt_tokens()))
    with pytest.raises(ValueError, match="float16"):
        save_pruned_checkpoint(pruned, tmp_path / "half.pt", {}, policy=GPT_POLICY,
                               base_name="gpt_tiny", num_classes=256, example_shape=(1, 32),
                               round_to=CONFIG.round_to, example_dtype=torch.float16)
