"""The ``synthesis:`` section: which documents, which generator, how many questions and
paraphrases, and how strict the quality gates are."""

from __future__ import annotations

from pydantic import Field

from tunearena.configbase import StrictModel

OUTPUTS = ("documents.jsonl", "paraphrases.jsonl", "qa_train.jsonl", "qa_test.jsonl")
"""The files synthesis writes, which other config sections may name as ``synthesis:<file>``."""


class GeneratorConfig(StrictModel):
    """The model that writes questions, answers them from their document, and paraphrases."""

    model: str = "smollm2-135m-instruct"
    """Without ``base_url``: anything ``model.base`` accepts (a local Hugging Face dir, a GGUF
    file, ``smollm2-135m-instruct``), loaded once by each generation actor. With ``base_url``:
    the model name the endpoint serves."""
    base_url: str | None = None
    """An OpenAI-compatible endpoint (``http://host:8000/v1``: vLLM, ``tunearena serve``, an
    API), asked with the official ``openai`` client; unset, the model runs in Ray actors."""
    api_key_env: str | None = None
    """The environment variable holding the endpoint's API key (never the key itself, which
    would be saved in the run directory); unset, no key is sent."""
    max_new_tokens: int = Field(64, ge=8, le=4096)
    """Tokens a question or a rewrite may have; a passage's rewrite needs about as many as
    the passage (raise it with ``passage_sentences``). Answer checks stop at 24."""
    batch_size: int = Field(16, ge=1)
    """Requests generated together by a local model (padding to the longest), or sent at
    once to an endpoint."""
    actors: int | None = Field(None, ge=1)
    """Ray Data actors, each loading the model once. Unset: one per GPU when the cluster has
    GPUs, else one per 2 CPUs; with ``base_url``, one (the endpoint does the work)."""
    timeout_s: float = Field(120.0, gt=0)
    """How long one endpoint request may take before it is retried (twice), then fails."""
    paraphrase_temperature: float = Field(0.7, ge=0.0, le=2.0)
    """Sampling temperature of the second and later paraphrases of a passage (the first is
    greedy); seeded, so a rerun writes the same text. Questions and answers are greedy."""


class SynthesisConfig(StrictModel):
    """Questions and paraphrases written from a folder of documents, then filtered.

    The run's other sections name what synthesis writes with the ``synthesis:`` prefix:
    ``synthesis:documents.jsonl`` (the corpus, ``format: text``), ``synthesis:
    paraphrases.jsonl`` (``format: text``), ``synthesis:qa_train.jsonl`` (``format:
    instruction``) and ``synthesis:qa_test.jsonl`` (a multiple-choice benchmark)."""

    documents: str
    """A folder (read recursively), a glob (``docs/**/*.md``) or a corpus JSONL; relative to
    the config file. Files read: ``.md``, ``.txt``, ``.html``, ``.pdf``, ``.jsonl``."""
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    passage_sentences: int = Field(1, ge=1, le=50)
    """Sentences per passage: one question and the rewrites are written per passage. One
    suits a small generator; a large one writes better questions from 3 to 5."""
    questions_per_passage: int = Field(1, ge=1, le=10)
    """Questions asked for per passage (the later ones sampled, seeded)."""
    paraphrases: int = Field(2, ge=0, le=20)
    """Rewrites of each document for training; knowledge is injected better with several."""
    n_choices: int = Field(4, ge=2, le=10)
    """Choices of each multiple-choice test question: the answer and ``n_choices - 1``
    distractors."""
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """Share of each document's passages whose questions become test questions."""
    answer_check: bool = True
    """Keep only questions the generator, given only their document, answers as it did
    when it wrote them."""
    match_threshold: float = Field(0.85, gt=0.0, le=1.0)
    """Fuzzy match (0 to 1) above which two answers agree, or an answer is found in its
    document."""
    duplicate_threshold: float = Field(0.9, gt=0.0, le=1.0)
    """Similarity (0 to 1) above which two questions are near duplicates."""
    seed: int = 0
    """Seeds sampling, the split and the choices' order."""
