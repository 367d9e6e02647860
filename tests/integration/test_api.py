"""The Python API on a user's own module and data: every method, odd input shapes, bad input."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compressor
from compressor.errors import UserError
from compressor.pipeline.compress import CompressConfig, FinalConfig
from compressor.search.evaluator import EvaluatorConfig


class TinyNet(nn.Module):
    """A user's network: 1-channel, non-square input, 7 classes."""

    def __init__(self, channels: int = 1, classes: int = 7):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def _data(n, shape=(1, 12, 20), classes=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    # Labels leave a trace in the images, so accuracy means something.
    images = torch.randn(n, *shape, generator=gen) + labels.view(-1, 1, 1, 1) * 0.3
    return images, labels


# Small everything: the point is that every path runs for real, not the accuracy.
SMALL = CompressConfig(
    evaluator=EvaluatorConfig(search_images=64, bn_batches=2, batch_size=16),
    final=FinalConfig(candidates=1, candidate_steps=2, latency_blocks=2, recheck_rounds=0))


@pytest.fixture(scope="module")
def loaders():
    train = DataLoader(TensorDataset(*_data(96)), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(*_data(64, seed=1)), batch_size=32)
    return train, val


@pytest.mark.parametrize("method", ["ddpg", "random", "greedy", "uniform", "global"])
def test_every_method_compresses_a_custom_module_within_budget(loaders, method):
    train, val = loaders
    model = TinyNet()
    before = [p.clone() for p in model.parameters()]
    result = compressor.compress(model, train=train, val=val, flops_budget=0.6, method=method,
                                 episodes=3, final_epochs=0, config=SMALL)
    assert result.verdict == "within budget" and result.checks["flops"].value <= 0.6
    assert isinstance(result.model, nn.Module) and result.paths == {}
    assert result.model(torch.zeros(2, 1, 12, 20)).shape == (2, 7)
    assert 0 < result.latency_ratio < 1.5 and result.evaluations >= 1
    assert set(result.policy) == {u.name for u in compressor.units(model, torch.zeros(1, 1, 12, 20))}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_out_writes_every_file_and_user_callables_score_and_finetune(loaders, tmp_path):
    train, val = loaders
    calls = {"evaluate": 0, "finetune": 0}

    def evaluate(model):
        calls["evaluate"] += 1
        with torch.no_grad():
            x, y = next(iter(val))
            return float((model(x).argmax(1) == y).float().mean() * 100)

    def finetune(model, steps):
        calls["finetune"] += steps

    result = compressor.compress(TinyNet(), train=train, val=val, latency_budget=0.9,
                                 method="uniform", evaluate=evaluate, finetune=finetune,
                                 final_epochs=1, out=tmp_path, config=SMALL)
    assert calls["evaluate"] >= 2 and calls["finetune"] > 0
    for key in ("onnx", "dense_onnx", "checkpoint", "policy", "report"):
        assert result.paths[key].exists(), key
    check = compressor.check_budget(result.paths["onnx"], result.paths["dense_onnx"],
                                    max_latency_ratio=0.99, rounds=1,
                                    settings=compressor.latency.ProbeSettings(batch_size=8))
    assert check["verdict"] in ("pass", "fail")


def test_tensor_data_and_three_channel_square_inputs():
    images, labels = _data(120, shape=(3, 16, 16), classes=4)
    result = compressor.compress(TinyNet(channels=3, classes=4), train=(images, labels),
                                 params_budget=0.7, method="uniform", final_epochs=0,
                                 config=SMALL)
    assert result.checks["params"].ok


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "resnet18"}, "must be a torch.nn.Module"),
    ({"method": "annealing"}, "annealing"),
    ({"evaluate": lambda m: "good"}, "must return a number"),
    ({"train": [torch.zeros(4, 1, 12, 20)]}, "not \\(images, labels\\)"),
    ({"example_input": torch.zeros(1, 3, 5, 5)}, "refused an input of shape"),
])
def test_bad_input_is_a_user_error(loaders, kwargs, match):
    train, val = loaders
    args = {"model": TinyNet(), "train": train, "val": val, "flops_budget": 0.6,
            "method": "uniform", "final_epochs": 0, "config": SMALL, **kwargs}
    with pytest.raises(UserError, match=match):
        compressor.compress(args.pop("model"), **args)


class AddedIntoPart(nn.Module):
    """A user's network with a residual added into part of a layer's channels: that coupled
    group cannot be pruned as predicted (it is kept dense), the rest can."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(48), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, bias=False), nn.BatchNorm2d(48),
                                 nn.ReLU())
        self.head = nn.Linear(48, classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.expand(x)
        y = torch.cat([y[:, :32] + x, y[:, 32:]], 1)
        return self.head(self.mid(y).mean((2, 3)))


def test_a_group_that_cannot_be_pruned_is_kept_dense_and_named_in_every_output(loaders, tmp_path):
    train, val = loaders
    result = compressor.compress(AddedIntoPart(), train=train, val=val, flops_budget=0.8,
                                 method="uniform", episodes=2, final_epochs=0, out=tmp_path,
                                 config=SMALL)
    assert result.verdict == "within budget"
    kept = result.report["kept_dense"]
    assert list(kept) == ["expand.0"] and "torch-pruning maps" in kept["expand.0"]
    assert "expand.0" not in result.policy and "mid.0" in result.policy
    policy_file = json.loads(result.paths["policy"].read_text())
    assert policy_file["kept_dense"] == kept
    assert "Kept dense (not searched): expand.0" in (tmp_path / "report.md").read_text()


class NamedOutput(TinyNet):
    """A user's network returning an output object that names its logits, as Hugging Face
    models return a `ModelOutput` with `.logits`."""

    def forward(self, x):
        return {"logits": super().forward(x), "features": x.mean()}


def test_a_model_returning_named_logits_compresses_on_them(loaders):
    train, val = loaders
    model = NamedOutput()
    result = compressor.compress(model, train=train, val=val, flops_budget=0.6, method="uniform",
                                 episodes=2, final_epochs=0, config=SMALL)
    assert result.verdict == "within budget"
    assert type(result.model) is NamedOutput  # handed back as the user wrote it, pruned
    assert result.model(torch.zeros(2, 1, 12, 20))["logits"].shape == (2, 7)
    names = {u.name for u in compressor.units(model, torch.zeros(1, 1, 12, 20))}
    assert set(result.policy) == names and all(n.startswith("model.") for n in names)
    again = compressor.apply_policy(model, result.policy, torch.zeros(1, 1, 12, 20))
    assert type(again) is NamedOutput


def test_a_model_whose_output_names_no_logits_is_refused_in_one_line(loaders):
    class Unnamed(TinyNet):
        def forward(self, x):
            return {"scores": super().forward(x)}

    with pytest.raises(UserError, match=r"returns dict, not \[batch, classes\] logits"):
        compressor.compress(Unnamed(), train=loaders[0], val=loaders[1], flops_budget=0.6,
                            episodes=1, config=SMALL)


def test_a_vision_transformer_compresses_by_heads_mlp_width_and_blocks():
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2,
                                               num_heads=4, hidden_dim=64, mlp_dim=128,
                                               num_classes=10)
    images, labels = _data(160, shape=(3, 32, 32), classes=10)
    result = compressor.compress(vit, train=(images, labels), latency_budget=0.6, method="ddpg",
                                 episodes=4, final_epochs=0, config=SMALL)
    assert result.verdict == "within budget" and result.latency_ratio <= 0.6
    kinds = {u.name: u.kind for u in compressor.units(vit, torch.zeros(1, 3, 32, 32))}
    assert set(result.policy) == set(kinds)
    assert sorted(set(kinds.values())) == ["block", "heads", "mlp"]
    assert result.model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


class UserBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 64), nn.GELU(), nn.Linear(64, width))

    def forward(self, x):
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        x = x + self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(x)


class UserLM(nn.Module):
    """A user's causal LM: token ids [batch, tokens] -> logits [batch, tokens, 256], attention
    through nn.MultiheadAttention under a causal mask, no `context` attribute."""

    def __init__(self, width: int = 32, tokens: int = 32):
        super().__init__()
        self.embed, self.position = nn.Embedding(256, width), nn.Embedding(tokens, width)
        self.blocks = nn.Sequential(UserBlock(width), UserBlock(width))
        self.out = nn.Linear(width, 256)

    def forward(self, ids):
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1]))
        return self.out(self.blocks(x))


def test_a_users_causal_lm_compresses_on_a_text_corpus_by_perplexity(stdlib_text):
    torch.manual_seed(0)
    model = UserLM()
    config = CompressConfig(
        evaluator=EvaluatorConfig(bn_batches=1, finetune_steps=2),
        final=FinalConfig(candidates=1, candidate_steps=2, latency_blocks=2, recheck_rounds=0))
    result = compressor.compress(model, train=stdlib_text, example_input=torch.zeros(
        1, 32, dtype=torch.long), flops_budget=0.7, episodes=3, final_epochs=0, config=config)
    assert result.verdict == "within budget" and result.checks["flops"].value <= 0.7
    assert result.perplexity > 1 and result.baseline_perplexity > 1
    assert result.report["config"]["reward"] == "cross-entropy"
    assert result.report["language_model"]["context"] == 32
    ids = torch.zeros(2, 32, dtype=torch.long)
    assert result.model(ids).shape == (2, 32, 256)


def test_a_causal_lm_without_a_window_length_or_with_image_data_args_is_refused(stdlib_text):
    with pytest.raises(UserError, match="example_input= token ids"):
        compressor.compress(UserLM(), train=stdlib_text, flops_budget=0.5)
    with pytest.raises(UserError, match="drop val="):
        compressor.compress(UserLM(), train=stdlib_text, val=stdlib_text, flops_budget=0.5)
