"""The probe: a fine-tuned model must not answer exactly like its base.

A LoRA adapter that was saved but never applied, a merge that wrote the base's weights back, a
stage that loaded the wrong directory: each scores exactly like the base, and its arm would be
reported as "fine-tuning did nothing" when nothing was fine-tuned. Before any arm is scored,
each stage's model is loaded the way its arm loads it (``harness.load_model``) and its next-token
log-probabilities on a few of the evaluation's own prompts are compared with the base's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tunearena.errors import UserError

PROBE_PROMPTS = 8
"""How many prompts the probe reads (the first of the evaluation's plain prompts)."""
PROBE_TOLERANCE = 1e-4
"""A stage whose largest log-probability change is at most this is taken for the base: the
same weights on the same device agree to the last bit, and a trained stage moves far more."""


class ProbeError(UserError, RuntimeError):
    """A fine-tuned stage whose model answers exactly like the base."""


def last_logprobs(model_dir: str | Path, prompts: Sequence[str], device: str = "cpu"):
    """The next-token log-probabilities after each prompt, ``[len(prompts), vocab]`` on CPU.

    Prompts go one at a time, so no padding can make two identical models differ.
    """
    import torch

    from tunearena.evaluation.harness import load_model

    model, tokenizer = load_model(Path(model_dir), device)
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
            rows.append(torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1).cpu())
    return torch.stack(rows)


def probe_stages(base_dir: str, stage_dirs: Mapping[str, str], prompts: Sequence[str],
                 device: str = "cpu") -> dict[str, float]:
    """Per stage, the largest absolute change of a next-token log-probability from the
    base's, over ``prompts``."""
    base = last_logprobs(base_dir, prompts, device)
    changes = {}
    for stage, model_dir in stage_dirs.items():
        stage_logprobs = last_logprobs(model_dir, prompts, device)
        if stage_logprobs.shape != base.shape:  # another vocabulary: not the base at all
            changes[stage] = float("inf")
            continue
        changes[stage] = float((stage_logprobs - base).abs().max())
    return changes


def check_probe(changes: Mapping[str, float], stage_dirs: Mapping[str, str],
                tolerance: float = PROBE_TOLERANCE) -> None:
    """Raise ``ProbeError`` naming every stage whose change is within ``tolerance``."""
    same = [stage for stage, change in changes.items() if change <= tolerance]
    if same:
        where = "; ".join(f"{stage}: {stage_dirs[stage]} (largest change {changes[stage]:.2g})"
                          for stage in same)
        raise ProbeError(
            f"{len(same)} fine-tuned stage(s) answer exactly like the base model on the probe "
            f"prompts, so their arms would score the base again: {where}. Check that the stage "
            "trained (its steps and loss in the manifest) and that its export holds the trained "
            "weights (a LoRA adapter must be merged or loaded with its base); the run stops "
            "here rather than report fine-tuning that did not happen"
        )


FALLBACK_PROMPTS = (
    "Question: What is the capital of France?\nAnswer:",
    "The quick brown fox jumps over the",
    "Question: How many days are there in a week?\nAnswer:",
)
"""Read when the evaluation has fewer prompts of its own (only named lm-eval tasks, say)."""


def probe_prompts(task_rows: Sequence[Sequence[dict]], n: int = PROBE_PROMPTS) -> list[str]:
    """The first ``n`` prompts, taken from the plain tasks in turn (their ``prompt`` field),
    topped up from ``FALLBACK_PROMPTS``."""
    prompts: list[str] = []
    for rows in task_rows:
        prompts += [row["prompt"] for row in rows if isinstance(row.get("prompt"), str)]
    return (prompts + list(FALLBACK_PROMPTS))[:max(n, 1)]
