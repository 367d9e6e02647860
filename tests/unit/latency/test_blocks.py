"""Transformer block tables: measured in onnxruntime per (heads, MLP width), exact at their grid
points, read off the skeleton's predicted shapes, and ranking pruned ViTs as they measure."""

from __future__ import annotations

import json

import pytest
import torch

from compressor import latency, pruning
from compressor.io.export import onnx_bytes
from compressor.latency import blocks as lb
from compressor.latency import model as lm
from compressor.latency.probe import ProbeSettings
from tests.vit_layouts import MLP, example, timm_vit, torchvision_vit

SETTINGS = ProbeSettings(batch_size=4, warmup=2, runs=8, blocks=6)
X = example(1)
CONFIG = pruning.PruningConfig(round_to=16)
TV = "encoder.layers.encoder_layer_"  # torchvision's block prefix


@pytest.fixture(scope="module")
def vit():
    return torchvision_vit(layers=2)


@pytest.fixture(scope="module")
def skeleton(vit):
    return pruning.build_skeleton(vit, X, CONFIG)


@pytest.fixture(scope="module")
def built(vit):
    """The latency model of a 2-block ViT: one shared block table of 2 x 2 points (real
    onnxruntime timings, short)."""
    return lm.build_latency_model(vit, X, SETTINGS, round_to=16, grid_points=2, target_ms=2.0,
                                  model_name="tiny-vit")


def test_a_vits_blocks_are_priced_by_one_shared_table_and_their_layers_by_none(built, vit):
    assert built.blocks is not None and len(built.blocks.tables) == 1  # equal blocks share
    table = next(iter(built.blocks.tables.values()))
    assert table.heads == [1, 4] and table.hidden == [16, MLP]
    assert all(ms > 0 for row in table.ms for ms in row)
    inside = {n for n in built.blocks.inside}
    assert f"{TV}0.self_attention.qkv" in inside and f"{TV}1.mlp.3" in inside
    assert not inside & set(built.tables)  # the patch conv and the head keep layer tables
    assert set(built.tables) == {"conv_proj", "heads.head"}
    assert built.rest_ms >= 0 and built.beta == 0 and built.key["blocks"] == lb.FORMAT


def test_the_block_table_is_exact_at_its_measured_points(built, skeleton):
    table = next(iter(built.blocks.tables.values()))
    for i, heads in enumerate(table.heads):
        for j, hidden in enumerate(table.hidden):
            policy = {f"{TV}0.self_attention": 1 - heads / 4, f"{TV}0.mlp.0": 1 - hidden / MLP,
                      f"{TV}1": 0.5}  # the second block removed: absent from the shapes
            got = built.blocks.block_ms(skeleton.layer_shapes(policy))
            assert got == {f"{TV}0": pytest.approx(table.ms[i][j], rel=1e-12)}
    # In between: bilinear, so at the midpoint the mean of the four corners.
    middle = table.bilinear()((table.heads[0] + table.heads[1]) / 2,
                              (table.hidden[0] + table.hidden[1]) / 2)
    assert middle == pytest.approx(sum(map(sum, table.ms)) / 4)


def test_a_heavily_pruned_vit_is_predicted_and_measured_faster_than_a_lightly_pruned_one(
        built, vit, skeleton):
    light = {f"{TV}0.mlp.0": 0.25, f"{TV}1.self_attention": 0.25}
    heavy = {f"{TV}0": 0.5, f"{TV}1.self_attention": 0.75, f"{TV}1.mlp.0": 0.75}
    predicted = {name: built.predict_ratio(skeleton.layer_shapes(policy))
                 for name, policy in (("light", light), ("heavy", heavy))}
    assert built.predict_ratio(skeleton.layer_shapes({})) == pytest.approx(1.0)
    assert predicted["heavy"] < 0.6 < predicted["light"] < 1.0

    def measured(policy: dict[str, float]) -> float:
        pruned = pruning.apply_policy(vit, policy, X, CONFIG)
        dense = pruning.explicit_attention(vit, X)
        return latency.measure_pair(latency.make_session(onnx_bytes(pruned, X), SETTINGS),
                                    latency.make_session(onnx_bytes(dense, X), SETTINGS),
                                    SETTINGS).ratio
    assert measured(heavy) < measured(light)


def test_layer_ratios_add_up_and_block_layers_have_no_edges(built, skeleton):
    shapes = skeleton.layer_shapes({f"{TV}0.self_attention": 0.5, f"{TV}1": 0.5})
    assert sum(built.layer_ratios(shapes)) == pytest.approx(built.predict_ratio(shapes))
    edges = dict(zip([s.name for s in shapes], built.layer_edges(shapes), strict=True))
    assert edges[f"{TV}0.self_attention.qkv"] == (0.0, 0.0)


def test_the_cache_round_trip_keeps_the_block_tables(built, skeleton):
    again = lm.LatencyModel.from_json(json.loads(json.dumps(built.to_json())))
    shapes = skeleton.layer_shapes({f"{TV}0.self_attention": 0.5, f"{TV}1.mlp.0": 0.5})
    assert again.predict_ratio(shapes) == built.predict_ratio(shapes)
    assert again.rest_ms == built.rest_ms and again.blocks.sites == built.blocks.sites


def test_a_block_site_reads_heads_and_width_off_the_shapes_of_a_fused_qkv_vit():
    model = pruning.explicit_attention(timm_vit(heads=(4, 2, 4)), X)
    sites, inputs = lb.block_sites(model, X)
    assert [(s.name, s.heads, s.hidden, s.head_dim) for s in sites] == [
        ("blocks.0", 4, MLP, 16), ("blocks.1", 2, MLP, 32), ("blocks.2", 4, MLP, 16)]
    assert sites[0].signature == sites[2].signature != sites[1].signature
    assert inputs["blocks.0"].shape == (1, 65, 64)
    skeleton = pruning.build_skeleton(model, X, CONFIG)
    by_name = {s.name: s for s in skeleton.layer_shapes({"blocks.0.attn": 0.5,
                                                         "blocks.0.mlp.fc1": 0.5,
                                                         "blocks.1": 0.5})}
    assert sites[0].kept(by_name) == (2, MLP // 2) and sites[1].kept(by_name) is None


def test_a_cnn_gets_no_block_tables_and_its_cache_key_no_blocks_entry():
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 30 * 30, 10)).eval()
    built = lm.build_latency_model(cnn, X, SETTINGS, round_to=16, grid_points=2, target_ms=1.0)
    assert built.blocks is None and built.rest_ms == 0 and "blocks" not in built.key


def test_a_llamas_block_sites_count_key_value_groups_as_the_skeleton_does():
    """Under grouped-query attention the block table's heads axis is the heads unit's count (key
    /value groups), read off the predicted shapes as the skeleton prunes them."""
    transformers = pytest.importorskip("transformers")
    from compressor.zoo.huggingface import causal_lm

    torch.manual_seed(0)
    model = causal_lm(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)).eval())
    tokens = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    sites, _ = lb.block_sites(pruning.explicit_attention(model, tokens), tokens)
    assert [(s.heads, s.head_dim, s.hidden) for s in sites] == [(2, 32, 128)] * 2
    skeleton = pruning.build_skeleton(model, tokens, CONFIG)
    layers = "model.model.layers."
    shapes = skeleton.layer_shapes({f"{layers}0.self_attn": 0.5, f"{layers}0.mlp.gate_proj": 0.5,
                                    f"{layers}1": 0.9})
    by_name = {s.name: s for s in shapes}
    assert [site.kept(by_name) for site in sites] == [(1, 64), None]
