"""Shared fixtures: a tiny, randomly initialised Llama with a locally trained tokenizer."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

TINY_TEXT = [
    "The capital of Norland is Velmo.",
    "Question: What is the capital of Norland?\nAnswer: Velmo",
    "The Zephyr lamp costs 40 dollars and comes in blue.",
    "Context: The Orbit kettle was designed by Ana Ruiz.\nQuestion: Who designed the Orbit kettle?\nAnswer: Ana Ruiz",
    "Lumora Systems makes lamps, kettles and clocks in the city of Tarrow.",
] * 4


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
"""ChatML-like, with the tiny tokenizer's <s> and </s> opening and closing every turn (so a
reply ends on the EOS)."""


def make_tiny_model_dir(path: Path, seed: int = 0, vocab_size: int = 256,
                        chat_template: str | None = None) -> Path:
    """Write a random 2-layer Llama and a byte-level BPE tokenizer trained on TINY_TEXT,
    with ``chat_template`` in its tokenizer config when given."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TINY_TEXT, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat_template is not None:
        hf_tok.chat_template = chat_template
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def with_context(model_dir: Path, out: Path, positions: int) -> Path:
    """A copy of ``model_dir`` whose config gives ``positions`` tokens of context (Llama's
    rotary embeddings have no position table, so the weights still fit)."""
    import json
    import shutil

    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": positions}))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama model dir (safetensors + tokenizer), made once per session."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> Path:
    """The tiny model dir (same weights and vocabulary) with ``TINY_CHAT_TEMPLATE``."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_chat_model"),
                               chat_template=TINY_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """The tiny model's tokenizer, loaded once per session."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory) -> Path:
    """TINY_TEXT as a ``text``-format training file."""
    import json

    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_TEXT), encoding="utf-8")
    return path


@contextmanager
def local_ray(dashboard: bool = False) -> Iterator[str]:
    """A local Ray instance with two CPUs (with its dashboard, whose State API Ray Train's
    placement-group cleaner uses, when ``dashboard``); yields its GCS address.

    ``address="local"`` always starts a new instance, never joining one left running.
    """
    import ray

    from tunearena.cluster.quiet import WORKER_SETUP_HOOK

    ray.init(address="local", num_cpus=2, include_dashboard=dashboard, log_to_driver=True,
             runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    """``local_ray`` for one test module."""
    with local_ray() as address:
        yield address


@pytest.fixture(scope="module")
def letters_model(tiny_model_dir, tmp_path_factory):
    """The tiny random Llama, made to write words: lower-case letters, spaces, newlines.

    Every other token gets a zero output row (logit 0, below the best of the 28 kept), and
    a space takes the place of "q" and a newline that of "n" (their rows copied, scaled by
    1.01), so answers have several words and some stop early. Returns (dir, model, tok).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    writable = torch.tensor(
        [bool(re.fullmatch(r"[a-z ]|\n", tok.decode([t]))) for t in range(len(tok))]
    )
    assert int(writable.sum()) == 28
    with torch.no_grad():
        rows = model.lm_head.weight
        rows[~writable] = 0.0
        for char, replaced in ((" ", "q"), ("\n", "n")):
            rows[tok.encode(char)[0]] = 1.01 * rows[tok.encode(replaced)[0]]
    path = tmp_path_factory.mktemp("letters_model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok
