"""The peers harness: Torch-Pruning's own pruners from a cached baseline, measured by our probe."""

import json

import pytest
import torch

from benchmarks import peers
from compressor import latency, pruning
from compressor.io.export import export_onnx
from compressor.zoo import models
from compressor.zoo.baselines import expected_metadata
from compressor.zoo.datasets import DataConfig, load_dataset

MODEL = "resnet18"
# A tiny probe: these tests check the pipeline, not the number (the benchmark uses 12 blocks of
# 20 runs, 3 rounds, a batch taking >= 10 ms).
QUICK = peers.PeersConfig(train_size=64, test_size=100, rounds=1,
                          probe=latency.ProbeSettings(batch_size=2, blocks=2, runs=3, warmup=1))
QUICK_ARGS = ["--train-size", "64", "--test-size", "100", "--rounds", "1",
              "--latency-batch-size", "2", "--latency-blocks", "2", "--latency-runs", "3"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A cached resnet18 baseline (untrained weights: seconds, not a pretrain) where compressor
    looks for it, with the metadata compressor checks before reusing one."""
    root = tmp_path_factory.mktemp("models")
    data = DataConfig(train_size=64, test_size=100)
    dataset = load_dataset(data)
    torch.manual_seed(0)
    model = models.build_model(MODEL, dataset.num_classes)
    models.save_baseline(models.baseline_path(root, MODEL, dataset.name), model, MODEL,
                         dataset.num_classes,
                         {**expected_metadata(data, dataset), "model": MODEL, "test_top1": 10.0})
    return root


@pytest.fixture(scope="module")
def rows(models_dir, tmp_path_factory):
    """One uniform and one global row at pruning ratio 0.5, through `run_point`."""
    out = tmp_path_factory.mktemp("peers")
    config = peers.PeersConfig(**{**QUICK.__dict__, "models_dir": str(models_dir)})
    ctx = peers.load_model(MODEL, config, out)
    return {tool: peers.run_point(tool, ctx, 0.5, 0, config, out) for tool in peers.TOOLS}


def test_the_uniform_row_is_a_smaller_exported_model_measured_against_the_dense(rows):
    row = rows["torch-pruning-uniform"]
    assert "error" not in row, row.get("error")
    assert list(row)[:5] == ["tool", "model", "constraint", "seed", "latency_ratio"]
    assert (row["tool"], row["model"], row["constraint"], row["seed"]) == (
        "torch-pruning-uniform", MODEL, 0.5, 0)
    assert 0 < row["macs_ratio"] < 0.5 and 0 < row["params_ratio"] < 0.5  # 0.5 of in and out
    assert row["parity"]["relative_diff"] < 1e-3
    assert 0 < row["latency_ratio"] < 1.5 and len(row["latency"]["block_ratios"]) == 2
    assert 0 <= row["test_top1"] <= 100 and row["search_seconds"] > 0 and row["machine"]
    assert row["widths"]["conv1"] == 32 and row["widths"]["fc"] == 10  # the classifier is kept


def test_global_ranking_prunes_the_layers_unevenly_unlike_uniform(rows):
    uniform, global_ = rows["torch-pruning-uniform"], rows["torch-pruning-global"]
    assert "error" not in global_, global_.get("error")
    assert uniform["widths"].keys() == global_["widths"].keys()
    assert uniform["widths"] != global_["widths"]
    # Uniform keeps the same share of every conv; global does not.
    dense = models.build_model(MODEL, 10)
    share = {tool: {n / dense.get_submodule(name).out_channels
                    for name, n in r["widths"].items() if name.endswith(("conv1", "conv2"))}
             for tool, r in rows.items()}
    assert share["torch-pruning-uniform"] == {0.5}
    assert len(share["torch-pruning-global"]) > 1


def test_the_curve_is_read_between_its_bracketing_points_and_none_outside():
    pts = [(0.6, 92.0), (0.2, 80.0), (0.4, 90.0)]  # any order
    assert peers.read_curve(pts, 0.3) == pytest.approx(85.0)
    assert peers.read_curve(pts, 0.5) == pytest.approx(91.0)
    assert peers.read_curve(pts, 0.4) == pytest.approx(90.0)
    assert peers.read_curve(pts, 0.1) is None and peers.read_curve(pts, 0.7) is None
    assert peers.read_curve([(0.3, 88.0)], 0.3) == 88.0 and peers.read_curve([], 0.3) is None
    rows = [{"tool": "t", "model": "m", "constraint": c, "seed": s, "latency_ratio": lat,
             "test_top1": top1}
            for c, s, lat, top1 in ((0.2, 0, 0.7, 91.0), (0.2, 1, 0.5, 89.0),
                                    (0.5, 0, 0.2, 80.0), (0.5, 1, 0.2, 82.0))]
    rows.append({"tool": "t", "model": "m", "constraint": 0.8, "seed": 0, "error": "x"})
    assert peers.curve(rows, "t", "m") == [(0.2, 81.0), (0.6, 90.0)]  # means over seeds
    assert peers.read_curve(peers.curve(rows, "t", "m"), 0.4) == pytest.approx(85.5)


def test_a_rerun_skips_the_rows_already_there(models_dir, tmp_path):
    argv = ["--models", MODEL, "--tools", "torch-pruning-uniform", "--ratios", "0.3",
            "--models-dir", str(models_dir), "--out", str(tmp_path), *QUICK_ARGS]
    assert peers.main(argv) == 0
    summary = tmp_path / "summary.json"
    first = json.loads(summary.read_text())
    assert [(r["tool"], r["constraint"]) for r in first] == [("torch-pruning-uniform", 0.3)]
    assert "error" not in first[0] and "top-1 at 0.3" in (tmp_path / "peers.generated.md"
                                                           ).read_text()
    before = summary.read_text()
    assert peers.main(argv) == 0  # every row there: nothing loaded, nothing run
    assert summary.read_text() == before
    assert peers.main([*argv, "--ratios", "0.3", "0.6"]) == 0  # only the new point runs
    again = json.loads(summary.read_text())
    assert again[0] == first[0] and [r["constraint"] for r in again] == [0.3, 0.6]


def test_torch_pruning_prunes_a_torchvision_vit_by_width_and_it_exports_with_parity(tmp_path):
    from compressor.zoo.embedded import vit_tiny

    torch.manual_seed(0)
    dense = vit_tiny(10).eval()
    x = torch.randn(4, 3, 32, 32)
    pruned = peers.torch_pruning_prune(dense, x[:1], 0.25, False, 16)
    w = peers.widths(pruned.model)
    assert dense.hidden_dim == 96 and w["conv_proj.conv_last"] == 64  # 72, rounded to 16
    assert pruned.model.hidden_dim == 64 and pruned.model.class_token.shape[-1] == 64
    attention = pruned.model.encoder.layers[0].self_attention
    assert (attention.embed_dim, attention.num_heads) == (64, 4)  # head dims pruned, not heads
    assert w["encoder.layers.encoder_layer_0.mlp.0"] == 144 and w["heads.head"] == 10
    explicit = pruning.explicit_attention(pruned.model, x[:1])  # the form it is exported in
    assert export_onnx(explicit, x, tmp_path / "vit.onnx").relative_diff < 1e-3
