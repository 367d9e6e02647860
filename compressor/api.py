"""The Python API: your own `nn.Module` and data in, a pruned module measured against a budget out.

    import compressor
    result = compressor.compress(model, train=train_loader, val=val_loader,
                                 latency_budget=0.5, method="greedy", out="compressed/")
    result.model            # the pruned, fine-tuned nn.Module
    result.latency_ratio    # measured ONNX Runtime latency / the dense model's
    result.paths["onnx"]    # what was written (nothing is written without `out`)

Smaller pieces compose the same way: `units`, `apply_policy`, `export_onnx`, `measure_latency`,
`check_budget`.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor import latency, pruning
from compressor.budgets.kinds import BudgetConfig, Check
from compressor.errors import UserError
from compressor.io.export import ExportReport
from compressor.io.export import export_onnx as _export_onnx
from compressor.pipeline import compress as pipeline
from compressor.pipeline.data import first_batch, user_dataset
from compressor.pipeline.final import test_score
from compressor.pipeline.text import text_dataset
from compressor.provenance import seed_everything
from compressor.search import distributed
from compressor.search.evaluator import checked_score
from compressor.search.loop import LoopConfig
from compressor.zoo import models
from compressor.zoo.text import TextCorpus

log = logging.getLogger("compressor")


@dataclass
class CompressResult:
    """What `compress` produced."""

    model: nn.Module
    """The pruned and fine-tuned module (CPU, eval mode)."""
    policy: dict[str, float]
    """{unit name: pruning_ratio} of the shipped model."""
    latency_ratio: float
    """Measured ONNX Runtime latency as a ratio of the dense model's (paired, same window)."""
    top1: float
    """Test top-1 (%) of the pruned model, or your `evaluate` on it."""
    baseline_top1: float
    """The same number for the dense model you passed in."""
    verdict: str
    """"within budget" or "OVER BUDGET"."""
    checks: dict[str, Check]
    """Every budget: measured value, limit, ok."""
    evaluations: int
    """Policies the search evaluated."""
    search_seconds: float
    paths: dict[str, Path] = field(default_factory=dict)
    """onnx (what ships; with quantize="int8" the INT8 file, and fp32_onnx beside it), dense_onnx,
    checkpoint, policy, report: only when `out` was given."""
    report: dict[str, Any] = field(default_factory=dict)
    """Everything report.json holds."""
    perplexity: float | None = None
    """A causal LM's test perplexity (`top1` is then its next-token top-1); None otherwise."""
    baseline_perplexity: float | None = None
    """The dense causal LM's test perplexity on the same windows."""


def _num_classes(model: nn.Module, example: torch.Tensor) -> int:
    """The model's class count from one forward pass, or a one-line error naming the fix."""
    try:
        with torch.no_grad():
            out = copy.deepcopy(model).cpu().eval()(example)
    except Exception as exc:  # a user's model refusing our input: say so in one line
        raise UserError(f"the model refused an input of shape {tuple(example.shape)} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); pass "
                        "example_input= shaped as the model takes it") from None
    logits = models.named_logits(out)
    if logits is None or logits.dim() != 2:
        shape = tuple(logits.shape) if logits is not None else type(out).__name__
        raise UserError(f"the model returns {shape}, not [batch, classes] logits; compressor "
                        "prunes classifiers (wrap the model so forward returns logits)")
    return int(logits.shape[1])


def _classifier(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """`model`, or `models.LogitsOf(model)` when its output only names the logits (said in the
    log): the rest of the package sees a model returning the bare logits tensor."""
    with torch.no_grad():
        out = copy.deepcopy(model).cpu().eval()(example)
    if isinstance(out, torch.Tensor):
        return model
    log.info("%s returns a %s: compressing its logits (units are named model.<layer>)",
             type(model).__name__, type(out).__name__)
    return models.LogitsOf(model)


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, models.LogitsOf) else model


def _on_unwrapped(fn: Callable | None) -> Callable | None:
    """A user's `evaluate` / `finetune`, handed the model they wrote rather than its wrapper."""
    return None if fn is None else lambda model, *args: fn(_unwrapped(model), *args)


def _user_model(model: nn.Module, example: torch.Tensor, evaluate: Callable | None,
                finetune: Callable | None) -> tuple[nn.Module, Callable | None, Callable | None]:
    """A CPU copy of the user's model as the package sees it (`_classifier`), and their scorer
    and fine-tune, which are handed the model as they wrote it."""
    dense = _classifier(copy.deepcopy(model).cpu().eval(), example)
    if isinstance(dense, models.LogitsOf):
        return dense, _on_unwrapped(evaluate), _on_unwrapped(finetune)
    return dense, evaluate, finetune


def compress(model: nn.Module, *, train: Any, val: Any | None = None, test: Any | None = None,
             example_input: torch.Tensor | None = None, latency_budget: float | None = None,
             latency_ms: float | None = None, flops_budget: float | None = None,
             params_budget: float | None = None, method: str = "ddpg", episodes: int = 200,
             evaluate: Callable[[nn.Module], float] | None = None,
             finetune: Callable[[nn.Module, int], None] | None = None,
             final_epochs: int = 1, out: str | Path | None = None, seed: int = 0,
             device: str = "auto", progress: bool = False, quantize: str = "none",
             workers: int | None = None,
             config: pipeline.CompressConfig | None = None) -> CompressResult:
    """Prune `model` to a budget, fine-tune the best policy, export and measure it.

    Args:
        model: any `nn.Module` returning [batch, classes] logits, or a causal LM mapping token
            ids [batch, tokens] to logits [batch, tokens, vocab] (with a `TextCorpus` as
            `train`); it is not modified.
        train: training data, a DataLoader of (images, labels) or an (images, labels) tensor
            pair: BatchNorm recalibration, short fine-tunes and the final fine-tune read it. For
            a causal LM a `compressor.zoo.text.TextCorpus` (`load_corpus`), whose validation
            windows score the search (minus cross-entropy) and test windows the reported
            perplexity; `example_input` (token ids [1, context]) or `model.context` gives the
            window length.
        val: data the search scores policies on (default: 10% carved from tensor `train`).
        test: data of the reported numbers (default: `val`).
        example_input: one input batch shaped as the model takes it (default: from `train`).
        latency_budget / latency_ms / flops_budget / params_budget: at least one budget; ratios
            of the dense model (latency measured with ONNX Runtime on this machine).
        method: ddpg (the AMC agent), random, greedy (sensitivity), uniform, global.
        episodes: policies the ddpg and random searches evaluate.
        evaluate: `evaluate(model) -> float` (higher is better) replacing top-1 on `val`/`test`
            for the search and the reported numbers, for models that are not plain classifiers.
        finetune: `finetune(model, steps)` replacing the cross-entropy fine-tunes.
        final_epochs: epochs of the winner's fine-tune over `train` (0: none).
        out: directory for the ONNX files, checkpoint, policy JSON and report; None writes
            nothing (temporary files are removed).
        progress: progress bars (tqdm) on stderr.
        quantize: "int8" ships an onnxruntime static INT8 model (format measured on this
            machine, calibrated on `train`); the search then sees INT8 latency and the budget
            stays a ratio of the dense FP32 model. "mixed": each layer INT8 or FP32, whichever
            the latency model prices faster at its pruned shape. "searched": the agent chooses
            each unit's precision (HAQ-style) and scores episodes on the INT8 network, 1.4-1.6x
            mixed's search time for a tie with it (results/int8-v3). "none" (default) ships FP32.
        workers: Ray workers scoring the search's episodes in parallel (needs
            `pip install 'compressor[distributed]'`; the cluster and threads per worker are
            `config.distributed`'s); None: `config`'s, by default 1 (in-process, no Ray). The
            model, data and `evaluate`/`finetune` are sent to the workers, so they must pickle.
        config: every other setting (`compressor.pipeline.compress.CompressConfig`); the
            arguments above override its fields.

    Raises:
        UserError: bad input, with a one-line message naming the fix.
        InternalError: an internal check failed (work saved under `out` is kept).
    """
    from compressor.pipeline.job import run_job

    _check_arguments(model, method, evaluate, finetune)
    seed_everything(seed)
    text = isinstance(train, TextCorpus)
    if text:
        dataset, example = _text_data(model, train, val, test, example_input, evaluate, finetune)
    else:
        dataset, example = _user_data(model, train, val, test, example_input, evaluate)
    config = _resolved_config(
        config, example, seed=seed, device=device, method=method, episodes=episodes,
        budget={"latency": latency_budget, "latency_ms": latency_ms, "flops": flops_budget,
                "params": params_budget},
        final_epochs=final_epochs, quantize=quantize, workers=workers)
    if text:
        config = pipeline.check_text_config(config.for_text())
    distributed.check(config.distributed)  # before any work: Ray missing, cluster unreachable
    dense, score, finetune = _prepared_model(model, example, text, evaluate, finetune)
    with tempfile.TemporaryDirectory(prefix="compressor-") as scratch:
        root = Path(out) if out is not None else Path(scratch)
        config = replace(config, models_dir=str(root / "cache"), out=str(root / "run"),
                         results_dir=str(root), policies_dir=str(root))
        ws = _workspace(config, dataset, dense, example, type(model).__name__, text, score,
                        finetune)
        ws.progress = progress
        outcome = run_job(ws, root / "run", root, root / "policy.json")
    return _result(outcome, ws.meta["test_top1"], keep_paths=out is not None)


def _prepared_model(model: nn.Module, example: torch.Tensor, text: bool, evaluate: Any,
                    finetune: Any) -> tuple[nn.Module, Any, Any]:
    """A copy of the user's model as the job takes it, its checked score and its fine-tune."""
    if text:
        return copy.deepcopy(model).cpu().eval(), None, finetune
    dense, evaluate, finetune = _user_model(model, example, evaluate, finetune)
    return dense, checked_score(evaluate) if evaluate is not None else None, finetune


def _workspace(config: pipeline.CompressConfig, dataset: Any, dense: nn.Module,
               example: torch.Tensor, name: str, text: bool, score: Any, finetune: Any
               ) -> pipeline.Workspace:
    """The job's workspace: a causal LM's text task, or a classifier scored by `score`."""
    if text:
        return pipeline.text_workspace(config, dataset, int(example.shape[1]), dense, {},
                                       cache_name=name, say=log.info)
    ws = pipeline.build_workspace(config, dataset, dense, {}, example, cache_name=name,
                                  score=score, test_score=score, finetune=finetune,
                                  say=log.info)
    ws.meta["test_top1"] = test_score(ws, ws.dense)
    return ws


def _result(outcome: Any, baseline_top1: float | None, keep_paths: bool) -> CompressResult:
    search = outcome.run_report.search or {}
    lm = outcome.run_report.language_model or {}
    return CompressResult(
        model=_unwrapped(outcome.model), policy=outcome.policy,
        latency_ratio=outcome.latency_ratio,
        top1=outcome.test_top1, baseline_top1=baseline_top1, verdict=outcome.verdict,
        checks=outcome.checks, evaluations=search.get("evaluations", 0),
        search_seconds=search.get("seconds", 0.0),
        paths=outcome.paths if keep_paths else {}, report=outcome.report,
        perplexity=lm.get("test_perplexity"), baseline_perplexity=lm.get("dense_test_perplexity"))


def _text_data(model: nn.Module, corpus: TextCorpus, val: Any, test: Any,
               example_input: torch.Tensor | None, evaluate: Any, finetune: Any
               ) -> tuple[Any, torch.Tensor]:
    """A causal LM's corpus as the pipeline's dataset, and its prefill example (token ids
    [1, context]); the model is checked to map them to [1, context, vocab] logits."""
    if val is not None or test is not None or evaluate is not None or finetune is not None:
        raise UserError("with a TextCorpus as train= the corpus's own validation and test splits "
                        "score the model: drop val=, test=, evaluate= and finetune=")
    if example_input is not None:
        context = int(example_input.shape[-1])
    elif isinstance(getattr(model, "context", None), int):
        context = model.context
    else:
        raise UserError("pass example_input= token ids [1, context] (or give the model an int "
                        "`context` attribute): the window length the LM is scored and timed at")
    example = torch.zeros(1, context, dtype=torch.long)
    try:
        with torch.no_grad():
            logits = copy.deepcopy(model).cpu().eval()(example)
    except Exception as exc:
        raise UserError(f"the model refused token ids of shape {tuple(example.shape)} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); pass "
                        "example_input= shaped as the model takes it") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or \
            logits.shape[:2] != (1, context) or logits.shape[2] < corpus.vocab_size:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"the model returns {shape} for token ids [1, {context}], not logits "
                        f"[1, {context}, vocab >= {corpus.vocab_size}]; wrap it so forward "
                        "returns the logits tensor")
    return text_dataset(corpus, context), example


def _user_data(model: nn.Module, train: Any, val: Any | None, test: Any | None,
               example_input: torch.Tensor | None, evaluate: Any) -> tuple[Any, torch.Tensor]:
    """The user's data as a dataset with the model's class count, and a zero example input of
    one image (shaped as `example_input`, default: the first training batch's)."""
    dataset = user_dataset(train, val if val is not None or evaluate is None else train, test)
    if example_input is None:
        example_input = first_batch(dataset.train, "train")[0][:1]
    example = torch.zeros(1, *example_input.shape[1:])
    return replace(dataset, num_classes=_num_classes(model, example)), example


def _check_arguments(model: Any, method: str, evaluate: Any, finetune: Any) -> None:
    """`compress`'s arguments that can be refused before any work, one line each."""
    from compressor.pipeline.compress import check_method

    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    check_method(method)
    if evaluate is not None and not callable(evaluate):
        raise UserError("evaluate= must be a callable evaluate(model) -> float")
    if finetune is not None and not callable(finetune):
        raise UserError("finetune= must be a callable finetune(model, steps)")


def _resolved_config(config: pipeline.CompressConfig | None, example: torch.Tensor, *, seed: int,
                     device: str, method: str, episodes: int, budget: dict[str, float | None],
                     final_epochs: int, quantize: str, workers: int | None
                     ) -> pipeline.CompressConfig:
    """`config` (default: the defaults) with `compress`'s arguments in their sections, resolved."""
    base = config or pipeline.CompressConfig()
    return replace(
        base, model="user", seed=seed, device=device, method=method,
        data=replace(base.data, dataset="user", input_size=int(example.shape[-1])),
        budget=replace(base.budget, **budget),
        loop=replace(base.loop if config else LoopConfig(), episodes=episodes),
        final=replace(base.final, epochs=final_epochs),
        quantize=replace(base.quantize, mode=quantize),
        distributed=base.distributed if workers is None else
        replace(base.distributed, workers=workers)).resolved()


def units(model: nn.Module, example_input: torch.Tensor,
          config: pruning.PruningConfig | None = None) -> list[pruning.Unit]:
    """The coupled channel groups of `model`: one pruning decision each (the groups kept dense,
    with why, are `pruning.build_skeleton(...).excluded`; `compressor units MODEL` lists both).

    >>> import torchvision
    >>> [u.name for u in units(torchvision.models.resnet18(num_classes=10),
    ...                        torch.zeros(1, 3, 32, 32))][:2]
    ['conv1', 'layer1.0.conv1']
    """
    return list(pruning.build_skeleton(_classifier(model, example_input), example_input,
                                       config or pruning.PruningConfig()).units)


def apply_policy(model: nn.Module, policy: dict[str, float], example_input: torch.Tensor,
                 config: pruning.PruningConfig | None = None) -> nn.Module:
    """A pruned copy of `model`: `policy` maps unit names (see `units`) to pruning ratios.

        pruned = compressor.apply_policy(model, {"layer1.0.conv1": 0.5}, torch.zeros(1, 3, 32, 32))
    """
    return _unwrapped(pruning.apply_policy(_classifier(model, example_input), policy,
                                           example_input, config or pruning.PruningConfig()))


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> ExportReport:
    """Export to ONNX and verify it (onnx.checker, onnxruntime parity with PyTorch on the batch).

        report = compressor.export_onnx(pruned, images[:16], "pruned.onnx")
        report.relative_diff  # max |ONNX - PyTorch| / max |PyTorch output|
    """
    return _export_onnx(model, example_input, path)


def measure_latency(model: nn.Module, reference: nn.Module, example_input: torch.Tensor,
                    settings: latency.ProbeSettings | None = None) -> latency.PairedLatency:
    """`model`'s ONNX Runtime latency against `reference`'s, in alternating blocks.

        paired = compressor.measure_latency(pruned, model, torch.zeros(1, 3, 32, 32))
        paired.ratio  # < 1: faster than the reference
    """
    example = torch.zeros(1, *example_input.shape[1:])
    settings = settings or latency.ProbeSettings(batch_size=8)
    probe = latency.Probe(reference.cpu().eval(), example, settings)
    return probe.measure(model.cpu().eval())


def check_budget(model_onnx: str | Path, reference_onnx: str | Path, *,
                 max_latency_ratio: float | None = None, max_latency_ms: float | None = None,
                 settings: latency.ProbeSettings | None = None, rounds: int = 3) -> dict:
    """`compressor check` as a function: repeated paired rounds, the verdict and the report.

        report = compressor.check_budget("model.onnx", "dense.onnx", max_latency_ratio=0.5)
        report["verdict"]  # "pass" or "fail"
    """
    from compressor.pipeline.check import check

    return check(str(model_onnx), str(reference_onnx), settings or latency.ProbeSettings(),
                 max_latency_ratio=max_latency_ratio, max_latency_ms=max_latency_ms,
                 rounds=rounds)


__all__ = ["BudgetConfig", "CompressResult", "apply_policy", "check_budget", "compress",
           "export_onnx", "measure_latency", "units"]
