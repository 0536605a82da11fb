"""The typed ``results.json``: what ``summarise`` builds and every report renderer reads.

Every score is a fraction in [0, 1]. A benchmark row declares its scoring track (``track``)
instead of leaving the reader to guess it from the keys it holds. ``Results.to_json()`` writes
exactly the keys a run set (``exclude_unset``), so a results file loaded and written again is
unchanged; ``load_results`` upgrades older files (see ``SCHEMA_VERSION``) and turns a wrong
field into a ``ResultsError`` that names its path.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunearena.errors import UserError
from tunearena.training.estimate import TrainingEstimate
from tunearena.training.gguf import GGUFConversion
from tunearena.training.summary import (
    ExportCheck,
    ReplaySummary,
    SweepSummary,
    TrainingSummary,
)

SCHEMA_VERSION = 5
"""1 (no ``schema_version`` key): a generative benchmark's exact match, its interval and its
token F1 sat under ``acc``, ``acc_ci`` and ``acc_norm``, and the training summary also held
``tensors``; 2: they sit under ``exact_match``, ``exact_match_ci`` and ``f1``; 3: adds
``prompt_lengths`` (the model's context and the questions dropped for overflowing it), the
data report's ``over_seq_len`` counts, ``probe``, and the run's ``prompt_format`` (a file of
version 2 lacks them and loads as it is: its prompts were all plain); 4: adds each
benchmark's ``warnings`` and ``same_questions_as``, and ``cost_of_pass`` (a file of version 3
lacks them and loads as it is); 5: adds ``data``, what synthesis made of the documents (a file
of version 4 lacks it and loads as it is)."""

Interval = tuple[float, float]
"""A confidence interval ``(lo, hi)``; a two-element list in JSON."""
Track = Literal["multiple_choice", "generative"]


class _Model(BaseModel):
    """A section the report computes: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """A section other steps fill (run, latency, cost, retrieval): the known keys are typed,
    new ones are kept and shown as they are."""

    model_config = ConfigDict(extra="allow")


class Settings(_Model):
    confidence: float
    bootstrap_samples: int
    forgetting_tolerance: float
    limit: int | None = None


class ChoiceRow(_Model):
    """Multiple choice on one arm: accuracy (the choice of highest log-likelihood) and its
    length-normalised variant. In every row, ``diff_vs_base`` and ``diff_ci`` are the paired
    difference against base (None for base itself) and ``verdict`` is ``reference`` for base,
    else better than / worse than / no evidence of a difference."""

    acc: float
    acc_ci: Interval
    acc_norm: float | None = None
    diff_vs_base: float | None
    diff_ci: Interval | None
    verdict: str

    @property
    def score(self) -> float:
        return self.acc

    @property
    def score_ci(self) -> Interval:
        return self.acc_ci

    @property
    def secondary(self) -> float | None:
        return self.acc_norm


class GenerativeRow(_Model):
    """A generated answer on one arm: exact match after normalisation, and token F1."""

    exact_match: float
    exact_match_ci: Interval
    f1: float
    diff_vs_base: float | None
    diff_ci: Interval | None
    verdict: str

    @property
    def score(self) -> float:
        return self.exact_match

    @property
    def score_ci(self) -> Interval:
        return self.exact_match_ci

    @property
    def secondary(self) -> float | None:
        return self.f1


class Pair(_Model):
    """``A - B`` between two non-base arms, paired question by question."""

    diff: float
    ci: Interval
    verdict: str


def paired(pairs: dict[str, Pair], a: str, b: str) -> tuple[float, float, float] | None:
    """``a - b`` and its interval from a benchmark's ``pairs``, which keep each pair one way
    round (the later arm first); None when the two were not paired."""
    if f"{a} - {b}" in pairs:
        pair = pairs[f"{a} - {b}"]
        return pair.diff, *pair.ci
    if f"{b} - {a}" in pairs:
        pair = pairs[f"{b} - {a}"]
        # 0.0 - x rather than -x: no difference of zero comes back as -0.0 ("-0.0 points").
        return 0.0 - pair.diff, 0.0 - pair.ci[1], 0.0 - pair.ci[0]
    return None


class StatWarning(_Model):
    """A reason not to read a benchmark's intervals as they stand.

    ``few_documents``: the questions come from fewer than ``MIN_CLUSTERS`` source documents
    (or, when none shares a document, there are fewer questions than that), too few for a
    bootstrap interval to be trusted; every verdict of the benchmark that claims a difference
    then carries ``(too few documents to trust)`` (or ``questions``). ``wide_interval``: the
    interval against base of each arm in ``arms`` reaches past both ``-tolerance`` and
    ``+tolerance``, so these questions cannot tell a gain of the tolerance from a loss of it."""

    kind: Literal["few_documents", "wide_interval"]
    message: str
    arms: list[str] = []
    """``wide_interval``: the arms whose interval against base is that wide."""


class ChoiceBenchmark(_Model):
    """A multiple-choice benchmark: a row per arm, and ``pairs`` between non-base arms.
    CIs resample source documents (``clustered_by``) when questions share one."""

    kind: Literal["domain", "general"]
    track: Literal["multiple_choice"]
    metrics: tuple[Literal["acc"], Literal["acc_norm"]] = ("acc", "acc_norm")
    n: int
    clustered_by: Literal["doc_id"] | None = None
    n_clusters: int | None = None
    arms: dict[str, ChoiceRow]
    pairs: dict[str, Pair] = {}
    warnings: list[StatWarning] = []
    same_questions_as: str | None = None
    """The first benchmark scoring the same question file (on the other track), if any: its
    questions are counted once."""


class GenerativeBenchmark(_Model):
    """A generative benchmark, as ``ChoiceBenchmark`` with its own rows."""

    kind: Literal["domain", "general"]
    track: Literal["generative"]
    metrics: tuple[Literal["exact_match"], Literal["f1"]] = ("exact_match", "f1")
    n: int
    clustered_by: Literal["doc_id"] | None = None
    n_clusters: int | None = None
    arms: dict[str, GenerativeRow]
    pairs: dict[str, Pair] = {}
    warnings: list[StatWarning] = []
    same_questions_as: str | None = None
    """The first benchmark scoring the same question file (on the other track), if any: its
    questions are counted once."""


Benchmark = Annotated[ChoiceBenchmark | GenerativeBenchmark, Field(discriminator="track")]
PRIMARY_METRIC: dict[str, str] = {"multiple_choice": "acc", "generative": "exact_match"}
"""A per-question sample's primary score key, per track."""


class BitsRow(_Model):
    """Language modelling on one arm: bits per byte (fewer is better) and the change
    against base."""

    bits_per_byte: float
    ci: Interval
    diff_vs_base: float | None
    diff_ci: Interval | None
    verdict: str


class LanguageBenchmark(_Model):
    kind: Literal["domain", "general"]
    metric: Literal["bits_per_byte"]
    n: int
    bytes: int
    arms: dict[str, BitsRow]
    warnings: list[StatWarning] = []


class ForgettingCheck(_Model):
    arm: str
    benchmark: str
    change: float
    ci: Interval
    status: Literal["forgetting", "none", "inconclusive"]
    sentence: str


class Forgetting(_Model):
    tolerance: float
    summary: str
    checks: list[ForgettingCheck]


class Evidence(_Model):
    """One interval the decision rule read."""

    comparison: str
    benchmark: str
    diff: float
    ci: Interval
    position: Literal["above zero", "below zero", "spans zero"]
    decisive: bool = False


Verdict = Literal["fine-tune", "RAG", "both", "neither"]


class Figure(_Model):
    """One number a summary bullet states, and the table it comes from, so a reader (or a
    test) can find it again: ``source`` names the table, ``arm``, ``against`` and
    ``benchmark`` the row. ``points`` are percentage points (a fraction in results), ``ms``
    milliseconds, ``usd`` dollars, ``tokens`` prompt tokens."""

    source: Literal["score", "pair", "forgetting", "latency", "cost_of_pass", "prompt_tokens",
                    "training_cost"]
    arm: str
    against: str | None = None
    benchmark: str | None = None
    value: float
    ci: Interval | None = None
    unit: Literal["points", "ms", "usd", "tokens"] = "points"


class SummaryBullet(_Model):
    """One bullet of the report's first screen, with every number it states."""

    kind: Literal["gain", "general", "cost", "runner_up", "disagreement"]
    text: str
    figures: list[Figure] = []


class Decision(_Model):
    verdict: Verdict
    sentence: str
    rule: str
    confidence: str
    rule_in_full: list[str] = []
    evidence: list[Evidence] = []
    chosen: str | None = None
    """The arm the verdict puts forward (ft+rag, ft, base+rag; None for neither)."""
    reasons: list[str] = []
    """``rule`` as short sentences, one per condition it checked."""
    summary: list[SummaryBullet] = []
    """The first screen's bullets: gain, general cost, money and latency, the runner-up and
    any benchmark that disagrees with the verdict."""


with warnings.catch_warnings():
    # TrainingSummary computes median_step_s and p90_step_s from step_time_s, which results
    # leave out; here they are stored fields. The parent's properties still answer attribute
    # reads, so the stored values are read through to_json() only.
    warnings.simplefilter("ignore", UserWarning)

    class TrainingResult(TrainingSummary):
        """The selected stage's training summary, without its step times and data report,
        with the stage's name and its median and 90th-percentile step time."""

        stage: str
        median_step_s: float  # type: ignore[assignment]
        p90_step_s: float  # type: ignore[assignment]


class RagContextCounts(_Model):
    """What adding retrieved passages did to one file's records."""

    records: int
    with_gold: int
    """Records whose prompt holds the gold document's passage."""
    gold_rate: float
    mean_passages: float
    inferred_gold: int
    """Records without a ``doc_id``, whose gold document retrieval found."""


class RagContext(RagContextCounts):
    """A RAG-aware stage's task (``rag_context``): its settings and what they did
    (``training.rag_context.rag_context_stage``)."""

    p_gold: float
    distractors: int | None = None
    seed: int = 0
    validation_file: RagContextCounts | None = None


class TaskData(_Open):
    """The prepare step's report on one task's records."""

    task: str | None = None
    read: int | None = None
    empty_or_garbled: int | None = None
    exact_duplicates: int | None = None
    near_duplicates: int | None = None
    leaked: int | None = None
    leaked_by_benchmark: dict[str, int] = {}
    kept: int | None = None
    train: int | None = None
    validation: int | None = None
    test: int | None = None
    over_seq_len: int | None = None
    """Records longer than the stage's ``seq_len`` (unset for text that packing splits)."""
    longest_tokens: int | None = None
    dropped_over_seq_len: int | None = None
    """Of those, left out of training (``long_records: drop``)."""
    rag_context: RagContext | None = None
    """Set for a RAG-aware stage's task: the passages its prompts were given."""


class StageMix(_Model):
    target: dict[str, float] = {}
    realised: dict[str, float] = {}
    sequences: dict[str, int] = {}


class StageRecord(_Model):
    """What the report shows of one stage's training; any key may be missing or null."""

    start_from: str | None = None
    method: str | None = None
    lora_init: str | None = None
    steps: int | None = None
    planned_steps: int | None = None
    stopped_early_at: int | None = None
    train_s: float | None = None
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    val_loss_by_task: dict[str, float] | None = None
    mix: StageMix | None = None
    replay: ReplaySummary | None = None
    data: dict[str, TaskData] | None = None
    history: list[dict[str, float]] | None = None
    export_check: list[ExportCheck] | None = None
    parameters: int | None = None
    trainable_parameters: int | None = None
    peak_gpu_memory_mb: float | None = None
    peak_rss_mb: list[float] | None = None
    kind: str | None = None
    reward_accuracy: float | None = None
    reward_margin: float | None = None
    sweep: SweepSummary | None = None
    estimate: TrainingEstimate | None = None


class StageSummary(TrainingSummary):
    """A stage's whole training summary, as ``run_stage`` returns it, its data report typed."""

    data: dict[str, TaskData] = {}


class Candidate(_Model):
    stage: str
    domain_gain: float
    forgetting: float
    within_tolerance: bool


class Selection(_Model):
    """Which stage ``ft`` is, and why (``tunearena.evaluation.selection.select_stage``)."""

    selected: str
    tolerance: float | None = None
    rule: str | None = None
    candidates: list[Candidate] = []
    warning: str | None = None


class MatrixCell(_Model):
    """The ``ft@<stage>`` arm on one benchmark, and how far the stage moved it from the
    model it started from (None where that model was not scored)."""

    acc: float
    acc_ci: Interval
    diff_vs_base: float | None
    diff_ci: Interval | None
    change_vs_start: float | None = None
    change_ci: Interval | None = None


class Stages(_Model):
    order: list[str] = []
    selection: Selection | None = None
    stages: dict[str, StageSummary | StageRecord | None] = {}
    """Per stage, its whole training summary, or the part of it the report shows."""
    matrix: dict[str, dict[str, MatrixCell | None]] = {}


class ArmLatency(_Open):
    """One arm's scoring time and single-question answer time."""

    model: str | None = None
    score_s: float | None = None
    ms_per_question_scored: float | None = None
    questions_timed: int | None = None
    retrieval_p50_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    prompt_tokens: float | None = None
    prompt_tokens_added: float | None = None


class StageCost(_Model):
    device_hours: float
    usd: float


class Cost(_Open):
    device: str | None = None
    device_hours: float | None = None
    usd: float | None = None
    usd_per_device_hour: float | None = None
    per_stage: dict[str, StageCost] = {}
    estimate: StageCost | None = None
    """What every stage's training was estimated to cost before it ran (GPU runs)."""


class CostOfPassSettings(_Model):
    """The prices and volume every cost-of-pass figure is computed at."""

    queries: int
    """Answers over which one-off costs (training, the RAG index) are spread
    (``report.queries``)."""
    serving_usd_per_device_hour: float
    """The price of the device an answer is timed on (``report.serving_hour_cost_usd``)."""
    index_usd_per_device_hour: float
    """The price the RAG index's build time is charged at (``report.gpu_hour_cost_usd``)."""
    index_usd: float | None = None
    """The index build's cost (its wall time on one device), charged to the RAG arms; None
    when the run measured no build."""


class BenchmarkCostOfPass(_Model):
    """One arm on one domain benchmark: ``usd_per_correct`` is the arm's ``usd_per_answer``
    over its accuracy (None when no answer is correct: no number of attempts buys one), and
    ``usd_per_correct_ci`` the same over the accuracy's interval (its upper end None when
    the interval reaches 0)."""

    accuracy: float
    accuracy_ci: Interval
    usd_per_correct: float | None
    usd_per_correct_ci: tuple[float, float | None] | None


class ArmCostOfPass(_Model):
    """What one answer of an arm costs: its serving time at the serving price, plus its share
    of the one-off costs (training its model, building the RAG index) over ``queries``."""

    trained_stages: list[str]
    """The stages whose training the arm's model carries: its own and those it started from."""
    training_usd: float
    index_usd: float
    serving_ms: float
    serving_time_from: Literal["latency_p50_ms", "ms_per_question_scored"]
    """Which timing ``serving_ms`` is: one question answered alone at the median, else (not
    timed) the scoring wall time per question."""
    serving_usd_per_answer: float
    usd_per_answer: float
    """Serving plus ``(training_usd + index_usd) / queries``."""
    prompt_tokens_added: float | None = None
    """Prompt tokens the arm's context (retrieved passages, examples) adds per question."""
    benchmarks: dict[str, BenchmarkCostOfPass]


class CostOfPass(_Model):
    """Expected dollars per correct answer (Erol et al. 2025, arXiv 2504.13359), per arm
    that was timed and whose training cost is known, per domain benchmark."""

    settings: CostOfPassSettings
    arms: dict[str, ArmCostOfPass]


class BenchmarkRetrieval(_Open):
    """Retrieval on one benchmark's questions: top k, search time, gold-document recall,
    and the questions retrieval turned right or wrong."""

    k: int | None = None
    search_ms_per_question: float | None = None
    recall_at_k: float | None = None
    recall_curve: dict[str, float] = {}


class Probe(_Model):
    """The check that every fine-tuned stage's model differs from the base: per stage, the
    largest change of a next-token log-probability over the probe prompts."""

    prompts: int
    tolerance: float
    changes: dict[str, float]


class DroppedPrompts(_Model):
    """One benchmark's questions left out of every arm because a prompt of theirs is longer
    than the model's context."""

    questions: int
    longest_tokens: int
    arms: list[str]
    """The arms whose prompt (its context: passages, examples or none) overflowed."""


class PromptLengths(_Model):
    """Every scored prompt measured against the model's context before training."""

    max_length: int
    """The model's context in tokens, as lm-eval's ``HFLM`` reads it."""
    policy: Literal["error", "drop"]
    dropped: dict[str, DroppedPrompts] = {}

    @property
    def dropped_questions(self) -> int:
        return sum(d.questions for d in self.dropped.values())


class RunInfo(_Open):
    name: str | None = None
    run_dir: str | None = None
    base_model: str | None = None
    base_model_source: GGUFConversion | None = None
    """Set when ``base_model`` was converted from a GGUF file: the file, its hash and how."""
    prompt_format: Literal["plain", "chat_template"] = "plain"
    """How every arm's prompts (and the ``instruction`` training records) were rendered:
    ``plain`` text, or through the base model's ``chat_template`` (``model.chat_template``)."""
    config_hash: str | None = None
    code_version: str | None = None
    python: str | None = None
    seed: int | None = None


class SkippedFile(_Open):
    """A document file ingestion could not read, and why."""

    path: str
    reason: str


class GateRow(_Open):
    """One quality gate of synthesis: what it checks, how many items it saw and kept, and
    up to three it dropped."""

    gate: str
    what: str
    seen: int
    kept: int
    dropped_examples: list[str] = []


class DataSample(_Open):
    """A synthesised test question with its answer, its wrong choices and the passage of
    its document it was written from."""

    doc_id: str
    question: str
    answer: str
    distractors: list[str] = []
    passage: str


class KnownWithoutDocument(_Model):
    """The base model (no document in its prompt) on one synthesised benchmark: the
    questions it already answers right. They are flagged, not dropped: their share against
    ``chance`` says how much of the benchmark the base already knew."""

    correct: int
    questions: int
    chance: float | None
    """``1 / n_choices`` on the multiple-choice track; None when unknown or generative."""
    flagged: list[str] = []
    """The ids of the questions the base answered right."""


class Data(_Open):
    """What synthesis read, wrote and filtered (``tunearena.documents``' summary), with
    what the base model knew of its test questions."""

    documents: int
    skipped: list[SkippedFile] = []
    drafted: int = 0
    """Documents the generator drafted in the run's last synthesis attempt."""
    reused: int = 0
    """Documents whose draft an earlier attempt had written."""
    generator: str
    gates: list[GateRow] = []
    train_questions: int
    test_questions: int
    test_documents: int
    """Documents the test questions are about."""
    paraphrases: int
    samples: list[DataSample] = []
    warnings: list[str] = []
    """Reasons not to trust the synthesised test set: too few questions or documents."""
    n_choices: int | None = None
    """Choices of each synthesised multiple-choice question."""
    benchmarks: list[str] = []
    """The evaluation benchmarks that score the synthesised test questions."""
    known_without_document: dict[str, KnownWithoutDocument] = {}
    """Per benchmark of ``benchmarks`` the base arm scored (``summarise`` fills it)."""


class Results(_Model):
    """The whole ``results.json``."""

    schema_version: int = SCHEMA_VERSION
    settings: Settings
    arms: list[str]
    benchmarks: dict[str, Benchmark]
    language_modelling: dict[str, LanguageBenchmark] = {}
    forgetting: Forgetting | None = None
    headline: list[str] = []
    decision: Decision | None = None
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    run: RunInfo | None = None
    latency: dict[str, ArmLatency] | None = None
    training: TrainingResult | None = None
    cost: Cost | None = None
    stages: Stages | None = None
    retrieval: dict[str, BenchmarkRetrieval | float | int | str | None] | None = None
    probe: Probe | None = None


    prompt_lengths: PromptLengths | None = None
    cost_of_pass: CostOfPass | None = None
    data: Data | None = None
    """Set when the run synthesised its questions from documents."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``results.json`` holds: the keys that were set, the schema
        version always."""
        return {"schema_version": self.schema_version,
                **self.model_dump(mode="json", exclude_unset=True)}

    @property
    def selected_stage(self) -> str | None:
        selection = self.stages.selection if self.stages else None
        return selection.selected if selection else None

    @property
    def rag_aware_stages(self) -> dict[str, RagContext]:
        """The stages trained with retrieved passages (``rag_context``), in stage order, each
        with its tasks' counts pooled (the first task's settings: one stage has one)."""
        out: dict[str, RagContext] = {}
        stages = self.stages or Stages()
        for name in stages.order:
            stage = stages.stages.get(name)
            data = (stage.data if stage is not None else None) or {}
            tasks = [d.rag_context for d in data.values() if d.rag_context is not None]
            if tasks:
                records = sum(t.records for t in tasks)
                with_gold = sum(t.with_gold for t in tasks)
                out[name] = tasks[0].model_copy(update={
                    "records": records, "with_gold": with_gold,
                    "gold_rate": with_gold / records if records else 0.0,
                    "mean_passages": sum(t.mean_passages * t.records for t in tasks) / records
                    if records else 0.0,
                    "inferred_gold": sum(t.inferred_gold for t in tasks),
                    "validation_file": None})
        return out


class ResultsError(UserError, ValueError):
    """A run's results.json is missing, is not JSON, or has a field that is wrong."""


def parse_results(data: Any, source: str = "results") -> Results:
    """``data`` (a results.json object, of this or an older schema) as ``Results``;
    ``ResultsError`` naming ``source`` and the field path when a field is wrong."""
    if not isinstance(data, dict):
        raise ResultsError(f"{source}: expected a JSON object, got {type(data).__name__}")
    try:
        return Results.model_validate(_upgrade(data))
    except ValidationError as e:
        lines = [f"{source}: {'.'.join(map(str, _path(err['loc'])))}: {err['msg']}"
                 for err in e.errors()]
        raise ResultsError("\n".join(lines)) from None


def load_results(path: Path) -> Results:
    """Read and check a run's ``results.json``; ``ResultsError`` (naming the path, and the
    field) if it is missing, not JSON, has a wrong field, or scores no arm or benchmark."""
    if not path.is_file():
        raise ResultsError(f"{path}: results not found (a finished `tunearena run` writes it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not valid JSON: {e}") from None
    results = parse_results(data, str(path))
    if not results.arms or not results.benchmarks:
        raise ResultsError(f"{path}: holds no results (arms: {len(results.arms)}, benchmarks: "
                           f"{len(results.benchmarks)}); a finished `tunearena run` writes both")
    return results


def _path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A field's path in the file: without the track pydantic names a benchmark row by."""
    if len(loc) > 2 and loc[0] == "benchmarks" and loc[2] in PRIMARY_METRIC:
        return loc[:2] + loc[3:]
    return loc


_V1_GENERATIVE = {"acc": "exact_match", "acc_ci": "exact_match_ci", "acc_norm": "f1"}


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 results object in schema 2's names (a copy; ``data`` is kept)."""
    if data.get("schema_version", 1) != 1:
        return data
    data = {**data, "schema_version": SCHEMA_VERSION}
    training = data.get("training")
    if isinstance(training, dict):
        # Schema 1's loop also counted the exported tensors; the training summary does not.
        data["training"] = {k: v for k, v in training.items() if k != "tensors"}
    benchmarks = data.get("benchmarks")
    if not isinstance(benchmarks, dict):
        return data
    upgraded = {}
    for name, bench in benchmarks.items():
        if isinstance(bench, dict) and bench.get("track") == "generative":
            arms = {arm: {_V1_GENERATIVE.get(k, k): v for k, v in row.items()}
                    if isinstance(row, dict) else row
                    for arm, row in (bench.get("arms") or {}).items()}
            bench = {**bench, "arms": arms}
        elif isinstance(bench, dict):
            bench = {"track": "multiple_choice", **bench}
        upgraded[name] = bench
    return {**data, "benchmarks": upgraded}
