"""Index construction and recall against exact search, on random unit vectors (real FAISS)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from tunearena.rag.index import (
    Hit,
    ann_against_exact,
    exact_search,
    fill_index,
    gold_recall_at_k,
    gold_recall_curve,
    is_exact,
    make_index,
    recall_against_exact,
    search_index,
    set_search_params,
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


def test_gold_recall_curve_counts_gold_within_each_k():
    retrieved = [hits("a", "b", "c"), hits("c", "a", "b"), hits("d", "e", "x"), hits("b")]
    gold = ["a", "a", "x", "a"]
    curve = gold_recall_curve(retrieved, gold, ks=[3, 1, 2, 2])
    assert list(curve) == [1, 2, 3]
    assert curve == pytest.approx({1: 0.25, 2: 0.5, 3: 0.75})
    # Hits shorter than k (a small index) count as they are.
    assert gold_recall_curve([hits("a")], ["a"], ks=[1, 10]) == {1: 1.0, 10: 1.0}


def test_gold_recall_curve_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty list of k >= 1"):
        gold_recall_curve([hits("a")], ["a"], ks=[])
    with pytest.raises(ValueError, match="non-empty list of k >= 1"):
        gold_recall_curve([hits("a")], ["a"], ks=[0, 1])
    with pytest.raises(ValueError, match="2 hit lists but 1 gold"):
        gold_recall_curve([hits("a"), hits("b")], ["a"], ks=[1])


def test_is_exact():
    assert is_exact(make_index("Flat", DIM))
    assert is_exact(make_index("IDMap,Flat", DIM))
    assert is_exact(make_index("IDMap2,Flat", DIM))
    for factory in ["HNSW32", "IVF4,Flat", "PQ8", "PCA16,Flat", "IVF4,Flat,RFlat"]:
        assert not is_exact(make_index(factory, DIM)), factory


def test_ann_against_exact_summary(vectors, queries):
    index = fill_index(make_index("HNSW32", DIM), vectors)
    ann = ann_against_exact(index, vectors, queries, ks=[2, 5])
    assert ann["queries"] == 100
    assert set(ann["recall_at_k"]) == {"2", "5"}
    assert all(0.9 <= r <= 1 for r in ann["recall_at_k"].values())
    assert ann["ann_ms_per_query"] > 0 and ann["flat_ms_per_query"] > 0
    assert ann["ann_qps"] == pytest.approx(1000 / ann["ann_ms_per_query"], rel=1e-3)
    flat = fill_index(make_index("Flat", DIM), vectors)
    assert ann_against_exact(flat, vectors, queries, ks=[5])["recall_at_k"] == {"5": 1.0}


def test_ann_against_exact_leaves_out_self_matches(vectors):
    # IVF visiting one list always finds a stored vector itself (it sits in the list of its
    # nearest centroid) but misses most of its other neighbours: self-matches would hide that.
    ivf = fill_index(make_index("IVF64,Flat", DIM), vectors)
    ids = np.arange(0, 2000, 20)
    queries = vectors[ids]
    with_self = ann_against_exact(ivf, vectors, queries, ks=[1], search_params="nprobe=1")
    assert with_self["recall_at_k"] == {"1": 1.0}
    without_self = ann_against_exact(
        ivf, vectors, queries, ks=[1, 5], query_ids=ids, search_params="nprobe=1"
    )
    assert without_self["recall_at_k"]["1"] < 0.8 and without_self["recall_at_k"]["5"] < 0.8
    assert without_self["queries"] == 100
    # Left out of both lists alike: exact search still recalls everything.
    flat = fill_index(make_index("Flat", DIM), vectors)
    exact = ann_against_exact(flat, vectors, queries, ks=[1, 5], query_ids=ids)
    assert exact["recall_at_k"] == {"1": 1.0, "5": 1.0}
    with pytest.raises(ValueError, match="non-empty list of k >= 1"):
        ann_against_exact(flat, vectors, queries, ks=[])


def test_search_params_override_defaults_and_are_validated(vectors):
    ivf = fill_index(make_index("IVF64,Flat", DIM), vectors)
    search_index(ivf, vectors[:2], k=5, search_params="nprobe=64")
    assert faiss.extract_index_ivf(ivf).nprobe == 64
    hnsw = fill_index(make_index("HNSW16", DIM), vectors)
    set_search_params(hnsw, "efSearch=200")
    assert faiss.downcast_index(hnsw).hnsw.efSearch == 200
    flat = make_index("Flat", DIM)
    set_search_params(flat, "")
    with pytest.raises(ValueError, match="invalid search parameters 'nprobe=4'.*nprobe"):
        set_search_params(flat, "nprobe=4")
    with pytest.raises(ValueError, match="invalid search parameters 'nprobe'"):
        set_search_params(ivf, "nprobe")
    ann = ann_against_exact(ivf, vectors, vectors[:20], ks=[5], search_params="nprobe=64")
    assert ann["recall_at_k"] == {"5": 1.0}
