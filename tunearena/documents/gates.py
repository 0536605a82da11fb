"""The quality gates synthesised questions and paraphrases pass before they are split.

Each gate is a pure function: it takes the items, returns those it keeps, in their order, and
a ``GateCount`` saying what it checks, how many it saw and kept, and a few it dropped.

Texts are compared after ``normalise``: Unicode NFKC, case folded, thousands separators
dropped (``1,250`` is ``1250``), punctuation turned into spaces except a decimal point,
the number words two to twenty written as digits (``one`` is left alone: it is as often a
pronoun), whitespace collapsed. Fuzzy scores are rapidfuzz's, from 0 to 100; a threshold
``t`` between 0 and 1 means a score of at least ``100 * t``. A number is a fact a fuzzy
score cannot see (``25 dollars`` and ``85 dollars`` score 90), so wherever two answers are
compared, their numbers must agree exactly as well.

**Names and numbers** (``key_terms``): the numbers of a text, and its names, where a name is
a capitalised word that does not open a sentence. The rule cannot tell a name that opens a
sentence from ``The``, so such a name is not seen; the checks that use it err on the side of
keeping.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np
from rapidfuzz import fuzz, process

from tunearena import textsim
from tunearena.documents.records import Document, GateCount, Paraphrase, QACandidate

MAX_EXAMPLES = 3
"""Dropped items a ``GateCount`` shows."""
SAME_ANSWER = 0.9
"""Two answers with the same numbers and a ``token_sort_ratio`` of at least this are one
answer: a distractor must not be one with the answer or with another distractor."""
_BLOCK_ROWS = 512
"""Questions scored against all others at once: bounds the score matrix's memory."""

# fmt: off
_NUMBER_WORDS = {
    word: str(n) for n, word in enumerate((
        "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
        "nineteen", "twenty",
    ), start=2)
}
# fmt: on
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PUNCTUATION = re.compile(r"\.(?!\d)|(?<!\d)\.|[^\w.]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_LETTER_WORD = re.compile(r"[^\W\d_]\w*")


def normalise(text: str) -> str:
    """``text`` as the gates compare it (the module's docstring gives the steps)."""
    text = _THOUSANDS.sub("", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(_NUMBER_WORDS.get(w, w) for w in _PUNCTUATION.sub(" ", text).split())


def numbers(text: str) -> set[str]:
    """The numbers in ``text``, normalised: ``"1,250"`` and ``"two"`` are ``"1250"``, ``"2"``."""
    return set(_NUMBER.findall(normalise(text)))


def names(text: str) -> set[str]:
    """Capitalised words that do not open a sentence, case folded."""
    found = set()
    for sentence in _SENTENCES.split(text):
        for i, match in enumerate(_LETTER_WORD.finditer(sentence)):
            if i and match.group()[0].isupper():
                found.add(match.group().casefold())
    return found


def key_terms(text: str) -> set[str]:
    """The names and numbers of ``text``: what must agree for two texts to state one fact."""
    return names(text) | numbers(text)


def _contains(text: str, part: str) -> bool:
    """Whether normalised ``part`` occurs in normalised ``text`` as whole words."""
    return f" {part} " in f" {text} "


def _same_answer(a: str, b: str, threshold: float = SAME_ANSWER) -> bool:
    """One answer in two wordings: the same numbers and a ``token_sort_ratio`` at the threshold."""
    return numbers(a) == numbers(b) and (
        fuzz.token_sort_ratio(normalise(a), normalise(b)) >= 100 * threshold
    )


def answers_agree(gold: str, given: str, threshold: float) -> bool:
    """Whether ``given`` (a model's answer) gives the ``gold`` answer.

    Every number of the gold is among the given answer's; and the normalised gold matches a
    stretch of the given answer (``partial_ratio``, so an answer in a full sentence passes),
    or, when the given answer is the shorter, matches it whole (``ratio``, so ``"Dalo"`` does
    not pass for ``"Guja Dalo"``).
    """
    gold_n, given_n = normalise(gold), normalise(given)
    if not gold_n or not given_n or not numbers(gold) <= numbers(given):
        return False
    score = fuzz.partial_ratio if len(given_n) >= len(gold_n) else fuzz.ratio
    return score(gold_n, given_n) >= 100 * threshold


def _count(gate: str, what: str, seen: int, kept: int, dropped: Sequence[str]) -> GateCount:
    return GateCount(
        gate=gate, what=what, seen=seen, kept=kept, dropped_examples=list(dropped[:MAX_EXAMPLES])
    )


def _show(cand: QACandidate) -> str:
    return f"{cand.question} -> {cand.answer}"


def _by_id(documents: Sequence[Document]) -> dict[str, Document]:
    return {d.id: d for d in documents}


def supported(
    cands: Sequence[QACandidate],
    documents: Sequence[Document],
    threshold: float = 0.85,
    max_answer_words: int = 8,
) -> tuple[list[QACandidate], GateCount]:
    """The questions whose answer is short, in its document, and not given away by the question.

    Dropped, in this order of reasons: an empty answer or one of more than
    ``max_answer_words`` words (a copied sentence is not a short answer); an answer the
    question contains as whole words; an answer with a number its document lacks; an answer
    found in its document neither exactly (normalised, whole words) nor fuzzily (normalised
    ``partial_ratio`` at ``threshold``).
    """
    docs = {doc_id: normalise(d.text) for doc_id, d in _by_id(documents).items()}
    doc_numbers = {doc_id: set(_NUMBER.findall(text)) for doc_id, text in docs.items()}
    kept, dropped = [], []
    for cand in cands:
        answer, doc = normalise(cand.answer), docs[cand.doc_id]
        if not answer or len(answer.split()) > max_answer_words:
            why = f"answer empty or over {max_answer_words} words"
        elif _contains(normalise(cand.question), answer):
            why = "the question contains its answer"
        elif not numbers(cand.answer) <= doc_numbers[cand.doc_id]:
            why = "a number of the answer is not in the document"
        elif _contains(doc, answer) or fuzz.partial_ratio(answer, doc) >= 100 * threshold:
            kept.append(cand)
            continue
        else:
            why = "the answer is not in the document"
        dropped.append(f"{_show(cand)} ({why})")
    what = (
        f"The answer is at most {max_answer_words} words, found in its document (exactly or "
        f"{threshold:.0%} alike), and not written in the question."
    )
    return kept, _count("supported", what, len(cands), len(kept), dropped)


def answer_check(
    cands: Sequence[QACandidate], generator_answers: Sequence[str], threshold: float = 0.8
) -> tuple[list[QACandidate], GateCount]:
    """The questions the generator, reading only their document, answered with the gold answer.

    ``generator_answers[i]`` is the generator's answer to ``cands[i]``; agreement is
    ``answers_agree`` at ``threshold``. A question nobody can answer from its document alone
    is ambiguous or wrong, and would measure nothing.
    """
    if len(generator_answers) != len(cands):
        raise ValueError(f"{len(generator_answers)} generator answers for {len(cands)} questions")
    kept, dropped = [], []
    for cand, given in zip(cands, generator_answers, strict=True):
        if answers_agree(cand.answer, given, threshold):
            kept.append(cand)
        else:
            dropped.append(f"{_show(cand)} (generator: {given.strip()!r})")
    what = (
        "The generator, given only the question's document, answers it with the gold answer "
        "(its numbers, and its words at least "
        f"{threshold:.0%} alike)."
    )
    return kept, _count("answer_check", what, len(cands), len(kept), dropped)


def near_same_questions(
    questions: Sequence[str], others: Sequence[str], threshold: float
) -> Callable[[int], list[int]]:
    """For question ``i``, the indices of ``others`` that ask it in nearly the same words.

    Nearly the same: normalised ``token_sort_ratio`` at ``threshold`` and the same names and
    numbers (``key_terms``), so "price of the Peho lamp" and "price of the Lope lamp", one
    word apart, are different questions. Scores are computed in blocks of rows, on first need.
    """
    q_norm = [normalise(q) for q in questions]
    o_norm = [normalise(o) for o in others]
    o_terms: dict[int, set[str]] = {}
    cutoff = int(np.ceil(100 * threshold))
    block: dict[int, np.ndarray] = {}

    def similar(i: int) -> list[int]:
        start = i - i % _BLOCK_ROWS
        if start not in block:
            block.clear()
            block[start] = process.cdist(
                q_norm[start : start + _BLOCK_ROWS],
                o_norm,
                scorer=fuzz.token_sort_ratio,
                dtype=np.uint8,
                score_cutoff=cutoff,
            )
        terms = key_terms(questions[i])
        hits = []
        for j in np.flatnonzero(block[start][i - start] >= cutoff).tolist():
            if j not in o_terms:
                o_terms[j] = key_terms(others[j])
            if o_terms[j] == terms:
                hits.append(j)
        return hits

    return similar


def deduplicate(
    cands: Sequence[QACandidate], threshold: float = 0.9
) -> tuple[list[QACandidate], GateCount]:
    """The questions left when exact and near-duplicate questions are dropped, the first kept.

    Exact: the same normalised question, whatever the answer. Near: nearly the same question
    (``near_same_questions``) with the same answer (``_same_answer`` at ``threshold``),
    whether about the same document or another; a question one word from another but with a
    different answer ("when" / "where") is a different question.
    """
    questions = [c.question for c in cands]
    similar = near_same_questions(questions, questions, threshold)
    seen: set[str] = set()
    kept_idx: set[int] = set()
    kept, dropped = [], []
    for i, cand in enumerate(cands):
        key = normalise(cand.question)
        if key in seen:
            dropped.append(f"{_show(cand)} (same question)")
            continue
        twin = next(
            (
                j
                for j in similar(i)
                if j in kept_idx and _same_answer(cands[j].answer, cand.answer, threshold)
            ),
            None,
        )
        if twin is not None:
            dropped.append(f"{_show(cand)} (like: {cands[twin].question})")
            continue
        seen.add(key)
        kept_idx.add(i)
        kept.append(cand)
    what = (
        "No earlier question asks the same, word for word or nearly "
        f"({threshold:.0%} alike, same names and numbers, same answer)."
    )
    return kept, _count("duplicate", what, len(cands), len(kept), dropped)


def deduplicate_paraphrases(
    paras: Sequence[Paraphrase], documents: Sequence[Document], threshold: float = 0.9
) -> tuple[list[Paraphrase], GateCount]:
    """The paraphrases that say their document in other words, and not as another one did.

    Dropped: a paraphrase without words, or one whose word 5-gram Jaccard (``textsim``) with
    its document or an earlier kept paraphrase of it reaches ``threshold``. A copy teaches
    nothing the document does not; the gain of paraphrases is in their variety.
    """
    docs = _by_id(documents)
    earlier: dict[str, list[set[str]]] = {}
    kept, dropped = [], []
    for para in paras:
        grams = textsim.shingles(para.text)
        if para.doc_id not in earlier:
            earlier[para.doc_id] = [textsim.shingles(docs[para.doc_id].text)]
        if not grams:
            dropped.append(f"{para.doc_id}: (empty)")
        elif any(g and textsim.jaccard(grams, g) >= threshold for g in earlier[para.doc_id]):
            dropped.append(f"{para.doc_id}: {para.text[:120]}")
        else:
            earlier[para.doc_id].append(grams)
            kept.append(para)
    what = (
        "The paraphrase differs from its document and from every other paraphrase of it "
        f"(shared word 5-grams under {threshold:.0%})."
    )
    return kept, _count("paraphrase_duplicate", what, len(paras), len(kept), dropped)


def paraphrase_faithful(
    paras: Sequence[Paraphrase], documents: Sequence[Document]
) -> tuple[list[Paraphrase], GateCount]:
    """The paraphrases that keep their document's facts, as far as words show them.

    Kept when every number and every name of the document (``numbers``, ``names``) is in the
    paraphrase (names as words, any case), and the paraphrase has no number the document
    lacks and no name whose word the document lacks. A paraphrase that drops a fact teaches
    less; one that invents a number or a name ("a Polish lamp") teaches a falsehood.
    """
    facts = {doc_id: (numbers(d.text), names(d.text), set(textsim.words(d.text)))
             for doc_id, d in _by_id(documents).items()}
    kept, dropped = [], []
    for para in paras:
        doc_numbers, doc_names, doc_words = facts[para.doc_id]
        para_numbers = numbers(para.text)
        para_words = set(textsim.words(para.text))
        missing = sorted((doc_numbers - para_numbers) | (doc_names - para_words))
        added = sorted((para_numbers - doc_numbers) | (names(para.text) - doc_words))
        if not missing and not added:
            kept.append(para)
            continue
        why = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"adds {', '.join(added)}" if added else "",
            )
            if part
        )
        dropped.append(f"{para.doc_id}: {why}")
    what = ("The paraphrase keeps every number and name of its document and adds no number "
            "or name.")
    return kept, _count("paraphrase_faithful", what, len(paras), len(kept), dropped)


def _answer_shape(answer: str) -> tuple[str, str]:
    """What kind of answer this is: a number, with its other words (``("number",
    "dollars")``); else a capitalised name or other words, with their count."""
    words = normalise(answer).split()
    if numbers(answer):
        return "number", " ".join(w for w in words if not _NUMBER.fullmatch(w))
    kind = "name" if answer.strip()[:1].isupper() else "words"
    return kind, str(len(words))


def _fits(option: str, answer: str, chosen: list[str], doc: str) -> bool:
    """Whether ``option`` may join ``chosen`` as a distractor for ``answer`` (``doc`` normalised)."""
    text = normalise(option)
    return (
        bool(text)
        and not _contains(doc, text)
        and not any(_same_answer(option, other) for other in (answer, *chosen))
    )


def choose_distractors(
    cands: Sequence[QACandidate],
    documents: Sequence[Document],
    n_choices: int = 4,
    seed: int = 0,
) -> tuple[list[QACandidate], GateCount]:
    """Each question with ``n_choices - 1`` wrong answers; those that cannot get them dropped.

    A distractor may not be one with the answer or another distractor (``_same_answer``),
    nor occur in the question's own document (normalised, whole words): it could be true.
    The generator's own distractors come first, in its order; the rest are borrowed from the
    answers to questions about other documents, those that look most like the answer first
    (``_answer_shape``: a price borrows prices, a name names), then those whose question is
    most alike (``token_sort_ratio``). Ties are broken by a shuffle seeded with ``seed``.
    """
    if n_choices < 2:
        raise ValueError(f"n_choices is {n_choices}; a multiple-choice question needs 2 or more")
    docs = {doc_id: normalise(d.text) for doc_id, d in _by_id(documents).items()}
    questions = [normalise(c.question) for c in cands]
    tie_rank = list(range(len(cands)))
    random.Random(seed).shuffle(tie_rank)
    ranks = np.array(tie_rank)
    doc_ids = np.array([c.doc_id for c in cands], dtype=object)
    shapes = [_answer_shape(c.answer) for c in cands]
    # As integer codes, so that each question ranks all others' shapes in one numpy pass.
    shape_code = {shape: k for k, shape in enumerate(dict.fromkeys(shapes))}
    shape_ids = np.array([shape_code[s] for s in shapes])
    kind_ids = np.array([("number", "name", "words").index(s[0]) for s in shapes])
    kept, dropped = [], []
    for start in range(0, len(cands), _BLOCK_ROWS):
        scores = process.cdist(
            questions[start : start + _BLOCK_ROWS], questions, scorer=fuzz.token_sort_ratio
        )
        for row, cand in enumerate(cands[start : start + _BLOCK_ROWS]):
            doc = docs[cand.doc_id]
            chosen: list[str] = []
            for option in cand.distractors:
                if len(chosen) < n_choices - 1 and _fits(option, cand.answer, chosen, doc):
                    chosen.append(option.strip())
            if len(chosen) < n_choices - 1:
                others = np.flatnonzero(doc_ids != cand.doc_id)
                i = start + row
                # 0: the same shape; 1: the same kind of answer; 2: another kind.
                unlike = np.where(
                    shape_ids[others] == shape_ids[i],
                    0,
                    np.where(kind_ids[others] == kind_ids[i], 1, 2),
                )
                order = others[np.lexsort((ranks[others], -scores[row][others], unlike))]
                for j in order.tolist():
                    if _fits(cands[j].answer, cand.answer, chosen, doc):
                        chosen.append(cands[j].answer.strip())
                        if len(chosen) == n_choices - 1:
                            break
            if len(chosen) == n_choices - 1:
                kept.append(cand.model_copy(update={"distractors": chosen}))
            else:
                dropped.append(f"{_show(cand)} ({len(chosen)} distractors found)")
    what = (
        f"The question gets {n_choices - 1} wrong answers, each unlike the answer and absent "
        "from its document, from the generator or from alike questions about other documents."
    )
    return kept, _count("distractors", what, len(cands), len(kept), dropped)
