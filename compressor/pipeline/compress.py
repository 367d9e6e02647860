"""The compress job: preflight -> baseline -> workspace -> search -> final stage (`pipeline.final`).

`prepare` is the command line's path (a torchvision name and an embedded dataset); `build_workspace`
is shared with `compressor.compress` (a user's own module and data). Everything cheap is checked in
`preflight` before any pretraining or search: the model builds and takes the input, torch-pruning
can trace it, the budgets are reachable, and the dense model exports and verifies.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from compressor import latency, pruning, quantize
from compressor.budgets.kinds import BudgetConfig, BudgetRequest, check_reachable, wall_budgets
from compressor.budgets.wall import Budget
from compressor.errors import UserError
from compressor.flags import choices, flag
from compressor.io import export
from compressor.latency.decode import DecodeProbe, DecodeTables
from compressor.pipeline.decode import (
    budgeted_phases,
    decode_probe,
    load_or_measure_tables,
    phase_costs,
)
from compressor.pipeline.int8 import (
    Int8Plan,
    SearchedPrecision,
    chosen_precisions,
    find_sensitive_layers,
    plan_int8,
)
from compressor.pipeline.text import TextTask, TextTaskConfig, latency_example, text_dataset
from compressor.provenance import pick_device, seed_everything
from compressor.pruning.importance import importance_label
from compressor.pruning.skeleton import trace
from compressor.quantize import QuantizeConfig
from compressor.search import distributed
from compressor.search.agent import AgentConfig
from compressor.search.distributed import DistributedConfig
from compressor.search.env import REWARDS, PruningEnv
from compressor.search.evaluator import EpisodeEvaluator, EvaluatorConfig
from compressor.search.loop import LoopConfig, summary_writer_class
from compressor.training.train import TrainConfig
from compressor.zoo import baselines as baseline
from compressor.zoo import models
from compressor.zoo.datasets import DataConfig, Dataset, load_dataset
from compressor.zoo.text import TextConfig, load_corpus

log = logging.getLogger(__name__)

__all__ = ["BudgetConfig", "CompressConfig", "FinalConfig", "Workspace", "build_workspace",
           "check_method", "example_for", "make_env", "plan", "preflight", "prepare",
           "check_text_config", "real_batch", "search_fields", "text_workspace"]


@dataclass(frozen=True)
class FinalConfig:
    """What happens to the best policies after the search."""

    candidates: Annotated[int, flag("--candidates")] = 3
    """Best distinct policies (by reward) that get a short fine-tune; the best of them wins."""
    candidate_steps: Annotated[int, flag("--candidate-steps")] = 100
    """SGD steps of that short fine-tune (batch 64)."""
    epochs: Annotated[int, flag("--final-epochs")] = 1
    """Epochs of the winner's full fine-tune on the train split."""
    lr: Annotated[float, flag("--final-lr")] = 0.05
    """Peak learning rate of the full fine-tune (one-cycle)."""
    batch_size: int = 128
    """Batch size of the full fine-tune."""
    latency_blocks: int = 12
    """Alternating blocks of the final paired latency measurement."""
    recheck_rounds: int = 2
    """Extra paired rounds when a measurement lands within its block spread of a latency budget
    (the final one, and each of the fit's); the verdict then uses the median of all blocks, as
    `compressor check` does (one window of this VM moved one network's ratio ~7%;
    docs/latency.md, "Noise")."""
    fit: Annotated[bool, flag("--fit")] = True
    """Rescale each candidate until it measures at least `margin` under the latency budget and no
    more than 12% under it (`compressor.latency.fit`). It measures, so the final policy can differ
    between runs by that factor; off, the policy is exactly the search's (over-budget ones are
    rejected)."""


@dataclass(frozen=True)
class CompressConfig:
    """One compress run, as resolved from the command line or `compressor.compress`; saved with it."""

    model: str = "resnet18"
    """torchvision name, `package.module:factory`, `path/file.py:factory`, or "user" (API)."""
    seed: int = 0
    """Seed of the search, the agent and a baseline pretrained for it."""
    device: str = "auto"
    """auto (GPU when present), cpu, cuda, cuda:1."""
    models_dir: str = "models"
    """Cache of baseline checkpoints and latency models."""
    checkpoint: str | None = None
    """A baseline of ours, a state dict for `model`, or (trusted) a whole `torch.save(model)`."""
    trust_checkpoint: bool = False
    """Allow `checkpoint` to be a pickled module (unpickling runs the file's code)."""
    out: str | None = None
    """Run directory (None: runs/<run name>)."""
    policies_dir: str = "policies"
    """Where the policy file is written."""
    results_dir: str = "runs"
    """Each run's report and plots go to `<results_dir>/<run name>/`: by default beside the run's
    own files under runs/ (git-ignored); results/ holds the committed studies, not user runs."""
    tensorboard: str | None = None
    """A directory for the search's per-episode TensorBoard scalars (needs the `tensorboard`
    extra); None: episodes.jsonl only."""
    method: Annotated[str, flag("--agent"), choices(method_names())] = "ddpg"
    """Search method: ddpg (the AMC agent), random, greedy (sensitivity), uniform, global
    (torch-pruning's global ranking)."""
    max_ratio: float = 0.8
    """Largest pruning ratio of any unit."""
    reward: Annotated[str, choices(REWARDS)] = "error"
    """What an episode's reward is: error (under a hard budget), error-log-flops (AMC's
    R_FLOPs, for searches without one), cross-entropy (a causal LM's: minus the held-out
    next-token cross-entropy; what a text model's runs resolve to)."""
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    pruning: pruning.PruningConfig = field(default_factory=pruning.PruningConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    """DDPG settings; the warm-up and seed left None follow the episodes and the run's seed
    (`resolved`)."""
    final: FinalConfig = field(default_factory=FinalConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    """INT8 of the shipped model (off by default); with it the search sees INT8 latency."""
    probe: latency.ProbeSettings = field(default_factory=latency.ProbeSettings)
    """How latency is measured; the network's input decides the shape (`data.input_size`)."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Where episodes are scored: in-process (default) or on Ray workers (`--workers`)."""
    text: TextConfig = field(default_factory=TextConfig)
    """A causal LM's corpus (gpt_tiny: the standard library's source, split by module)."""
    lm: TextTaskConfig = field(default_factory=TextTaskConfig)
    """How a causal LM is scored, recovered and timed (`pipeline.text`)."""

    @property
    def task(self) -> str:
        """"text" for a causal LM of ours, else "image"."""
        return models.task_of(self.model)

    def resolved(self) -> CompressConfig:
        """Every derived default made explicit, so the saved config says what ran. A causal LM
        runs on the stdlib corpus with the cross-entropy reward, timed at batch 1 (a prefill)."""
        agent = (self.agent or AgentConfig()).resolved(self.loop.episodes, self.seed)
        config = replace(self, agent=agent,
                         probe=replace(self.probe, input_size=self.data.input_size))
        return config.for_text() if self.task == "text" else config

    def for_text(self) -> CompressConfig:
        """A causal LM's defaults where this config has the image ones: the stdlib corpus, the
        cross-entropy reward, latency at batch 1."""
        data = replace(self.data, dataset=baseline.TEXT_DATASET) \
            if self.data.dataset in (DataConfig().dataset, "user") else self.data
        return replace(self, data=data,
                       reward="cross-entropy" if self.reward == "error" else self.reward,
                       probe=replace(self.probe, batch_size=self.probe.batch_size or 1))

    @property
    def run_name(self) -> str:
        name = self.model.replace(":", "-").replace("/", "_").removesuffix(".py")
        parts = [name, self.data.dataset.replace(":", "-").replace("/", "_")]
        b = self.budget
        for tag, value in (("lat", b.latency), ("ms", b.latency_ms), ("flops", b.flops),
                           ("params", b.params), ("decode", b.decode), ("prefill", b.prefill)):
            if value is not None:
                parts.append(f"{tag}{value:g}")
        if self.method != "ddpg":
            parts.append(self.method)
        parts.append(f"s{self.seed}")
        return "-".join(parts)


def search_fields(config: CompressConfig) -> dict:
    """The settings a resumed search must share with the original (not outputs or final stage)."""
    d = asdict(config)
    # A plug-in importance object is saved by its stable label (str() holds its address).
    d["pruning"]["importance"] = importance_label(config.pruning.importance)
    for key in ("out", "policies_dir", "results_dir", "tensorboard", "device", "final"):
        d.pop(key)
    if config.task != "text":  # an image search does not read them (older runs still resume)
        d.pop("text")
        d.pop("lm")
    elif config.budget.decode is None and config.budget.prefill is None:
        for key in ("decode", "decode_grid_points", "decode_table_runs"):  # nor this one those
            d["lm"].pop(key)
    # Where episodes run does not change them, but the batch they are proposed in (one episode
    # per worker) does; serial runs keep the fields they had before workers existed.
    workers = d.pop("distributed")["workers"]
    if workers > 1:
        d["rollout_batch"] = workers
    return d


@dataclass
class Workspace:
    """Everything a search and the final stage share, built once per run."""

    config: CompressConfig
    dataset: Dataset
    dense: nn.Module
    meta: dict
    """What is known of the dense model: test_top1 when measured, the checkpoint's metadata."""
    example: torch.Tensor
    """One input example (batch 1) shaped as the model takes it."""
    skeleton: pruning.Skeleton
    latency_ratio: Callable[[dict[str, float]], float]
    """Policy -> the latency model's predicted ratio of the dense latency."""
    probe: latency.Probe
    request: BudgetRequest
    budgets: list[Budget]
    evaluator: EpisodeEvaluator
    device: torch.device
    dense_export: export.ExportReport
    times: dict[str, float] = field(default_factory=dict)
    test_score: Callable[[nn.Module], float] | None = None
    """A user's `evaluate` for the reported numbers; None: top-1 on the test split."""
    finetune: Callable[[nn.Module, int], None] | None = None
    """A user's `finetune(model, steps)`; None: the cross-entropy recipe."""
    model_spec: str | None = None
    """How the base model is rebuilt (a torchvision name), for reloading pruned checkpoints."""
    progress: bool = True
    """Progress bars (the CLI); the API turns them off unless asked."""
    int8: Int8Plan | None = None
    """With --quantize int8 or mixed: the format chosen here, the INT8 tables and curve."""
    text: TextTask | None = None
    """A causal LM's scoring and recoveries (`pipeline.text`); None for an image model."""
    decode_tables: dict[str, DecodeTables] = field(default_factory=dict)
    """A causal LM's decode / prefill tables, by phase, for the budgets given of those kinds."""
    decode_probe: DecodeProbe | None = None
    """With decode / prefill tables: the paired probe of their phases (the final stage's fit)."""

    def budget_cost(self, policy: dict[str, float]) -> float:
        """max over budgets of cost / limit: <= 1 meets every budget."""
        from compressor.search.methods import budget_cost

        return budget_cost(self.skeleton, self.budgets, policy)


def _costs(skeleton: pruning.Skeleton, latency_ratio,
           decode_tables: dict[str, DecodeTables] | None = None) -> dict[str, Callable]:
    """Each budget kind's cost of a ratio vector; decode and prefill only with their tables (a
    causal LM's, `pipeline.decode`)."""
    dense_macs, dense_params = skeleton.macs({}), skeleton.params({})
    as_policy = skeleton.policy_from_vector
    return {"latency": lambda v: latency_ratio(as_policy(v)),
            "flops": lambda v: skeleton.macs(as_policy(v)) / dense_macs,
            "params": lambda v: skeleton.params(as_policy(v)) / dense_params,
            **phase_costs(skeleton, decode_tables or {})}


class Plan:
    """What preflight found: the skeleton, latency model and budgets of an architecture."""

    def __init__(self, skeleton, latency_model, request: BudgetRequest, budgets: list[Budget],
                 int8: Int8Plan | None = None,
                 decode_tables: dict[str, DecodeTables] | None = None):
        self.skeleton, self.latency_model = skeleton, latency_model
        self.request, self.budgets, self.int8 = request, budgets, int8
        self.decode_tables = decode_tables or {}

    def latency_ratio(self, policy: dict[str, float]) -> float:
        """The predicted ratio of the dense FP32 latency for `policy`: the latency model's, and
        with INT8 that of the INT8 model (`Int8Plan.ratio`, the policy's chosen precisions)."""
        shapes = self.skeleton.layer_shapes(policy)
        if self.int8 is not None and self.int8.format is not None:
            return self.int8.ratio(shapes, chosen_precisions(self.skeleton, policy))
        return self.latency_model.predict_ratio(shapes)


def plan(model: nn.Module, example: torch.Tensor, config: CompressConfig, cache_name: str,
         say=log.info) -> Plan:
    """Units, latency model and budgets of `model`'s architecture (weights do not matter).
    Attention is timed in the explicit form every pruned copy has (torchvision's fused kernel
    does not even export)."""
    if pruning.has_attention(model):
        model = pruning.explicit_attention(model.eval(), example)
    skeleton = pruning.build_skeleton(model, example, config.pruning)
    latency_model = latency.load_or_build(
        Path(config.models_dir) / "latency", cache_name, model, example, config.probe,
        round_to=config.pruning.round_to, skeleton=skeleton, say=say)
    request = BudgetRequest.from_config(config.budget, latency_model.dense_ms)
    int8 = None
    if config.quantize.enabled:
        say("measuring what INT8 is worth here (formats, then the INT8/FP32 curve)")
        settings = replace(config.probe, batch_size=latency_model.batch_size)
        int8 = replace(plan_int8(model, example, skeleton, config.quantize, settings,
                                 config.max_ratio, config.pruning), fp32_tables=latency_model)
        if int8.format is not None:
            int8 = replace(int8, tables=latency.load_or_build(
                Path(config.models_dir) / "latency", cache_name, model, example, settings,
                round_to=config.pruning.round_to, say=say, quantize=int8.quantizer(),
                precision=int8.format.name))
    phases = budgeted_phases(request.limits())
    tables = {}
    if phases and not example.is_floating_point():  # token ids: a causal LM's KV-cache graph
        tables = load_or_measure_tables(
            model, example, phases, config.lm.decode, config.probe, config.pruning.round_to,
            config.lm.decode_grid_points, config.lm.decode_table_runs,
            Path(config.models_dir) / "latency", cache_name, say)
    found = Plan(skeleton, latency_model, request, [], int8, tables)
    set_budgets(found, config, say)
    return found


def set_budgets(found: Plan, config: CompressConfig, say=log.info) -> None:
    """The action wall's budgets on the plan's latency ratio, checked reachable.

    INT8 can be slower than FP32 on heavily pruned networks (mobilenet_v2's depthwise convs here:
    1.37x FP32 at the maximum ratio), so a budget FP32 reaches may be out of INT8's reach: the run
    then ships FP32, as when no format beats FP32, rather than being refused.
    """
    def check() -> None:
        found.budgets = wall_budgets(found.request, _costs(found.skeleton, found.latency_ratio,
                                                           found.decode_tables),
                                     config.budget.margin)
        check_reachable(found.request, found.budgets, len(found.skeleton.units),
                        config.max_ratio, config.budget.margin)
    try:
        check()
    except UserError as exc:
        if found.int8 is None or found.int8.format is None:
            raise
        reason = str(exc).split(";")[0]
        found.int8 = replace(found.int8, unreachable=f"in INT8 the {reason}: shipping FP32")
        say(found.int8.unreachable)
        check()


def preflight(config: CompressConfig, dataset: Dataset, say=log.info) -> Plan:
    """Every cheap check on an untrained instance, before any pretraining: name, input size,
    traceability, budget feasibility. Returns what it built (the latency model is cached)."""
    models.check_model_name(config.model)
    untrained = models.build_model(config.model, dataset.num_classes).eval()
    example = example_for(dataset)
    models.check_input_size(untrained, example, config.model)
    return plan(untrained, example, config, config.model, say)


def check_compressible(model_name: str, num_classes: int, input_size: int) -> None:
    """A baseline is pretrained to be compressed: an untrained instance that refuses the input
    size or that torch-pruning cannot trace is refused in seconds, before the epochs are spent."""
    models.check_model_name(model_name)
    untrained = models.build_model(model_name, num_classes).eval()
    example = torch.zeros(1, 3, input_size, input_size)
    models.check_input_size(untrained, example, model_name)
    trace(untrained, example, pruning.PruningConfig())


def example_for(dataset: Dataset) -> torch.Tensor:
    """One zero input shaped like the dataset's images (batch 1)."""
    images = next(iter(dataset.test.batches(1, limit=1)))[0]
    return torch.zeros(1, *images.shape[1:])


def build_workspace(config: CompressConfig, dataset: Dataset, dense: nn.Module, meta: dict,
                    example: torch.Tensor, *, cache_name: str, plan_: Plan | None = None,
                    score: Callable[[nn.Module], float] | None = None,
                    test_score: Callable[[nn.Module], float] | None = None,
                    finetune: Callable[[nn.Module, int], None] | None = None,
                    model_spec: str | None = None, say=log.info) -> Workspace:
    """Skeleton, latency model, budgets, the verified dense export, the probe and the evaluator."""
    times: dict[str, float] = {}
    device = pick_device(config.device)
    dense = dense.cpu().eval()
    if pruning.has_attention(dense):  # the form every pruned copy has, checked equal (exportable)
        dense = pruning.explicit_attention(dense, example)
    t = time.time()
    # The dense reference is exported and verified first: a model that cannot be exported is
    # refused in seconds, not after the search.
    models.check_finite_outputs(dense, real_batch(dataset, example), f"the {config.model} baseline")
    with tempfile.TemporaryDirectory() as scratch:
        dense_export = export.export_onnx(dense, real_batch(dataset, example),
                                          Path(scratch) / "dense.onnx")
        dense_onnx = Path(dense_export.path).read_bytes()  # INT8's accuracy check quantizes it
    p = plan_ or plan(dense, example, config, cache_name, say)
    if p.int8 is not None and p.int8.format is not None:
        say("quantizing the dense network to find the layers INT8 costs accuracy on")
        p.int8 = find_sensitive_layers(
            p.int8, dense_onnx, [s.name for s in p.skeleton.dense_shapes], dataset, config.seed)
        if p.int8.sensitive:
            say(f"kept FP32 in every policy (INT8 costs accuracy there): "
                f"{', '.join(p.int8.sensitive)}")
            set_budgets(p, config, say)  # the search's ratios now price them FP32
    settings = replace(config.probe, batch_size=p.latency_model.batch_size)
    # With INT8 every probe (and the final stage's candidate fit) times the INT8 model.
    convert = p.int8.converter((settings.batch_size, *example.shape[1:]), example) \
        if p.int8 is not None and p.int8.format else None
    probe = latency.Probe(dense, example, settings, convert=convert)
    times["latency_model"] = time.time() - t
    # Every probe is observed (its bias logged); with --probe-correction the wall sees the
    # corrected prediction.
    correction = latency.ProbeCorrection(p.latency_ratio, p.skeleton.names,
                                         enabled=config.budget.probe_correction)
    latency_ratio = correction
    if correction.enabled:
        p.budgets = wall_budgets(p.request, _costs(p.skeleton, correction, p.decode_tables),
                                 config.budget.margin)
    source_probe = config.budget.latency_source == "probe"
    searched = None
    if p.int8 is not None and p.int8.format is not None and p.int8.config.searched \
            and p.int8.tables is not None:
        searched = SearchedPrecision(
            p.int8, p.skeleton, example,
            quantize.calibration_batches(dataset.train, p.int8.config, config.seed),
            dataset.search.subset(config.evaluator.search_images).batches(250))
    evaluator = EpisodeEvaluator(
        dense, p.skeleton, example, config.pruning, config.evaluator, dataset, device,
        latency_ratio=latency_ratio, probe=probe,
        probe_every=1 if source_probe else config.budget.probe_every,
        latency_limit=p.request.latency if source_probe else None, score=score,
        finetune=finetune, int8=searched, correction=correction)
    return Workspace(config, dataset, dense, meta, example, p.skeleton, latency_ratio, probe,
                     p.request, p.budgets, evaluator, device, dense_export, times,
                     test_score=test_score, finetune=finetune, model_spec=model_spec,
                     int8=p.int8, decode_tables=p.decode_tables,
                     decode_probe=decode_probe(dense, config.lm.decode, config.probe)
                     if p.decode_tables else None)


def real_batch(dataset: Dataset, example: torch.Tensor) -> torch.Tensor:
    """Up to 16 real test images for export parity (zeros only when the split yields none)."""
    for images, _ in dataset.test.batches(16, limit=1):
        return images
    return example


def prepare(config: CompressConfig, say=log.info) -> Workspace:
    """The command line's path: embedded dataset, preflight, baseline (pretrained once), workspace."""
    t0 = time.time()
    if config.tensorboard is not None:
        summary_writer_class()  # a missing optional dependency is refused before any work
    distributed.check(config.distributed)  # so are a missing Ray and an unreachable cluster
    seed_everything(config.seed)
    if config.task == "text":
        return prepare_text(config, t0, say)
    dataset = load_dataset(config.data)
    checked = preflight(config, dataset, say) if config.checkpoint is None else None
    dense, meta = baseline.load_or_pretrain(
        config.model, dataset, config.data, TrainConfig(seed=config.seed),
        config.models_dir, pick_device(config.device), config.checkpoint, say=say,
        trust_checkpoint=config.trust_checkpoint)
    loaded = time.time() - t0
    # A whole pickled module cannot be rebuilt from its name: its pruned checkpoint needs it.
    spec = None if meta.get("full_module") else config.model
    ws = build_workspace(config, dataset, dense, meta, example_for(dataset),
                         cache_name=config.model, plan_=checked, model_spec=spec, say=say)
    # Preflight's INT8 measurement is its own line in the report, not part of the baseline's.
    int8_seconds = checked.int8.seconds if checked is not None and checked.int8 else 0.0
    ws.times = {"baseline": loaded - int8_seconds, **ws.times}
    if int8_seconds:
        ws.times["int8_plan"] = int8_seconds
    return ws


def check_text_config(config: CompressConfig) -> CompressConfig:
    """What a causal LM's run cannot do yet, refused in one line before any work; returns
    `config` unchanged."""
    if config.data.dataset != baseline.TEXT_DATASET:
        raise UserError(f"{config.model} is a causal LM trained on the standard library's source: "
                        f"drop --dataset {config.data.dataset} (or pass --dataset "
                        f"{baseline.TEXT_DATASET}); --text.root picks another directory of .py files")
    if config.reward != "cross-entropy":
        raise UserError(f"--reward {config.reward} scores classifiers; a causal LM's reward is "
                        "cross-entropy (drop --reward)")
    if config.quantize.enabled:
        raise UserError("--quantize is not supported for causal LMs yet; drop it")
    if config.distributed.workers > 1:
        raise UserError("--workers is not supported for causal LMs yet; drop it")
    return config


def prepare_text(config: CompressConfig, t0: float, say=log.info) -> Workspace:
    """A causal LM's path: the corpus, preflight on an untrained instance, the baseline
    (pretrained once), its test perplexity on this run's test windows, the workspace with the
    text task's score and recoveries (`pipeline.text`)."""
    check_text_config(config)
    models.check_model_name(config.model, task="text")
    device = pick_device(config.device)
    corpus = load_corpus(config.text)
    untrained = models.build_model(config.model, corpus.vocab_size).eval()
    context = untrained.context
    example = latency_example(config.lm.latency_workload, context)
    dataset = text_dataset(corpus, context)
    models.check_input_size(untrained, example, config.model)
    checked = plan(untrained, example, config, config.model, say) \
        if config.checkpoint is None else None
    dense, meta = baseline.load_or_pretrain_lm(config.model, corpus, config.models_dir, device,
                                               config.checkpoint, seed=config.seed, say=say)
    loaded = time.time() - t0
    ws = text_workspace(config, dataset, context, dense, meta, cache_name=config.model,
                        plan_=checked, model_spec=config.model, say=say)
    ws.times = {"baseline": loaded, **ws.times}
    return ws


def text_workspace(config: CompressConfig, dataset: Dataset, context: int, dense: nn.Module,
                   meta: dict, *, cache_name: str, plan_: Plan | None = None,
                   model_spec: str | None = None, say=log.info) -> Workspace:
    """`build_workspace` for a causal LM (the command line's and the API's): the dense model's
    test score once, the text task's score, recovery and final fine-tune in the hooks."""
    task = TextTask(dataset, context, config.lm, pick_device(config.device))
    dense_test = task.test(dense.eval())
    say(f"dense model: test perplexity {dense_test.perplexity:.3f} "
        f"({dense_test.bits_per_token:.3f} bits/token) over {dense_test.tokens} tokens")
    meta = {**meta, "test_top1": dense_test.top1, "lm_test": dense_test._asdict()}
    example = latency_example(config.lm.latency_workload, context)
    ws = build_workspace(config, dataset, dense, meta, example, cache_name=cache_name,
                         plan_=plan_, score=task.score, test_score=task.test_top1,
                         finetune=task.recover, model_spec=model_spec, say=say)
    ws.finetune = task.final_finetune  # the evaluator recovers, the final stage fine-tunes
    ws.text = task
    return ws


def make_env(ws: Workspace, extra_features=None) -> PruningEnv:
    """The search's environment; `extra_features`: one row per unit appended to its state."""
    sk = ws.skeleton
    dense_macs = sk.macs({})
    return PruningEnv(sk.units, lambda v: sk.macs(sk.policy_from_vector(v)) / dense_macs,
                      ws.budgets, ws.evaluator, ws.config.max_ratio, ws.config.reward,
                      extra_features=extra_features,
                      precision_budgets=precision_budgets(ws) if ws.evaluator.int8 else None)


def precision_budgets(ws: Workspace) -> Callable[[dict[str, bool]], list[Budget]]:
    """Decided unit precisions -> the wall's budgets with them priced (`--quantize searched`)."""
    def budgets(decided: dict[str, bool]) -> list[Budget]:
        keys = {pruning.precision_key(unit): float(int8) for unit, int8 in decided.items()}
        return wall_budgets(ws.request, _costs(ws.skeleton, lambda policy: ws.latency_ratio(
            {**policy, **keys}), ws.decode_tables), ws.config.budget.margin)
    return budgets


def method_names() -> tuple[str, ...]:
    """The search methods' registry names (read when the command line is built)."""
    from compressor.search.methods import METHODS

    return tuple(METHODS)


def check_method(name: str) -> None:
    from compressor.search.methods import get_method

    get_method(name)

