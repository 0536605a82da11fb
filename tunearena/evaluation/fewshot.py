"""Solved examples for the ``+fewshot`` arms: read a pool, draw the same k for every question.

Prompting alone is the first alternative a team weighs against fine-tuning, so its arm must
be as fair as the others: one fixed set of examples (drawn with the run's seed) before every
question of every benchmark, none of them a benchmark question.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from tunearena.evaluation.benchmarks import BenchmarkError
from tunearena.files import iter_jsonl

Example = tuple[str, str]
"""A solved question: ``(question, answer text)``."""

# An instruction record written through ``format_prompt`` (the demo's training QA is).
_TEMPLATED = re.compile(r"^Question: (?P<question>.+)\nAnswer:$", re.DOTALL)


def load_pool(path: Path | str) -> list[Example]:
    """Read solved questions from a QA JSONL file or from instruction records.

    A QA row gives ``question`` and the text of its correct choice (``choices[answer]``) or
    its first ``answers`` alias. An instruction row ``{"prompt", "response"}`` must have a
    prompt in the evaluation template (``Question: ...\\nAnswer:``), so examples and questions
    read alike. Raises ``BenchmarkError`` naming the file and line of a row that is neither,
    and for a file with no rows.
    """
    pool = [_parse(row, where) for where, row in iter_jsonl(path, BenchmarkError, "few-shot file")]
    if not pool:
        raise BenchmarkError(f"{path}: no solved questions in the few-shot file")
    return pool


def _parse(row: dict, where: str) -> Example:
    if "prompt" in row and "response" in row:
        match = _TEMPLATED.match(str(row["prompt"]).strip())
        if match is None or not str(row["response"]).strip():
            raise BenchmarkError(
                f"{where}: an instruction record for few-shot examples needs a prompt of the "
                "form 'Question: ...\\nAnswer:' and a non-empty response"
            )
        return match["question"].strip(), str(row["response"]).strip()
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BenchmarkError(f"{where}: expected a QA row (question, choices, answer) or an "
                             "instruction record (prompt, response)")
    answers = row.get("answers")
    if isinstance(answers, list) and answers and isinstance(answers[0], str) and answers[0].strip():
        return question.strip(), answers[0].strip()
    choices, answer = row.get("choices"), row.get("answer")
    if (isinstance(choices, list) and isinstance(answer, int) and not isinstance(answer, bool)
            and 0 <= answer < len(choices) and isinstance(choices[answer], str)):
        return question.strip(), choices[answer].strip()
    raise BenchmarkError(f"{where}: a QA row needs 'answers' or 'choices' with a valid 'answer'")


def draw_examples(pool: list[Example], k: int, seed: int, exclude: set[str]) -> list[Example]:
    """``k`` examples drawn from ``pool`` with ``seed``, none of whose questions is in
    ``exclude`` (compared case- and space-insensitively): a benchmark question shown
    solved would be a leak. Raises ``BenchmarkError`` when fewer than ``k`` remain."""
    banned = {_key(q) for q in exclude}
    usable = [e for e in pool if _key(e[0]) not in banned]
    if len(usable) < k:
        raise BenchmarkError(
            f"evaluation.fewshot: {k} examples wanted but the pool has {len(usable)} that are "
            f"not benchmark questions ({len(pool) - len(usable)} of {len(pool)} are)"
        )
    return random.Random(seed).sample(usable, k)


def _key(question: str) -> str:
    return " ".join(question.lower().split())
