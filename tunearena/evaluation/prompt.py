"""The one prompt template every arm, every benchmark and the training data share.

Arms must differ only in weights and context, so the template lives here and nowhere else:
the demo world's training files and the lm-eval tasks are both written through it. A run
whose prompts go through the model's chat template (``model.chat_template``) sends the same
text as one user message; ``model_input`` renders it as lm-eval's chat mode does.
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


def model_input(prompt: str, tokenizer, chat_template: bool) -> tuple[str, str]:
    """What the model reads for a task's ``prompt``, and what goes between it and an answer.

    Plain: the prompt and ``ANSWER_DELIMITER``. Through the chat template: the prompt as one
    user message, rendered with the assistant's turn opened, and no delimiter, since the
    answer starts the assistant's turn (lm-eval's ``apply_chat_template``).
    """
    if not chat_template:
        return prompt, ANSWER_DELIMITER
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return text, ""
