"""Synthesis end to end: ingest the documents, draft every document not drafted yet (a Ray
Data job), put the drafts through the quality gates, split, and write the run's files.

What it writes into the synthesis directory:

- ``documents.jsonl``: the corpus (``rag.corpus``, and ``format: text`` for training);
- ``paraphrases.jsonl``: rewrites of each document (``format: text``);
- ``qa_train.jsonl``: training questions (``format: instruction``);
- ``qa_test.jsonl``: the multiple-choice test questions (a benchmark);
- ``synthesis.json``: the ``SynthesisSummary``, gate counts included;
- ``drafts/``: each document's draft, so a stopped synthesis continues where it stopped.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from tunearena.documents import gates, split
from tunearena.documents.config import SynthesisConfig
from tunearena.documents.drafts import Draft, cached_draft, run_drafts
from tunearena.documents.ingest import Ingested, write_documents
from tunearena.documents.prompts import split_passages
from tunearena.documents.records import (
    Document,
    DocumentsError,
    GateCount,
    Paraphrase,
    QACandidate,
    Skipped,
)
from tunearena.files import write_atomic

SAMPLES = 10
"""Test questions the summary shows with their source passages."""
SMALL_TEST = 30
"""Fewer test questions than this, or documents than ``FEW_DOCUMENTS``, earn a warning."""
FEW_DOCUMENTS = 10


class SynthesisSummary(BaseModel):
    """What synthesis read, wrote and filtered; the report's Data section."""

    documents: int
    skipped: list[Skipped] = Field(default_factory=list)
    drafted: int = 0
    """Documents the generator drafted in this attempt."""
    reused: int = 0
    """Documents whose draft an earlier attempt had written (not generated again)."""
    generator: str
    gates: list[GateCount]
    train_questions: int
    test_questions: int
    test_documents: int
    """Documents the test questions are about."""
    paraphrases: int
    samples: list[dict] = Field(default_factory=list)
    """Test questions with their answer and the passage they were written from."""
    warnings: list[str] = Field(default_factory=list)


def _jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _parsed(drafts: list[Draft]) -> tuple[list[QACandidate], list[str], GateCount]:
    """The drafts' questions that parsed, with the generator's check answers aligned."""
    cands, checks, dropped = [], [], []
    seen = 0
    for draft in drafts:
        for q in draft.questions:
            seen += 1
            if not q.question:
                dropped.append(q.reply.strip()[:200])
                continue
            cands.append(QACandidate(doc_id=draft.doc_id, passage=q.passage,
                                     question=q.question, answer=q.answer))
            checks.append(q.check or "")
    return cands, checks, GateCount(
        gate="parse", what="The generator's reply holds a question and an answer.",
        seen=seen, kept=len(cands), dropped_examples=dropped[:3])


def _paraphrases(drafts: list[Draft], documents: dict[str, Document],
                 cfg: SynthesisConfig) -> tuple[list[Paraphrase], list[GateCount]]:
    """Each document's rewrites: every passage's rewrite that keeps its facts, the passage
    itself where it did not; then those that differ from the document and each other."""
    passage_paras: list[Paraphrase] = []
    passage_docs: list[Document] = []
    assembled: list[tuple[str, list[int]]] = []
    for draft in drafts:
        doc = documents[draft.doc_id]
        passages = split_passages(doc.text, cfg.passage_sentences)
        for rewrite in draft.rewrites:
            slots = []
            for i, (passage, text) in enumerate(zip(passages, rewrite, strict=False)):
                pid = f"{doc.id}#{i}"
                slots.append(len(passage_paras))
                passage_paras.append(Paraphrase(doc_id=pid, text=text))
                passage_docs.append(Document(id=pid, title=doc.title, text=passage))
            assembled.append((doc.id, slots))
    faithful, count = gates.paraphrase_faithful(passage_paras, passage_docs)
    kept = {id(p) for p in faithful}
    paras = []
    for doc_id, slots in assembled:
        parts = [passage_paras[s].text if id(passage_paras[s]) in kept else passage_docs[s].text
                 for s in slots]
        paras.append(Paraphrase(doc_id=doc_id, text=" ".join(parts)))
    distinct, dup_count = gates.deduplicate_paraphrases(paras, list(documents.values()),
                                                        cfg.duplicate_threshold)
    return distinct, [count, dup_count]


def _samples(test: list[QACandidate], seed: int) -> list[dict]:
    picked = random.Random(seed).sample(test, min(SAMPLES, len(test)))
    return [{"doc_id": c.doc_id, "question": c.question, "answer": c.answer,
             "distractors": c.distractors, "passage": c.passage} for c in picked]


def _warnings(test: list[QACandidate]) -> list[str]:
    docs = len({c.doc_id for c in test})
    found = []
    if docs < FEW_DOCUMENTS:
        found.append(f"the synthesised test questions come from {docs} document"
                     f"{'' if docs == 1 else 's'}: the intervals resample documents, and with "
                     f"fewer than {FEW_DOCUMENTS} they are not to be trusted; add documents")
    if len(test) < SMALL_TEST:
        found.append(f"only {len(test)} synthesised test questions survived the gates: a "
                     f"difference of one question moves a score by {100 / max(1, len(test)):.0f}"
                     f" points; add documents or use a larger generator")
    return found


def filter_drafts(drafts: list[Draft], documents: list[Document], cfg: SynthesisConfig,
                  format_prompt: Callable[[str], str], answer_delimiter: str,
                  ) -> tuple[dict[str, list[dict]], list[GateCount], list[QACandidate]]:
    """The drafts through every gate and the split: the rows of each output file, the gates'
    counts in order, and the test questions."""
    by_id = {d.id: d for d in documents}
    cands, checks, parse_count = _parsed(drafts)
    counts = [parse_count]
    kept, count = gates.supported(cands, documents, cfg.match_threshold)
    counts.append(count)
    if cfg.answer_check:
        check_of = {id(c): a for c, a in zip(cands, checks, strict=True)}
        kept, count = gates.answer_check(kept, [check_of[id(c)] for c in kept],
                                         cfg.match_threshold)
        counts.append(count)
    kept, count = gates.deduplicate(kept, cfg.duplicate_threshold)
    counts.append(count)
    train, test, count = split.split_questions(kept, cfg.test_fraction, cfg.seed,
                                               cfg.duplicate_threshold)
    counts.append(count)
    test, count = gates.choose_distractors(test, documents, cfg.n_choices, cfg.seed)
    counts.append(count)
    paras, para_counts = _paraphrases(drafts, by_id, cfg)
    paras, count = split.leak_free_paraphrases(paras, test)
    counts += [*para_counts, count]
    rows = {
        "paraphrases.jsonl": [{"text": p.text, "doc_id": p.doc_id} for p in paras],
        "qa_train.jsonl": split.train_records(train, format_prompt, answer_delimiter),
        "qa_test.jsonl": split.mc_records(test, cfg.n_choices, cfg.seed),
    }
    return rows, counts, test


def synthesize(cfg: SynthesisConfig, ingested: Ingested, out_dir: Path, model_dir: str | None,
               format_prompt: Callable[[str], str], answer_delimiter: str,
               say: Callable[[str], None] = print) -> SynthesisSummary:
    """Draft what is not drafted yet (Ray must be running), filter, split and write the
    files into ``out_dir``. Raises ``DocumentsError`` when no test question survives, after
    writing the summary, so the counts say which gate emptied it."""
    documents = ingested.documents
    out_dir.mkdir(parents=True, exist_ok=True)
    write_documents(documents, out_dir / "documents.jsonl")
    cache_dir = out_dir / "drafts"
    drafts: dict[str, Draft] = {}
    for doc in documents:
        if (draft := cached_draft(cache_dir, doc, cfg)) is not None:
            drafts[doc.id] = draft
    reused = len(drafts)
    todo = [d for d in documents if d.id not in drafts]
    say(f"synthesis: {len(documents)} documents, {reused} drafted by an earlier attempt, "
        f"{len(todo)} to draft with {cfg.generator.model}")
    if todo:
        run_drafts(todo, cfg, model_dir, cache_dir, lambda d: drafts.__setitem__(d.doc_id, d))
    ordered = [drafts[d.id] for d in documents]
    rows, counts, test = filter_drafts(ordered, documents, cfg, format_prompt, answer_delimiter)
    summary = SynthesisSummary(
        documents=len(documents), skipped=ingested.skipped, drafted=len(todo), reused=reused,
        generator=cfg.generator.model + (f" at {cfg.generator.base_url}"
                                         if cfg.generator.base_url else ""),
        gates=counts, train_questions=len(rows["qa_train.jsonl"]),
        test_questions=len(rows["qa_test.jsonl"]), test_documents=len({c.doc_id for c in test}),
        paraphrases=len(rows["paraphrases.jsonl"]), samples=_samples(test, cfg.seed),
        warnings=_warnings(test))
    write_atomic(out_dir / "synthesis.json", summary.model_dump_json(indent=1) + "\n")
    say("gates: " + ", ".join(f"{c.gate} {c.kept}/{c.seen}" for c in counts))
    if not test:
        lines = "; ".join(f"{c.gate}: {c.kept} of {c.seen} kept" for c in counts)
        raise DocumentsError(
            f"synthesis left no test question ({lines}); the drafts are kept in "
            f"{cache_dir}. The generator's replies are unusable or unsupported by the "
            f"documents: use a larger generator (synthesis.generator), or more documents")
    for name in ("paraphrases.jsonl", "qa_train.jsonl", "qa_test.jsonl"):
        _jsonl(out_dir / name, rows[name])
    say(f"wrote {summary.train_questions} training questions, {summary.paraphrases} "
        f"paraphrases and {summary.test_questions} test questions about "
        f"{summary.test_documents} documents into {out_dir}")
    for line in summary.warnings:
        say(f"warning: {line}")
    return summary
