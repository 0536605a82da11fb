"""The one prompt template every arm, every benchmark and the training data share.

Arms must differ only in weights and context, so the template lives here and nowhere else:
the demo world's training files and the lm-eval tasks are both written through it.
"""

from __future__ import annotations

from collections.abc import Sequence

ANSWER_DELIMITER = " "
"""Put between the prompt and a choice (lm-eval's ``target_delimiter``)."""


def format_prompt(
    question: str, passages: Sequence[str] = (), examples: Sequence[tuple[str, str]] = ()
) -> str:
    """Solved examples, ``Context: ...`` lines (one per passage), the question, ``Answer:``.

    Each example ``(question, answer)`` is rendered ``Question: q\\nAnswer: a\\n\\n``, so it
    reads as the question to come, answered. With neither passages nor examples this is the
    prompt the training data is written with.
    """
    shots = "".join(
        f"Question: {q.strip()}\nAnswer:{ANSWER_DELIMITER}{a.strip()}\n\n" for q, a in examples
    )
    context = "".join(f"Context: {p.strip()}\n" for p in passages)
    return f"{shots}{context}Question: {question.strip()}\nAnswer:"
