"""Embedding as a Ray Data job: the same vectors in the same order as in process, and the same
index from build_index (real local Ray, real packaged MiniLM, real FAISS)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray

from tunearena.cluster.ray_cluster import ray_data_actors
from tunearena.rag.config import RagConfig
from tunearena.rag.embed import embed_texts_ray_data
from tunearena.rag.index import RagIndex, build_index

pytestmark = pytest.mark.slow

MODEL = RagConfig().embedding_model
DEMO = Path(__file__).resolve().parents[2] / "examples/demo_world/domain"
# Short chunks turn the 30 demo documents into ~180 chunks, several per document, so a chunk
# vector stored on the wrong row would change which chunk a question retrieves.
SMALL_CHUNKS = {"chunk_tokens": 16, "chunk_overlap_tokens": 4}
WORDS = ["lamp", "kettle", "river", "owl", "festival", "volcano", "train", "honey", "opera"]
TEXTS = [f"Note {i}: the {WORDS[i % 9]} weighs {i} grams." for i in range(3)]


def demo_questions(n: int) -> list[str]:
    with (DEMO / "qa_test.jsonl").open() as f:
        return [json.loads(line)["question"] for line in f][::6][:n]


def test_ray_data_actors_from_cluster_resources():
    assert ray_data_actors({"CPU": 16.0, "GPU": 4.0}, None, "rag.embed_workers") == (4, True)
    assert ray_data_actors({"CPU": 16.0}, None, "rag.embed_workers") == (8, False)
    assert ray_data_actors({"CPU": 1.0}, None, "rag.embed_workers") == (1, False)
    assert ray_data_actors({"CPU": 16.0}, 3, "rag.embed_workers") == (3, False)
    with pytest.raises(ValueError, match="embed_workers is 5.*4 GPUs"):
        ray_data_actors({"CPU": 16.0, "GPU": 4.0}, 5, "rag.embed_workers")


def test_needs_a_running_ray():
    assert not ray.is_initialized()
    with pytest.raises(RuntimeError, match="needs a running Ray"):
        embed_texts_ray_data(MODEL, TEXTS[:3], 8, workers=1, use_gpu=False)


def test_build_index_with_ray_data_equals_in_process(tmp_path):
    assert not ray.is_initialized()
    corpus = DEMO / "documents.jsonl"
    # No Ray running: build_index starts a local one for the job and shuts it down after.
    # Two actors, blocks finishing in whatever order they do.
    ours = build_index(
        RagConfig(corpus=corpus, embed_with_ray_data="always", embed_workers=2,
                  embed_batch_size=16, **SMALL_CHUNKS),
        tmp_path / "ray_data",
    )
    assert not ray.is_initialized()
    base = build_index(
        RagConfig(corpus=corpus, embed_with_ray_data="never", **SMALL_CHUNKS), tmp_path / "local"
    )
    assert base["n_chunks"] > 150
    assert ours["embedded_with"] == "ray_data" and ours["embed_workers"] == 2
    assert (base["embedded_with"], base["embed_workers"]) == ("in_process", None)
    for summary in ours, base:
        assert summary["embed_s"] > 0 and summary["embed_texts_per_s"] > 0
    meta = json.loads((tmp_path / "ray_data" / "meta.json").read_text())
    assert meta["embedded_with"] == "ray_data"

    ray_index, local_index = RagIndex.load(tmp_path / "ray_data"), RagIndex.load(tmp_path / "local")
    assert ray_index.chunks == local_index.chunks
    vectors = ray_index.index.reconstruct_n(0, ray_index.index.ntotal)
    in_process = local_index.index.reconstruct_n(0, local_index.index.ntotal)
    np.testing.assert_allclose(vectors, in_process, atol=1e-5)
    # The comparison sees order: swapping two neighbours' rows breaks it.
    assert not np.allclose(vectors[[1, 0, *range(2, len(vectors))]], in_process, atol=1e-5)
    questions = demo_questions(20)
    ray_hits, local_hits = ray_index.search(questions, k=5), local_index.search(questions, k=5)
    assert [[h.chunk_id for h in q] for q in ray_hits] == [
        [h.chunk_id for h in q] for q in local_hits
    ]
    for ray_q, local_q in zip(ray_hits, local_hits, strict=True):
        np.testing.assert_allclose([h.score for h in ray_q], [h.score for h in local_q], atol=1e-5)


def test_auto_below_min_chunks_embeds_in_process(tmp_path):
    corpus = DEMO / "documents.jsonl"
    summary = build_index(
        RagConfig(corpus=corpus, ray_data_min_chunks=10_000, **SMALL_CHUNKS), tmp_path / "index"
    )
    assert summary["n_chunks"] < 10_000
    assert (summary["embedded_with"], summary["embed_workers"]) == ("in_process", None)
    assert json.loads((tmp_path / "index" / "meta.json").read_text())["embedded_with"] == (
        "in_process"
    )
    assert not ray.is_initialized()  # and no Ray was started for it
