"""The demo pipeline end to end, as a user runs it: three fine-tuning stages (documents, then
questions, and the questions again with general text replayed), the index, retrieval, every
arm on both benchmarks, the stage choice and the report."""

from __future__ import annotations

import html
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from tunearena.launch.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STAGES = ["docs", "qa", "qa_replay"]
ARMS = ["base", "base+fewshot", "base+rag", "ft@docs", "ft@qa", "ft@qa_replay", "ft", "ft+rag"]


def demo(runs_dir: Path, *extra: str) -> int:
    return main(["demo", "--set", f"runs_dir={runs_dir}", *extra])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert demo(runs) == 0
    return runs / "demo"


@pytest.fixture(scope="module")
def results(demo_run) -> dict:
    return json.loads((demo_run / "results.json").read_text())


def test_demo_writes_every_arm_on_every_benchmark(results):
    assert results["arms"] == ARMS
    for name, n in (("lumora_products", 180), ("world_facts", 160)):
        bench = results["benchmarks"][name]
        assert bench["n"] == n
        for arm in results["arms"]:
            row = bench["arms"][arm]
            assert 0.0 <= row["acc_ci"][0] <= row["acc"] <= row["acc_ci"][1] <= 1.0
            per_question = results["samples"][arm][name]
            assert len(per_question) == n
            assert row["acc"] == pytest.approx(sum(s["acc"] for s in per_question) / n)
    # The arms share their questions: same ids, same order.
    ids = [s["id"] for s in results["samples"]["base"]["lumora_products"]]
    assert ids == [s["id"] for s in results["samples"]["ft+rag"]["lumora_products"]]
    retrieval = results["retrieval"]["lumora_products"]
    assert retrieval["k"] == 2 and 0.0 <= retrieval["recall_at_k"] <= 1.0
    # The k sweep: one search, recall of the gold document never falling as k grows.
    curve = [retrieval["recall_curve"][k] for k in ("1", "2", "3", "5", "10")]
    assert curve == sorted(curve) and curve[1] == retrieval["recall_at_k"]  # top_k is 2
    # Questions where retrieval hurt or helped, counted from the per-question scores.
    base = {s["id"]: s["acc"] for s in results["samples"]["base"]["lumora_products"]}
    rag = {s["id"]: s["acc"] for s in results["samples"]["base+rag"]["lumora_products"]}
    assert retrieval["hurt_questions"] == sum(base[q] and not rag[q] for q in base)
    assert retrieval["helped_questions"] == sum(rag[q] and not base[q] for q in base)


def test_every_stage_passed_the_probe_before_scoring(results, demo_run):
    probe = results["probe"]
    assert probe["prompts"] == 8 and set(probe["changes"]) == set(STAGES)
    assert all(change > probe["tolerance"] for change in probe["changes"].values())
    steps = list(json.loads((demo_run / "manifest.json").read_text())["steps"])
    assert steps.index("probe") < min(steps.index(f"evaluate:{arm}") for arm in ARMS if arm != "ft")
    assert "probe prompts" in (demo_run / "report.md").read_text()


def general_drop(results: dict, stage: str) -> float:
    return -results["benchmarks"]["world_facts"]["arms"][f"ft@{stage}"]["diff_vs_base"]


def test_replay_reduces_forgetting_of_general_knowledge(results):
    # The same seeded question stage with and without replay of general text: replay must keep
    # at least 3 points (5 of 160 questions) more of the general benchmark. Measured: 10.6
    # points lost without replay, 3.8 with it.
    without, with_replay = general_drop(results, "qa"), general_drop(results, "qa_replay")
    assert without - with_replay >= 0.03, (without, with_replay)
    # And it is not bought with the domain: replay keeps the questions stage's gain.
    domain = results["benchmarks"]["lumora_products"]["arms"]
    assert domain["ft@qa_replay"]["acc"] >= domain["ft@qa"]["acc"] - 0.03


def test_the_stage_matrix_is_in_the_results_and_both_reports(results, demo_run):
    stages = results["stages"]
    assert stages["order"] == STAGES
    matrix = stages["matrix"]
    for stage in STAGES:
        for bench in ("lumora_products", "world_facts"):
            cell = matrix[stage][bench]
            row = results["benchmarks"][bench]["arms"][f"ft@{stage}"]
            assert cell["acc"] == row["acc"] and cell["diff_vs_base"] == row["diff_vs_base"]
    # Backward transfer: each questions stage against the documents stage it started from.
    docs = results["benchmarks"]["world_facts"]["arms"]["ft@docs"]["acc"]
    for stage in ("qa", "qa_replay"):
        assert matrix[stage]["world_facts"]["change_vs_start"] == pytest.approx(
            results["benchmarks"]["world_facts"]["arms"][f"ft@{stage}"]["acc"] - docs)
    report = (demo_run / "report.md").read_text()
    page = html.unescape((demo_run / "report.html").read_text())
    for stage in STAGES:
        assert f"ft@{stage}" in report and f"ft@{stage}" in page
    assert "## Stages" in report


def test_ft_is_the_best_stage_within_the_forgetting_tolerance(results):
    selection = results["stages"]["selection"]
    tolerance = results["settings"]["forgetting_tolerance"]
    domain = results["benchmarks"]["lumora_products"]["arms"]
    within = [s for s in STAGES if general_drop(results, s) <= tolerance + 1e-9]
    assert within, "the demo should have a stage within its tolerance"
    best = max(within, key=lambda s: (domain[f"ft@{s}"]["acc"], -STAGES.index(s)))
    assert selection["selected"] == best and selection["warning"] is None
    assert results["samples"]["ft"] == results["samples"][f"ft@{best}"]
    assert results["training"]["stage"] == best


def test_each_stage_reports_its_mixture_and_data(results):
    stages = results["stages"]["stages"]
    assert stages["docs"]["start_from"] == "base"
    assert stages["qa"]["start_from"] == stages["qa_replay"]["start_from"] == "docs"
    mix = stages["qa_replay"]["mix"]
    assert mix["target"] == pytest.approx({"qa_train": 0.7, "replay:general": 0.3})
    n = sum(mix["sequences"].values())
    p = mix["target"]["replay:general"]
    assert abs(mix["realised"]["replay:general"] - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert stages["qa"]["mix"]["target"] == {"qa_train": 1.0}
    data = stages["qa_replay"]["data"]
    assert data["qa_train"]["read"] == 360 and data["qa_train"]["leaked"] == 0
    assert data["replay:general"]["kept"] == 120
    assert data["qa_train"]["train"] + data["qa_train"]["validation"] == 360


def test_demo_report_and_run_directory(demo_run, results):
    report = (demo_run / "report.md").read_text()
    assert "### lumora_products (domain, n = 180)" in report
    assert "ft+rag" in report and "## Forgetting" in report
    assert report.startswith("# tunearena report: demo\n\n## Verdict: ")
    page = html.unescape((demo_run / "report.html").read_text())
    assert results["decision"]["sentence"] in page
    steps = json.loads((demo_run / "manifest.json").read_text())["steps"]
    # Retrieval first (its prompts are measured before training), the probe before scoring.
    assert list(steps) == (
        ["index", "retrieve"] + [f"prepare:{s}" for s in STAGES] + [f"train:{s}" for s in STAGES]
        + ["probe"] + [f"evaluate:{a}" for a in ARMS if a != "ft"] + ["report"])
    assert all(s["status"] == "done" for s in steps.values())
    for stage in STAGES:
        assert (demo_run / "models" / stage / "model.safetensors").is_file()
        assert (demo_run / "data" / stage).is_dir()
    # RAG prompts carry the retrieved passages; plain prompts do not.
    rag_task = (demo_run / "tasks" / "lumora_products__rag.jsonl").read_text().splitlines()
    plain_task = (demo_run / "tasks" / "lumora_products.jsonl").read_text().splitlines()
    assert json.loads(rag_task[0])["prompt"].startswith("Context: ")
    assert json.loads(plain_task[0])["prompt"].startswith("Question: ")
    # Few-shot prompts: the same five solved training questions before every question.
    fewshot = [json.loads(r)["prompt"] for r in
               (demo_run / "tasks" / "lumora_products__fewshot.jsonl").read_text().splitlines()]
    heads = {p.rsplit("Question: ", 1)[0] for p in fewshot}
    assert len(heads) == 1 and heads.pop().count("Answer: ") == 5
    assert all(p.endswith(q) for p, q in zip(fewshot, (json.loads(r)["prompt"] for r in plain_task),
                                             strict=True))


def test_the_readme_says_what_the_demo_gives(demo_run):
    """The README's demo table, and the scores its prose quotes, are this run's (before the
    resume tests below change its settings)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "readme_demo_table", REPO / "scripts" / "readme_demo_table.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    diff = script.check(demo_run)
    assert diff == "", (f"README.md differs from the demo; rewrite it with `python "
                        f"scripts/readme_demo_table.py {demo_run}`:\n{diff}")


def test_review_lists_the_questions_the_arms_disagree_on(demo_run, results):
    import csv

    from tunearena.evaluation.benchmarks import load_qa

    # Each multiple-choice sample names its choice; acc is right exactly when it is the answer.
    answers = {q.id: q.answer for q in load_qa(
        REPO / "examples/demo_world/domain/qa_test.jsonl")}
    for arm in ARMS:
        for s in results["samples"][arm]["lumora_products"]:
            assert s["acc"] == int(s["choice"] == answers[s["id"]]), (arm, s)
    # A RAG arm's sample names the document of the first passage it read.
    retrieved = json.loads((demo_run / "retrieval" / "lumora_products.json").read_text())
    for s in results["samples"]["base+rag"]["lumora_products"]:
        assert s["retrieved_doc"] == retrieved[s["id"]]["doc_ids"][0]
    assert all("retrieved_doc" not in s for s in results["samples"]["base"]["lumora_products"])

    with open(demo_run / "review.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["benchmark"] for r in rows} <= {"lumora_products", "lumora_answers",
                                                        "world_facts"}
    for row in rows:
        right = {row[f"{arm} right"] for arm in ARMS}
        assert right == {"0", "1"}, row  # some arm right, another wrong
        assert row["question"] and row["correct_answer"]
        if row["benchmark"] == "lumora_products":
            assert row["retrieved_passage"] == retrieved[row["question_id"]]["passages"][0]
    page = html.unescape((demo_run / "report.html").read_text())
    assert page.index('<section id="review">') < page.index('<section id="provenance"')
    assert rows[0]["question"] in page
    assert "## Questions the arms disagree on" in (demo_run / "report.md").read_text()


def test_generative_track_scores_the_answers_the_models_wrote(results):
    from tunearena.evaluation.benchmarks import load_qa
    from tunearena.evaluation.generative import answer_text, exact_match, token_f1

    bench = results["benchmarks"]["lumora_answers"]
    assert bench["track"] == "generative" and bench["metrics"] == ["exact_match", "f1"]
    gold = {q.id: q.gold_answers for q in
            load_qa(REPO / "examples/demo_world/domain/qa_test.jsonl", "generative")}
    for arm in ARMS:
        rows = results["samples"][arm]["lumora_answers"]
        assert len(rows) == 180
        # Scores recomputed from the generated text agree with lm-eval's.
        assert [r["exact_match"] for r in rows] == [
            exact_match(answer_text(r["prediction"]), gold[r["id"]]) for r in rows]
        assert [r["f1"] for r in rows] == pytest.approx(
            [token_f1(answer_text(r["prediction"]), gold[r["id"]]) for r in rows])
        assert bench["arms"][arm]["exact_match"] == pytest.approx(
            sum(r["exact_match"] for r in rows) / 180)
    # Fine-tuning on the questions teaches the model to answer them in words too.
    assert bench["arms"]["ft"]["verdict"] == "better than base"
    assert bench["arms"]["ft"]["exact_match"] > bench["arms"]["base+rag"]["exact_match"]


def test_latency_per_arm_includes_retrieval_and_counts_added_prompt_tokens(results):
    latency = results["latency"]
    for arm in ARMS:
        row = latency[arm]
        assert row["questions_timed"] == 96  # 32 of each of the three benchmarks
        assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
    rag, plain = latency["base+rag"], latency["base"]
    assert rag["retrieval_p50_ms"] > 0
    # Retrieved passages and examples lengthen the prompt by what the task files show.
    assert rag["prompt_tokens_added"] > 50
    assert latency["base+fewshot"]["prompt_tokens_added"] > 50
    assert rag["prompt_tokens"] == pytest.approx(plain["prompt_tokens"] + rag["prompt_tokens_added"])


def file_stamps(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a run but its bookkeeping (manifest, resolved config, the driver's lock):
    mtime and bytes."""
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in run_dir.rglob("*")
            if p.is_file() and p.name not in ("manifest.json", "config.yaml", ".lock")}


def test_resume_reuses_every_completed_step(demo_run):
    before = (demo_run / "results.json").read_text()
    stamps = file_stamps(demo_run)
    assert any(name.startswith("models/") for name in stamps)
    assert demo(demo_run.parent, "--resume") == 0
    steps = json.loads((demo_run / "manifest.json").read_text())["steps"]
    assert all("reused" in s for s in steps.values()), steps
    assert (demo_run / "results.json").read_text() == before
    # Nothing was recomputed: no model, index, context, score or report file was written. The
    # lm-eval task files are written again at each start, byte for byte the same.
    after = file_stamps(demo_run)
    assert after.keys() == stamps.keys()
    rewritten = sorted(name for name in stamps if after[name][0] != stamps[name][0])
    assert all(name.startswith("tasks/") for name in rewritten), rewritten
    assert all(after[name][1] == stamps[name][1] for name in rewritten), rewritten
    assert not ray.is_initialized()


def test_resume_reruns_only_what_a_changed_setting_invalidates(demo_run):
    assert demo(demo_run.parent, "--resume", "--set", "evaluation.forgetting_tolerance=0.2") == 0
    steps = json.loads((demo_run / "manifest.json").read_text())["steps"]
    assert steps["report"]["status"] == "done" and "reused" not in steps["report"]
    # The tolerance changes no model and no score: only the choice and the report.
    assert all("reused" in steps[s] for s in steps if s != "report" and s != "evaluate:ft+rag"
               ), {s: "reused" in v for s, v in steps.items()}
    results = json.loads((demo_run / "results.json").read_text())
    assert results["settings"]["forgetting_tolerance"] == 0.2


def test_existing_run_is_never_overwritten(demo_run, capsys):
    assert demo(demo_run.parent) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_broken_input_fails_fast_naming_file_and_line(tmp_path):
    bad = tmp_path / "qa_train.jsonl"
    good = (REPO / "examples/demo_world/domain/qa_train.jsonl").read_text().splitlines()
    bad.write_text("\n".join(good[:2] + ['{"prompt": "Question: broken'] + good[2:5]) + "\n")
    # Ray makes its session directory under RAY_TMPDIR when it starts an instance.
    ray_tmp = tmp_path / "ray_tmp"
    proc = subprocess.run(
        [sys.executable, "-m", "tunearena.launch.cli", "demo", "--set", f"runs_dir={tmp_path}",
         "--set", f"stages.1.datasets.0.path={bad}"],
        capture_output=True, text=True, timeout=300, env=os.environ | {"RAY_TMPDIR": str(ray_tmp)},
    )
    assert proc.returncode == 2
    assert f"{bad}:3: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "demo").exists(), "nothing may start on broken input"
    assert not ray_tmp.exists(), "no Ray instance may start on broken input"
