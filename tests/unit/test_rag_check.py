"""check_rag: the rag section tried against its corpus and FAISS before anything is built."""

from __future__ import annotations

import json

import pytest

from tunearena.errors import UserError
from tunearena.rag.check import check_rag
from tunearena.rag.config import RagConfig
from tunearena.rag.index import RagIndexError, make_index


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "docs.jsonl"
    words = " ".join(f"word{i}" for i in range(60))  # about 2 chunks of 64 tokens each
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document {i}: {words}"}) + "\n"
                            for i in range(3)))
    return path


def test_a_good_section_passes_and_counts_chunks_only_when_needed(corpus):
    assert check_rag(RagConfig(corpus=corpus, chunk_tokens=64, chunk_overlap_tokens=8,
                               index_factory="HNSW16", top_k=2)) == 3  # the documents suffice
    chunks = check_rag(RagConfig(corpus=corpus, chunk_tokens=64, chunk_overlap_tokens=8,
                                 top_k=4))
    assert 4 <= chunks <= 9


def test_top_k_above_the_chunks_names_both(corpus):
    with pytest.raises(RagIndexError, match=r"rag.top_k is 50, .* gives only \d+ chunks \(3 "
                                            r"documents at rag.chunk_tokens 64\)"):
        check_rag(RagConfig(corpus=corpus, chunk_tokens=64, chunk_overlap_tokens=8, top_k=50))


@pytest.mark.parametrize(("change", "words"), [
    ({"index_factory": "HNSWx,Flatt"}, "could not parse index string HNSWx,Flatt"),
    ({"index_factory": "IVF16,Flat"}, "IVF index with 16 lists needs at least 16 vectors"),
    ({"index_factory": "HNSW32", "index_search_params": "nprobe=4"}, "rag.index_search_params"),
])
def test_faiss_errors_keep_their_text_inside_a_user_error(corpus, change, words):
    with pytest.raises(RagIndexError, match=words) as err:
        check_rag(RagConfig(corpus=corpus, **change))
    assert isinstance(err.value, UserError)


def test_the_index_step_raises_the_same_user_error():
    """build_index makes its index through make_index: no traceback at the index step."""
    with pytest.raises(UserError, match="rag.index_factory"):
        make_index("Flatt", 8)
