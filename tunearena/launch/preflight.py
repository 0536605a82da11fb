"""``tunearena preflight CONFIG``: every check a run makes before training, without the run.

It reads the inputs, connects to the cluster the config names, and for each stage checks the
batch arithmetic, the resources, the memory estimate and the tokenizer's EOS and chat-template
round trip; then, once, storage seen from every node and an all-reduce over the real backend.
It trains nothing and writes no results (the storage check leaves behind the empty checkpoint
directory it tested); the table says what to fix. On GPUs it then prints each stage's
estimated training time and cost (``training/estimate.py``).

With ``--plan GPU`` it connects to no cluster: for ``cluster.num_workers`` GPUs of that kind
it prints each stage's memory per worker under every ZeRO stage, and its time and cost, so a
run far larger than the machine it is planned on (70B on 64 GPUs, from a laptop) is sized
before any GPU is rented. The model's config and tokenizer are read; its weights are not.
"""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from tunearena.launch.config import ExperimentConfig
from tunearena.launch.inputs import check_inputs


def run_preflight(cfg: ExperimentConfig, console: Console, plan: str | None = None) -> bool:
    """Print the table of checks, then each stage's estimate; True when every check passed.
    ``plan``: a GPU kind to plan for instead, without a cluster (``plan_stages``).

    Batch arithmetic counts the sequences the run would train on: each stage's files (and
    what it replays) cleaned, leak-checked, split and tokenised exactly as the run prepares
    them, with the base model's tokenizer, which fine-tuning keeps.
    """
    from transformers import AutoTokenizer

    from tunearena.cluster.preflight import format_checks
    from tunearena.cluster.ray_cluster import ray_session
    from tunearena.launch.interrupts import reclaim
    from tunearena.training.estimate import estimate_line
    from tunearena.training.stage_data import prepare_stage_data
    from tunearena.training.stages import preflight_checks, stage_estimate, training_config

    if plan is not None:
        plan_gpu_memory_gib(plan)  # an unknown GPU kind is named before any input is read
    questions, _ = check_inputs(cfg, weights=plan is None)
    asked = {name: [q.question for q in items] for name, items in questions.items()}
    stages = cfg.resolved_stages()
    if not stages:
        console.print("training is not enabled: there is nothing to preflight")
        return True
    run_dir = (cfg.runs_dir / cfg.name).resolve()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.base,
                                              trust_remote_code=cfg.model.trust_remote_code)
    chat = cfg.model.chat_template is True  # resolved by check_inputs
    prepared = {stage.name: prepare_stage_data(stage, tokenizer, stages, asked, chat)
                for stage in stages}
    if plan is not None:
        return plan_stages(cfg, stages, prepared, plan, console)
    storage = cfg.cluster.storage_path or str(run_dir / "ray")
    checks, estimates = [], []
    with ray_session(cfg.cluster):
        reclaim()  # ray.init takes SIGTERM for itself: give it back to the interrupt handler
        for i, stage in enumerate(stages):
            t = training_config(stage.training, run_dir)
            data = prepared[stage.name]
            stage_checks = preflight_checks(cfg.model.base, t, cfg.cluster, storage,
                                            data.mixture.epoch_size, first=i == 0,
                                            tokenizer=tokenizer, chat_template=chat)
            prefix = f"{stage.name}: " if cfg.stages else ""
            checks += [replace(c, name=prefix + c.name) for c in stage_checks]
            if all(c.ok for c in stage_checks):
                estimates.append(estimate_line(stage.name, stage_estimate(
                    cfg.model.base, t, cfg.cluster, data.mixture.epoch_size,
                    data.train.input_ids.shape[1], cfg.report.gpu_hour_cost_usd),
                    "CPU workers"))
    console.print(format_checks(checks), highlight=False, markup=False, soft_wrap=True)
    for line in estimates:
        console.print(line, highlight=False)
    failed = [c for c in checks if not c.ok]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(checks)} checks failed[/bold red]")
    else:
        console.print(f"[green]all {len(checks)} checks passed[/green]")
    return not failed


def plan_stages(cfg: ExperimentConfig, stages: list, prepared: dict, gpu: str,
                console: Console) -> bool:
    """For ``cluster.num_workers`` GPUs of kind ``gpu``: each stage's batch arithmetic, its
    memory per worker under ZeRO 0 to 3 against the GPU's memory, and its time and cost.
    True when every stage's batch holds and its configured ZeRO stage fits."""
    from rich.table import Table

    from tunearena.training.estimate import estimate_line
    from tunearena.training.memory import (
        MEMORY_HEADROOM,
        check_batch,
        estimate_memory_per_worker,
        model_shape,
    )
    from tunearena.training.stages import stage_estimate

    gib = plan_gpu_memory_gib(gpu)
    workers = cfg.cluster.num_workers
    budget = gib * 2**30 * min(1.0, cfg.cluster.gpus_per_worker)
    table = Table(title=f"GiB per worker on {workers} x {gpu} ({gib:g} GiB, "
                        f"{MEMORY_HEADROOM:.0%} usable)")
    table.add_column("stage")
    for z in range(4):
        table.add_column(f"ZeRO-{z}", justify="right", no_wrap=True)
    ok, lines = True, []
    for stage in stages:
        t, data = stage.training, prepared[stage.name]
        bf16 = t.precision != "fp32"
        # The model's shape is one for every ZeRO stage: built once, from its config alone.
        shape = model_shape(cfg.model.base, t if t.method != "full" else None)
        cells = []
        for z in range(4):
            e = estimate_memory_per_worker(t.model_copy(update={"zero_stage": z}), workers,
                                           bf16, shape, True)
            fits = e.total_bytes <= MEMORY_HEADROOM * budget
            mark = "*" if z == t.zero_stage else ""
            cells.append(f"{e.total_bytes / 2**30:,.1f} {'fits' if fits else 'no'}{mark}")
            ok &= fits or z != t.zero_stage
        table.add_row(stage.name, *cells)
        batch = check_batch(t, workers, data.mixture.epoch_size)
        ok &= batch.ok
        lines.append(f"{stage.name}: {batch.detail}" + ("" if batch.ok else f"; {batch.fix}"))
        if batch.ok:
            lines.append(estimate_line(stage.name, stage_estimate(
                cfg.model.base, t, cfg.cluster, data.mixture.epoch_size,
                data.train.input_ids.shape[1], cfg.report.gpu_hour_cost_usd, gpu=gpu), gpu))
    console.print(table)
    console.print("* the stage's zero_stage", style="dim")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    return ok


def plan_gpu_memory_gib(gpu: str) -> float:
    """The memory of GPU kind ``gpu``; a ``UserError`` naming the known kinds when its memory
    or peak is not known."""
    from tunearena.errors import UserError
    from tunearena.training.estimate import GPU_MEMORY_GIB, gpu_memory_gib
    from tunearena.training.throughput import peak_tflops

    gib = gpu_memory_gib(gpu)
    if gib is None or peak_tflops(gpu) is None:
        raise UserError(f"--plan {gpu}: not a GPU kind whose memory and peak are known; use "
                        f"one of {', '.join(name for name, _ in GPU_MEMORY_GIB)}")
    return gib
