"""Policy files: every unit's pruning ratio, what it was made for, and what it met."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from compressor.errors import UserError
from compressor.io import atomic

POLICY_FORMAT = "compressor-policy-v1"

def write_policy(path: str | Path, *, model: str, dataset: str, input_size: int,
                 policy: dict[str, float], units: list[str], budget: dict, metrics: dict,
                 extra: dict | None = None) -> Path:
    """A policy file: every unit's pruning ratio (0.0 for units the policy leaves alone), what it
    was made for, the budget and metrics it met, and library versions."""
    from compressor.provenance import provenance

    unknown = sorted(set(policy) - set(units))
    if unknown:
        raise ValueError(f"policy names units that are not in `units`: {unknown[:5]}")
    return atomic.write_json(path, {
        "format": POLICY_FORMAT, "model": model, "dataset": dataset, "input_size": input_size,
        "units": list(units), "policy": {name: float(policy.get(name, 0.0)) for name in units},
        "budget": budget, "metrics": metrics, **(extra or {}), "provenance": provenance(),
    })


def _shortened(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit
                                       else "")


def read_policy(path: str | Path, *, model: str | None, valid_units: list[str]
                ) -> dict[str, float]:
    """A policy file's `{unit: pruning_ratio}`, validated against the model it will prune.

    A hand-written file needs only `{"policy": {unit: ratio}}`; `model`, when present, must match.
    """
    path = Path(path)
    fix = "pass a policy.json written by `compressor compress`"
    try:
        blob: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"policy file {path} does not exist; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
        reason = getattr(exc, "msg", type(exc).__name__)
        raise UserError(f"policy file {path} is not valid JSON ({reason}); {fix}") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("policy"), dict):
        raise UserError(f"policy file {path} has no 'policy' mapping of unit names to pruning "
                        f"ratios; {fix}")
    if blob.get("format", POLICY_FORMAT) != POLICY_FORMAT:
        raise UserError(f"policy file {path} has format {blob['format']!r}, not "
                        f"{POLICY_FORMAT!r}; {fix}")
    made_for = blob.get("model")
    if model is not None and made_for is not None and made_for != model:
        raise UserError(f"policy file {path} was made for {made_for}, not {model}; pass "
                        f"--model {made_for} or a policy made for {model}")
    policy = blob["policy"]
    unknown = [name for name in policy if name not in valid_units]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid_units, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"policy file {path} names unit {unknown[0]!r} that "
                        f"{model or 'this model'} lacks{hint}; valid units: "
                        f"{_shortened(valid_units)}")
    for name, ratio in policy.items():
        if (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                or not 0.0 <= float(ratio) < 1.0):
            raise UserError(f"policy file {path}: pruning ratio {ratio!r} for unit {name!r} is "
                            "outside [0, 1)")
    return {name: float(ratio) for name, ratio in policy.items()}


def read_round_to(path: str | Path) -> int | None:
    """The channel multiple a policy file recorded; None when it records none or cannot be read
    (`read_policy` reports a bad file with its own message)."""
    try:
        recorded = json.loads(Path(path).read_text()).get("round_to")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, int) else None


def read_fp32_layers(path: str | Path) -> list[str]:
    """The layers a `compress --quantize mixed` run kept FP32, as its policy file records them."""
    blob = json.loads(Path(path).read_text())
    layers = blob.get("fp32_layers")
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise UserError(f"policy file {path} records no FP32 layers (it was not written by "
                        "`compressor compress --quantize mixed`); use --quantize int8")
    return layers
