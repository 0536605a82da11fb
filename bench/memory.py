"""Preflight's memory estimate against each worker's measured peak resident memory.

    python bench/memory.py                                   # SmolLM2 LoRA and full, 2 workers
    python bench/memory.py --shapes smollm2-lora --buckets sized default --steps 3

Trains each shape for a few steps through ``run_stage`` (tunearena's own path: Ray Train
workers, DeepSpeed on gloo, fp32 on CPU) on a local Ray instance, and reads every rank's peak
resident memory from the training summary (``peak_rss_mb``: the worker process's
``ru_maxrss`` at the end of training, before the export). The estimate is the one preflight
prints (``tunearena.training.memory.estimate_for``). The baseline is the measured peak:
the ratio estimate / measured should stay within 0.75 to 1.25. ``--buckets default`` also
runs each shape with DeepSpeed's own 5e8-element communication buckets
(``training.comm_bucket_elements``), and prints the peak with sized buckets over the peak
with DeepSpeed's default, same shape, same run.

``--gpu`` (not yet run on a GPU) trains in bf16 and compares rank 0's peak allocated device
memory (``peak_gpu_memory_mb``) with the estimate less the CUDA context it leaves out.

The SmolLM2 shapes use the packaged SmolLM2-135M-Instruct (converted from its GGUF once,
then cached); ``tiny-full`` is a random Llama of a few hundred thousand parameters, for the
smoke test. Text is random English words, so the figures depend on shapes, not content.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from train_throughput import PRESETS, make_model_dir  # the sibling bench script's

GIB = 1024**3
TOLERANCE = 0.25
WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her", "they", "this", "which", "river", "stone", "garden", "music", "winter", "letter", "market", "island", "engine", "paper", "window", "silver", "morning", "history", "number", "village", "mountain", "station", "language", "summer", "forest", "road"]


@dataclass(frozen=True)
class Shape:
    model: str
    """``smollm2`` or ``tiny``."""
    method: str
    zero_stage: int
    workers: int
    seq_len: int
    micro_batch_size: int
    gradient_checkpointing: bool = False


SHAPES = {
    "smollm2-lora": Shape("smollm2", "lora", 2, 2, 256, 4),
    "smollm2-full": Shape("smollm2", "full", 2, 2, 256, 4),
    "smollm2-lora-ckpt": Shape("smollm2", "lora", 2, 2, 256, 4, gradient_checkpointing=True),
    "tiny-full": Shape("tiny", "full", 2, 2, 64, 2),
}


def model_dir(shape: Shape, work: Path) -> str:
    if shape.model == "smollm2":
        from tunearena.training.gguf import resolve_base

        return str(resolve_base("smollm2-135m-instruct"))
    out = work / "tiny"
    make_model_dir(out, PRESETS["tiny"], shape.seq_len)
    return str(out)


def write_text(path: Path, n_words: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(max(1, n_words // 200)):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=200))}) + "\n")


def run_one(name: str, shape: Shape, buckets: str, steps: int, work: Path,
            use_gpu: bool) -> dict:
    """Train ``shape`` for ``steps`` steps; its estimate and each rank's measured peak."""
    from tunearena.cluster.config import ClusterConfig
    from tunearena.training.config import TrainingConfig
    from tunearena.training.ds_config import DEEPSPEED_BUCKET_ELEMENTS
    from tunearena.training.memory import estimate_for
    from tunearena.training.trainer import run_stage, uses_bf16

    base = model_dir(shape, work)
    text = work / "text.jsonl"
    # Words are one token or more: enough text for every step's global batch.
    write_text(text, shape.seq_len * shape.micro_batch_size * shape.workers * (steps + 2))
    cfg = TrainingConfig(
        datasets=[{"path": text}], method=shape.method, zero_stage=shape.zero_stage,
        seq_len=shape.seq_len, micro_batch_size=shape.micro_batch_size, max_steps=steps,
        gradient_checkpointing=shape.gradient_checkpointing, validation_fraction=0.0,
        eval_every_steps=10**6, log_every_steps=10**6, lora={"merge": False},
        data_prep={"near_duplicate_threshold": None},
        comm_bucket_elements=DEEPSPEED_BUCKET_ELEMENTS if buckets == "default" else None)
    estimate = estimate_for(base, cfg, shape.workers, uses_bf16(cfg, use_gpu), use_gpu)
    run = f"{name}-{buckets}"
    summary = run_stage(run, base, cfg, ClusterConfig(num_workers=shape.workers,
                                                      use_gpu=use_gpu),
                        work / run, work / "ray")
    if use_gpu:
        # Rank 0's peak of allocated tensors: the CUDA context is not in it, nor the estimate.
        peaks = [summary.peak_gpu_memory_mb]
        estimated = estimate.total_bytes - estimate.baseline_bytes
    else:
        peaks, estimated = summary.peak_rss_mb, estimate.total_bytes
    return {"shape": name, "buckets": buckets, "method": shape.method,
            "zero_stage": shape.zero_stage, "workers": shape.workers, "seq_len": shape.seq_len,
            "micro_batch_size": shape.micro_batch_size,
            "gradient_checkpointing": shape.gradient_checkpointing, "steps": summary.steps,
            "parameters": summary.parameters,
            "trainable_parameters": summary.trainable_parameters,
            "estimate_bytes": estimated, "estimate_parts": estimate.parts(),
            "peak_mb": peaks, "device": "gpu" if use_gpu else "cpu"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES,
                        default=["smollm2-lora", "smollm2-full"])
    parser.add_argument("--buckets", nargs="+", choices=["sized", "default"], default=["sized"],
                        help="sized: tunearena's; default: DeepSpeed's 5e8 elements")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gpu", action="store_true",
                        help="train on GPUs in bf16 and compare device memory (not yet run)")
    parser.add_argument("--json-out", type=Path, help="one JSON line per run")
    args = parser.parse_args()

    import ray
    import torch

    from tunearena.cluster.quiet import WORKER_SETUP_HOOK

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ray.init(address="local", num_cpus=max(SHAPES[s].workers for s in args.shapes),
                 num_gpus=torch.cuda.device_count() if args.gpu else 0, include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK})
        try:
            for name in args.shapes:
                for buckets in args.buckets:
                    result = run_one(name, SHAPES[name], buckets, args.steps, work, args.gpu)
                    print(json.dumps(result), flush=True)
                    results.append(result)
                    if args.json_out:
                        with args.json_out.open("a") as f:
                            f.write(json.dumps(result) + "\n")
        finally:
            ray.shutdown()
    report(results)
    return 0


def report(results: list[dict]) -> None:
    """The table, then one ratio line per run against its named baseline."""
    print("\nshape               buckets  trainable   estimate GiB  peak GiB per rank")
    for r in results:
        peaks = " ".join(f"{p / 1024:.2f}" for p in r["peak_mb"])
        print(f"{r['shape']:<19} {r['buckets']:<8} {r['trainable_parameters']:>10,}  "
              f"{r['estimate_bytes'] / GIB:>12.2f}  {peaks}")
    for r in results:
        peak = max(r["peak_mb"]) * 2**20
        ratio = r["estimate_bytes"] / peak
        verdict = "within" if abs(ratio - 1) <= TOLERANCE else "OUTSIDE"
        print(f"ratio estimate/measured peak ({r['shape']}, {r['buckets']} buckets): "
              f"{ratio:.2f} ({verdict} {TOLERANCE:.0%})")
    by_key = {(r["shape"], r["buckets"]): max(r["peak_mb"]) for r in results}
    for shape in dict.fromkeys(r["shape"] for r in results):
        if (shape, "default") in by_key and (shape, "sized") in by_key:
            print(f"ratio peak sized/default buckets ({shape}): "
                  f"{by_key[shape, 'sized'] / by_key[shape, 'default']:.2f} "
                  f"({by_key[shape, 'sized']:.0f} / {by_key[shape, 'default']:.0f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
