"""The ``rag`` section checked against its corpus and FAISS before anything is built.

The index step runs after the run directory exists and Ray may be up; a factory string FAISS
cannot parse, an embedding model that is not there, or a ``top_k`` above the chunks the
corpus gives would fail there, or pass silently. Here each is named in seconds: the embedder
is loaded (a second, for the packaged MiniLM), the index is built from its factory string on
a few random vectors and searched, and the corpus is chunked only when the document count
alone cannot answer (every document gives one chunk at least).
"""

from __future__ import annotations

import faiss
import numpy as np

from tunearena.rag.chunking import chunk_documents
from tunearena.rag.config import RagConfig
from tunearena.rag.corpus import Document, load_documents
from tunearena.rag.embed import load_embedder
from tunearena.rag.index import (
    RagIndexError,
    check_chunk_tokens,
    check_trainable,
    faiss_message,
    fill_index,
    make_index,
    search_index,
    set_search_params,
)

PROBE_VECTORS = 16
"""Random vectors an already trained index (Flat, HNSW) is filled with and searched in the
check: enough for ``top_k`` results, too few to cost anything."""


def check_rag(cfg: RagConfig) -> int:
    """Check the corpus, the embedder, the index factory, its search parameters and ``top_k``;
    returns the number of chunks known (a lower bound: the documents, when chunking was not
    needed). Raises ``CorpusError`` or ``RagIndexError`` naming the file or key."""
    assert cfg.corpus is not None  # the config refuses +rag arms without a corpus
    docs = load_documents(cfg.corpus)
    try:
        embedder = load_embedder(cfg.embedding_model, device="cpu")
    except (OSError, ValueError) as e:
        raise RagIndexError(
            f"rag.embedding_model {cfg.embedding_model!r} cannot be loaded: {e}; point it at a "
            "sentence-transformers model dir, or leave it unset for the packaged MiniLM"
        ) from None
    check_chunk_tokens(cfg, embedder)
    dim = embedder.get_embedding_dimension()
    if dim is None:
        raise RagIndexError(f"rag.embedding_model {cfg.embedding_model!r} states no embedding "
                            "dimension; use a sentence-transformers model that does")
    index = make_index(cfg.index_factory, dim)
    ivf = faiss.try_extract_index_ivf(index)
    n_chunks = len(docs)
    if cfg.top_k > n_chunks or (ivf is not None and ivf.nlist > n_chunks):
        n_chunks = _count_chunks(docs, cfg, embedder.tokenizer)
    check_trainable(index, n_chunks)
    set_search_params(index, cfg.index_search_params)
    if cfg.top_k > n_chunks:
        raise RagIndexError(
            f"rag.top_k is {cfg.top_k}, but the corpus {cfg.corpus} gives only {n_chunks} "
            f"chunks ({len(docs)} documents at rag.chunk_tokens {cfg.chunk_tokens}): every "
            f"question would get the whole corpus; set rag.top_k to at most {n_chunks}, or "
            "lower rag.chunk_tokens")
    if index.is_trained:
        _probe(index, cfg, dim)
    return n_chunks


def _count_chunks(docs: list[Document], cfg: RagConfig, tokenizer) -> int:
    return len(chunk_documents(docs, tokenizer, cfg.chunk_tokens, cfg.chunk_overlap_tokens))


def _probe(index: faiss.Index, cfg: RagConfig, dim: int) -> None:
    """Fill ``index`` with a few random unit vectors and search it, as the run will."""
    vectors = np.random.default_rng(0).standard_normal((PROBE_VECTORS, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    try:
        fill_index(index, vectors)
        search_index(index, vectors[:2], min(cfg.top_k, PROBE_VECTORS), cfg.index_search_params)
    except RuntimeError as e:
        raise RagIndexError(f"rag.index_factory {cfg.index_factory!r}: FAISS cannot fill or "
                            f"search this index: {faiss_message(e)}") from None
