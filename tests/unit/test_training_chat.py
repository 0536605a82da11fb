"""Chat training data: record checks, assistant-only loss masks through a chat template."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_training_data import prepare_splits  # the stage's route, cleaning off
from transformers import AutoTokenizer

from tunearena.training.config import DatasetConfig
from tunearena.training.data import (
    IGNORE_INDEX,
    DataError,
    tokenize_record,
)
from tunearena.training.prepare import read_jsonl

# ChatML-like, with the tiny tokenizer's <s> and </s> opening and closing every turn.
CHATML = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
CLOSE = "</s>\n"
"""What the template writes after a turn's content; labelled on assistant turns."""

def load_tokenizer(model_dir: Path, chat_template: str | None = CHATML):
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def labelled_runs(labels: list[int] | np.ndarray) -> list[list[int]]:
    """The contiguous runs of labels that carry loss."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(int(label))
        previous = label
    return runs


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


# --- read_jsonl ----------------------------------------------------------------------------


def test_read_jsonl_accepts_chat_records(tmp_path):
    records = [
        {"messages": [user("Capital of Norland?"), assistant("Velmo")]},
        {"messages": [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hi")]},
    ]
    assert read_jsonl(write_jsonl(tmp_path / "c.jsonl", records), "chat") == records


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"text": "x"}, "format 'chat' needs a non-empty list 'messages'"),
        ({"messages": []}, "format 'chat' needs a non-empty list 'messages'"),
        ({"messages": "hello"}, "format 'chat' needs a non-empty list 'messages'"),
        ({"messages": [user("Q"), "A"]}, "message 2 is not an object with 'role' and 'content'"),
        (
            {"messages": [user("Q"), {"role": "bot", "content": "A"}]},
            "message 2 has role 'bot'; expected one of system, user, assistant",
        ),
        (
            {"messages": [{"content": "Q"}, assistant("A")]},
            "message 1 has role None; expected one of system, user, assistant",
        ),
        ({"messages": [user(""), assistant("A")]}, "message 1 needs a non-empty string 'content'"),
        (
            {"messages": [user("Q"), {"role": "assistant", "content": 3}]},
            "message 2 needs a non-empty string 'content'",
        ),
        (
            {"messages": [user("Q"), user("Q again")]},
            "no message has role 'assistant', so the record teaches nothing",
        ),
        (
            {"messages": [assistant("Hello!"), user("Q"), assistant("A")]},
            "message 1 has role 'assistant'; a conversation opens with a system or user message",
        ),
    ],
)
def test_bad_chat_record_names_file_line_and_problem(tmp_path, record, problem):
    good = {"messages": [user("Q"), assistant("A")]}
    path = tmp_path / "train.jsonl"
    # The blank line counts: the bad record is on line 3.
    path.write_text(f"{json.dumps(good)}\n\n{json.dumps(record)}\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_jsonl(path, "chat")
    assert str(exc.value) == f"{path}:3: {problem}"


# --- tokenize_record -----------------------------------------------------------------------


def test_chat_labels_exactly_the_assistant_turn(tokenizer):
    record = {"messages": [user("What is the capital of Norland?"), assistant("Velmo")]}
    ids, labels = tokenize_record(record, "chat", tokenizer)
    prompt_text = "<s>user\nWhat is the capital of Norland?</s>\n<s>assistant\n"
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    reply = tokenizer("Velmo" + CLOSE, add_special_tokens=False)["input_ids"]
    assert len(prompt) > 1 and len(reply) > 1
    assert ids == prompt + reply
    assert labels == [IGNORE_INDEX] * len(prompt) + reply
    # The closing </s> is learned, so the model learns to stop; no EOS is appended after it.
    assert decode(tokenizer, labels[len(prompt) :]) == "Velmo" + CLOSE
    assert ids.count(tokenizer.bos_token_id) == 2


def test_chat_labels_every_assistant_turn_and_nothing_else(tokenizer):
    messages = [
        {"role": "system", "content": "Answer in one word."},
        user("What is the capital of Norland?"),
        assistant("Velmo"),
        user("Who designed the Orbit kettle?"),
        assistant("Ana Ruiz"),
        user("Thanks."),
    ]
    ids, labels = tokenize_record({"messages": messages}, "chat", tokenizer)
    assert len(ids) == len(labels)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert decode(tokenizer, ids) == rendered
    # Wherever a label carries loss it is the input token itself (the model shifts it).
    lossy = [i for i, y in enumerate(labels) if y != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in lossy)
    runs = labelled_runs(labels)
    assert [decode(tokenizer, run) for run in runs] == ["Velmo" + CLOSE, "Ana Ruiz" + CLOSE]
    # What carries no loss is every system and user turn and both generation prompts.
    unlabelled = [t for t, y in zip(ids, labels, strict=True) if y == IGNORE_INDEX]
    assert decode(tokenizer, unlabelled) == (
        "<s>system\nAnswer in one word.</s>\n"
        "<s>user\nWhat is the capital of Norland?</s>\n<s>assistant\n"
        "<s>user\nWho designed the Orbit kettle?</s>\n<s>assistant\n"
        "<s>user\nThanks.</s>\n"
    )


def test_chat_keeps_the_templates_single_bos(tiny_model_dir):
    # A Llama-3-like template: BOS once as text, </s> closing the replies only.
    template = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    tok = load_tokenizer(tiny_model_dir, template)
    messages = [user("Capital of Norland?"), assistant("Velmo")]
    ids, labels = tokenize_record({"messages": messages}, "chat", tok)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert decode(tok, ids) == "<s>[user] Capital of Norland?[assistant] Velmo</s>"
    assert [decode(tok, run) for run in labelled_runs(labels)] == ["Velmo</s>"]


def test_chat_without_a_template_says_how_to_fix_it(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir, chat_template=None)
    record = {"messages": [user("Q"), assistant("A")]}
    with pytest.raises(DataError) as exc:
        tokenize_record(record, "chat", tok)
    message = str(exc.value)
    assert "the model's tokenizer has no chat template" in message
    assert "format 'instruction'" in message
    assert "tokenizer_config.json" in message and "chat_template.jinja" in message
    # Through prepare_splits the error names the dataset and comes before any record is read.
    path = write_jsonl(tmp_path / "c.jsonl", [record, {"messages": []}])
    with pytest.raises(DataError, match=rf"^{path}: format 'chat': the model's tokenizer has no"):
        prepare_splits([DatasetConfig(path=path, format="chat")], tok, 16, True, 0.0, seed=0)


@pytest.mark.parametrize(
    "template",
    [
        # Earlier replies are rendered shorter than the last one (as thinking models do).
        "{% for m in messages %}<s>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}"
        "{% endif %}</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}",
        # The generation prompt is not how a reply opens in the rendered conversation.
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>bot\n{% endif %}",
    ],
    ids=["rewrites-earlier-turns", "different-generation-prompt"],
)
def test_chat_template_that_is_not_prefix_consistent_raises(tiny_model_dir, template):
    tok = load_tokenizer(tiny_model_dir, template)
    messages = [user("Q1"), assistant("Velmo"), user("Q2"), assistant("Ana Ruiz")]
    with pytest.raises(DataError, match="chat template is not prefix-consistent at message 2"):
        tokenize_record({"messages": messages}, "chat", tok)


# --- prepare_splits ------------------------------------------------------------------------


CONVERSATIONS = [
    [user(f"Question {i}: what is the capital of Norland?"), assistant("Velmo")]
    + ([user("And who designed the Orbit kettle?"), assistant("Ana Ruiz")] if i % 2 else [])
    for i in range(12)
]


@pytest.mark.parametrize("packing", [True, False])
def test_prepare_splits_on_chat_learns_only_assistant_tokens(tmp_path, tokenizer, packing):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CONVERSATIONS])
    replies = [m["content"] + CLOSE for conv in CONVERSATIONS for m in conv[1::2]]
    rendered = [tokenizer.apply_chat_template(conv, tokenize=False) for conv in CONVERSATIONS]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in rendered]
    total_tokens = sum(lengths)
    # One packed row of exactly every token, or one padded row a conversation: nothing dropped.
    seq_len = total_tokens if packing else max(lengths)
    train, val = prepare_splits(
        [DatasetConfig(path=path, format="chat")], tokenizer, seq_len, packing, 0.0, seed=0
    )
    assert val is None
    assert len(train) == (1 if packing else len(CONVERSATIONS))
    assert train.attention_mask.sum() == total_tokens
    assert train.loss_tokens == sum(
        len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies
    )
    lossy = train.labels != IGNORE_INDEX
    assert np.array_equal(train.labels[lossy], train.input_ids[lossy])
    runs = [run for row in train.labels for run in labelled_runs(row)]
    assert sorted(decode(tokenizer, run) for run in runs) == sorted(replies)


def test_tokenizer_check_round_trips_eos_and_a_chat_reply(tiny_model_dir):
    from tunearena.training.data import check_tokenizer

    plain = load_tokenizer(tiny_model_dir, None)
    assert check_tokenizer(plain, {"text", "instruction"}, set()).ok
    no_template = check_tokenizer(plain, {"chat"}, set())
    assert not no_template.ok and "no chat template" in no_template.detail
    # CHATML closes a reply with </s> and a newline: </s> is the EOS, so generation stops.
    chatml = check_tokenizer(load_tokenizer(tiny_model_dir), {"chat"}, set())
    assert chatml.ok and "chat reply ends on a stop token" in chatml.detail
    # A template closing replies with a blank line teaches an ending generation ignores.
    blank = load_tokenizer(tiny_model_dir, CHATML.replace("</s>\n{% endfor %}", "\n\n{% endfor %}"))
    ends = check_tokenizer(blank, {"chat"}, set())
    assert not ends.ok and "which generation does not stop on" in ends.detail
    assert "generation_config.json" in ends.fix
    # Unless generation is told to stop on it.
    newline = blank("\n\n", add_special_tokens=False)["input_ids"][-1]
    assert check_tokenizer(blank, {"chat"}, {newline}).ok


def test_tokenizer_check_needs_an_eos(tiny_model_dir):
    from tunearena.training.data import check_tokenizer

    tok = load_tokenizer(tiny_model_dir, None)
    tok.eos_token = None
    check = check_tokenizer(tok, {"text"}, set())
    assert not check.ok and "no EOS token" in check.detail and "eos_token" in check.fix
