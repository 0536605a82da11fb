"""RAG-aware fine-tuning (RAFT, Zhang et al. 2024): instruction records whose prompts carry
passages retrieved from the run's own index, so the model learns to read retrieved context.

A training prompt is rendered as a ``+rag`` arm's question is scored: ``format_prompt(question,
passages)``, the passages best first by cosine similarity to the question (the order retrieval
returns them in), ``rag.top_k`` of them by default. For each record:

- the question is read back from its prompt, which must be a bare ``format_prompt(question)``
  (``Question: ...\\nAnswer:``, as the demo's ``qa_train.jsonl`` is written);
- its gold document is its ``doc_id``; without one, the document of the top chunk retrieved
  for question and answer together (the answer's words are in the document the QA was written
  from), counted as ``inferred_gold``;
- the gold passage is the gold document's chunk nearest question and answer (in a document of
  several chunks, the one that holds the answer);
- with probability ``p_gold`` (a seeded draw per record) the prompt holds the gold passage and
  the ``distractors`` best chunks retrieved for the question outside the gold document (hard
  distractors: relevant-looking but wrong); otherwise ``distractors + 1`` of them. Every prompt
  has ``distractors + 1`` passages, so their count says nothing of whether the gold is there.

The response is unchanged, and so are a record's other keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunearena.errors import UserError
from tunearena.evaluation.prompt import format_prompt
from tunearena.files import iter_jsonl, write_atomic

if TYPE_CHECKING:
    from tunearena.rag.index import RagIndex
    from tunearena.training.config import RagContextConfig, Stage

EMBED_BATCH_SIZE = 64  # texts per forward pass, as RagIndex.search embeds queries

# A bare question as format_prompt writes it; "\nAnswer:" inside would be a few-shot prompt.
_BARE_QUESTION = re.compile(r"^Question: (?P<question>(?:(?!\nAnswer:).)+)\nAnswer:$", re.DOTALL)


class RagContextError(UserError, ValueError):
    """Retrieved context that cannot be added: the message names the stage, file and line or
    key, and the fix."""


@dataclass(frozen=True)
class RagContextCounts:
    """What adding context did to one file's records (for ``results.json``)."""

    records: int
    with_gold: int
    """Records whose prompt holds the gold passage."""
    gold_rate: float
    """``with_gold / records``: near ``p_gold``."""
    mean_passages: float
    inferred_gold: int
    """Records without a ``doc_id``, whose gold document retrieval found."""


def passages_per_prompt(cfg: RagContextConfig, top_k: int) -> int:
    """Passages in every prompt: ``distractors + 1``, ``top_k`` when ``distractors`` is unset."""
    return (top_k - 1 if cfg.distractors is None else cfg.distractors) + 1


def check_rag_context_stage(stage: str, datasets: Sequence[tuple[Path, str]], rag_enabled: bool,
                            corpus: Path | None) -> None:
    """Refuse, before any worker starts, a ``rag_context`` stage the run cannot serve: no
    ``rag.corpus`` to index, RAG switched off, or a dataset (``(path, format)``) that is not
    ``instruction``."""
    where = f"stage {stage!r}: rag_context puts passages from the run's RAG index into prompts"
    if corpus is None:
        raise RagContextError(f"{where}, but rag.corpus is not set; set it to the JSONL of "
                              "documents the training records were written from")
    if not rag_enabled:
        raise RagContextError(f"{where}, but rag.enabled is false; set it to true or remove "
                              "rag_context")
    other = [f"{path} ({fmt})" for path, fmt in datasets if fmt != "instruction"]
    if other:
        raise RagContextError(f"{where} of format 'instruction' only; not {', '.join(other)}")


def load_stage_index(index_dir: Path, stage: str) -> RagIndex:
    """The run's built index, or ``RagContextError`` naming ``index_dir`` when there is none."""
    from tunearena.rag.index import RagIndex

    try:
        return RagIndex.load(index_dir)
    except FileNotFoundError as e:
        raise RagContextError(
            f"stage {stage!r}: rag_context needs the run's RAG index, but {index_dir} holds none "
            f"({e}); the index must be built from rag.corpus before a rag_context stage's data "
            "is prepared"
        ) from None


def rag_context_file(path: Path, out_path: Path, index: RagIndex, cfg: RagContextConfig,
                     top_k: int) -> RagContextCounts:
    """``add_rag_context`` over the instruction records of ``path``, written to ``out_path``."""
    rows = list(iter_jsonl(path, RagContextError, "training file"))
    if not rows:
        raise RagContextError(f"{path}: no records to add retrieved passages to")
    records, counts = add_rag_context(rows, index, cfg, top_k)
    write_atomic(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return counts


def rag_context_stage(stage: Stage, index: RagIndex, top_k: int, out_dir: Path,
                      ) -> tuple[Stage, dict[str, dict[str, Any]]]:
    """``stage`` (which has ``rag_context``) with each dataset's file, and its
    ``validation_path``, rewritten by ``rag_context_file`` into ``out_dir`` as
    ``<stage>-<task>.rag.jsonl`` (``.validation.rag.jsonl``); each dataset keeps its task
    name, so the prepared files, and a later stage's replay of them, are named as before.
    Also returns, per task, the record ``results.json`` keeps: the settings and the counts
    (the validation file's under ``validation_file``)."""
    cfg = stage.rag_context
    assert cfg is not None, f"stage {stage.name} has no rag_context"
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets, records = [], {}
    for ds in stage.training.datasets:
        out = out_dir / f"{stage.name}-{ds.task}.rag.jsonl"
        counts = rag_context_file(ds.path, out, index, cfg, top_k)
        validation_out, validation = None, None
        if ds.validation_path is not None:
            validation_out = out_dir / f"{stage.name}-{ds.task}.validation.rag.jsonl"
            validation = rag_context_file(ds.validation_path, validation_out, index, cfg, top_k)
        datasets.append(ds.model_copy(update={"path": out, "validation_path": validation_out,
                                              "name": ds.task}))
        records[ds.task] = {**cfg.model_dump(mode="json"), **dataclasses.asdict(counts),
                            "validation_file": validation and dataclasses.asdict(validation)}
    training = stage.training.model_copy(update={"datasets": datasets})
    return dataclasses.replace(stage, training=training), records


def rag_context_line(stage: str, task: str, record: dict[str, Any]) -> str:
    """What adding context did to one task's file, for the console."""
    line = (f"{stage}/{task}: rag_context put the gold passage in {record['gold_rate']:.1%} "
            f"of {record['records']} prompts (p_gold {record['p_gold']:g}), "
            f"{record['mean_passages']:g} passages each")
    if record["inferred_gold"]:
        line += (f"; the gold document of {record['inferred_gold']} records (no doc_id) is the "
                 "one retrieval found for question and answer")
    validation = record.get("validation_file")
    if validation:
        line += (f"; validation file: gold passage in {validation['gold_rate']:.1%} of "
                 f"{validation['records']}")
    return line


def add_rag_context(rows: Iterable[tuple[str, dict]], index: RagIndex, cfg: RagContextConfig,
                    top_k: int) -> tuple[list[dict], RagContextCounts]:
    """Each ``(where, record)``'s record with its prompt re-rendered with retrieved passages,
    as the module docstring lays out; ``where`` (``path:LINE``) names a bad record."""
    from tunearena.rag.embed import embed_texts
    from tunearena.rag.index import search_index

    rows = list(rows)
    if not rows:
        raise ValueError("add_rag_context needs at least one record")
    chunks = index.chunks
    rows_of_doc: dict[str, list[int]] = {}
    for row, chunk in enumerate(chunks):
        rows_of_doc.setdefault(chunk.doc_id, []).append(row)
    qas = [_question_answer(where, record) for where, record in rows]
    gold = [_named_gold(where, record, rows_of_doc, index) for where, record in rows]
    embedder, params = index.embedder, index.meta.get("search_params", "")
    q_vecs = embed_texts(embedder, [q for q, _ in qas], EMBED_BATCH_SIZE)
    qa_vecs = embed_texts(embedder, [f"{q} {a}" for q, a in qas], EMBED_BATCH_SIZE)
    unnamed = [i for i, g in enumerate(gold) if g is None]
    if unnamed:
        _, top = search_index(index.index, qa_vecs[unnamed], 1, params)
        for i, row in zip(unnamed, top[:, 0].tolist(), strict=True):
            gold[i] = chunks[row].doc_id
    gold_docs = [g for g in gold if g is not None]
    # The gold chunks' vectors, embedded again from their texts: this gives what the index
    # holds for any index type (an IVF or PQ index cannot hand its vectors back).
    gold_rows = sorted({row for g in gold_docs for row in rows_of_doc[g]})
    gold_vecs = dict(zip(gold_rows, embed_texts(embedder, [chunks[r].text for r in gold_rows],
                                                EMBED_BATCH_SIZE), strict=True))
    n_passages = passages_per_prompt(cfg, top_k)
    # Deep enough that the best n_passages outside the gold document survive dropping its
    # chunks from the hits.
    depth = min(index.index.ntotal, n_passages + max(len(rows_of_doc[g]) for g in gold_docs))
    scores, ids = search_index(index.index, q_vecs, depth, params)
    rng = random.Random(cfg.seed)
    out, with_gold = [], 0
    for i, ((where, record), (question, _), doc) in enumerate(zip(rows, qas, gold_docs,
                                                                     strict=True)):
        with_this = rng.random() < cfg.p_gold  # drawn for every record: draws stay in step
        outside = [(s, r) for s, r in zip(scores[i].tolist(), ids[i].tolist(), strict=True)
                   if r >= 0 and chunks[r].doc_id != doc]
        wanted = n_passages - with_this
        if len(outside) < wanted:
            raise RagContextError(
                f"{where}: {wanted} passages from documents other than {doc!r} wanted, but "
                f"retrieval found {len(outside)}; lower rag_context.distractors or add "
                "documents to rag.corpus")
        picked = outside[:wanted]
        if with_this:
            best = max(rows_of_doc[doc], key=lambda r: float(qa_vecs[i] @ gold_vecs[r]))
            picked.append((float(q_vecs[i] @ gold_vecs[best]), best))
            with_gold += 1
        # Best first, as scoring's passages come; the gold passage sits where its similarity
        # to the question puts it.
        picked.sort(key=lambda hit: -hit[0])
        out.append({**record, "prompt": format_prompt(question, [chunks[r].text for _, r in picked])})
    counts = RagContextCounts(records=len(out), with_gold=with_gold,
                              gold_rate=with_gold / len(out), mean_passages=float(n_passages),
                              inferred_gold=len(unnamed))
    return out, counts


def _question_answer(where: str, record: dict) -> tuple[str, str]:
    prompt, response = record.get("prompt"), record.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise RagContextError(f"{where}: rag_context needs an instruction record, with string "
                              "'prompt' and 'response'")
    match = _BARE_QUESTION.match(prompt.strip())
    if match is None:
        raise RagContextError(
            f"{where}: rag_context re-renders the prompt with passages, so it must be a bare "
            f"question as evaluation writes one ('Question: ...\\nAnswer:'); got {prompt[:80]!r}")
    return match["question"].strip(), response.strip()


def _named_gold(where: str, record: dict, rows_of_doc: dict[str, list[int]],
                index: RagIndex) -> str | None:
    doc_id = record.get("doc_id")
    if doc_id is None or (isinstance(doc_id, str) and doc_id in rows_of_doc):
        return doc_id
    hint = difflib.get_close_matches(str(doc_id), list(rows_of_doc), n=1)
    raise RagContextError(
        f"{where}: doc_id {doc_id!r} is not a document of the index's corpus "
        f"({index.meta.get('corpus', 'rag.corpus')})"
        + (f"; did you mean {hint[0]!r}?" if hint else "")
        + "; set it to the id of the record's source document, or leave it out for retrieval "
        "to find it")
