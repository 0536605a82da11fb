"""Token windows (pure integers) and chunk_documents with the packaged MiniLM tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tunearena.rag.chunking import chunk_documents, token_windows
from tunearena.rag.config import PACKAGED_EMBEDDER
from tunearena.rag.corpus import Document
from tunearena.rag.embed import resolve_embedding_model

REAL_TEXT = (
    "Lumora Systems makes lamps, kettles and clocks in the city of Tarrow. Its Zephyr lamp "
    "costs 40 dollars, comes in blue or amber, and has a three-year warranty.\n\nThe Orbit "
    "kettle, designed by Ana Ruiz, boils a litre in ninety seconds; returns are accepted "
    "within 30 days if the kettle is unused. Café Naïve in Tarrow serves tea from Orbit kettles."
) * 3


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_embedding_model(PACKAGED_EMBEDDER))


@pytest.fixture(scope="module")
def one_token_words(tokenizer):
    """300 distinct vocabulary words that are each exactly one token."""
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and len(w) >= 4]
    words = sorted(words)[:300]
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(words)
    return words


@pytest.mark.parametrize(
    ("n_tokens", "chunk_tokens", "overlap_tokens", "expected"),
    [
        (0, 4, 1, []),
        (3, 4, 1, [(0, 3)]),
        (4, 4, 1, [(0, 4)]),
        (5, 4, 1, [(0, 4), (3, 5)]),
        (10, 4, 0, [(0, 4), (4, 8), (8, 10)]),
        (10, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),
        (7, 4, 3, [(0, 4), (1, 5), (2, 6), (3, 7)]),
    ],
)
def test_token_windows(n_tokens, chunk_tokens, overlap_tokens, expected):
    assert token_windows(n_tokens, chunk_tokens, overlap_tokens) == expected


@pytest.mark.parametrize("n_tokens", range(1, 60))
def test_token_windows_cover_every_token_with_overlap(n_tokens):
    windows = token_windows(n_tokens, 8, 3)
    covered = {t for start, end in windows for t in range(start, end)}
    assert covered == set(range(n_tokens))
    assert all(end - start <= 8 for start, end in windows)
    for (_, prev_end), (start, _) in zip(windows, windows[1:], strict=False):
        assert prev_end - start == 3


@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), [(0, 0), (4, 4), (4, -1)])
def test_token_windows_rejects_bad_sizes(chunk_tokens, overlap_tokens):
    with pytest.raises(ValueError):
        token_windows(10, chunk_tokens, overlap_tokens)


def test_windows_are_exact_word_runs(tokenizer, one_token_words):
    doc = Document(id="d", text=" ".join(one_token_words[:100]))
    chunks = chunk_documents([doc], tokenizer, chunk_tokens=32, overlap_tokens=8)
    assert [c.chunk_id for c in chunks] == ["d#0", "d#1", "d#2", "d#3"]
    assert [c.start_token for c in chunks] == [0, 24, 48, 72]
    for chunk in chunks:
        end = min(chunk.start_token + 32, 100)
        assert chunk.text == " ".join(one_token_words[chunk.start_token : end])
    # Consecutive chunks share exactly the overlap; the last one ends on the last word.
    assert chunks[0].text.split()[-8:] == chunks[1].text.split()[:8]
    assert chunks[-1].text.endswith(one_token_words[99])


def test_short_document_is_one_chunk_of_its_whole_text(tokenizer):
    doc = Document(id="short", text="  The Zephyr lamp costs 40 dollars.\n")
    (chunk,) = chunk_documents([doc], tokenizer, chunk_tokens=96, overlap_tokens=24)
    assert chunk == chunk.__class__("short#0", "short", "The Zephyr lamp costs 40 dollars.", 0)


def test_real_text_chunks_are_substrings_covering_the_document(tokenizer):
    doc = Document(id="lumora", text=REAL_TEXT)
    n_tokens = len(tokenizer(REAL_TEXT, add_special_tokens=False)["input_ids"])
    chunks = chunk_documents([doc], tokenizer, chunk_tokens=40, overlap_tokens=10)
    assert len(chunks) == len(token_windows(n_tokens, 40, 10)) > 3
    # Exact substrings of the original (case, accents and newlines kept), in order and
    # overlapping. The text repeats, so each chunk is looked up after the previous one's start.
    spans = []
    for chunk in chunks:
        pos = REAL_TEXT.find(chunk.text, spans[-1][0] + 1 if spans else 0)
        assert pos >= 0
        spans.append((pos, pos + len(chunk.text)))
    assert spans[0][0] == 0
    for (_, prev_end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start < prev_end
    assert [c.start_token for c in chunks] == list(range(0, 30 * len(chunks), 30))
    assert REAL_TEXT.rstrip().endswith(chunks[-1].text)
    assert any("Café Naïve" in c.text for c in chunks)


def test_title_prefixes_every_chunk(tokenizer, one_token_words):
    body = " ".join(one_token_words[:50])
    doc = Document(id="t", text=body, title="Lumora Handbook")
    chunks = chunk_documents([doc], tokenizer, chunk_tokens=20, overlap_tokens=5)
    assert len(chunks) == 3
    for chunk in chunks:
        assert chunk.text.startswith("Lumora Handbook: ")
        assert chunk.text.removeprefix("Lumora Handbook: ") in body


def test_several_documents_keep_order_and_ids(tokenizer):
    docs = [Document(id="a", text="First document."), Document(id="b", text=REAL_TEXT)]
    chunks = chunk_documents(docs, tokenizer, chunk_tokens=64, overlap_tokens=16)
    assert chunks[0].chunk_id == "a#0"
    assert [c.doc_id for c in chunks] == ["a"] + ["b"] * (len(chunks) - 1)
    assert [c.chunk_id for c in chunks[1:]] == [f"b#{n}" for n in range(len(chunks) - 1)]
    assert chunk_documents([], tokenizer, 64, 16) == []
