"""The few-shot pool, the +fewshot and generative settings, and the latency figures."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.benchmarks import BenchmarkError
from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.fewshot import draw_examples, load_pool
from tunearena.evaluation.latency import percentiles
from tunearena.evaluation.report import markdown_report, summarise
from tunearena.evaluation.report.sentences import latency_sentence
from tunearena.evaluation.results import ArmLatency


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_pool_reads_qa_rows_aliases_and_templated_instruction_records(tmp_path):
    path = _write(tmp_path / "pool.jsonl", [
        {"id": "a", "question": "What colour is the sky?", "choices": ["red", "blue"],
         "answer": 1},
        {"question": "Who wrote it?", "answers": ["Ann", "Ann Lee"]},
        {"prompt": "Question: How much is the lamp?\nAnswer:", "response": " 25 dollars"},
    ])
    assert load_pool(path) == [("What colour is the sky?", "blue"), ("Who wrote it?", "Ann"),
                               ("How much is the lamp?", "25 dollars")]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Tell me about lamps", "response": "ok"}, "Question: ...\\\\nAnswer:"),
    ({"question": "Q?", "choices": ["a", "b"], "answer": 2}, "valid 'answer'"),
    ({"text": "just prose"}, "expected a QA row"),
])
def test_pool_errors_name_the_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "pool.jsonl", [{"question": "Fine?", "answers": ["yes"]}, row])
    with pytest.raises(BenchmarkError, match=rf"pool.jsonl:2: .*{message}"):
        load_pool(path)


def test_empty_pool_is_an_error(tmp_path):
    (tmp_path / "pool.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match="no solved questions"):
        load_pool(tmp_path / "pool.jsonl")


def test_draw_is_seeded_and_never_shows_a_benchmark_question():
    pool = [(f"Question {i}?", f"answer {i}") for i in range(20)]
    banned = {"question 3?", "QUESTION  5?"}  # compared without case or spacing
    drawn = draw_examples(pool, 5, seed=7, exclude=banned)
    assert drawn == draw_examples(pool, 5, seed=7, exclude=banned)
    assert drawn != draw_examples(pool, 5, seed=8, exclude=banned)
    assert len(set(drawn)) == 5
    assert not {q for q, _ in drawn} & {"Question 3?", "Question 5?"}
    assert draw_examples(pool, 18, seed=0, exclude=banned)  # 18 of 20 remain
    with pytest.raises(BenchmarkError, match="19 examples wanted but the pool has 18"):
        draw_examples(pool, 19, seed=0, exclude=banned)


def test_fewshot_arms_need_a_pool_and_arms_split():
    with pytest.raises(ValidationError, match="evaluation.fewshot.path is not set"):
        EvaluationConfig(arms=["base", "base+fewshot"])
    cfg = EvaluationConfig(arms=["base", "base+fewshot"], fewshot={"path": "pool.jsonl", "k": 3})
    assert cfg.fewshot.k == 3
    with pytest.raises(ValidationError, match="unknown arm 'base\\+rag\\+fewshot'"):
        EvaluationConfig(arms=["base+rag+fewshot"])
    assert Arm.parse("ft@qa+fewshot") == Arm("ft", "qa", "fewshot")
    assert Arm.parse("base") == Arm("base")


@pytest.mark.parametrize("fields, message", [
    ({"kind": "general"}, "exactly one of path"),
    ({"kind": "general", "path": "a.jsonl", "lm_eval_task": "arc_easy"}, "exactly one of path"),
    ({"kind": "domain", "lm_eval_task": "arc_easy"}, "only be a general benchmark"),
    ({"kind": "general", "path": "a.jsonl", "task_dir": "tasks"}, "only with lm_eval_task"),
    ({"kind": "general", "lm_eval_task": "arc_easy", "track": "generative"}, "leave track"),
    ({"kind": "general", "path": "a.jsonl", "track": "essay"}, "track"),
])
def test_benchmark_sources_are_checked(fields, message):
    with pytest.raises(ValidationError, match=message):
        BenchmarkConfig(name="b", **fields)


def test_percentiles_of_known_values():
    assert percentiles([5.0]) == {"p50": 5.0, "p95": 5.0}
    got = percentiles([float(v) for v in range(1, 101)])
    assert got["p50"] == 50.5
    assert got["p95"] == pytest.approx(95.05)


def _gen_rows(n: int, right: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "exact_match": int(i < right), "f1": 1.0 if i < right else 0.25,
             "prediction": "x", "doc_id": None} for i in range(n)]


def test_generative_rows_are_summarised_as_exact_match_and_f1():
    bench = BenchmarkConfig(name="dom", path="d.jsonl", kind="domain", track="generative")
    samples = {"base": {"dom": _gen_rows(40, 10, "d")}, "base+fewshot": {"dom": _gen_rows(40, 30, "d")}}
    results = summarise(samples, [bench], EvaluationConfig(
        benchmarks=[bench], arms=["base", "base+fewshot"], fewshot={"path": "p.jsonl"},
        bootstrap_samples=500), ReportConfig())
    dom = results.benchmarks["dom"]
    assert dom.track == "generative" and dom.metrics == ("exact_match", "f1")
    assert dom.arms["base"].exact_match == 0.25
    assert dom.arms["base"].f1 == pytest.approx(0.25 + 0.75 * 0.25)
    assert dom.arms["base+fewshot"].diff_vs_base == pytest.approx(0.5)
    markdown = markdown_report(results)
    assert "| arm | exact_match | 95% CI | f1 |" in markdown
    assert any(s.startswith("Few-shot prompting helps on dom") for s in results.headline)


def test_headline_weighs_fine_tuning_against_few_shot_prompting():
    bench = BenchmarkConfig(name="dom", path="d.jsonl", kind="domain")

    def rows(right):
        return [{"id": f"q{i}", "acc": int(i < right), "acc_norm": 0} for i in range(60)]

    samples = {"base": {"dom": rows(10)}, "base+fewshot": {"dom": rows(40)}, "ft": {"dom": rows(20)}}
    results = summarise(samples, [bench], EvaluationConfig(
        benchmarks=[bench], arms=["base", "base+fewshot", "ft"], fewshot={"path": "p.jsonl"},
        bootstrap_samples=500), ReportConfig())
    said = [s for s in results.headline if s.startswith("Fine-tuning against few-shot")]
    assert said and "prompting alone does better" in said[0] and "-33.3 points" in said[0]


def test_latency_sentence():
    latency = {
        "base": {"latency_p50_ms": 12.0, "latency_p95_ms": 20.0, "prompt_tokens": 15.0},
        "base+rag": {"latency_p50_ms": 30.4, "latency_p95_ms": 41.0, "prompt_tokens": 215.0,
                     "prompt_tokens_added": 200.0},
        "base+fewshot": {"latency_p50_ms": 25.0, "latency_p95_ms": 33.0,
                         "prompt_tokens_added": 80.4},
    }
    sentence = latency_sentence({arm: ArmLatency(**row) for arm, row in latency.items()})
    assert sentence is not None
    assert "base 12 ms (p95 20), base+rag 30 ms (p95 41)" in sentence
    assert "Retrieved passages add 200 prompt tokens per question; few-shot examples add 80" \
        in sentence
    assert latency_sentence({"base": ArmLatency(score_s=1.0)}) is None
