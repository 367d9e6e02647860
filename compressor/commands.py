"""The command line's commands: each a frozen dataclass of its options, which are its flags
(`compressor.cli` parses them with tyro), called to run the command and print what it did.

A command's options are config sections (`DataConfig`, `ProbeSettings`, ...) plus the few flags
only it has; their help is the fields' docstrings. With `compressor.cli`, the only module that
prints; the library logs and raises.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from tyro.conf import Positional, arg

from compressor.errors import EXIT_BUDGET_MISSED, EXIT_OK, UserError
from compressor.flags import REPEATABLE
from compressor.latency import ProbeSettings
from compressor.pipeline.compress import CompressConfig
from compressor.pipeline.text import TextTaskConfig
from compressor.pruning.config import Importance, PruningConfig
from compressor.quantize import QuantizeConfig
from compressor.training.train import TrainConfig
from compressor.zoo.datasets import DataConfig
from compressor.zoo.text import TextConfig


@dataclass(frozen=True)
class Baseline:
    """The dense model: the same flags and defaults as compress's."""

    model: str = CompressConfig.model
    """torchvision name, package.module:factory or path/file.py:factory."""
    models_dir: str = CompressConfig.models_dir
    """Cache of baseline checkpoints."""
    checkpoint: str | None = CompressConfig.checkpoint
    """A baseline of ours, a state dict for --model, or (trusted) a whole torch.save(model)."""
    trust_checkpoint: bool = CompressConfig.trust_checkpoint
    """Allow --checkpoint to be a pickled module (loading it runs its code)."""
    device: str = CompressConfig.device
    """auto (GPU when present), cpu, cuda, cuda:1."""


@dataclass(frozen=True)
class Compress:
    """Search a pruning policy under a budget, fine-tune, export."""

    config: Annotated[CompressConfig, arg(name="")] = field(default_factory=CompressConfig)
    config_file: Annotated[str | None, arg(name="config")] = None  # read by cli.parse, first
    """A YAML or JSON file of these settings (a run's config.json too); flags override it."""
    resume: Annotated[str | None, arg(metavar="RUN_DIR")] = None
    """Continue the search saved in this run directory."""
    agent_option: Annotated[tuple[str, ...], REPEATABLE, arg(metavar="KEY=VALUE")] = ()
    """--agent.KEY VALUE as older commands give it (e.g. warm_start=true)."""

    @property
    def run_config(self) -> CompressConfig:
        """The config with the --agent-option settings in it."""
        from compressor.search.agent import parse_options

        return replace(self.config, agent=replace(self.config.agent,
                                                  **parse_options(self.agent_option)))

    def __call__(self) -> int:
        from compressor.pipeline.job import compress_from_config

        outcome = compress_from_config(self.run_config, resume=self.resume,
                                       argv=["compressor", *sys.argv[1:]])
        baseline, final = outcome.report["baseline"], outcome.report["final"]
        lm = outcome.report.get("language_model")
        if lm:  # a causal LM: perplexity where a classifier says top-1
            decode = final.get("decode") or {}
            phases = "".join(f", {phase} ratio {decode[phase]['ratio']:.3f} measured (KV-cache "
                             "graph)" for phase in ("decode", "prefill") if phase in decode)
            print(f"{self.config.model}: test perplexity {lm['test_perplexity']:.3f} (dense "
                  f"{lm['dense_test_perplexity']:.3f}), next-byte top-1 "
                  f"{lm['test_next_byte_top1']:.2f}% (dense {lm['dense_test_next_byte_top1']:.2f}%)"
                  f", latency ratio {outcome.latency_ratio:.3f} measured "
                  f"({lm['latency_workload']}){phases}; {outcome.verdict}")
            print("wrote " + ", ".join(str(p) for p in outcome.paths.values()))
            return EXIT_OK if outcome.verdict == "within budget" else EXIT_BUDGET_MISSED
        precision = {"int8": " in INT8", "mixed": " in mixed INT8/FP32"}.get(
            final.get("precision"), "")
        print(f"{self.config.model}: test top-1 {outcome.test_top1:.2f}%{precision} (dense "
              f"{baseline['test_top1']:.2f}%), latency ratio {outcome.latency_ratio:.3f} "
              f"measured, {final['macs'] / 1e6:.1f} MMACs; {outcome.verdict}")
        if (final.get("int8") or {}).get("warning"):
            print(f"warning: {final['int8']['warning']}")
        print("wrote " + ", ".join(str(p) for p in outcome.paths.values()))
        # CI-grade: a model that measures over its budget fails the command.
        return EXIT_OK if outcome.verdict == "within budget" else EXIT_BUDGET_MISSED


@dataclass(frozen=True)
class Pretrain:
    """Train and cache the dense baseline."""

    baseline: Annotated[Baseline, arg(name="")] = field(default_factory=Baseline)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    weights: str | None = None
    """Start from torchvision weights (e.g. IMAGENET1K_V1) or a checkpoint."""
    out: str | None = None
    """Checkpoint path (None: MODELS_DIR/MODEL-DATASET.pt; a causal LM: MODELS_DIR/MODEL-stdlib.pt)."""
    text: TextConfig = field(default_factory=TextConfig)
    """A causal LM's corpus (gpt_tiny: the standard library's source)."""
    steps: int | None = None
    """A causal LM's optimizer steps (None: its recipe's)."""

    def __call__(self) -> int:
        from compressor.pipeline.compress import check_compressible
        from compressor.provenance import pick_device
        from compressor.zoo import baselines, models
        from compressor.zoo.datasets import load_dataset

        model = self.baseline.model
        if models.task_of(model) == "text":
            return self.pretrain_lm()
        models.check_model_name(model)
        epochs = baselines.with_recipe(model, self.train).epochs
        dataset = load_dataset(self.data)
        check_compressible(model, dataset.num_classes, self.data.input_size)
        path = Path(self.out or models.baseline_path(self.baseline.models_dir, model, dataset.name))
        print(f"pretraining {model} on {dataset.name} ({len(dataset.train)} train images, "
              f"{self.data.input_size}px, {epochs} epochs) -> {path}")
        _, meta = baselines.pretrain(model, dataset, self.data, self.train, path,
                                     pick_device(self.baseline.device), weights=self.weights)
        print(f"{model}: test top-1 {meta['test_top1']:.2f}% after {epochs} epochs "
              f"in {meta['train_seconds'] / 60:.1f} min; saved {path}")
        if meta.get("warning"):
            print(f"warning: {meta['warning']}", file=sys.stderr)
        return 0

    def pretrain_lm(self) -> int:
        from compressor.provenance import pick_device
        from compressor.zoo import baselines, models
        from compressor.zoo.text import load_corpus

        model, b = self.baseline.model, self.baseline
        if self.data.dataset not in (DataConfig().dataset, baselines.TEXT_DATASET):
            raise UserError(f"{model} is a causal LM trained on the standard library's source: "
                            f"drop --dataset {self.data.dataset}; --text.root picks another "
                            "directory of .py files")
        corpus = load_corpus(self.text)
        recipe = baselines.lm_recipe(model, self.steps)
        path = Path(self.out or models.baseline_path(b.models_dir, model, baselines.TEXT_DATASET))
        print(f"pretraining {model} on {corpus.root} ({len(corpus.train) / 1e6:.1f} MB train, "
              f"Python {corpus.python_version}, corpus {corpus.fingerprint}) for {recipe.steps} "
              f"steps of {recipe.batch_size} windows -> {path}")
        _, meta = baselines.pretrain_lm(model, corpus, path, pick_device(b.device),
                                        steps=self.steps, seed=self.train.seed)
        print(f"{model}: test perplexity {meta['test_perplexity']:.3f} "
              f"({meta['test_bits_per_byte']:.3f} bits/byte, next-byte top-1 "
              f"{meta['test_next_byte_top1']:.1f}%) after {recipe.steps} steps in "
              f"{meta['train_minutes']:.1f} min; saved {path}")
        return 0


@dataclass(frozen=True)
class Evaluate:
    """Print the test top-1 of a baseline (pretrained first when none is cached)."""

    baseline: Annotated[Baseline, arg(name="")] = field(default_factory=Baseline)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    json: bool = False
    """Print a JSON line."""

    def __call__(self) -> int:
        from compressor.provenance import pick_device
        from compressor.zoo import baselines
        from compressor.zoo.datasets import load_dataset

        b, dataset, device = self.baseline, load_dataset(self.data), pick_device(self.baseline.device)
        model, _ = baselines.load_or_pretrain(b.model, dataset, self.data, self.train, b.models_dir,
                                              device, b.checkpoint, trust_checkpoint=b.trust_checkpoint)
        top1 = baselines.test_top1(model, dataset, device)
        print(json.dumps({"model": b.model, "dataset": dataset.name, "test_top1": top1}) if self.json
              else f"{b.model} on {dataset.name} test split ({len(dataset.test)} images): "
                   f"top-1 {top1:.2f}%")
        return 0


@dataclass(frozen=True)
class Apply:
    """Prune with a policy file, recover, evaluate, export."""

    policy: str
    """Policy JSON (policies/*.json)."""
    out: str
    """Output directory."""
    baseline: Annotated[Baseline, arg(name="")] = field(default_factory=Baseline)
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    finetune_epochs: int = 0
    """Epochs of fine-tune after BatchNorm recalibration."""
    round_to: int | None = None
    """Kept channels are multiples of it (None: the policy file's, else the CPU kernels' block)."""
    importance: Importance = PruningConfig.importance
    """Channel ranking (see --importance of compress)."""
    seed: int = CompressConfig.seed
    """Seed of the recalibration batches and the fine-tune."""
    text: TextConfig = field(default_factory=TextConfig)
    """A causal LM's corpus (gpt_tiny: the standard library's source)."""
    lm: TextTaskConfig = field(default_factory=TextTaskConfig)
    """A causal LM's test windows, fine-tune rate and latency workload."""

    @property
    def pruning(self) -> PruningConfig:
        """--round-to as given, else as the policy file recorded it, else the config's default."""
        from compressor.io.policies import read_round_to

        round_to = read_round_to(self.policy) if self.round_to is None else self.round_to
        return PruningConfig(importance=self.importance,
                             **({} if round_to is None else {"round_to": round_to}))

    def __call__(self) -> int:
        from compressor.pipeline.apply import apply_policy_file, apply_text_policy
        from compressor.zoo.models import task_of

        b = self.baseline
        if task_of(b.model) == "text":
            r = apply_text_policy(b.model, self.policy, self.out, self.text, self.lm, self.probe,
                                  self.pruning, finetune_epochs=self.finetune_epochs,
                                  seed=self.seed, models_dir=b.models_dir, checkpoint=b.checkpoint,
                                  device_name=b.device)
            lm = r["language_model"]
            print(f"{b.model}: test perplexity {lm['test_perplexity']:.3f} (dense "
                  f"{lm['dense_test_perplexity']:.3f}), {r['macs'] / 1e6:.1f} MMACs "
                  f"({r['macs'] / r['dense_macs']:.3f}), measured latency ratio "
                  f"{r['latency_ratio_measured']:.3f} ({lm['latency_workload']}); wrote "
                  f"{self.out}/model.onnx, model.pt, policy.json")
            return 0
        r = apply_policy_file(
            b.model, self.policy, self.out, self.data,
            replace(self.probe, input_size=self.data.input_size), self.pruning,
            finetune_epochs=self.finetune_epochs, seed=self.seed, models_dir=b.models_dir,
            checkpoint=b.checkpoint, device_name=b.device, quantize_config=self.quantize)
        int8 = r.get("int8") or {}
        if int8.get("onnx"):
            test = int8["test"]
            print(f"INT8 ({int8['quantization']['format']}): test top-1 {test['int8_top1']:.2f}% "
                  f"(FP32 {test['fp32_top1']:.2f}%), latency ratio {int8['latency']['ratio']:.3f} "
                  f"of dense FP32; wrote {int8['onnx']}")
        elif int8.get("warning"):
            print(f"warning: {int8['warning']}")
        print(f"{b.model}: test top-1 {r['test_top1']:.2f}% (dense {r['baseline_test_top1']:.2f}%),"
              f" {r['macs'] / 1e6:.1f} MMACs ({r['macs'] / r['dense_macs']:.3f}), "
              f"{r['params'] / 1e6:.2f} M params ({r['params'] / r['dense_params']:.3f}), measured "
              f"latency ratio {r['latency_ratio_measured']:.3f}; wrote {self.out}/model.onnx, "
              "model.pt, policy.json")
        return 0


def _settings_line(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


@dataclass(frozen=True)
class Latency:
    """Measure an ONNX model, optionally against a reference."""

    model_onnx: Positional[str]
    reference: str | None = None
    """Dense ONNX model to pair with."""
    input_size: int = ProbeSettings.input_size
    """Side of a square 3-channel input, for the sizes the files leave symbolic."""
    probe: ProbeSettings = field(default_factory=ProbeSettings)

    def __call__(self) -> int:
        from compressor import latency

        settings = replace(self.probe, input_size=self.input_size)
        model = latency.make_session(self.model_onnx, settings)
        reference = model if self.reference is None else latency.make_session(self.reference,
                                                                               settings)
        latency.check_same_input(model, reference)
        settings = latency.resolve_batch_size(settings, reference)
        if self.reference is None:
            model.prepare(settings.batch_size)
            result = latency.measure_ms(model, settings)
            print(f"{self.model_onnx}: {result.ms:.3f} ms ({_settings_line(settings.as_dict())})")
            return 0
        model.prepare(settings.batch_size)
        reference.prepare(settings.batch_size)
        paired = latency.measure_pair(model, reference, settings)
        print(f"{self.model_onnx}: {paired.candidate_ms:.3f} ms, reference "
              f"{paired.reference_ms:.3f} ms, ratio {paired.ratio:.3f} (blocks "
              f"{paired.spread[0]:.3f}-{paired.spread[1]:.3f}; {_settings_line(settings.as_dict())})")
        return 0


@dataclass(frozen=True)
class Check:
    """CI gate: exit 1 when a latency/accuracy budget is missed."""

    model_onnx: Positional[str]
    reference: str
    """Dense ONNX model."""
    max_latency_ratio: float | None = None
    """Limit on the latency as a ratio of the reference's."""
    max_latency_ms: float | None = None
    """Limit on the latency in ms."""
    max_accuracy_drop: float | None = None
    """Limit on the top-1 drop in points, on the test split of --dataset."""
    rounds: int = 3
    """Repeated paired measurements, each on fresh sessions."""
    json: str | None = None
    """Write the machine-readable report here."""
    data: DataConfig = field(default_factory=DataConfig)
    """The accuracy check's data (--input-size also sizes the latency probe)."""
    probe: ProbeSettings = field(default_factory=ProbeSettings)

    def __call__(self) -> int:
        from compressor.io import atomic
        from compressor.pipeline.check import check
        from compressor.zoo.datasets import load_dataset

        test_batches, name = None, ""
        if self.max_accuracy_drop is not None:  # the only check that reads data
            dataset = load_dataset(self.data)
            test_batches, name = dataset.test.batches(250), dataset.name
        report = check(self.model_onnx, self.reference,
                       replace(self.probe, input_size=self.data.input_size),
                       max_latency_ratio=self.max_latency_ratio, max_latency_ms=self.max_latency_ms,
                       max_accuracy_drop=self.max_accuracy_drop, test_batches=test_batches,
                       dataset_name=name, rounds=self.rounds)
        if self.json:
            atomic.write_json(self.json, report)
        for key, c in report["checks"].items():
            print(f"{key}: {c['value']:.3f} (limit {c['limit']}) {'ok' if c['ok'] else 'MISSED'}")
        for warning in report["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        lat = report["latency"]
        print(f"verdict: {report['verdict']} (ratio {lat['ratio']:.3f}, spread "
              f"{lat['ratio_spread'][0]:.3f}-{lat['ratio_spread'][1]:.3f}, "
              f"{_settings_line(lat['settings'])})")
        return 0 if report["verdict"] == "pass" else 1


@dataclass(frozen=True)
class Models:
    """List the model names the registry knows."""

    def __call__(self) -> int:
        from compressor.zoo.models import list_classification_models

        print("\n".join(list_classification_models()))
        return 0


@dataclass(frozen=True)
class Units:
    """List the units the search decides on (kind, channels, share of the MACs their layers
    hold) and the coupled groups kept dense, with why; untrained weights, nothing is saved."""

    model: Positional[str]
    """torchvision name, package.module:factory or path/file.py:factory."""
    input_size: int = DataConfig.input_size
    """Network input side in pixels."""
    num_classes: int = 10
    pruning: PruningConfig = field(default_factory=PruningConfig)
    json: bool = False
    """Print JSON: {"units": [...], "kept_dense": [...]}."""

    def __call__(self) -> int:
        import torch

        from compressor.pipeline.text import prefill_example
        from compressor.pruning import build_skeleton
        from compressor.zoo import models
        from compressor.zoo.text import VOCAB_SIZE

        text = models.task_of(self.model) == "text"
        models.check_model_name(self.model, task=None if text else "image")
        untrained = models.build_model(self.model, VOCAB_SIZE if text else self.num_classes).eval()
        # A causal LM of ours takes token ids over its context (--input-size and
        # --num-classes are an image model's).
        example = prefill_example(untrained.context) if text else \
            torch.zeros(1, 3, self.input_size, self.input_size)
        models.check_input_size(untrained, example, self.model)
        skeleton = build_skeleton(untrained, example, self.pruning)
        total = skeleton.macs({})
        if self.json:
            print(json.dumps({"units": [u._asdict() | {"macs_share": u.macs / total}
                                        for u in skeleton.units],
                              "kept_dense": [e._asdict() | {"macs_share": e.macs / total}
                                             for e in skeleton.excluded]}, indent=1))
            return 0
        at = f"{example.shape[1]} tokens" if text else f"{self.input_size} px"
        print(f"{self.model}: {len(skeleton.units)} units searched, {len(skeleton.excluded)} "
              f"kept dense; {total / 1e6:.1f} MMACs at {at}")
        width = max([40, *(len(u.name) for u in skeleton.units)])
        counted = {"heads": "heads", "block": "block"}  # what a transformer unit's count counts
        for u in skeleton.units:
            print(f"  {u.name:<{width}} {u.kind:<9} {u.channels:>5} "
                  f"{counted.get(u.kind, 'ch'):<5} {u.macs / total:6.1%} of MACs")
        for e in skeleton.excluded:
            print(f"  {e.name:<{width}} kept dense ({e.macs / total:.1%} of MACs): {e.reason}")
        return 0
