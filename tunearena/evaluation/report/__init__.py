"""Per-question scores -> typed results (the source of truth) -> verdict -> Markdown and HTML.

``numbers`` computes scores, intervals, their warnings and forgetting; ``costs`` the cost per
correct answer; ``verdict`` the recommendation; ``sentences`` words them; ``view`` formats every
number once; ``markdown`` and ``html`` lay the view out, ``plots`` draws for the HTML page.
Every score is a fraction in [0, 1] in the results; "points" in sentences and tables are
percentage points, printed with one decimal.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tunearena.evaluation.report.build import summarise
from tunearena.evaluation.report.html import render_html
from tunearena.evaluation.report.markdown import render_markdown
from tunearena.evaluation.report.numbers import primary_score, sample_track
from tunearena.evaluation.report.review import REVIEW_CSV, Sources, disagreements, review_csv
from tunearena.evaluation.report.verdict import decide
from tunearena.evaluation.report.view import build_view
from tunearena.evaluation.results import PRIMARY_METRIC, Results, ResultsError, load_results
from tunearena.files import write_atomic


def markdown_report(results: Results) -> str:
    """The report of ``results`` as Markdown."""
    return render_markdown(build_view(results))


def html_report(results: Results) -> str:
    """The report of ``results`` as one self-contained HTML page."""
    return render_html(build_view(results), results)


def write_reports(run_dir: Path, results: Results) -> list[Path]:
    """Write ``report.md``, ``report.html`` and ``review.csv`` (the questions the arms
    disagree on, ``review.py``) for ``results`` into ``run_dir``; returns their paths.

    Every file is rendered, then written to a temp name, before any replaces its old one:
    a failure while rendering or writing leaves the previous reports as they were.
    """
    view = build_view(results)
    sources = Sources.of_run(run_dir)
    texts = {run_dir / "report.md": render_markdown(view),
             run_dir / "report.html": render_html(view, results, sources),
             run_dir / REVIEW_CSV: review_csv(results, disagreements(results, sources))}
    staged: dict[Path, Path] = {}
    try:
        for path, text in texts.items():
            fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{path.name}.", suffix=".tmp")
            staged[path] = Path(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        for path, tmp in staged.items():
            os.replace(tmp, path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return list(texts)


def write_results(run_dir: Path, results: Results) -> Path:
    """Write ``results.json`` (see ``Results.to_json``) into ``run_dir``, atomically."""
    path = run_dir / "results.json"
    write_atomic(path, json.dumps(results.to_json(), indent=1) + "\n")
    return path


__all__ = [
    "PRIMARY_METRIC",
    "Results",
    "ResultsError",
    "decide",
    "html_report",
    "load_results",
    "markdown_report",
    "primary_score",
    "render_html",
    "render_markdown",
    "sample_track",
    "summarise",
    "write_reports",
    "write_results",
]
