"""Export: verified ONNX (checker + parity on real images), pruned checkpoints, policy files."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp

from compressor.errors import UserError
from compressor.io import checkpoints, export, policies
from compressor.zoo.models import build_model, classifier_name

# resnet18: residual streams; mobilenet_v2: depthwise convs + ReLU6; regnet_x_400mf: grouped convs.
MODELS = ("resnet18", "mobilenet_v2", "regnet_x_400mf")


def tp_prune(model: torch.nn.Module, ratio: float, x: torch.Tensor) -> torch.nn.Module:
    """A pruned copy, by torch-pruning's own pruner (independent of compressor.pruning)."""
    work = copy.deepcopy(model).eval()
    with torch.enable_grad():  # the tracer follows autograd
        pruner = tp.pruner.BasePruner(
            work, x[:1], importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio, round_to=8,
            ignored_layers=[work.get_submodule(classifier_name(work))])
        pruner.step()
    return work.eval()


def tiny() -> torch.nn.Module:
    """A small CNN for the tests where the architecture does not matter (fast to save/export)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def dense_models():
    torch.manual_seed(0)
    return {name: build_model(name, num_classes=10).eval() for name in MODELS}


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_export_passes_checker_and_parity_on_real_images(dense_models, fmnist_batch, tmp_path,
                                                         name, ratio):
    images, _ = fmnist_batch
    model = dense_models[name] if ratio == 0 else tp_prune(dense_models[name], ratio, images)
    report = export.export_onnx(model, images, tmp_path / "m.onnx")
    assert report.max_abs_diff <= export.PARITY_LIMIT
    assert report.input_shape == tuple(images.shape) and report.opset == 17
    onnx.checker.check_model(onnx.load(report.path))
    # The batch axis is dynamic: another batch size runs and matches PyTorch too.
    session = ort.InferenceSession(report.path, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": images[:3].numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(images[:3]).numpy(), atol=export.PARITY_LIMIT)


def test_export_leaves_the_module_as_it_was(fmnist_batch, tmp_path):
    images, _ = fmnist_batch
    model = tiny().train().to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export.export_onnx(model, images, tmp_path / "m.onnx")
    assert model.training
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_parity_failure_raises_and_writes_nothing(fmnist_batch, tmp_path, monkeypatch):
    images, _ = fmnist_batch
    monkeypatch.setattr(export, "parity", lambda *args: 0.5)
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export.export_onnx(tiny(), images, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_bytes_is_a_loadable_model(dense_models):
    data = export.onnx_bytes(dense_models["resnet18"], torch.zeros(1, 3, 32, 32))
    inputs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_inputs()
    assert inputs[0].name == "input" and inputs[0].shape[1:] == [3, 32, 32]


# --- pruned checkpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_checkpoint_round_trip_gives_identical_outputs(dense_models, fmnist_batch, tmp_path, name):
    images, _ = fmnist_batch
    pruned = tp_prune(dense_models[name], 0.5, images)
    meta = {"model": name, "policy": {"layer1": 0.5}, "ratio": np.float32(0.25)}
    checkpoints.save_pruned_checkpoint(pruned, tmp_path / "model.pt", meta)
    loaded, loaded_meta = checkpoints.load_pruned_checkpoint(tmp_path / "model.pt")
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(pruned(images), loaded(images))
    assert loaded_meta["model"] == name and loaded_meta["policy"] == {"layer1": 0.5}
    assert loaded_meta["ratio"] == "0.25"  # non-JSON values are kept as text


def test_truncated_checkpoint_is_a_one_line_user_error(tmp_path):
    path = tmp_path / "model.pt"
    checkpoints.save_pruned_checkpoint(tiny(), path, {})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError) as exc:
        checkpoints.load_pruned_checkpoint(path)
    assert str(path) in one_line(exc) and "truncated or corrupt" in str(exc.value)


@pytest.mark.parametrize("content", ["text", "state_dict", "module", "zip_without_envelope"])
def test_foreign_files_are_refused_before_unpickling(tmp_path, content):
    path = tmp_path / "model.pt"
    model = tiny()
    if content == "text":
        path.write_text("not a checkpoint\n")
    elif content == "state_dict":
        torch.save(model.state_dict(), path)
    elif content == "module":  # a whole pickled module: loading it would run foreign code paths
        torch.save(model, path)
    else:
        torch.save({"format": "something-else", "module": b""}, path)
    with pytest.raises(UserError) as exc:
        checkpoints.load_pruned_checkpoint(path)
    assert str(path) in one_line(exc)
    assert "compressor apply" in str(exc.value)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoints.load_pruned_checkpoint(tmp_path / "nope.pt")


# --- policy files --------------------------------------------------------------------------------

UNITS = [f"features.{i}.conv.0.0" for i in range(20)]


def write(tmp_path, **overrides) -> str:
    fields = dict(model="mobilenet_v2", dataset="fashion-mnist", input_size=32,
                  policy={UNITS[0]: 0.5, UNITS[3]: 0.25}, units=UNITS,
                  budget={"latency": 0.5}, metrics={"top1": 90.0}, extra={"seed": 0})
    fields.update(overrides)
    return str(policies.write_policy(tmp_path / "policy.json", **fields))


def test_policy_round_trip_fills_every_unit_and_records_versions(tmp_path):
    path = write(tmp_path)
    policy = policies.read_policy(path, model="mobilenet_v2", valid_units=UNITS)
    assert policy == {name: {UNITS[0]: 0.5, UNITS[3]: 0.25}.get(name, 0.0) for name in UNITS}
    blob = json.loads(open(path).read())
    assert blob["seed"] == 0 and "onnxruntime" in blob["provenance"]["versions"]
    assert blob["budget"] == {"latency": 0.5}


def test_write_policy_refuses_units_it_does_not_list(tmp_path):
    with pytest.raises(ValueError, match="not in `units`"):
        write(tmp_path, policy={"nope": 0.5})


def test_hand_written_policy_needs_only_the_mapping(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"policy": {UNITS[1]: 0.3}}))
    assert policies.read_policy(path, model="mobilenet_v2", valid_units=UNITS) == {UNITS[1]: 0.3}


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"model": "mobilenet_v2"}', "no 'policy' mapping"),
    ('[1, 2]', "no 'policy' mapping"),
    ('{"policy": [0.5]}', "no 'policy' mapping"),
    ('{"format": "other-v9", "policy": {}}', "has format 'other-v9'"),
    ('{"model": "resnet18", "policy": {}}', "made for resnet18, not mobilenet_v2"),
    ('{"policy": {"features.1.conv.0.O": 0.5}}', "did you mean 'features.1.conv.0.0'"),
    ('{"policy": {"features.1.conv.0.0": 1.0}}', "outside [0, 1)"),
    ('{"policy": {"features.1.conv.0.0": -0.1}}', "outside [0, 1)"),
    ('{"policy": {"features.1.conv.0.0": "0.5"}}', "outside [0, 1)"),
    ('{"policy": {"features.1.conv.0.0": true}}', "outside [0, 1)"),
])
def test_bad_policy_files_are_one_line_user_errors(tmp_path, text, message):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        policies.read_policy(path, model="mobilenet_v2", valid_units=UNITS)
    assert message in one_line(exc) and str(path) in str(exc.value)


def test_unknown_unit_lists_valid_units_shortened(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"policy": {"classifier": 0.5}}')
    with pytest.raises(UserError) as exc:
        policies.read_policy(path, model="mobilenet_v2", valid_units=UNITS)
    assert UNITS[0] in one_line(exc) and "(20 in all)" in str(exc.value)
    assert UNITS[-1] not in str(exc.value)


def test_missing_policy_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        policies.read_policy(tmp_path / "none.json", model=None, valid_units=UNITS)


def test_checkpoint_envelope_is_weights_only_loadable(tmp_path):
    """The format marker is readable without unpickling any code (what makes refusal safe)."""
    checkpoints.save_pruned_checkpoint(tiny(), tmp_path / "m.pt", {"a": 1})
    envelope = torch.load(tmp_path / "m.pt", weights_only=True)
    assert envelope["format"] == checkpoints.PRUNED_FORMAT
    assert isinstance(torch.load(io.BytesIO(envelope["module"]), weights_only=False),
                      torch.nn.Module)
