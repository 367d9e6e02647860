"""`compressor check` on ONNX files of any input shape: the reference's fixed shape decides."""

from __future__ import annotations

import pytest
import torch

from compressor import latency
from compressor.errors import UserError
from compressor.io.export import export_onnx
from compressor.latency import probe
from compressor.latency.probe import ProbeSettings
from compressor.pipeline.check import check
from compressor.pruning import PruningConfig, apply_policy, build_skeleton, uniform_policy
from tests.unit.pruning.test_shapes import odd_cnn, odd_input

# input_size 32 is the square 3-channel default: the 1x28x40 files must override it. Four blocks:
# the median ratio shrugs off one block a busy moment slowed (two would average it in).
QUICK = ProbeSettings(batch_size=8, warmup=2, runs=5, blocks=4)


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    model, x = odd_cnn(), odd_input(4)
    config = PruningConfig(round_to=8)
    pruned = apply_policy(model, uniform_policy(build_skeleton(model, x, config), 0.75), x,
                          config)
    export_onnx(model, x, folder / "dense.onnx")
    export_onnx(pruned, x, folder / "pruned.onnx")
    return folder / "pruned.onnx", folder / "dense.onnx"


def test_check_measures_one_channel_non_square_models_at_their_shape(odd_files):
    pruned, dense = odd_files
    report = check(str(pruned), str(dense), QUICK, max_latency_ratio=0.9, rounds=1)
    assert report["verdict"] == "pass" and report["checks"]["latency_ratio"]["ok"]
    assert 0 < report["latency"]["ratio"] < 0.9  # ~0.31 here: far under the limit
    assert report["latency"]["settings"]["input_shape"] == [1, 28, 40]
    assert "input_size" not in report["latency"]["settings"]  # it did not describe the input
    assert report["latency"]["rounds"][0]["settings"]["batch_size"] == 8


def test_check_fails_a_model_over_its_budget(odd_files):
    _, dense = odd_files  # against itself: ~1.0, twice the limit
    report = check(str(dense), str(dense), QUICK, max_latency_ratio=0.5, rounds=1)
    assert report["verdict"] == "fail" and not report["checks"]["latency_ratio"]["ok"]


def test_check_scores_both_files_on_the_test_batches_for_the_accuracy_gate(odd_files):
    pruned, dense = odd_files
    x = odd_input(8)
    with torch.no_grad():  # labelled by the dense network itself: the reference scores 100%
        labels = odd_cnn()(x).argmax(1)
    batches = [(x[:5], labels[:5]), (x[5:], labels[5:])]
    report = check(str(pruned), str(dense), QUICK, max_accuracy_drop=100.0, rounds=1,
                   test_batches=batches, dataset_name="odd")
    accuracy = report["accuracy"]
    assert accuracy["reference_top1"] == 100.0 and accuracy["images"] == 8
    assert accuracy["drop"] == 100.0 - accuracy["candidate_top1"]
    assert report["checks"]["accuracy_drop"]["ok"] and report["verdict"] == "pass"


def test_check_refuses_an_input_shape_the_files_do_not_take(odd_files):
    pruned, dense = odd_files
    with pytest.raises(UserError, match=r"\[1, 28, 40\]"):
        check(str(pruned), str(dense), ProbeSettings(batch_size=2, input_shape=(3, 28, 40)),
              max_latency_ratio=0.9, rounds=1)


def test_check_times_every_round_on_fresh_sessions(odd_files, monkeypatch):
    # A session's own speed moves a ratio more than rounds on one pair of sessions disagree, so
    # each round must build its own pair of real sessions.
    pruned, dense = odd_files
    made = []

    def make_and_count(model, settings):
        made.append(real_make_session(model, settings))
        return made[-1]

    real_make_session = latency.make_session
    monkeypatch.setattr(latency, "make_session", make_and_count)
    monkeypatch.setattr(probe, "make_session", make_and_count)  # what `fresh_rounds` calls
    report = check(str(pruned), str(dense), QUICK, max_latency_ratio=0.9, rounds=3)
    assert len(report["latency"]["rounds"]) == 3
    assert len(made) == 6 and len({id(s.inner) for s in made}) == 6


def test_check_refuses_zero_rounds(odd_files):
    pruned, dense = odd_files
    with pytest.raises(UserError, match="--rounds 0"):
        check(str(pruned), str(dense), QUICK, max_latency_ratio=0.9, rounds=0)
