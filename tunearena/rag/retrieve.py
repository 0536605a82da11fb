"""Retrieve the passages of every benchmark question once, so every RAG arm reads the same
contexts, and measure how often the gold document is among them."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tunearena.rag.index import RagIndex, gold_recall_curve


class Question(Protocol):
    """A benchmark question as retrieval reads it."""

    @property
    def id(self) -> str: ...
    @property
    def question(self) -> str: ...
    @property
    def doc_id(self) -> str | None: ...


@dataclass(frozen=True)
class Retrieval:
    """One benchmark's retrieval: the passages per question id, and its statistics."""

    contexts: dict[str, dict[str, list]]
    """Question id -> ``{"passages", "doc_ids", "scores"}``, best first."""
    stats: dict[str, Any]
    """``k``, ``search_ms_per_question``, ``search_ms`` (single-question searches) and, when
    every question names its gold document, ``recall_at_k`` and ``recall_curve``."""


def recall_sweep(top_k: int) -> list[int]:
    """The depths gold-document recall is measured at; the search goes to the largest, and a
    served RAG arm searches as deep, so its passages are those the arm was scored with."""
    return sorted({1, 2, 3, 5, 10, top_k})


def retrieve_contexts(index_dir: Path, benchmarks: Mapping[str, Sequence[Question]], top_k: int,
                      timed_questions: int) -> dict[str, Retrieval]:
    """Search the index once per question, to the recall sweep's largest k; the top ``top_k``
    become the passages, and the gold document's recall is measured at every k of the sweep.
    The first ``timed_questions`` of each benchmark are also searched alone, as a user waits."""
    sweep = recall_sweep(top_k)
    index = RagIndex.load(index_dir)
    out = {}
    for name, items in benchmarks.items():
        t0 = time.perf_counter()
        found = index.search([it.question for it in items], max(sweep))
        search_s = time.perf_counter() - t0
        hits = [h[:top_k] for h in found]
        search_ms = []
        for it in items[:timed_questions]:
            t0 = time.perf_counter()
            index.search([it.question], top_k)
            search_ms.append(1000 * (time.perf_counter() - t0))
        contexts: dict[str, dict[str, list]] = {
            it.id: {"passages": [h.text for h in hs], "doc_ids": [h.doc_id for h in hs],
                    "scores": [h.score for h in hs]}
            for it, hs in zip(items, hits, strict=True)}
        stats: dict[str, Any] = {"k": top_k,
                                 "search_ms_per_question": 1000 * search_s / len(items),
                                 "search_ms": search_ms}
        gold = [it.doc_id for it in items]
        if all(g is not None for g in gold):
            curve = gold_recall_curve(found, gold, sweep)  # type: ignore[arg-type]
            stats["recall_at_k"] = curve[top_k]
            stats["recall_curve"] = {str(kk): r for kk, r in curve.items()}
        out[name] = Retrieval(contexts, stats)
    return out


def recall_line(name: str, stats: dict[str, Any]) -> str | None:
    """The console line for one benchmark's gold-passage recall (None when not measured)."""
    if "recall_curve" not in stats:
        return None
    return (f"{name}: gold passage in the top {stats['k']} for {stats['recall_at_k']:.1%} of "
            "questions (" + ", ".join(f"top {kk} {r:.0%}" for kk, r in
                                     stats["recall_curve"].items()) + ")")


def index_line(summary: dict[str, Any]) -> str:
    """The console line for a built index (``build_index``'s summary)."""
    return (f"indexed {summary['n_chunks']} chunks of {summary['n_documents']} documents "
            f"({summary['index_factory']}, dim {summary['dim']}), embedded "
            + ("as a Ray Data job" if summary.get("embedded_with") == "ray_data"
               else "in process")
            + (f" at {summary['embed_texts_per_s']:.0f} texts/s"
               if summary.get("embed_texts_per_s") else ""))


def retrieval_results(index: dict[str, Any], stats: dict[str, dict[str, Any]],
                      effect: dict[str, dict]) -> dict[str, Any]:
    """What ``results.json`` holds of retrieval: the index's summary, and per benchmark the
    recall statistics (the single-question search times went into each RAG arm's latency)
    with ``effect``, the questions retrieval helped and hurt."""
    return {"index": index} | {
        name: {k: v for k, v in s.items() if k != "search_ms"} | effect.get(name, {})
        for name, s in stats.items()}
