"""A causal LM's decode and prefill budgets (issue 35): what the wall prices, what the verdict
measures.

- **Cost.** Each budgeted phase (`--decode-budget`, `--prefill-budget`) is priced by its
  `DecodeTables` (`latency.decode`: per-block tables of heads x MLP width at the phase's shape,
  per count of blocks that run, plus a rest), measured once per architecture, shape, probe
  settings, runtime and CPU, and cached as JSON beside the latency models. A policy's cost is
  `predict_ratio` of its layer shapes (`phase_costs`); the wall aims it `margin` under the limit.
- **Verdict.** The shipped model is exported with its KV cache (`export_decoder`: logits parity
  and identical greedy tokens in onnxruntime, or nothing is written) and timed against the dense
  model's graph by `DecodeProbe`, one paired round, repeated `recheck_rounds` more times on
  fresh sessions when the limit lies within its block spread, pooled (`measure_phases`).

    tables = load_or_measure_tables(model, example, ["decode"], lm, settings, 16, "models/latency",
                                    "gpt_tiny")
    costs = phase_costs(skeleton, tables)          # {"decode": ratio vector -> predicted ratio}
    probe = decode_probe(dense, lm.decode, settings)
    shipped = measure_phases(probe, pruned, tokens, {"decode": 0.5}, 2, run_dir / "x.onnx")
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from compressor.io import atomic
from compressor.latency.decode import (
    PHASES,
    DecodeProbe,
    DecodeShape,
    DecodeTables,
    measure_decode_tables,
)
from compressor.latency.probe import PairedLatency, ProbeSettings, pool_rounds
from compressor.latency.tables import channel_grid
from compressor.provenance import cpu_name
from compressor.pruning.decoder_export import DecoderExportReport, export_decoder
from compressor.pruning.shapes import measure_layer_shapes

log = logging.getLogger(__name__)


def budgeted_phases(limits: Mapping[str, float]) -> list[str]:
    """The decode / prefill phases among a request's limits (`BudgetRequest.limits()`)."""
    return [phase for phase in PHASES if phase in limits]


def tables_key(model: nn.Module, example: torch.Tensor, phase: str, shape: DecodeShape,
               settings: ProbeSettings, round_to: int, grid_points: int, runs: int,
               cache_name: str) -> dict[str, Any]:
    """What a phase's cached tables are valid for; a cache with another key is rebuilt."""
    import onnxruntime

    shapes = measure_layer_shapes(model, example)
    return {"model": cache_name, "phase": phase, "shape": asdict(shape),
            "layers": hashlib.sha256(json.dumps([list(s) for s in shapes]).encode()
                                     ).hexdigest()[:16],
            "threads": settings.threads, "graph_optimization": settings.graph_optimization,
            "round_to": round_to, "grid_points": grid_points, "runs": runs, "cpu": cpu_name(),
            "onnxruntime": onnxruntime.__version__}


def load_or_measure_tables(model: nn.Module, example: torch.Tensor, phases: list[str],
                           shape: DecodeShape, settings: ProbeSettings, round_to: int,
                           grid_points: int, runs: int, cache_dir: str | Path, cache_name: str,
                           say: Callable[[str], None] = log.info) -> dict[str, DecodeTables]:
    """{phase: its tables} for each of `phases`, from the cache or measured (and cached).
    `model` is in the explicit-attention form (`pruning.explicit_attention`); its weights do not
    matter. Each block's grid: `grid_points` head counts from 1 and MLP widths in steps of
    `round_to` (`channel_grid`), bilinear in between."""
    found = {}
    for phase in phases:
        key = tables_key(model, example, phase, shape, settings, round_to, grid_points, runs,
                         cache_name)
        path = Path(cache_dir) / (f"{cache_name}-{phase}-past{shape.past}-prompt{shape.prompt}"
                                  f"-t{settings.threads}-{settings.graph_optimization}"
                                  f"-r{round_to}-g{grid_points}.json")
        if path.exists():
            try:
                blob = json.loads(path.read_text())
                if blob.get("key") == key:
                    found[phase] = DecodeTables.from_json(blob["tables"])
                    continue
                say(f"{phase} tables cache {path} was built for another setup; rebuilding")
            except (ValueError, KeyError, TypeError) as exc:
                say(f"{phase} tables cache {path} is unreadable ({type(exc).__name__}); "
                    "rebuilding")
        say(f"measuring {phase} latency tables for {cache_name} (past {shape.past}, prompt "
            f"{shape.prompt}; once per model, shape, runtime and CPU)")
        found[phase] = measure_decode_tables(
            model, example, replace(settings, batch_size=1), shape, phase,
            lambda heads: channel_grid(heads, 1, grid_points),
            lambda hidden: channel_grid(hidden, round_to, grid_points), runs=runs)
        atomic.write_json(path, {"key": key, "tables": found[phase].to_json()})
    return found


def phase_costs(skeleton: Any, tables: Mapping[str, DecodeTables]
                ) -> dict[str, Callable[[Any], float]]:
    """{phase: ratio vector -> predicted ratio of the dense model's} for the wall: the phase's
    tables priced on the layer shapes the vector's policy leaves (`Skeleton.layer_shapes`)."""
    def cost(found: DecodeTables) -> Callable[[Any], float]:
        return lambda v: found.predict_ratio(skeleton.layer_shapes(skeleton.policy_from_vector(v)))

    return {phase: cost(found) for phase, found in tables.items()}


class PhaseVerdicts(NamedTuple):
    """The shipped decoder's KV-cache export and its measured ratio at each budgeted phase."""

    export: DecoderExportReport
    paired: dict[str, PairedLatency]
    rounds: dict[str, int]

    def ratios(self) -> dict[str, float]:
        return {phase: paired.ratio for phase, paired in self.paired.items()}

    def as_dict(self) -> dict[str, Any]:
        """report.json's `final.decode`."""
        parity = self.export.parity
        return {"onnx": self.export.path,
                "cache_layers": [layer._asdict() for layer in self.export.layers],
                "parity": {"max_abs_diff": parity.max_abs_diff,
                           "relative_diff": parity.relative_diff,
                           "top1_agreement": parity.top1_agreement,
                           "greedy_agreement": parity.greedy_agreement,
                           "greedy_steps": parity.greedy_steps},
                **{phase: {**paired.as_dict(), "rounds": self.rounds[phase]}
                   for phase, paired in self.paired.items()}}


def measure_near(probe: DecodeProbe, data: bytes, phase: str, limit: float | None,
                 recheck_rounds: int, near: float = 0.0) -> PairedLatency:
    """One paired round of the graph `data` at `phase`, `recheck_rounds` more (fresh candidate
    sessions) when `limit` lies within its block spread or the spread reaches within `near` (a
    fraction) under it, pooled: as `latency.measure_against_limit` judges an image model."""
    results = [probe.measure_onnx(data, phase)]
    lo, hi = results[0].spread
    if limit is not None and lo <= limit and hi >= limit * (1 - near):
        results += [probe.measure_onnx(data, phase) for _ in range(recheck_rounds)]
    return pool_rounds(results)


def measure_phases(probe: DecodeProbe, model: nn.Module, tokens: torch.Tensor,
                   limits: Mapping[str, float], recheck_rounds: int, path: str | Path
                   ) -> PhaseVerdicts:
    """Export `model` with its KV cache to `path` (verified against PyTorch on `tokens` [1, n]
    of real text, `ExportError` otherwise) and time it against the probe's dense graph at each
    phase of `limits` (`measure_near`: the verdict does not hang on one window)."""
    exported = export_decoder(model, path, tokens, probe.positions)
    data = Path(exported.path).read_bytes()
    paired = {phase: measure_near(probe, data, phase, limit, recheck_rounds)
              for phase, limit in limits.items()}
    return PhaseVerdicts(exported, paired, {p: m.rounds for p, m in paired.items()})


def decode_probe(dense: nn.Module, shape: DecodeShape, settings: ProbeSettings,
                 blocks: int | None = None) -> DecodeProbe:
    """The run's decode / prefill probe at batch 1 (`blocks`: paired blocks per round)."""
    settings = replace(settings, batch_size=1)
    return DecodeProbe(dense, settings if blocks is None else replace(settings, blocks=blocks),
                       shape)


__all__ = ["PhaseVerdicts", "budgeted_phases", "decode_probe", "load_or_measure_tables",
           "measure_near", "measure_phases", "phase_costs", "tables_key"]
