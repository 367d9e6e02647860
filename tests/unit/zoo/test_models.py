import pytest
import torch

from compressor.errors import UserError
from compressor.zoo import models

ARCHITECTURES = ["resnet18", "mobilenet_v2", "vgg11_bn", "squeezenet1_0", "regnet_x_400mf",
                 "vit_tiny"]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_registry_builds_and_runs_a_forward_pass(name):
    model = models.build_model(name, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert models.classifier_name(model)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UserError, match="resnet18"):
        models.build_model("resnet-18", 10)


def test_a_language_model_is_refused_by_the_image_commands_in_one_line():
    with pytest.raises(UserError, match="causal language model: `compressor pretrain`, `compress`"):
        models.check_model_name("gpt_tiny")
    models.check_model_name("gpt_tiny", task="text")
    assert models.task_of("gpt_tiny") == "text" and models.task_of("resnet18") == "image"


def test_unknown_weights_name_lists_valid_ones():
    with pytest.raises(UserError, match="IMAGENET1K_V1"):
        models.build_model("resnet18", 10, weights="NOT_A_WEIGHT")


def test_checkpoint_round_trip_keeps_outputs_identical(tmp_path):
    model = models.build_model("resnet18", 10).eval()
    path = models.save_baseline(tmp_path / "r.pt", model, "resnet18", 10, {"input_size": 32})
    loaded, meta = models.load_baseline(path, "resnet18", 10, expect={"input_size": 32})
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    assert meta["input_size"] == 32
    # weights= also takes a checkpoint path
    again = models.build_model("resnet18", 10, weights=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    model = models.build_model("resnet18", 10)
    path = models.save_baseline(tmp_path / "r.pt", model, "resnet18", 10, {"input_size": 32})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases = {
        truncated: ("resnet18", 10, None, "truncated or corrupt"),
        garbage: ("resnet18", 10, None, "truncated or corrupt"),
        path: ("mobilenet_v2", 10, None, "is a resnet18"),
        tmp_path / "missing.pt": ("resnet18", 10, None, "does not exist"),
    }
    for file, (name, classes, expect, message) in cases.items():
        with pytest.raises(UserError, match=message) as info:
            models.load_baseline(file, name, classes, expect)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="classes"):
        models.load_baseline(path, "resnet18", 100)
    with pytest.raises(UserError, match="input_size=32"):
        models.load_baseline(path, "resnet18", 10, expect={"input_size": 64})
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": model.state_dict()}, plain)
    with pytest.raises(UserError, match="not a compressor baseline"):
        models.load_baseline(plain, "resnet18", 10)


def test_models_with_auxiliary_heads_are_built_without_them():
    model = models.build_model("googlenet", 10).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    assert model.aux1 is None and model.aux2 is None


@pytest.fixture(scope="module")
def vit():
    """vit_b_16, untrained (~86M parameters: built once for the module)."""
    return models.build_model("vit_b_16", 10)


def test_a_fixed_size_model_is_refused_with_the_size_it_takes(vit):
    vit.train()
    with pytest.raises(UserError) as info:
        models.check_input_size(vit, torch.zeros(1, 3, 32, 32), "vit_b_16")
    assert str(info.value) == "vit_b_16 takes 224x224 inputs only; pass --input-size 224"
    assert vit.training  # the caller's mode is restored


def test_an_input_the_model_cannot_take_is_refused_with_the_reason():
    needs_room = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 7), torch.nn.Flatten())
    models.check_input_size(needs_room, torch.zeros(1, 3, 8, 8), "mine")  # fits: no error
    with pytest.raises(UserError) as info:
        models.check_input_size(needs_room, torch.zeros(1, 3, 4, 4), "mine")
    message = str(info.value)
    assert "\n" not in message and message.startswith("mine refused a 4x4 input (RuntimeError:")
    assert "--input-size" in message


def test_full_modules_load_only_when_trusted(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    path = tmp_path / "mine.pt"
    torch.save(model, path)
    with pytest.raises(UserError) as info:
        models.load_full_module(path, trusted=False)
    assert "--trust-checkpoint" in str(info.value) and "trusted=True" in str(info.value)
    loaded = models.load_full_module(path, trusted=True)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(UserError, match="holds a state dict.*--model"):
        models.load_full_module(tmp_path / "weights.pt", trusted=True)
    with pytest.raises(UserError, match="does not exist"):
        models.load_full_module(tmp_path / "none.pt", trusted=True)
