"""How a number reads, wherever the report prints it: one function per kind of number, so
the same value is written the same way in every table, sentence and renderer."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

NONE = "—"
"""A cell with no value."""


def in_points(fraction: float) -> float:
    """A fraction in percentage points, without the float noise of how it was computed: a
    drop of 0.0375 taken as a mean of differences and as a difference of means
    (0.03749999999999998) is the same 3.75 points, and prints as the same 3.8."""
    return round(fraction * 100, 9)


def signed(fraction: float) -> str:
    """A difference of fractions in percentage points: ``0.034`` -> ``+3.4``."""
    return f"{in_points(fraction):+.1f}"


def unsigned(fraction: float) -> str:
    """A fraction in percentage points, with no sign forced: ``0.034`` -> ``3.4``."""
    return f"{in_points(fraction):.1f}"


def signed_ci(ci: tuple[float, float]) -> str:
    return f"{signed(ci[0])} to {signed(ci[1])}"


def percent(fraction: float | None) -> str:
    """``0.375`` -> ``37.5%``."""
    return NONE if fraction is None else f"{unsigned(fraction)}%"


def percent_ci(ci: tuple[float, float]) -> str:
    return f"{unsigned(ci[0])} to {unsigned(ci[1])}"


def points(tolerance: float) -> str:
    """A tolerance as an adjective: ``0.02`` -> ``2-point``."""
    return f"{tolerance * 100:g}-point"


def pct_label(confidence: float) -> str:
    """A confidence level: ``0.95`` -> ``95%``."""
    return f"{confidence * 100:g}%"


def label(key: str) -> str:
    """``search_ms_per_question`` -> ``search ms per question``; ``score_s`` -> ``score (s)``."""
    for suffix, unit in (("_s", "s"), ("_ms", "ms"), ("_mb", "MB"), ("_usd", "USD")):
        if key.endswith(suffix):
            key = f"{key[: -len(suffix)]} ({unit})"
            break
    return key.replace("_", " ")


def value(v: Any, key: str = "") -> str:
    """Any JSON value in a table cell: yes/no, thousands separators, four significant
    digits, a recall as a percentage, a list joined by commas, a flat dict as ``key: value``
    pairs."""
    if v is None:
        return NONE
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and "recall" in key and 0 <= v <= 1:
        return percent(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, list) and all(not isinstance(x, dict | list) for x in v):
        return ", ".join(value(x, key) for x in v)
    if isinstance(v, dict) and all(not isinstance(x, dict | list) for x in v.values()):
        # e.g. a recall curve: "1: 90.0%, 5: 100.0%", each value formatted as its key's
        return ", ".join(f"{k}: {value(x, key)}" for k, x in v.items())
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(", ", ": "))
    return str(v)


def usd(v: float | None) -> str:
    """Dollars to the cent, or to three significant digits below a cent: ``1234.5`` ->
    ``$1,234.50``, ``0.0000347`` -> ``$0.0000347``."""
    if v is None:
        return NONE
    if v == 0 or abs(v) >= 0.01:
        return f"${v:,.2f}"
    return f"${Decimal(f'{v:.3g}'):f}"


def number(v: float | int | None, spec: str = ",") -> str:
    """A number with a format spec, or the empty mark."""
    return NONE if v is None else format(v, spec)
