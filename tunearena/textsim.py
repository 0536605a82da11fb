"""How alike two texts are, in words: the near-duplicate and containment checks that the
training data's cleaning and the synthesised questions' gates share.

Texts are compared as case-folded words, punctuation ignored. Near duplicates are found by
word 5-gram (shingle) Jaccard similarity, with MinHash LSH offering the candidates in
near-linear time and the exact Jaccard confirming each, so nothing below the threshold is
ever reported. Containment (``find_leaks``) looks for any ``n`` consecutive words of a
question inside a text.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator

from datasketch import MinHash, MinHashLSH

SHINGLE_WORDS = 5
"""Words per shingle in the near-duplicate comparison."""
NUM_PERM = 128
"""MinHash permutations, cut into the LSH index's bands."""
MIN_RECALL_AT_THRESHOLD = 0.99
"""Chance that LSH offers a pair whose Jaccard is exactly the threshold as a candidate; pairs
above it are offered more surely still."""

_WORDS = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Case-folded words; punctuation separates words, so ``"lamp?"`` and ``"lamp"`` match."""
    return _WORDS.findall(text.casefold())


def shingles(text: str) -> set[str]:
    """Word 5-grams, or the whole text as one shingle when it is shorter."""
    ws = words(text)
    if len(ws) < SHINGLE_WORDS:
        return {" ".join(ws)} if ws else set()
    return {" ".join(ws[i : i + SHINGLE_WORDS]) for i in range(len(ws) - SHINGLE_WORDS + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """Shared shingles over all shingles of the two sets."""
    return len(a & b) / len(a | b)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) with the most rows whose recall at ``threshold`` is still
    ``MIN_RECALL_AT_THRESHOLD``: more rows mean fewer dissimilar candidates to confirm.

    datasketch's own optimiser weighs misses against false candidates, but ours are confirmed
    exactly, so only misses matter; it also fails for thresholds near 1. datasketch needs two
    bands at least.
    """
    for rows in range(num_perm // 2, 1, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= MIN_RECALL_AT_THRESHOLD:
            return bands, rows
    return num_perm, 1  # one row a band: the most candidates MinHash can offer


def near_duplicates(texts: list[str], threshold: float, seed: int) -> set[int]:
    """Indices of texts whose shingle Jaccard with an earlier kept text reaches ``threshold``.

    The first of a group is kept; ``seed`` seeds the MinHash permutations. A text without
    words is never a duplicate.
    """
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, params=lsh_bands(threshold, NUM_PERM))
    # CRC-32 rather than datasketch's default SHA-1: half the time, and as good here, since
    # datasketch mixes every input hash (MurmurHash3's finaliser) before permuting it.
    empty = MinHash(num_perm=NUM_PERM, seed=seed, hashfunc=zlib.crc32)
    dropped = set()
    for i, text in enumerate(texts):
        grams = shingles(text)
        if not grams:
            continue  # no words, nothing to compare
        minhash = empty.copy()  # reuses the seeded permutations instead of drawing them again
        minhash.update_batch([s.encode() for s in grams])
        # Only kept texts are in the index, so the first of a group stays. A candidate's
        # shingles are recomputed rather than every kept text's held: candidates are few.
        if any(jaccard(grams, shingles(texts[j])) >= threshold for j in lsh.query(minhash)):
            dropped.add(i)
        else:
            lsh.insert(i, minhash)
    return dropped


def ngrams(ws: list[str], n: int) -> Iterator[tuple[str, ...]]:
    """The runs of ``n`` consecutive words, in order; none when there are fewer words."""
    # Shifted copies of the list, zipped: the shortest ends the windows, on purpose.
    return zip(*(ws[i:] for i in range(n)), strict=False)


def find_leaks(texts: Iterable[str], questions: dict[str, list[str]], n: int) -> list[dict]:
    """The texts that contain a question: ``{"index", "benchmark", "question"}`` for each,
    naming the match that starts earliest in the text (the longest, on a tie).

    ``questions`` maps a group's name (a benchmark, a split) to its question texts. A question
    of ``n`` or more words leaks through any ``n`` consecutive words of it; a shorter one only
    whole. Question n-grams go into one dict per window length (``n`` and each shorter
    question's length), so each text is scanned once per length, whatever the number of
    questions.
    """
    by_length: dict[int, dict[tuple[str, ...], tuple[str, str]]] = {}
    for benchmark, group in questions.items():
        for question in group:
            qws = words(question)
            if qws:
                grams = by_length.setdefault(min(len(qws), n), {})
                for gram in ngrams(qws, min(len(qws), n)):
                    grams.setdefault(gram, (benchmark, question))
    leaks = []
    for index, text in enumerate(texts):
        tws = words(text)
        # isdisjoint stops at the first hit and builds no set, so a clean text (the common
        # case) costs one pass of tuple hashing per window length, all of it in C.
        lengths = sorted(
            (k for k, grams in by_length.items() if not grams.keys().isdisjoint(ngrams(tws, k))),
            reverse=True,
        )
        if lengths:
            hits = (
                by_length[k].get(tuple(tws[start : start + k]))
                for start in range(len(tws))
                for k in lengths
            )
            benchmark, question = next(hit for hit in hits if hit)
            leaks.append({"index": index, "benchmark": benchmark, "question": question})
    return leaks
