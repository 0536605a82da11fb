"""summarise and render_markdown on hand-made per-question scores."""

from __future__ import annotations

import json
import math
import re

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import (
    ResultsError,
    decide,
    html_report,
    load_results,
    markdown_report,
    primary_score,
    sample_track,
    summarise,
)
from tunearena.evaluation.report.verdict import RAG_AWARE_RULE, RULE_IN_FULL
from tunearena.evaluation.results import SCHEMA_VERSION, Results, parse_results
from tunearena.evaluation.stats import mean_ci, paired_diff_ci
from tunearena.serve.arms import default_arm

BENCHMARKS = [
    BenchmarkConfig(name="dom", path="dom.jsonl", kind="domain"),
    BenchmarkConfig(name="gen", path="gen.jsonl", kind="general"),
]


def _scores(n: int, n_correct: int, prefix: str) -> list[dict]:
    """The first ``n_correct`` of ``n`` questions right (so arms nest question by question)."""
    return [
        {"id": f"{prefix}{i}", "acc": int(i < n_correct), "acc_norm": int(i < n_correct // 2)}
        for i in range(n)
    ]


SAMPLES = {
    "base": {"dom": _scores(40, 10, "d"), "gen": _scores(100, 80, "g")},
    "base+rag": {"dom": _scores(40, 30, "d"), "gen": _scores(100, 80, "g")},
    "ft": {"dom": _scores(40, 10, "d"), "gen": _scores(100, 60, "g")},
    "ft+rag": {"dom": _scores(40, 20, "d"), "gen": _scores(100, 79, "g")},
}
TRAINING = {
    "steps": 20, "planned_steps": 20, "method": "full", "parameters": 1000,
    "trainable_parameters": 1000, "train_tokens": 5000, "train_s": 12.5, "tokens_per_s": 400.0,
    "tokens_per_s_per_worker": 200.0, "device": "cpu", "global_batch_size": 8, "world_size": 2,
    "bf16": False, "use_gpu": False, "train_sequences": 40, "val_sequences": 4,
    "train_loss_tokens": 900, "final_train_loss": 1.23456,
    "mix": {"target": {"docs": 1.0}, "realised": {"docs": 1.0}, "sequences": {"docs": 160}},
    "stage": "ft", "median_step_s": 0.5, "p90_step_s": 0.8,
}
"""A training summary as the runner hands it to the report."""
EXTRA = {
    "training": TRAINING,
    "retrieval": {"index": "Flat", "recall@5": 0.9},
    "run": {"name": "demo", "code_version": "abc123"},
}


def _summarise(samples=SAMPLES, extra=EXTRA, **evaluation) -> dict:
    """The results as results.json holds them."""
    return summarise(
        samples,
        BENCHMARKS,
        EvaluationConfig(benchmarks=BENCHMARKS, bootstrap_samples=1000, **evaluation),
        ReportConfig(),
        extra,
    ).to_json()


def render_markdown(results: dict | Results) -> str:
    """The Markdown report of results, typed or as results.json holds them."""
    return markdown_report(results if isinstance(results, Results) else parse_results(results))


def test_per_arm_scores_and_verdicts():
    results = _summarise()
    dom = results["benchmarks"]["dom"]
    assert (dom["kind"], dom["n"]) == ("domain", 40)
    assert results["arms"] == ["base", "base+rag", "ft", "ft+rag"]
    base, rag, ft = dom["arms"]["base"], dom["arms"]["base+rag"], dom["arms"]["ft"]
    assert (base["acc"], base["acc_norm"], base["verdict"]) == (0.25, 0.125, "reference")
    assert base["diff_vs_base"] is None
    assert base["acc_ci"][0] < 0.25 < base["acc_ci"][1]
    assert rag["diff_vs_base"] == pytest.approx(0.5)
    assert rag["diff_ci"][0] > 0 and rag["verdict"] == "better than base"
    # Identical answers: zero difference, zero-width interval, no claim either way.
    assert (ft["diff_vs_base"], ft["diff_ci"]) == (0.0, [0.0, 0.0])
    assert ft["verdict"] == "no evidence of a difference"
    assert results["benchmarks"]["gen"]["arms"]["ft"]["verdict"] == "worse than base"


def test_forgetting_checks_and_sentences():
    checks = {c["arm"]: c for c in _summarise()["forgetting"]["checks"]}
    assert set(checks) == {"base+rag", "ft", "ft+rag"}
    assert checks["ft"]["status"] == "forgetting"
    assert re.fullmatch(
        r"ft lost 20\.0 points on gen \(95% CI -\d+\.\d to -\d+\.\d\): "
        r"forgetting beyond the 2-point tolerance",
        checks["ft"]["sentence"],
    )
    assert checks["base+rag"]["status"] == "none"
    assert checks["base+rag"]["sentence"] == (
        "base+rag kept the same score on gen (95% CI 0.0 to 0.0): within the 2-point tolerance"
    )
    # One question lost of 100: the interval reaches past -2 points, so no verdict.
    assert checks["ft+rag"]["status"] == "inconclusive"
    assert "cannot rule out forgetting" in checks["ft+rag"]["sentence"]


def test_forgetting_tolerance_comes_from_evaluation_config():
    checks = {c["arm"]: c for c in _summarise(forgetting_tolerance=0.5)["forgetting"]["checks"]}
    assert checks["ft"]["status"] == "none"
    assert checks["ft"]["sentence"].endswith("within the 50-point tolerance")


def test_headline_answers_the_questions():
    headline = _summarise()["headline"]
    assert any(s.startswith("RAG helps on dom: base+rag 75.0% vs base 25.0%") for s in headline)
    assert any(s.startswith("Fine-tuning makes no clear difference on dom") for s in headline)
    assert any(s.startswith("Fine-tuning plus RAG helps on dom") for s in headline)
    assert headline[-1] == "Forgetting beyond the 2-point tolerance: ft on gen."


def test_results_keep_samples_merge_extra_and_round_trip_through_json():
    results = _summarise()
    assert results["samples"] == SAMPLES
    assert results["training"] == EXTRA["training"]
    assert results["run"]["name"] == "demo"
    assert results["settings"]["confidence"] == 0.95
    assert json.loads(json.dumps(results)) == results


def test_render_markdown_tables_and_sections():
    md = render_markdown(json.loads(json.dumps(_summarise())))
    assert md.startswith("# tunearena report: demo\n")
    assert "- RAG helps on dom: base+rag 75.0% vs base 25.0%" in md
    assert "### dom (domain, n = 40)" in md
    assert "| arm | acc | 95% CI | acc_norm | diff vs base | 95% CI of diff | verdict |" in md
    assert "| base | 25.0% |" in md and "| — | — | reference |" in md
    assert re.search(
        r"\| base\+rag \| 75\.0% \| [\d.]+ to [\d.]+ \| 37\.5% \| \+50\.0 \| "
        r"\+[\d.]+ to \+[\d.]+ \| better than base \|",
        md,
    )
    assert "| ft | 25.0% |" in md and "| +0.0 | +0.0 to +0.0 | no evidence of a difference |" in md
    assert "## Forgetting" in md and "- ft lost 20.0 points on gen (95% CI" in md
    assert "## Training" in md and "- **steps**: 20" in md
    assert "- **final train loss**: 1.235" in md
    assert "- **recall@5**: 90.0%" in md
    assert "- **code version**: abc123" in md


def test_render_markdown_without_optional_sections():
    results = _summarise(extra={})
    md = render_markdown(results)
    assert md.startswith("# tunearena report\n")
    for title in ("## Training", "## Retrieval", "## Run"):
        assert title not in md
    assert "## Forgetting" in md


def _with_docs(rows: list[dict], per_doc: int) -> list[dict]:
    """``rows`` with ``doc_id``: ``per_doc`` consecutive questions share a source document."""
    return [{**r, "doc_id": f"doc{i // per_doc}"} for i, r in enumerate(rows)]


def test_summarise_clusters_cis_by_doc_id_and_says_so():
    # dom: 40 questions on 8 documents; gen: no doc_id, so nothing to cluster.
    samples = {
        arm: {"dom": _with_docs(by["dom"], 5), "gen": by["gen"]} for arm, by in SAMPLES.items()
    }
    results = _summarise(samples=samples)
    dom, gen = results["benchmarks"]["dom"], results["benchmarks"]["gen"]
    assert (dom["clustered_by"], dom["n_clusters"]) == ("doc_id", 8)
    assert (gen["clustered_by"], gen["n_clusters"]) == (None, None)
    clusters = [r["doc_id"] for r in samples["base"]["dom"]]
    base = [r["acc"] for r in samples["base"]["dom"]]
    rag = [r["acc"] for r in samples["base+rag"]["dom"]]
    ft_rag = [r["acc"] for r in samples["ft+rag"]["dom"]]
    assert dom["arms"]["base"]["acc_ci"] == list(mean_ci(base, 0.95, 1000, clusters=clusters)[1:])
    assert dom["arms"]["base+rag"]["diff_ci"] == list(
        paired_diff_ci(rag, base, 0.95, 1000, clusters=clusters)[1:]
    )
    assert dom["pairs"]["ft+rag - base+rag"]["ci"] == list(
        paired_diff_ci(ft_rag, rag, 0.95, 1000, clusters=clusters)[1:]
    )
    # Resampling 8 documents instead of 40 questions widens the interval.
    plain = _summarise()["benchmarks"]
    assert gen == plain["gen"]
    lo, hi = dom["arms"]["base"]["acc_ci"]
    plo, phi = plain["dom"]["arms"]["base"]["acc_ci"]
    assert hi - lo > phi - plo
    md = render_markdown(results)
    sentence = (
        "CIs resample the 8 source documents, not single questions, because questions on one "
        "document are correlated."
    )
    assert f"### dom (domain, n = 40)\n\n{sentence}\n" in md
    assert md.count("source documents") == 1


def test_one_question_per_document_is_not_clustered():
    samples = {arm: {k: _with_docs(v, 1) for k, v in by.items()} for arm, by in SAMPLES.items()}
    results = _summarise(samples=samples)
    plain = _summarise()
    for name in ("dom", "gen"):
        bench = results["benchmarks"][name]
        assert (bench["clustered_by"], bench["n_clusters"]) == (None, None)
        assert bench["arms"] == plain["benchmarks"][name]["arms"]
    assert "source documents" not in render_markdown(results)


def test_only_some_arms_and_no_general_benchmark():
    samples = {"base": {"dom": _scores(40, 10, "d")}, "ft": {"dom": _scores(40, 20, "d")}}
    results = summarise(
        samples,
        BENCHMARKS[:1],
        EvaluationConfig(benchmarks=BENCHMARKS[:1]),
        ReportConfig(),
        {},
    ).to_json()
    assert list(results["benchmarks"]["dom"]["arms"]) == ["base", "ft"]
    assert results["forgetting"]["checks"] == []
    assert "forgetting was not measured" in results["headline"][-1]
    assert "| ft | 50.0% |" in render_markdown(results)


@pytest.mark.parametrize(
    ("samples", "extra", "match"),
    [
        ({"ft": SAMPLES["ft"]}, {}, "no 'base' arm"),
        ({**SAMPLES, "rag": SAMPLES["ft"]}, {}, "not configured"),
        (
            {**SAMPLES, "ft": {"dom": SAMPLES["ft"]["dom"]}},
            {},
            "arm 'ft' has no scores for benchmark 'gen'",
        ),
        (
            {**SAMPLES, "ft": {**SAMPLES["ft"], "gen": _scores(99, 60, "g")}},
            {},
            "different questions",
        ),
        (SAMPLES, {"samples": []}, "own keys"),
        (SAMPLES, {"decision": {}}, "own keys"),
    ],
)
def test_inconsistent_inputs_are_errors(samples, extra, match):
    with pytest.raises(ValueError, match=match):
        _summarise(samples=samples, extra=extra)


# -- between-arm pairs ---------------------------------------------------------------------


def test_pairs_cover_every_two_non_base_arms_with_known_sign_and_interval():
    results = _summarise()
    pairs = results["benchmarks"]["dom"]["pairs"]
    assert list(pairs) == ["ft - base+rag", "ft+rag - base+rag", "ft+rag - ft"]
    # Nested answers: ft+rag (20 right) vs base+rag (30 right) differs on 10 of 40 questions.
    assert pairs["ft+rag - base+rag"]["diff"] == pytest.approx(-0.25)
    assert pairs["ft+rag - base+rag"]["ci"][1] < 0
    assert pairs["ft+rag - base+rag"]["verdict"] == "worse than base+rag"
    assert pairs["ft+rag - ft"]["diff"] == pytest.approx(0.25)
    assert pairs["ft+rag - ft"]["ci"][0] > 0
    assert pairs["ft+rag - ft"]["verdict"] == "better than ft"
    # The interval is exactly the paired bootstrap of the two arms' per-question scores.
    a = [r["acc"] for r in SAMPLES["ft+rag"]["dom"]]
    b = [r["acc"] for r in SAMPLES["base+rag"]["dom"]]
    assert pairs["ft+rag - base+rag"]["ci"] == list(paired_diff_ci(a, b, 0.95, 1000)[1:])
    # Identical answers on gen (base+rag and base both 80 right): no claim either way.
    gen = results["benchmarks"]["gen"]["pairs"]
    assert gen["ft - base+rag"]["verdict"] == "worse than base+rag"
    assert gen["ft+rag - base+rag"]["verdict"] == "no evidence of a difference"


def test_pairs_with_two_arms_are_empty():
    samples = {"base": {"dom": _scores(40, 10, "d")}, "ft": {"dom": _scores(40, 20, "d")}}
    results = summarise(
        samples, BENCHMARKS[:1], EvaluationConfig(benchmarks=BENCHMARKS[:1]), ReportConfig(), {}
    ).to_json()
    assert results["benchmarks"]["dom"]["pairs"] == {}


# -- the verdict -----------------------------------------------------------------------------


def _world(dom: dict[str, int], gen: dict[str, int] | None = None) -> dict:
    """Samples with ``dom[arm]`` of 40 domain and ``gen[arm]`` of 100 general questions right."""
    gen = gen or dict.fromkeys(dom, 80)
    return {
        arm: {"dom": _scores(40, dom[arm], "d"), "gen": _scores(100, gen[arm], "g")} for arm in dom
    }


def test_verdict_both():
    d = _summarise(_world({"base": 10, "base+rag": 20, "ft": 20, "ft+rag": 35}), {})["decision"]
    assert d["verdict"] == "both"
    assert d["sentence"].startswith("Use both")
    assert d["rule"].startswith("both: ft+rag beats base, base+rag and ft on every domain")
    assert "No general benchmark shows forgetting beyond the 2-point tolerance." in d["reasons"]
    decisive = [e["comparison"] for e in d["evidence"] if e["decisive"]]
    assert decisive == ["ft+rag - base", "ft+rag - base+rag", "ft+rag - ft"]
    assert "Decided by: ft+rag - base on dom (+62.5 points" in d["confidence"]
    assert "None of these intervals spans zero." in d["confidence"]


def test_verdict_fine_tune_when_ft_plus_rag_adds_nothing():
    d = _summarise(_world({"base": 10, "base+rag": 25, "ft": 30, "ft+rag": 30}), {})["decision"]
    assert d["verdict"] == "fine-tune"
    assert d["rule"].startswith("fine-tune: ft beats base on every domain benchmark")
    assert "Not both: ft+rag is not shown to beat ft." in d["reasons"]
    assert "ft - base+rag on dom (+12.5 points" in d["confidence"]


def test_verdict_fine_tune_not_blocked_by_an_unscored_rag_arm():
    samples = {"base": {"dom": _scores(40, 10, "d")}, "ft": {"dom": _scores(40, 30, "d")}}
    results = summarise(
        samples, BENCHMARKS[:1], EvaluationConfig(benchmarks=BENCHMARKS[:1]), ReportConfig(), {}
    ).to_json()
    d = results["decision"]
    assert d["verdict"] == "fine-tune"
    assert "Not both: ft+rag was not scored." in d["reasons"]
    assert "Forgetting was not measured for a fine-tuned arm." in d["confidence"]


def test_verdict_rag_when_fine_tuning_forgets():
    world = _world(
        {"base": 10, "base+rag": 25, "ft": 30, "ft+rag": 30},
        {"base": 80, "base+rag": 80, "ft": 50, "ft+rag": 80},
    )
    d = _summarise(world, {})["decision"]
    assert d["verdict"] == "RAG"
    assert "Not fine-tune: fine-tuning forgets beyond the 2-point tolerance (ft on gen)." in d["reasons"]
    assert d["sentence"].startswith("Use RAG: let the model you started from read passages")
    assert d["chosen"] == "base+rag"


def test_verdict_rag_when_fine_tuning_is_worse_than_rag():
    d = _summarise(_world({"base": 10, "base+rag": 35, "ft": 20, "ft+rag": 20}), {})["decision"]
    assert d["verdict"] == "RAG"
    assert "Not fine-tune: ft is worse than base+rag on dom." in d["reasons"]


def test_verdict_neither_and_every_decisive_interval_spans_zero():
    d = _summarise(_world(dict.fromkeys(["base", "base+rag", "ft", "ft+rag"], 10)), {})["decision"]
    assert d["verdict"] == "neither"
    assert d["reasons"] == ["Not RAG: base+rag is not shown to beat base.",
                            "Not fine-tune: ft is not shown to beat base.",
                            "Not both: ft+rag is not shown to beat base."]
    assert d["rule"] == "neither: " + " ".join(d["reasons"])
    assert "All of them span zero: no evidence of a difference." in d["confidence"]
    assert {e["position"] for e in d["evidence"]} == {"spans zero"}


def test_verdict_neither_without_a_domain_benchmark():
    samples = {"base": {"gen": _scores(10, 5, "g")}, "ft": {"gen": _scores(10, 9, "g")}}
    results = summarise(
        samples, BENCHMARKS[1:], EvaluationConfig(benchmarks=BENCHMARKS[1:]), ReportConfig(), {}
    ).to_json()
    d = results["decision"]
    assert (d["verdict"], d["evidence"]) == ("neither", [])
    assert "No domain benchmark was scored" in d["rule"]


def _row(diff, lo, hi):
    return {
        "acc": 0.5,
        "acc_ci": [0.4, 0.6],
        "acc_norm": 0.5,
        "diff_vs_base": diff,
        "diff_ci": [lo, hi],
        "verdict": "",
    }


def _check(arm: str, benchmark: str, status: str) -> dict:
    return {"arm": arm, "benchmark": benchmark, "change": -0.03, "ci": [-0.08, 0.01],
            "status": status, "sentence": ""}


def test_decide_reads_only_the_results_and_zero_is_not_above_zero():
    results = {
        "settings": {"confidence": 0.9, "bootstrap_samples": 100, "forgetting_tolerance": 0.05},
        "arms": ["base", "base+rag", "ft"],
        "benchmarks": {
            "a": {
                "kind": "domain",
                "track": "multiple_choice",
                "n": 50,
                "arms": {
                    "base": {**_row(None, 0, 0), "diff_ci": None},
                    "base+rag": _row(0.1, 0.0, 0.2),  # touches zero: does not help
                    "ft": _row(0.2, 0.1, 0.3),
                },
                "pairs": {"ft - base+rag": {"diff": 0.1, "ci": [-0.1, 0.3], "verdict": ""}},
            },
        },
        "forgetting": {"tolerance": 0.05, "summary": "",
                       "checks": [_check("ft", "g", "inconclusive")]},
    }
    d = decide(parse_results(results))
    assert d.verdict == "fine-tune"
    assert d.rule_in_full == list(RULE_IN_FULL)
    assert "(though some intervals reach past it)" in d.rule
    assert d.confidence.startswith("Based on 50 domain questions, at 90% confidence.")
    assert "Spanning zero (no evidence of a difference): ft - base+rag on a" in d.confidence
    assert "cannot be ruled out for ft on g." in d.confidence
    results["benchmarks"]["a"]["arms"]["base+rag"] = _row(0.1, 0.01, 0.2)
    results["forgetting"]["checks"][0]["status"] = "forgetting"
    assert decide(parse_results(results)).verdict == "RAG"


def test_markdown_puts_the_verdict_first():
    md = render_markdown(_summarise())
    assert md.index("## Verdict: RAG") < md.index("## Headline") < md.index("## Scores")
    assert "**Use RAG: let the model you started from" in md
    assert "**Why RAG** (the rule, checked in order):\n\n- base+rag beats base" in md
    assert re.search(r"\| ft\+rag - ft \| \+25\.0 \| \+[\d.]+ to \+[\d.]+ \| better than ft \|", md)


def test_load_results_errors_name_the_path(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(ResultsError, match=re.escape(f"{path}: results not found")):
        load_results(path)
    path.write_text("{not json")
    with pytest.raises(ResultsError, match=re.escape(f"{path}: not valid JSON")):
        load_results(path)
    path.write_text("[1, 2]")
    with pytest.raises(ResultsError, match="expected a JSON object, got list"):
        load_results(path)
    path.write_text(json.dumps(_summarise()))
    assert load_results(path).decision.verdict == "RAG"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["benchmarks"]["dom"]["arms"]["ft"].update(acc="high"),
         "benchmarks.dom.arms.ft.acc: Input should be a valid number"),
        (lambda r: r["benchmarks"]["gen"]["arms"]["base"].pop("acc_ci"),
         "benchmarks.gen.arms.base.acc_ci: Field required"),
        (lambda r: r["decision"].update(verdict="maybe"),
         "decision.verdict: Input should be 'fine-tune', 'RAG', 'both' or "
         "'neither'"),
        (lambda r: r["training"].pop("steps"), "training.steps: Field required"),
        (lambda r: r["settings"].update(confidence=None),
         "settings.confidence: Input should be a valid number"),
    ],
)
def test_a_wrong_field_is_named_by_its_path(tmp_path, change, message):
    results = _summarise()
    change(results)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ResultsError) as e:
        load_results(path)
    assert any(line.startswith(f"{path}: {message}") for line in str(e.value).splitlines())


def test_results_round_trip_and_declare_their_schema():
    results = _summarise()
    assert results["schema_version"] == SCHEMA_VERSION == 5
    assert parse_results(results).to_json() == results
    assert [b["track"] for b in results["benchmarks"].values()] == ["multiple_choice"] * 2


def _generative(n: int, n_right: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "exact_match": int(i < n_right),
             "f1": 1.0 if i < n_right else 0.25, "prediction": "x", "doc_id": None}
            for i in range(n)]


def test_generative_rows_name_exact_match_and_older_files_are_upgraded():
    samples = {"base": {"dom": _generative(20, 5, "d")}, "ft": {"dom": _generative(20, 15, "d")}}
    bench = [BenchmarkConfig(name="dom", path="dom.jsonl", kind="domain", track="generative")]
    results = summarise(samples, bench, EvaluationConfig(benchmarks=bench), ReportConfig(), {})
    row = results.benchmarks["dom"].arms["ft"]
    assert (row.exact_match, row.f1, row.score) == (0.75, 0.8125, 0.75)
    saved = results.to_json()
    assert set(saved["benchmarks"]["dom"]["arms"]["ft"]) == {
        "exact_match", "exact_match_ci", "f1", "diff_vs_base", "diff_ci", "verdict"}
    assert saved["benchmarks"]["dom"]["metrics"] == ["exact_match", "f1"]
    assert "| arm | exact_match | 95% CI | f1 |" in render_markdown(results)
    # Schema 1 kept the generative scores under acc, acc_ci and acc_norm.
    renamed = {"exact_match": "acc", "exact_match_ci": "acc_ci", "f1": "acc_norm"}
    old = json.loads(json.dumps(saved))
    del old["schema_version"]
    for arm, r in old["benchmarks"]["dom"]["arms"].items():
        old["benchmarks"]["dom"]["arms"][arm] = {renamed.get(k, k): v for k, v in r.items()}
    assert parse_results(old).to_json() == saved


def test_a_benchmarks_track_and_primary_score_come_from_its_rows():
    choice, generative = _scores(4, 3, "q"), _generative(4, 1, "q")
    rolling = [{"id": "0", "loglikelihood": -8 * math.log(2), "bytes": 4, "doc_id": None},
               {"id": "1", "loglikelihood": -4 * math.log(2), "bytes": 8, "doc_id": None}]
    own = [{"id": "0", "prediction": "x", "bleu": 0.3, "doc_id": None}]
    assert [sample_track(r) for r in (choice, generative, rolling, own)] == [
        "multiple_choice", "generative", "language_modelling", None]
    assert primary_score(choice) == 0.75 and primary_score(generative) == 0.25
    assert primary_score(rolling) == pytest.approx(1.0)  # 12 bits over 12 bytes
    with pytest.raises(ValueError, match="no score the report knows"):
        primary_score(own)


# -- sequential stages -----------------------------------------------------------------------

STAGE_ARMS = ["base", "base+rag", "ft@a", "ft@b", "ft", "ft+rag"]


def _stage_world(selected: str = "a", warning: str | None = None) -> tuple[dict, dict]:
    """base, ft@a (from base) and ft@b (from a); ft is ``selected``'s samples.

    Right answers (of 40 domain, 100 general): base 10/80, ft@a 20/78, ft@b 30/70, nested,
    so every paired difference is the difference of the counts."""
    right = {"base": (10, 80), "base+rag": (20, 80), "ft@a": (20, 78), "ft@b": (30, 70)}
    samples = {
        arm: {"dom": _scores(40, d, "d"), "gen": _scores(100, g, "g")}
        for arm, (d, g) in right.items()
    }
    samples["ft"] = samples[f"ft@{selected}"]
    samples["ft+rag"] = {"dom": _scores(40, 32, "d"), "gen": _scores(100, 78, "g")}
    stages = {
        "order": ["a", "b"],
        "selection": {
            "selected": selected,
            "tolerance": 0.02,
            "rule": f"ft is stage {selected}: the largest mean gain (test rule).",
            "candidates": [
                {"stage": "a", "domain_gain": 0.25, "forgetting": 0.02, "within_tolerance": True},
                {"stage": "b", "domain_gain": 0.5, "forgetting": 0.1, "within_tolerance": False},
            ],
            "warning": warning,
        },
        "stages": {
            "a": {
                "start_from": "base",
                "method": "full",
                "lora_init": None,
                "steps": 120,
                "stopped_early_at": None,
                "train_s": 33.1,
                "final_train_loss": 1.1,
                "final_val_loss": 1.2,
                "val_loss_by_task": {"docs_train": 1.2},
                "mix": {
                    "target": {"docs_train": 1.0},
                    "realised": {"docs_train": 1.0},
                    "sequences": {"docs_train": 480},
                },
                "replay": None,
                "data": {
                    "docs_train": {
                        "task": "docs_train",
                        "read": 510,
                        "empty_or_garbled": 3,
                        "exact_duplicates": 17,
                        "near_duplicates": 6,
                        "leaked": 4,
                        "leaked_by_benchmark": {"dom": 4},
                        "kept": 480,
                        "train": 456,
                        "validation": 24,
                        "test": 0,
                    }
                },
                "history": [{"step": 20, "train_loss": 1.5}, {"step": 50, "val_loss": 1.3}],
                "parameters": 1_200_000,
                "trainable_parameters": 1_200_000,
                "peak_rss_mb": [900.0, 1410.4],
            },
            "b": {
                "start_from": "a",
                "method": "lora",
                "parameters": 1_287_552,
                "trainable_parameters": 87_552,
                "steps": 80,
                "stopped_early_at": 60,
                "mix": {
                    "target": {"qa_train": 0.75, "general_facts": 0.25},
                    "realised": {"qa_train": 0.74, "general_facts": 0.26},
                },
                "replay": {"fraction": 0.25, "sources": ["general_facts"]},
            },
        },
    }
    return samples, stages


def _summarise_stages(samples, stages, **extra):
    cfg = EvaluationConfig(benchmarks=BENCHMARKS, arms=STAGE_ARMS, bootstrap_samples=1000)
    return summarise(samples, BENCHMARKS, cfg, ReportConfig(),
                     {"stages": stages, **extra}).to_json()


def test_stage_matrix_accuracy_diff_and_change_vs_start_exactly():
    samples, stages = _stage_world()
    before = json.loads(json.dumps(stages))
    results = _summarise_stages(samples, stages)
    assert stages == before and "matrix" not in stages  # the caller's dict is left alone
    matrix = results["stages"]["matrix"]
    assert list(matrix) == ["a", "b"] and list(matrix["a"]) == ["dom", "gen"]
    a_dom, b_dom, b_gen = matrix["a"]["dom"], matrix["b"]["dom"], matrix["b"]["gen"]
    # a starts from base: its change vs start is its change vs base.
    assert (a_dom["acc"], a_dom["diff_vs_base"], a_dom["change_vs_start"]) == (0.5, 0.25, 0.25)
    # b starts from a: 30 vs 20 of 40 right on dom, 70 vs 78 of 100 on gen.
    assert (b_dom["acc"], b_dom["diff_vs_base"], b_dom["change_vs_start"]) == (0.75, 0.5, 0.25)
    assert (b_gen["acc"], b_gen["diff_vs_base"], b_gen["change_vs_start"]) == (0.7, -0.1, -0.08)
    assert matrix["a"]["gen"]["change_vs_start"] == -0.02
    # The same numbers as the arm rows, and the change's interval is the paired bootstrap.
    row = results["benchmarks"]["gen"]["arms"]["ft@b"]
    assert (b_gen["acc_ci"], b_gen["diff_ci"]) == (row["acc_ci"], row["diff_ci"])
    a = [r["acc"] for r in samples["ft@b"]["gen"]]
    b = [r["acc"] for r in samples["ft@a"]["gen"]]
    assert b_gen["change_ci"] == list(paired_diff_ci(a, b, 0.95, 1000)[1:])
    assert json.loads(json.dumps(results)) == results


def test_stage_matrix_with_an_unscored_stage_or_start():
    samples, stages = _stage_world()
    del samples["ft@a"]
    samples["ft"] = samples["ft@b"]
    stages["selection"]["selected"] = "b"
    results = _summarise_stages(samples, stages)
    matrix = results["stages"]["matrix"]
    assert matrix["a"] == {"dom": None, "gen": None}
    assert matrix["b"]["dom"]["acc"] == 0.75 and matrix["b"]["dom"]["change_vs_start"] is None
    assert matrix["b"]["dom"]["change_ci"] is None
    md = render_markdown(results)
    assert "| a | base | not scored | not scored |" in md
    assert "| **b** (ft) | a | 75.0% (+50.0 vs base) | 70.0% (-10.0 vs base) |" in md


def test_ft_must_hold_the_selected_stage_samples():
    samples, stages = _stage_world(selected="a")
    samples["ft"] = samples["ft@b"]
    with pytest.raises(ValueError, match="arm 'ft' must hold exactly the samples of 'ft@a'"):
        _summarise_stages(samples, stages)


def test_pairs_leave_out_the_selected_stage_as_ft_stands_for_it():
    results = _summarise_stages(*_stage_world(selected="b"))
    pairs = results["benchmarks"]["dom"]["pairs"]
    assert not any("ft@b" in comparison for comparison in pairs)
    assert pairs["ft - ft@a"]["diff"] == 0.25
    assert {"ft - base+rag", "ft+rag - base+rag", "ft+rag - ft"} <= set(pairs)


def test_decide_reads_only_the_chosen_stage_for_forgetting():
    # ft@b forgets 10 points on gen, but ft is a, which stays within the tolerance.
    samples, stages = _stage_world(selected="a")
    results = _summarise_stages(samples, stages)
    checks = {c["arm"]: c["status"] for c in results["forgetting"]["checks"]}
    assert checks["ft@b"] == "forgetting" and checks["ft"] != "forgetting"
    assert "fine-tuning forgets" not in results["decision"]["rule"]
    # The same run with b chosen: now the chosen model forgets, and the rule says so.
    samples, stages = _stage_world(selected="b")
    results = _summarise_stages(samples, stages)
    assert (
        "fine-tuning forgets beyond the 2-point tolerance (ft on gen)"
        in (results["decision"]["rule"])
    )


def test_headline_names_the_stages_and_leaves_stage_arms_to_the_stages_section():
    headline = _summarise_stages(*_stage_world())["headline"]
    assert headline[0] == "Fine-tuning ran in 2 stages (a, then b); ft is the model after stage a."
    assert not any(s.startswith(("ft@", "stage")) for s in headline)
    assert any(s.startswith("Fine-tuning helps on dom: ft 50.0% vs base 25.0%") for s in headline)


def test_markdown_stages_section():
    warning = "Every fine-tuning stage forgets more than the 2-point tolerance allows (test)."
    results = json.loads(
        json.dumps(
            _summarise_stages(
                *_stage_world(warning=warning),
                cost={
                    "device_hours": 1.0,
                    "usd": 2.5,
                    "per_stage": {"a": {"device_hours": 0.6, "usd": 1.5}},
                },
            )
        )
    )
    md = render_markdown(results)
    # The warning comes straight after the verdict, in bold.
    assert md.index("## Verdict") < md.index(f"**Warning:** {warning}") < md.index("## Headline")
    assert md.index("## Scores") < md.index("## Stages") < md.index("## Forgetting")
    assert "| ft (= ft@a) | 50.0% |" in md and "| ft+rag (= ft@a+rag) | 80.0% |" in md
    assert "- **How ft was chosen**: ft is stage a: the largest mean gain (test rule)." in md
    assert (
        "| stage | domain gain (points) | largest general drop (points) | within the 2-point "
        "tolerance |" in md
    )
    assert "| **a** (ft) | +25.0 | 2.0 | yes |" in md and "| b | +50.0 | 10.0 | no |" in md
    # How the methods compare: what each trained and held, beside what it gained and lost.
    assert ("| stage | method | trainable parameters | share trained | peak memory (MB) "
            "| train time (s) | domain gain (points) | largest general drop (points) |") in md
    assert "| a | full | 1,200,000 | 100% | 1,410 | 33.1 | +25.0 | 2.0 |" in md
    assert "| b | lora | 87,552 | 6.8% | — | — | +50.0 | 10.0 |" in md
    # The matrix: base as the reference row, then each stage from its start.
    assert "| stage | starts from | dom (domain) | gen (general) |" in md
    assert "| base | — | 25.0% | 80.0% |" in md
    assert (
        "| **a** (ft) | base | 50.0% (+25.0 vs base, +25.0 vs start) "
        "| 78.0% (-2.0 vs base, -2.0 vs start) |" in md
    )
    assert (
        "| b | a | 75.0% (+50.0 vs base, +25.0 vs start) "
        "| 70.0% (-10.0 vs base, -8.0 vs start) |" in md
    )
    assert "backward transfer" in md
    # Training per stage, with its cost; per-task mixture and data preparation.
    assert "| a | base | full | 120 | no | 33.1 | 1.100 | 1.200 | 0.6 | 1.50 |" in md
    assert "| b | a | lora | 80 | at step 60 | — | — | — | — | — |" in md
    assert "| docs_train | 100.0% | 100.0% | 480 | 1.200 |" in md
    assert (
        "| task | read | empty or garbled | exact duplicates | near duplicates | leaked | kept "
        "| train | validation | test |" in md
    )
    assert "| docs_train | 510 | 3 | 17 | 6 | 4 (dom: 4) | 480 | 456 | 24 | 0 |" in md
    assert "Replay: none." in md
    assert "Replay: 25% of sequences replayed from general_facts." in md
    assert "| qa_train | 75.0% | 74.0% | — | — |" in md


def test_markdown_stages_with_sparse_stage_records():
    samples, stages = _stage_world()
    stages = {"order": ["a", "b"], "stages": {"a": None, "b": {"start_from": "a"}}}
    del samples["ft"], samples["ft+rag"]
    md = render_markdown(_summarise_stages(samples, stages))
    assert "## Stages" in md and "**Warning:**" not in md
    # Without its start_from, a stage's change vs start is unknown, not guessed.
    assert "| a | — | 50.0% (+25.0 vs base) | 78.0% (-2.0 vs base) |" in md
    assert "| b | a | 75.0% (+50.0 vs base, +25.0 vs start) |" in md
    assert "| ft (=" not in md


def test_a_stage_entry_may_be_the_whole_training_summary():
    samples, stages = _stage_world()
    stages["stages"]["b"] = {**TRAINING, "steps": 80, "planned_steps": 80, "start_from": "a",
                             "method": "lora", "stopped_early_at": None,
                             "data": stages["stages"]["a"]["data"]}
    del stages["stages"]["b"]["stage"], stages["stages"]["b"]["median_step_s"]
    del stages["stages"]["b"]["p90_step_s"]
    results = _summarise_stages(samples, stages)
    assert results["stages"]["stages"]["b"]["parameters"] == 1000
    md = render_markdown(results)
    assert "| b | a | lora | 80 | no | 12.5 | 1.235 | — |" in md
    assert md.count("| docs_train | 510 | 3 | 17 | 6 | 4 (dom: 4) | 480 | 456 | 24 | 0 |") == 2


def test_markdown_without_stages_has_no_stages_section():
    md = render_markdown(_summarise())
    assert "## Stages" not in md and "**Warning:**" not in md and "(= ft@" not in md


def test_results_that_score_nothing_are_refused(tmp_path):
    results = _summarise()
    results["benchmarks"], results["samples"] = {}, {}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ResultsError, match=re.escape(f"{path}: holds no results")):
        load_results(path)


def test_reports_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    import tunearena.evaluation.report as report

    results = parse_results(_summarise())
    md, html, review = report.write_reports(tmp_path, results)
    before = {p: p.read_bytes() for p in (md, html, review)}
    assert md.name == "report.md" and html.name == "report.html" and all(before.values())
    assert review.name == "review.csv"

    def broken(*args):
        raise RuntimeError("the page failed to render")

    monkeypatch.setattr(report, "render_html", broken)
    md.write_text("older")
    before[md] = md.read_bytes()
    with pytest.raises(RuntimeError, match="failed to render"):
        report.write_reports(tmp_path, results)
    assert {p: p.read_bytes() for p in (md, html, review)} == before  # none was replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md",
                                                          "review.csv"]


# -- RAG-aware fine-tuning -------------------------------------------------------------------

RAFT_ARMS = ["base", "base+rag", "ft@a", "ft@raft", "ft@raft+rag", "ft", "ft+rag"]
RAFT_CONTEXT = {"p_gold": 0.8, "distractors": None, "seed": 0, "records": 360,
                "with_gold": 289, "gold_rate": 289 / 360, "mean_passages": 2.0,
                "inferred_gold": 360, "validation_file": None}
"""What the prepare step records of a RAG-aware stage's task (rag_context_stage)."""


def _raft(raft_rag: int, selected: str = "a", raft_gen: int = 80) -> dict:
    """Stages a (plain) and raft (rag_context), with ``raft_rag`` of 40 domain questions right
    for ft@raft+rag (nested, as everywhere here); ft+rag is the selected stage's + RAG."""
    right = {"base": 10, "base+rag": 20, "ft@a": 20, "ft@raft": 15, "ft@a+rag": 28,
             "ft@raft+rag": raft_rag}
    gen = {"ft@raft": raft_gen, "ft@raft+rag": raft_gen}
    samples = {arm: {"dom": _scores(40, d, "d"), "gen": _scores(100, gen.get(arm, 80), "g")}
               for arm, d in right.items()}
    samples["ft"] = samples[f"ft@{selected}"]
    plain_rag = samples.pop("ft@a+rag")  # not an arm of its own: ft+rag when a is ft
    samples["ft+rag"] = plain_rag if selected == "a" else samples["ft@raft+rag"]
    stages = {"order": ["a", "raft"], "selection": {"selected": selected},
              "stages": {"a": {"start_from": "base"},
                         "raft": {"start_from": "base", "data": {"qa": {
                             "task": "qa", "read": 360, "rag_context": RAFT_CONTEXT}}}}}
    cfg = EvaluationConfig(benchmarks=BENCHMARKS, arms=RAFT_ARMS, bootstrap_samples=1000)
    return summarise(samples, BENCHMARKS, cfg, ReportConfig(), {"stages": stages}).to_json()


def test_a_rag_aware_stage_that_beats_ft_plus_rag_is_the_chosen_both():
    results = _raft(raft_rag=38)
    d = results["decision"]
    assert (d["verdict"], d["chosen"]) == ("both", "ft@raft+rag")
    assert d["rule"].startswith("both: ft@raft+rag (stage raft, fine-tuned with retrieved "
                                "passages) beats base, base+rag, ft and ft+rag on every domain")
    assert d["sentence"] == (
        "Use both, and make the fine-tuning RAG-aware: train the model further on your data "
        "with passages retrieved from your documents in its prompts (stage raft: the right "
        "document's passage in 80.3% of them, p_gold 0.8), and let it read retrieved passages "
        "when it answers (RAG).")
    decisive = [e["comparison"] for e in d["evidence"] if e["decisive"]]
    assert decisive == ["ft@raft+rag - base", "ft@raft+rag - base+rag", "ft@raft+rag - ft",
                        "ft@raft+rag - ft+rag"]
    # The pair is kept the other way round (ft+rag is the later arm): read back negated.
    assert results["benchmarks"]["dom"]["pairs"]["ft+rag - ft@raft+rag"]["diff"] == -0.25
    (vs_plain,) = [e for e in d["evidence"] if e["comparison"] == "ft@raft+rag - ft+rag"]
    assert vs_plain["diff"] == 0.25 and vs_plain["ci"][0] > 0
    assert d["rule_in_full"] == [*RULE_IN_FULL[:2], RAG_AWARE_RULE, *RULE_IN_FULL[2:]]
    # What serve puts forward by default is the chosen arm.
    assert default_arm(parse_results(results)) == "ft@raft+rag"


@pytest.mark.parametrize(("raft_rag", "raft_gen", "why"), [
    (28, 80, "ft@raft+rag is not shown to beat ft+rag"),
    (38, 60, "stage raft's model forgets beyond the 2-point tolerance (ft@raft on gen, "
             "ft@raft+rag on gen)"),
])
def test_a_rag_aware_stage_that_does_not_win_leaves_the_plain_rule(raft_rag, raft_gen, why):
    d = _raft(raft_rag=raft_rag, raft_gen=raft_gen)["decision"]
    assert (d["verdict"], d["chosen"]) == ("both", "ft+rag")
    assert d["sentence"].startswith("Use both: train the model further on your data")
    assert d["reasons"][-1] == f"Not ft@raft+rag (RAG-aware): {why}."
    assert RAG_AWARE_RULE in d["rule_in_full"]


def test_a_selected_rag_aware_stage_is_ft_plus_rag_and_the_sentence_says_so():
    d = _raft(raft_rag=38, selected="raft")["decision"]
    assert (d["verdict"], d["chosen"]) == ("both", "ft+rag")
    assert "make the fine-tuning RAG-aware" in d["sentence"] and "stage raft" in d["sentence"]
    assert d["rule_in_full"] == list(RULE_IN_FULL)  # no arm beside ft+rag to check first


def test_the_report_sets_a_rag_aware_stage_beside_ft_plus_rag():
    md = render_markdown(_raft(raft_rag=38))
    assert md.index("## Stages") < md.index("### RAG-aware fine-tuning: stage raft") \
        < md.index("### Accuracy after each stage")
    assert ("Stage raft is RAG-aware fine-tuning (RAFT): its training prompts held 2 passages "
            "retrieved from the run's index, the gold document's in 80.3% of its 360 prompts "
            "(p_gold 0.8). Its model with retrieval (ft@raft+rag) against plain fine-tuning with "
            "retrieval, ft+rag (= ft@a+rag), paired question by question:") in md
    assert ("| benchmark | kind | ft@raft+rag | ft+rag | difference (points) | 95% CI "
            "| verdict |") in md
    assert re.search(r"\| dom \| domain \| 95\.0% \| 70\.0% \| \+25\.0 \| \+\d+\.\d to "
                     r"\+\d+\.\d \| better than ft\+rag \|", md)
    assert "| gen | general | 80.0% | 80.0% | +0.0 | +0.0 to +0.0 | no evidence" in md
    html = html_report(parse_results(_raft(raft_rag=38)))
    assert "RAG-aware fine-tuning: stage raft" in html and 'class="rag-aware"' in html
    # The stage that ft is: ft+rag is already it, nothing to set beside it.
    md = render_markdown(_raft(raft_rag=38, selected="raft"))
    assert "It is the stage ft is, so ft+rag is its model with retrieval." in md
