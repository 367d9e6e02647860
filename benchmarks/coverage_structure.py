"""Coverage, structure mode: does compressor decide every CNN's units, in seconds, without training?

For each model (a torchvision name, `timm:<name>` built by `timm.create_model(name,
num_classes=10)`, or `path/file.py:factory`), untrained, in a subprocess of its own with a
timeout (a crash, a hang or an endless tracer loop costs one row, never the run):

1. family: "transformer" when one forward pass multiplies two activations together (a matmul,
   bmm, einsum or attention op whose two operands both depend on the input: attention, linear
   attention, global-context pooling), else "cnn" (`family_of`);
2. the input: 32 px, or the model's own minimum when it refuses 32 (torchvision's recorded
   `min_size`; the row's `input_size` says which);
3. `compressor.pruning.build_skeleton` (trace, then every unit really pruned at 0.5 and checked
   against the prediction): `seconds_to_decide` is the wall time of the input check plus this;
   a UserError is a refusal;
4. a 0.5 pruning ratio on every searched unit (every second transformer block removed), both
   networks exported with
   `compressor.io.export.export_onnx` (onnx checker + parity against PyTorch on 8 random images),
   and one paired latency ratio pruned/dense with compressor's probe (1 thread, batch chosen for
   >= 10 ms, 4 blocks of 5 runs after 3 warm-up runs); for a transformer also the latency
   model's prediction of that ratio (`latency.predicted`; block tables built on untrained
   weights).

Status: `ok`, `partial` (ok, with groups kept dense), `refused` (a one-line UserError) or
`failed` (anything else: an exception, a parity failure, a timeout, a crash). `verdict` is null:
nothing is searched against a budget here. Rows (the format of `benchmarks.coverage.Row`) are
written to `--out` (a JSON list) after every model; a rerun skips models already there.

    python -m benchmarks.coverage --mode structure --source timm --out results/coverage/timm.json
    python -m benchmarks.coverage --mode structure --models resnet18 timm:ghostnet_100 \\
        --out /tmp/rows.json
    python -m benchmarks.coverage_structure --summarize /tmp/rows.json "A title" > rows.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TIMM = "timm:"
"""Prefix of a timm model name: `timm:ghostnet_100`."""
SIZE = 32
"""Input side every model is tried at first (Fashion-MNIST resized, the tool's default)."""
PRUNING_RATIO = 0.5
NUM_CLASSES = 10

TIMM_NOT_CNN = {
    **dict.fromkeys((
        "beit", "byoanet", "cait", "coat", "convit", "crossvit", "csatv2", "davit",
        "deepseek_vit", "deit", "edgenext", "efficientformer", "efficientformer_v2",
        "efficientvit_mit", "efficientvit_msra", "eva", "gcvit", "gemma4_vit", "hiera",
        "hieradet_sam2", "iformer", "levit", "lowformer", "maxxvit", "mobilenetv5", "mobilevit",
        "mvitv2", "naflexvit", "nest", "nextvit", "pit", "pvt_v2", "qwen3_vit", "shvit",
        "swiftformer", "swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr",
        "tiny_vit", "tnt", "twins", "visformer", "vision_transformer",
        "vision_transformer_hybrid", "vision_transformer_relpos", "vision_transformer_sam",
        "vitamin", "volo", "xcit"), "attention (vision transformers and hybrids)"),
    "mlp_mixer": "token-mixing MLPs (MLP-Mixer, ResMLP, gMLP)",
    "sequencer": "LSTM token mixing",
    "efficientvim": "state-space token mixing",
}
"""timm modules left out of the timm CNN list without building them, each with why. Modules that
mix CNNs and attention (byobnet, fastvit, metaformer, ...) stay in; `family_of` marks each model."""


@dataclass(frozen=True)
class StructureConfig:
    """What one structure-mode run does."""

    models: tuple[str, ...] = ()
    """Models to try; empty: the `source` list."""
    source: str = "torchvision"
    """torchvision (what `compressor models` lists) or timm (CNNs under `max_params`, sampled)."""
    out: str = "runs/bench/coverage/structure.json"
    """JSON list of rows, written after every model."""
    max_params: float | None = None
    """Models with at least this many parameters (10-class head) are left out; None: 100 M for
    torchvision, 30 M for timm."""
    sample: int = 0
    """timm: stop after this many CNN rows (0: every model of the population)."""
    seed: int = 0
    """timm: the population is shuffled with random.Random(seed) before sampling."""
    timeout: float = 300.0
    """Seconds one model may take (subprocess killed, row `failed`)."""
    rerun: bool = False
    """Run models again that already have a row in `out`."""


# ---------------------------------------------------------------------------------------------
# Models


def build(spec: str):
    """The untrained 10-class model `spec` names (torchvision, `timm:<name>` or a factory)."""
    if spec.startswith(TIMM):
        import timm

        return timm.create_model(spec[len(TIMM):], num_classes=NUM_CLASSES)
    from compressor.zoo.models import build_model

    return build_model(spec, NUM_CLASSES)


EXPORT_MIN_SIZE = {"alexnet": 223}
"""Smallest sides that export, where torchvision's recorded `min_size` does not: at 63 px
alexnet's features are 1x1 and its AdaptiveAvgPool2d((6, 6)) pools them *up* to 6x6, which the
ONNX exporter cannot write ("output size that are not factor of input size"); 223 px is the
smallest side giving the 6x6 map it pools to (no resampling at all)."""


def minimum_size(spec: str) -> int | None:
    """The smallest input side torchvision records for `spec`, or the smallest that exports
    (`EXPORT_MIN_SIZE`); None: none recorded."""
    if spec.startswith(TIMM) or ":" in spec:
        return None
    if spec in EXPORT_MIN_SIZE:
        return EXPORT_MIN_SIZE[spec]
    import torchvision

    try:
        size = torchvision.models.get_model_weights(spec).DEFAULT.meta.get("min_size")
    except (KeyError, ValueError, AttributeError):
        return None
    return max(size) if size else None


def family_of(model, example) -> str:
    """"transformer" when a forward pass of `model` on `example` multiplies two activations
    together (matmul, bmm, einsum, or an attention op, with two operands that depend on the
    input), else "cnn". Run with gradients on the input only, on a copy."""
    import copy

    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    attention_ops = {F.scaled_dot_product_attention, F.multi_head_attention_forward}
    products = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
                torch.Tensor.__rmatmul__, torch.bmm, torch.Tensor.bmm, torch.baddbmm,
                torch.Tensor.baddbmm, torch.einsum}

    def tensors(values):
        for v in values:
            if isinstance(v, torch.Tensor):
                yield v
            elif isinstance(v, (list, tuple)):
                yield from tensors(v)

    class Spy(TorchFunctionMode):
        found = False

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in attention_ops or (func in products and sum(
                    t.requires_grad for t in tensors([*args, *kwargs.values()])) >= 2):
                Spy.found = True
            return func(*args, **kwargs)

    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    x = example.clone().requires_grad_(True)
    with torch.enable_grad(), Spy():
        work(x)
    return "transformer" if Spy.found else "cnn"


# ---------------------------------------------------------------------------------------------
# One model, in the worker process


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:240]}"


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame, and of the innermost frame in compressor/."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""

    def at(frame) -> str:
        parts = Path(frame.filename).parts
        short = "/".join(parts[-3:]) if len(parts) >= 3 else frame.filename
        return f"{short}:{frame.lineno} in {frame.name}"

    ours = [f for f in frames if "/compressor/" in f.filename]
    places = [at(frames[-1])] + ([at(ours[-1])] if ours and ours[-1] is not frames[-1] else [])
    return " (at " + ", via ".join(places) + ")"


def excluded_macs_share(model, example, skeleton, config) -> float:
    """Share of the dense network's conv/linear MACs in the layers whose in or out channels the
    excluded groups set (each layer counted once, however many excluded groups touch it)."""
    import copy

    from compressor.pruning.shapes import measure_layer_shapes
    from compressor.pruning.skeleton import ROOT_TYPES, trace

    if not skeleton.excluded:
        return 0.0
    work = copy.deepcopy(model)
    traced = trace(work, example, config)
    names = traced.graph._module2name
    layers = {names[dep.target.module] for e in skeleton.excluded
              for dep, _ in traced.groups.get(e.name, ())
              if isinstance(dep.target.module, ROOT_TYPES)}
    shapes = measure_layer_shapes(work, example)
    total = sum(s.macs for s in shapes)
    return sum(s.macs for s in shapes if s.name in layers) / total if total else 0.0


def _exclusions_reason(excluded) -> str:
    """The exclusions' reasons, shortened: one example per kind of reason (the reason with every
    name and number taken out), with how many groups and which it kept dense."""
    kinds: dict[str, list] = {}
    for e in excluded:
        kinds.setdefault(re.sub(r"\S*\d\S*", "#", e.reason), []).append(e)
    parts = []
    for group in kinds.values():
        names = ", ".join(e.name for e in group[:2]) + (f" +{len(group) - 2}" if len(group) > 2
                                                         else "")
        parts.append(f"{len(group)} kept dense ({names}): {group[0].reason[:200]}")
    return "; ".join(parts[:3]) + (f"; +{len(parts) - 3} other kinds" if len(parts) > 3 else "")


def accepting_size(spec: str, model):
    """8 random images of the size the model runs on (32 px, else its minimum); a UserError when
    it runs on neither."""
    import torch

    from compressor.errors import UserError
    from compressor.zoo.models import check_input_size

    generator = torch.Generator().manual_seed(0)
    size = SIZE
    try:
        check_input_size(model, torch.zeros(1, 3, size, size), spec)
    except UserError:
        size = minimum_size(spec)
        if size is None or size <= SIZE:
            raise
        check_input_size(model, torch.zeros(1, 3, size, size), spec)
    return torch.randn(8, 3, size, size, generator=generator)


def decide(spec: str, save) -> dict:
    """One row for `spec`; `save(row)` is called after every stage so that a timeout or a crash
    leaves what was known (the harness marks it failed)."""
    import torch

    from compressor.errors import UserError

    torch.set_num_threads(1)
    torch.manual_seed(0)
    row: dict[str, Any] = {"model": spec, "mode": "structure", "status": "failed",
                           "step": "build", "verdict": None}
    save(row)
    model = build(spec).eval()
    row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    row["step"] = "input"
    save(row)
    started = time.monotonic()
    try:
        batch = accepting_size(spec, model)
    except UserError as exc:
        row.update(status="refused", reason=str(exc),
                   seconds_to_decide=round(time.monotonic() - started, 2))
        return row
    decide_seconds = time.monotonic() - started
    row["input_size"] = batch.shape[-1]
    row["family"] = family_of(model, batch[:1])
    row["step"] = "skeleton"
    save(row)
    return _decide_units(spec, model, batch, row, save, decide_seconds)


def _decide_units(spec: str, model, batch, row: dict, save, decide_seconds: float) -> dict:
    from compressor.errors import UserError
    from compressor.pruning import PruningConfig, build_skeleton

    config = PruningConfig()
    example = batch[:1]
    started = time.monotonic()
    try:
        skeleton = build_skeleton(model, example, config)
    except UserError as exc:
        row.update(status="refused", reason=str(exc),
                   seconds_to_decide=round(decide_seconds + time.monotonic() - started, 2))
        return row
    row["seconds_to_decide"] = round(decide_seconds + time.monotonic() - started, 2)
    row.update(units=len(skeleton.units), excluded_units=len(skeleton.excluded),
               reason=_exclusions_reason(skeleton.excluded) if skeleton.excluded else None,
               excluded_macs_share=round(excluded_macs_share(model, example, skeleton, config), 4),
               step="export")
    save(row)
    _export_and_time(model, batch, skeleton, config, row)
    row.update(status="partial" if skeleton.excluded else "ok", step=None)
    return row


def _export_and_time(model, batch, skeleton, config, row: dict) -> None:
    """Prune every unit at PRUNING_RATIO, export both networks with parity, time the pair."""
    from compressor.io.export import export_onnx
    from compressor.latency.probe import (
        ProbeSettings,
        make_session,
        measure_pair,
        resolve_batch_size,
    )
    from compressor.pruning import apply_policy, explicit_attention, has_attention

    example = batch[:1]
    policy = structure_policy(skeleton)
    pruned = apply_policy(model, policy, example, config).eval()
    if has_attention(model):  # the form pruned copies have (torchvision's fast path: no ONNX)
        model = explicit_attention(model, example)
    row["macs_ratio"] = round(skeleton.macs(policy) / skeleton.macs({}), 4)
    with tempfile.TemporaryDirectory(prefix="coverage-structure-") as tmp:
        dense = export_onnx(model, batch, Path(tmp) / "dense.onnx")
        small = export_onnx(pruned, batch, Path(tmp) / "pruned.onnx")
        row["parity"] = {"dense_relative_diff": dense.relative_diff,
                         "pruned_relative_diff": small.relative_diff}
        row["step"] = "latency"
        settings = ProbeSettings(threads=1, warmup=3, runs=5, blocks=4,
                                 input_shape=tuple(example.shape[1:]))
        reference = make_session(dense.path, settings)
        settings = resolve_batch_size(settings, reference)
        paired = measure_pair(make_session(small.path, settings), reference, settings)
    row["latency_ratio"] = round(paired.ratio, 4)
    row["latency"] = {"spread": [round(v, 4) for v in paired.spread],
                      "dense_ms": round(paired.reference_ms, 3),
                      "batch_size": settings.batch_size}
    if row.get("family") == "transformer":
        row["step"] = "latency model"
        row["latency"]["predicted"] = _predicted_ratio(model, example, skeleton, policy, settings,
                                                       config)


def structure_policy(skeleton) -> dict[str, float]:
    """PRUNING_RATIO on every unit; of transformer blocks every second one removed (all of them
    at that ratio would leave no encoder), as `verify_transformer_skeleton` prunes."""
    blocks = [u.name for u in skeleton.units if u.kind == "block"]
    policy = {u.name: PRUNING_RATIO for u in skeleton.units if u.kind != "block"}
    policy.update({name: PRUNING_RATIO if i % 2 else 0.0 for i, name in enumerate(blocks)})
    return policy


def _predicted_ratio(model, example, skeleton, policy, settings, config) -> float:
    """The latency model's ratio for `policy`, built on the row's own probe settings."""
    from compressor.latency.model import build_latency_model

    latency_model = build_latency_model(model, example, settings, config.round_to)
    return round(latency_model.predict_ratio(skeleton.layer_shapes(policy)), 4)


def worker(spec: str, out: Path) -> int:
    """Decide `spec` and write its row to `out` (also after every stage); a failure is a row."""
    from compressor.io import atomic

    row: dict[str, Any] = {}

    def save(current: dict) -> None:
        row.clear()
        row.update(current)
        atomic.write_json(out, current)

    try:
        decided = decide(spec, save)
    except Exception as exc:  # any failure is the row's finding
        decided = {**row, "status": "failed",
                   "reason": f"{_one_line(exc)} during {row.get('step', 'build')}"
                             f"{_where(exc)}"}
    atomic.write_json(out, decided)
    return 0


# ---------------------------------------------------------------------------------------------
# The harness


def run_isolated(spec: str, timeout: float) -> dict:
    """`worker(spec)` in a subprocess of its own session, killed after `timeout` seconds."""
    from benchmarks.coverage import _kill_group  # the harness's one way to end a child's group

    with tempfile.TemporaryDirectory(prefix="coverage-row-") as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, "-m", "benchmarks.coverage_structure", "--worker", spec,
                   "--row", str(out)]
        started = time.monotonic()
        root = str(Path(__file__).resolve().parents[1])  # `benchmarks` importable from any cwd
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(Path(tmp) / "stderr", "wb") as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
                _kill_group(proc)
            except BaseException:
                _kill_group(proc)
                raise
        seconds = round(time.monotonic() - started, 1)
        row = json.loads(out.read_text()) if out.exists() else {"model": spec,
                                                                "mode": "structure"}
        stderr = (Path(tmp) / "stderr").read_text(errors="replace")
    step = row.get("step")
    if code is None:
        row.update(status="failed", reason=f"timed out after {timeout:.0f} s during {step}")
    elif code != 0:
        tail = [line for line in stderr.splitlines() if line.strip()][-1:] or [""]
        row.update(status="failed", reason=f"worker exited {code} during {step}: "
                                           f"{tail[0].strip()[:240]}")
    row["seconds"] = {"total": seconds}
    from benchmarks.coverage import Row

    return asdict(Row(**row))  # one row format for both modes: an unknown key is an error


def timm_population(max_params: float) -> tuple[list[str], dict[str, int]]:
    """timm's models outside `TIMM_NOT_CNN` with fewer than `max_params` parameters (10-class
    head, counted on the meta device), sorted; and how many were left out for each reason."""
    import timm
    import torch

    left_out: dict[str, int] = {}
    population = []
    for module in timm.list_modules():
        names = timm.list_models(module=module)
        if module in TIMM_NOT_CNN:
            left_out[TIMM_NOT_CNN[module]] = left_out.get(TIMM_NOT_CNN[module], 0) + len(names)
            continue
        for name in names:
            with torch.device("meta"):
                model = timm.create_model(name, num_classes=NUM_CLASSES)
            if sum(p.numel() for p in model.parameters()) < max_params:
                population.append(TIMM + name)
            else:
                key = f"{max_params / 1e6:.0f} M parameters or more"
                left_out[key] = left_out.get(key, 0) + 1
    return sorted(population), left_out


def torchvision_population(max_params: float) -> list[str]:
    from benchmarks.coverage import count_params, listed_models, split_by_size

    counts = {m: count_params(m, max_params) for m in listed_models()}
    return split_by_size(counts, max_params)[0]


def counts(rows: list[dict]) -> dict[str, Any]:
    """Counts per status of the CNNs and of the transformers, the CNN share ok or partial, and
    the slowest decision (seconds, model) among the CNNs and among every row."""
    def of(family: str) -> list[dict]:
        return [r for r in rows if (r.get("family") or "cnn") == family]

    def by_status(chosen: list[dict]) -> dict[str, int]:
        return {s: sum(r["status"] == s for r in chosen)
                for s in ("ok", "partial", "refused", "failed")}

    def slowest(chosen: list[dict]) -> list | None:
        timed = [(r["seconds_to_decide"], r["model"]) for r in chosen
                 if r.get("seconds_to_decide") is not None]
        return list(max(timed)) if timed else None

    cnn = by_status(of("cnn"))
    total = sum(cnn.values())
    return {"cnn": cnn, "transformer": by_status(of("transformer")),
            "cnn_share_ok_or_partial": (cnn["ok"] + cnn["partial"]) / total if total else None,
            "slowest_seconds_to_decide": {"cnn": slowest(of("cnn")), "all": slowest(rows)}}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: list[dict], title: str) -> str:
    """A table of `rows` (CNNs first, then transformers) under the counts of `counts`."""
    c = counts(rows)
    share = c["cnn_share_ok_or_partial"]
    lines = [f"# {title}", "",
             "CNNs: " + ", ".join(f"{v} {k}" for k, v in c["cnn"].items())
             + (f" ({share:.1%} ok or partial)" if share is not None else "")
             + "; transformers (not counted): "
             + ", ".join(f"{v} {k}" for k, v in c["transformer"].items()) + ".  ",
             "Slowest decision: " + "; ".join(f"{k} {v[0]:.1f} s ({v[1]})" for k, v in
                                               c["slowest_seconds_to_decide"].items() if v) + ".",
             "", "| model | family | status | px | seconds to decide | units | kept dense | "
             "their MACs share | MACs ratio at 0.5 | latency ratio at 0.5 | reason |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r.get("family") != "cnn", r["model"])):
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in (
            "model", "family", "status", "input_size", "seconds_to_decide", "units",
            "excluded_units", "excluded_macs_share", "macs_ratio", "latency_ratio", "reason"))
            + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> StructureConfig:
    d = StructureConfig()
    p = argparse.ArgumentParser(description="coverage, structure mode")
    p.add_argument("--models", nargs="+", default=[])
    p.add_argument("--source", choices=("torchvision", "timm"), default=d.source)
    p.add_argument("--out", default=d.out)
    p.add_argument("--max-params", type=float, default=None)
    p.add_argument("--sample", type=int, default=d.sample)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--timeout", type=float, default=d.timeout)
    p.add_argument("--rerun", action="store_true")
    a = p.parse_args(argv)
    return StructureConfig(tuple(a.models), a.source, a.out, a.max_params, a.sample, a.seed,
                           a.timeout, a.rerun)


def todo_list(config: StructureConfig) -> list[str]:
    """The models of this run, in the order they are run."""
    if config.models:
        return list(config.models)
    if config.source == "timm":
        population, left_out = timm_population(config.max_params or 30e6)
        print(f"timm population: {len(population)} models; left out: {left_out}", flush=True)
        random.Random(config.seed).shuffle(population)
        return population
    return torchvision_population(config.max_params or 100e6)


def write_rows(path: Path, rows: list[dict]) -> None:
    """A JSON list of rows, each in `Row`'s field order (the issue's fields first), atomically."""
    from compressor.io import atomic

    atomic.write_text(path, json.dumps(rows, indent=1) + "\n")


def outside_path(out: Path) -> Path:
    """Where a timm run lists the sampled models outside the list (they refuse 32 px)."""
    return out.with_name(out.stem + "-outside.json")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1], Path(argv[argv.index("--row") + 1]))
    if argv[:1] == ["--summarize"]:  # --summarize ROWS.json TITLE: the table, to stdout
        print(render_markdown(json.loads(Path(argv[1]).read_text()), " ".join(argv[2:]) or
                              argv[1]), end="")
        return 0
    config = parse_args(argv)
    out = Path(config.out)
    rows: list[dict] = json.loads(out.read_text()) if out.exists() else []
    sampling = config.source == "timm" and not config.models
    outside: list[dict] = json.loads(outside_path(out).read_text()) \
        if sampling and outside_path(out).exists() else []
    models = todo_list(config)
    print("python -m benchmarks.coverage --mode structure " + shlex.join(argv), flush=True)
    started = time.monotonic()
    for spec in models:
        if config.sample and sum(r.get("family") == "cnn" for r in rows) >= config.sample:
            break
        if not config.rerun and any(r["model"] == spec for r in rows + outside):
            continue
        row = run_isolated(spec, config.timeout)
        rows = [r for r in rows if r["model"] != spec]
        outside = [r for r in outside if r["model"] != spec]
        if sampling and row["status"] == "refused" and row["step"] == "input":
            outside.append(row)  # not in the list: it does not accept a 32-px input
            write_rows(outside_path(out), outside)
        else:
            rows.append(row)
            write_rows(out, rows)
        print(f"{spec}: {row['status']} ({row['family']}, {row['input_size']} px, decided in "
              f"{row['seconds_to_decide']} s, {row['excluded_units']} kept dense, ratio "
              f"{row['latency_ratio']}) {row['reason'] or ''}"
              f"  [{(time.monotonic() - started) / 60:.1f} min]", flush=True)
    print(json.dumps(counts(rows)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
