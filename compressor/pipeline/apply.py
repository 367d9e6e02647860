"""`compressor apply`: a saved policy -> pruned, recovered, evaluated, exported and measured model.

The policy is checked against the model (on an untrained instance) before anything is trained, so a
policy made for another network is refused in seconds.
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from compressor import latency, pruning, quantize
from compressor.io import export, policies, report
from compressor.pipeline.int8 import Int8Plan, quantize_winner
from compressor.pipeline.text import (
    TextTask,
    TextTaskConfig,
    latency_example,
    lm_headline,
    text_dataset,
)
from compressor.provenance import pick_device, provenance, seed_everything
from compressor.pruning import checkpoints
from compressor.pruning.importance import importance_label
from compressor.training import recovery
from compressor.training.train import TrainConfig, evaluate_top1, train
from compressor.zoo import baselines as baseline
from compressor.zoo import models
from compressor.zoo.datasets import DataConfig, load_dataset
from compressor.zoo.text import TextConfig, load_corpus

log = logging.getLogger(__name__)


def apply_policy_file(model_name: str, policy_path: str, out_dir: str, data: DataConfig,
                      probe: latency.ProbeSettings, pruning_config: pruning.PruningConfig,
                      finetune_epochs: int = 0, finetune_lr: float = 0.05, seed: int = 0,
                      models_dir: str = "models", checkpoint: str | None = None,
                      device_name: str = "auto",
                      quantize_config: quantize.QuantizeConfig | None = None,
                      say=log.info) -> dict:
    """Prune the cached baseline with a policy file and write ONNX, checkpoint, policy JSON and
    report.json (`io.report.RunReport`, without the search's fields)."""
    seed_everything(seed)
    device = pick_device(device_name)
    dataset = load_dataset(data)
    batch = next(iter(dataset.test.batches(16, limit=1)))[0]
    example = torch.zeros(1, *batch.shape[1:])
    # Fail fast: the architecture, its input and the policy, before any pretraining.
    models.check_model_name(model_name)
    untrained = models.build_model(model_name, dataset.num_classes).eval()
    models.check_input_size(untrained, example, model_name)
    skeleton = pruning.build_skeleton(untrained, example, pruning_config)
    policy = policies.read_policy(policy_path, model=model_name, valid_units=list(skeleton.names))
    mixed = quantize_config is not None and quantize_config.mixed
    # A mixed run's precisions came from its latency model: apply keeps the ones it recorded.
    fp32_layers = policies.read_fp32_layers(policy_path) if mixed else []

    dense, meta = baseline.load_or_pretrain(model_name, dataset, data, TrainConfig(seed=seed),
                                            models_dir, device, checkpoint, say=say)
    dense = dense.cpu().eval()
    if pruning.has_attention(dense):  # exported as pruned copies are (the fast path does not)
        dense = pruning.explicit_attention(dense, example)
    model = _prune_and_recover(dense, policy, example, pruning_config, dataset, seed, device,
                               finetune_epochs, finetune_lr)
    top1 = evaluate_top1(model, dataset.test.batches(500), torch.device("cpu"))

    out = Path(out_dir)
    metrics = {"test_top1": top1, "baseline_test_top1": meta.get("test_top1"),
               "macs": skeleton.macs(policy), "params": skeleton.params(policy),
               "dense_macs": skeleton.macs({}), "dense_params": skeleton.params({})}
    # The checkpoint first: an export failure must not lose the recovered model.
    checkpoints.save_pruned_checkpoint(
        model, out / "model.pt", {"model": model_name, **metrics}, policy=policy,
        base_name=model_name, num_classes=dataset.num_classes, example_shape=tuple(example.shape),
        round_to=pruning_config.round_to, ignored_layers=pruning_config.ignored_layers)
    exported, reference, settings, paired = _export_and_measure(model, dense, batch, out, probe)
    metrics.update(latency_ratio_measured=paired.ratio, onnx_max_abs_diff=exported.max_abs_diff,
                   onnx_relative_diff=exported.relative_diff,
                   onnx_top1_agreement=exported.top1_agreement)
    int8 = None
    if quantize_config is not None and quantize_config.enabled:
        int8 = _quantize(out, reference, settings, quantize_config, dataset, seed, paired.ratio,
                         [s.name for s in skeleton.dense_shapes], fp32_layers)
        shipped = "mixed" if fp32_layers else "int8"
        metrics.update(precision=shipped if int8.get("onnx") else "fp32")
        if int8.get("onnx"):
            metrics.update(latency_ratio_measured=int8["latency"]["ratio"],
                           fp32_latency_ratio=paired.ratio,
                           int8_test_top1=int8["test"]["int8_top1"])
    policies.write_policy(out / "policy.json", model=model_name, dataset=data.dataset,
                          input_size=data.input_size, policy=policy, units=list(skeleton.names),
                          budget={}, metrics=metrics,
                          extra={"source": str(policy_path), "finetune_epochs": finetune_epochs,
                                 "kept_dense": skeleton.kept_dense(),
                                 "round_to": pruning_config.round_to,
                                 "latency": paired.as_dict(), "int8": int8, **provenance()})
    final = _shipped(out, metrics, exported, paired, int8)
    settings_used = {"policy_file": str(policy_path), "finetune_epochs": finetune_epochs,
                     "finetune_lr": finetune_lr, "seed": seed,
                     "pruning": {"round_to": pruning_config.round_to,
                                 "importance": importance_label(pruning_config.importance),
                                 "ignored_layers": list(pruning_config.ignored_layers)},
                     "probe": asdict(settings), "data": asdict(data),
                     "quantize": asdict(quantize_config) if quantize_config else None}
    report.write_report_json(out, _report(model_name, data, out, meta, skeleton, policy, final,
                                          settings_used))
    return {**metrics, "latency": paired.as_dict(), "int8": int8, "out": str(out)}


def _prune_and_recover(dense: nn.Module, policy: dict[str, float], example: torch.Tensor,
                       config: pruning.PruningConfig, dataset, seed: int, device: torch.device,
                       finetune_epochs: int, finetune_lr: float) -> nn.Module:
    """The policy applied to the dense baseline, BatchNorm recalibrated on 20 train batches, then
    `finetune_epochs` of fine-tune (none by default); on the CPU in eval mode."""
    calibration = list(dataset.train.batches(64, shuffle=True, seed=seed, limit=20))
    model = pruning.apply_policy(dense, policy, example, config,
                                 calibration_batches=calibration[:config.taylor_batches])
    recovery.recalibrate_bn(model, calibration, len(calibration), device)
    if finetune_epochs > 0:
        train(model, dataset.train, None, TrainConfig(epochs=finetune_epochs, max_lr=finetune_lr,
                                                      warmup_fraction=0.1, seed=seed,
                                                      batch_size=128), device)
    return model.cpu().eval()


def _export_and_measure(model: nn.Module, dense: nn.Module, batch: torch.Tensor, out: Path,
                        probe: latency.ProbeSettings
                        ) -> tuple[export.ExportReport, latency.Session, latency.ProbeSettings,
                                   latency.PairedLatency]:
    """model.onnx and dense.onnx (verified), then one paired measurement of the two; the dense
    session and the settings it resolved (the batch size) serve the INT8 step too."""
    exported = export.export_onnx(model, batch, out / "model.onnx")
    export.export_onnx(dense, batch, out / "dense.onnx")
    settings = probe
    reference = latency.make_session(out / "dense.onnx", settings)
    settings = latency.resolve_batch_size(settings, reference)
    paired = latency.measure_pair(latency.make_session(out / "model.onnx", settings),
                                  latency.make_session(out / "dense.onnx", settings), settings)
    return exported, reference, settings, paired


def _shipped(out: Path, metrics: dict, exported: export.ExportReport,
             paired: latency.PairedLatency, int8: dict | None) -> report.ShippedModel:
    """report.json's "final" for what apply wrote: the INT8 model when one ships."""
    ships_int8 = bool(int8 and int8.get("onnx"))
    return report.ShippedModel(
        test_top1=int8["test"]["int8_top1"] if ships_int8 else metrics["test_top1"],
        fp32_test_top1=metrics["test_top1"], precision=metrics.get("precision", "fp32"),
        macs=metrics["macs"], params=metrics["params"], checkpoint=str(out / "model.pt"),
        policy_file=str(out / "policy.json"), int8=int8,
        latency=int8["latency"] if ships_int8 else paired.as_dict(),
        latency_rounds=int8["latency_rounds"] if ships_int8 else 1,
        fp32_latency=paired.as_dict(), onnx=int8["onnx"] if ships_int8 else str(out / "model.onnx"),
        fp32_onnx=str(out / "model.onnx"), parity=report.ExportParity.of(exported))


def _report(model_name: str, data: DataConfig, out: Path, meta: dict, skeleton: pruning.Skeleton,
            policy: dict[str, float], final: report.ShippedModel, config: dict
            ) -> report.RunReport:
    """report.json of `compressor apply`: compress's record without a search or budgets."""
    base_top1 = meta.get("test_top1")
    base_top1 = float("nan") if base_top1 is None else base_top1
    return report.RunReport(
        model=model_name, dataset=data.dataset, run=out.name,
        command=" ".join(shlex.quote(a) for a in sys.argv),
        headline=report.headline(final.test_top1, base_top1, final.precision, final.latency_ratio),
        baseline={"test_top1": base_top1, "macs": skeleton.macs({}), "params": skeleton.params({})},
        final=final, policy=pruning.pruning_ratios(policy), config=config,
        kept_dense=skeleton.kept_dense() or None, provenance=provenance())


def _quantize(out: Path, reference: latency.Session, settings: latency.ProbeSettings,
              config: quantize.QuantizeConfig, dataset, seed: int, fp32_ratio: float,
              layers: list[str], fp32_layers: list[str]) -> dict:
    """model.int8.onnx: the format measured on this pruned model, then the compress path's steps
    (calibrated on the train split, checked on search and test, timed against dense FP32), with
    `fp32_layers` kept float."""
    fp32 = (out / "model.onnx").read_bytes()
    # No fresh rounds: the choice only ranks formats here, `quantize_winner` times what ships.
    choice = quantize.choose_format(fp32, reference, settings, quantize.random_calibration(
        (settings.batch_size, *reference.example_shape())), config, rounds=0)
    if choice.chosen is None:
        log.warning(choice.warning)
        return {"choice": choice.as_dict(), "onnx": None, "warning": choice.warning}
    shipped = quantize_winner(out / "model.onnx", out / "dense.onnx", out / "model.int8.onnx",
                              Int8Plan(config, choice, None, 0.0), dataset, seed, settings, None,
                              fp32_ratio, 0, layers=layers, fp32_layers=fp32_layers)
    return {"choice": choice.as_dict(), **shipped.as_dict(), "fp32_layers": fp32_layers}


def apply_text_policy(model_name: str, policy_path: str, out_dir: str, text: TextConfig,
                      lm: TextTaskConfig, probe: latency.ProbeSettings,
                      pruning_config: pruning.PruningConfig, finetune_epochs: int = 0,
                      seed: int = 0, models_dir: str = "models", checkpoint: str | None = None,
                      device_name: str = "auto", say=log.info) -> dict:
    """`apply` for a causal LM of ours: the policy on its cached baseline, `finetune_epochs`
    passes of LM loss (in steps of 128 windows, as compress's final fine-tune), test perplexity
    beside the dense model's, the verified export timed as a prefill at batch 1."""
    seed_everything(seed)
    device = pick_device(device_name)
    corpus = load_corpus(text)
    models.check_model_name(model_name, task="text")
    untrained = models.build_model(model_name, corpus.vocab_size).eval()
    context = untrained.context
    example = latency_example(lm.latency_workload, context)
    skeleton = pruning.build_skeleton(pruning.explicit_attention(untrained, example), example,
                                      pruning_config)
    policy = policies.read_policy(policy_path, model=model_name, valid_units=list(skeleton.names))
    dense, meta = baseline.load_or_pretrain_lm(model_name, corpus, models_dir, device, checkpoint,
                                               seed=seed, say=say)
    dense = pruning.explicit_attention(dense.cpu().eval(), example)
    dataset = text_dataset(corpus, context)
    task = TextTask(dataset, context, lm, device)
    dense_score = task.test(dense)
    model = pruning.apply_policy(dense, policy, example, pruning_config)
    steps = finetune_epochs * -(-len(dataset.train) // 128)
    if steps > 0:
        task.final_finetune(model, steps)
    model = model.cpu().eval()
    summary = task.summary(model, dense_score)
    out = Path(out_dir)
    metrics = {"test_top1": summary["test_next_byte_top1"],
               "baseline_test_top1": dense_score.top1,
               "test_perplexity": summary["test_perplexity"],
               "baseline_test_perplexity": dense_score.perplexity,
               "macs": skeleton.macs(policy), "params": skeleton.params(policy),
               "dense_macs": skeleton.macs({}), "dense_params": skeleton.params({})}
    checkpoints.save_pruned_checkpoint(
        model, out / "model.pt", {"model": model_name, **metrics}, policy=policy,
        base_name=model_name, num_classes=corpus.vocab_size, example_shape=tuple(example.shape),
        round_to=pruning_config.round_to, ignored_layers=pruning_config.ignored_layers,
        example_dtype=example.dtype)
    batch = next(iter(dataset.test.batches(16, limit=1)))[0]
    probe = replace(probe, batch_size=probe.batch_size or 1)
    exported, _, settings, paired = _export_and_measure(model, dense, batch, out, probe)
    metrics.update(latency_ratio_measured=paired.ratio, onnx_max_abs_diff=exported.max_abs_diff,
                   onnx_relative_diff=exported.relative_diff,
                   onnx_top1_agreement=exported.top1_agreement)
    policies.write_policy(out / "policy.json", model=model_name, dataset=baseline.TEXT_DATASET,
                          input_size=context, policy=policy, units=list(skeleton.names),
                          budget={}, metrics=metrics,
                          extra={"source": str(policy_path), "finetune_epochs": finetune_epochs,
                                 "round_to": pruning_config.round_to,
                                 "latency": paired.as_dict(), **provenance()})
    final = _shipped(out, metrics, exported, paired, None)
    rep = report.RunReport(
        model=model_name, dataset=baseline.TEXT_DATASET, run=out.name,
        command=" ".join(shlex.quote(a) for a in sys.argv),
        headline=lm_headline(summary, final.latency_ratio), language_model=summary,
        baseline={"test_top1": dense_score.top1, "macs": skeleton.macs({}),
                  "params": skeleton.params({})},
        final=final, policy=pruning.pruning_ratios(policy),
        config={"policy_file": str(policy_path), "finetune_epochs": finetune_epochs,
                "seed": seed, "text": asdict(text), "lm": asdict(lm), "probe": asdict(settings),
                "pruning": {"round_to": pruning_config.round_to,
                            "importance": importance_label(pruning_config.importance)}},
        kept_dense=skeleton.kept_dense() or None, provenance=provenance())
    report.write_report_json(out, rep)
    return {**metrics, "latency": paired.as_dict(), "language_model": summary, "out": str(out)}
