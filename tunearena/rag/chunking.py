"""Token-aware chunking: sliding windows over each document's tokens, with overlap.

Windows are counted in tokens of the embedding model's tokenizer, so a chunk of
``chunk_tokens`` tokens is what the embedder actually reads. A chunk's text is cut from the
original document through the tokenizer's offset mapping, so it is an exact, readable
substring (original case, spacing and accents), not a lossy decode of token ids.

A document's title, when it has one, is prefixed to each of its chunks as ``"{title}: {body}"``:
the embedding and the passage placed into a prompt then both say which document a window of
the middle of a text comes from. The title's tokens come on top of ``chunk_tokens``. A window
boundary may fall between two sub-word pieces of one word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tunearena.rag.corpus import Document


@dataclass(frozen=True)
class Chunk:
    """One window of a document: ``chunk_id`` is ``f"{doc_id}#{n}"`` with ``n`` counted from 0;
    ``start_token`` is the window's first token in the document's token sequence."""

    chunk_id: str
    doc_id: str
    text: str
    start_token: int


def token_windows(n_tokens: int, chunk_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """``[start, end)`` token windows covering ``range(n_tokens)``.

    Consecutive windows share ``overlap_tokens`` tokens; the last window ends at ``n_tokens``
    and may be shorter. A sequence of at most ``chunk_tokens`` tokens is one window.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1 (got {chunk_tokens})")
    if not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError(
            f"overlap_tokens must be in [0, chunk_tokens) (got {overlap_tokens}, "
            f"chunk_tokens {chunk_tokens})"
        )
    stride = chunk_tokens - overlap_tokens
    windows = []
    for start in range(0, n_tokens, stride):
        end = min(start + chunk_tokens, n_tokens)
        windows.append((start, end))
        # Stop once a window reaches the end: another would hold only overlap.
        if end == n_tokens:
            break
    return windows


def chunk_documents(
    docs: Sequence[Document],
    tokenizer: PreTrainedTokenizerBase,
    chunk_tokens: int,
    overlap_tokens: int,
) -> list[Chunk]:
    """Split documents into overlapping token windows, in document order.

    ``tokenizer`` must be a fast (Rust-backed) Hugging Face tokenizer, which gives character
    offsets; special tokens are not counted. A document of at most ``chunk_tokens`` tokens
    gives one chunk.
    """
    if not docs:
        return []
    if not tokenizer.is_fast:
        raise ValueError("chunk_documents needs a fast tokenizer (for character offsets)")
    # One batched call: the Rust tokenizer handles the whole corpus in parallel.
    # verbose=False: documents are longer than the model's limit by design, no warning needed.
    encoded = tokenizer(
        [doc.text for doc in docs],
        add_special_tokens=False,
        return_offsets_mapping=True,
        verbose=False,
    )
    chunks = []
    for doc, offsets in zip(docs, encoded["offset_mapping"], strict=True):
        prefix = f"{doc.title}: " if doc.title else ""
        for n, (start, end) in enumerate(token_windows(len(offsets), chunk_tokens, overlap_tokens)):
            body = doc.text[offsets[start][0] : offsets[end - 1][1]]
            chunks.append(
                Chunk(
                    chunk_id=f"{doc.id}#{n}", doc_id=doc.id, text=prefix + body, start_token=start
                )
            )
    return chunks
