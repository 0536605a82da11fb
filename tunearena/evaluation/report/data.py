"""The report's Data section: what synthesis made of the documents, gate by gate, and how
many of the synthesised test questions the base model already answers without them."""

from __future__ import annotations

from typing import Any

from tunearena.evaluation.report import formats as fmt
from tunearena.evaluation.report.numbers import Samples, sample_track
from tunearena.evaluation.report.table import Table
from tunearena.evaluation.results import PRIMARY_METRIC, Data, KnownWithoutDocument


def known_without_document(data: Data, samples: Samples) -> Data:
    """``data`` with, per synthesised benchmark the base arm scored, the questions the base
    model answered right with no document in its prompt (its primary score is 1), their
    count and the chance of guessing (``1 / n_choices`` on the multiple-choice track).
    They are flagged, not dropped: the benchmark stays as synthesis wrote it."""
    known = {}
    for name in data.benchmarks:
        rows = samples.get("base", {}).get(name)
        track = sample_track(rows) if rows else None
        if not rows or track not in PRIMARY_METRIC:
            continue
        key = PRIMARY_METRIC[track]
        flagged = [str(r["id"]) for r in rows if r[key] == 1]
        chance = 1 / data.n_choices if track == "multiple_choice" and data.n_choices else None
        known[name] = KnownWithoutDocument(correct=len(flagged), questions=len(rows),
                                           chance=chance, flagged=flagged)
    return data.model_copy(update={"known_without_document": known})


def known_sentence(name: str, known: KnownWithoutDocument, several: bool) -> str:
    """``The base model, without any document, already answers 3 of 12 synthesised
    questions (25.0%, chance 25.0%).``; the benchmark is named when ``several`` are."""
    share = fmt.percent(known.correct / known.questions) if known.questions else fmt.NONE
    odds = f", chance {fmt.percent(known.chance)}" if known.chance is not None else ""
    where = f" on {name}" if several else ""
    return (f"The base model, without any document, already answers {known.correct} of "
            f"{known.questions} synthesised questions{where} ({share}{odds}).")


def data_view(data: Data | None) -> dict[str, Any] | None:
    """The Data section as both renderers print it: ``read`` (documents read, skipped,
    drafted and reused, in a sentence), ``skipped`` (``path``, ``reason``), ``gates`` (a
    table: gate, what it checks, seen, kept, dropped), ``gate_rows`` (the same with each
    gate's dropped ``examples``), ``made`` (the training and test counts in a sentence),
    ``known`` (a sentence and the flagged ids per synthesised benchmark), ``samples`` and
    ``warnings``; None without synthesis."""
    if data is None:
        return None
    read = _count(data.documents, "document") + " read"
    if data.skipped:
        read += f", {_count(len(data.skipped), 'file')} skipped"
    read += (f". The generator, {data.generator}, drafted {data.drafted:,} in this run; "
             f"{data.reused:,} came from an earlier attempt's drafts.")
    made = (f"Training: {data.train_questions:,} questions and {data.paraphrases:,} "
            f"paraphrases of the documents. Test: {data.test_questions:,} questions about "
            f"{data.test_documents:,} documents.")
    gate_rows = [{"gate": g.gate, "what": g.what, "seen": f"{g.seen:,}", "kept": f"{g.kept:,}",
                  "dropped": f"{g.seen - g.kept:,}", "examples": g.dropped_examples}
                 for g in data.gates]
    gates = Table(["gate", "what it checks", "seen", "kept", "dropped", "dropped, for example"],
                  [[g.gate, g.what, f"{g.seen:,}", f"{g.kept:,}", f"{g.seen - g.kept:,}",
                    "; ".join(g.dropped_examples) or fmt.NONE] for g in data.gates],
                  title="Quality gates, in order",
                  numeric=[False, False, True, True, True, False])
    several = len(data.known_without_document) > 1
    known = [{"benchmark": name, "sentence": known_sentence(name, k, several),
              "flagged": k.flagged}
             for name, k in data.known_without_document.items()]
    samples = [{"doc_id": s.doc_id, "question": s.question, "answer": s.answer,
                "distractors": ", ".join(s.distractors) or fmt.NONE, "passage": s.passage}
               for s in data.samples]
    return {"read": read, "skipped": [s.model_dump() for s in data.skipped], "gates": gates,
            "gate_rows": gate_rows, "made": made, "known": known, "samples": samples,
            "warnings": list(data.warnings)}


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
