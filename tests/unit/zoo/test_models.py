import pytest
import torch

from compressor.errors import UserError
from compressor.zoo import models

ARCHITECTURES = ["resnet18", "mobilenet_v2", "vgg11_bn", "squeezenet1_0", "regnet_x_400mf"]


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
