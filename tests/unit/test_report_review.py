"""The questions the arms disagree on: found in the per-question scores, read beside the
run directory's questions and passages, written to review.csv and shown in both reports."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import yaml

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import html_report, markdown_report, summarise, write_reports
from tunearena.evaluation.report.review import (
    HTML_QUESTIONS,
    Sources,
    disagreements,
    review_csv,
)

CHOICES = ["Velmo", "Tarrow", "Norland"]
ARMS = ["base", "base+rag", "ft"]


def _mc(i: int, right: bool, rag: bool = False) -> dict:
    # Question i's answer is choice i % 3; a wrong arm picks the next one.
    row = {"id": f"p{i}", "acc": int(right), "acc_norm": int(right),
           "choice": i % 3 if right else (i + 1) % 3, "doc_id": f"doc{i // 2}"}
    return row | ({"retrieved_doc": f"doc{i}"} if rag else {})


def _gen(i: int, prediction: str, gold: str) -> dict:
    return {"id": f"a{i}", "exact_match": int(prediction == gold), "f1": 0.0,
            "prediction": prediction, "doc_id": None}


def _results(n_products: int = 4):
    """Products (domain, multiple choice): base right on the even questions, base+rag on
    every one, ft on the even ones and p1, so the odd ones are disagreements; answers
    (domain, generative): ft alone right on a1; facts (general): every arm right."""
    right = {"base": lambda i: i % 2 == 0, "base+rag": lambda i: True,
             "ft": lambda i: i % 2 == 0 or i == 1}
    samples = {
        arm: {
            "facts": [{"id": f"w{i}", "acc": 1, "acc_norm": 1, "choice": 0, "doc_id": None}
                      for i in range(2)],
            "products": [_mc(i, right[arm](i), rag=arm == "base+rag") for i in range(n_products)],
            "answers": [_gen(0, "Velmo", "Velmo"),
                        _gen(1, "Velmo" if arm == "ft" else "Tarrow", "Velmo")],
        }
        for arm in ARMS
    }
    benchmarks = [BenchmarkConfig(name="facts", path="facts.jsonl", kind="general"),
                  BenchmarkConfig(name="products", path="products.jsonl", kind="domain"),
                  BenchmarkConfig(name="answers", path="answers.jsonl", kind="domain",
                                  track="generative")]
    evaluation = EvaluationConfig(benchmarks=benchmarks, arms=ARMS, bootstrap_samples=100)
    return summarise(samples, benchmarks, evaluation, ReportConfig(), {})


def _run_dir(tmp_path: Path, n_products: int = 4) -> Path:
    """A run directory as a run leaves it: the resolved config naming the benchmark files
    (absolute paths), and the passages retrieved for the domain questions."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "products.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "question": f"Where is product {i} made?",
                    "choices": CHOICES, "answer": i % 3, "doc_id": f"doc{i // 2}"}) + "\n"
        for i in range(n_products)))
    (data / "answers.jsonl").write_text("".join(
        json.dumps({"id": f"a{i}", "question": f"Capital, {i}?", "answers": ["Velmo", "velmo"]})
        + "\n" for i in range(2)))
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "retrieval").mkdir(parents=True)
    config = {"name": "r", "evaluation": {"benchmarks": [
        {"name": "facts", "lm_eval_task": "arc_easy", "kind": "general"},
        {"name": "products", "path": str(data / "products.jsonl"), "kind": "domain",
         "track": "multiple_choice"},
        {"name": "answers", "path": str(data / "answers.jsonl"), "kind": "domain",
         "track": "generative"}]}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "retrieval" / "products.json").write_text(json.dumps({
        f"p{i}": {"passages": [f"Product {i} is made in {CHOICES[i % 3]}.", "Other text."],
                  "doc_ids": [f"doc{i}", "doc9"], "scores": [0.9, 0.1]}
        for i in range(n_products)}))
    return run_dir


def test_a_disagreement_is_a_question_some_arms_get_right_and_others_wrong():
    found = disagreements(_results())
    # p1 and p3 (base wrong, base+rag right), then a1 (ft alone right); never w0/w1 (all
    # right) nor p0/p2/a0. Domain benchmarks come first, general ones after.
    assert [(d.benchmark, d.id) for d in found] == [
        ("products", "p1"), ("products", "p3"), ("answers", "a1")]
    p1 = found[0]
    assert [(a.arm, a.right) for a in p1.answers] == [
        ("base", False), ("base+rag", True), ("ft", True)]
    # Without the run directory: the choice's index, no question text.
    assert [a.answer for a in p1.answers] == ["choice 2", "choice 1", "choice 1"]
    assert p1.question == p1.correct == p1.passage == ""
    assert p1.retrieved_doc == "doc1" and p1.doc_id == "doc0"
    assert [a.retrieved_doc for a in p1.answers] == [None, "doc1", None]
    assert [a.answer for a in found[2].answers] == ["Tarrow", "Tarrow", "Velmo"]


def test_the_run_directory_gives_questions_answers_and_passages(tmp_path):
    sources = Sources.of_run(_run_dir(tmp_path))
    assert set(sources.questions) == {"products", "answers"}  # the lm-eval task has no file
    p1, p3, a1 = disagreements(_results(), sources)
    assert p1.question == "Where is product 1 made?"
    assert p1.correct == "Tarrow"
    assert [a.answer for a in p1.answers] == ["Norland", "Tarrow", "Tarrow"]
    assert p1.passage == "Product 1 is made in Tarrow."
    assert (a1.question, a1.correct, a1.passage) == ("Capital, 1?", "Velmo | velmo", "")


def test_a_moved_run_directory_still_reviews_by_id(tmp_path):
    run_dir = _run_dir(tmp_path)
    (tmp_path / "data" / "products.jsonl").unlink()
    (run_dir / "retrieval" / "products.json").write_text("{not json")
    sources = Sources.of_run(run_dir)
    assert set(sources.questions) == {"answers"} and not sources.passages
    p1 = disagreements(_results(), sources)[0]
    assert (p1.question, p1.answers[0].answer, p1.passage) == ("", "choice 2", "")
    assert Sources.of_run(tmp_path / "nowhere") == Sources()


def test_review_csv_lists_every_disagreement_with_each_arms_answer(tmp_path):
    run_dir = _run_dir(tmp_path)
    results = _results()
    paths = write_reports(run_dir, results)
    assert [p.name for p in paths] == ["report.md", "report.html", "review.csv"]
    rows = list(csv.DictReader(io.StringIO((run_dir / "review.csv").read_text())))
    assert [(r["benchmark"], r["question_id"]) for r in rows] == [
        ("products", "p1"), ("products", "p3"), ("answers", "a1")]
    assert rows[0] == {
        "benchmark": "products", "question_id": "p1", "source_doc": "doc0",
        "question": "Where is product 1 made?", "correct_answer": "Tarrow",
        "retrieved_doc": "doc1", "retrieved_passage": "Product 1 is made in Tarrow.",
        "base answer": "Norland", "base right": "0",
        "base+rag answer": "Tarrow", "base+rag right": "1",
        "ft answer": "Tarrow", "ft right": "1"}
    assert rows[2]["ft answer"] == "Velmo" and rows[2]["retrieved_doc"] == ""
    # The page shows the same questions, read from the same run directory.
    page = html.unescape((run_dir / "report.html").read_text())
    assert "Where is product 1 made?" in page and "Product 1 is made in Tarrow." in page


def test_an_arm_that_did_not_score_a_question_leaves_its_cells_empty():
    results = _results()
    results.samples["ft"]["products"] = results.samples["ft"]["products"][:2]
    rows = list(csv.DictReader(io.StringIO(review_csv(results, disagreements(results)))))
    p3 = next(r for r in rows if r["question_id"] == "p3")
    assert (p3["ft answer"], p3["ft right"]) == ("", "")
    assert p3["base right"] == "0" and p3["base+rag right"] == "1"


def test_results_scored_before_the_choice_was_kept_still_review():
    results = _results()
    for rows in results.samples.values():
        for row in rows["products"]:
            del row["choice"]
    p1 = disagreements(results)[0]
    assert [a.answer for a in p1.answers] == ["", "", ""]
    assert [a.right for a in p1.answers] == [False, True, True]


def test_html_shows_the_first_questions_collapsed_before_provenance():
    n = 2 * HTML_QUESTIONS + 10  # odd questions disagree: HTML_QUESTIONS + 5 of them, and a1
    results = _results(n)
    page = html_report(results)
    review = page[page.index('<section id="review">'):page.index("</section>", page.index(
        '<section id="review">'))]
    assert page.index('<section id="review">') < page.index('<section id="provenance"')
    assert "<details>" in review and "<details open" not in review  # collapsed
    assert review.count('<table class="review">') == HTML_QUESTIONS
    assert (f"The first {HTML_QUESTIONS} of {HTML_QUESTIONS + 6} questions, every arm&#39;s "
            "answer side by side") in review
    assert "6 more in review.csv." in review
    assert "products · p1" in review and "answers · a1" not in review


def test_markdown_counts_the_disagreements_and_points_to_the_csv():
    md = markdown_report(_results())
    section = md[md.index("## Questions the arms disagree on"):]
    assert ("Some arms answer right and others wrong on 2 of 4 products questions and 1 of 2 "
            "answers questions. review.csv in the run directory") in section


def test_arms_that_agree_everywhere_leave_the_review_out(tmp_path):
    results = _results(n_products=1)
    results.samples["ft"]["answers"] = results.samples["base"]["answers"]
    assert disagreements(results) == []
    assert "disagree" not in markdown_report(results)
    assert 'id="review"' not in html_report(results)
    write_reports(tmp_path, results)
    assert (tmp_path / "review.csv").read_text().splitlines()[0].startswith(
        "benchmark,question_id,")
    assert len((tmp_path / "review.csv").read_text().splitlines()) == 1
