"""Budget kinds in one registry: what a budget costs, how the shipped model is judged, its margin.

A kind turns a pruning policy into a cost as a ratio of the dense model (the search's wall uses it)
and reads the same quantity off the finished model (the verdict uses it). Adding a kind means adding
one `BudgetKind` to `KINDS`.

    request = BudgetRequest.from_config(BudgetConfig(latency=0.5), dense_ms=12.0)
    budgets = wall_budgets(request, costs, margin=0.04)       # what the search enforces
    checks = judge(request, {"latency": 0.47, "flops": 0.4})  # what the shipped model met
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, NamedTuple

from compressor.budgets.wall import Budget, check_feasible, reachable_minimum
from compressor.errors import UserError
from compressor.flags import choices, flag

LATENCY_SOURCES = ("model", "probe")


@dataclass(frozen=True)
class BudgetConfig:
    """What the pruned network must fit in. Several budgets may be given at once."""

    latency: Annotated[float | None, flag("--latency-budget")] = None
    """Measured ONNX Runtime latency as a ratio of the dense model's (e.g. 0.5)."""
    latency_ms: Annotated[float | None, flag("--latency-ms")] = None
    """Absolute latency in ms at the probe settings, converted through the dense latency."""
    flops: Annotated[float | None, flag("--flops-budget")] = None
    """MACs as a ratio of the dense model's."""
    params: Annotated[float | None, flag("--params-budget")] = None
    """Parameters as a ratio of the dense model's."""
    decode: Annotated[float | None, flag("--decode-budget")] = None
    """A causal language model's per-token decode latency (batch 1, KV cache of a fixed past
    length in and out, output layer included; `latency.decode`) as a ratio of the dense model's."""
    prefill: Annotated[float | None, flag("--prefill-budget")] = None
    """A causal language model's prefill latency of a prompt (batch 1, `latency.decode`) as a
    ratio of the dense model's."""
    margin: Annotated[float, flag("--margin")] = 0.04
    """The search aims this fraction under a latency budget: the latency model's error on
    held-out policies (results/latency-model) plus measurement spread."""
    latency_source: Annotated[str, flag("--latency-source"), choices(LATENCY_SOURCES)] = "model"
    """`model`: the latency model drives the wall and the reward; every `probe_every`-th
    episode is also measured. `probe`: every episode is exported and measured (slow, exact)."""
    probe_every: Annotated[int, flag("--probe-every")] = 10
    """With `latency_source=model`, measure every k-th episode too (0: never)."""
    probe_correction: Annotated[bool, flag("--probe-correction")] = False
    """Correct the latency model the wall sees by the probes' measured/predicted ratios, learned
    as the search goes (`latency.correction`: a ridge fit of the log ratio on the units'
    pruning ratios). Off by default: the corrected cost can change between episodes and is not
    proven non-increasing in every ratio, which the wall assumes. Either way the probes' bias is
    logged (`probe_bias_median`)."""

    def __post_init__(self) -> None:
        if self.latency_source not in LATENCY_SOURCES:
            raise UserError(f"latency source {self.latency_source!r} is not model or probe")
        if not 0 <= self.margin < 0.5:
            raise UserError(f"--margin {self.margin} must be in [0, 0.5)")


class BudgetKind(NamedTuple):
    """One kind of budget: its name in costs and checks, and how it is aimed."""

    name: str
    """"latency", "flops", "params", "decode" or "prefill": the key of `costs` and of the
    measured values."""
    aims_under: bool
    """Whether the search aims `margin` under the limit (a measured quantity with noise)."""
    describe: Callable[[float, BudgetRequest], str]
    """A ratio of this kind in the user's units, for messages."""


def _latency_words(ratio: float, request: BudgetRequest) -> str:
    if request.latency_ms is not None and request.dense_ms:
        return f"{ratio * request.dense_ms:.3g} ms ({ratio:.2f} of the dense model)"
    return f"{ratio:.2f}"


def _ratio_words(ratio: float, request: BudgetRequest) -> str:
    return f"{ratio:.2f}"


KINDS: tuple[BudgetKind, ...] = (
    BudgetKind("latency", True, _latency_words),
    BudgetKind("flops", False, _ratio_words),
    BudgetKind("params", False, _ratio_words),
    BudgetKind("decode", True, _ratio_words),
    BudgetKind("prefill", True, _ratio_words),
)
FLAGS = {"latency": "--latency-budget (or --latency-ms)", "flops": "--flops-budget",
         "params": "--params-budget", "decode": "--decode-budget",
         "prefill": "--prefill-budget"}


@dataclass(frozen=True)
class BudgetRequest:
    """The budgets a run was asked for, resolved to ratios of the dense model (written once)."""

    latency: float | None = None
    """Latency ratio limit (from --latency-budget, or --latency-ms / dense_ms, the tighter)."""
    flops: float | None = None
    params: float | None = None
    decode: float | None = None
    """Decode latency ratio limit (ms per token against the dense model's, `latency.decode`)."""
    prefill: float | None = None
    """Prefill latency ratio limit (a prompt's, against the dense model's)."""
    latency_ms: float | None = None
    """The absolute limit as given, when given."""
    dense_ms: float | None = None
    """The dense model's latency at the probe settings (converts ms to a ratio)."""

    @classmethod
    def from_config(cls, config: BudgetConfig, dense_ms: float | None = None) -> BudgetRequest:
        latency = config.latency
        if config.latency_ms is not None:
            if dense_ms is None or dense_ms <= 0:
                raise UserError("--latency-ms needs the dense model's measured latency")
            if not 0 < config.latency_ms < dense_ms:
                raise UserError(f"--latency-ms {config.latency_ms} is not below the dense model's "
                                f"{dense_ms:.3g} ms at these probe settings; give less than "
                                f"{dense_ms:.3g}")
            ratio = config.latency_ms / dense_ms
            latency = ratio if latency is None else min(latency, ratio)
        request = cls(latency=latency, flops=config.flops, params=config.params,
                      decode=config.decode, prefill=config.prefill,
                      latency_ms=config.latency_ms, dense_ms=dense_ms)
        for kind in KINDS:
            limit = request.limit(kind.name)
            if limit is not None and not 0 < limit < 1:  # also refuses NaN
                raise UserError(f"{kind.name} budget {limit} is out of range; give a ratio of the "
                                "dense model strictly between 0 and 1")
        if not request.limits():
            raise UserError("no budget given; pass --latency-budget, --latency-ms, --flops-budget, "
                            "--params-budget, --decode-budget or --prefill-budget")
        return request

    def limit(self, name: str) -> float | None:
        return getattr(self, name)

    def limits(self) -> dict[str, float]:
        """{kind name: ratio limit} of the budgets given."""
        return {k.name: self.limit(k.name) for k in KINDS if self.limit(k.name) is not None}

    def as_dict(self) -> dict:
        """The budgets as given; an ms budget also carries the ratio it became and why."""
        given = {k: v for k, v in asdict(self).items() if v is not None}
        if self.latency_ms is None:
            given.pop("dense_ms", None)
        return given


class Check(NamedTuple):
    value: float
    limit: float
    ok: bool


def wall_budgets(request: BudgetRequest, costs: Mapping[str, Callable], margin: float
                 ) -> list[Budget]:
    """The budgets the action wall enforces: each kind's cost of a ratio vector, aimed under. A
    budget whose kind has no cost here (a decode budget on an image model) is a one-line
    UserError."""
    for kind in KINDS:
        if request.limit(kind.name) is not None and kind.name not in costs:
            raise UserError(f"a {kind.name} budget cannot be priced for this model (it has "
                            f"{', '.join(costs) or 'no'} costs); drop {FLAGS[kind.name]}")
    return [Budget(kind.name, costs[kind.name],
                   request.limit(kind.name) * (1 - margin if kind.aims_under else 1))
            for kind in KINDS if request.limit(kind.name) is not None]


def check_reachable(request: BudgetRequest, budgets: list[Budget], n_units: int,
                    max_ratio: float, margin: float) -> None:
    """One line in the user's numbers when a budget cannot be met even at the maximum ratio."""
    if not 0 < max_ratio < 1:
        raise UserError(f"--max-ratio {max_ratio} must be between 0 and 1 (exclusive)")
    least = reachable_minimum(budgets, n_units, max_ratio)
    for kind in KINDS:
        limit = request.limit(kind.name)
        if limit is None:
            continue
        minimum = least[kind.name]
        asked, reach = kind.describe(limit, request), kind.describe(minimum, request)
        if asked == reach:  # two decimals would hide the difference
            asked, reach = f"{limit:.4f}", f"{minimum:.4f}"
        if minimum > limit:
            raise UserError(f"{kind.name} budget {asked} is below the reachable minimum {reach} at "
                            f"max ratio {max_ratio}; raise {FLAGS[kind.name]} or --max-ratio")
        if kind.aims_under and minimum > limit * (1 - margin):
            raise UserError(f"{kind.name} budget {asked} is reachable only without the search's "
                            f"{margin:.0%} margin (minimum {reach}); raise the budget, "
                            "--max-ratio, or lower --margin")
    check_feasible(budgets, n_units, max_ratio)  # the wall's own invariant


def judge(request: BudgetRequest, measured: Mapping[str, float]) -> dict[str, Check]:
    """The shipped model against every budget given and measured: {kind name: Check}. A budget
    without a measurement (the export failed before latency was measured) is left out; the caller
    says why."""
    return {name: Check(measured[name], limit, measured[name] <= limit + 1e-9)
            for name, limit in request.limits().items() if name in measured}


def verdict(checks: Mapping[str, Check]) -> str:
    return "within budget" if all(c.ok for c in checks.values()) else "OVER BUDGET"
