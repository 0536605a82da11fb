"""The generative track's scorer: SQuAD-style exact match and token F1 over gold aliases.

The model answers greedily and the answer is compared with every gold alias after
normalisation (lower case, no punctuation, no articles, single spaces); a question scores the
best alias. ``process_results`` is the lm-eval hook that the generative task YAML names.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_text(response: str) -> str:
    """The answer in a model's response: its first line, without leading whitespace."""
    return response.lstrip().split("\n", 1)[0]


def exact_match(prediction: str, golds: Sequence[str] | str) -> int:
    """1 if the normalised prediction equals any normalised gold alias, else 0."""
    pred = normalize_answer(prediction)
    return max(int(pred == normalize_answer(g)) for g in _aliases(golds))


def token_f1(prediction: str, golds: Sequence[str] | str) -> float:
    """SQuAD's token F1 against the best gold alias, in [0, 1].

    Tokens are the normalised text split on spaces, counted as a bag. When the prediction
    or the gold has no tokens, F1 is 1 if both have none, else 0.
    """
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1(pred_tokens, normalize_answer(g).split()) for g in _aliases(golds))


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval's per-document hook: ``{"exact_match", "f1"}`` of the one greedy response.

    ``doc["answers"]`` holds the gold aliases; ``results`` the filtered responses of the
    document's single request.
    """
    prediction = answer_text(results[0])
    golds = doc["answers"]
    return {"exact_match": exact_match(prediction, golds), "f1": token_f1(prediction, golds)}


def _aliases(golds: Sequence[str] | str) -> Sequence[str]:
    # A bare string is one alias, not a sequence of one-character aliases.
    golds = (golds,) if isinstance(golds, str) else golds
    if not golds:
        raise ValueError("no gold answers to compare with")
    return golds


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    n_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if n_same == 0:
        return 0.0
    precision, recall = n_same / len(pred_tokens), n_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)
