"""The values that pass between ingestion, synthesis, the gates and the split."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tunearena.errors import UserError


class DocumentsError(UserError):
    """A folder, file, generator or synthesis setting that cannot give documents or questions."""


class Document(BaseModel):
    """One document of the corpus, as ``rag.corpus`` and the ``text`` training format read it."""

    id: str
    """Unique within the corpus: the file's path relative to the folder, without suffix."""
    title: str
    text: str
    source: str = ""
    """Where the text came from: the file's path relative to the folder (or the glob's root)."""


class Skipped(BaseModel):
    """A file ingestion could not read, and why."""

    path: str
    reason: str


class QACandidate(BaseModel):
    """A question the generator wrote about a passage of one document, before the gates."""

    doc_id: str
    passage: str
    """The sentences of the document the question was written from."""
    question: str
    answer: str
    distractors: list[str] = Field(default_factory=list)
    """Wrong answers for the multiple-choice track, once chosen."""


class Paraphrase(BaseModel):
    """A rewrite of one document in other words, keeping its facts."""

    doc_id: str
    text: str


class GateCount(BaseModel):
    """How many items one quality gate saw and let through."""

    gate: str
    """Short name, e.g. ``parse``, ``supported``, ``duplicate``, ``leak``."""
    what: str
    """What the gate checks, in a sentence a reader of the report understands."""
    seen: int
    kept: int
    dropped_examples: list[str] = Field(default_factory=list)
    """Up to three dropped items, to show what the gate catches."""
