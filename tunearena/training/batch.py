"""Batch arithmetic as plain values: no processes, testable with integers."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    """How many sequences each optimizer step consumes, and how many steps a stage runs."""

    micro_batch_size: int
    grad_accum_steps: int
    world_size: int

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step, summed over workers and accumulation."""
        return self.micro_batch_size * self.grad_accum_steps * self.world_size

    def steps_per_epoch(self, n_sequences: int) -> int:
        """Full optimizer steps in one pass (the ragged tail is dropped, so ranks stay equal)."""
        steps = n_sequences // self.global_batch_size
        if steps == 0:
            raise ValueError(
                f"{n_sequences} training sequences are fewer than one global batch of "
                f"{self.global_batch_size} (micro_batch_size {self.micro_batch_size} x "
                f"grad_accum_steps {self.grad_accum_steps} x workers {self.world_size})"
            )
        return steps

    def total_steps(self, n_sequences: int, epochs: float, max_steps: int | None) -> int:
        """``max_steps`` when given, else ``epochs`` passes (at least one step)."""
        if max_steps is not None:
            return max_steps
        return max(1, math.ceil(epochs * self.steps_per_epoch(n_sequences)))

    def rank_slice(self, step_in_epoch: int, micro_step: int, rank: int) -> slice:
        """Positions in the epoch's shuffled order of one rank's micro-batch.

        Within an optimizer step, the global batch is laid out micro-step by micro-step, each
        split evenly across ranks, so every sequence of the epoch is used exactly once.
        """
        start = (
            step_in_epoch * self.global_batch_size
            + micro_step * self.micro_batch_size * self.world_size
            + rank * self.micro_batch_size
        )
        return slice(start, start + self.micro_batch_size)
