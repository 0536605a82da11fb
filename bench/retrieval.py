"""Embedding throughput against bare sentence-transformers, and ANN recall@5 against Flat.

    python bench/retrieval.py [--texts 2000] [--repeats 3] [--passages 4000] [--queries 300]
                              [--factories HNSW32 IVF64,Flat IVF64,Flat:nprobe=16 ...]
                              [--ray-data [--ray-data-workers N]]

(a) Embedding: the demo corpus's chunks (chunked as ``build_index`` does with the default
``rag:`` settings), repeated to ``--texts`` texts, embedded by tunearena's path
(``load_embedder`` + ``embed_texts``, as ``build_index`` calls them) and by a bare
``SentenceTransformer(path).encode(texts, batch_size=same)`` of the same model. The two
alternate ``--repeats`` times (swapping which goes first) so machine noise hits both alike;
the ratio is of median throughputs, target >= 0.9. Both must return the same vectors (up to
normalisation): the check that they did the same work.

(b) ANN: ``--passages`` passages in the demo documents' style about made-up products (the
demo documents' sentences with product names swapped and sentences mixed across documents),
indexed by each factory string through ``make_index`` / ``fill_index``; ``FACTORY:PARAMS``
searches with FAISS search parameters (``set_search_params``), e.g. ``IVF64,Flat:nprobe=16``
(without them, ``search_index``'s defaults apply: nprobe 8 for IVF64). The queries are
``--queries`` questions phrased as the demo's test questions, about those products: held out
from the index, as real questions are. Recall@5 is against an exact Flat search
(``ann_against_exact``); queries/s are of one batch search of all queries, median of 5 after
a warm-up, ANN and Flat alternating, through ``search_index`` as ``RagIndex.search`` calls it.
Target: >= 0.95 for an index used for retrieval (HNSW32, IVF with enough lists probed);
``IVF64,PQ16`` is shown for the trade-off: 16-byte codes (96x smaller) rank far less exactly.

(c) Ray Data, with ``--ray-data`` only: the same texts embedded by ``embed_texts_ray_data``
(as ``build_index`` calls it for a large corpus) on a local Ray that the bench starts with
this machine's CPUs and GPUs, against the bare ``encode`` in this process, alternated
``--repeats`` times. Actors and device are what ``build_index`` would pick
(``ray_data_actors``; ``--ray-data-workers`` sets the count). Each Ray Data run is a whole
job, actor start-up and model loads included, as a build pays them; the ratio is of median
throughputs and rises with the number of texts and of GPUs. Vectors must match the bare ones.

Wall times on a shared machine are noisy (run it on a quiet one); ratios are the figures to
compare.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from tunearena.cluster.ray_cluster import ray_data_actors
from tunearena.rag.chunking import chunk_documents
from tunearena.rag.config import RagConfig
from tunearena.rag.corpus import load_documents
from tunearena.rag.embed import (
    embed_texts,
    embed_texts_ray_data,
    load_embedder,
    resolve_embedding_model,
)
from tunearena.rag.index import ann_against_exact, fill_index, make_index

TARGET_THROUGHPUT_RATIO = 0.9
TARGET_RECALL = 0.95
RECALL_K = 5
DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo_world" / "domain"
SYLLABLES = ["ka", "lo", "mi", "ra", "ve", "to", "nu", "si", "da", "pe",
             "zo", "ri", "ba", "fe", "gu", "ho", "ja", "ne", "lu", "ty"]  # fmt: skip


def embedding_throughput(texts: list[str], batch_size: int, repeats: int) -> dict:
    """Median texts/s of tunearena's embedding path and of a bare ``encode``, alternated."""
    from sentence_transformers import SentenceTransformer

    cfg = RagConfig()
    ours = load_embedder(cfg.embedding_model)
    bare = SentenceTransformer(resolve_embedding_model(cfg.embedding_model))
    # Warm-up: the first forward pass allocates and picks kernels.
    embed_texts(ours, texts[:batch_size], batch_size)
    bare.encode(texts[:batch_size], batch_size=batch_size)
    ours_s, bare_s = [], []
    for r in range(repeats):
        runs = [("ours", ours_s), ("bare", bare_s)]
        for name, times in runs if r % 2 == 0 else runs[::-1]:
            t0 = time.perf_counter()
            if name == "ours":
                ours_vectors = embed_texts(ours, texts, batch_size)
            else:
                bare_vectors = bare.encode(texts, batch_size=batch_size)
            times.append(time.perf_counter() - t0)
    bare_unit = bare_vectors / np.linalg.norm(bare_vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(ours_vectors, bare_unit, atol=1e-5)
    return {
        "ours_per_s": len(texts) / statistics.median(ours_s),
        "bare_per_s": len(texts) / statistics.median(bare_s),
        "ours_s": ours_s,
        "bare_s": bare_s,
    }


def ray_data_throughput(
    texts: list[str], batch_size: int, repeats: int, workers: int | None
) -> dict:
    """Median texts/s of a Ray Data embedding job (start-up included) and of a bare
    ``encode``, alternated, on a local Ray started for the measurement."""
    import ray
    from sentence_transformers import SentenceTransformer

    model = RagConfig().embedding_model
    bare = SentenceTransformer(resolve_embedding_model(model))
    bare.encode(texts[:batch_size], batch_size=batch_size)  # warm-up, as in (a)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        workers, use_gpu = ray_data_actors(ray.cluster_resources(), workers, "--ray-data-workers")
        ray_s, bare_s = [], []
        for r in range(repeats):
            runs = [("ray", ray_s), ("bare", bare_s)]
            for name, times in runs if r % 2 == 0 else runs[::-1]:
                t0 = time.perf_counter()
                if name == "ray":
                    ray_vectors = embed_texts_ray_data(model, texts, batch_size, workers, use_gpu)
                else:
                    bare_vectors = bare.encode(texts, batch_size=batch_size)
                times.append(time.perf_counter() - t0)
    finally:
        ray.shutdown()
    bare_unit = bare_vectors / np.linalg.norm(bare_vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(ray_vectors, bare_unit, atol=1e-5)
    return {
        "ray_per_s": len(texts) / statistics.median(ray_s),
        "bare_per_s": len(texts) / statistics.median(bare_s),
        "ray_s": ray_s,
        "bare_s": bare_s,
        "workers": workers,
        "device": "GPU" if use_gpu else "CPU",
    }


def demo_chunk_texts() -> list[str]:
    """The demo corpus's chunk texts, chunked with the default ``rag:`` settings."""
    cfg = RagConfig(corpus=DEMO / "documents.jsonl")
    tokenizer = load_embedder(cfg.embedding_model).tokenizer
    docs = load_documents(cfg.corpus)
    chunks = chunk_documents(docs, tokenizer, cfg.chunk_tokens, cfg.chunk_overlap_tokens)
    return [c.text for c in chunks]


def synthetic_products(n_passages: int, n_queries: int, seed: int) -> tuple[list[str], list[str]]:
    """Passages about ``n_passages`` made-up products, and questions about random ones.

    Each passage starts from a random demo document with its product renamed, and replaces
    about half of its sentences by sentences of other demo documents (renamed too), so values
    mix (and may conflict: only the embeddings' distribution matters here); it keeps a random
    subset in random order, titled ``"{name}: ..."`` as chunks are.
    Questions are the demo's test questions with their product renamed to a passage's.
    """
    rng = random.Random(seed)
    docs = [json.loads(line) for line in (DEMO / "documents.jsonl").open() if line.strip()]
    titles = {d["id"]: d["title"] for d in docs}
    # Sentences with the product name as a placeholder.
    sentences = [
        [s.replace(d["title"], "{e}") for s in re.split(r"(?<=\.) ", d["text"])] for d in docs
    ]
    product_types = sorted({d["title"].split()[-1] for d in docs})
    used: set[str] = set()
    names = []
    while len(names) < n_passages:
        stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice([2, 3]))).capitalize()
        name = f"{stem} {rng.choice(product_types)}"
        if name not in used:
            used.add(name)
            names.append(name)
    passages = []
    for name in names:
        own = list(rng.choice(sentences))
        mixed = [s if rng.random() < 0.5 else rng.choice(rng.choice(sentences)) for s in own]
        keep = rng.sample(mixed, rng.randint(3, len(mixed)))
        passages.append(f"{name}: " + " ".join(s.format(e=name) for s in keep))
    questions = [json.loads(line) for line in (DEMO / "qa_test.jsonl").open() if line.strip()]
    queries = []
    for _ in range(n_queries):
        q = rng.choice(questions)
        queries.append(q["question"].replace(titles[q["doc_id"]], rng.choice(names)))
    return passages, queries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000, help="texts per throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of each path")
    parser.add_argument("--batch-size", type=int, default=RagConfig().embed_batch_size)
    parser.add_argument("--passages", type=int, default=4000, help="vectors in the ANN index")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--factories",
        nargs="+",
        default=["HNSW32", "IVF64,Flat", "IVF64,Flat:nprobe=16", "IVF64,PQ16"],
        help="FAISS factory strings, each optionally :SEARCH_PARAMS",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ray-data", action="store_true", help="also time embed_texts_ray_data against bare"
    )
    parser.add_argument(
        "--ray-data-workers", type=int, default=None, help="actors (default: as build_index)"
    )
    args = parser.parse_args()

    chunks = demo_chunk_texts()
    texts = (chunks * (args.texts // len(chunks) + 1))[: args.texts]
    tp = embedding_throughput(texts, args.batch_size, args.repeats)
    ratio = tp["ours_per_s"] / tp["bare_per_s"]
    print(
        f"embedding: {len(texts)} texts ({len(chunks)} demo chunks repeated), batch "
        f"{args.batch_size}, {args.repeats} alternated runs each"
    )
    print(
        f"  tunearena {tp['ours_per_s']:.1f} texts/s "
        f"(runs {', '.join(f'{s:.2f}' for s in tp['ours_s'])} s)"
    )
    print(
        f"  bare      {tp['bare_per_s']:.1f} texts/s "
        f"(runs {', '.join(f'{s:.2f}' for s in tp['bare_s'])} s)"
    )

    passages, queries = synthetic_products(args.passages, args.queries, args.seed)
    embedder = load_embedder(RagConfig().embedding_model)
    t0 = time.perf_counter()
    vectors = embed_texts(embedder, passages, args.batch_size)
    query_vectors = embed_texts(embedder, queries, args.batch_size)
    embed_s = time.perf_counter() - t0
    print(
        f"\nANN: {len(passages)} synthetic demo-style passages, {len(queries)} held-out "
        f"questions, dim {vectors.shape[1]} (embedded in {embed_s:.0f} s)"
    )
    print(
        f"{'factory':<22}{'recall@5':>10}{'qps':>12}{'flat qps':>12}{'ms/query':>10}{'build s':>9}"
    )
    recalls = {}
    for name in args.factories:
        factory, _, search_params = name.partition(":")
        t0 = time.perf_counter()
        index = fill_index(make_index(factory, vectors.shape[1]), vectors)
        build_s = time.perf_counter() - t0
        ann = ann_against_exact(
            index, vectors, query_vectors, [RECALL_K], search_params=search_params
        )
        recalls[name] = ann
        print(
            f"{name:<22}{ann['recall_at_k'][str(RECALL_K)]:>10.3f}{ann['ann_qps']:>12.0f}"
            f"{ann['flat_qps']:>12.0f}{ann['ann_ms_per_query']:>10.3f}{build_s:>9.2f}"
        )

    rd = None
    if args.ray_data:
        rd = ray_data_throughput(texts, args.batch_size, args.repeats, args.ray_data_workers)
        print(
            f"\nRay Data embedding: the same {len(texts)} texts, {rd['workers']} actors on "
            f"{rd['device']}, a whole job a run (actor start-up included), batch {args.batch_size}"
        )
        print(
            f"  ray data  {rd['ray_per_s']:.1f} texts/s "
            f"(runs {', '.join(f'{s:.2f}' for s in rd['ray_s'])} s)"
        )
        print(
            f"  bare      {rd['bare_per_s']:.1f} texts/s "
            f"(runs {', '.join(f'{s:.2f}' for s in rd['bare_s'])} s)"
        )

    print()
    print(
        f"embedding throughput ratio tunearena/bare: {ratio:.2f} "
        f"(target >= {TARGET_THROUGHPUT_RATIO})"
    )
    if rd is not None:
        print(
            f"Ray Data embedding throughput ratio ray data/bare: "
            f"{rd['ray_per_s'] / rd['bare_per_s']:.2f} ({rd['workers']} {rd['device']} actors, "
            f"{len(texts)} texts, start-up included)"
        )
    for factory, ann in recalls.items():
        print(
            f"ANN recall@{RECALL_K} vs Flat ({factory}): {ann['recall_at_k'][str(RECALL_K)]:.3f} "
            f"(target >= {TARGET_RECALL}), {ann['ann_qps']:.0f} qps vs Flat "
            f"{ann['flat_qps']:.0f} qps"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
