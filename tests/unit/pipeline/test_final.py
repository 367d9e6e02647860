"""The final stage's steps on a tiny real workspace: a small trained CNN, learnable random data."""

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

from compressor import latency
from compressor.budgets.kinds import BudgetConfig
from compressor.errors import ExportError, InternalError, UserError
from compressor.io import export, policies
from compressor.pipeline import compress as pipeline
from compressor.pipeline import final
from compressor.pipeline.compress import CompressConfig, FinalConfig
from compressor.pipeline.data import user_dataset
from compressor.pipeline.job import search_context
from compressor.pruning import checkpoints
from compressor.search.evaluator import EvaluatorConfig
from compressor.search.loop import Candidate
from compressor.search.methods import get_method
from compressor.training.train import TrainConfig, evaluate_top1, train
from compressor.zoo.datasets import DataConfig

CPU = torch.device("cpu")
SHAPE, CLASSES = (3, 16, 16), 4
# Measured latency ratios of TinyNet here: dense ~1.0, uniform 0.5 ~0.38, uniform 0.75 ~0.25.
# Each budget sits at least twice away from what the test needs measured under or over it, so a
# busy machine cannot move a verdict: 0.8 for candidates within it, 0.5 (TIGHT) to be over it.
LATENCY_BUDGET, FLOPS_BUDGET, TIGHT = 0.8, 0.9, 0.5


class TinyNet(nn.Module):
    """A user's network: three convolutions, global pooling, a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, CLASSES)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def _data(n, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    # The label shifts the image's mean: learnable, so top-1 means something.
    images = torch.randn(n, *SHAPE, generator=gen) + labels.view(-1, 1, 1, 1) * 0.3
    return images, labels


def _config(root: Path, budget: BudgetConfig) -> CompressConfig:
    return CompressConfig(
        model="user", data=DataConfig(dataset="user", input_size=SHAPE[-1]),
        models_dir=str(root / "models"), budget=budget,
        evaluator=EvaluatorConfig(search_images=64, bn_batches=2, batch_size=16),
        final=FinalConfig(candidates=2, candidate_steps=2, epochs=1, batch_size=32,
                          latency_blocks=4, recheck_rounds=0, fit=False),
        # Four blocks: the median ratio shrugs off one block a busy moment slowed.
        probe=latency.ProbeSettings(batch_size=8, warmup=2, runs=5, blocks=4)).resolved()


def _workspace(root: Path, dense: nn.Module, budget: BudgetConfig) -> pipeline.Workspace:
    dataset = user_dataset(_data(128, 0), _data(64, 1), None)
    ws = pipeline.build_workspace(_config(root, budget), dataset, dense, {},
                                  torch.zeros(1, *SHAPE), cache_name="TinyNet")
    ws.progress = False
    ws.meta["test_top1"] = final.test_score(ws, ws.dense)
    return ws


@pytest.fixture(scope="module")
def dense():
    """TinyNet trained for two short epochs (well above the 25% of chance)."""
    torch.manual_seed(0)
    model = TinyNet()
    train(model, user_dataset(_data(256, 2), _data(64, 1), None).train, None,
          TrainConfig(epochs=2, batch_size=32, max_lr=0.1, augment=False), CPU, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("final")


@pytest.fixture(scope="module")
def ws(root, dense):
    """Latency and FLOPs budgets, fit off (the policies are exactly the ones given)."""
    return _workspace(root, dense, BudgetConfig(latency=LATENCY_BUDGET, flops=FLOPS_BUDGET))


@pytest.fixture(scope="module")
def tight_ws(root, dense):
    """A latency budget the dense network measures twice over, uniform 0.75 twice under."""
    return _workspace(root, dense, BudgetConfig(latency=TIGHT, flops=FLOPS_BUDGET))


@pytest.fixture(scope="module")
def flops_ws(root, dense):
    return _workspace(root, dense, BudgetConfig(flops=FLOPS_BUDGET))


def _final(ws, **changes):
    """The same workspace with other final-stage settings (configs are frozen)."""
    return replace(ws, config=replace(ws.config, final=replace(ws.config.final, **changes)),
                   times={})


def _uniform(ws, ratio):
    return {name: ratio for name in ws.skeleton.names}


def _width(model):
    """Channels of the last unit (64 dense): differs between the test's policies at any round_to."""
    return model.head.in_features


def test_choose_candidates_keeps_the_best_scored_and_marks_it_chosen(ws):
    heavy, light = _uniform(ws, 0.75), _uniform(ws, 0.5)
    best = [Candidate(0, -0.1, 90.0, heavy), Candidate(1, -0.2, 80.0, light),
            Candidate(2, -0.3, 70.0, _uniform(ws, 0.6))]
    stage = final.choose_candidates(ws, best)
    assert [r.episode for r in stage.rows] == [0, 1]  # final.candidates = 2
    assert all(r.rejected is None and r.latency_measured < LATENCY_BUDGET for r in stage.rows)
    assert [r.policy for r in stage.rows] == [heavy, light]  # fit off: exactly as searched
    assert [r.chosen for r in stage.rows].count(True) == 1 and stage.winner.chosen
    assert stage.winner.finetuned_top1 == max(r.finetuned_top1 for r in stage.rows)
    # The model handed on is the winner's: its widths and its score.
    assert _width(stage.model) == _width(ws.evaluator.prune(stage.winner.policy))
    assert _width(ws.evaluator.prune(heavy)) < _width(ws.evaluator.prune(light))
    assert ws.evaluator.evaluate(stage.model) == pytest.approx(stage.winner.finetuned_top1)
    assert stage.seconds > 0


def test_choose_candidates_rejects_a_candidate_measured_over_the_budget_when_fit_is_off(tight_ws):
    heavy = _uniform(tight_ws, 0.75)
    stage = final.choose_candidates(tight_ws, [Candidate(0, -0.1, 95.0, {}),
                                               Candidate(1, -0.2, 80.0, heavy)])
    dense_row, heavy_row = stage.rows
    assert dense_row.latency_measured > TIGHT
    assert dense_row.rejected == (f"measured {dense_row.latency_measured:.3f} > budget "
                                  f"{TIGHT:.3f}")
    assert dense_row.finetuned_top1 is None and not dense_row.chosen
    assert stage.winner is heavy_row and heavy_row.chosen and heavy_row.policy == heavy


def test_choose_candidates_refuses_when_every_candidate_is_over_the_budget(tight_ws):
    with pytest.raises(UserError, match="every candidate policy measured over the latency "
                                        "budget 0.500"):
        final.choose_candidates(tight_ws, [Candidate(0, -0.1, 95.0, {})])


def test_fit_on_rescales_an_over_budget_candidate_into_the_budget(tight_ws):
    # A margin of 0.3 aims every try at ~0.55 of the budget: landing under it does not hang on
    # one window (with 0.04 the fit aims 6% under, which noise can miss three times running).
    fitting = _final(tight_ws, fit=True)
    fitting = replace(fitting, config=replace(fitting.config, budget=replace(
        fitting.config.budget, margin=0.3)))
    stage = final.choose_candidates(fitting, [Candidate(0, -0.1, 95.0, {})])
    row = stage.winner
    assert row.latency_measured_as_searched > TIGHT
    assert row.fitted and row.rejected is None
    assert row.latency_measured <= TIGHT and any(r > 0 for r in row.policy.values())


def test_choose_candidates_takes_a_search_methods_candidates(flops_ws):
    outcome = get_method("uniform").search(search_context(flops_ws, None))
    stage = final.choose_candidates(flops_ws, outcome.candidates)
    assert stage.winner.policy == outcome.candidates[0].policy and stage.winner.chosen
    assert stage.winner.latency_measured is not None  # measured even without a latency budget
    sk = flops_ws.skeleton
    assert sk.macs(stage.winner.policy) / sk.macs({}) <= FLOPS_BUDGET


def test_finetune_winner_trains_the_winner_and_returns_its_test_score(ws):
    stage = final.choose_candidates(ws, [Candidate(0, -0.1, 90.0, _uniform(ws, 0.5))])
    before = copy.deepcopy(stage.model.state_dict())
    tuned = final.finetune_winner(ws, stage)
    assert not tuned.model.training
    assert any(not torch.equal(before[k], v) for k, v in tuned.model.state_dict().items())
    assert tuned.test_top1 == pytest.approx(
        evaluate_top1(tuned.model, ws.dataset.test.batches(500), CPU))
    assert 40 < tuned.test_top1 <= 100  # chance is 25%
    assert tuned.seconds > 0


def test_finetune_winner_without_epochs_keeps_the_weights(ws):
    no_epochs = _final(ws, epochs=0)
    stage = final.choose_candidates(no_epochs, [Candidate(0, -0.1, 90.0, _uniform(ws, 0.5))])
    before = copy.deepcopy(stage.model.state_dict())
    tuned = final.finetune_winner(no_epochs, stage)
    assert all(torch.equal(before[k], v) for k, v in tuned.model.state_dict().items())


def test_finetune_winner_gives_a_users_finetune_one_epoch_of_steps(ws):
    steps_given = []

    def finetune(model, steps):
        steps_given.append(steps)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        model.train()
        for (x, y), _ in zip(ws.dataset.train.batches(32), range(steps), strict=False):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    user = replace(_final(ws, epochs=2), finetune=finetune)
    stage = final.choose_candidates(user, [Candidate(0, -0.1, 90.0, _uniform(ws, 0.5))])
    tuned = final.finetune_winner(user, stage)
    assert steps_given == [2 * math.ceil(len(ws.dataset.train) / 32)]
    assert not tuned.model.training


def _tuned(ws, ratio=0.5):
    stage = final.choose_candidates(ws, [Candidate(3, -0.1, 90.0, _uniform(ws, ratio))])
    return stage, final.finetune_winner(ws, stage)


def test_save_winner_writes_a_policy_file_and_a_checkpoint_that_reloads(ws, tmp_path):
    stage, tuned = _tuned(ws)
    saved = final.save_winner(ws, stage.winner, tuned, tmp_path / "run",
                              tmp_path / "policies" / "p.json")
    assert saved.policy_path == tmp_path / "policies" / "p.json"
    assert saved.checkpoint_path == tmp_path / "run" / "model.pt"
    assert policies.read_policy(saved.policy_path, model="user",
                                valid_units=list(ws.skeleton.names)) == stage.winner.policy
    recorded = json.loads(saved.policy_path.read_text())
    assert recorded["metrics"]["test_top1"] == pytest.approx(tuned.test_top1)
    assert recorded["budget"] == {"latency": LATENCY_BUDGET, "flops": FLOPS_BUDGET}
    assert recorded["round_to"] == ws.config.pruning.round_to

    loaded, meta = checkpoints.load_pruned_checkpoint(saved.checkpoint_path, base_model=TinyNet())
    x = _data(8, 5)[0]
    with torch.no_grad():
        assert torch.allclose(loaded(x), tuned.model(x), atol=1e-6)
    assert meta["test_top1"] == pytest.approx(tuned.test_top1)
    # A user's model cannot be rebuilt from a name: the error says to pass the base model.
    with pytest.raises(UserError, match="base_model=model"):
        checkpoints.load_pruned_checkpoint(saved.checkpoint_path)


def test_export_and_measure_writes_both_onnx_files_and_a_paired_ratio(ws, tmp_path):
    _, tuned = _tuned(ws)
    measured = final.export_and_measure(ws, tuned.model, tmp_path)
    assert measured.onnx_path == tmp_path / "model.onnx"
    assert measured.dense_onnx_path == tmp_path / "dense.onnx"
    x = _data(4, 6)[0]
    for path, model in ((measured.onnx_path, tuned.model), (measured.dense_onnx_path, ws.dense)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-4)
    ex = measured.export
    assert ex.max_abs_diff <= ex.tolerance.limit(ex.max_abs_output)
    paired = measured.paired
    lo, hi = paired.spread
    assert 0 < lo <= paired.ratio <= hi and paired.ratio < LATENCY_BUDGET  # half the channels
    assert paired.candidate_ms < paired.reference_ms
    assert len(paired.block_ratios) == 4 and measured.rounds == 1  # latency_blocks, no recheck


def test_the_verdict_is_the_fits_measurement_when_the_fine_tune_changed_only_weights(tight_ws,
                                                                                   tmp_path):
    # The fit lands the candidate in the measured budget, the fine-tune moves its weights, and
    # the verdict of the exported model is the fit's pooled measurement of those shapes: the
    # same ratio, the same blocks, not a second, independently noisy window.
    fitting = _final(tight_ws, fit=True)
    fitting = replace(fitting, config=replace(fitting.config, budget=replace(
        fitting.config.budget, margin=0.3)))
    stage = final.choose_candidates(fitting, [Candidate(0, -0.1, 95.0, {})])
    before = copy.deepcopy(stage.model.state_dict())
    tuned = final.finetune_winner(fitting, stage)
    assert any(not torch.equal(before[k], v) for k, v in tuned.model.state_dict().items())
    measured = final.export_and_measure(fitting, tuned.model, tmp_path, stage.winner_latency)
    fitted = stage.winner_latency
    assert measured.from_fit and measured.paired == fitted
    assert measured.paired.ratio == stage.winner.latency_measured <= TIGHT
    assert fitted.architecture == latency.architecture_key(measured.onnx_path)
    assert measured.rounds == len(fitted.block_ratios) // 4  # the probe's 4 blocks a round
    assert final.judge_run(fitting, stage.winner.policy, measured.paired.ratio)["latency"].ok
    # Another architecture's measurement is not the verdict: the export is measured afresh
    # (the final stage's own blocks), here the unpruned network.
    other = final.export_and_measure(fitting, fitting.evaluator.prune({}), tmp_path / "other",
                                     stage.winner_latency)
    assert not other.from_fit and len(other.paired.block_ratios) == 4
    assert other.paired.architecture is None and other.paired.ratio > fitted.ratio


def test_the_probe_correction_reaches_the_wall_only_when_asked(root, dense, ws):
    # Off (the default) every probe is still observed, for the logged bias; on, the wall's
    # latency cost is the corrected prediction.
    assert isinstance(ws.latency_ratio, latency.ProbeCorrection)
    assert not ws.latency_ratio.enabled and ws.evaluator.correction is ws.latency_ratio
    corrected = _workspace(root, dense, BudgetConfig(latency=LATENCY_BUDGET,
                                                     probe_correction=True))
    correction = corrected.evaluator.correction
    assert correction.enabled and corrected.latency_ratio is correction
    (wall_latency,) = [b for b in corrected.budgets if b.name == "latency"]
    half = _uniform(corrected, 0.5)
    vector = [half[name] for name in corrected.skeleton.names]
    before = wall_latency.cost(vector)
    for _ in range(5):  # the probes measured 20% over the model
        correction.observe(half, 1.2 * correction.predict(half))
    assert wall_latency.cost(vector) > 1.1 * before
    assert corrected.latency_ratio(half) == pytest.approx(wall_latency.cost(vector))


def test_judge_run_reports_each_requested_budget(ws, flops_ws):
    policy = _uniform(ws, 0.5)
    flops = ws.skeleton.macs(policy) / ws.skeleton.macs({})
    checks = final.judge_run(ws, policy, 0.5)
    assert set(checks) == {"latency", "flops"}
    assert checks["flops"].value == pytest.approx(flops) and checks["flops"].ok
    assert checks["latency"] == (0.5, LATENCY_BUDGET, True)
    assert not final.judge_run(ws, policy, 0.85)["latency"].ok
    assert not final.judge_run(ws, {}, 0.5)["flops"].ok  # the dense model's FLOPs are 1.0
    only_flops = final.judge_run(flops_ws, policy, 0.5)
    assert set(only_flops) == {"flops"}


def test_judge_run_without_a_measurement_leaves_the_latency_budget_out(ws):
    # The verdict then comes from the failure ("export or measurement failed"), not from a check.
    checks = final.judge_run(ws, _uniform(ws, 0.5), None)
    assert set(checks) == {"flops"}


def _finish(ws, tmp_path, best):
    return final.finish(ws, best, tmp_path / "run", ["compressor", "test"], tmp_path / "results",
                        tmp_path / "policies" / "run.json", {"method": "test", "evaluations": 1})


def test_finish_writes_the_report_and_every_file(tight_ws, tmp_path):
    ws, heavy = tight_ws, _uniform(tight_ws, 0.75)
    outcome = _finish(ws, tmp_path, [Candidate(0, -0.1, 95.0, {}), Candidate(1, -0.2, 80, heavy)])
    report = json.loads((tmp_path / "results" / "report.json").read_text())
    assert report == json.loads(json.dumps(outcome.report, default=str))
    assert report["failure"] is None and report["verdict"] == outcome.verdict == "within budget"
    assert set(report["checks"]) == {"latency", "flops"}
    assert report["checks"]["latency"]["value"] == pytest.approx(outcome.latency_ratio)
    assert report["policy"] == heavy == outcome.policy
    assert [c["chosen"] for c in report["candidates"]] == [False, True]
    assert report["candidates"][0]["rejected"].startswith("measured")
    assert report["search"] == {"method": "test", "evaluations": 1}
    assert report["command"] == "compressor test"
    for key in ("onnx", "dense_onnx", "checkpoint", "policy", "report"):
        assert outcome.paths[key].exists(), key
    assert {"candidates", "final_finetune", "export_and_measure", "total"} <= set(report["time"])
    md = (tmp_path / "results" / "report.md").read_text()
    assert report["headline"] in md and "Verdict: **within budget**" in md
    assert "The final stage failed" not in md
    assert "in this process after the search" in md  # where the latency was measured
    # The verdict is the candidate stage's measurement of the winner's architecture.
    assert report["final"]["latency_from_fit"] is True
    assert outcome.latency_ratio == report["candidates"][1]["latency_measured"]
    assert "the fit's measurement of the same architecture" in md
    assert (tmp_path / "results" / "policy.png").exists()


def _break_pruned_export(monkeypatch):
    """The pruned model's export fails verification; the dense one's is real."""
    real = export.export_onnx

    def export_onnx(model, example_input, path, *args, **kwargs):
        if Path(path).name == "model.onnx":
            raise ExportError("ONNX export of Sequential does not match PyTorch: injected")
        return real(model, example_input, path, *args, **kwargs)

    monkeypatch.setattr(export, "export_onnx", export_onnx)


def _assert_failure_kept_the_work(tmp_path, exc):
    message = str(exc)
    assert "ExportError: ONNX export of Sequential does not match PyTorch: injected" in message
    assert f"--resume {tmp_path / 'run'}" in message
    assert f"compressor apply --policy {tmp_path / 'policies' / 'run.json'}" in message
    assert (tmp_path / "policies" / "run.json").exists()
    assert (tmp_path / "run" / "model.pt").exists()
    assert not (tmp_path / "run" / "model.onnx").exists()
    report = json.loads((tmp_path / "results" / "report.json").read_text())
    assert report["failure"].startswith("ExportError: ") and "injected" in report["failure"]
    assert report["verdict"] == "export or measurement failed"
    assert "latency" not in report["final"] and "onnx" not in report["final"]
    md = (tmp_path / "results" / "report.md").read_text()
    assert "**The final stage failed:** ExportError" in md
    return report


def test_an_export_failure_keeps_the_policy_checkpoint_and_report(flops_ws, tmp_path,
                                                                  monkeypatch):
    _break_pruned_export(monkeypatch)
    with pytest.raises(InternalError) as raised:
        _finish(flops_ws, tmp_path, [Candidate(0, -0.1, 90.0, _uniform(flops_ws, 0.5))])
    assert not isinstance(raised.value, ExportError)  # the step's error, wrapped with the fix
    report = _assert_failure_kept_the_work(tmp_path, raised.value)
    assert report["checks"]["flops"]["ok"]
    loaded, _ = checkpoints.load_pruned_checkpoint(tmp_path / "run" / "model.pt",
                                                   base_model=TinyNet())
    assert _width(loaded) == _width(flops_ws.evaluator.prune(_uniform(flops_ws, 0.5)))


def test_an_export_failure_under_a_latency_budget_keeps_the_report(ws, tmp_path, monkeypatch):
    _break_pruned_export(monkeypatch)
    with pytest.raises(InternalError) as raised:
        _finish(ws, tmp_path, [Candidate(0, -0.1, 90.0, _uniform(ws, 0.5))])
    _assert_failure_kept_the_work(tmp_path, raised.value)


def test_user_runs_default_to_the_ignored_runs_directory():
    # results/ holds committed studies; a user's run (report included) lands under runs/.
    assert CompressConfig().results_dir == "runs" and CompressConfig().out is None
