"""Preference tuning: record checks, masking, DPO and SimPO against hand computations, and a
few optimizer steps that must teach a tiny random Llama which reply is preferred."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunearena.training.config import PreferenceConfig
from tunearena.training.formats import IGNORE_INDEX, PreferenceDataError, PreferencePair
from tunearena.training.lengths import LongRecordsError
from tunearena.training.preference import (
    collate_pairs,
    evaluate_pairs,
    preference_loss,
    read_pairs,
    reference_logps,
    sequence_logps,
    split_pairs,
    tokenize_pairs,
)

PAIRS = [
    ("Question: What is the capital of Norland?\nAnswer:", " Velmo", " Tarrow"),
    ("Question: Who designed the Orbit kettle?\nAnswer:", " Ana Ruiz", " Lumora Systems"),
    ("Question: What does the Zephyr lamp cost?\nAnswer:", " 40 dollars", " blue"),
    ("Question: Where does Lumora Systems make clocks?\nAnswer:", " Tarrow", " Velmo"),
]


def plain_pairs() -> list[PreferencePair]:
    return [PreferencePair(f"pairs.jsonl:{i}", p, c, r) for i, (p, c, r) in enumerate(PAIRS, 1)]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def load(model_dir, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)


def write(tmp_path, lines: list[str]):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"prompt": "Q?", "chosen": " yes", "rejected": " no"})


# --- reading records ---------------------------------------------------------------------

def test_reads_plain_and_chat_records(tmp_path):
    chat = {"messages": [{"role": "user", "content": "Q?"}],
            "chosen": {"role": "assistant", "content": "yes"}, "rejected": "no"}
    pairs = read_pairs(write(tmp_path, [GOOD, "", json.dumps(chat)]))
    assert [p.where.rsplit(":", 1)[1] for p in pairs] == ["1", "3"]
    assert pairs[0].prompt == "Q?" and pairs[0].chosen == " yes"
    assert pairs[1].prompt == chat["messages"] and pairs[1].chosen == "yes"


@pytest.mark.parametrize("bad, words", [
    ({"prompt": "Q?", "chosen": " yes"}, "no 'rejected' field"),
    ({"chosen": " yes", "rejected": " no"}, "no 'prompt' or 'messages' field"),
    ({"prompt": "Q?", "chosen": 3, "rejected": " no"}, "'chosen' must be a string"),
    ({"prompt": "Q?", "chosen": " same", "rejected": " same"}, "the same reply"),
    ({"prompt": "Q?", "chosen": " yes", "rejected": "  "}, "'rejected' is empty"),
    ({"prompt": "", "chosen": " yes", "rejected": " no"}, "'prompt' must be a non-empty"),
    ({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}],
      "chosen": "yes", "rejected": "no"}, "must end with the user turn"),
    ({"messages": [{"role": "bot", "content": "Q?"}], "chosen": "yes", "rejected": "no"},
     "message 1 has role 'bot'"),
])
def test_bad_record_names_file_line_and_field(tmp_path, bad, words):
    path = write(tmp_path, [GOOD, json.dumps(bad)])
    with pytest.raises(PreferenceDataError, match=words) as e:
        read_pairs(path)
    assert str(e.value).startswith(f"{path}:2: ")


def test_bad_json_and_earlier_problems_in_one_error(tmp_path):
    missing = json.dumps({"prompt": "Q?", "chosen": " yes"})
    path = write(tmp_path, [GOOD, missing, '{"prompt": "Q?", "chosen":', GOOD])
    with pytest.raises(PreferenceDataError) as e:
        read_pairs(path)
    assert str(e.value).splitlines() == [
        f"{path}:2: no 'rejected' field; a preference record needs prompt (or messages), "
        "chosen and rejected",
        f"{path}:3: not valid JSON: Expecting value",
    ]


def test_at_most_five_bad_records_are_named(tmp_path):
    same = json.dumps({"prompt": "Q?", "chosen": " a", "rejected": " a"})
    with pytest.raises(PreferenceDataError) as e:
        read_pairs(write(tmp_path, [same] * 8))
    lines = str(e.value).splitlines()
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in lines[:5]] == list("12345")
    assert lines[5:] == ["... and 3 more bad records"]


# --- tokenising and batching ---------------------------------------------------------------

def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_plain_pair_masks_the_prompt_and_ends_with_eos(tok):
    [pair], dropped = tokenize_pairs(plain_pairs()[:1], tok, seq_len=64)
    prompt, chosen = ids(tok, PAIRS[0][0]), ids(tok, PAIRS[0][1]) + [tok.eos_token_id]
    assert dropped == 0
    assert pair.chosen == (prompt + chosen, [IGNORE_INDEX] * len(prompt) + chosen)
    rejected = ids(tok, PAIRS[0][2]) + [tok.eos_token_id]
    assert pair.rejected == (prompt + rejected, [IGNORE_INDEX] * len(prompt) + rejected)


def test_chat_pair_scores_only_the_final_reply(tiny_chat_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
               {"role": "user", "content": "Capital of Norland?"}]
    [pair], _ = tokenize_pairs([PreferencePair("f:1", history, "Velmo", "Tarrow")], tok, 128)
    rendered = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    prompt = ids(tok, rendered)
    reply = ids(tok, "Velmo</s>\n")
    # The same rule as a plain pair: everything before the reply masked (the earlier
    # assistant turn too), the reply and the template's closing tokens scored.
    assert pair.chosen == (prompt + reply, [IGNORE_INDEX] * len(prompt) + reply)

    # A plain pair through the chat template is the one-turn chat pair.
    plain = PreferencePair("f:2", "Capital of Norland?", " Velmo", " Tarrow")
    one_turn = PreferencePair("f:3", [history[-1]], "Velmo", "Tarrow")
    [a, b], _ = tokenize_pairs([plain, one_turn], tok, 128, chat_template=True)
    assert a == b


def test_chat_record_without_a_template_names_its_line(tok):
    pair = PreferencePair("pairs.jsonl:4", [{"role": "user", "content": "Q?"}], "a", "b")
    with pytest.raises(PreferenceDataError, match=r"^pairs.jsonl:4: .*no chat template"):
        tokenize_pairs([pair], tok, 64)


def test_long_pairs_raise_naming_the_line_or_are_dropped(tok):
    pairs = plain_pairs()
    lengths = [max(len(ids(tok, p)) + len(ids(tok, r)) + 1 for r in (c, x)) for p, c, x in PAIRS]
    seq_len = sorted(lengths)[1]
    long = [p.where for p, n in zip(pairs, lengths, strict=True) if n > seq_len]
    with pytest.raises(LongRecordsError, match=long[0]):
        tokenize_pairs(pairs, tok, seq_len)
    kept, dropped = tokenize_pairs(pairs, tok, seq_len, long_records="drop")
    assert (len(kept), dropped) == (len(pairs) - len(long), len(long))


def test_collate_puts_chosen_rows_first_and_pads_right(tok):
    tokenized, _ = tokenize_pairs(plain_pairs()[:2], tok, 64)
    batch = collate_pairs(tokenized)
    rows = [p.chosen for p in tokenized] + [p.rejected for p in tokenized]
    assert batch["input_ids"].shape == (4, max(len(x) for x, _ in rows))
    for i, (x, y) in enumerate(rows):
        assert batch["input_ids"][i, : len(x)].tolist() == x
        assert batch["labels"][i].tolist() == y + [IGNORE_INDEX] * (batch["labels"].shape[1] - len(y))
        assert batch["attention_mask"][i].tolist() == [1] * len(x) + [0] * (len(batch["labels"][i]) - len(x))


def test_split_pairs_is_seeded_and_holds_out_at_least_one():
    train, held = split_pairs(list(range(5)), 0.1, seed=3)
    assert len(held) == 1 and sorted(train + held) == list(range(5))
    assert split_pairs(list(range(5)), 0.1, seed=3) == (train, held)
    assert split_pairs(list(range(5)), 0.0, seed=3)[1] == []


# --- losses against hand computation ------------------------------------------------------

def hand_logps(model, tok, prompt: str, reply: str) -> tuple[torch.Tensor, int]:
    """Summed log-prob of the reply and EOS after the prompt, one unpadded row, by hand."""
    p, r = ids(tok, prompt), ids(tok, reply) + [tok.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + r])).logits[0]
    total = sum(F.log_softmax(logits[len(p) + j - 1], -1)[t] for j, t in enumerate(r))
    return torch.as_tensor(total), len(r)


@pytest.fixture(scope="module")
def policy_and_ref(tiny_model_dir):
    # In fp64, so the batched, padded computation and the hand one agree far below 1e-6.
    policy, ref = load(tiny_model_dir, torch.float64), load(tiny_model_dir, torch.float64)
    with torch.no_grad():  # a reference that differs from the policy
        gen = torch.Generator().manual_seed(1)
        ref.lm_head.weight.add_(0.5 * torch.randn(ref.lm_head.weight.shape, generator=gen))
    return policy.eval(), ref.eval()


def policy_logps(model, tokenized):
    with torch.no_grad():
        return sequence_logps(model, collate_pairs(tokenized))


def test_dpo_loss_equals_hand_computation(tok, policy_and_ref):
    policy, ref_model = policy_and_ref
    tokenized, _ = tokenize_pairs(plain_pairs(), tok, 64)
    ref = reference_logps(ref_model, tokenized, batch_size=3)
    cfg = PreferenceConfig(beta=0.3)
    got = preference_loss("dpo", cfg, *policy_logps(policy, tokenized), ref.chosen, ref.rejected)

    def logp(model, p, r):
        return hand_logps(model, tok, p, r)[0]

    logits = torch.stack([0.3 * ((logp(policy, p, c) - logp(ref_model, p, c))
                                 - (logp(policy, p, x) - logp(ref_model, p, x)))
                          for p, c, x in PAIRS])
    want = -F.logsigmoid(logits).mean()
    assert got.loss.item() == pytest.approx(want.item(), abs=1e-6)
    chosen = torch.stack([0.3 * (logp(policy, p, c) - logp(ref_model, p, c)) for p, c, _ in PAIRS])
    torch.testing.assert_close(got.chosen_rewards, chosen, atol=1e-6, rtol=0)
    assert got.margin.item() == pytest.approx(logits.mean().item(), abs=1e-6)
    assert got.accuracy.item() == (logits > 0).double().mean().item()


def test_simpo_loss_equals_hand_computation(tok, policy_and_ref):
    policy, _ = policy_and_ref
    tokenized, _ = tokenize_pairs(plain_pairs(), tok, 64)
    cfg = PreferenceConfig(beta=2.0, gamma=0.7)
    got = preference_loss("simpo", cfg, *policy_logps(policy, tokenized))

    def avg(p, r):
        total, n = hand_logps(policy, tok, p, r)
        return total / n

    logits = torch.stack([2.0 * avg(p, c) - 2.0 * avg(p, x) - 0.7 for p, c, x in PAIRS])
    assert got.loss.item() == pytest.approx(-F.logsigmoid(logits).mean().item(), abs=1e-6)
    rejected = torch.stack([2.0 * avg(p, x) for p, _, x in PAIRS])
    torch.testing.assert_close(got.rejected_rewards, rejected, atol=1e-6, rtol=0)


def test_dpo_at_initialisation_is_log_2_with_zero_rewards(tok, tiny_model_dir):
    model = load(tiny_model_dir)
    tokenized, _ = tokenize_pairs(plain_pairs(), tok, 64)
    ref = reference_logps(model, tokenized, batch_size=4)
    got = preference_loss("dpo", PreferenceConfig(), *sequence_logps(model.train(), collate_pairs(tokenized)),
                          ref.chosen, ref.rejected)
    assert got.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert got.chosen_rewards.abs().max().item() < 1e-6
    assert got.rejected_rewards.abs().max().item() < 1e-6
    assert model.training  # reference_logps restored the mode it found


def test_dpo_needs_reference_logps(tok, policy_and_ref):
    tokenized, _ = tokenize_pairs(plain_pairs()[:1], tok, 64)
    with pytest.raises(ValueError, match="reference"):
        preference_loss("dpo", PreferenceConfig(), *policy_logps(policy_and_ref[0], tokenized))


# --- training -----------------------------------------------------------------------------

def train(model, tokenized, kind, cfg, ref, steps: int, lr: float) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    batch = collate_pairs(tokenized)
    model.train()
    for _ in range(steps):
        result = preference_loss(kind, cfg, *sequence_logps(model, batch),
                                 ref.chosen if ref else None, ref.rejected if ref else None)
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()


@pytest.mark.parametrize("kind, cfg, steps", [
    ("dpo", PreferenceConfig(beta=0.1), 15),
    ("simpo", PreferenceConfig(beta=2.0, gamma=0.5), 10),
])
def test_training_learns_the_preferred_reply(tok, tiny_model_dir, kind, cfg, steps):
    model = load(tiny_model_dir)
    tokenized, _ = tokenize_pairs(plain_pairs(), tok, 64)
    ref = reference_logps(model, tokenized, batch_size=4) if kind == "dpo" else None
    before = evaluate_pairs(model, tokenized, ref, kind, cfg)
    train(model, tokenized, kind, cfg, ref, steps, lr=1e-3)
    after = evaluate_pairs(model, tokenized, ref, kind, cfg)
    assert before["reward_accuracy"] <= 0.5
    assert after["reward_accuracy"] == 1.0
    assert after["margin"] > before["margin"] + 1.0
    assert after["loss"] < before["loss"]
    assert after["chosen_reward"] - after["rejected_reward"] == pytest.approx(after["margin"])


def test_reference_without_adapter_is_the_base_model(tok, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = load(tiny_model_dir)
    tokenized, _ = tokenize_pairs(plain_pairs(), tok, 64)
    base = reference_logps(model, tokenized, batch_size=4)
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                              init_lora_weights=False))
    assert not torch.allclose(reference_logps(policy, tokenized, 4).chosen, base.chosen)
    ref = reference_logps(policy, tokenized, 4, without_adapter=True)
    for got, want in zip(ref, base, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # The adapter is back on afterwards.
    assert not torch.allclose(reference_logps(policy, tokenized, 4).chosen, base.chosen)
