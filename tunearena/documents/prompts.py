"""What the generator is asked, and how its replies are read.

Every request is a short chat whose first turns show the task done on general-knowledge
examples (few-shot): a large model does not need them, and a small one (SmolLM2-135M) only
follows the format with them. A request covers one passage (a few sentences of a document),
not the whole document, for the same reason. Replies are read leniently (``Q:``/``A:`` lines,
with or without the labels' case or a "Question"/"Answer" spelling); a reply that yields
nothing is counted by the ``parse`` gate.
"""

from __future__ import annotations

import re

PROMPT_VERSION = 1
"""Bumped whenever a prompt below changes, so cached replies to the old prompts are not reused."""

Message = dict[str, str]

_QUESTION_TASK = ("Write a question that the passage answers, and its short answer.\n\n"
                  "Passage: {passage}")
_QUESTION_SHOTS = [
    ("The Eiffel Tower was finished in 1889.",
     "Q: When was the Eiffel Tower finished?\nA: 1889"),
    ("Marie Curie was born in Warsaw. She studied physics in Paris.",
     "Q: Where was Marie Curie born?\nA: Warsaw"),
    ("The novel Dune was written by Frank Herbert and published by Chilton Books.",
     "Q: Who wrote the novel Dune?\nA: Frank Herbert"),
]

_ANSWER_TASK = ("Answer the question from the document, in a few words.\n\n"
                "Document: {document}\n\nQuestion: {question}")
_ANSWER_SHOTS = [
    ("The Nile flows north through eleven countries and ends in the Mediterranean Sea.",
     "Where does the Nile end?", "the Mediterranean Sea"),
    ("Mount Everest is 8849 metres high. It lies on the border of Nepal and China.",
     "How high is Mount Everest?", "8849 metres"),
]

_PARAPHRASE_TASK = "Rewrite the passage in other words, keeping every fact.\n\nPassage: {passage}"
_PARAPHRASE_SHOTS = [
    ("The Eiffel Tower was finished in 1889.",
     "Work on the Eiffel Tower was completed in 1889."),
    ("Marie Curie was born in Warsaw. She studied physics in Paris.",
     "Warsaw is where Marie Curie was born, and Paris is where she studied physics."),
]

# Sentence ends: ., ! or ? (optionally closed by a quote or bracket) before white space and
# a capital letter, digit or quote; a paragraph break always ends one.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])|\n\s*\n")


def split_passages(text: str, sentences_per_passage: int) -> list[str]:
    """The document's passages: runs of ``sentences_per_passage`` consecutive sentences
    (a paragraph break ends a passage early), white space collapsed."""
    passages: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        sentences = [" ".join(s.split()) for s in _SENTENCE_END.split(paragraph)]
        sentences = [s for s in sentences if s]
        for i in range(0, len(sentences), sentences_per_passage):
            passages.append(" ".join(sentences[i:i + sentences_per_passage]))
    return passages


def _chat(shots: list[tuple[str, str]], request: str) -> list[Message]:
    messages: list[Message] = []
    for user, assistant in shots:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages + [{"role": "user", "content": request}]


def question_chat(passage: str) -> list[Message]:
    """Ask for one question the passage answers and its short answer."""
    shots = [(_QUESTION_TASK.format(passage=p), reply) for p, reply in _QUESTION_SHOTS]
    return _chat(shots, _QUESTION_TASK.format(passage=passage))


def answer_chat(document: str, question: str) -> list[Message]:
    """Ask the question with only ``document`` in context (the answer check)."""
    shots = [(_ANSWER_TASK.format(document=d, question=q), a) for d, q, a in _ANSWER_SHOTS]
    return _chat(shots, _ANSWER_TASK.format(document=document, question=question))


def paraphrase_chat(passage: str) -> list[Message]:
    """Ask for the passage in other words."""
    shots = [(_PARAPHRASE_TASK.format(passage=p), reply) for p, reply in _PARAPHRASE_SHOTS]
    return _chat(shots, _PARAPHRASE_TASK.format(passage=passage))


_LABEL = re.compile(
    r"^\s*(?:\*\*)?(q|question|a|answer)\s*\d*\s*(?:\*\*)?\s*[:.)-]\s*(?:\*\*)?\s*(.*)$",
    re.IGNORECASE)


def parse_questions(reply: str) -> list[tuple[str, str]]:
    """The ``(question, answer)`` pairs of a reply: each ``Q:`` line and the first ``A:`` line
    after it. A question without an answer, or an empty one, is left out."""
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    for line in reply.splitlines():
        match = _LABEL.match(line)
        if not match:
            continue
        label, text = match.group(1).lower(), match.group(2).strip().strip('"')
        if label.startswith("q"):
            question = text
        elif question and text:
            pairs.append((question, clean_answer(text)))
            question = None
    return [(q, a) for q, a in pairs if q and a]


def clean_answer(reply: str) -> str:
    """A short answer as a reply gives it: its first line, without an ``A:`` label, quotes or
    a final full stop."""
    line = next((ln for ln in reply.strip().splitlines() if ln.strip()), "")
    match = _LABEL.match(line)
    text = match.group(2) if match else line
    return text.strip().strip('"').rstrip(".").strip()


def clean_paraphrase(reply: str) -> str:
    """A rewrite as a reply gives it: its text with white space collapsed, or "" when the
    reply is empty."""
    return " ".join(reply.split())
