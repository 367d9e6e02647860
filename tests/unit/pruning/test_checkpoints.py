"""Pruned checkpoints: tensors + a JSON rebuild recipe, loaded with weights_only=True only."""

from __future__ import annotations

import io
import pathlib
import pickle

import numpy as np
import pytest
import torch

from compressor.errors import UserError
from compressor.pruning import PruningConfig, apply_policy, build_skeleton, checkpoints
from compressor.zoo.models import build_model

EXAMPLE = (1, 3, 32, 32)
ROUND_TO = 8


class PlantedCode:
    """What a crafted file carries: unpickling it calls `Path.touch(marker)`."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def tiny() -> torch.nn.Module:
    """A user's own small CNN (not a torchvision model)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()


def prune_half(base: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, float]]:
    """`base` with every unit at ratio 0.5, its weights then changed (as fine-tuning would), so a
    reload that re-pruned the base without loading the saved tensors would give other outputs."""
    x = torch.zeros(EXAMPLE)
    config = PruningConfig(round_to=ROUND_TO)
    skeleton = build_skeleton(base, x, config, verify=False)
    policy = skeleton.policy_from_vector([0.5] * len(skeleton.names))
    pruned = apply_policy(base, policy, x, config).eval()
    with torch.no_grad():
        for parameter in pruned.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return pruned, policy


def save(model, path, policy, base_name="resnet18", metadata=None):
    return checkpoints.save_pruned_checkpoint(
        model, path, metadata or {}, policy=policy, base_name=base_name, num_classes=10,
        example_shape=EXAMPLE, round_to=ROUND_TO)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mnasnet0_5"])
def test_round_trip_rebuilds_from_the_torchvision_name_with_identical_outputs(fmnist_batch,
                                                                              tmp_path, name):
    images, _ = fmnist_batch
    torch.manual_seed(1)
    pruned, policy = prune_half(build_model(name, 10).eval())
    meta = {"model": name, "top1": 91.5, "ratio": np.float32(0.25)}
    save(pruned, tmp_path / "model.pt", policy, base_name=name, metadata=meta)
    loaded, loaded_meta = checkpoints.load_pruned_checkpoint(tmp_path / "model.pt")
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(pruned(images), loaded(images))
    assert loaded_meta["model"] == name and loaded_meta["top1"] == 91.5
    assert loaded_meta["ratio"] == "0.25"  # non-JSON values are kept as text
    recipe = checkpoints.read_pruned_architecture(tmp_path / "model.pt")
    assert recipe.policy == policy and recipe.base_name == name and recipe.round_to == ROUND_TO


def test_a_user_model_needs_its_base_model(fmnist_batch, tmp_path):
    images, _ = fmnist_batch
    base = tiny()
    pruned, policy = prune_half(base)
    path = save(pruned, tmp_path / "model.pt", policy, base_name=None)
    with pytest.raises(UserError) as exc:
        checkpoints.load_pruned_checkpoint(path)
    assert "base_model=" in one_line(exc) and "user model" in str(exc.value)
    loaded, _ = checkpoints.load_pruned_checkpoint(path, base_model=base)
    with torch.no_grad():
        assert torch.equal(pruned(images), loaded(images))


def test_the_wrong_base_model_is_a_user_error(tmp_path):
    pruned, policy = prune_half(tiny())
    path = save(pruned, tmp_path / "model.pt", policy, base_name=None)
    with pytest.raises(UserError) as exc:
        checkpoints.load_pruned_checkpoint(path, base_model=build_model("resnet18", 10))
    assert "does not fit the base model" in one_line(exc)


def test_the_file_holds_only_tensors_and_text(tmp_path):
    """What makes refusal safe: everything in the file is readable without running code."""
    pruned, policy = prune_half(tiny())
    blob = torch.load(save(pruned, tmp_path / "m.pt", policy, None), weights_only=True)
    assert blob["format"] == checkpoints.PRUNED_FORMAT
    assert all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values())
    assert isinstance(blob["architecture"], str) and isinstance(blob["metadata"], str)


def test_a_planted_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    # The payload really runs when unpickled unsafely (so the refusal below means something).
    pickle.loads(pickle.dumps(PlantedCode(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    planted = {
        "ours_with_code": {"format": checkpoints.PRUNED_FORMAT, "architecture": "{}",
                           "metadata": "{}", "state_dict": PlantedCode(marker)},
        "old_envelope": {"format": "compressor-pruned-v2", "metadata": "{}",
                         "module": pickle.dumps(PlantedCode(marker))},
        "raw_pickle": PlantedCode(marker),
    }
    for name, content in planted.items():
        path = tmp_path / f"{name}.pt"
        if name == "raw_pickle":
            path.write_bytes(pickle.dumps(content))
        else:
            torch.save(content, path)
        with pytest.raises(UserError) as exc:
            checkpoints.load_pruned_checkpoint(path)
        assert str(path) in one_line(exc)
        assert not marker.exists(), name


def test_truncated_checkpoint_is_a_one_line_user_error(tmp_path):
    pruned, policy = prune_half(tiny())
    path = save(pruned, tmp_path / "model.pt", policy, None)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError) as exc:
        checkpoints.load_pruned_checkpoint(path, base_model=tiny())
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
        buffer = io.BytesIO()
        torch.save({"format": "something-else", "module": b""}, buffer)
        path.write_bytes(buffer.getvalue())
    with pytest.raises(UserError) as exc:
        checkpoints.load_pruned_checkpoint(path)
    assert str(path) in one_line(exc)
    assert "compressor apply" in str(exc.value)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoints.load_pruned_checkpoint(tmp_path / "nope.pt")
