"""Arms scored side by side as Ray tasks: the same scores as in process, failures kept apart,
and answer times measured (real Ray, lm-eval and the tiny random Llama)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from tunearena.cluster.config import ClusterConfig
from tunearena.evaluation.arm import Arm
from tunearena.evaluation.arms import ArmEvaluation, ArmJob, Scoring, arm_failure
from tunearena.evaluation.benchmarks import QAItem
from tunearena.evaluation.harness import load_model, score_model
from tunearena.evaluation.latency import time_answers
from tunearena.evaluation.tasks import write_generative_task, write_mc_task

ITEMS = [QAItem(id=f"q{i}", question=f"What is item {i}?", choices=[f"thing {i}", "other"],
                answer=i % 2, doc_id=f"d{i // 2}") for i in range(6)]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tasks")
    write_mc_task(out, "mc", ITEMS)
    write_generative_task(out, "gen", ITEMS)
    return out


def test_arms_as_ray_tasks_match_in_process_scores_and_keep_going_past_a_failure(
        ray_local, tiny_model_dir, task_dir):
    scoring = Scoring(task_dir=str(task_dir), batch_size=4)
    timed = [{"prompt": "Question: What is item 1?\nAnswer:", "choices": ["thing 1", "other"]},
             {"prompt": "Question: What is item 2?\nAnswer:", "choices": None}]
    good = ArmJob(Arm.parse("base"), str(tiny_model_dir), {"mc": "mc", "gen": "gen"}, {"mc": timed})
    bad = ArmJob(Arm.parse("base+rag"), str(tiny_model_dir), {"mc": "no_such_task"})
    done, failed = {}, {}
    with ArmEvaluation(scoring, ClusterConfig(num_workers=1, cpus_per_worker=1),
                       Console(quiet=True)) as arms:
        for job in (bad, good):
            arms.score(job, on_done=lambda job, result: done.update({str(job.arm): result}),
                       on_error=lambda job, error: failed.update({str(job.arm): error}))
        arms.wait()
    assert [str(job.arm) for job, _ in arms.failed] == ["base+rag"]
    assert re.search(r"1 arm\(s\) failed \(base\+rag\).*no_such_task", str(arm_failure(arms.failed)))
    assert list(done) == ["base"] and list(failed) == ["base+rag"]
    assert "no_such_task" in str(failed["base+rag"])
    # In a Ray worker the arm gets exactly the scores it gets in this process.
    here = score_model(tiny_model_dir, task_dir, ["mc", "gen"], batch_size=4)
    assert done["base"]["samples"] == {"mc": here["mc"], "gen": here["gen"]}
    assert [r["id"] for r in done["base"]["samples"]["mc"]] == [it.id for it in ITEMS]
    assert len(done["base"]["answer_ms"]["mc"]) == 2
    assert all(ms > 0 for ms in done["base"]["answer_ms"]["mc"])


def test_time_answers_times_each_question_once(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    questions = [{"prompt": f"Question: What is item {i}?\nAnswer:",
                  "choices": ["a", "b"] if i % 2 else None} for i in range(5)]
    times = time_answers(model, tokenizer, questions, "cpu", max_new_tokens=4)
    assert len(times) == 5 and all(t > 0 for t in times)
    assert time_answers(model, tokenizer, [], "cpu") == []
