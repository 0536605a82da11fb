"""This process's place among the data-parallel ranks of a stage: its rank, the world size,
its device, and the few collectives and prints the loop needs (in the spirit of OpenRLHF's
strategy object, without the framework)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import ray
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Worker:
    """One Ray Train worker: a DeepSpeed rank on one device."""

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def from_ray_train(cls) -> Worker:
        """The worker this Ray Train process is."""
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, tracks and exports."""
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def device_name(self) -> str:
        """The GPU's name (what MFU looks its peak up by), else ``cpu``."""
        return torch.cuda.get_device_name(self.device) if self.cuda else self.device.type

    def print(self, message: str) -> None:
        """Only rank 0 speaks, so the driver's console shows one line per event.

        Written to stdout directly: Ray Train patches ``print`` into a logger whose output the
        driver would otherwise show twice.
        """
        if self.is_main:
            sys.stdout.write(message + "\n")
            sys.stdout.flush()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """``values`` summed over every rank (a collective: every rank must call it)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def placement(self) -> list[dict]:
        """Every rank's node, process and device, gathered on every rank (in rank order)."""
        here = {"rank": self.rank, "node_ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "device": str(self.device)}
        placement: list = [None] * self.world_size
        dist.all_gather_object(placement, here)
        return placement

    def to_device(self, split: dict, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Rows ``rows`` of a tokenised split as a model's batch on this worker's device."""
        # From pinned memory the copy is queued behind the running kernels; from pageable
        # memory the CPU would wait for all of them (the previous optimizer step) before going on.
        pin = self.cuda

        def put(array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
            t = torch.as_tensor(array, dtype=dtype)
            return (t.pin_memory() if pin else t).to(self.device, non_blocking=pin)

        return {
            "input_ids": put(split["input_ids"][rows], torch.long),
            "labels": put(split["labels"][rows], torch.long),
            "attention_mask": put(split["attention_mask"][rows]),
        }
