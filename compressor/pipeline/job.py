"""One compress job end to end: a search method proposes policies, the final stage ships the best.

`run_job` is shared by the command line (`compress_from_config`) and the Python API
(`compressor.compress`); the benchmark harness calls the same pieces.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import NamedTuple

from compressor.pipeline.compress import CompressConfig, Workspace, make_env, prepare, search_fields
from compressor.pipeline.final import RunOutcome, finish
from compressor.provenance import provenance
from compressor.search.distributed import evaluator_pool
from compressor.search.methods import SearchContext, SearchOutcome, get_method

log = logging.getLogger(__name__)


def search_context(ws: Workspace, run_dir: Path | None, resume: bool = False,
                   argv: list[str] | None = None, pool=None) -> SearchContext:
    """What a search method needs from a workspace; `pool`: Ray workers scoring its episodes
    (`search.distributed.EvaluatorPool`), None: in-process."""
    config = ws.config
    config_dict = {"search": search_fields(config), "full": asdict(config),
                   "provenance": provenance(), "command": argv}
    return SearchContext(
        skeleton=ws.skeleton, evaluate=ws.evaluator, budgets=ws.budgets,
        make_env=partial(make_env, ws), max_ratio=config.max_ratio, dense=ws.dense,
        example_input=ws.example, pruning_config=config.pruning, seed=config.seed,
        episodes=config.loop.episodes, loop=config.loop, agent=config.agent, run_dir=run_dir,
        config_dict=config_dict, resume=resume, progress=ws.progress,
        tensorboard=config.tensorboard, pool=pool)


class Searched(NamedTuple):
    """What the search step found, and the report's "search" section."""

    outcome: SearchOutcome
    info: dict


def search(ws: Workspace, run_dir: Path, resume: bool = False, argv: list[str] | None = None
           ) -> Searched:
    """The configured method's search; with `--workers N` its episodes are scored on N Ray
    workers, stopped when it ends, so that the final stage's fine-tunes and latency measurements
    have the machine to themselves."""
    config = ws.config
    method = get_method(config.method)
    workers = config.distributed.workers
    log.info("searching %s over %d units with %s%s; run directory %s",
             f"{config.loop.episodes} episodes" if config.method in ("ddpg", "random") else "",
             len(ws.skeleton.units), config.method,
             f" on {workers} Ray workers" if workers > 1 else "", run_dir)
    try:
        with evaluator_pool(ws.evaluator, config.distributed) as pool:
            if pool is not None:
                ws.times["workers_start"] = pool.start_seconds
            outcome: SearchOutcome = method.search(search_context(ws, run_dir, resume, argv,
                                                                  pool))
            restarts = pool.restarts if pool is not None else 0
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"search state saved in {run_dir}; continue with the same "
                                f"command plus --resume {run_dir}") from None
    ws.times["search"] = outcome.seconds
    info = {"method": config.method, "evaluations": outcome.evaluations,
            "seconds": outcome.seconds, "workers": workers,
            # Issue 15: latency is never measured while evaluations share the cores.
            "latency_measured": "in-process, between episodes" if workers == 1 else
            "on the driver, between batches (no worker computing)"}
    if workers > 1:
        info.update(threads_per_worker=config.distributed.threads, worker_restarts=restarts)
    return Searched(outcome, info)


def run_job(ws: Workspace, run_dir: Path, results_dir: Path, policy_path: Path,
            resume: bool = False, argv: list[str] | None = None) -> RunOutcome:
    """Search with the configured method, then the final stage (see `pipeline.final`)."""
    outcome, info = search(ws, run_dir, resume, argv)
    return finish(ws, outcome.candidates, run_dir, argv, results_dir, policy_path, info)


def compress_from_config(config: CompressConfig, resume: str | None = None,
                         argv: list[str] | None = None) -> RunOutcome:
    """The command line's job: names in, files under runs/, results/ and policies/ out."""
    config = config.resolved()
    ws = prepare(config)
    run_dir = Path(resume or config.out or Path("runs") / config.run_name)
    results_dir = Path(config.results_dir) / run_dir.name
    policy_path = Path(config.policies_dir) / f"{run_dir.name}.json"
    return run_job(ws, run_dir, results_dir, policy_path, resume=resume is not None, argv=argv)
