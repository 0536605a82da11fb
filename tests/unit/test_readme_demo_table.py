"""scripts/readme_demo_table.py: the README's demo table and the scores its prose quotes,
rewritten from a run's results, and the check that fails when they differ. (The demo's own
run is checked in tests/e2e/test_demo_pipeline.py.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import summarise, write_results
from tunearena.evaluation.report.markdown import summary_table
from tunearena.evaluation.report.view import build_view

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "readme_demo_table", REPO / "scripts" / "readme_demo_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


script = _script()


def _answers(n: int, right: int) -> list[dict]:
    return [{"id": f"q{i}", "acc": int(i < right), "acc_norm": 0, "choice": 0,
             "doc_id": f"d{i // 4}"} for i in range(n)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run whose numbers differ from the README's: 40 domain questions on 10 documents,
    ft@qa forgets 20 general points, ft@qa_replay 5, RAG adds 30 domain points."""
    right = {"base": (4, 40), "base+rag": (16, 40), "ft@qa": (30, 32), "ft@qa_replay": (28, 38)}
    samples = {arm: {"lumora_products": _answers(40, d),
                     "world_facts": [{"id": f"w{i}", "acc": int(i < g), "acc_norm": 0}
                                     for i in range(40)]}
               for arm, (d, g) in right.items()}
    benchmarks = [BenchmarkConfig(name="lumora_products", path="p.jsonl", kind="domain"),
                  BenchmarkConfig(name="world_facts", path="w.jsonl", kind="general")]
    evaluation = EvaluationConfig(benchmarks=benchmarks, arms=list(right),
                                  bootstrap_samples=200, forgetting_tolerance=0.07)
    results = summarise(samples, benchmarks, evaluation, ReportConfig(),
                        {"latency": {"base+rag": {"prompt_tokens_added": 201.4}}})
    out = tmp_path_factory.mktemp("run")
    write_results(out, results)
    return out


@pytest.fixture
def readme(tmp_path) -> Path:
    copy = tmp_path / "README.md"
    copy.write_text((REPO / "README.md").read_text())
    return copy


def test_the_table_and_every_quoted_score_come_from_the_run(run_dir, readme):
    from tunearena.evaluation.report import load_results

    results = load_results(run_dir / "results.json")
    assert script.main([str(run_dir), "--readme", str(readme)]) == 0
    text = readme.read_text()
    table = summary_table(build_view(results))
    assert f"{script.START}\n\n{table}\n{script.END}" in text
    section = text[text.index(script.SECTION):]
    verdict = results.decision.verdict
    for quoted in ("resample the 10\ndocuments", "general knowledge: 20.0\npoints without replay",
                   "keeps all but 5.0 of them", "within the demo's 7-point tolerance",
                   f"verdict is\n**{verdict}**", "RAG alone also helps (+30.0 points)",
                   "passages add 201 prompt tokens"):
        assert quoted.replace("\n", " ") in " ".join(section.split()), quoted
    # Only the table and the quoted numbers changed: the page around them is as it was.
    original = (REPO / "README.md").read_text()
    assert text[:text.index(script.START)] == original[:original.index(script.START)]
    after = "\n## A real model on real text"
    assert text[text.index(after):] == original[original.index(after):]
    # Written once, it is what the run gives: the check passes, and a second run is a no-op.
    assert script.check(run_dir, readme) == ""
    assert script.main([str(run_dir), "--readme", str(readme), "--check"]) == 0


def test_check_prints_the_diff_and_fails_when_the_readme_drifts(run_dir, readme, capsys):
    assert script.main([str(run_dir), "--readme", str(readme), "--check"]) == 1
    out = capsys.readouterr()
    assert "differs from" in out.err
    assert "+| base+rag | 40.0% (+30.0," in out.out
    assert "-it is not shown to help further. RAG alone also helps (+25.0 points)" in out.out
    assert readme.read_text() == (REPO / "README.md").read_text()  # --check writes nothing


def test_prose_reworded_past_a_claim_or_lost_markers_are_errors(run_dir, readme, capsys):
    text = readme.read_text()
    readme.write_text(text.replace("keeps all but", "keeps nearly all but"))
    assert script.main([str(run_dir), "--readme", str(readme)]) == 2
    assert "'keeps all but ([\\\\d.]+) of them' is found 0 times" in capsys.readouterr().err
    readme.write_text(text.replace(script.END, ""))
    with pytest.raises(script.ReadmeError, match="expected one <!-- demo-table:start -->"):
        script.check(run_dir, readme)
    assert readme.read_text() == text.replace(script.END, "")  # nothing written


def test_the_method_tables_time_and_memory_are_not_checked_but_its_gains_are():
    def block(memory: str, seconds: str, gain: str) -> str:
        return (f"x\n{script.METHODS_START}\n\n| stage | method | peak memory (MB) | "
                f"train time (s) | domain gain (points) |\n|---|---|---:|---:|---:|\n"
                f"| qa | full | {memory} | {seconds} | {gain} |\n\nafter\n{script.METHODS_END}\n")
    mask = script._mask_machine_columns
    assert mask(block("747", "49.3", "+14.7")) == mask(block("736", "52.0", "+14.7"))
    assert mask(block("747", "49.3", "+14.7")) != mask(block("747", "49.3", "+15.7"))


def test_the_check_lets_a_score_move_by_a_flipped_near_tie_and_no_further():
    readme = ("| ft | 51.7% (+43.9, 95% CI +33.9 to +53.3) |\n"
              "within the demo's 5-point tolerance; 134 prompt tokens\n")
    rerun = ("| ft | 52.2% (+44.4, 95% CI +34.4 to +53.3) |\n"
             "within the demo's 5-point tolerance; 134 prompt tokens\n")
    assert script.within_float_noise(readme, rerun)
    assert not script.within_float_noise(readme, rerun.replace("52.2%", "53.9%"))
    assert not script.within_float_noise(readme, rerun.replace("5-point", "20-point"))
    assert not script.within_float_noise(readme, rerun.replace("tolerance;", "margin;"))
    assert not script.within_float_noise(readme, rerun + "one more line\n")
