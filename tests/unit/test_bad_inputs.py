"""Bad inputs, as a hostile but fair user would give them: each case is an input, the exit code
it must get, the words its message must contain, and the files that must come through it
unchanged. ``tunearena`` runs in process (``main(argv)``), so each case costs no interpreter
start; the cases that need real signals or two drivers live in the integration tests
(``test_run_guard.py``).

A case builds its input in ``tmp_path`` and returns the command line; files it lists under
``keep`` are hashed before and after the command, and must not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunearena.launch.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
DEMO_BASE = REPO / "examples" / "demo_world" / "base_model"


@dataclass(frozen=True)
class Case:
    """One bad input. ``build(tmp_path)`` writes what it needs and returns ``(argv, keep)``:
    the command line and the files that must come through unchanged."""

    name: str
    build: Callable[[Path], tuple[list[str], list[Path]]]
    code: int
    words: tuple[str, ...]
    no_traceback: bool = True
    marks: tuple = field(default=())


# --- model files: weights, hub ids, custom code ------------------------------------------

MODEL_CASES: list[Case] = [
]


# --- data and config: training files, corpus, index, YAML, --set --------------------------

DATA_CASES: list[Case] = [
]


# --- run directories, reports, cluster -----------------------------------------------------


def _reported_run(tmp_path: Path) -> Path:
    """A run dir with a good results.json and the reports rendered from it."""
    from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
    from tunearena.evaluation.report import summarise, write_reports, write_results

    benchmarks = [BenchmarkConfig(name="dom", path="dom.jsonl", kind="domain")]
    samples = {arm: {"dom": [{"id": f"q{i}", "acc": int(i < right), "acc_norm": 0}
                             for i in range(10)]}
               for arm, right in (("base", 3), ("base+rag", 7), ("ft", 5), ("ft+rag", 8))}
    results = summarise(samples, benchmarks,
                        EvaluationConfig(benchmarks=benchmarks, bootstrap_samples=200),
                        ReportConfig(), {})
    run_dir = tmp_path / "runs" / "done"
    run_dir.mkdir(parents=True)
    write_results(run_dir, results)
    write_reports(run_dir, results)
    return run_dir


def _report_over(results_json: str | None) -> Callable[[Path], tuple[list[str], list[Path]]]:
    """``tunearena report`` on a reported run whose results.json became ``results_json``
    (None: deleted); its reports must come through."""

    def build(tmp_path: Path) -> tuple[list[str], list[Path]]:
        run_dir = _reported_run(tmp_path)
        path = run_dir / "results.json"
        if results_json is None:
            path.unlink()
        else:
            path.write_text(results_json)
        return ["report", str(run_dir)], [run_dir / "report.html", run_dir / "report.md"]

    return build


RUN_CASES: list[Case] = [
    Case("report-results-without-results", _report_over('{"arms": 5}'), 2,
         ("results.json", "settings: Field required", "arms: Input should be a valid list",
          "benchmarks: Field required", "report.md and report.html kept")),
    Case("report-results-truncated", _report_over('{"schema_version": 3, "arms": ["ba'), 2,
         ("results.json: not valid JSON", "kept as they were")),
    Case("report-results-a-list", _report_over('[{"arms": ["base"]}]'), 2,
         ("results.json: expected a JSON object, got list", "kept as they were")),
    Case("report-results-missing", _report_over(None), 2,
         ("results.json: results not found", "kept as they were")),
    Case("report-results-empty-object",
         _report_over('{"settings": {}, "arms": [], "benchmarks": {}}'), 2,
         ("results.json", "kept as they were")),
]


ALL_CASES = [*MODEL_CASES, *DATA_CASES, *RUN_CASES]


def _digest(path: Path) -> str:
    if path.is_dir():
        return "".join(_digest(p) for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=c.marks) for c in ALL_CASES])
def test_bad_input(case: Case, tmp_path, capsys):
    argv, keep = case.build(tmp_path)
    before = {p: _digest(p) for p in keep}
    code = main(argv)
    out, err = capsys.readouterr()
    said = " ".join((out + err).split())  # rich wraps long lines
    assert code == case.code, said
    for word in case.words:
        assert " ".join(word.split()) in said, f"{word!r} not in: {said}"
    if case.no_traceback:
        assert "Traceback" not in said
    for path, digest in before.items():
        assert path.exists() and _digest(path) == digest, f"{path} changed"
