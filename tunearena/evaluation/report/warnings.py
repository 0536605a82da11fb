"""Which statistics warnings stand under the verdict, for both renderers."""

from __future__ import annotations

from tunearena.evaluation.report.view import ReportView

_READ = {"base+rag", "ft", "ft+rag"}
"""The arms the decision rule reads besides base."""


def verdict_warnings(view: ReportView) -> list[str]:
    """The statistics warnings the verdict's reader must see: too few documents anywhere, an
    interval too wide to decide for an arm the rule reads (each benchmark's table shows the
    others), and synthesis's own (a small synthesised test set, or one from few documents)."""
    found = [f"{w['benchmark']}: {w['message']}" for w in view.warnings
             if w["kind"] != "wide_interval" or _READ & set(w["arms"])]
    if view.data:
        found += [f"synthesised data: {w}" for w in view.data["warnings"]]
    return found
