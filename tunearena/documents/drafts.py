"""What the generator writes for each document (its *draft*), written as a Ray Data job and
cached per document, so an interrupted synthesis regenerates no document it had finished."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from tunearena.documents.config import SynthesisConfig
from tunearena.documents.generator import EndpointGenerator, Generator, LocalGenerator
from tunearena.documents.prompts import (
    PROMPT_VERSION,
    answer_chat,
    clean_answer,
    clean_paraphrase,
    paraphrase_chat,
    parse_questions,
    question_chat,
    split_passages,
)
from tunearena.documents.records import Document
from tunearena.errors import UserError
from tunearena.files import write_atomic

ANSWER_TOKENS = 24
"""Tokens of a reply to the answer check: a short answer, or the start of one."""
DOCS_PER_BATCH = 4
"""Documents an actor drafts together: their requests share generation batches, and at most
this many documents' work is lost when the job is stopped."""


class DraftQuestion(BaseModel):
    """One question request: the passage, the raw reply, what was read from it."""

    passage: str
    reply: str
    question: str = ""
    """Empty when the reply gave no question and answer (the ``parse`` gate counts it)."""
    answer: str = ""
    check: str | None = None
    """The generator's answer to the question with only the document in context."""


class Draft(BaseModel):
    """Everything the generator wrote for one document."""

    key: str
    """The hash of the document and of every setting that shaped the draft."""
    doc_id: str
    questions: list[DraftQuestion]
    rewrites: list[list[str]]
    """One list per paraphrase: the rewrite of each passage, in the passages' order."""


def draft_key(doc: Document, cfg: SynthesisConfig) -> str:
    """Changes when the document, the generator or a setting that shapes the draft changes
    (not the gates' thresholds or the split, which are applied to the drafts afterwards)."""
    shaping = cfg.model_dump(include={"generator", "passage_sentences", "questions_per_passage",
                                      "paraphrases", "answer_check", "seed"})
    shaping["generator"].pop("actors", None)
    shaping["generator"].pop("timeout_s", None)
    blob = json.dumps([PROMPT_VERSION, doc.model_dump(), shaping], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def draft_documents(gen: Generator, docs: list[Document], cfg: SynthesisConfig) -> list[Draft]:
    """Ask ``gen`` for the questions, answer checks and paraphrases of ``docs``, all documents'
    requests of one kind together."""
    passages = {d.id: split_passages(d.text, cfg.passage_sentences) for d in docs}
    drafts = {d.id: Draft(key=draft_key(d, cfg), doc_id=d.id, questions=[], rewrites=[])
              for d in docs}
    # The first question of a passage is greedy; further ones sampled, each round its seed.
    for k in range(cfg.questions_per_passage):
        owners = [(d, p) for d in docs for p in passages[d.id]]
        replies = gen.chat([question_chat(p) for _, p in owners],
                           temperature=0.0 if k == 0 else 0.8, seed=cfg.seed + k)
        for (doc, passage), reply in zip(owners, replies, strict=True):
            pairs = parse_questions(reply)
            q, a = pairs[0] if pairs else ("", "")
            drafts[doc.id].questions.append(
                DraftQuestion(passage=passage, reply=reply, question=q, answer=a))
    if cfg.answer_check:
        text = {d.id: d.text for d in docs}
        asked = [(d.doc_id, dq) for d in drafts.values() for dq in d.questions if dq.question]
        replies = gen.chat([answer_chat(text[doc_id], dq.question) for doc_id, dq in asked],
                           max_tokens=ANSWER_TOKENS)
        for (_, dq), reply in zip(asked, replies, strict=True):
            dq.check = clean_answer(reply)
    for r in range(cfg.paraphrases):
        owners = [(d, p) for d in docs for p in passages[d.id]]
        temperature = 0.0 if r == 0 else cfg.generator.paraphrase_temperature
        replies = gen.chat([paraphrase_chat(p) for _, p in owners], temperature=temperature,
                           seed=cfg.seed + 1000 + r)
        for doc in docs:
            drafts[doc.id].rewrites.append([])
        for (doc, _), reply in zip(owners, replies, strict=True):
            drafts[doc.id].rewrites[-1].append(clean_paraphrase(reply))
    return list(drafts.values())


def make_generator(cfg: SynthesisConfig, model_dir: str | None, device: str = "cpu") -> Generator:
    """The endpoint generator when ``base_url`` is set, else the local model at ``model_dir``."""
    if cfg.generator.base_url:
        return EndpointGenerator(cfg.generator)
    assert model_dir is not None, "a local generator needs its model dir resolved"
    return LocalGenerator(model_dir, cfg.generator, device)


class _DraftActor:
    """A Ray Data actor: loads the generator once, then drafts batches of documents."""

    def __init__(self, cfg_json: str, model_dir: str | None, device: str, threads: int | None):
        if threads is not None:
            import torch

            torch.set_num_threads(threads)  # this actor's share of the node's CPUs
        self.cfg = SynthesisConfig.model_validate_json(cfg_json)
        self.gen = make_generator(self.cfg, model_dir, device)

    def __call__(self, batch: dict) -> dict:
        docs = [Document.model_validate_json(d) for d in batch["doc"]]
        drafts = draft_documents(self.gen, docs, self.cfg)
        return {"draft": [d.model_dump_json() for d in drafts]}


def cache_path(cache_dir: Path, doc_id: str) -> Path:
    """A document's draft file: named by a hash of its id, which may hold any character."""
    return cache_dir / f"{hashlib.sha256(doc_id.encode()).hexdigest()[:24]}.json"


def cached_draft(cache_dir: Path, doc: Document, cfg: SynthesisConfig) -> Draft | None:
    """The document's cached draft when it was written for this document and these settings."""
    path = cache_path(cache_dir, doc.id)
    if not path.exists():
        return None
    try:
        draft = Draft.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        return None  # a file from an older version: drafted again
    return draft if draft.key == draft_key(doc, cfg) and draft.doc_id == doc.id else None


def _user_error(error: BaseException) -> UserError | None:
    """The user's mistake (a ``UserError``) that a Ray task error wraps, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None


def run_drafts(todo: list[Document], cfg: SynthesisConfig, model_dir: str | None,
               cache_dir: Path, on_done: Callable[[Draft], None]) -> None:
    """Draft ``todo`` as a Ray Data job on the running Ray, writing each draft to
    ``cache_dir`` as it arrives (the driver writes, so no shared storage is needed).

    Actors: with an endpoint, one; else one per GPU (each holding it) or per 2 CPUs, or
    ``generator.actors``.
    """
    import ray
    import ray.data

    from tunearena.cluster.ray_cluster import ray_data_actors

    if cfg.generator.base_url:
        actors, use_gpu = 1, False
    else:
        actors, use_gpu = ray_data_actors(ray.cluster_resources(), cfg.generator.actors,
                                          "synthesis.generator.actors")
    actors = min(actors, -(-len(todo) // DOCS_PER_BATCH))
    num_cpus = None if use_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // actors)
    rows = [{"doc": d.model_dump_json()} for d in todo]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // DOCS_PER_BATCH))
    drafted = ds.map_batches(
        _DraftActor,
        fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(), "model_dir": model_dir,
                               "device": "cuda" if use_gpu else "cpu", "threads": num_cpus},
        batch_size=DOCS_PER_BATCH,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus,
        num_gpus=1 if use_gpu else None,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        # No prefetching: a batch held back would reach the cache only with the next one,
        # and a stop in between would lose documents already drafted.
        for batch in drafted.iter_batches(batch_size=None, batch_format="numpy",
                                          prefetch_batches=0):
            for text in batch["draft"]:
                draft = Draft.model_validate_json(str(text))
                write_atomic(cache_path(cache_dir, draft.doc_id), draft.model_dump_json() + "\n")
                on_done(draft)
    except Exception as e:
        if (mistake := _user_error(e)) is not None:
            raise mistake from None
        raise
