"""Coverage: does every torchvision CNN compress, or get refused up front, when a new user tries it?

For each model `compressor models` lists with fewer than `--max-params` parameters (counted on an
untrained 10-class build, on the meta device where torchvision allows it), the real CLI runs as a
subprocess in a temporary directory of its own, on a tiny baseline:

    compressor pretrain --model M --epochs 1 --train-size 2000 --test-size 1000
    compressor compress --model M --latency-budget 0.5 --episodes 8 --train-size 2000 \\
        --test-size 1000 --final-epochs 1 --candidates 1

Each model gets one row (`Row`): `ok`, `partial` (ok, with groups kept dense: the report's
kept_dense), `refused` (the CLI said no with a one-line message before training: pretrain exited 2,
or compress exited 2 within `--refuse-within` seconds) or `failed` (a traceback, exit 3, an
internal error, a late exit 2 after the search ran, a timeout, a kill). Rows land in
coverage.json and coverage.md in `--out` (default runs/bench/coverage) after every model, so an
interrupted run resumes.
It runs for hours and must have the machine to itself (latency is measured); not for CI.

    python -m benchmarks.coverage                        # every model under 100 M parameters
    python -m benchmarks.coverage --models squeezenet1_0 mobilenet_v3_small --out /tmp/cov

`--mode structure` runs `benchmarks.coverage_structure` instead (untrained models, no training:
the units decided, a 0.5 ratio exported and timed; minutes, not hours; torchvision or timm), in
the same row format:

    python -m benchmarks.coverage --mode structure --source timm --sample 60 \
        --out results/coverage/timm.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

GOAL = "Goal: no row is a failure; every refusal happens before training, in seconds"
INTERNAL_MARK = "rerun with --debug for the traceback"
"""What the CLI appends when it turns an unexpected exception into a one-line message."""


@dataclass(frozen=True)
class CoverageConfig:
    """What one coverage run does; saved in coverage.json beside the rows."""

    models: tuple[str, ...] = ()
    """Models to try (default: every model `compressor models` lists)."""
    max_params: float = 100e6
    """Models with at least this many parameters (10-class head) are skipped and listed."""
    out: str = "runs/bench/coverage"
    """Directory of coverage.json and coverage.md."""
    budget: float = 0.5
    """`--latency-budget` of every compress run."""
    timeout: float = 900.0
    """Seconds each CLI step may take before it is killed and the row marked failed."""
    refuse_within: float = 60.0
    """A compress exit 2 within this many seconds is a refusal; later, the search had run."""
    episodes: int = 8
    train_size: int = 2000
    test_size: int = 1000
    pretrain_epochs: int = 1
    final_epochs: int = 1
    candidates: int = 1
    data_dir: str | None = None
    """Passed as --data-dir (absolute) when set; by default the CLI looks where a new user's would."""
    rerun: bool = False
    """Run models again that already have a row in coverage.json."""
    keep: bool = False
    """Keep each model's temporary directory (its path goes in the row) instead of deleting it."""

    def run_settings(self) -> dict:
        """The settings a row depends on: rows made under other settings cannot be resumed."""
        return {k: getattr(self, k) for k in ("budget", "episodes", "train_size", "test_size",
                                              "pretrain_epochs", "final_epochs", "candidates")}


# ---------------------------------------------------------------------------------------------
# Parameter counts


class ParamCount(NamedTuple):
    params: int | None
    """None when the model could not be built here (it is run anyway: the CLI says why)."""
    source: str
    """'meta' (built on the meta device), 'cpu' (built for real), 'weights-metadata' (the
    1000-class count torchvision records, an upper bound, used for models too big to build) or
    the build error."""


def count_params(name: str, max_params: float = 100e6) -> ParamCount:
    """Parameters of `name` built untrained with 10 classes, as cheaply as torchvision allows.

    The meta device allocates nothing. RegNets compute their widths with tensors at construction
    and cannot be built there: they are built on the CPU unless torchvision's recorded 1000-class
    count already exceeds twice `max_params`, in which case that count (an upper bound) is used.
    """
    import torch
    import torchvision

    from compressor.zoo.models import build_model

    def total(model) -> int:
        return sum(p.numel() for p in model.parameters())

    try:
        with torch.device("meta"):
            return ParamCount(total(build_model(name, 10)), "meta")
    except Exception:  # RegNet: "Cannot copy out of meta tensor", construction reads a value
        pass
    try:
        recorded = int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except (KeyError, ValueError, AttributeError):
        recorded = None
    if recorded is not None and recorded > 2 * max_params:
        return ParamCount(recorded, "weights-metadata")
    return ParamCount(total(build_model(name, 10)), "cpu")


def split_by_size(counts: dict[str, ParamCount], max_params: float
                  ) -> tuple[list[str], list[str]]:
    """(models under `max_params`, models at or above it), each in the order given."""
    small = [m for m, c in counts.items() if c.params is None or c.params < max_params]
    large = [m for m, c in counts.items() if c.params is not None and c.params >= max_params]
    return small, large


# ---------------------------------------------------------------------------------------------
# Running one CLI step


@dataclass(frozen=True)
class Step:
    """One finished (or killed) CLI subprocess."""

    name: str
    exit_code: int | None
    """None when it timed out (and was killed)."""
    seconds: float
    stderr: str = ""
    timed_out: bool = False


def run_step(name: str, args: list[str], cwd: Path, timeout: float) -> Step:
    """`python -m compressor ARGS` in `cwd`, in its own session so a timeout kills all of it."""
    command = [sys.executable, "-m", "compressor", *args]
    start = time.monotonic()
    with open(cwd / f"{name}.stdout", "wb") as out, open(cwd / f"{name}.stderr", "wb") as err:
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code, timed_out = proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            code, timed_out = None, True
            _kill_group(proc)
        except BaseException:  # Ctrl-C on the harness: the child is in its own session
            _kill_group(proc)
            raise
    stderr = (cwd / f"{name}.stderr").read_text(errors="replace")
    return Step(name, code, time.monotonic() - start, stderr, timed_out)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# ---------------------------------------------------------------------------------------------
# Classifying a row


class Outcome(NamedTuple):
    status: str
    """'ok', 'refused' or 'failed'."""
    reason: str | None
    """The one-line message (the last line of the deciding step's stderr), or what went wrong."""
    step: str | None
    """The step that refused or failed."""


def last_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def classify(steps: list[Step], refuse_within: float = 60.0, report_found: bool = True) -> Outcome:
    """What the steps of one model add up to: ok, refused before training, or failed.

    `steps` is pretrain, then compress when pretrain succeeded. A step fails on a timeout, a
    signal, a Python traceback, exit 3, an unexpected exception the CLI reported as exit 2 (its
    message ends "rerun with --debug for the traceback"), or any other code. Pretrain exiting 2
    refuses before training (it trains nothing before its checks); compress exiting 2 refuses
    only within `refuse_within` seconds, later it is a late error after the search. Compress
    exiting 0 or 1 (budget missed) is ok when it wrote report.json.
    """
    for step in steps:
        is_compress = step.name == "compress"
        line = last_line(step.stderr)
        if step.timed_out or step.exit_code is None:
            return Outcome("failed", f"timed out after {step.seconds:.0f} s", step.name)
        if step.exit_code < 0:
            return Outcome("failed", f"killed by signal {-step.exit_code} after "
                                     f"{step.seconds:.0f} s: {line}".rstrip(": "), step.name)
        if "Traceback (most recent call last)" in step.stderr:
            return Outcome("failed", f"traceback (exit {step.exit_code}): {line}", step.name)
        if step.exit_code == 0 and not is_compress:
            continue
        if step.exit_code == 2:
            if INTERNAL_MARK in line:
                return Outcome("failed", f"internal error reported as exit 2: {line}", step.name)
            if is_compress and step.seconds > refuse_within:
                return Outcome("failed", f"late exit 2 after {step.seconds:.0f} s: {line}",
                               step.name)
            return Outcome("refused", line, step.name)
        if is_compress and step.exit_code in (0, 1):
            if not report_found:
                return Outcome("failed", f"exit {step.exit_code} without a report.json",
                               step.name)
            return Outcome("ok", None, None)
        if step.exit_code == 3:
            return Outcome("failed", f"internal error (exit 3): {line}", step.name)
        return Outcome("failed", f"exit {step.exit_code}: {line}", step.name)
    return Outcome("failed", "compress did not run", "compress")


# ---------------------------------------------------------------------------------------------
# One model


@dataclass
class Row:
    """One model's result: the row format of both modes (coverage.json's rows here, the JSON list
    of `benchmarks.coverage_structure`). The first ten fields are the ones issue 36 names."""

    model: str
    family: str | None = None
    """"cnn" or "transformer" (a forward pass multiplies two activations: attention;
    `coverage_structure.family_of`); None when the model ran on no input."""
    status: str = "failed"
    """ok, partial (ok with groups kept dense), refused (a one-line error) or failed."""
    seconds_to_decide: float | None = None
    """Structure mode: seconds until the skeleton was decided or the refusal given (the input
    check plus build_skeleton). Not measured by the full mode (None)."""
    excluded_units: int | None = None
    """Coupled groups kept dense (the report's kept_dense)."""
    excluded_macs_share: float | None = None
    """Share of the dense conv/linear MACs in the layers the kept-dense groups set (structure
    mode; None in the full mode)."""
    reason: str | None = None
    """The refusal or failure, or the exclusions' reasons shortened."""
    latency_ratio: float | None = None
    """Measured pruned/dense latency: the shipped model's (full), a 0.5 ratio on every unit's
    (structure)."""
    verdict: str | None = None
    """The compress run's verdict against its budget (full); None in structure mode."""
    mode: str = "full"
    """"full" (pretrain + compress through the CLI) or "structure" (untrained, no search)."""
    input_size: int | None = None
    """Input side the model ran at (32, or its minimum when it refuses 32)."""
    params_m: float | None = None
    step: str | None = None
    """Where it stopped: pretrain/compress (full), input/skeleton/export/latency (structure)."""
    units: int | None = None
    """Units searched."""
    macs_ratio: float | None = None
    """Structure mode: the pruned network's MACs over the dense one's."""
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    test_top1: float | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    """Structure mode: the paired measurement's block spread, dense ms and probe batch."""
    directory: str | None = None


def family_and_size(model: str) -> tuple[str | None, int | None]:
    """The family of `model` and the input side it runs at (32, else its minimum), from one
    untrained forward pass; (None, None) when it runs at neither."""
    from benchmarks.coverage_structure import accepting_size, build, family_of
    from compressor.errors import UserError

    try:
        network = build(model).eval()
        batch = accepting_size(model, network)
    except (UserError, RuntimeError, ValueError):
        return None, None
    return family_of(network, batch[:1]), batch.shape[-1]


def report_fields(report: dict) -> dict:
    """units, kept-dense groups, latency ratio, verdict, top-1 and parity fields of a
    report.json, read as the one record compress and apply write (`compressor.io.report.RunReport`).

    Parity is the `final.parity` section's numbers that are there, plus the flat `final.onnx_*`
    keys of reports written before that section existed (compressor 0.1).
    """
    from compressor.io.report import RunReport

    run = RunReport.from_dict(report)
    legacy = {k: v for k, v in (report.get("final") or {}).items()
              if k.startswith("onnx_") and k != "onnx"}
    parity = {**legacy, **{f"parity.{k}": v for k, v in run.final.parity.as_dict().items()
                           if v is not None}} if run.final.parity else legacy
    return {
        "units": len(run.policy) if isinstance(report.get("policy"), dict) else None,
        "excluded_units": len(run.kept_dense or {}),
        **({"reason": "kept dense: " + "; ".join(f"{k}: {v}" for k, v in
                                                 list(run.kept_dense.items())[:3])[:600]}
           if run.kept_dense else {}),
        "latency_ratio": run.final.latency_ratio,
        "verdict": run.verdict,
        "test_top1": run.final.test_top1,
        "parity": parity,
    }


def find_report(results_dir: Path) -> Path | None:
    found = sorted(results_dir.glob("*/report.json")) + sorted(results_dir.glob("report.json"))
    return found[0] if found else None


def cli_args(config: CoverageConfig, model: str, work: Path) -> dict[str, list[str]]:
    """The pretrain and compress argument lists, every output inside `work`."""
    models_dir = str(work / "models")
    data = ["--data-dir", str(Path(config.data_dir).resolve())] if config.data_dir else []
    sizes = ["--train-size", str(config.train_size), "--test-size", str(config.test_size)]
    return {
        "pretrain": ["pretrain", "--model", model, "--epochs", str(config.pretrain_epochs),
                     *sizes, "--models-dir", models_dir, *data],
        "compress": ["compress", "--model", model, "--latency-budget", str(config.budget),
                     "--episodes", str(config.episodes), *sizes,
                     "--final-epochs", str(config.final_epochs),
                     "--candidates", str(config.candidates), "--models-dir", models_dir,
                     "--out", str(work / "run"), "--policies-dir", str(work / "policies"),
                     "--results-dir", str(work / "results"), *data],
    }


def run_model(config: CoverageConfig, model: str, params: int | None) -> Row:
    """Pretrain then compress `model` in a fresh temporary directory; one row."""
    work = Path(tempfile.mkdtemp(prefix=f"coverage-{model}-"))
    try:
        args = cli_args(config, model, work)
        steps = [run_step("pretrain", args["pretrain"], work, config.timeout)]
        if steps[0].exit_code == 0 and not steps[0].timed_out:
            steps.append(run_step("compress", args["compress"], work, config.timeout))
        report_path = find_report(work / "results")
        outcome = classify(steps, config.refuse_within, report_found=report_path is not None)
        row = Row(model=model, params_m=None if params is None else round(params / 1e6, 2),
                  status=outcome.status,
                  reason=outcome.reason, step=outcome.step,
                  exit_codes={s.name: s.exit_code for s in steps},
                  seconds={s.name: round(s.seconds, 1) for s in steps})
        if report_path is not None:
            try:
                fields = report_fields(json.loads(report_path.read_text()))
            except (OSError, ValueError) as exc:
                fields = {"parity": {"report_error": f"{type(exc).__name__}: {exc}"}}
            for key, value in fields.items():
                setattr(row, key, value)
        if row.status == "ok" and row.excluded_units:
            row.status = "partial"
        row.family, row.input_size = family_and_size(model)
        if config.keep:
            row.directory = str(work)
        return row
    finally:
        if not config.keep:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Summary and files


class Summary(NamedTuple):
    ok: int
    refused: int
    failed: int
    over_budget: int
    slow_refusals: int
    """Refusals that took longer than `refuse_within` (a pretrain that refused after training)."""
    partial: int = 0
    """Compressed, with groups kept dense."""

    @property
    def goal_met(self) -> bool:
        return self.failed == 0 and self.slow_refusals == 0


def summarise(rows: list[dict], refuse_within: float = 60.0) -> Summary:
    def total_seconds(row):
        return sum(v for v in row.get("seconds", {}).values() if v is not None)
    return Summary(
        ok=sum(r["status"] == "ok" for r in rows),
        refused=sum(r["status"] == "refused" for r in rows),
        failed=sum(r["status"] == "failed" for r in rows),
        over_budget=sum(r["status"] in ("ok", "partial")
                        and r.get("exit_codes", {}).get("compress") == 1 for r in rows),
        slow_refusals=sum(r["status"] == "refused" and total_seconds(r) > refuse_within
                          for r in rows),
        partial=sum(r["status"] == "partial" for r in rows))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _parity_cell(parity: dict) -> str:
    return "; ".join(f"{k.removeprefix('onnx_')} {_cell(v)}" for k, v in sorted(parity.items())
                     if not isinstance(v, (dict, list)))


def render_markdown(doc: dict) -> str:
    """coverage.md: the command, the machine, a table of rows and the summary against the goal."""
    rows, config = doc["rows"], doc["config"]
    s = summarise(rows, config["refuse_within"])
    lines = [
        "# Coverage: every torchvision CNN under "
        f"{config['max_params'] / 1e6:.0f} M parameters on a tiny baseline",
        "",
        *(f"Command: `{c}`  " for c in doc.get("commands") or [doc["command"]]),
        f"Date: {doc['date']}; CPU: {doc.get('cpu')}; budget: latency ratio {config['budget']}; "
        f"pretrain {config['pretrain_epochs']} epoch, compress {config['episodes']} episodes, "
        f"{config['train_size']} train / {config['test_size']} test images, "
        f"{config['final_epochs']} final epoch, {config['candidates']} candidate.",
        "",
        f"**{s.ok} ok, {s.partial} partial, {s.refused} refused, {s.failed} failed** "
        f"(of {len(rows)} run; {s.over_budget} of the ok or partial exports measured over "
        "budget).  ",
        f"{GOAL}: **{'met' if s.goal_met else 'not met'}**"
        + ("" if s.goal_met else
           f" ({s.failed} failed, {s.slow_refusals} refusals slower than "
           f"{config['refuse_within']:.0f} s)."),
        "",
        "| model | params (M) | status | step | exit (pretrain, compress) | seconds (pretrain, "
        "compress) | units | latency ratio | verdict | top-1 | parity | reason |",
        "|---|---:|---|---|---|---|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        codes, secs = r.get("exit_codes", {}), r.get("seconds", {})
        lines.append("| " + " | ".join([
            r["model"], _cell(r["params_m"]), r["status"], _cell(r.get("step")),
            ", ".join(_cell(codes.get(k)) or "-" for k in ("pretrain", "compress")),
            ", ".join(f"{secs[k]:.0f}" if secs.get(k) is not None else "-"
                      for k in ("pretrain", "compress")),
            _cell(r.get("units")), _cell(r.get("latency_ratio")), _cell(r.get("verdict")),
            _cell(r.get("test_top1")), _cell(_parity_cell(r.get("parity") or {})),
            _cell(r.get("reason")),
        ]) + " |")
    skipped = doc.get("skipped") or []
    if skipped:
        lines += ["", f"Skipped, {config['max_params'] / 1e6:.0f} M parameters or more: "
                  + ", ".join(f"{m['model']} ({m['params_m']:.0f} M)" for m in skipped) + "."]
    pending = doc.get("pending") or []
    if pending:
        lines += ["", f"Not run yet ({len(pending)}): {', '.join(pending)}."]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, doc: dict) -> None:
    from compressor.io import atomic

    atomic.write_json(out / "coverage.json", doc)
    atomic.write_text(out / "coverage.md", render_markdown(doc))


def listed_models() -> list[str]:
    """What `compressor models` prints, asked the way a user would."""
    done = subprocess.run([sys.executable, "-m", "compressor", "models"], capture_output=True,
                          text=True, check=True)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> CoverageConfig:
    d = CoverageConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(d.models),
                   help="models to try (default: all `compressor models` lists)")
    p.add_argument("--max-params", type=float, default=d.max_params,
                   help="skip models with this many parameters or more (default 100e6)")
    p.add_argument("--out", default=d.out, help="directory of coverage.json / coverage.md")
    p.add_argument("--budget", type=float, default=d.budget, help="latency ratio budget")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per CLI step")
    p.add_argument("--refuse-within", type=float, default=d.refuse_within,
                   help="a compress exit 2 within this many seconds counts as a refusal")
    p.add_argument("--data-dir", default=None, help="passed to the CLI (default: its own)")
    p.add_argument("--rerun", action="store_true", help="run models that already have a row")
    p.add_argument("--keep", action="store_true", help="keep each model's temporary directory")
    a = p.parse_args(argv)
    return CoverageConfig(models=tuple(a.models), max_params=a.max_params, out=a.out,
                          budget=a.budget, timeout=a.timeout, refuse_within=a.refuse_within,
                          data_dir=a.data_dir, rerun=a.rerun, keep=a.keep)


def main(argv: list[str] | None = None) -> int:
    from compressor.provenance import provenance

    argv = sys.argv[1:] if argv is None else argv
    if "--mode" in argv:
        i = argv.index("--mode")
        mode, argv = (argv[i + 1:i + 2] or [""])[0], argv[:i] + argv[i + 2:]
        if mode == "structure":
            from benchmarks import coverage_structure

            return coverage_structure.main(argv)
        if mode != "full":
            print(f"error: --mode {mode!r}: choose full or structure", file=sys.stderr)
            return 2
    config = parse_args(argv)
    out = Path(config.out)
    previous: dict = {}
    if (out / "coverage.json").exists():
        previous = json.loads((out / "coverage.json").read_text())
        if previous.get("settings") != config.run_settings() and not config.rerun:
            print(f"error: {out / 'coverage.json'} was made with {previous.get('settings')}, not "
                  f"{config.run_settings()}: pass --rerun or another --out", file=sys.stderr)
            return 2
    listed = listed_models()
    unknown = [m for m in config.models if m not in listed]
    if unknown:
        print(f"error: not listed by `compressor models`: {', '.join(unknown)}", file=sys.stderr)
        return 2
    wanted = list(config.models) or listed

    print(f"counting parameters of {len(wanted)} models...", flush=True)
    counts = {}
    for m in wanted:
        try:
            counts[m] = count_params(m, config.max_params)
        except Exception as exc:  # the CLI run will show how it fails
            counts[m] = ParamCount(None, f"error: {type(exc).__name__}: {exc}")
    small, large = split_by_size(counts, config.max_params)
    skipped = [{"model": m, "params_m": round(counts[m].params / 1e6, 2),
                "params_source": counts[m].source} for m in large]
    print(f"{len(small)} under {config.max_params / 1e6:.0f} M parameters; skipping "
          f"{len(large)}: {', '.join(large) or '-'}", flush=True)

    rows = {r["model"]: r for r in previous.get("rows", [])}
    prov = provenance()
    command = "python -m benchmarks.coverage " + shlex.join(argv)
    # A resumed or extended run keeps the commands that made the earlier rows.
    commands = previous.get("commands") or ([previous["command"]] if "command" in previous else [])
    doc = {"command": command, "commands": [c for c in commands if c != command] + [command],
           "config": asdict(config), "settings": config.run_settings(),
           "cpu": prov["machine"]["cpu"], "provenance": prov, "skipped": skipped}

    def save(running: list[str]) -> None:
        doc["date"] = datetime.now(UTC).isoformat(timespec="seconds")
        doc["rows"] = [rows[m] for m in small if m in rows] + \
                      [r for m, r in rows.items() if m not in small]
        doc["pending"] = [m for m in running if m not in rows]
        write_outputs(out, doc)

    todo = [m for m in small if config.rerun or m not in rows]
    if config.rerun:
        for m in todo:
            rows.pop(m, None)
    print(f"{len(small) - len(todo)} already done; running {len(todo)}", flush=True)
    save(todo)
    started = time.monotonic()
    for i, model in enumerate(todo, 1):
        size = counts[model].params
        print(f"[{i}/{len(todo)}] {model} "
              f"({'?' if size is None else f'{size / 1e6:.1f}'} M params)...", flush=True)
        row = run_model(config, model, counts[model].params)
        rows[model] = asdict(row)
        save(todo)
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in row.seconds.items())
        extra = f": {row.reason}" if row.reason else \
            f" (ratio {row.latency_ratio}, {row.verdict})"
        print(f"[{i}/{len(todo)}] {model}: {row.status} in {sum(row.seconds.values()):.0f} s "
              f"({secs}){extra}  [{(time.monotonic() - started) / 60:.0f} min so far]",
              flush=True)
    s = summarise(doc["rows"], config.refuse_within)
    print(f"{s.ok} ok, {s.partial} partial, {s.refused} refused, {s.failed} failed; goal "
          f"{'met' if s.goal_met else 'not met'}; wrote {out / 'coverage.md'}, "
          f"{out / 'coverage.json'}")
    return 0 if s.goal_met else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted: rows so far are saved; run the same command to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
