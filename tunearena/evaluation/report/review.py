"""The questions the arms disagree on, side by side, for a person to read.

A question is a disagreement when, on one benchmark, some arm answers it right and another
wrong. ``results.json`` holds what each arm answered (the chosen choice, or the generated
text) and, for a RAG arm, the document its first passage came from; the run directory adds
what a reader needs beside it: the question and its correct answer (from the benchmark file
the run's ``config.yaml`` names) and the passage's text (``retrieval/<benchmark>.json``).
So ``results.json`` stays small, and ``review.csv`` holds every disagreement in full while the
HTML page shows the first few.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunearena.evaluation.benchmarks import BenchmarkError, QAItem, load_qa
from tunearena.evaluation.results import PRIMARY_METRIC, Results

REVIEW_CSV = "review.csv"
"""Written beside the reports: every disagreement, one row per question."""
HTML_QUESTIONS = 20
"""The disagreements the HTML page shows; the rest are in ``REVIEW_CSV``."""


@dataclass(frozen=True)
class Sources:
    """What the run directory adds to the results: per benchmark, the questions by id, and
    the text of each question's first retrieved passage."""

    questions: Mapping[str, Mapping[str, QAItem]] = field(default_factory=dict)
    passages: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def of_run(cls, run_dir: Path) -> Sources:
        """Read the benchmark files named in ``run_dir/config.yaml`` and the passages in
        ``run_dir/retrieval/``. What cannot be read (a moved benchmark file, a run without
        retrieval) is left out: the review then shows ids where it would show text."""
        questions: dict[str, dict[str, QAItem]] = {}
        for bench in _configured_benchmarks(run_dir / "config.yaml"):
            try:
                items = load_qa(bench["path"], bench.get("track", "multiple_choice"))
            except (BenchmarkError, ValueError, TypeError):
                continue
            questions[bench["name"]] = {item.id: item for item in items}
        passages: dict[str, dict[str, str]] = {}
        for path in sorted((run_dir / "retrieval").glob("*.json")):
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            passages[path.stem] = {qid: r["passages"][0] for qid, r in found.items()
                                   if isinstance(r, dict) and r.get("passages")}
        return cls(questions, passages)


def _configured_benchmarks(config_path: Path) -> list[dict[str, Any]]:
    """The ``evaluation.benchmarks`` of a run's resolved config that name a QA file."""
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        benchmarks = config["evaluation"]["benchmarks"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []
    return [b for b in benchmarks if isinstance(b, dict) and b.get("name") and b.get("path")]


@dataclass(frozen=True)
class ArmAnswer:
    """One arm's answer to a question: right or wrong, what it answered (a choice's text, or
    ``choice N`` when the choices are not known; the generated text), and the document of
    its first retrieved passage (RAG arms; else None)."""

    arm: str
    right: bool
    answer: str
    retrieved_doc: str | None = None


@dataclass(frozen=True)
class Disagreement:
    """A question some arms answer right and others wrong. ``question``, ``correct`` and
    ``passage`` are empty when the run directory does not give them."""

    benchmark: str
    id: str
    doc_id: str | None
    answers: tuple[ArmAnswer, ...]
    question: str = ""
    correct: str = ""
    passage: str = ""

    @property
    def retrieved_doc(self) -> str | None:
        """The document of the first passage the RAG arms read (they share their passages)."""
        return next((a.retrieved_doc for a in self.answers if a.retrieved_doc), None)


def disagreements(results: Results, sources: Sources | None = None) -> list[Disagreement]:
    """Every question on which the arms scored disagree, domain benchmarks first, then in the
    results' order of benchmarks and the data's order of questions; each arm in the results'
    order of arms."""
    sources = sources or Sources()
    ordered = sorted(results.benchmarks.items(), key=lambda kv: kv[1].kind != "domain")
    found = []
    for name, bench in ordered:
        key = PRIMARY_METRIC[bench.track]
        rows = {arm: {r["id"]: r for r in results.samples.get(arm, {}).get(name, [])}
                for arm in results.arms}
        ids = list(dict.fromkeys(qid for by_id in rows.values() for qid in by_id))
        questions = sources.questions.get(name, {})
        for qid in ids:
            scored = [(arm, by_id[qid]) for arm, by_id in rows.items() if qid in by_id]
            if len({bool(row[key]) for _, row in scored}) < 2:
                continue
            item = questions.get(qid)
            answers = tuple(ArmAnswer(arm, bool(row[key]), _answer(row, item),
                                      row.get("retrieved_doc")) for arm, row in scored)
            found.append(Disagreement(
                name, qid, scored[0][1].get("doc_id"), answers,
                question=item.question if item else "", correct=_correct(item),
                passage=sources.passages.get(name, {}).get(qid, "")))
    return found


def _answer(row: dict[str, Any], item: QAItem | None) -> str:
    if "prediction" in row:
        return str(row["prediction"])
    choice = row.get("choice")
    if choice is None:  # scored before the chosen choice was kept
        return ""
    if item is not None and 0 <= choice < len(item.choices):
        return item.choices[choice]
    return f"choice {choice}"


def _correct(item: QAItem | None) -> str:
    if item is None:
        return ""
    return " | ".join(item.gold_answers)


def review_csv(results: Results, found: list[Disagreement]) -> str:
    """The disagreements as CSV, a row per question: the benchmark, the question, its correct
    answer, the retrieved document and passage, then per arm its answer and whether it is
    right (1 or 0; empty where the arm did not score the question)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["benchmark", "question_id", "source_doc", "question", "correct_answer",
                     "retrieved_doc", "retrieved_passage",
                     *(f"{arm} {column}" for arm in results.arms for column in ("answer", "right"))])
    for d in found:
        by_arm = {a.arm: a for a in d.answers}
        cells: list[str | int] = []
        for arm in results.arms:
            answer = by_arm.get(arm)
            cells += ["", ""] if answer is None else [answer.answer, int(answer.right)]
        writer.writerow([d.benchmark, d.id, d.doc_id or "", d.question, d.correct,
                         d.retrieved_doc or "", d.passage, *cells])
    return out.getvalue()


def review_sentence(found: list[Disagreement], results: Results) -> str | None:
    """How many questions of each benchmark the arms disagree on, and where they are listed;
    None when the arms agree everywhere."""
    if not found:
        return None
    counts: dict[str, int] = {}
    for d in found:
        counts[d.benchmark] = counts.get(d.benchmark, 0) + 1
    parts = [f"{n} of {results.benchmarks[name].n} {name} questions"
             for name, n in counts.items()]
    return (f"Some arms answer right and others wrong on {_join(parts)}. {REVIEW_CSV} in the "
            "run directory lists each with the question, its correct answer, the passage "
            "retrieved for it and every arm's answer, for a person to review.")


def review_section(results: Results, found: list[Disagreement],
                   limit: int = HTML_QUESTIONS) -> dict[str, Any] | None:
    """The HTML page's review: the sentence, and the first ``limit`` disagreements with each
    arm's answer; None when there are none."""
    sentence = review_sentence(found, results)
    if sentence is None:
        return None
    shown = [{"benchmark": d.benchmark, "id": d.id, "question": d.question,
              "correct": d.correct, "retrieved_doc": d.retrieved_doc, "passage": d.passage,
              "answers": [{"arm": a.arm, "answer": a.answer, "right": a.right}
                          for a in d.answers]}
             for d in found[:limit]]
    rest = len(found) - len(shown)
    summary = (f"The first {len(shown)} of {len(found)} questions" if rest
               else f"The {len(found)} question{'s' if len(found) > 1 else ''}")
    return {"sentence": sentence, "questions": shown,
            "summary": f"{summary}, every arm's answer side by side",
            "more": f"{rest} more in {REVIEW_CSV}." if rest else None}


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
