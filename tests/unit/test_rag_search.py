"""Index construction and recall against exact search, on random unit vectors (real FAISS)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from tunearena.rag.index import (
    Hit,
    exact_search,
    fill_index,
    gold_recall_at_k,
    make_index,
    recall_against_exact,
    search_index,
)

DIM = 32


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit_vectors(2000, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return unit_vectors(100, seed=1)


def test_exact_search_ranks_by_inner_product(vectors, queries):
    scores, ids = exact_search(vectors, queries, k=5)
    assert ids.shape == scores.shape == (100, 5)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores[:, 0], np.max(queries @ vectors.T, axis=1), rtol=1e-5)


def test_flat_index_recall_is_one(vectors, queries):
    index = fill_index(make_index("Flat", DIM), vectors)
    assert recall_against_exact(index, vectors, queries, k=10) == pytest.approx(1.0)


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,Flat"])
def test_approximate_index_recall_against_flat(vectors, queries, factory):
    index = fill_index(make_index(factory, DIM), vectors)
    assert index.ntotal == len(vectors)
    assert recall_against_exact(index, vectors, queries, k=10) >= 0.9


def test_search_index_sets_search_params():
    vectors = unit_vectors(3000, seed=2)
    hnsw = fill_index(make_index("HNSW16", DIM), vectors)
    search_index(hnsw, vectors[:2], k=50)
    assert faiss.downcast_index(hnsw).hnsw.efSearch == 100
    ivf = fill_index(make_index("IVF64,Flat", DIM), vectors)
    search_index(ivf, vectors[:2], k=5)
    assert faiss.extract_index_ivf(ivf).nprobe == 8


def test_fewer_vectors_than_k_pads_and_recall_counts_only_real_results():
    vectors = unit_vectors(3, seed=3)
    index = fill_index(make_index("HNSW32", DIM), vectors)
    _, ids = search_index(index, vectors, k=5)
    assert (ids[:, 3:] == -1).all()
    assert recall_against_exact(index, vectors, vectors, k=5) == pytest.approx(1.0)


def test_invalid_factory_string():
    with pytest.raises(ValueError, match="invalid index_factory 'IVFx,Bad': could not parse"):
        make_index("IVFx,Bad", DIM)


def test_ivf_with_more_lists_than_vectors_is_a_clear_error():
    with pytest.raises(ValueError, match="IVF index with 64 lists needs at least 64 vectors"):
        fill_index(make_index("IVF64,Flat", DIM), unit_vectors(20, seed=4))


def test_pq_with_too_few_training_vectors_is_a_clear_error():
    with pytest.raises(ValueError, match="could not train the index on 100 vectors"):
        fill_index(make_index("PQ8", DIM), unit_vectors(100, seed=5))


def hits(*doc_ids: str) -> list[Hit]:
    return [Hit(chunk_id=f"{d}#0", doc_id=d, text="", score=0.0) for d in doc_ids]


def test_gold_recall_at_k():
    retrieved = [hits("a", "b"), hits("c", "a"), hits("d", "e"), hits()]
    assert gold_recall_at_k(retrieved, ["a", "a", "x", "a"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 hit lists but 1 gold"):
        gold_recall_at_k(retrieved[:2], ["a"])
    with pytest.raises(ValueError, match="at least one question"):
        gold_recall_at_k([], [])
