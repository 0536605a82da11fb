"""Every prompt an arm will score is measured against the model's context before training:
an overflow stops the run naming the benchmark, the arms and the counts, or its questions
leave every arm alike and the report counts them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import with_context
from transformers import AutoTokenizer

from tunearena.evaluation.arms import write_arm_tasks
from tunearena.evaluation.benchmarks import QAItem
from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.context import (
    PromptOverflowError,
    Request,
    measure_prompts,
    model_max_length,
    tokens_needed,
)
from tunearena.evaluation.report import html_report, markdown_report, summarise
from tunearena.evaluation.results import parse_results
from tunearena.evaluation.tasks import task_rows
from tunearena.launch.config import load_config
from tunearena.launch.inputs import check_inputs

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
ARMS = ["base", "base+rag", "ft", "ft+rag"]
CONTEXT = 128
QUESTIONS = [QAItem(f"q{i}", f"What is the capital of land {i}?", ["Velmo", "Tarrow"], 0)
             for i in range(6)]
LONG = ["Lumora Systems makes lamps, kettles and clocks in the city of Tarrow."] * 6
PASSAGES = {q.id: (LONG if q.id in ("q1", "q4") else ["The capital is Velmo."])
            for q in QUESTIONS}
BENCH = BenchmarkConfig(name="facts", path="facts.jsonl", kind="domain")


@pytest.fixture(scope="module")
def small_model(tiny_model_dir, tmp_path_factory) -> Path:
    return with_context(tiny_model_dir, tmp_path_factory.mktemp("ctx") / "model", CONTEXT)


def measure(model: Path, task_dir: Path, policy: str, questions=QUESTIONS):
    tasks = write_arm_tasks([BENCH], {"facts": questions}, {"", "rag"}, task_dir,
                            {"facts": PASSAGES}, [])
    evaluation = EvaluationConfig(benchmarks=[BENCH], arms=ARMS, long_prompts=policy)
    return measure_prompts(str(model), evaluation, {"facts": questions}, ARMS, task_dir, tasks)


def test_the_context_is_lm_evals_and_a_choice_or_an_answer_counts(small_model, tiny_tokenizer):
    assert model_max_length(small_model) == CONTEXT
    whole = len(tiny_tokenizer("Q: a? A: Velmo")["input_ids"])
    # A choice's last token is only predicted; a generation needs its room after the prompt.
    assert tokens_needed(Request("q", "Q: a? A:", (" Velmo", " V")), tiny_tokenizer) == whole - 1
    prompt = len(tiny_tokenizer("Q: a? A:")["input_ids"])
    assert tokens_needed(Request("q", "Q: a? A:", gen_tokens=32), tiny_tokenizer) == prompt + 32


def test_rag_prompts_over_the_context_stop_the_run_naming_benchmark_arms_and_counts(
        small_model, tmp_path, tiny_tokenizer):
    with pytest.raises(PromptOverflowError) as e:
        measure(small_model, tmp_path, "error")
    rows = task_rows(tmp_path, "facts__rag")
    longest = max(len(tiny_tokenizer(r["prompt"] + " " + c)["input_ids"]) - 1
                  for r in rows for c in r["choices"])
    assert longest > CONTEXT
    assert all(len(tiny_tokenizer(r["prompt"] + " Tarrow")["input_ids"]) <= CONTEXT
               for r in task_rows(tmp_path, "facts"))  # the plain prompts fit
    assert str(e.value).startswith(
        f"benchmark facts: 2 of 6 questions have a prompt longer than the model's "
        f"{CONTEXT}-token context (2 with base+rag/ft+rag; the longest {longest} tokens)")
    assert "lower rag.top_k or rag.chunk_tokens" in str(e.value)
    assert "evaluation.long_prompts: drop" in str(e.value)


def test_the_drop_policy_removes_the_same_questions_from_every_arm_and_reports_them(
        small_model, tmp_path):
    kept, record = measure(small_model, tmp_path / "first", "drop")
    assert [q.id for q in kept["facts"]] == ["q0", "q2", "q3", "q5"]
    assert record["max_length"] == CONTEXT and record["policy"] == "drop"
    assert record["dropped"]["facts"]["questions"] == 2
    assert record["dropped"]["facts"]["arms"] == ["base+rag", "ft+rag"]
    # The tasks every arm reads are written from the kept questions: the same ones in each.
    tasks = write_arm_tasks([BENCH], kept, {"", "rag"}, tmp_path / "tasks",
                            {"facts": PASSAGES}, [])
    ids = {c: [r["id"] for r in task_rows(tmp_path / "tasks", t)]
           for c, t in tasks["facts"].items()}
    assert ids == {"": ["q0", "q2", "q3", "q5"], "rag": ["q0", "q2", "q3", "q5"]}

    def rows(n_right: int) -> list[dict]:
        return [{"id": q, "acc": int(i < n_right), "acc_norm": 0, "doc_id": None}
                for i, q in enumerate(ids[""])]

    samples = {arm: {"facts": rows(i + 1)} for i, arm in enumerate(ARMS)}
    evaluation = EvaluationConfig(benchmarks=[BENCH], arms=ARMS, bootstrap_samples=100)
    results = summarise(samples, [BENCH], evaluation, ReportConfig(), {"prompt_lengths": record})
    assert results.benchmarks["facts"].n == 4
    assert parse_results(results.to_json()).prompt_lengths == results.prompt_lengths
    line = (f"2 questions were left out of every arm because a prompt of theirs is longer than "
            f"the model's {CONTEXT}-token context: 2 of facts (in base+rag, ft+rag; the longest "
            f"{record['dropped']['facts']['longest_tokens']} tokens).")
    assert line in markdown_report(results)
    assert '<p id="dropped-prompts" class="note">2 questions were left out' in html_report(results)
    # Nothing dropped: no line.
    quiet = summarise(samples, [BENCH], evaluation, ReportConfig(),
                      {"prompt_lengths": {**record, "dropped": {}}})
    assert "left out of every arm" not in markdown_report(quiet)
    assert "dropped-prompts" not in html_report(quiet)


def test_dropping_every_question_of_a_benchmark_is_refused(small_model, tmp_path):
    overflowing = [q for q in QUESTIONS if q.id in ("q1", "q4")]
    with pytest.raises(PromptOverflowError, match="would leave facts with no question"):
        measure(small_model, tmp_path, "drop", overflowing)


def test_the_demo_prompts_fit_its_model_even_with_its_longest_passages(tmp_path):
    from tunearena.rag.chunking import chunk_documents
    from tunearena.rag.corpus import load_documents
    from tunearena.rag.embed import resolve_embedding_model

    cfg = load_config(DEMO)
    questions, examples = check_inputs(cfg)
    rag = cfg.rag
    chunks = chunk_documents(load_documents(rag.corpus),
                             AutoTokenizer.from_pretrained(resolve_embedding_model(
                                 rag.embedding_model)), rag.chunk_tokens,
                             rag.chunk_overlap_tokens)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.base)
    # The worst case: every question gets the top_k longest chunks of the corpus.
    longest = sorted((c.text for c in chunks), key=lambda t: -len(tokenizer(t)["input_ids"]))
    passages = {name: {q.id: longest[:rag.top_k] for q in items}
                for name, items in questions.items()}
    tasks = write_arm_tasks(cfg.evaluation.benchmarks, questions, {"", "rag", "fewshot"},
                            tmp_path, passages, examples)
    kept, record = measure_prompts(cfg.model.base, cfg.evaluation, questions,
                                   cfg.evaluation.arms, tmp_path, tasks)
    assert record == {"max_length": 512, "policy": "error", "dropped": {}}
    assert kept == questions
