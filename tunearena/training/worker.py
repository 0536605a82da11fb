"""This process's place among the data-parallel ranks of a stage: its rank, the world size,
its device, and the few collectives and prints the loop needs (in the spirit of OpenRLHF's
strategy object, without the framework)."""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass

import numpy as np
import ray
import torch
import torch.distributed as dist

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter for the size from which ``malloc`` maps fresh pages."""
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's initial threshold, kept fixed instead of rising with each freed block."""


def keep_mmap_threshold() -> bool:
    """Make freed tensors return their memory to the OS; whether this libc allows it.

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so
    after the first forward pass a CPU worker's activation-sized temporaries come from the
    heap, whose holes it never returns: SmolLM2-135M LoRA at micro-batch 4 held 1.2 GiB more
    than its live tensors. Fixed at glibc's initial 128 KiB, every larger tensor is mapped
    and unmapped, and the process holds what it uses (what preflight estimates). The cost
    is fresh pages per large tensor: small beside a large model's step, but a small model's
    step takes 1.6 times as long, so a stage asks for this only when its activations are
    large (``memory.needs_lean_heap``). A no-op where glibc is absent.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to fix
        return False


def reset_peak_rss() -> None:
    """Start this process's peak resident memory afresh at what it holds now (Linux), so a
    stage trained in a warm worker reports its own peak, not an earlier stage's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM)
    except OSError:  # not Linux: the peak stays the process's
        pass


def _vm_hwm_mb() -> float | None:
    """This process's peak resident memory in MiB, from Linux's ``/proc/self/status``."""
    try:
        with open("/proc/self/status") as f:
            line = next((x for x in f if x.startswith("VmHWM:")), None)
    except OSError:
        return None
    return int(line.split()[1]) / 1024 if line else None


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

    def barrier(self) -> None:
        """Wait until every rank gets here (a collective)."""
        dist.barrier()

    def placement(self) -> list[dict]:
        """Every rank's node, process and device, gathered on every rank (in rank order)."""
        here = {"rank": self.rank, "node_ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "device": str(self.device)}
        placement: list = [None] * self.world_size
        dist.all_gather_object(placement, here)
        return placement

    def peak_rss_mb(self) -> list[float]:
        """Every rank's peak resident memory so far, in MiB, gathered on every rank (a
        collective).

        The process's high-water mark since the stage began (``reset_peak_rss``; Linux's
        ``VmHWM``, else ``ru_maxrss`` since the process began): what the host must hold for
        this rank at once, the imported libraries included, which preflight's estimate is
        compared against on CPU.
        """
        here = _vm_hwm_mb()
        if here is None:
            here = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if sys.platform == "darwin":  # bytes there
                here /= 1024
        peaks: list = [None] * self.world_size
        dist.all_gather_object(peaks, here)
        return peaks

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
