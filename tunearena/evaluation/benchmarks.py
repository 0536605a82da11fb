"""QA files: one JSON object a line, checked strictly on load.

A multiple-choice row gives ``choices`` and the index of the right one; a row of the
generative track may give ``answers`` (gold aliases) instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunearena.errors import UserError
from tunearena.files import iter_jsonl

_TRACKS = ("multiple_choice", "generative")


class BenchmarkError(UserError, ValueError):
    """A QA file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class QAItem:
    """One question; ``answer`` indexes the correct one of ``choices``."""

    id: str
    question: str
    choices: list[str] = field(default_factory=list)
    answer: int | None = None
    """Index into ``choices``; None for a generative item given only by ``answers``."""
    doc_id: str | None = None
    """The source document the answer comes from (to measure retrieval recall), if known."""
    answers: tuple[str, ...] = ()
    """Gold aliases for the generative track; empty when the correct choice is the gold."""

    @property
    def gold_answers(self) -> tuple[str, ...]:
        """What a generated answer is scored against: ``answers``, else the correct choice."""
        if self.answers:
            return self.answers
        if self.answer is None or not 0 <= self.answer < len(self.choices):
            raise ValueError(f"question {self.id!r} has neither answers nor a correct choice")
        return (self.choices[self.answer],)


def load_qa(path: Path | str, track: str = "multiple_choice") -> list[QAItem]:
    """Read a QA JSONL file: ``{"id", "question", "choices", "answer", "doc_id"?}`` a line.

    For ``track="generative"`` a row may give ``"answers"`` (a non-empty list of non-empty
    strings, the gold aliases) instead of ``choices`` and ``answer``; a row with both keeps
    both, and its gold is ``answers``. Blank lines are skipped. Raises ``BenchmarkError``
    naming the file and line for a missing file, invalid JSON, a missing or mistyped field,
    fewer than two choices, an answer out of range, a duplicate id, or a file with no
    questions.
    """
    if track not in _TRACKS:
        raise ValueError(f"unknown track {track!r}; expected one of {', '.join(_TRACKS)}")
    items = [
        _parse_row(row, where, track)
        for where, row in iter_jsonl(path, BenchmarkError, "QA file", unique_key="id")
    ]
    if not items:
        raise BenchmarkError(f"{path}: no questions in file")
    return items


def _parse_row(row: dict, where: str, track: str) -> QAItem:
    # Gold aliases replace choices and answer only on the generative track.
    by_aliases = track == "generative" and "answers" in row
    required = ("id", "question") if by_aliases else ("id", "question", "choices", "answer")
    missing = [k for k in required if k not in row]
    if missing:
        hint = " (or answers, on the generative track)" if track == "generative" else ""
        raise BenchmarkError(f"{where}: missing field(s) {', '.join(missing)}{hint}")
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise BenchmarkError(f"{where}: 'question' must be a non-empty string")
    choices, answer = [], None
    if not by_aliases or "choices" in row or "answer" in row:
        if "choices" not in row or "answer" not in row:
            raise BenchmarkError(
                f"{where}: 'choices' and 'answer' go together; give both or neither"
            )
        choices, answer = _check_choices(row["choices"], row["answer"], where)
    doc_id = row.get("doc_id")
    return QAItem(
        id=str(row["id"]),
        question=question,
        choices=choices,
        answer=answer,
        doc_id=None if doc_id is None else str(doc_id),
        answers=_check_answers(row["answers"], where) if by_aliases else (),
    )


def _check_choices(choices, answer, where: str) -> tuple[list[str], int]:
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
    return list(choices), answer


def _check_answers(answers, where: str) -> tuple[str, ...]:
    if (
        not isinstance(answers, list)
        or not answers
        or not all(isinstance(a, str) and a.strip() for a in answers)
    ):
        raise BenchmarkError(
            f"{where}: 'answers' must be a non-empty list of non-empty strings, got {answers!r}"
        )
    return tuple(answers)
