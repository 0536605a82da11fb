"""Real lm-eval through a chat template, on the tiny Llama whose tokenizer carries one: what
each request holds, what it scores, where a generated answer stops, and lm-eval's own CLI
scoring the same questions the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunearena.evaluation.benchmarks import QAItem
from tunearena.evaluation.harness import score_model
from tunearena.evaluation.latency import time_answers
from tunearena.evaluation.prompt import format_prompt, model_input
from tunearena.evaluation.tasks import write_generative_task, write_mc_task

REPO = Path(__file__).resolve().parents[2]
ITEMS = [
    QAItem("q0", "What is the capital of Norland?", ["Velmo", "Tarrow", "Norland"], 0, "d0"),
    QAItem("q1", "Who designed the Orbit kettle?", ["Ana Ruiz", "Lumora"], 1, "d1"),
    QAItem("q2", "What colour is the Zephyr lamp?", ["blue", "red", "green"], 2, "d1"),
]
PASSAGES = {"q0": ["The capital of Norland is Velmo."], "q1": [], "q2": ["It comes in blue."]}
EXAMPLES = [("Where is Lumora Systems?", "Tarrow")]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Every variant of one benchmark, both tracks: plain, RAG and few-shot prompts."""
    task_dir = tmp_path_factory.mktemp("tasks")
    open_items = [QAItem(i.id, i.question, answers=(i.choices[i.answer],)) for i in ITEMS]
    names = {
        "mc": write_mc_task(task_dir, "facts", ITEMS),
        "mc_rag": write_mc_task(task_dir, "facts", ITEMS, PASSAGES),
        "mc_fewshot": write_mc_task(task_dir, "facts", ITEMS, examples=EXAMPLES),
        "open": write_generative_task(task_dir, "open", open_items),
        "open_rag": write_generative_task(task_dir, "open", open_items, PASSAGES),
    }
    return task_dir, names


@pytest.fixture(scope="module")
def chat_model(tiny_chat_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_chat_model_dir)


def _prompt(item: QAItem, task: str) -> str:
    passages = PASSAGES[item.id] if task.endswith("rag") else ()
    return format_prompt(item.question, passages, EXAMPLES if task.endswith("fewshot") else ())


def test_every_request_is_one_user_message_with_the_reply_opened(tasks, chat_model):
    from lm_eval.models.huggingface import HFLM

    from tunearena.evaluation.harness import _task_manager

    task_dir, names = tasks
    model, tok = chat_model
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    loaded = _task_manager([task_dir], False).load(list(names.values()))["tasks"]
    for key, name in names.items():
        task = loaded[name]
        # As simple_evaluate builds them with apply_chat_template and single-turn examples.
        task.build_all_requests(apply_chat_template=True, chat_template=lm.apply_chat_template,
                                fewshot_as_multiturn=False, tokenizer_name="tiny")
        for item in ITEMS:
            context, delimiter = model_input(_prompt(item, key), tok, chat_template=True)
            assert context == (f"<s>user\n{_prompt(item, key)}</s>\n<s>assistant\n")
            requests = [r for r in task.instances if r.doc["id"] == item.id]
            if key.startswith("mc"):
                # Each choice follows the assistant's header with nothing in between.
                assert [r.args for r in requests] == [(context, delimiter + c)
                                                      for c in item.choices]
                assert delimiter == ""
            else:
                (args,) = [r.args for r in requests]
                assert args[0] == context and args[1]["until"] == ["\n"]


def _choice_logliks(model, tok, context: str, choices: list[str]) -> list[float]:
    """Sum of log p(choice | rendered context), computed directly with the model."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    out = []
    for choice in choices:
        full = tok(context + choice, add_special_tokens=False)["input_ids"]
        assert full[: len(ctx)] == ctx
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
        targets = torch.tensor(full[len(ctx):])
        out.append(float(logprobs[len(ctx) - 1:-1].gather(1, targets[:, None]).sum()))
    return out


def test_multiple_choice_scores_the_choices_after_the_assistant_header(
        tmp_path, tiny_chat_model_dir, chat_model):
    model, tok = chat_model

    def logliks(item: QAItem, key: str) -> list[float]:
        context, _ = model_input(_prompt(item, key), tok, chat_template=True)
        return _choice_logliks(model, tok, context, item.choices)

    def best(lls: list[float]) -> int:
        return max(range(len(lls)), key=lls.__getitem__)

    # Answers set so that the rendered prompt's top choice is right on even items only.
    items = [QAItem(i.id, i.question, i.choices, (best(logliks(i, "mc")) + n % 2) % len(i.choices),
                    i.doc_id) for n, i in enumerate(ITEMS)]
    names = {"mc": write_mc_task(tmp_path, "facts", items),
             "mc_rag": write_mc_task(tmp_path, "facts", items, PASSAGES),
             "mc_fewshot": write_mc_task(tmp_path, "facts", items, examples=EXAMPLES)}
    scores = score_model(tiny_chat_model_dir, tmp_path, list(names.values()), batch_size=4,
                         chat_template=True)
    for key, task in names.items():
        for row, item in zip(scores[task], items, strict=True):
            assert row["acc"] == int(best(logliks(item, key)) == item.answer), (key, item.id)
    assert [r["acc"] for r in scores[names["mc"]]] == [1, 0, 1]
    # Latency answers the same rendered prompt, one question at a time.
    times = time_answers(model, tok, [{"prompt": _prompt(ITEMS[0], "mc"),
                                       "choices": ITEMS[0].choices}], "cpu", chat_template=True)
    assert len(times) == 1 and times[0] > 0


@pytest.fixture(scope="module")
def velmo_model(tiny_chat_model_dir, chat_model, tmp_path_factory):
    """The tiny chat model rewired to answer "Velmo" and end its turn, whatever it is asked.

    Every layer's output projections are zeroed, so the last hidden state is the current
    token's embedding and the head reads the next token off the current one: the newline that
    ends the assistant's header leads to Velmo's first token, each of its tokens to the next,
    the last to </s>, and </s> back to Velmo's first, so a model that did not stop at its end
    of turn would say Velmo again.
    """
    _, tok = chat_model
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, dtype=torch.float32).eval()
    header_end = tok(model_input("Q?", tok, True)[0], add_special_tokens=False)["input_ids"][-1]
    answer = tok("Velmo", add_special_tokens=False)["input_ids"]
    chain = [header_end, *answer, tok.eos_token_id]
    assert len(set(chain)) == len(chain)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_()
        head.zero_()
        for i, (current, following) in enumerate(zip(chain, [*chain[1:], answer[0]],
                                                      strict=True)):
            embed[current, i] = 1.0
            head[following, i] = 10.0
        after_eos = model(torch.tensor([[tok.eos_token_id]])).logits[0, -1].argmax()
    assert int(after_eos) == answer[0]  # it would talk on past its end of turn
    path = tmp_path_factory.mktemp("velmo_model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_generated_chat_answer_stops_at_the_end_of_turn_and_scores_exact_match(
        tasks, velmo_model):
    task_dir, names = tasks
    scores = score_model(velmo_model, task_dir, [names["open"], names["open_rag"]],
                         batch_size=2, chat_template=True)
    for task in (names["open"], names["open_rag"]):
        rows = scores[task]
        assert [r["prediction"] for r in rows] == ["Velmo"] * 3
        assert [r["exact_match"] for r in rows] == [1, 0, 0]
        assert rows[0]["f1"] == 1.0


@pytest.mark.slow
def test_lm_eval_cli_reproduces_the_chat_scores_question_by_question(
        tasks, tiny_chat_model_dir, tmp_path):
    """``lm_eval run --apply_chat_template --fewshot_as_multiturn false`` on the task dir the
    run wrote scores every question as ``score_model(..., chat_template=True)`` does."""
    task_dir, names = tasks
    ours = score_model(tiny_chat_model_dir, task_dir, [names["mc_rag"], names["open"]],
                       batch_size=4, chat_template=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
         "--model_args", f"pretrained={tiny_chat_model_dir},dtype=float32",
         "--tasks", f"{names['mc_rag']},{names['open']}", "--include_path", str(task_dir),
         "--apply_chat_template", "--fewshot_as_multiturn", "false",
         "--batch_size", "4", "--device", "cpu", "--log_samples",
         "--output_path", str(tmp_path / "out")],
        cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    for task, keys in ((names["mc_rag"], ("acc", "acc_norm")),
                       (names["open"], ("exact_match", "f1"))):
        (samples,) = (tmp_path / "out").glob(f"*/samples_{task}_*.jsonl")
        logged = sorted((json.loads(line) for line in samples.read_text().splitlines()),
                        key=lambda s: s["doc_id"])
        assert [s["doc"]["id"] for s in logged] == [r["id"] for r in ours[task]]
        for sample, row in zip(logged, ours[task], strict=True):
            assert {k: sample[k] for k in keys} == {k: row[k] for k in keys}, sample["doc"]


def test_an_arm_is_scored_and_timed_through_the_template_its_scoring_names(tasks, velmo_model):
    from tunearena.evaluation.arm import Arm
    from tunearena.evaluation.arms import ArmJob, Scoring, prompt_tokens, score_arm
    from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig

    task_dir, names = tasks
    evaluation = EvaluationConfig(benchmarks=[
        BenchmarkConfig(name="open", path="open.jsonl", kind="domain", track="generative")])
    scoring = Scoring.of(evaluation, task_dir, chat_template=True)
    assert scoring.chat_template
    timed = [{"prompt": _prompt(ITEMS[0], "open"), "choices": None}]
    job = ArmJob(Arm.parse("base"), str(velmo_model), {"open": names["open"]}, {"open": timed})
    result = score_arm(job, scoring, "cpu")
    assert [r["prediction"] for r in result["samples"]["open"]] == ["Velmo"] * 3
    assert len(result["answer_ms"]["open"]) == 1
    # Prompt lengths count what the model reads: the template's turns included.
    variants = {"open": {"": names["open"], "rag": names["open_rag"]}}
    chat = prompt_tokens(str(velmo_model), task_dir, variants, ["open"], chat_template=True)
    plain = prompt_tokens(str(velmo_model), task_dir, variants, ["open"])
    assert chat["open"][""] > plain["open"][""]
    assert chat["open"]["rag"] - chat["open"][""] == pytest.approx(
        plain["open"]["rag"] - plain["open"][""], abs=1)
