"""Multiple-choice QA files: one JSON object a line, checked strictly on load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunearena.files import iter_jsonl

_REQUIRED = ("id", "question", "choices", "answer")


class BenchmarkError(ValueError):
    """A QA file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class QAItem:
    """One question with its choices; ``answer`` indexes the correct choice."""

    id: str
    question: str
    choices: list[str]
    answer: int
    doc_id: str | None = None
    """The source document the answer comes from (to measure retrieval recall), if known."""


def load_qa(path: Path | str) -> list[QAItem]:
    """Read a QA JSONL file (``{"id", "question", "choices", "answer", "doc_id"?}`` a line).

    Blank lines are skipped. Raises ``BenchmarkError`` naming the file and line for a
    missing file, invalid JSON, a missing or mistyped field, fewer than two choices, an
    answer out of range, a duplicate id, or a file with no questions.
    """
    items = [
        _parse_row(row, where)
        for where, row in iter_jsonl(path, BenchmarkError, "QA file", unique_key="id")
    ]
    if not items:
        raise BenchmarkError(f"{path}: no questions in file")
    return items


def _parse_row(row: dict, where: str) -> QAItem:
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        raise BenchmarkError(f"{where}: missing field(s) {', '.join(missing)}")
    question, choices, answer = row["question"], row["choices"], row["answer"]
    if not isinstance(question, str) or not question.strip():
        raise BenchmarkError(f"{where}: 'question' must be a non-empty string")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise BenchmarkError(f"{where}: 'choices' must be a list of strings")
    if len(choices) < 2:
        raise BenchmarkError(f"{where}: needs at least 2 choices, got {len(choices)}")
    # bool is an int subclass; `true` as an answer is a data bug, not index 1.
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise BenchmarkError(f"{where}: 'answer' must be an integer index, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise BenchmarkError(
            f"{where}: answer {answer} out of range for {len(choices)} choices (0..{len(choices) - 1})"
        )
    doc_id = row.get("doc_id")
    return QAItem(
        id=str(row["id"]),
        question=question,
        choices=list(choices),
        answer=answer,
        doc_id=None if doc_id is None else str(doc_id),
    )
