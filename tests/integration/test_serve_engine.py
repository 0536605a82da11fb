"""The served engine answers as lm-eval scored: the same greedy answers to the same prompts,
batched or alone, whole or streamed, plain or through a chat template; and it says why an
answer ended and how long a prompt may be."""

from __future__ import annotations

import threading

import pytest
import torch

from tunearena.evaluation.benchmarks import QAItem
from tunearena.evaluation.harness import score_model
from tunearena.evaluation.tasks import MAX_ANSWER_TOKENS, write_generative_task
from tunearena.serve.arms import ServedArm
from tunearena.serve.engine import Answer, Engine, Sampling

QUESTIONS = ["What is the capital of Norland?", "Who designed the Orbit kettle?",
             "What does the Zephyr lamp cost?", "Where is Lumora Systems?",
             "What colour is the Zephyr lamp?", "What does Lumora Systems make?",
             "How tall is the Velmo tower?", "Who founded Lumora Systems in Tarrow?"]
SCORED = Sampling(MAX_ANSWER_TOKENS, stop=("\n",))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def lm_eval_predictions(model_dir, tmp_path, chat: bool) -> list[str]:
    items = [QAItem(id=f"q{i}", question=q, choices=["x"], answer=0)
             for i, q in enumerate(QUESTIONS)]
    task = write_generative_task(tmp_path, "quiz", items)
    rows = score_model(model_dir, tmp_path, [task], batch_size=4, chat_template=chat)[task]
    return [r["prediction"] for r in rows]


def streamed(engine: Engine, question: str, sampling: Sampling) -> tuple[list[str], Answer]:
    *pieces, answer = engine.stream(engine.render(question), sampling, threading.Event())
    assert isinstance(answer, Answer)
    return pieces, answer


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
def test_answers_equal_lm_evals_predictions_batched_alone_and_streamed(
        tmp_path, letters_model, tiny_chat_model_dir, chat):
    model_dir = tiny_chat_model_dir if chat else letters_model[0]
    expected = lm_eval_predictions(model_dir, tmp_path, chat)
    engine = Engine(ServedArm("base", str(model_dir), chat_template=chat))
    prompts = [engine.render(q) for q in QUESTIONS]
    batched = engine.generate([(p, SCORED) for p in prompts])
    assert [a.text for a in batched] == expected
    assert [engine.generate([(p, SCORED)])[0].text for p in prompts[:3]] == expected[:3]
    pieces, answer = streamed(engine, QUESTIONS[0], SCORED)
    assert "".join(pieces) == answer.text == expected[0]
    for a, p in zip(batched, prompts, strict=True):
        assert a.prompt_tokens == len(p.ids)
        if a.completion_tokens < MAX_ANSWER_TOKENS:  # ended before the length limit
            assert a.finish_reason == "stop"


def test_why_an_answer_ended_and_its_tokens(letters_model):
    engine = Engine(ServedArm("base", str(letters_model[0])))
    prompt = engine.render(QUESTIONS[1])
    # No stop string, 5 tokens: cut by length, 5 tokens counted.
    (cut,) = engine.generate([(prompt, Sampling(5))])
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 5)
    # The letters model writes words: stopping at a space ends after the first word.
    (word,) = engine.generate([(prompt, Sampling(20, stop=(" ",)))])
    longer = engine.generate([(prompt, Sampling(20))])[0].text
    assert word.finish_reason == "stop" and " " not in word.text
    assert longer.startswith(word.text) and len(longer) > len(word.text)
    assert 0 < word.completion_tokens < 20
    pieces, answer = streamed(engine, QUESTIONS[1], Sampling(20, stop=(" ",)))
    assert "".join(pieces) == answer.text == word.text and answer.finish_reason == "stop"
    # Different sampling settings in one batch are generated apart, each as asked.
    mixed = engine.generate([(prompt, Sampling(5)), (prompt, Sampling(20, stop=(" ",)))])
    assert [a.text for a in mixed] == [cut.text, word.text]
    # Seeded sampling repeats itself.
    hot = Sampling(12, temperature=1.5, seed=7)
    assert engine.generate([(prompt, hot)])[0].text == engine.generate([(prompt, hot)])[0].text


def test_a_prompt_that_leaves_no_room_says_by_how_much(letters_model):
    engine = Engine(ServedArm("base", str(letters_model[0])))
    prompt = engine.render("word " * 2000)
    error = engine.room_error(prompt, 32)
    over = len(prompt.ids) + 32 - engine.max_length
    assert error and f"{over} tokens too many" in error and str(engine.max_length) in error
    assert engine.room_error(engine.render("short"), 32) is None
    # Earlier turns become solved examples before the question, as format_prompt writes them.
    assert engine.render("Q2", [("Q1", "A1")]).text == (
        "Question: Q1\nAnswer: A1\n\nQuestion: Q2\nAnswer:")


def test_a_lora_arm_served_as_base_and_adapter_answers_as_its_merged_model(
        tmp_path, letters_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir, _, tok = letters_model
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    lora.merge_and_unload().save_pretrained(tmp_path / "merged")
    tok.save_pretrained(tmp_path / "merged")
    merged = Engine(ServedArm("ft", str(tmp_path / "merged")))
    stacked = Engine(ServedArm("ft", str(base_dir), adapter_dir=str(tmp_path / "adapter")))
    plain = Engine(ServedArm("base", str(base_dir)))

    def answers(engine: Engine) -> list[str]:
        return [a.text for a in engine.generate([(engine.render(q), SCORED)
                                                 for q in QUESTIONS])]

    assert answers(stacked) == answers(merged) != answers(plain)
