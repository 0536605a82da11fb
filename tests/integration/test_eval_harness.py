"""Real lm-eval on the tiny random Llama: per-question results, and what they measure."""

from __future__ import annotations

import socket

import pytest
import torch
from conftest import with_context

from tunearena.evaluation.benchmarks import QAItem
from tunearena.evaluation.harness import score_model
from tunearena.evaluation.prompt import ANSWER_DELIMITER, format_prompt
from tunearena.evaluation.tasks import write_mc_task

QUESTIONS = [
    ("What is the capital of Norland?", ["Velmo", "Tarrow", "Norland"]),
    ("Who designed the Orbit kettle?", ["Ana Ruiz", "Lumora", "Zephyr"]),
    ("What does the Zephyr lamp cost?", ["40 dollars", "blue", "kettles"]),
    ("Where is Lumora Systems?", ["Tarrow", "Velmo"]),
    ("What colour is the Zephyr lamp?", ["blue", "red", "green", "Velmo"]),
    ("What does Lumora Systems make?", ["lamps", "capital", "Orbit"]),
]
PASSAGES = {
    "q0": ["The capital of Norland is Velmo."],
    "q1": ["The Orbit kettle was designed by Ana Ruiz.", "Lumora Systems makes kettles."],
    "q2": ["The Zephyr lamp costs 40 dollars and comes in blue."],
    "q3": [],
    "q4": ["The Zephyr lamp costs 40 dollars and comes in blue."],
    "q5": ["Lumora Systems makes lamps, kettles and clocks in the city of Tarrow."],
}


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open an internet socket during the test."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _choice_logliks(model, tok, prompt: str, choices: list[str]) -> list[float]:
    """Sum of log p(choice tokens | prompt + delimiter), computed directly with the model."""
    context = tok(prompt)["input_ids"]
    out = []
    for choice in choices:
        full = tok(prompt + ANSWER_DELIMITER + choice)["input_ids"]
        assert full[: len(context)] == context  # the choice starts on a token boundary
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0].double()
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(full[len(context) :])
        out.append(float(logprobs[len(context) - 1 :].gather(1, targets[:, None]).sum()))
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _items_with_known_outcomes(model, tok) -> list[QAItem]:
    """Answers set so that the plain prompt's top choice is right on even items, wrong on odd."""
    items = []
    for i, (question, choices) in enumerate(QUESTIONS):
        lls = _choice_logliks(model, tok, format_prompt(question), choices)
        best = _argmax(lls)
        answer = best if i % 2 == 0 else (best + 1) % len(choices)
        items.append(QAItem(f"q{i}", question, choices, answer, doc_id=f"doc-{i // 2}"))
    return items


def test_score_model_matches_direct_loglikelihood(
    tmp_path, tiny_model_dir, model_and_tok, no_network
):
    model, tok = model_and_tok
    items = _items_with_known_outcomes(model, tok)
    plain = write_mc_task(tmp_path, "facts", items, None)
    # The document of each question's first passage (q3 retrieved nothing).
    top_docs = {q: f"doc-{q}" if p else None for q, p in PASSAGES.items()}
    rag = write_mc_task(tmp_path, "facts", items, PASSAGES, retrieved_docs=top_docs)

    scores = score_model(tiny_model_dir, tmp_path, [plain, rag], batch_size=4)

    assert set(scores) == {plain, rag}
    for task, passages in ((plain, None), (rag, PASSAGES)):
        rows = scores[task]
        assert [r["id"] for r in rows] == [item.id for item in items]
        for row, item in zip(rows, items, strict=True):
            keys = {"id", "acc", "acc_norm", "choice", "doc_id"}
            assert set(row) == (keys | {"retrieved_doc"} if passages else keys)
            assert row["doc_id"] == item.doc_id  # carried through lm-eval for clustered CIs
            if passages:
                assert row["retrieved_doc"] == top_docs[item.id]
            prompt = format_prompt(item.question, passages[item.id] if passages else ())
            lls = _choice_logliks(model, tok, prompt, item.choices)
            norm = [ll / len(c) for ll, c in zip(lls, item.choices, strict=True)]
            assert row["choice"] == _argmax(lls), (task, item.id, lls)
            assert row["acc"] == int(_argmax(lls) == item.answer), (task, item.id, lls)
            assert row["acc_norm"] == int(_argmax(norm) == item.answer), (task, item.id, norm)
    # By construction the plain task is right exactly on even items: the scorer discriminates.
    assert [r["acc"] for r in scores[plain]] == [1, 0, 1, 0, 1, 0]


def test_limit_scores_the_first_questions(tmp_path, tiny_model_dir, no_network):
    items = [QAItem(f"q{i}", q, c, 0) for i, (q, c) in enumerate(QUESTIONS)]
    task = write_mc_task(tmp_path, "facts", items, None)
    scores = score_model(tiny_model_dir, tmp_path, [task], limit=3)
    assert [r["id"] for r in scores[task]] == ["q0", "q1", "q2"]
    assert all(r["acc"] in (0, 1) and r["acc_norm"] in (0, 1) for r in scores[task])


def test_a_prompt_lm_eval_would_cut_is_refused_by_the_rule_measured_before_training(
        tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from tunearena.evaluation.context import PromptOverflowError, lengths, task_requests
    from tunearena.evaluation.tasks import task_rows

    items = [QAItem(f"q{i}", q, c, 0) for i, (q, c) in enumerate(QUESTIONS)]
    # ~700 tokens of context on q0 only.
    passages = {**PASSAGES, "q0": ["Lumora Systems makes lamps, kettles and clocks."] * 40}
    task = write_mc_task(tmp_path / "tasks", "facts", items, passages)
    needed = lengths(task_requests(task_rows(tmp_path / "tasks", task), 32),
                     AutoTokenizer.from_pretrained(tiny_model_dir))
    longest = needed["q0"]
    assert longest == max(needed.values()) > sorted(needed.values())[-2]
    # Exactly at the context, lm-eval cuts nothing and the harness scores every question.
    fits = with_context(tiny_model_dir, tmp_path / "fits", longest)
    scores = score_model(fits, tmp_path / "tasks", [task], batch_size=2)
    assert [r["id"] for r in scores[task]] == [item.id for item in items]
    # One token less and lm-eval would cut q0 from the left: refused, not scored.
    short = with_context(tiny_model_dir, tmp_path / "short", longest - 1)
    with pytest.raises(PromptOverflowError,
                       match=rf"task facts__rag: 1 of 6 prompts are longer than the model's "
                             rf"{longest - 1}-token context \(the longest {longest} tokens\)"):
        score_model(short, tmp_path / "tasks", [task], batch_size=2)


def test_unknown_task_name_is_an_error(tmp_path, tiny_model_dir):
    write_mc_task(tmp_path, "facts", [QAItem("q0", "Q?", ["a", "b"], 0)], None)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['fact'\].*found: \['facts'\]"):
        score_model(tiny_model_dir, tmp_path, ["fact"])
