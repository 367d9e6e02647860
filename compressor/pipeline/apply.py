"""`compressor apply`: a saved policy -> pruned, recovered, evaluated, exported and measured model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from compressor import latency, pruning
from compressor.io import checkpoints, export, policies
from compressor.pipeline import recovery
from compressor.pipeline.train import TrainConfig, evaluate_top1, train
from compressor.provenance import pick_device, provenance, seed_everything
from compressor.zoo import baselines as baseline
from compressor.zoo.datasets import DataConfig, load_dataset


def apply_policy_file(model_name: str, policy_path: str, out_dir: str, data: DataConfig,
                      probe: latency.ProbeSettings, pruning_config: pruning.PruningConfig,
                      finetune_epochs: int = 0, finetune_lr: float = 0.05, seed: int = 0,
                      models_dir: str = "models", checkpoint: str | None = None,
                      device_name: str = "auto", say=print) -> dict:
    """Prune the cached baseline with a policy file and write ONNX, checkpoint and policy JSON."""
    seed_everything(seed)
    device = pick_device(device_name)
    dataset = load_dataset(data)
    dense, meta = baseline.load_or_pretrain(model_name, dataset, data, TrainConfig(seed=seed),
                                            models_dir, device, checkpoint, say=say)
    dense = dense.cpu().eval()
    example = torch.zeros(1, 3, data.input_size, data.input_size)
    skeleton = pruning.build_skeleton(dense, example, pruning_config)
    policy = policies.read_policy(policy_path, model=model_name, valid_units=list(skeleton.names))
    calibration = list(dataset.train.batches(64, shuffle=True, seed=seed, limit=20))
    model = pruning.apply_policy(dense, policy, example, pruning_config,
                                 calibration_batches=calibration[:pruning_config.taylor_batches])
    recovery.recalibrate_bn(model, calibration, len(calibration), device)
    if finetune_epochs > 0:
        train(model, dataset.train, None, TrainConfig(epochs=finetune_epochs, max_lr=finetune_lr,
                                                      warmup_fraction=0.1, seed=seed,
                                                      batch_size=128), device)
    model = model.cpu().eval()
    top1 = evaluate_top1(model, dataset.test.batches(500), torch.device("cpu"))

    out = Path(out_dir)
    batch = next(dataset.test.batches(16))[0]
    exported = export.export_onnx(model, batch, out / "model.onnx")
    export.export_onnx(dense, batch, out / "dense.onnx")
    settings = probe
    if settings.batch_size is None:
        reference = latency.make_session(out / "dense.onnx", settings)
        settings = replace(settings, batch_size=latency.auto_batch_size(reference, data.input_size))
    paired = latency.measure_pair(latency.make_session(out / "model.onnx", settings),
                                  latency.make_session(out / "dense.onnx", settings), settings)
    metrics = {"test_top1": top1, "baseline_test_top1": meta.get("test_top1"),
               "macs": skeleton.macs(policy), "params": skeleton.params(policy),
               "dense_macs": skeleton.macs({}), "dense_params": skeleton.params({}),
               "latency_ratio_measured": paired.ratio, "onnx_max_abs_diff": exported.max_abs_diff}
    checkpoints.save_pruned_checkpoint(model, out / "model.pt", {"model": model_name, "policy": policy,
                                                            **metrics})
    policies.write_policy(out / "policy.json", model=model_name, dataset=data.dataset,
                        input_size=data.input_size, policy=policy, units=list(skeleton.names),
                        budget={}, metrics=metrics,
                        extra={"source": str(policy_path), "finetune_epochs": finetune_epochs,
                               "latency": paired.as_dict(), **provenance()})
    return {**metrics, "latency": paired.as_dict(), "out": str(out)}
