"""Training throughput of tunearena's Ray + DeepSpeed path on a Llama-shaped model, and MFU.

    python bench/train_throughput.py --preset 1b --seq-len 2048 --micro-batch 4 --steps 30
    # a sweep (every combination, one table), keeping the random model between runs:
    python bench/train_throughput.py --preset 1b --seq-len 2048 --compile --steps 20 \
        --model-dir /tmp/llama-1b --zero-stage 1 2 --micro-batch 16 24

Builds a randomly initialised Llama of the chosen size (a locally trained byte-level BPE
tokenizer, random-word text; nothing downloaded), trains it through ``run_stage`` and prints
steady-state tokens/s (log windows after the first, so start-up and the first step are left
out), time to first step, and on CUDA the model FLOPs utilisation, counted as training
does (``tunearena.training.throughput``: 6 x params per token for full fine-tuning, the
GPU's dense bf16 peak from its name, e.g. 989 TFLOP/s for an H100 SXM).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
from pathlib import Path

PRESETS = {
    # ~1.1B parameters, TinyLlama-like shape (vocab 32000 as in Llama 2).
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=1024),
}


def make_model_dir(out: Path, arch: dict, seq_len: int) -> None:
    """A random Llama of shape ``arch`` and its tokenizer in ``out``, unless already there."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(max_position_embeddings=seq_len, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False, **arch)
    if (out / "model.safetensors").is_file():
        existing = LlamaConfig.from_pretrained(out)
        if all(getattr(existing, k) == v for k, v in arch.items()) and \
                existing.max_position_embeddings >= seq_len:
            return
    # A word-level vocabulary of random words: every word is one token, so token counts are exact.
    words = [f"w{i}" for i in range(arch["vocab_size"] - 3)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>")
    hf.save_pretrained(out)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)


def run_one(args: argparse.Namespace, model_dir: Path, work: Path, zero_stage: int,
            micro_batch: int) -> dict:
    """Train one configuration through ``run_stage``; its steady-state figures."""
    import torch

    from tunearena.cluster.config import ClusterConfig
    from tunearena.training.config import TrainingConfig
    from tunearena.training.throughput import flops_per_token, peak_tflops
    from tunearena.training.trainer import run_stage

    vocab_size = PRESETS[args.preset]["vocab_size"]
    rng = random.Random(0)
    n_seqs = micro_batch * args.grad_accum * args.workers * (args.steps + 1)
    with (work / "text.jsonl").open("w") as f:
        for _ in range(n_seqs):
            text = " ".join(f"w{rng.randrange(vocab_size - 3)}" for _ in range(args.seq_len))
            f.write(json.dumps({"text": text}) + "\n")
    cfg = TrainingConfig(datasets=[{"path": work / "text.jsonl"}], seq_len=args.seq_len,
                         micro_batch_size=micro_batch, grad_accum_steps=args.grad_accum,
                         max_steps=args.steps, zero_stage=zero_stage, validation_fraction=0.0,
                         log_every_steps=5, eval_every_steps=10**6, lr=1e-4,
                         method=args.method,
                         gradient_checkpointing=args.gradient_checkpointing,
                         compile=args.compile)
    name = f"z{zero_stage}-mb{micro_batch}"
    summary = run_stage(name, str(model_dir), cfg, ClusterConfig(num_workers=args.workers),
                        work / name, work / "ray")
    windows = [h for h in summary.history if "tokens_per_s" in h][1:]
    steady = sum(h["tokens_per_s"] for h in windows) / max(len(windows), 1)
    gpus = torch.cuda.device_count()
    result = {
        "preset": args.preset, "params": summary.parameters, "seq_len": args.seq_len,
        "micro_batch_size": micro_batch, "grad_accum_steps": args.grad_accum,
        "workers": args.workers, "zero_stage": zero_stage, "method": args.method,
        "gradient_checkpointing": args.gradient_checkpointing, "compile": args.compile,
        "bf16": summary.bf16, "steps": summary.steps,
        "steady_tokens_per_s": steady, "time_to_first_step_s": summary.time_to_first_step_s,
        "peak_gpu_memory_mb": summary.peak_gpu_memory_mb,
        "device": torch.cuda.get_device_name(0) if gpus else "cpu",
    }
    peak = args.peak_tflops or peak_tflops(result["device"])
    if gpus and peak:
        per_token = flops_per_token(summary.parameters, summary.trainable_parameters)
        result["mfu"] = per_token * steady / (peak * 1e12 * args.workers)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[8])
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--zero-stage", type=int, nargs="+", default=[2])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's bf16 peak")
    parser.add_argument("--model-dir", type=Path,
                        help="keep the random model here and reuse it (default: a temp dir)")
    parser.add_argument("--json-out", type=Path, help="one JSON line per configuration")
    args = parser.parse_args()

    import ray
    import torch

    from tunearena.cluster.quiet import WORKER_SETUP_HOOK

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or work / "model"
        make_model_dir(model_dir, PRESETS[args.preset], args.seq_len)
        ray.init(address="local", num_cpus=max(2, args.workers),
                 num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK})
        try:
            for zero_stage, micro_batch in itertools.product(args.zero_stage, args.micro_batch):
                try:
                    result = run_one(args, model_dir, work, zero_stage, micro_batch)
                except Exception as e:  # e.g. out of memory: the sweep goes on
                    result = {"zero_stage": zero_stage, "micro_batch_size": micro_batch,
                              "error": f"{type(e).__name__}: {str(e)[:300]}"}
                print(json.dumps(result, indent=1), flush=True)
                results.append(result)
                if args.json_out:
                    with args.json_out.open("a") as f:
                        f.write(json.dumps(result) + "\n")
        finally:
            ray.shutdown()
    print("\nzero  micro  accum  ckpt  compile  tokens/s   MFU    peak GiB")
    for r in results:
        if "error" in r:
            print(f"{r['zero_stage']:>4}  {r['micro_batch_size']:>5}  failed: {r['error'][:80]}")
            continue
        mem = r["peak_gpu_memory_mb"]
        print(f"{r['zero_stage']:>4}  {r['micro_batch_size']:>5}  {r['grad_accum_steps']:>5}  "
              f"{r['gradient_checkpointing']!s:>4}  {r['compile']!s:>7}  "
              f"{r['steady_tokens_per_s']:>8.0f}  {r.get('mfu', float('nan')):>5.1%}  "
              f"{'' if mem is None else f'{mem / 1024:8.1f}'}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
