"""Build the demo's tiny base model from the seed: corpus, tokenizer, pretraining.

    python examples/demo_world/build_base.py            # rebuilds base_model/ bit for bit

The pretraining runs through tunearena's own trainer (Ray Train + DeepSpeed), exactly the
path fine-tuning takes. ``--reading-examples`` and ``--max-steps`` shrink it for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generate import SEED, write_jsonl  # noqa: E402
from world import general_corpus, make_world  # noqa: E402

# A Llama of about 1.1M parameters: big enough to memorise the world facts and learn to copy
# an answer out of its context, small enough to pretrain on two CPU cores in about 25 minutes.
ARCH = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
VOCAB_SIZE = 1024
PRETRAIN = dict(
    seq_len=256,
    packing=True,
    micro_batch_size=16,
    grad_accum_steps=1,
    lr=3e-3,
    min_lr_ratio=0.05,
    warmup_steps=50,
    weight_decay=0.01,
    grad_clip=1.0,
    zero_stage=2,
    precision="fp32",
    validation_fraction=0.01,
    eval_every_steps=200,
    log_every_steps=25,
)


def train_tokenizer(texts: list[str], out_dir: Path):
    """A byte-level BPE tokenizer trained on the corpus (no hub download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>", model_max_length=ARCH["max_position_embeddings"])
    hf.save_pretrained(out_dir)
    return hf


def init_model(tokenizer, out_dir: Path, seed: int) -> None:
    """A randomly initialised Llama, seeded, saved as the pretraining start point."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **ARCH)
    LlamaForCausalLM(config).save_pretrained(out_dir)


def weights_sha256(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def build(out: Path, seed: int, reading_examples: int, fact_repeats: int, epochs: float,
          max_steps: int | None, num_workers: int) -> dict:
    """Write a pretrained base model dir to ``out``; returns its build record."""
    from tunearena.cluster.config import ClusterConfig
    from tunearena.cluster.ray_cluster import ray_session
    from tunearena.training.config import DataPrepConfig, TrainingConfig
    from tunearena.training.trainer import run_stage

    world = make_world(seed)
    texts = general_corpus(world, reading_examples, fact_repeats, seed + 3)
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        write_jsonl(work / "corpus.jsonl", [{"text": t} for t in texts])
        tokenizer = train_tokenizer(texts, work / "init")
        init_model(tokenizer, work / "init", seed)
        # The corpus repeats its facts on purpose: cleaning must keep every record.
        keep_all = DataPrepConfig(deduplicate=False, near_duplicate_threshold=None,
                                  drop_garbled=False, leak_check="off")
        cfg = TrainingConfig(datasets=[{"path": work / "corpus.jsonl", "format": "text"}],
                             epochs=epochs, max_steps=max_steps, seed=seed, data_prep=keep_all,
                             **PRETRAIN)
        cluster = ClusterConfig(num_workers=num_workers, use_gpu=False)
        with ray_session(ClusterConfig(num_cpus=max(num_workers, 2))):
            summary = run_stage("pretrain", str(work / "init"), cfg, cluster,
                                work / "model", work / "ray")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(work / "model", out)
    record = {
        "seed": seed, "reading_examples": reading_examples, "fact_repeats": fact_repeats,
        "epochs": epochs, "max_steps": max_steps, "num_workers": num_workers, "arch": ARCH,
        "vocab_size": VOCAB_SIZE, "pretrain": PRETRAIN, "corpus_texts": len(texts),
        "steps": summary.steps, "final_train_loss": summary.final_train_loss,
        "final_val_loss": summary.final_val_loss, "train_s": summary.train_s,
        "weights_sha256": weights_sha256(out),
    }
    (out / "tunearena_export.json").unlink(missing_ok=True)
    (out / "build.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "base_model")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--reading-examples", type=int, default=16000)
    parser.add_argument("--fact-repeats", type=int, default=40)
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    record = build(args.out, args.seed, args.reading_examples, args.fact_repeats, args.epochs,
                   args.max_steps, args.num_workers)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
