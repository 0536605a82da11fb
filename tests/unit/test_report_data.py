"""The report's Data section: what synthesis made of the documents, kept in results.json,
shown gate by gate, with the questions the base model answers without any document and the
synthesis warnings under the verdict."""

from __future__ import annotations

import copy
from html.parser import HTMLParser

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import (
    html_report,
    load_results,
    markdown_report,
    summarise,
    write_reports,
    write_results,
)
from tunearena.evaluation.results import KnownWithoutDocument, Results, parse_results

BENCHMARKS = [
    BenchmarkConfig(name="synthesised", path="synthesis/qa_test.jsonl", kind="domain"),
    BenchmarkConfig(name="products", path="products.jsonl", kind="domain"),
    BenchmarkConfig(name="facts", path="facts.jsonl", kind="general"),
]
GATES = [
    {"gate": "parse", "what": "The generator's reply holds a question and an answer.",
     "seen": 28, "kept": 27, "dropped_examples": ["Lorem ipsum without a question"]},
    {"gate": "supported", "what": "The answer is found in its document.", "seen": 27,
     "kept": 15, "dropped_examples": ["What is the Peho lamp? -> a lamp (not in the document)",
                                      "Who built it? -> Tynu (not in the document)"]},
    {"gate": "duplicate", "what": "No earlier question asks the same.", "seen": 15, "kept": 14,
     "dropped_examples": []},
    {"gate": "leak", "what": "No test question is asked in nearly the same words as a "
     "training question.", "seen": 14, "kept": 12, "dropped_examples": []},
]
PASSAGES = ["The Peho lamp sells for 85 dollars.", "Guja Dalo designed the Lope lamp in 2019."]
SYNTHESIS = {
    "documents": 6,
    "skipped": [{"path": "docs/scan.pdf", "reason": "no text layer (scanned?)"}],
    "drafted": 4, "reused": 2, "generator": "smollm2-135m-instruct",
    "gates": GATES, "train_questions": 8, "test_questions": 12, "test_documents": 4,
    "paraphrases": 10,
    "samples": [
        {"doc_id": "product-00", "question": "How much does the Peho lamp cost?",
         "answer": "85 dollars", "distractors": ["12 dollars", "40 dollars", "7 dollars"],
         "passage": PASSAGES[0]},
        {"doc_id": "product-01", "question": "Who designed the Lope lamp?",
         "answer": "Guja Dalo", "distractors": ["Tynu Neho", "Bafe Jaho", "Lumo Pita"],
         "passage": PASSAGES[1]},
    ],
    "warnings": ["the synthesised test questions come from 4 documents: the intervals "
                 "resample documents, and with fewer than 10 they are not to be trusted; "
                 "add documents"],
}
"""A synthesis summary as the documents package writes it, and the pipeline's additions."""
DATA = {**SYNTHESIS, "n_choices": 4, "benchmarks": ["synthesised"]}
BASE_RIGHT = {1, 4, 7}
"""The synthesised questions the base model answers right with no document."""


def _rows(n: int, right: set[int], prefix: str, per_doc: int = 3) -> list[dict]:
    return [{"id": f"{prefix}{i}", "acc": int(i in right), "acc_norm": int(i in right),
             "doc_id": f"{prefix}doc{i // per_doc}"} for i in range(n)]


def _results(data: dict | None = DATA) -> Results:
    right = {"base": (BASE_RIGHT, 5, 80), "base+rag": (set(range(9)), 20, 80),
             "ft": (set(range(6)), 18, 78), "ft+rag": (set(range(11)), 25, 79)}
    samples = {arm: {"synthesised": _rows(12, synth, "s"),
                     "products": _rows(40, set(range(d)), "p"),
                     "facts": _rows(100, set(range(g)), "f", per_doc=1)}
               for arm, (synth, d, g) in right.items()}
    extra = {"run": {"name": "documents", "seed": 0}}
    if data is not None:
        extra["data"] = copy.deepcopy(data)
    cfg = EvaluationConfig(benchmarks=BENCHMARKS, bootstrap_samples=300)
    return summarise(samples, BENCHMARKS, cfg, ReportConfig(), extra)


@pytest.fixture(scope="module")
def results() -> Results:
    return _results()


class _Page(HTMLParser):
    """Section ids in order, the text of each, and the data section's gate rows."""

    def __init__(self, html: str):
        super().__init__()
        self.sections: list[str] = []
        self.text: dict[str, str] = {}
        self.gates: dict[str, list[str]] = {}
        self._gate: str | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
            self.text[self.sections[-1]] = ""
        elif tag == "tr" and "data-gate" in attrs:
            self._gate = attrs["data-gate"]
            self.gates[self._gate] = []
        elif tag in ("td", "th") and self._gate is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._gate is not None:
            self.gates[self._gate].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr":
            self._gate = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self.sections:
            self.text[self.sections[-1]] += data

    def words(self, section: str) -> str:
        return " ".join(self.text[section].split())


def test_results_json_keeps_the_synthesis_summary_and_round_trips(results, tmp_path):
    saved = results.to_json()
    data = saved["data"]
    assert {k: data[k] for k in SYNTHESIS} == SYNTHESIS
    assert data["benchmarks"] == ["synthesised"] and data["n_choices"] == 4
    assert parse_results(saved) == results
    write_results(tmp_path, results)
    assert load_results(tmp_path / "results.json").to_json() == saved


def test_closed_book_counts_the_base_arms_right_answers_on_the_synthesised_benchmark(results):
    assert results.data is not None
    # Only the synthesised benchmark is counted; products and facts are not about its file.
    assert results.data.known_without_document == {
        "synthesised": KnownWithoutDocument(correct=3, questions=12, chance=0.25,
                                            flagged=["s1", "s4", "s7"])}
    sentence = ("The base model, without any document, already answers 3 of 12 synthesised "
                "questions (25.0%, chance 25.0%).")
    page = _Page(html_report(results))
    assert sentence in page.words("data")
    assert "s1, s4, s7" in page.words("data")
    assert sentence in markdown_report(results)


def test_closed_book_without_choices_or_base_scores():
    # No n_choices: no chance to compare with; a named benchmark the base did not score is
    # left out rather than counted as zero.
    data = {**DATA, "n_choices": None, "benchmarks": ["synthesised", "missing"]}
    known = _results(data).data.known_without_document
    assert list(known) == ["synthesised"] and known["synthesised"].chance is None
    assert known["synthesised"].correct == 3
    assert "(25.0%)." in markdown_report(_results(data))


def test_html_data_section_shows_every_gate_count_and_sample_passage(results):
    page = _Page(html_report(results))
    assert page.sections.index("verdict") < page.sections.index("data") \
        < page.sections.index("provenance")
    for gate in GATES:
        row = page.gates[gate["gate"]]
        assert row[:5] == [gate["gate"], gate["what"], str(gate["seen"]), str(gate["kept"]),
                           str(gate["seen"] - gate["kept"])]
        assert all(example in row[5] for example in gate["dropped_examples"])
    text = page.words("data")
    for sample in SYNTHESIS["samples"]:
        for part in (sample["question"], sample["answer"], sample["passage"],
                     ", ".join(sample["distractors"])):
            assert part in text
    assert "6 documents read, 1 file skipped" in text
    assert "docs/scan.pdf: no text layer (scanned?)" in text
    assert "drafted 4 in this run; 2 came from an earlier attempt" in text
    assert "Training: 8 questions and 10 paraphrases" in text
    assert "Test: 12 questions about 4 documents" in text


def test_markdown_data_section_before_the_run(results):
    md = markdown_report(results)
    data = md.index("## Data: the synthesised questions")
    assert md.index("## Scores") < data < md.index("## Run")
    section = md[data:md.index("## Run")]
    assert "| supported | The answer is found in its document. | 27 | 15 | 12 |" in section
    assert all(p in section for p in PASSAGES)
    assert "- skipped **docs/scan.pdf**: no text layer (scanned?)" in section


def test_synthesis_warnings_stand_under_the_verdict(results):
    warning = SYNTHESIS["warnings"][0]
    page = _Page(html_report(results))
    assert page.sections[0] == "verdict"
    assert f"Caution: synthesised data: {warning}" in page.words("verdict")
    md = markdown_report(results)
    assert md.index(f"> **Caution:** synthesised data: {warning}") < md.index("## Headline")


def test_without_synthesis_there_is_no_data_section(tmp_path):
    results = _results(None)
    assert "data" not in results.to_json()
    page = _Page(html_report(results))
    assert "data" not in page.sections
    assert "## Data" not in markdown_report(results)
    write_reports(tmp_path, results)
    assert 'id="data"' not in (tmp_path / "report.html").read_text()
