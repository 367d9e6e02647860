"""The latency probe: real onnxruntime sessions, paired measurements, one-line errors."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch_pruning as tp
from onnx import TensorProto, helper

from compressor.errors import UserError
from compressor.io.export import onnx_bytes
from compressor.latency import probe as latency
from compressor.latency.probe import ProbeSettings
from compressor.zoo.models import build_model, classifier_name

# Small runs: these tests check the mechanics, not the machine (that is the benchmark's job).
QUICK = ProbeSettings(batch_size=2, warmup=2, runs=5, blocks=4)


def tp_prune(model: torch.nn.Module, ratio: float, x: torch.Tensor) -> torch.nn.Module:
    work = copy.deepcopy(model).eval()
    with torch.enable_grad():
        tp.pruner.BasePruner(
            work, x[:1], importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio, round_to=8,
            ignored_layers=[work.get_submodule(classifier_name(work))]).step()
    return work.eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet18", 10).eval()


@pytest.fixture(scope="module")
def dense_bytes(resnet):
    return onnx_bytes(resnet, torch.zeros(1, 3, 32, 32))


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize("overrides, message", [
    ({"graph_optimization": "max"}, "graph optimisation"),
    ({"statistic": "mean"}, "statistic"),
    ({"threads": 0}, "threads"),
    ({"runs": 0}, "runs"),
    ({"batch_size": 0}, "batch size"),
])
def test_bad_settings_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        ProbeSettings(**overrides)


def test_settings_are_frozen_and_serialisable():
    settings = ProbeSettings()
    with pytest.raises(AttributeError):
        settings.threads = 2  # type: ignore[misc]
    assert settings.as_dict()["graph_optimization"] == "all"


def test_measure_ms_reports_runs_blocks_and_settings(dense_bytes):
    session = latency.make_session(dense_bytes, QUICK)
    result = latency.measure_ms(session, QUICK)
    assert len(result.runs_ms) == QUICK.runs * QUICK.blocks and len(result.blocks_ms) == 4
    assert 0 < result.min_ms <= result.ms and result.iqr_ms[0] <= result.iqr_ms[1]
    assert result.settings["batch_size"] == 2 and result.settings["threads"] == 1


def test_a_model_against_itself_gives_a_ratio_near_one(dense_bytes):
    paired = latency.measure_pair(latency.make_session(dense_bytes, QUICK),
                                  latency.make_session(dense_bytes, QUICK), QUICK)
    assert 0.75 < paired.ratio < 1.33
    assert len(paired.block_ratios) == QUICK.blocks
    lo, hi = paired.spread
    assert lo <= paired.iqr[0] <= paired.ratio <= paired.iqr[1] <= hi
    assert paired.as_dict()["settings"]["batch_size"] == 2


def test_a_heavily_pruned_model_is_measured_faster(resnet, dense_bytes):
    x = torch.randn(1, 3, 32, 32)
    pruned = latency.make_session(onnx_bytes(tp_prune(resnet, 0.6, x), x), QUICK)
    paired = latency.measure_pair(pruned, latency.make_session(dense_bytes, QUICK), QUICK)
    assert paired.ratio < 0.7 and paired.candidate_ms < paired.reference_ms


def test_two_threads_run_without_spinning(dense_bytes):
    settings = ProbeSettings(threads=2, batch_size=1, warmup=1, runs=2, blocks=1)
    session = latency.make_session(dense_bytes, settings)
    assert latency.measure_ms(session, settings).ms > 0
    options = latency.session_options(settings)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auto_batch_size_is_a_power_of_two_above_the_floor(dense_bytes):
    session = latency.make_session(dense_bytes, ProbeSettings())
    assert latency.auto_batch_size(session, 32, min_ms=0.0) == 1
    batch = latency.auto_batch_size(session, 32, min_ms=3.0, largest=64)
    assert batch & (batch - 1) == 0 and session.batch_size == batch
    if batch < 64:
        assert min(session.run_once() for _ in range(3)) >= 3.0 * 0.5  # noisy machine: loose


def test_a_file_that_is_not_onnx_is_a_one_line_user_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("definitely not protobuf")
    with pytest.raises(UserError) as exc:
        latency.make_session(path, QUICK)
    assert str(path) in one_line(exc) and "not a loadable ONNX model" in str(exc.value)
    with pytest.raises(UserError, match="does not exist"):
        latency.make_session(tmp_path / "missing.onnx", QUICK)


def test_a_model_without_an_image_input_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "flat.onnx")
    with pytest.raises(UserError) as exc:
        latency.make_session(tmp_path / "flat.onnx", QUICK)
    assert "NCHW image input" in one_line(exc)


def test_a_reference_of_another_input_size_is_refused(resnet, dense_bytes, tmp_path):
    settings = ProbeSettings(warmup=1, runs=1, blocks=1)
    big = latency.make_session(onnx_bytes(resnet, torch.zeros(1, 3, 64, 64)), settings)
    small = latency.make_session(dense_bytes, settings)
    with pytest.raises(UserError) as exc:
        latency.check_same_input(big, small)
    assert "[3, 64, 64]" in one_line(exc) and "[3, 32, 32]" in str(exc.value)
    big.prepare(1, 64)
    small.prepare(1, 32)
    with pytest.raises(UserError):
        latency.measure_pair(big, small, settings)
    with pytest.raises(UserError, match="input size"):  # the probe's input must fit the model
        small.prepare(1, 64)


def test_sessions_prepared_at_different_batches_are_not_compared(dense_bytes):
    a, b = latency.make_session(dense_bytes, QUICK), latency.make_session(dense_bytes, QUICK)
    b.prepare(4, 32)
    with pytest.raises(ValueError, match="batches"):
        latency.measure_pair(a, b, QUICK)


def test_an_unprepared_session_needs_a_batch_size(dense_bytes):
    session = latency.make_session(dense_bytes, ProbeSettings())
    assert session.feed == {} and session.batch_size is None
    with pytest.raises(ValueError, match="batch_size"):
        latency.measure_ms(session, ProbeSettings())
    session.prepare(3, 32)
    assert session.feed[session.input_name].shape == (3, 3, 32, 32)
    assert np.isfinite(session.run_once())
