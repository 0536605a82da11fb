"""Synthesised questions split into training and test so that the test measures knowledge
injected by fine-tuning, not recall of a training question.

The rule:

1. **Every document is trained on** (its text and its paraphrases), so every test question is
   about a document the fine-tuned model read.
2. **Questions are grouped by the passage they were written from**, the fact they ask about
   (normalised, so the same passage about two documents is one group). Whole groups go to one
   side: a test fact is never taught by a training question, only by the documents.
3. **Groups are drawn per document, seeded**: a document with two or more groups gives
   ``round(test_fraction * groups)`` of them to test, at least one and at most all but one, so
   it appears on both sides; documents with one group are pooled, and
   ``round(test_fraction * pooled)`` of those, drawn at random, go to test. Small documents
   thus push the test share above ``test_fraction``.
4. **The leak gate**: a test question asked in nearly the same words as a training question
   (``gates.near_same_questions``) is dropped from test; then a training question that
   contains a test question (``textsim.find_leaks``: any ``leak_ngram`` consecutive words, or
   all of a shorter question) is dropped from training. ``leak_free_paraphrases`` does the
   same for paraphrases.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from tunearena import textsim
from tunearena.documents.gates import MAX_EXAMPLES, near_same_questions, normalise
from tunearena.documents.records import DocumentsError, GateCount, Paraphrase, QACandidate

LEAK_NGRAM = 8
"""Consecutive words of a test question that make a training text contain it (as the
training data's leak check counts them)."""


def _passage_groups(cands: Sequence[QACandidate]) -> dict[str, list[list[int]]]:
    """Per document, its passages' groups of question indices, in order of first appearance;
    a passage shared by documents belongs to the first document that asks about it."""
    groups: dict[str, list[int]] = {}
    owner: dict[str, str] = {}
    for i, cand in enumerate(cands):
        key = normalise(cand.passage)
        groups.setdefault(key, []).append(i)
        owner.setdefault(key, cand.doc_id)
    by_doc: dict[str, list[list[int]]] = {}
    for key, members in groups.items():
        by_doc.setdefault(owner[key], []).append(members)
    return by_doc


def split_questions(
    cands: Sequence[QACandidate],
    test_fraction: float,
    seed: int,
    threshold: float = 0.9,
    leak_ngram: int = LEAK_NGRAM,
) -> tuple[list[QACandidate], list[QACandidate], GateCount]:
    """(train, test, the leak gate's count) by the rule in the module's docstring.

    ``threshold`` is the near-duplicate wording's ``token_sort_ratio`` (0 to 1). Both lists
    keep the input's order. The same input and ``seed`` give the same split.
    """
    if not 0 < test_fraction < 1:
        raise DocumentsError(f"test_fraction is {test_fraction}; give a share between 0 and 1")
    rng = random.Random(seed)
    test_idx: set[int] = set()
    pooled: list[list[int]] = []
    for _, groups in sorted(_passage_groups(cands).items()):
        if len(groups) == 1:
            pooled.extend(groups)
            continue
        n_test = min(max(round(test_fraction * len(groups)), 1), len(groups) - 1)
        for group in rng.sample(groups, n_test):
            test_idx.update(group)
    for group in rng.sample(pooled, round(test_fraction * len(pooled))):
        test_idx.update(group)
    train = [c for i, c in enumerate(cands) if i not in test_idx]
    test = [c for i, c in enumerate(cands) if i in test_idx]
    return _drop_leaks(train, test, threshold, leak_ngram)


def _drop_leaks(
    train: list[QACandidate], test: list[QACandidate], threshold: float, leak_ngram: int
) -> tuple[list[QACandidate], list[QACandidate], GateCount]:
    """The leak gate: near-duplicate wordings leave test, containing questions leave train."""
    similar = near_same_questions(
        [c.question for c in test], [c.question for c in train], threshold
    )
    dropped = []
    kept_test = []
    for i, cand in enumerate(test):
        twins = similar(i)
        if twins:
            dropped.append(f"test: {cand.question} (like training: {train[twins[0]].question})")
        else:
            kept_test.append(cand)
    leaks = textsim.find_leaks(
        (f"{c.question}\n{c.answer}" for c in train),
        {"test": [c.question for c in kept_test]},
        leak_ngram,
    )
    leaking = {leak["index"] for leak in leaks}
    dropped += [
        f"train: {train[leak['index']].question} (holds: {leak['question']})" for leak in leaks
    ]
    kept_train = [c for i, c in enumerate(train) if i not in leaking]
    count = GateCount(
        gate="leak",
        what=(
            "No test question is asked in nearly the same words as a training question "
            f"({threshold:.0%} alike, same names and numbers), and no training question "
            "contains a test question."
        ),
        seen=len(train) + len(test),
        kept=len(kept_train) + len(kept_test),
        dropped_examples=dropped[:MAX_EXAMPLES],
    )
    return kept_train, kept_test, count


def leak_free_paraphrases(
    paras: Sequence[Paraphrase], test: Sequence[QACandidate], leak_ngram: int = LEAK_NGRAM
) -> tuple[list[Paraphrase], GateCount]:
    """The paraphrases that contain no test question (``textsim.find_leaks``), and the count."""
    leaks = textsim.find_leaks(
        (p.text for p in paras), {"test": [c.question for c in test]}, leak_ngram
    )
    leaking = {leak["index"] for leak in leaks}
    kept = [p for i, p in enumerate(paras) if i not in leaking]
    count = GateCount(
        gate="paraphrase_leak",
        what="No paraphrase contains a test question.",
        seen=len(paras),
        kept=len(kept),
        dropped_examples=[
            f"{paras[leak['index']].doc_id}: holds {leak['question']}"
            for leak in leaks[:MAX_EXAMPLES]
        ],
    )
    return kept, count


def mc_records(test: Sequence[QACandidate], n_choices: int, seed: int) -> list[dict]:
    """Benchmark rows ``{"id", "question", "choices", "answer", "doc_id"}`` for the test
    questions, the answer among ``n_choices - 1`` of its distractors at a seeded position.

    Ids are ``<doc_id>-q<k>``, ``k`` counting each document's questions from 1. Raises
    ``ValueError`` for a question with too few distractors (``gates.choose_distractors``
    drops those).
    """
    rng = random.Random(seed)
    per_doc: dict[str, int] = {}
    rows = []
    for cand in test:
        if len(cand.distractors) < n_choices - 1:
            raise ValueError(
                f"{cand.question!r} has {len(cand.distractors)} distractors, {n_choices - 1} needed"
            )
        choices = [cand.answer.strip(), *cand.distractors[: n_choices - 1]]
        order = list(range(n_choices))
        rng.shuffle(order)
        per_doc[cand.doc_id] = per_doc.get(cand.doc_id, 0) + 1
        rows.append(
            {
                "id": f"{cand.doc_id}-q{per_doc[cand.doc_id]}",
                "question": cand.question.strip(),
                "choices": [choices[k] for k in order],
                "answer": order.index(0),
                "doc_id": cand.doc_id,
            }
        )
    return rows


def train_records(
    train: Sequence[QACandidate], format_prompt: Callable[[str], str], answer_delimiter: str
) -> list[dict]:
    """Instruction records ``{"prompt", "response"}`` for the training questions.

    ``format_prompt`` and ``answer_delimiter`` are evaluation's (``format_prompt`` and
    ``ANSWER_DELIMITER``), so a question is trained in the words it is tested in:
    ``{"prompt": "Question: ...\\nAnswer:", "response": " ..."}``, as the demo world writes.
    """
    return [
        {"prompt": format_prompt(c.question), "response": answer_delimiter + c.answer.strip()}
        for c in train
    ]
