"""The run report: report.json (machine-readable), report.md (for people) and three plots.

report.json is one typed record, `RunReport`, whose "final" section, `ShippedModel`, says what
shipped and what was measured of it. `compressor compress` (the final stage) writes every field;
`compressor apply` writes the same record without the search's fields (they are left out of the
file, not written as null). Readers (the benchmarks) take it back with `RunReport.from_dict` /
`ShippedModel.from_dict`, which accept what an older or failed run left out.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from compressor.io import atomic

_OPTIONAL = {"optional": True}
"""Field metadata: left out of report.json when None (a section the run did not produce)."""


def _record(obj: Any) -> dict[str, Any]:
    """A report dataclass as report.json holds it: its fields in order, nested records as dicts,
    optional fields left out when None (no deep copy: the values are already plain)."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None and f.metadata.get("optional"):
            continue
        out[f.name] = _record(value) if hasattr(value, "__dataclass_fields__") else value
    return out


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The entries of `data` that are fields of `cls`."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class ExportParity:
    """The shipped FP32 export against PyTorch (`io.export.ExportReport`'s numbers)."""

    max_abs_diff: float | None = None
    max_abs_output: float | None = None
    relative_diff: float | None = None
    top1_agreement: float | None = None
    tolerance: dict[str, float] | None = None
    """{"rtol", "atol"} of the check."""

    @classmethod
    def of(cls, exported: Any) -> ExportParity:
        """From an `ExportReport`."""
        return cls(exported.max_abs_diff, exported.max_abs_output, exported.relative_diff,
                   exported.top1_agreement, dict(exported.tolerance._asdict()))

    def as_dict(self) -> dict[str, Any]:
        return _record(self)


@dataclass(frozen=True, kw_only=True)
class ShippedModel:
    """report.json's "final": the model a run ships and what was measured of it. Fields are None
    only in a report read back from a run that did not produce them."""

    test_top1: float | None = None
    """Test score of what ships: the INT8 ONNX model's top-1 (%) when INT8 ships, else the FP32
    network's (or the user's `evaluate`)."""
    fp32_test_top1: float | None = None
    """The fine-tuned FP32 network's test score."""
    precision: str = "fp32"
    """fp32, int8, or mixed (an INT8 model with some layers kept FP32)."""
    macs: int | None = None
    params: int | None = None
    checkpoint: str | None = None
    """The pruned FP32 checkpoint (`pruning.checkpoints`)."""
    policy_file: str | None = None
    int8: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    """INT8 plan, quantization attempts, test comparison and warning (INT8 runs only)."""
    latency: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    """The paired measurement of what ships against dense FP32 (`PairedLatency.as_dict`); left
    out when export or measurement failed."""
    latency_rounds: int | None = field(default=None, metadata=_OPTIONAL)
    latency_from_fit: bool | None = field(default=None, metadata=_OPTIONAL)
    """Whether `latency` is the final stage's fit measurement of the same architecture (the
    fine-tune changed weights, not shapes) rather than a measurement of its own."""
    fp32_latency: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    """The FP32 export's paired measurement (the same as `latency` when FP32 ships)."""
    onnx: str | None = field(default=None, metadata=_OPTIONAL)
    """The ONNX file that ships."""
    fp32_onnx: str | None = field(default=None, metadata=_OPTIONAL)
    parity: ExportParity | None = field(default=None, metadata=_OPTIONAL)
    decode: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    """A causal LM with a decode or prefill budget: its KV-cache export (`onnx`, `cache_layers`,
    `parity` with greedy-token agreement) and each budgeted phase's paired measurement against
    the dense model's KV-cache graph (`pipeline.decode.PhaseVerdicts`)."""

    @property
    def latency_ratio(self) -> float | None:
        return self.latency.get("ratio") if isinstance(self.latency, dict) else None

    def as_dict(self) -> dict[str, Any]:
        return _record(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShippedModel:
        known = _known(cls, data)
        if isinstance(known.get("parity"), dict):
            known["parity"] = ExportParity(**_known(ExportParity, known["parity"]))
        return cls(**known)


@dataclass(frozen=True, kw_only=True)
class RunReport:
    """report.json. `compressor compress` fills every field; `compressor apply` (no search, no
    budget) leaves the optional ones None and report.json without them."""

    model: str
    dataset: str
    run: str
    """The run directory's name (compress) or the output directory's (apply)."""
    command: str
    headline: str
    verdict: str | None = field(default=None, metadata=_OPTIONAL)
    """"within budget", a budget missed, or "export or measurement failed"; None without budgets."""
    failure: str | None = None
    """What failed in export or measurement (the work was saved first), else None."""
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per budget: the registry's check (measured value, limit, ok)."""
    budgets: dict[str, Any] = field(default_factory=dict)
    search_target: dict[str, float] | None = field(default=None, metadata=_OPTIONAL)
    margin_note: str | None = field(default=None, metadata=_OPTIONAL)
    baseline: dict[str, Any] = field(default_factory=dict)
    """The dense model: test_top1, macs, params and its export's parity."""
    final: ShippedModel = field(default_factory=ShippedModel)
    language_model: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    """A causal LM's test perplexity, cross-entropy, bits per byte and next-byte top-1 beside
    the dense model's, and the latency workload timed (`pipeline.text.TextTask.summary`)."""
    policy: dict[str, float] = field(default_factory=dict)
    """Pruning ratio per unit (precision entries are in `unit_precisions`)."""
    uniform_policy: dict[str, float] | None = field(default=None, metadata=_OPTIONAL)
    unit_precisions: dict[str, str] | None = field(default=None, metadata=_OPTIONAL)
    """Unit -> "int8" / "fp32" when the search chose precisions."""
    kept_dense: dict[str, str] | None = field(default=None, metadata=_OPTIONAL)
    """Coupled groups left out of the search and kept dense -> why (the backend cannot prune
    them as predicted); None when every group was searched."""
    candidates: list[dict[str, Any]] | None = field(default=None, metadata=_OPTIONAL)
    search: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    episodes: int | None = field(default=None, metadata=_OPTIONAL)
    cache_hits: int | None = field(default=None, metadata=_OPTIONAL)
    episodes_log: str | None = None
    probe_bias_median: float | None = field(default=None, metadata=_OPTIONAL)
    """Median of measured / predicted latency - 1 over the search's probes (`probe_bias_median`
    of the episodes; the prediction is what the wall saw); None without probes."""
    """The run directory's episodes.jsonl (named, not copied beside the report); None when the
    run logged no episode."""
    per_episode_seconds: dict[str, float] | None = field(default=None, metadata=_OPTIONAL)
    time: dict[str, float] | None = field(default=None, metadata=_OPTIONAL)
    config: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    provenance: dict[str, Any] = field(default_factory=dict)
    plots: list[str] | None = field(default=None, metadata=_OPTIONAL)

    def as_dict(self) -> dict[str, Any]:
        """What report.json holds."""
        return _record(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """A report.json read back (missing required text fields become empty)."""
        known = _known(cls, data)
        known["final"] = ShippedModel.from_dict(known.get("final") or {})
        for name in ("model", "dataset", "run", "command", "headline"):
            known.setdefault(name, "")
        return cls(**known)


def headline(top1: float, base_top1: float, precision: str, latency_ratio: float | None) -> str:
    """The report's one-line result: shipped top-1 and its change, precision, latency ratio.

    >>> headline(91.5, 92.0, "int8", 0.45)
    '91.50% top-1 (-0.50) in INT8 at 0.450 of the dense latency'
    """
    return (f"{top1:.2f}% top-1 ({top1 - base_top1:+.2f})"
            + {"int8": " in INT8", "mixed": " in mixed INT8/FP32"}.get(precision, "")
            + (f" at {latency_ratio:.3f} of the dense latency" if latency_ratio is not None
               else ""))


def write_report_json(out_dir: Path, report: RunReport) -> Path:
    """report.json only (`compressor apply`, which has no search to summarise in report.md)."""
    return atomic.write_json(out_dir / "report.json", report.as_dict())


def probe_bias_median(episodes: list[dict]) -> float | None:
    """Median of latency_measured / latency_predicted - 1 over the episodes probed (a cached
    episode repeats an earlier one's measurement and is not counted again); None without any."""
    ratios = [e["latency_measured"] / e["latency_predicted"] - 1 for e in episodes
              if not e.get("cached") and e.get("latency_measured") is not None
              and e.get("latency_predicted")]
    return statistics.median(ratios) if ratios else None


def read_episodes(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_search(episodes: list[dict], out_dir: Path, title: str) -> list[str]:
    """Reward and best accuracy per episode; accuracy against latency (or MACs) ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    xs = [e["episode"] for e in episodes]
    best, running = [], float("-inf")
    for e in episodes:
        running = max(running, e["top1"])
        best.append(running)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(xs, [e["reward"] for e in episodes], ".", ms=3)
    ax[0].set(xlabel="episode", ylabel="reward", title="reward per episode")
    ax[1].plot(xs, [e["top1"] for e in episodes], ".", ms=3, label="episode")
    ax[1].plot(xs, best, "-", label="best so far")
    ax[1].set(xlabel="episode", ylabel="search top-1 (%)", title="search accuracy")
    ax[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic.write_via(out_dir / "search.png", lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    names.append("search.png")

    key = "latency_predicted" if "latency_predicted" in episodes[0] else "flops_ratio"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([e[key] for e in episodes], [e["top1"] for e in episodes],
               c=xs, cmap="viridis", s=10)
    measured = [e for e in episodes if "latency_measured" in e]
    if measured:
        ax.scatter([e["latency_measured"] for e in measured], [e["top1"] for e in measured],
                   marker="x", c="red", s=20, label="measured (probe)")
        ax.legend()
    ax.set(xlabel=key.replace("_", " "), ylabel="search top-1 (%)",
           title="accuracy vs cost, all episodes (colour: episode)")
    fig.tight_layout()
    atomic.write_via(out_dir / "accuracy_vs_latency.png",
                     lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    names.append("accuracy_vs_latency.png")
    return names


def plot_policy(policy: dict[str, float], uniform: dict[str, float] | None, out_dir: Path,
                title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(policy)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [policy[n] for n in names], 0.4, label="agent")
    if uniform is not None:  # None: no shared ratio reaches the budget
        ax.bar([x + 0.2 for x in xs], [uniform.get(n, 0) for n in names], 0.4, label="uniform")
    ax.set_xticks(list(xs), names, rotation=75, fontsize=7)
    ax.set(ylabel="pruning ratio", title=title)
    ax.legend()
    fig.tight_layout()
    atomic.write_via(out_dir / "policy.png", lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return "policy.png"


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _int8_lines(final: dict) -> list[str]:
    """The INT8 part of report.md: what shipped, the formats measured, what INT8 cost."""
    int8 = final.get("int8")
    if not int8:
        return []
    lines = [f"Precision shipped: **{final.get('precision', 'fp32')}**."]
    choice = (int8.get("plan") or {}).get("choice") or {}
    if choice:
        trials = ", ".join(f"{t['format']} {t['ratio']:.3f}" if t["ratio"] is not None
                           else f"{t['format']} failed" for t in choice["trials"])
        lines.append(f"INT8 formats on the dense model (ratio of dense FP32, FP32 "
                     f"{choice['fp32_ratio']:.3f}): {trials}; chosen: {choice['chosen']}.")
    test, fp32_lat = int8.get("test"), final.get("fp32_latency")
    if test:
        lines.append(f"INT8 vs FP32 ONNX on {test['images']} test images: top-1 "
                     f"{test['int8_top1']:.2f}% vs {test['fp32_top1']:.2f}% (drop "
                     f"{test['drop']:+.2f}), max logit difference {test['max_logit_diff']:.3g}, "
                     f"top-1 agreement {test['top1_agreement']:.1%}.")
    if fp32_lat:
        lines.append(f"The FP32 pruned model measured {fp32_lat['ratio']:.3f} of dense FP32.")
    if int8.get("fp32_layers"):
        lines.append("Layers the mixed INT8 model keeps FP32 (priced faster than INT8 at their "
                     f"pruned shapes): {', '.join(int8['fp32_layers'])}.")
    quant = int8.get("quantization") or {}
    if quant.get("attempts"):
        lines.append("Quantization attempts (search split): " + "; ".join(
            f"{a['label']}: drop {a['accuracy']['drop']:+.2f}" for a in quant["attempts"]) + ".")
    if int8.get("warning"):
        lines.append(f"**Warning:** {int8['warning']}.")
    return ["", *lines]


def _kept_dense_lines(kept_dense: dict[str, str] | None) -> list[str]:
    if not kept_dense:
        return []
    return ["Kept dense (not searched): " + "; ".join(f"{n}: {why}" for n, why in
                                                      kept_dense.items()) + ".", ""]


def _search_lines(report: dict[str, Any]) -> list[str]:
    """report.md's line on the search: method, evaluations, time, where and how far off its
    latency probes were."""
    search = report.get("search") or {}
    if not search:
        return []
    probes = search.get("latency_measured")
    bias = report.get("probe_bias_median")
    return [f"Search: {search.get('method')}, {search.get('evaluations')} evaluations in "
            f"{search.get('seconds', 0):.0f} s"
            + (f"; its latency probes ran {probes}" if probes else "")
            + (f"; probes measured {bias:+.1%} against the prediction (median)"
               if bias is not None else "") + ".", ""]


def _decode_rows(decode: dict[str, Any] | None) -> list[str]:
    """A causal LM's decode / prefill rows of the dense-vs-pruned table (KV-cache graphs)."""
    rows = []
    for phase in ("decode", "prefill"):
        if decode and phase in decode:
            paired = decode[phase]
            unit = "ms/token" if phase == "decode" else "ms"
            rows += [_row([f"{phase} latency ({unit}, KV cache)", f"{paired['reference_ms']:.3f}",
                           f"{paired['candidate_ms']:.3f}"]),
                     _row([f"{phase} ratio (paired)", "1.000", f"{paired['ratio']:.3f}"])]
    return rows


def _decode_lines(decode: dict[str, Any] | None) -> list[str]:
    """Where the decode / prefill numbers come from: the verified KV-cache export, settings."""
    if not decode:
        return []
    parity = decode["parity"]
    lines = [f"KV-cache export {decode['onnx']}: max abs logit difference "
             f"{parity['max_abs_diff']:.2e} (relative {parity['relative_diff']:.1e}), top-1 "
             f"agreement {parity['top1_agreement']:.0%}, greedy tokens "
             f"{parity['greedy_agreement']:.0%} identical over {parity['greedy_steps']} steps."]
    for phase in ("decode", "prefill"):
        if phase in decode:
            lines.append(f"{phase.capitalize()} settings: " + ", ".join(
                f"{k}={v}" for k, v in decode[phase]["settings"].items())
                + f"; {decode[phase]['rounds']} round(s).")
    return [*lines, ""]


def _comparison_rows(report: dict) -> list[str]:
    """The dense-vs-pruned table: perplexity first for a causal LM (its top-1 is of the next
    token), then size, latency, INT8 and the decode rows."""
    final, base = report["final"], report["baseline"]
    lat = final.get("latency")
    lm = report.get("language_model")
    lines = [_row(["", "dense", "pruned"]), _row(["---", "---", "---"])]
    if lm:
        lines += [_row(["test perplexity", f"{lm['dense_test_perplexity']:.3f}",
                        f"{lm['test_perplexity']:.3f}"]),
                  _row(["test bits per byte", f"{lm['dense_test_bits_per_byte']:.3f}",
                        f"{lm['test_bits_per_byte']:.3f}"])]
    lines += [
        _row(["test top-1 (%)" if not lm else "next-byte top-1 (%)", f"{base['test_top1']:.2f}",
              f"{final['test_top1']:.2f}"]),
        _row(["MMACs", f"{base['macs'] / 1e6:.1f}", f"{final['macs'] / 1e6:.1f}"]),
        _row(["params (M)", f"{base['params'] / 1e6:.2f}", f"{final['params'] / 1e6:.2f}"]),
    ]
    if lat:
        lines += [_row(["ONNX latency (ms)", f"{lat['reference_ms']:.2f}",
                        f"{lat['candidate_ms']:.2f}"]),
                  _row(["latency ratio (paired)", "1.000", f"{lat['ratio']:.3f}"])]
    return [*lines, *_int8_lines(final), *_decode_rows(final.get("decode"))]


def write_report(out_dir: Path, run_report: RunReport) -> None:
    """report.json, and a short markdown summary of it (also of a failed final stage)."""
    write_report_json(out_dir, run_report)
    report = run_report.as_dict()
    final = report["final"]
    lat = final.get("latency")
    lines = [
        f"# {report['model']} on {report['dataset']}: {report['headline']}",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    if report.get("failure"):
        lines += [f"**The final stage failed:** {report['failure']}. The fine-tuned checkpoint "
                  f"({final['checkpoint']}) and the policy ({final['policy_file']}) were saved "
                  "before it.", ""]
    lines += _comparison_rows(report)
    lines += [
        "",
        f"Budgets: {json.dumps(report['budgets'])}. Verdict: **{report['verdict']}**.",
        f"Search aimed at {report['search_target']}: {report['margin_note']}",
        "",
    ]
    if lat:
        parity = final["parity"]
        tol = parity["tolerance"]
        lines += [
            "Latency settings: " + ", ".join(f"{k}={v}" for k, v in lat["settings"].items())
            + f"; {final.get('latency_rounds', 1)} round(s), in this process after the search"
            + (" (the fit's measurement of the same architecture: the fine-tune changed weights, "
               "not shapes)." if final.get("latency_from_fit") else "."),
            f"ONNX parity: max abs difference {parity['max_abs_diff']:.2e} at max |output| "
            f"{parity['max_abs_output']:.3g} (relative {parity['relative_diff']:.1e}; tolerance "
            f"{tol['atol']:g} + {tol['rtol']:g} x max |output|), top-1 agreement "
            f"{parity['top1_agreement']:.0%}.", ""]
    lines += _decode_lines(final.get("decode"))
    lines += _search_lines(report)
    lines += [
        "## Time",
        _row(["phase", "seconds"]), _row(["---", "---"]),
        *[_row([k, f"{v:.1f}"]) for k, v in report["time"].items()],
        "",
        "Per episode (mean seconds over evaluated, uncached episodes): " + ", ".join(
            f"{k} {v:.3f}" for k, v in report["per_episode_seconds"].items())
        + f"; {report['cache_hits']} of {report['episodes']} episodes were cache hits"
        + (f" (log: {report['episodes_log']})." if report.get("episodes_log") else "."),
        "",
        "## Candidates after the search (short fine-tune on the train split, scored on search)",
        _row(["episode", "reward", "search top-1", "after short fine-tune", "latency measured",
              "chosen"]),
        _row(["---"] * 6),
        *[_row([c["episode"], f"{c['reward']:.4f}", f"{c['top1']:.2f}",
                _num(c.get("finetuned_top1"), ".2f"), _num(c.get("latency_measured"), ".3f"),
                "yes" if c.get("chosen") else (c.get("rejected") or "")])
          for c in report["candidates"]],
        "",
        "## Policy (pruning ratio per unit)",
        _row(["unit", "chosen", "uniform at the same budget"]), _row(["---", "---", "---"]),
        *[_row([n, f"{r:.3f}", _num((report.get("uniform_policy") or {}).get(n), ".3f")])
          for n, r in report["policy"].items()],
        "",
        *_kept_dense_lines(report.get("kept_dense")),
        *[f"![{p}]({p})" for p in report["plots"]],
        "",
        f"Machine: {report['provenance']['machine']['cpu']}, "
        f"{report['provenance']['machine']['cores']} cores; git {report['provenance']['git_commit']}.",
    ]
    atomic.write_text(out_dir / "report.md", "\n".join(lines) + "\n")
