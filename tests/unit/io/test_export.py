"""ONNX export: checker, onnxruntime-vs-PyTorch parity relative to the outputs' scale, on real images."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp

from compressor.errors import ExportError
from compressor.io import export
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


def tiny(scale: float = 1.0) -> torch.nn.Module:
    """A small CNN for the tests where the architecture does not matter (fast to export). `scale`
    multiplies the first conv's and the classifier's weights: 1e4 gives logits of ~1e7."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[0].weight.mul_(scale)
        model[-1].weight.mul_(scale)
    return model


class TraceTimeConstant(torch.nn.Module):
    """A wrong export by construction: the tracer bakes in the Python-side call counter of the
    export call, so onnxruntime's logits are offset from PyTorch's on every later call."""

    def __init__(self):
        super().__init__()
        self.body = tiny()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.body(x) + 10.0 * self.calls


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
    assert report.tolerance == (export.PARITY_RTOL, export.PARITY_ATOL)
    limit = report.tolerance.limit(report.max_abs_output)
    assert report.max_abs_diff <= limit and report.top1_agreement == 1.0
    with torch.no_grad():
        assert report.max_abs_output == pytest.approx(float(model(images).abs().max()))
    assert report.relative_diff == pytest.approx(report.max_abs_diff / report.max_abs_output)
    assert report.input_shape == tuple(images.shape) and report.opset == 17
    onnx.checker.check_model(onnx.load(report.path))
    # The batch axis is dynamic: another batch size runs and matches PyTorch too.
    session = ort.InferenceSession(report.path, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": images[:3].numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(images[:3]).numpy(), atol=limit, rtol=0)


def test_large_logits_pass_the_relative_check_the_old_absolute_one_failed(fmnist_batch, tmp_path):
    images, _ = fmnist_batch
    report = export.export_onnx(tiny(scale=1e4), images, tmp_path / "m.onnx")
    assert report.max_abs_output > 1e6
    assert report.max_abs_diff > 1e-3  # the old absolute limit would have refused this export
    assert report.relative_diff < export.PARITY_RTOL and report.top1_agreement == 1.0
    assert (tmp_path / "m.onnx").exists()


def test_a_wrong_export_raises_export_error_with_the_numbers_and_writes_nothing(fmnist_batch,
                                                                               tmp_path):
    images, _ = fmnist_batch
    with pytest.raises(ExportError) as exc:
        export.export_onnx(TraceTimeConstant(), images, tmp_path / "m.onnx")
    message = one_line(exc)
    assert "does not match PyTorch" in message and "max |ONNX - PyTorch| 1.00e+01" in message
    assert "limit" in message and "top-1 agreement" in message
    assert not (tmp_path / "m.onnx").exists()


def test_another_models_onnx_fails_parity(dense_models, fmnist_batch):
    images, _ = fmnist_batch
    other = export.onnx_bytes(tiny(), images)
    result = export.parity(dense_models["resnet18"], other, images)
    assert result.failure is not None and result.relative_diff > export.PARITY_RTOL


def test_compare_outputs_scales_the_limit_and_forgives_only_close_calls():
    tolerance = export.Tolerance(rtol=1e-3, atol=1e-4)
    reference = np.array([[1000.0, 0.0, -5.0], [3.0, 3.0005, 0.0]], dtype=np.float32)
    # 0.5 off everywhere: 5e-4 relative to max |output| 1000, inside the 1.0001 limit; the second
    # image's top-2 margin (5e-4) is within the limit, so its flipped top-1 is noise.
    shifted = reference + np.array([[0.5, -0.5, 0.5], [0.5, -0.5, 0.0]], dtype=np.float32)
    result = export.compare_outputs(reference, shifted, tolerance)
    assert result.failure is None and result.top1_agreement == 0.5
    assert result.max_abs_output == 1000.0 and result.relative_diff == pytest.approx(5e-4)
    too_far = reference + np.float32(2.0)
    assert "limit 1.00e+00" in export.compare_outputs(reference, too_far, tolerance).failure
    assert export.compare_outputs(reference, reference[:1], tolerance).failure.startswith(
        "output shape")
    nan = reference.copy()
    nan[0, 0] = np.nan
    assert export.compare_outputs(reference, nan, tolerance).failure is not None


def test_a_language_models_logits_agree_per_token_position():
    """[batch, tokens, vocab]: the top-1 is compared at each position, not over the flattened
    sequence (where one position's largest logit would stand for all)."""
    reference = np.zeros((2, 3, 4), dtype=np.float32)
    reference[..., 1] = 10.0
    reference[0, 0, 2] = 20.0  # the flattened sequence's argmax
    candidate = reference.copy()
    candidate[1, 2, 1], candidate[1, 2, 3] = 0.0, 10.0  # one position's top-1 moves far
    result = export.compare_outputs(reference, candidate)
    assert result.top1_agreement == 5 / 6 and result.failure is not None
    assert export.compare_outputs(reference, reference).top1_agreement == 1.0


def test_export_leaves_the_module_as_it_was(fmnist_batch, tmp_path):
    images, _ = fmnist_batch
    model = tiny().train().to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export.export_onnx(model, images, tmp_path / "m.onnx")
    assert model.training
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_onnx_bytes_is_a_loadable_model(dense_models):
    data = export.onnx_bytes(dense_models["resnet18"], torch.zeros(1, 3, 32, 32))
    inputs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_inputs()
    assert inputs[0].name == "input" and inputs[0].shape[1:] == [3, 32, 32]
