"""Run one training stage on Ray Train and bring its exported model back to the driver."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import ray
from ray.train import CheckpointConfig, LoggingConfig, RunConfig
from ray.train.torch import TorchTrainer

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.ray_cluster import resolve_use_gpu, scaling_config, worker_env
from tunearena.training.config import TrainingConfig
from tunearena.training.data import TokenizedSplit, prepare_splits
from tunearena.training.loop import EXPORT_MARKER, train_loop_per_worker


class ModelDirError(ValueError):
    """A base model that cannot be loaded; the message says what is missing."""


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_dir(model: str) -> None:
    """Fail before any worker starts when a local model dir lacks a config or weights.

    A hub id (no such local path) is left to ``from_pretrained``.
    """
    path = Path(model)
    if not path.exists():
        if model.startswith((".", "/")) or path.suffix:
            raise ModelDirError(f"model dir {model} does not exist")
        return
    if not (path / "config.json").is_file():
        raise ModelDirError(f"model dir {model} has no config.json")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelDirError(f"model dir {model} has no weights (expected one of {', '.join(WEIGHT_FILES)})")


def prepare_data(model_dir: str, cfg: TrainingConfig) -> tuple[TokenizedSplit, TokenizedSplit | None]:
    """Tokenise the stage's datasets with the model's tokenizer (on the driver, fail-fast)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return prepare_splits(
        cfg.datasets, tokenizer, cfg.seq_len, cfg.packing, cfg.validation_fraction, cfg.seed
    )


def run_stage(
    name: str,
    model_dir: str,
    cfg: TrainingConfig,
    cluster: ClusterConfig,
    out_dir: Path,
    storage_path: Path | str,
    data: tuple[TokenizedSplit, TokenizedSplit | None] | None = None,
) -> dict:
    """Train ``model_dir`` on ``cfg``'s data with ``cluster.num_workers`` DeepSpeed ranks.

    Ray must be initialised. The exported model lands in ``out_dir`` (replaced atomically).
    Returns the training summary: steps, tokens, timings, loss history.
    """
    train, val = data if data is not None else prepare_data(model_dir, cfg)
    use_gpu = resolve_use_gpu(cluster)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_gpu)
    data_ref = ray.put({"train": asdict(train), "val": asdict(val) if val is not None else None})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "training": cfg.model_dump(mode="json"),
            "model_dir": str(Path(model_dir).resolve()) if Path(model_dir).exists() else model_dir,
            "data_ref": data_ref,
            "bf16": bf16,
            "launch_time": time.time(),
        },
        scaling_config=scaling_config(cluster, use_gpu),
        # Ray Train V2's RunConfig; type checkers see the V1 class that `ray.train` swaps out.
        run_config=RunConfig(  # type: ignore[call-arg]
            name=name,
            storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": worker_env(cluster)},
            # Ray Train's INFO lines repeat every reported metric; our rank 0 logs progress.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {name!r} finished without an exported model")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with result.checkpoint.as_directory() as ckpt:
        if not (Path(ckpt) / EXPORT_MARKER).is_file():
            raise RuntimeError(f"stage {name!r}: the last checkpoint is not an exported model")
        shutil.copytree(ckpt, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    summary = json.loads((out_dir / EXPORT_MARKER).read_text())
    summary |= {"train_sequences": len(train), "val_sequences": len(val) if val is not None else 0,
                "train_loss_tokens": train.loss_tokens, "bf16": bf16, "use_gpu": use_gpu}
    (out_dir / EXPORT_MARKER).write_text(json.dumps(summary, indent=1))
    return summary
