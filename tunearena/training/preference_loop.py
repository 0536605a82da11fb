"""A preference stage's part of the worker loop: the reference log-probabilities once, the
loss of a micro-batch of pairs, and the held-out metrics.

A pair is one row of ``[chosen | rejected]`` (``data.pad_pairs``), so the loop samples,
slices and moves pairs as it does sequences; ``preference.split_pair_rows`` makes the row a
batch of two. DPO's reference is the model the stage starts from: before the first step the
policy *is* that model (a fresh adapter changes nothing yet, a full fine-tune has not moved),
so the reference log-probabilities come from the policy itself, in eval mode, once, for every
training and held-out pair, and are saved with each checkpoint, so a resumed stage keeps
comparing against its start and not against where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tunearena.training import checkpoint as ckpt
from tunearena.training.config import TrainingConfig
from tunearena.training.preference import preference_loss, sequence_logps, split_pair_rows
from tunearena.training.worker import Worker


@dataclass
class PairObjective:
    """The loss of a ``dpo`` or ``simpo`` stage on rows of pairs."""

    cfg: TrainingConfig
    reference: dict[str, np.ndarray]
    """``train`` and ``val``: each pair's reference log-probabilities, ``[n, 2]`` (chosen,
    rejected); empty for SimPO, which has no reference."""

    @classmethod
    def start(cls, engine, cfg: TrainingConfig, train: dict, val: dict | None,
              worker: Worker, state: ckpt.TrainState) -> PairObjective:
        """The objective, computing the reference on a fresh start (every rank, the same
        batches: under ZeRO-3 each forward is a collective) or restoring the saved one."""
        if cfg.kind == "dpo" and not state.reference:
            splits = {"train": train} | ({"val": val} if val is not None else {})
            state.reference = {name: pair_logps(engine, split, cfg.micro_batch_size, worker)
                               .tolist() for name, split in splits.items()}
            worker.print(f"reference log-probabilities of {len(train['input_ids'])} training "
                         "pairs" + (f" and {len(val['input_ids'])} held-out pairs" if val
                                    is not None else "") + " computed from the starting model")
        return cls(cfg, {k: np.asarray(v, dtype=np.float64) for k, v in state.reference.items()})

    def loss(self, engine, batch: dict[str, torch.Tensor], rows: np.ndarray,
             split: str = "train"):
        """The preference loss (with its rewards) of the pairs ``rows`` of ``split``."""
        sums, counts = sequence_logps(engine, split_pair_rows(batch))
        ref = self.reference.get(split)
        ref_rows = None if ref is None else torch.as_tensor(ref[rows], dtype=torch.float32)
        return preference_loss(
            self.cfg.kind, self.cfg.preference, sums.float(), counts,  # type: ignore[arg-type]
            None if ref_rows is None else ref_rows[:, 0],
            None if ref_rows is None else ref_rows[:, 1])

    def validate(self, engine, val: dict, worker: Worker) -> dict[str, float]:
        """Loss, reward accuracy and margin over every held-out pair (pair-weighted means, the
        same on every rank)."""
        totals = np.zeros(4)
        engine.eval()
        with torch.no_grad():
            for rows in _batches(len(val["input_ids"]), self.cfg.micro_batch_size):
                result = self.loss(engine, worker.to_device(val, rows), rows, "val")
                totals += len(rows) * np.array([float(result.loss), float(result.accuracy),
                                                float(result.margin), 1.0])
        engine.train()
        n = max(totals[3], 1.0)
        return {"loss": totals[0] / n, "reward_accuracy": totals[1] / n,
                "reward_margin": totals[2] / n}


@torch.no_grad()
def pair_logps(engine, split: dict, batch_size: int, worker: Worker) -> np.ndarray:
    """``[n, 2]`` summed log-probabilities of each pair's chosen and rejected reply, in eval
    mode."""
    engine.eval()
    out = []
    for rows in _batches(len(split["input_ids"]), batch_size):
        sums, _ = sequence_logps(engine, split_pair_rows(worker.to_device(split, rows)))
        b = len(rows)
        out.append(torch.stack([sums[:b], sums[b:]], dim=1).double().cpu().numpy())
    engine.train()
    return np.concatenate(out) if out else np.zeros((0, 2))


def _batches(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(start, min(n, start + size)) for start in range(0, n, size)]
