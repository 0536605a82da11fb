"""``tunearena preflight CONFIG``: every check a run makes before training, without the run.

It reads the inputs, connects to the cluster the config names, and for each stage checks the
batch arithmetic, the resources, the memory estimate and the tokenizer's EOS and chat-template
round trip; then, once, storage seen from every node and an all-reduce over the real backend.
It trains nothing and writes no results (the storage check leaves behind the empty checkpoint
directory it tested); the table says what to fix.
"""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from tunearena.launch.config import ExperimentConfig
from tunearena.launch.inputs import check_inputs


def run_preflight(cfg: ExperimentConfig, console: Console) -> bool:
    """Print the table of checks; True when every check passed.

    Batch arithmetic counts the sequences the run would train on: each stage's files (and
    what it replays) cleaned, leak-checked, split and tokenised exactly as the run prepares
    them, with the base model's tokenizer, which fine-tuning keeps.
    """
    from transformers import AutoTokenizer

    from tunearena.cluster.preflight import format_checks
    from tunearena.cluster.ray_cluster import ray_session
    from tunearena.launch.interrupts import reclaim
    from tunearena.training.stage_data import prepare_stage_data
    from tunearena.training.stages import preflight_checks, training_config

    questions, _ = check_inputs(cfg)
    asked = {name: [q.question for q in items] for name, items in questions.items()}
    stages = cfg.resolved_stages()
    if not stages:
        console.print("training is not enabled: there is nothing to preflight")
        return True
    run_dir = (cfg.runs_dir / cfg.name).resolve()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.base,
                                              trust_remote_code=cfg.model.trust_remote_code)
    chat = cfg.model.chat_template is True  # resolved by check_inputs
    storage = cfg.cluster.storage_path or str(run_dir / "ray")
    checks = []
    with ray_session(cfg.cluster):
        reclaim()  # ray.init takes SIGTERM for itself: give it back to the interrupt handler
        for i, stage in enumerate(stages):
            t = training_config(stage.training, run_dir)
            data = prepare_stage_data(stage, tokenizer, stages, asked, chat)
            stage_checks = preflight_checks(cfg.model.base, t, cfg.cluster, storage,
                                            data.mixture.epoch_size, first=i == 0,
                                            tokenizer=tokenizer, chat_template=chat)
            prefix = f"{stage.name}: " if cfg.stages else ""
            checks += [replace(c, name=prefix + c.name) for c in stage_checks]
    console.print(format_checks(checks), highlight=False, markup=False, soft_wrap=True)
    failed = [c for c in checks if not c.ok]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(checks)} checks failed[/bold red]")
    else:
        console.print(f"[green]all {len(checks)} checks passed[/green]")
    return not failed
