"""Real lm-eval on the tiny random Llama: the generative track, and named lm-eval tasks."""

from __future__ import annotations

import json

import pytest
import torch

from tunearena.evaluation.benchmarks import BenchmarkError, QAItem
from tunearena.evaluation.generative import exact_match, normalize_answer, token_f1
from tunearena.evaluation.harness import check_lm_eval_task, score_model
from tunearena.evaluation.prompt import format_prompt
from tunearena.evaluation.tasks import MAX_ANSWER_TOKENS, write_generative_task

QUESTIONS = [
    "What is the capital of Norland?",
    "Who designed the Orbit kettle?",
    "What does the Zephyr lamp cost?",
    "Where is Lumora Systems?",
    "What colour is the Zephyr lamp?",
    "What does Lumora Systems make?",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread for this module: on a tiny model, handing every small matmul to
    a second thread costs more than it saves, and on a busy two-core machine ten times more."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def _greedy_answer(model, tok, prompt: str, max_new_tokens: int = MAX_ANSWER_TOKENS) -> str:
    """The model's greedy continuation of ``prompt`` up to its first newline, unpadded."""
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return text.split("\n", 1)[0]


def test_exact_match_and_f1_through_lm_eval(tmp_path, letters_model):
    model_dir, model, tok = letters_model
    answers = [_greedy_answer(model, tok, format_prompt(q)) for q in QUESTIONS]
    assert all(normalize_answer(a) for a in answers), answers  # every answer has a word
    n_tokens = [len(tok(a)["input_ids"]) for a in answers]
    # Some answers stopped at a newline, others ran to the token limit.
    assert min(n_tokens) < MAX_ANSWER_TOKENS == max(n_tokens), answers
    # Even items: the gold is the model's own answer. Odd items: its first word and another,
    # so exact match is 0 and F1 strictly between 0 and 1.
    golds = [
        a if i % 2 == 0 else f"{normalize_answer(a).split()[0]} zzz" for i, a in enumerate(answers)
    ]
    items = [
        QAItem(f"q{i}", q, answers=(g,), doc_id=f"doc-{i // 2}")
        for i, (q, g) in enumerate(zip(QUESTIONS, golds, strict=True))
    ]
    task = write_generative_task(tmp_path, "facts", items)

    # batch_size 4: a padded batch of four, then one of two, against unpadded generations.
    rows = score_model(model_dir, tmp_path, [task], batch_size=4)[task]

    assert [r["id"] for r in rows] == [item.id for item in items]
    assert [r["prediction"] for r in rows] == answers
    assert [r["exact_match"] for r in rows] == [1, 0, 1, 0, 1, 0]
    for row, gold in zip(rows, golds, strict=True):
        assert set(row) == {"id", "exact_match", "f1", "prediction", "doc_id"}
        assert row["exact_match"] == exact_match(row["prediction"], [gold])
        assert row["f1"] == pytest.approx(token_f1(row["prediction"], [gold]))
    assert [r["f1"] for r in rows[::2]] == [1.0, 1.0, 1.0]
    assert all(0 < r["f1"] < 1 for r in rows[1::2])
    assert [r["doc_id"] for r in rows] == [item.doc_id for item in items]


def test_prompts_that_leave_no_room_for_the_answer_are_refused(tmp_path, letters_model):
    from tunearena.evaluation.context import PromptOverflowError, lengths, task_requests
    from tunearena.evaluation.tasks import MAX_ANSWER_TOKENS, task_rows

    model_dir, _, tok = letters_model
    items = [QAItem(f"q{i}", q, answers=("x",)) for i, q in enumerate(QUESTIONS[:2])]
    # On q0, a prompt that fits the 256-token window but not with the answer's 32 tokens.
    passages = {"q0": ["Lumora Systems makes lamps, kettles and clocks."] * 3
                + ["Velmo is the capital."], "q1": []}
    prompt = len(tok(format_prompt(QUESTIONS[0], passages["q0"]))["input_ids"])
    assert 256 - 32 < prompt <= 256, prompt
    task = write_generative_task(tmp_path, "facts", items, passages)
    # The check before training counts the answer's room as lm-eval does.
    assert lengths(task_requests(task_rows(tmp_path, task), MAX_ANSWER_TOKENS), tok) == {
        "q0": prompt + 32, "q1": len(tok(format_prompt(QUESTIONS[1]))["input_ids"]) + 32}
    with pytest.raises(PromptOverflowError, match=r"task facts__rag: 1 of 2 prompts are longer "
                                                  r"than the model's 256-token context"):
        score_model(model_dir, tmp_path, [task])


@pytest.fixture(scope="module")
def quiz_folder(tmp_path_factory):
    """A task folder as lm-eval's registry writes them: Jinja prompt, its own field names."""
    folder = tmp_path_factory.mktemp("my_tasks")
    docs = [
        {"id": "cap-7", "question": "What is the capital of Norland?",
         "options": ["Velmo", "Tarrow", "Norland"], "label": 0},
        {"id": "cap-3", "question": "Where is Lumora Systems?",
         "options": ["Tarrow", "Velmo"], "label": 0},
        {"id": "cap-1", "question": "What colour is the Zephyr lamp?",
         "options": ["blue", "red", "green"], "label": 2},
    ]  # fmt: skip
    (folder / "quiz.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "quiz.yaml").write_text(
        "task: capitals_quiz\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'quiz.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{options}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    (folder / "recall.yaml").write_text(
        "task: capitals_recall\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'quiz.jsonl'}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_target: "{{options[label]}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  do_sample: false\n  max_gen_toks: 8\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (folder / "ppl.yaml").write_text(
        "task: quiz_perplexity\ndataset_path: json\ntest_split: test\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'quiz.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: question\n"
        "metric_list:\n  - metric: bits_per_byte\n    aggregation: bits_per_byte\n"
        "    higher_is_better: false\n"
    )
    # A group, as mmlu is one: two tasks scored as one benchmark.
    (folder / "quiz2.yaml").write_text(
        (folder / "quiz.yaml").read_text().replace("task: capitals_quiz", "task: capitals_quiz2")
    )
    (folder / "suite.yaml").write_text(
        "group: quiz_suite\ntask:\n  - capitals_quiz\n  - capitals_quiz2\n"
        "aggregate_metric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    weight_by_size: true\nmetadata:\n  version: 1.0\n"
    )
    return folder, docs


def _choice_logliks(model, tok, prompt: str, choices: list[str]) -> list[float]:
    """Sum of log p(" " + choice | prompt), computed directly with the model."""
    context = tok(prompt)["input_ids"]
    out = []
    for choice in choices:
        full = tok(f"{prompt} {choice}")["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0, :-1].double(), -1)
        targets = torch.tensor(full[len(context) :])
        out.append(float(logprobs[len(context) - 1 :].gather(1, targets[:, None]).sum()))
    return out


def test_named_tasks_from_a_task_folder(tmp_path, letters_model, quiz_folder):
    model_dir, model, tok = letters_model
    folder, docs = quiz_folder
    assert check_lm_eval_task("capitals_quiz", [folder], include_defaults=False) == (
        "multiple_choice"
    )
    assert check_lm_eval_task("capitals_recall", [folder], include_defaults=False) == (
        "generate_until"
    )
    names = ["capitals_quiz", "capitals_recall"]
    scores = score_model(model_dir, tmp_path, names, batch_size=4, extra_task_paths=[folder])

    # The document's index, not its own "id" field, names the question.
    prompts = [f"Question: {doc['question']}\nAnswer:" for doc in docs]
    for i, (row, doc, prompt) in enumerate(
        zip(scores["capitals_quiz"], docs, prompts, strict=True)
    ):
        lls = _choice_logliks(model, tok, prompt, doc["options"])
        best = max(range(len(lls)), key=lls.__getitem__)
        assert row == {"id": str(i), "acc": int(best == doc["label"]), "acc_norm": None,
                       "choice": best, "doc_id": None}  # fmt: skip
    # A generate-until task keeps its own metrics (here lm-eval's exact_match, unnormalised).
    for i, (row, doc, prompt) in enumerate(
        zip(scores["capitals_recall"], docs, prompts, strict=True)
    ):
        prediction = _greedy_answer(model, tok, prompt, max_new_tokens=8)
        expected = float(prediction == doc["options"][doc["label"]])
        assert row == {"id": str(i), "prediction": prediction, "exact_match": expected,
                       "doc_id": None}  # fmt: skip


def test_check_lm_eval_task_refuses_clearly(quiz_folder):
    folder, _ = quiz_folder
    with pytest.raises(
        BenchmarkError, match=r"unknown lm-eval task 'capital_quiz'.*'capitals_quiz'"
    ):
        check_lm_eval_task("capital_quiz", [folder], include_defaults=False)
    with pytest.raises(BenchmarkError, match=r"task folder\(s\) not found: .*nope"):
        check_lm_eval_task("capitals_quiz", [folder / "nope"], include_defaults=False)
    # score_model refuses an unknown name before it loads any model.
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['capital_quiz'\]"):
        score_model(folder / "no_model", folder, ["capital_quiz"], extra_task_paths=[folder])


def test_a_group_and_bits_per_byte_by_name(tmp_path, letters_model, quiz_folder):
    model_dir, model, tok = letters_model
    folder, docs = quiz_folder
    assert check_lm_eval_task("quiz_suite", [folder], include_defaults=False) == "multiple_choice"
    assert check_lm_eval_task("quiz_perplexity", [folder], include_defaults=False) == (
        "loglikelihood_rolling")
    scores = score_model(model_dir, tmp_path, ["quiz_suite", "quiz_perplexity"], batch_size=4,
                         extra_task_paths=[folder])
    # The group is its tasks' questions one after the other, named by task.
    single = score_model(model_dir, tmp_path, ["capitals_quiz"], batch_size=4,
                         extra_task_paths=[folder])["capitals_quiz"]
    assert [r["id"] for r in scores["quiz_suite"]] == [
        f"{task}/{i}" for task in ("capitals_quiz", "capitals_quiz2") for i in range(3)]
    assert [r["acc"] for r in scores["quiz_suite"]] == [r["acc"] for r in single] * 2
    # Per document: its log-likelihood (every token, after the prefix token) and its bytes.
    for row, doc in zip(scores["quiz_perplexity"], docs, strict=True):
        text = doc["question"]
        assert row["bytes"] == len(text.encode("utf-8")) and row["doc_id"] is None
        ids = tok(text, add_special_tokens=False)["input_ids"]
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        full = torch.tensor([[prefix, *ids]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(full).logits[0, :-1].double(), -1)
        expected = float(logprobs.gather(1, full[0, 1:, None]).sum())
        assert row["loglikelihood"] == pytest.approx(expected, rel=1e-4)


def test_registry_task_without_local_data_is_refused_indexing_the_registry_once(monkeypatch):
    import lm_eval.tasks

    from tunearena.evaluation import harness

    indexed = []

    class CountingTaskManager(lm_eval.tasks.TaskManager):
        """lm-eval's own TaskManager; each one built indexes the registry's task files."""

        def __init__(self, *args, **kwargs):
            indexed.append(kwargs.get("include_defaults", True))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", CountingTaskManager)
    # Start from no index, whatever earlier tests left cached.
    harness._cached_task_manager.cache_clear()
    # hellaswag's data is on the hub; offline, with no local copy, it cannot be read.
    with pytest.raises(BenchmarkError, match=r"'hellaswag': its data is not reachable.*offline"):
        check_lm_eval_task("hellaswag", [], include_defaults=True)
    with pytest.raises(
        BenchmarkError, match=r"unknown lm-eval task 'helaswag'.*did you mean 'hellaswag'"
    ):
        check_lm_eval_task("helaswag", [], include_defaults=True)
    with pytest.raises(BenchmarkError, match=r"'wikitext': its data is not reachable"):
        check_lm_eval_task("wikitext", [], include_defaults=True)
    # Three names checked, the registry indexed once: later calls reuse the index.
    assert indexed == [True]
