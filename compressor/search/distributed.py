"""A pool of Ray actors that score episodes in parallel (`--workers N`); latency stays on the driver.

Each actor holds its own copy of the driver's `EpisodeEvaluator` (the dense model, skeleton,
recovery batches and search images, sent once) and runs with `worker_threads` torch threads. It
prunes, recovers and scores a policy and returns the accuracy; the driver keeps what must be
counted once or measured undisturbed: the cache, the call counter, the latency model's prediction
and every real latency probe, run after a batch's scores are in, while no worker computes
(concurrent load moved one network's paired ratio 0.35-0.67 here).

    with evaluator_pool(evaluator, DistributedConfig(workers=2)) as pool:
        evaluations = pool.map(policies)   # in the order of `policies`, whoever finishes first

A worker that dies has its policy retried on a fresh actor; each policy is counted once. With
`workers=1` `evaluator_pool` yields None and Ray is never imported: Ray is an optional extra,
`pip install 'compressor[distributed]'`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from compressor.errors import InternalError, UserError
from compressor.flags import flag
from compressor.search.env import Evaluation

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'compressor[distributed]'"


@dataclass(frozen=True)
class DistributedConfig:
    """Where a search's episodes are scored (`--workers`, `--ray-address`, `--worker-threads`)."""

    workers: Annotated[int, flag("--workers")] = 1
    """Ray actors scoring episodes in parallel, and so the episodes proposed per batch; 1: every
    episode in-process, one at a time, without Ray (the default)."""
    ray_address: Annotated[str | None, flag("--ray-address")] = None
    """`auto` or HOST:PORT of a running Ray cluster to join; None: start a local one with this
    machine's cores (and stop it afterwards)."""
    worker_threads: Annotated[int | None, flag("--worker-threads")] = None
    """torch threads of each worker; None: this machine's cores // workers, at least 1."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be 1 or more, got {self.workers}")
        if self.worker_threads is not None and self.worker_threads < 1:
            raise UserError(f"--worker-threads must be 1 or more, got {self.worker_threads}")

    @property
    def threads(self) -> int:
        """torch threads per worker."""
        return self.worker_threads or max(1, cores() // self.workers)


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def import_ray():
    """The `ray` module, or a one-line UserError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--workers > 1 needs Ray: {INSTALL_HINT}") from None
    return ray


CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")
"""Where `ray start --head` leaves the address of the cluster it started (ray.init's docstring)."""


def resolve_auto() -> str:
    """`auto` in the order ray.init resolves it: RAY_ADDRESS, then the address the last
    `ray start --head` on this machine wrote; a UserError when there is neither."""
    address = os.environ.get("RAY_ADDRESS", "")
    if not address and CURRENT_CLUSTER.exists():
        address = CURRENT_CLUSTER.read_text().strip()
    if not address:
        raise UserError("--ray-address auto found no running Ray cluster (no RAY_ADDRESS, no "
                        f"{CURRENT_CLUSTER}); start one with `ray start --head`, give "
                        "HOST:PORT, or leave --ray-address out for a local one")
    return address


def check(config: DistributedConfig) -> None:
    """What can be refused before any work: Ray missing, a malformed or unreachable address
    (`auto` resolved as Ray would), Ray options without workers."""
    if config.workers == 1:
        if config.ray_address is not None or config.worker_threads is not None:
            raise UserError("--ray-address and --worker-threads take effect with --workers 2 or "
                            "more; add --workers N")
        return
    import_ray()
    address = config.ray_address
    if address is None:
        return
    if address == "auto":
        address = resolve_auto()
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address takes auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address} ({type(exc).__name__}); "
                        "start it with `ray start --head` or fix --ray-address") from None


def connect(config: DistributedConfig) -> bool:
    """Join the configured cluster, or start a quiet local one with this machine's cores;
    True when this call connected (the caller disconnects), False when Ray already was."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if config.ray_address is None:
        # No usage report to Ray's servers from a library call (and none is reachable here).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Errors only: a new local cluster otherwise prints a warning that it enabled token
        # authentication (its default; asking for it by RAY_AUTH_MODE=token fails to start).
        ray.init(num_cpus=cores(), include_dashboard=False,
                 **{**quiet, "logging_level": logging.ERROR})
        return True
    try:
        ray.init(address=config.ray_address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot join the Ray cluster at {config.ray_address} "
                        f"({_last_line(exc)}); start it with `ray start --head` or fix "
                        "--ray-address") from None
    return True


class EvaluatorActor:
    """One worker: its own copy of the episode evaluator, run with `threads` torch threads."""

    def __init__(self, evaluator, threads: int):
        torch.set_num_threads(threads)
        self.evaluator = evaluator

    def ready(self) -> int:
        return os.getpid()

    def score(self, policy: dict[str, float]) -> Evaluation:
        """Prune, recover and score `policy` (the worker's evaluator measures no latency)."""
        return self.evaluator(policy)


def worker_evaluator(evaluator):
    """What each worker gets of the driver's evaluator: everything but latency (the model's
    prediction and the probe stay on the driver), the cache and the call counter."""
    shipped = copy.copy(evaluator)
    shipped.latency_ratio, shipped.probe, shipped.probe_every = None, None, 0
    shipped.correction = None
    shipped.cache, shipped.calls = {}, 0
    return shipped


class EvaluatorPool:
    """`config.workers` Ray actors scoring policies for the driver's `evaluator`.

    `map` gives what calling the evaluator on each policy in turn would give (the same cache hits,
    call count and probe schedule), with the scores computed in parallel.
    """

    def __init__(self, evaluator, config: DistributedConfig, max_attempts: int = 3):
        started = time.perf_counter()
        self.ray = ray = import_ray()
        self.evaluator, self.config, self.max_attempts = evaluator, config, max_attempts
        self.workers, self.threads = config.workers, config.threads
        self.restarts = 0
        self.disconnect = connect(config)
        try:
            self._check_resources()
            gpus = 1 if evaluator.device.type == "cuda" else 0
            self._actor_class = ray.remote(num_cpus=self.threads, num_gpus=gpus)(EvaluatorActor)
            try:
                self._payload = ray.put(worker_evaluator(evaluator))
            except Exception as exc:  # a user's model or function that cannot be pickled
                raise UserError(f"--workers sends the model, data and any evaluate/finetune "
                                f"function to Ray workers, which needs them picklable "
                                f"({_last_line(exc)})") from None
            self.actors = [self._start() for _ in range(self.workers)]
            try:
                ray.get([actor.ready.remote() for actor in self.actors])
            except ray.exceptions.RayActorError as exc:
                raise UserError(f"the Ray workers could not build the evaluator "
                                f"({_last_line(exc)}); every Ray node needs compressor and the "
                                "model's code importable") from None
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.perf_counter() - started
        log.info("%d Ray workers x %d torch threads ready in %.1f s", self.workers, self.threads,
                 self.start_seconds)

    def _check_resources(self) -> None:
        resources = self.ray.cluster_resources()
        wanted = {"CPU": self.workers * self.threads}
        if self.evaluator.device.type == "cuda":
            wanted["GPU"] = self.workers
        for kind, count in wanted.items():
            if resources.get(kind, 0) < count:
                raise UserError(f"{self.workers} workers x {self.threads} threads need {count} "
                                f"{kind}s; the Ray cluster has {resources.get(kind, 0):g}: lower "
                                "--workers or --worker-threads")

    def _start(self):
        return self._actor_class.remote(self._payload, self.threads)

    def _replace(self, slot: int) -> None:
        """A fresh actor in `slot` (the old one is dead, or is made so)."""
        with contextlib.suppress(Exception):
            self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._start()
        self.restarts += 1

    def map(self, policies: Sequence[dict[str, float]]) -> list[Evaluation]:
        """The evaluation of every policy, in order: scores from the workers (each network not
        cached yet scored once), then the probes due, on the driver, once no worker computes."""
        ev = self.evaluator
        keys, due = [], []
        for policy in policies:
            ev.calls += 1
            keys.append(ev.key(policy))
            due.append(ev.probe_due(ev.calls))
        todo: dict[tuple, dict[str, float]] = {}
        for policy, key in zip(policies, keys, strict=True):
            if key not in ev.cache and key not in todo:
                todo[key] = policy
        scored = dict(zip(todo, self._score_all(list(todo.values())), strict=True))
        out = []
        for policy, key, must_probe in zip(policies, keys, due, strict=True):
            cached = ev.cache.get(key)
            if cached is not None and (not must_probe or "latency_measured" in cached.metrics):
                out.append(cached._replace(metrics={**cached.metrics, "cached": True,
                                                    "seconds": {}}))
                continue
            # A network cached without a measurement that is due one is measured, not rescored.
            evaluation, seconds = self._complete(policy, scored.pop(key, None) or cached,
                                                 must_probe)
            ev.cache[key] = evaluation
            out.append(evaluation._replace(metrics={**evaluation.metrics, "seconds": seconds}))
        return out

    def _complete(self, policy: dict[str, float], scored: Evaluation, must_probe: bool
                  ) -> tuple[Evaluation, dict[str, float]]:
        """A worker's score plus the driver's latency numbers, as the serial evaluator has them."""
        ev = self.evaluator
        seconds = dict(scored.metrics.get("seconds", {}))
        started = time.perf_counter()
        # The architecture is what is timed: the driver prunes its own copy when a probe is due
        # (recovery changes weights only).
        metrics = ev.latency_metrics(policy, None, must_probe)
        seconds["latency"] = time.perf_counter() - started
        # A searched-precision score (INT8) keeps the FP32 top-1 beside it.
        fp32 = {k: v for k, v in scored.metrics.items() if k == "fp32_top1"}
        return Evaluation(scored.top1, scored.flops_ratio,
                          {**metrics, **fp32, "cached": False}), seconds

    def _score_all(self, policies: list[dict[str, float]]) -> list[Evaluation]:
        """Each policy scored by some worker, one in flight per worker; a policy whose worker
        died goes to the front of the queue and to a fresh actor in that worker's place."""
        ray = self.ray
        results: list[Evaluation | None] = [None] * len(policies)
        attempts = [0] * len(policies)
        queue, idle = deque(range(len(policies))), deque(range(len(self.actors)))
        running = {}  # object ref -> (policy index, worker slot)
        while queue or running:
            while queue and idle:
                slot, index = idle.popleft(), queue.popleft()
                running[self.actors[slot].score.remote(policies[index])] = (index, slot)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            index, slot = running.pop(ref)
            try:
                results[index] = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                attempts[index] += 1
                if attempts[index] >= self.max_attempts:
                    raise InternalError(f"a policy killed {attempts[index]} Ray workers in a row "
                                        f"({_last_line(exc)}); see the Ray logs") from None
                log.warning("Ray worker %d died (%s); its episode goes to a fresh worker", slot,
                            type(exc).__name__)
                self._replace(slot)
                queue.appendleft(index)
            except ray.exceptions.RayTaskError as exc:
                # The worker's own error (e.g. a user's evaluate refusing a model), as raised.
                cause = getattr(exc, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None
                raise
            idle.append(slot)
        return results

    def close(self) -> None:
        """Stop the actors; disconnect (and stop a local cluster) if this pool connected."""
        for actor in getattr(self, "actors", []):
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self.disconnect:
            self.ray.shutdown()
            self.disconnect = False


@contextlib.contextmanager
def evaluator_pool(evaluator, config: DistributedConfig) -> Iterator[EvaluatorPool | None]:
    """An `EvaluatorPool` for the block, closed after it; None with one worker (no Ray)."""
    if config.workers == 1:
        yield None
        return
    pool = EvaluatorPool(evaluator, config)
    try:
        yield pool
    finally:
        pool.close()


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of an error (a Ray error's text ends with the cause's)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]
