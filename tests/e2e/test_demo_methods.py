"""The methods demo end to end (configs/demo_methods.yaml): the product questions learned in
full and through LoRA, preference pairs after the full fine-tune, and the questions with
retrieved passages in their prompts, each measured in the report and in the README."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tunearena.launch.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert main(["run", str(REPO / "configs" / "demo_methods.yaml"),
                 "--set", f"runs_dir={runs}"]) == 0
    return runs / "demo_methods"


def test_methods_preference_and_rag_aware_stages_are_measured(methods_run):
    results = json.loads((methods_run / "results.json").read_text())
    stages = results["stages"]["stages"]
    full, lora = stages["qa"], stages["qa_lora"]
    assert full["trainable_parameters"] == full["parameters"]
    assert lora["method"] == "lora" and 0 < lora["trainable_parameters"] < full["parameters"]
    assert lora["peak_rss_mb"] and lora["train_s"] > 0
    report = (methods_run / "report.md").read_text()
    assert "### How the methods compare" in report and "| qa_lora | lora |" in report
    # The preference stage learned its pairs: held-out reward accuracy and margin, reported.
    dpo = stages["qa_dpo"]
    assert dpo["kind"] == "dpo" and dpo["start_from"] == "qa"
    assert dpo["reward_accuracy"] > 0.5 and dpo["reward_margin"] > 0
    assert "held-out reward accuracy" in report
    # The RAG-aware stage's prompts held the gold passage about as often as asked.
    context = stages["qa_raft"]["data"]["qa_train"]["rag_context"]
    assert context["p_gold"] == 0.8 and 0.7 <= context["gold_rate"] <= 0.9
    assert "ft@qa_raft+rag" in results["benchmarks"]["lumora_products"]["arms"]


def test_the_readme_quotes_this_run(methods_run):
    spec = importlib.util.spec_from_file_location(
        "readme_demo_table", REPO / "scripts" / "readme_demo_table.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    diff = script.check(methods_run)
    assert diff == "", (f"README.md differs from the methods demo; rewrite it with `python "
                        f"scripts/readme_demo_table.py {methods_run}`:\n{diff}")
