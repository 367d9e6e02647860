"""The latency probe: real onnxruntime sessions, paired measurements, one-line errors."""

from __future__ import annotations

import copy
import statistics
import warnings
from dataclasses import replace

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


def test_a_pair_alternates_its_blocks_and_takes_the_median_block_ratio(dense_bytes, monkeypatch):
    # What the pairing does with the times, checked against the blocks it really timed (how
    # near 1 a model against itself lands is a property of the machine: benchmarks.latency_noise).
    timed = []

    def block(session, settings):
        timed.append((session, real_block(session, settings)))
        return timed[-1][1]

    real_block = latency._block
    monkeypatch.setattr(latency, "_block", block)
    candidate, reference = (latency.make_session(dense_bytes, QUICK) for _ in range(2))
    paired = latency.measure_pair(candidate, reference, QUICK)
    # C R, R C, C R, R C: the order flips every block.
    assert [s for s, _ in timed] == [candidate, reference, reference, candidate] * 2
    cand = [ms for s, ms in timed if s is candidate]
    ref = [ms for s, ms in timed if s is reference]
    assert paired.block_ratios == [c / r for c, r in zip(cand, ref, strict=True)]
    assert paired.ratio == statistics.median(paired.block_ratios)
    assert (paired.candidate_ms, paired.reference_ms) == (statistics.median(cand),
                                                         statistics.median(ref))
    lo, hi = paired.spread
    assert lo <= paired.iqr[0] <= paired.ratio <= paired.iqr[1] <= hi
    assert paired.as_dict()["settings"]["batch_size"] == 2


def test_a_heavily_pruned_model_is_measured_faster(resnet, dense_bytes):
    x = torch.randn(1, 3, 32, 32)
    pruned = latency.make_session(onnx_bytes(tp_prune(resnet, 0.6, x), x), QUICK)
    paired = latency.measure_pair(pruned, latency.make_session(dense_bytes, QUICK), QUICK)
    # ~0.22 here: over 3x under the bound, in one paired window.
    assert paired.ratio < 0.7 and paired.candidate_ms < paired.reference_ms


def test_two_threads_run_without_spinning(dense_bytes):
    settings = ProbeSettings(threads=2, batch_size=1, warmup=1, runs=2, blocks=1)
    session = latency.make_session(dense_bytes, settings)
    assert latency.measure_ms(session, settings).ms > 0
    options = latency.session_options(settings)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auto_batch_size_is_the_first_power_of_two_whose_runs_reach_the_floor(dense_bytes):
    session = latency.make_session(dense_bytes, ProbeSettings())
    assert latency.auto_batch_size(session, 32, min_ms=0.0) == 1
    # Judged against the runs it really timed (whatever this machine's speed right now): per
    # batch 3 warm-up runs, then the fastest of 10 decides.
    runs = []

    def run_once():
        runs.append((session.batch_size, real_run_once()))
        return runs[-1][1]

    real_run_once, session.run_once = session.run_once, run_once
    batch = latency.auto_batch_size(session, 32, min_ms=3.0, largest=64)
    assert session.batch_size == batch
    tried = list(dict.fromkeys(b for b, _ in runs))  # in the order timed
    assert tried == [2 ** k for k in range(len(tried))]
    assert [b for b, _ in runs] == [b for b in tried for _ in range(13)]
    fastest = [min(ms for _, ms in runs[13 * i + 3:13 * (i + 1)]) for i in range(len(tried))]
    assert all(ms < 3.0 for ms in fastest[:-1])  # every smaller batch: under the floor
    if fastest[-1] >= 3.0:
        assert batch == tried[-1]
    else:  # no batch under the largest reached it: the largest, untimed
        assert batch == 64 and tried[-1] == 32


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


# --- any input shape -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd():
    from tests.unit.pruning.test_shapes import odd_cnn, odd_input

    return odd_cnn(), odd_input(1)


def any_size_onnx(model: torch.nn.Module, x: torch.Tensor, folder) -> str:
    """An ONNX file whose height and width are symbolic (ours fix them from the example)."""
    path = str(folder / "any_size.onnx")
    with warnings.catch_warnings():  # the legacy exporter is deprecated upstream; we choose it
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                          input_names=["input"],
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}})
    return path


def test_input_shape_settings_resolve_and_validate():
    assert ProbeSettings().example_shape == (3, 32, 32)
    assert ProbeSettings(input_size=48).example_shape == (3, 48, 48)
    settings = ProbeSettings(input_shape=[1, 28, 40])  # a list from JSON
    assert settings.example_shape == (1, 28, 40) and settings.input_shape == (1, 28, 40)
    for bad in ((28, 40), (1, 0, 40), (1, 28, 40, 2), (0,)):
        with pytest.raises(UserError, match="three positive sizes"):  # or one (tokens)
            ProbeSettings(input_shape=bad)


def test_a_fixed_one_channel_non_square_file_is_timed_at_its_own_shape(odd):
    model, x = odd
    data = onnx_bytes(model, x)
    session = latency.make_session(data, QUICK)  # QUICK's input_size 32 yields to the file
    assert session.timed_shape == (1, 28, 40) and session.feed[session.input_name].shape[0] == 2
    result = latency.measure_ms(session, QUICK)
    assert result.settings["input_shape"] == [1, 28, 40] and "input_size" not in result.settings
    assert latency.auto_batch_size(session, min_ms=0.0) == 1 and session.timed_shape == (1, 28, 40)
    with pytest.raises(UserError) as exc:  # an explicit shape must agree with the file
        latency.make_session(data, replace(QUICK, input_shape=(3, 28, 40)))
    assert "[1, 28, 40]" in one_line(exc)
    with pytest.raises(UserError, match="input size"):
        session.prepare(1, 32)  # the square 3-channel shorthand


def test_symbolic_sizes_come_from_the_settings(odd, tmp_path):
    model, x = odd
    path = any_size_onnx(model, x, tmp_path)
    session = latency.make_session(path, replace(QUICK, input_shape=(1, 20, 36)))
    assert session.timed_shape == (1, 20, 36)
    assert session.example_shape((1, 24, 32)) == (1, 24, 32)
    with pytest.raises(UserError):  # its channel is fixed
        session.example_shape((5, 24, 32))
    # Without an input shape, the square shorthand fills the symbolic sizes only.
    assert latency.make_session(path, QUICK).timed_shape == (1, 32, 32)


def test_sessions_timed_on_different_shapes_are_not_compared(odd, tmp_path):
    model, x = odd
    path = any_size_onnx(model, x, tmp_path)
    a, b = latency.make_session(path, QUICK), latency.make_session(path, QUICK)
    a.prepare(2, (1, 28, 40))
    b.prepare(2, (1, 20, 36))
    with pytest.raises(ValueError, match="inputs"):
        latency.measure_pair(a, b, QUICK)


def test_probe_times_inputs_shaped_like_the_example(odd):
    from compressor.pruning import PruningConfig, apply_policy, build_skeleton, uniform_policy

    model, x = odd
    config = PruningConfig(round_to=8)
    skeleton = build_skeleton(model, x, config)
    pruned = apply_policy(model, uniform_policy(skeleton, 0.75), x, config)
    probe = latency.Probe(model, x, replace(QUICK, input_size=64))  # the example decides
    paired = probe.measure(pruned)
    assert np.isfinite(paired.ratio) and paired.ratio > 0
    assert paired.settings["input_shape"] == [1, 28, 40] and paired.settings["batch_size"] == 2
    assert probe.reference.timed_shape == (1, 28, 40)


def test_the_probe_remeasures_only_a_network_whose_spread_holds_the_limit(resnet):
    x = torch.zeros(1, 3, 32, 32)
    probe = latency.Probe(resnet, x, QUICK)
    far = probe.measure(resnet, limit=100.0, recheck_rounds=2)
    assert len(far.block_ratios) == QUICK.blocks
    # Against itself the ratio is near 1: the spread usually holds 1.0, which asks for 2 more
    # rounds, pooled; when it does not, one round was the whole measurement.
    near = probe.measure(resnet, limit=1.0, recheck_rounds=2)
    lo, hi = near.spread
    assert (len(near.block_ratios) == 3 * QUICK.blocks
            or (len(near.block_ratios) == QUICK.blocks and not lo <= 1.0 <= hi))


def test_a_measurement_near_the_limit_is_repeated_on_fresh_sessions(dense_bytes):
    # Against itself the ratio is ~1: no block reaches a limit of 100; a limit of 1.5 is outside
    # the spread but within `near` (half the limit) of it, unless every block moves by half.
    far, rounds = latency.measure_against_limit(dense_bytes, dense_bytes, QUICK, 100.0, 2)
    assert rounds == 1 and len(far.block_ratios) == QUICK.blocks
    near, rounds = latency.measure_against_limit(dense_bytes, dense_bytes, QUICK, 1.5, 2, near=0.5)
    assert rounds == 3 and len(near.block_ratios) == 3 * QUICK.blocks
    over, rounds = latency.measure_against_limit(dense_bytes, dense_bytes, QUICK, 0.2, 2, near=0.5)
    assert rounds == 1  # clearly over the limit: nothing to decide
    assert over.rounds == 1 and near.rounds == 3  # what the pooled blocks say of themselves


def test_the_architecture_key_ignores_weights_and_sees_shapes(resnet, dense_bytes):
    trained = copy.deepcopy(resnet)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.mul_(1.5).add_(0.01)
    same = onnx_bytes(trained, torch.randn(16, 3, 32, 32))  # another batch: the axis is dynamic
    assert same != dense_bytes
    assert latency.architecture_key(same) == latency.architecture_key(dense_bytes)
    pruned = onnx_bytes(tp_prune(resnet, 0.25, torch.zeros(1, 3, 32, 32)),
                        torch.zeros(1, 3, 32, 32))
    assert latency.architecture_key(pruned) != latency.architecture_key(dense_bytes)
    other = onnx_bytes(build_model("resnet18", 7).eval(), torch.zeros(1, 3, 32, 32))
    assert latency.architecture_key(other) != latency.architecture_key(dense_bytes)


def test_the_probe_names_the_architecture_it_timed(resnet, dense_bytes):
    paired = latency.Probe(resnet, torch.zeros(1, 3, 32, 32), QUICK).measure(resnet)
    assert paired.architecture == latency.architecture_key(dense_bytes)
    assert paired.as_dict()["architecture"] == paired.architecture


def test_a_causal_lm_is_timed_on_int64_token_ids_at_its_own_length():
    """gpt_tiny's export takes token ids [batch, 128]: the probe feeds valid ids (0 and 1) at the
    file's own length whatever the image-shaped defaults say, and a pruned copy pairs with it."""
    from compressor.pruning import explicit_attention

    torch.manual_seed(0)
    model = explicit_attention(build_model("gpt_tiny", 256).eval(),
                               torch.zeros(1, 128, dtype=torch.long))
    session = latency.make_session(onnx_bytes(model, torch.zeros(1, 128, dtype=torch.long)),
                                   replace(QUICK, batch_size=1))
    feed = session.feed[session.input_name]
    assert feed.dtype == np.int64 and feed.shape == (1, 128) and set(np.unique(feed)) <= {0, 1}
    assert session.timed_shape == (128,)
    probe = latency.Probe(model, torch.zeros(1, 128, dtype=torch.long),
                          replace(QUICK, batch_size=1))
    assert probe.settings.example_shape == (128,)
    assert probe.measure(model).ratio == pytest.approx(1.0, abs=0.5)
    assert ProbeSettings(input_shape=(128,)).example_shape == (128,)
