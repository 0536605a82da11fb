"""``tunearena run`` on a base whose tokenizer has a chat template: the input check turns the
switch on, every arm is scored through the template, and results and report say so."""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import AutoTokenizer

from tunearena.evaluation.prompt import format_prompt, model_input
from tunearena.launch.cli import main

pytestmark = pytest.mark.slow

QUESTIONS = [
    {"id": "q0", "question": "What is the capital of Norland?", "choices": ["Velmo", "Tarrow"],
     "answer": 0},
    {"id": "q1", "question": "Who designed the Orbit kettle?", "choices": ["Ana Ruiz", "Lumora"],
     "answer": 0},
]


@pytest.mark.parametrize("switch", ["auto", "off"])
def test_a_run_scores_every_arm_through_the_chat_template_it_resolved(
        tmp_path, tiny_chat_model_dir, switch):
    bench = tmp_path / "trivia.jsonl"
    bench.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    config = {
        "name": "chat", "runs_dir": str(tmp_path / "runs"),
        "model": {"base": str(tiny_chat_model_dir), "chat_template": switch},
        "cluster": {"address": "local", "num_cpus": 2, "num_workers": 1},
        "rag": {"enabled": False},
        "evaluation": {"arms": ["base"], "latency_questions": 1, "batch_size": 4,
                       "bootstrap_samples": 100, "benchmarks": [
                           {"name": "trivia", "path": str(bench), "kind": "general"},
                           {"name": "trivia_open", "path": str(bench), "kind": "general",
                            "track": "generative"}]},
    }
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "runs" / "chat"
    chat = switch == "auto"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["chat_template"] is chat
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run"]["prompt_format"] == ("chat_template" if chat else "plain")
    report = (run_dir / "report.md").read_text()
    assert ("Prompts: the chat template of" in report) is chat
    assert ("no chat template" in report) is not chat
    # Prompt lengths count what the model read: the template's turns too, when it had them.
    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    read = [model_input(format_prompt(q["question"]), tok, chat)[0] for q in QUESTIONS]
    assert results["latency"]["base"]["prompt_tokens"] == pytest.approx(
        sum(len(tok(text, add_special_tokens=False)["input_ids"]) for text in read) / 2)
