"""Retrieval: chunk -> embed (sentence-transformers) -> FAISS index -> retrieve -> prompt."""
