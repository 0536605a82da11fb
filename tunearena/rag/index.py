"""The FAISS index: build it from a corpus, persist it, load it, search it, measure recall.

An index directory holds three files: ``index.faiss`` (row ``i`` is chunk ``i``),
``chunks.jsonl`` (one chunk a line, in row order) and ``meta.json`` (factory string, embedding
model, dim, counts, chunk parameters). ``meta.json`` is written last, so its presence marks a
complete index.

Vectors are unit-length and every index uses ``METRIC_INNER_PRODUCT``, so scores are cosine
similarities. Recall is always measured against an exact ``Flat`` search over the same vectors.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from sentence_transformers import SentenceTransformer

from tunearena.errors import UserError
from tunearena.rag.chunking import Chunk, chunk_documents
from tunearena.rag.config import RagConfig
from tunearena.rag.corpus import load_documents
from tunearena.rag.embed import (
    embed_texts,
    embed_texts_ray_data,
    load_embedder,
)

INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.jsonl"
META_FILE = "meta.json"
ANN_QUERIES = 200  # chunk vectors sampled as queries for the ANN recall recorded at build


class RagIndexError(UserError, ValueError):
    """An index the ``rag`` section asks for that cannot be built: the message names the key
    (``rag.index_factory``, ``rag.index_search_params``, ``rag.chunk_tokens``, ...)."""


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk; ``score`` is the cosine similarity to the query."""

    chunk_id: str
    doc_id: str
    text: str
    score: float


def make_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index of ``dim`` dimensions from a FAISS factory string."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise RagIndexError(
            f"invalid index_factory {factory!r}: {faiss_message(e)}; set rag.index_factory to "
            "a FAISS factory string such as 'Flat', 'HNSW32' or 'IVF256,Flat'"
        ) from None


def fill_index(index: faiss.Index, vectors: np.ndarray) -> faiss.Index:
    """Train ``index`` on ``vectors`` if its type needs it, then add them (row ``i`` gets id ``i``).

    ``IDMap`` and ``IDMap2`` indexes take explicit ids (their ``add`` raises); they get the row
    numbers, so their ids mean what every other index's do.
    """
    check_trainable(index, len(vectors))
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as e:
            raise RagIndexError(
                f"could not train the index on {len(vectors)} vectors: {faiss_message(e)}; "
                "choose another rag.index_factory"
            ) from None
    if isinstance(faiss.downcast_index(index), faiss.IndexIDMap):  # IndexIDMap2 derives from it
        index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    else:
        index.add(vectors)
    return index


def search_index(
    index: faiss.Index, queries: np.ndarray, k: int, search_params: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)``, each ``(n_queries, k)``, with search-time parameters set for ``k``.

    HNSW: ``efSearch = max(64, 2k)``: the candidate list must be longer than ``k``, and 64 is
    a common floor that keeps recall high at little cost. IVF: ``nprobe = min(nlist, max(8,
    nlist // 8))``, an eighth of the lists but at least 8, so small indexes are searched
    exhaustively and large ones trade a little recall for speed. ``search_params`` (see
    ``set_search_params``) overrides these defaults. Missing results have id ``-1``.
    """
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, max(8, ivf.nlist // 8))
    # ParameterSpace reaches an HNSW graph inside wrappers (PCA, refine, IVF quantizer); it
    # raises when the index has none.
    with contextlib.suppress(RuntimeError):
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", max(64, 2 * k))
    set_search_params(index, search_params)
    return index.search(queries, k)


def set_search_params(index: faiss.Index, search_params: str) -> None:
    """Set search-time parameters from a FAISS ``ParameterSpace`` string, such as
    ``"nprobe=16"`` (IVF lists visited) or ``"nprobe=16,efSearch=128"``.

    Factory strings carry no search-time parameters; this string is how an index's config
    sets them. ``""`` sets nothing. Raises ``RagIndexError`` for a parameter the index lacks.
    """
    if not search_params:
        return
    try:
        faiss.ParameterSpace().set_index_parameters(index, search_params)
    except RuntimeError as e:
        raise RagIndexError(
            f"invalid search parameters {search_params!r} for this index: {faiss_message(e)}; "
            "fix rag.index_search_params (e.g. nprobe=16 for IVF, efSearch=128 for HNSW)"
        ) from None


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product ``(scores, ids)`` of ``queries`` over ``vectors`` (``IndexFlatIP``)."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, k)


def recall_against_exact(
    index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int
) -> float:
    """Fraction of the exact top-``k`` ids that ``index``'s top-``k`` also returns.

    ``index`` must hold ``vectors`` with ids ``0..n-1`` (as ``fill_index`` adds them).
    """
    if len(queries) == 0:
        raise ValueError("recall_against_exact needs at least one query")
    _, exact_ids = exact_search(vectors, queries, k)
    _, index_ids = search_index(index, queries, k)
    return _id_recall(exact_ids, index_ids)


def is_exact(index: faiss.Index) -> bool:
    """Whether ``index`` is a brute-force ``Flat`` index (optionally inside ``IDMap``)."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexIDMap):  # IndexIDMap2 derives from it
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexFlat)


def ann_against_exact(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    ks: Sequence[int],
    query_ids: np.ndarray | None = None,
    search_params: str = "",
    timed_runs: int = 5,
) -> dict:
    """Recall@k of ``index`` against an exact ``Flat`` search for each k in ``ks``, and the
    batch search latency of both.

    ``index`` must hold ``vectors`` with ids ``0..n-1``. When the queries are rows of
    ``vectors``, pass their row ids as ``query_ids``: each query's own row is then left out of
    both result lists (both search ``k + 1``), since finding a vector itself is trivial and
    would inflate recall (at k=2, half of the exact list).

    Both indexes are searched through ``search_index`` (``index`` with ``search_params``), one
    batch of all queries per call, as ``RagIndex.search`` does. Latency is timed at the first
    k: a warm-up search of each, then the median of ``timed_runs`` searches, alternating.
    Returns ``queries``, ``recall_at_k`` (``str(k)`` -> recall; str keys, as JSON keeps them),
    ``ann_ms_per_query``, ``flat_ms_per_query``, ``ann_qps`` and ``flat_qps``.
    """
    if len(queries) == 0:
        raise ValueError("ann_against_exact needs at least one query")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of k >= 1 (got {list(ks)})")
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    extra = 0 if query_ids is None else 1
    # ANN and Flat searches alternate, so machine noise hits both alike.
    searches = ((index, search_params), (flat, ""))
    for searched, params in searches:  # warm-up: first touch of memory, thread start-up
        search_index(searched, queries, ks[0] + extra, params)
    times_s: tuple[list[float], list[float]] = ([], [])
    for _ in range(timed_runs):
        for (searched, params), times in zip(searches, times_s, strict=True):
            t0 = time.perf_counter()
            search_index(searched, queries, ks[0] + extra, params)
            times.append(time.perf_counter() - t0)
    recall = {}
    for k in ks:
        _, ann_ids = search_index(index, queries, k + extra, search_params)
        _, flat_ids = search_index(flat, queries, k + extra)
        if query_ids is not None:
            ann_ids, flat_ids = _without(ann_ids, query_ids, k), _without(flat_ids, query_ids, k)
        recall[str(k)] = round(_id_recall(flat_ids, ann_ids), 4)
    n = len(queries)
    ann_s, flat_s = (float(np.median(t)) for t in times_s)
    return {
        "queries": n,
        "recall_at_k": recall,
        "ann_ms_per_query": round(1000 * ann_s / n, 5),
        "flat_ms_per_query": round(1000 * flat_s / n, 5),
        "ann_qps": round(n / ann_s, 1),
        "flat_qps": round(n / flat_s, 1),
    }


def gold_recall_at_k(hits: Sequence[Sequence[Hit]], gold_doc_ids: Sequence[str]) -> float:
    """Fraction of questions whose gold document is among their retrieved hits.

    ``hits[i]`` are the hits for question ``i`` (its top-k), ``gold_doc_ids[i]`` its gold id.
    """
    if len(hits) != len(gold_doc_ids):
        raise ValueError(f"{len(hits)} hit lists but {len(gold_doc_ids)} gold doc ids")
    if not hits:
        raise ValueError("gold_recall_at_k needs at least one question")
    found = sum(
        gold in {h.doc_id for h in q_hits} for q_hits, gold in zip(hits, gold_doc_ids, strict=True)
    )
    return found / len(hits)


def gold_recall_curve(
    hits: Sequence[Sequence[Hit]], gold_doc_ids: Sequence[str], ks: Sequence[int]
) -> dict[int, float]:
    """``gold_recall_at_k`` within the top ``k`` hits, for each ``k`` in ``ks``.

    Search once at ``max(ks)`` and pass those hits; a hit list shorter than ``k`` (a smaller
    index) counts as it is.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of k >= 1 (got {list(ks)})")
    return {k: gold_recall_at_k([q[:k] for q in hits], gold_doc_ids) for k in sorted(set(ks))}


def build_index(cfg: RagConfig, out_dir: Path) -> dict:
    """Chunk, embed and index ``cfg.corpus``; write the index directory ``out_dir``.

    The chunks are embedded in this process, or as a Ray Data job when
    ``cfg.embed_with_ray_data`` says so (``auto``: at least ``cfg.ray_data_min_chunks``
    chunks); see ``embed_texts_ray_data``. The job runs on the Ray this process is connected
    to (call ``build_index`` inside ``ray_session`` to embed across a cluster); when Ray is not
    initialised, a local Ray is started for the job alone and shut down after it.

    Returns a summary: ``n_documents``, ``n_chunks``, ``dim``, ``index_factory``,
    ``search_params``, ``build_s``, ``embedded_with`` (``"ray_data"`` or ``"in_process"``),
    ``embed_workers`` (Ray Data actors, ``None`` in process), ``embed_s`` (the embedding alone;
    for Ray Data the whole job, actor start-up included, but not starting Ray),
    ``embed_texts_per_s`` and ``ann``. ``ann`` is ``None`` for an exact index (``Flat``,
    ``IDMap,Flat``) or a single chunk; otherwise it is ``ann_against_exact`` at ``k = top_k``
    (timed) and ``k = 5``, over a seeded sample of up to 200 chunk vectors as queries. The
    questions are not known when the index is built; the chunks are the nearest stand-in,
    and their self-matches are left out of both result lists. The summary is also written to
    ``meta.json``.

    Raises ``CorpusError`` for a bad corpus and ``RagIndexError`` for chunks longer than the
    embedder reads, search parameters the index lacks or an index that cannot be trained on
    this many chunks; all are checked before the (slow) embedding.
    """
    if cfg.corpus is None:
        raise ValueError("rag.corpus is not set: point it at a JSONL file of documents")
    start_s = time.perf_counter()
    docs = load_documents(cfg.corpus)
    embedder = load_embedder(cfg.embedding_model)
    tokenizer = embedder.tokenizer
    check_chunk_tokens(cfg, embedder)
    chunks = chunk_documents(docs, tokenizer, cfg.chunk_tokens, cfg.chunk_overlap_tokens)
    dim = embedder.get_embedding_dimension()
    search_params = cfg.index_search_params
    index = make_index(cfg.index_factory, dim)
    check_trainable(index, len(chunks))
    set_search_params(index, search_params)
    texts = [c.text for c in chunks]
    if _embeds_with_ray_data(cfg, len(chunks)):
        with _ray_running():
            import ray

            from tunearena.cluster.ray_cluster import ray_data_actors

            workers, use_gpu = ray_data_actors(ray.cluster_resources(), cfg.embed_workers,
                                               "rag.embed_workers")
            embed_start_s = time.perf_counter()
            vectors = embed_texts_ray_data(
                cfg.embedding_model, texts, cfg.embed_batch_size, workers, use_gpu
            )
            embed_s = time.perf_counter() - embed_start_s
        embedded_with, embed_workers = "ray_data", workers
    else:
        embed_start_s = time.perf_counter()
        vectors = embed_texts(embedder, texts, cfg.embed_batch_size)
        embed_s = time.perf_counter() - embed_start_s
        embedded_with, embed_workers = "in_process", None
    fill_index(index, vectors)
    summary: dict = {
        "n_documents": len(docs),
        "n_chunks": len(chunks),
        "dim": dim,
        "index_factory": cfg.index_factory,
        "search_params": search_params,
        "build_s": round(time.perf_counter() - start_s, 3),
        "embedded_with": embedded_with,
        "embed_workers": embed_workers,
        "embed_s": round(embed_s, 3),
        "embed_texts_per_s": round(len(texts) / embed_s, 1) if embed_s > 0 else None,
        "ann": None,
    }
    if not is_exact(index) and len(chunks) > 1:
        rng = np.random.default_rng(0)
        query_ids = np.sort(rng.choice(len(chunks), min(ANN_QUERIES, len(chunks)), replace=False))
        ks = list(dict.fromkeys((cfg.top_k, 5)))
        summary["ann"] = ann_against_exact(
            index, vectors, vectors[query_ids], ks, query_ids, search_params
        )
    meta = {
        **summary,
        "embedding_model": cfg.embedding_model,
        "chunk_tokens": cfg.chunk_tokens,
        "chunk_overlap_tokens": cfg.chunk_overlap_tokens,
        "corpus": str(cfg.corpus),
    }
    _write_index_dir(Path(out_dir), index, chunks, meta)
    return summary


def check_chunk_tokens(cfg: RagConfig, embedder: SentenceTransformer) -> None:
    """Refuse chunks longer than the embedder reads: it silently truncates longer inputs,
    which would drop the end of every chunk."""
    max_chunk_tokens = embedder.max_seq_length - embedder.tokenizer.num_special_tokens_to_add()
    if cfg.chunk_tokens > max_chunk_tokens:
        raise RagIndexError(
            f"rag.chunk_tokens ({cfg.chunk_tokens}) exceeds what {cfg.embedding_model!r} reads "
            f"({max_chunk_tokens} tokens plus special tokens); set rag.chunk_tokens to at "
            f"most {max_chunk_tokens}"
        )


def _embeds_with_ray_data(cfg: RagConfig, n_chunks: int) -> bool:
    if cfg.embed_with_ray_data == "auto":
        return n_chunks >= cfg.ray_data_min_chunks
    return cfg.embed_with_ray_data == "always"


@contextmanager
def _ray_running() -> Iterator[None]:
    """The Ray this process is connected to, else a local one for the block alone."""
    import ray

    if ray.is_initialized():
        yield
        return
    # address="local" starts a new instance rather than joining one that `ray start` left
    # running; actors' logs stay in Ray's log files, Ray Data's progress bars still show.
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@dataclass
class RagIndex:
    """A built index loaded for querying: the FAISS index, its chunks (row ``i`` is
    ``chunks[i]``), ``meta.json`` and the embedder recorded there."""

    index: faiss.Index
    chunks: list[Chunk]
    meta: dict
    embedder: SentenceTransformer

    @classmethod
    def load(cls, index_dir: str | Path, device: str | None = None) -> RagIndex:
        """Load an index directory written by ``build_index``, with its embedding model."""
        index_dir = Path(index_dir)
        missing = [n for n in (INDEX_FILE, CHUNKS_FILE, META_FILE) if not (index_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{index_dir}: not a complete RAG index (missing {', '.join(missing)}); "
                "build it with build_index"
            )
        meta = json.loads((index_dir / META_FILE).read_text(encoding="utf-8"))
        with (index_dir / CHUNKS_FILE).open(encoding="utf-8") as f:
            chunks = [Chunk(**json.loads(line)) for line in f if line.strip()]
        index = faiss.read_index(str(index_dir / INDEX_FILE))
        if not index.ntotal == len(chunks) == meta["n_chunks"]:
            raise ValueError(
                f"{index_dir}: {INDEX_FILE} holds {index.ntotal} vectors, {CHUNKS_FILE} "
                f"{len(chunks)} chunks, {META_FILE} says {meta['n_chunks']}; rebuild the index"
            )
        embedder = load_embedder(meta["embedding_model"], device=device)
        if embedder.get_embedding_dimension() != index.d:
            raise ValueError(
                f"{index_dir}: index dim {index.d} but {meta['embedding_model']!r} embeds "
                f"{embedder.get_embedding_dimension()} dims; rebuild the index"
            )
        return cls(index=index, chunks=chunks, meta=meta, embedder=embedder)

    def search(self, queries: Sequence[str], k: int, batch_size: int = 64) -> list[list[Hit]]:
        """The top-``k`` chunks for each query, best first (fewer if the index is smaller)."""
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        if not queries:
            return []
        vectors = embed_texts(self.embedder, queries, batch_size)
        scores, ids = search_index(self.index, vectors, k, self.meta.get("search_params", ""))
        return [
            [_hit(self.chunks[i], s) for s, i in zip(q_scores, q_ids, strict=True) if i >= 0]
            for q_scores, q_ids in zip(scores.tolist(), ids.tolist(), strict=True)
        ]


def _hit(chunk: Chunk, score: float) -> Hit:
    return Hit(chunk_id=chunk.chunk_id, doc_id=chunk.doc_id, text=chunk.text, score=score)


def _without(ids: np.ndarray, drop_ids: np.ndarray, k: int) -> np.ndarray:
    """Row ``i`` of ``ids`` (searched at ``k + 1``) without ``drop_ids[i]``, cut to ``k``."""
    return np.stack([row[row != d][:k] for row, d in zip(ids, drop_ids, strict=True)])


def _id_recall(exact_ids: np.ndarray, index_ids: np.ndarray) -> float:
    """Fraction of the real (non ``-1``) ids of each exact row that the index row also has."""
    found = sum(
        len(set(e[e >= 0].tolist()) & set(a[a >= 0].tolist()))
        for e, a in zip(exact_ids, index_ids, strict=True)
    )
    # Count only real results: with fewer than k vectors, exact search pads with -1.
    n_exact = int((exact_ids >= 0).sum())
    if n_exact == 0:
        raise ValueError("no exact neighbours to recall: the index holds too few vectors")
    return found / n_exact


def check_trainable(index: faiss.Index, n_vectors: int) -> None:
    """Refuse an IVF index with more lists than vectors to train it on."""
    # k-means needs at least one training point per IVF list; faiss's own error names neither
    # the factory string nor a way out.
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.nlist > n_vectors:
        raise RagIndexError(
            f"rag.index_factory: an IVF index with {ivf.nlist} lists needs at least "
            f"{ivf.nlist} vectors to train, but there are only {n_vectors} chunks; use fewer lists (faiss wants ~39 vectors "
            f"a list: IVF{max(1, n_vectors // 39)},Flat) or a Flat or HNSW32 index"
        )


def faiss_message(e: RuntimeError) -> str:
    """FAISS's own text, without the C++ function and source location."""
    # faiss prefixes its messages with the C++ function and source location.
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(e)).strip()


def _write_index_dir(out_dir: Path, index: faiss.Index, chunks: list[Chunk], meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = {name: out_dir / f".{name}.tmp" for name in (INDEX_FILE, CHUNKS_FILE, META_FILE)}
    faiss.write_index(index, str(tmp[INDEX_FILE]))
    with tmp[CHUNKS_FILE].open("w", encoding="utf-8") as f:
        for chunk in chunks:
            f.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
    tmp[META_FILE].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    # Drop the old meta.json first and rename the new one last, so meta.json never sits next
    # to files from another build: its presence marks a complete index.
    (out_dir / META_FILE).unlink(missing_ok=True)
    for name in (INDEX_FILE, CHUNKS_FILE, META_FILE):
        os.replace(tmp[name], out_dir / name)
