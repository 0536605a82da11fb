"""The one prompt template every arm, every benchmark and the training data share.

Arms must differ only in weights and context, so the template lives here and nowhere else:
the demo world's training files and the lm-eval tasks are both written through it.
"""

from __future__ import annotations

from collections.abc import Sequence

ANSWER_DELIMITER = " "
"""Put between the prompt and a choice (lm-eval's ``target_delimiter``)."""


def format_prompt(question: str, passages: Sequence[str] = ()) -> str:
    """``Context: ...`` lines (one per passage, possibly none), the question, ``Answer:``."""
    context = "".join(f"Context: {p.strip()}\n" for p in passages)
    return f"{context}Question: {question.strip()}\nAnswer:"
