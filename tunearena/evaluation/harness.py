"""Score a model on local lm-eval tasks and keep every per-question result."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Evaluation reads only local model dirs and local JSONL: refuse the hub rather than hang on it.
# Set before the Hugging Face libraries are imported, since they read these once at import.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

logger = logging.getLogger(__name__)

_NOISY_LOGGERS = ("lm_eval", "datasets", "transformers", "accelerate", "huggingface_hub")


def score_model(
    model_dir: Path,
    task_dir: Path,
    task_names: list[str],
    batch_size: int = 32,
    limit: int | None = None,
    device: str = "cpu",
) -> dict[str, list[dict]]:
    """Score ``model_dir`` on tasks written by ``write_mc_task``; one dict per question.

    Returns ``{task_name: [{"id", "acc", "acc_norm", "doc_id"}, ...]}`` in the order of the
    task's JSONL (the first ``limit`` questions when ``limit`` is set). ``acc`` picks the
    choice with the highest summed log-likelihood, ``acc_norm`` normalises it by the choice's
    length in characters (lm-eval's definitions); both are 0 or 1. ``doc_id`` is the
    question's source document (None when unknown), which the report clusters CIs by.
    """
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, dtype=torch.float32 if device == "cpu" else "auto"
        ).to(device)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        # Only our task dir is indexed: scanning lm-eval's thousands of built-in YAMLs costs
        # seconds per call, and a built-in task of the same name could shadow ours.
        task_manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        _check_known(task_manager, task_names, task_dir)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(task_names),
            task_manager=task_manager,
            limit=limit,
            log_samples=True,
            bootstrap_iters=0,  # the report bootstraps the per-question results itself
        )
    if results is None:  # only on a non-zero rank, which a single-process HFLM never is
        raise RuntimeError("lm-eval returned no results")
    scores = {}
    for name in task_names:
        logged = results["samples"][name]
        _warn_if_truncated(name, logged, tokenizer, lm.max_length)
        scores[name] = _per_question(logged)
    return scores


def _per_question(logged: list[dict]) -> list[dict]:
    # lm-eval logs one entry per (doc, filter); multiple-choice tasks have the single
    # "none" filter. doc_id is the row index in the JSONL, so sorting restores item order.
    rows = sorted((s for s in logged if s["filter"] == "none"), key=lambda s: s["doc_id"])
    return [
        {"id": str(s["doc"]["id"]), "acc": int(s["acc"]), "acc_norm": int(s["acc_norm"]),
         "doc_id": s["doc"].get("source_doc")}
        for s in rows
    ]


def _warn_if_truncated(name: str, logged: list[dict], tokenizer, max_length: int) -> None:
    # lm-eval silently cuts an over-long prompt from the left, which drops retrieved
    # passages first; a RAG arm that lost its context must not pass unnoticed.
    longest = (
        max(len(tokenizer(ctx + cont)["input_ids"]) for ctx, cont in s["arguments"]) for s in logged
    )
    # The last token is only predicted, never fed in, hence the + 1 (as in lm-eval).
    n_cut = sum(n > max_length + 1 for n in longest)
    if n_cut:
        logger.warning(
            "%s: %d of %d prompts exceed the model's %d-token context and were cut from the left",
            name,
            n_cut,
            len(logged),
            max_length,
        )


def _check_known(task_manager, task_names: list[str], task_dir: Path) -> None:
    known = set(task_manager.all_tasks)
    unknown = [n for n in task_names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown task(s) {unknown} in {task_dir}; found: {sorted(known) or 'none'}"
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' INFO logs and progress bars (tqdm writes to ``sys.stderr``).

    lm-eval has no switch for its bars; exceptions still propagate, and our own
    warnings are emitted after this block.
    """
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    # lm-eval also runs `git describe` in the working directory, whose "fatal: not a git
    # repository" goes to file descriptor 2 directly; only an fd-level redirect hides it.
    sys.stderr.flush()
    saved_fd, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        os.close(devnull)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
