"""The input check: every file a run reads, read once before any cluster resource is claimed."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunearena.configbase import ConfigError
from tunearena.evaluation.arm import Arm
from tunearena.evaluation.benchmarks import QAItem, load_qa
from tunearena.launch.config import ExperimentConfig


def chat_template_of(base: str, setting: bool | str) -> bool:
    """``model.chat_template`` resolved against ``base``'s tokenizer (see
    ``formats.resolve_chat_template``); when false, the tokenizer is not read."""
    from tunearena.training.formats import resolve_chat_template

    if setting is False:
        return False
    return resolve_chat_template(setting, load_tokenizer(base), base)


def load_tokenizer(base: str):
    """``base``'s tokenizer; one that cannot be loaded is a ``ModelDirError``."""
    from transformers import AutoTokenizer

    from tunearena.remote_code import trust_remote_code
    from tunearena.training.model_dir import ModelDirError

    try:
        return AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code())
    except (OSError, ValueError) as e:
        raise ModelDirError(f"model {base}: its tokenizer cannot be loaded: {e}") from None


def check_inputs(cfg: ExperimentConfig, runs_dir_here: bool = True, weights: bool = True,
                 ) -> tuple[dict[str, list[QAItem]], list]:
    """Read every input file once, before any cluster resource is claimed.

    A broken benchmark found after an hour of training would waste the hour; here it fails in
    seconds, naming the file and line. Named lm-eval tasks are resolved and their data loaded,
    so one that is unknown or unreachable is named now too. Returns the QA benchmarks'
    questions and the few-shot examples (empty unless a ``+fewshot`` arm is scored).

    The base model's files are read here: a local dir's config, its weights' headers (a
    truncated or mismatched file is named), a hub id in the offline cache; a dir that ships
    its own code is refused unless ``model.trust_remote_code``, which is recorded here for
    every later load in this process and its Ray workers (``tunearena.remote_code``). With
    ``weights=False`` (planning a run from the model's config alone) the weights are not
    looked for.

    Training files are cleaned, leak-checked, split and measured against ``seq_len`` as the
    prepare step will (``training.data_check``); with ``+rag`` arms or a ``rag_context``
    stage, the index's factory string, search parameters, embedder and ``top_k`` are tried
    against the corpus (``rag.check``); with ``runs_dir_here`` (false for a job whose run directory is on the
    cluster), ``runs_dir`` is written to.

    A GGUF ``model.base`` is converted here (once; a cached conversion is reused) and
    ``cfg.model.base`` is pointed at the converted dir, so training, the RAG arms, scoring,
    export and preflight all read a plain Hugging Face dir, and a broken file is named now.
    ``cfg.model.chat_template`` is resolved here too (``auto`` becomes true or false, by
    whether the base tokenizer has a chat template), so training and evaluation read one
    answer; ``true`` for a tokenizer without one is a ``ChatTemplateError``.
    """
    from tunearena.remote_code import set_trust_remote_code
    from tunearena.training.data_check import check_stage_files
    from tunearena.training.gguf import resolve_base
    from tunearena.training.lengths import check_seq_len
    from tunearena.training.model_dir import check_model_dir

    trusted = cfg.model.trust_remote_code
    set_trust_remote_code(trusted)
    if runs_dir_here:
        check_runs_dir(cfg.runs_dir, cfg.name)
    cfg.model.base = resolve_base(cfg.model.base, cfg.model.gguf_cache_dir)
    check_model_dir(cfg.model.base, trusted, weights)
    from tunearena.training.tracking import check_trackers_available

    questions = {b.name: load_qa(b.path, b.track) for b in cfg.evaluation.benchmarks
                 if b.path is not None}
    texts = {name: [q.question for q in items] for name, items in questions.items()}
    prepared = {}
    for stage in cfg.resolved_stages():
        check_seq_len(stage.training, cfg.model.base, f"stage {stage.name}")
        prepared[stage.name] = check_stage_files(stage, texts)
        check_trackers_available(stage.training.tracking)
    if cfg.rag.enabled and cfg.rag.corpus is not None:
        from tunearena.rag.corpus import load_documents

        if any(Arm.parse(a).context == "rag" for a in cfg.evaluation.arms) or any(
                s.rag_context is not None for s in cfg.stages):
            from tunearena.rag.check import check_rag

            check_rag(cfg.rag)  # the index will be built: the corpus, FAISS, top_k
        else:
            load_documents(cfg.rag.corpus)
    external = [b for b in cfg.evaluation.benchmarks if b.lm_eval_task is not None]
    if external and cfg.evaluation.enabled:
        from tunearena.evaluation.harness import check_lm_eval_task

        for b in external:
            check_lm_eval_task(b.lm_eval_task, [b.task_dir] if b.task_dir else [],
                               include_defaults=b.task_dir is None)
    examples: list = []
    if cfg.evaluation.enabled and any(Arm.parse(a).context == "fewshot"
                                      for a in cfg.evaluation.arms):
        from tunearena.evaluation.fewshot import draw_examples, load_pool

        fewshot = cfg.evaluation.fewshot
        assert fewshot.path is not None  # the config refuses +fewshot arms without it
        asked = {q.question for items in questions.values() for q in items}
        examples = draw_examples(load_pool(fewshot.path), fewshot.k, cfg.seed, asked)
    cfg.model.chat_template = chat_template_of(cfg.model.base, cfg.model.chat_template)
    _check_lengths(cfg, prepared)
    _check_sweeps(cfg)
    return questions, examples


def _check_sweeps(cfg: ExperimentConfig) -> None:
    """Each sweep's search algorithm is installed; on a local Ray, whose size is known before
    it starts, its concurrent trials fit (a cluster's are checked once joined, before any
    stage trains)."""
    swept = [s for s in cfg.resolved_stages() if s.sweep is not None]
    for stage in swept:
        assert stage.sweep is not None
        stage.sweep.searcher(stage.training.seed)
    if not swept or cfg.cluster.address != "local":
        return
    import os

    import torch

    from tunearena.training.sweep_run import concurrent_trials

    gpus = torch.cuda.device_count()
    use_gpu = gpus > 0 if cfg.cluster.use_gpu == "auto" else bool(cfg.cluster.use_gpu)
    resources = {"CPU": float(cfg.cluster.num_cpus or os.cpu_count() or 1), "GPU": float(gpus)}
    for stage in swept:
        assert stage.sweep is not None
        concurrent_trials(stage.sweep, cfg.cluster, use_gpu, resources, f"stage {stage.name}: ")


def _check_lengths(cfg: ExperimentConfig, prepared: dict[str, list]) -> None:
    """Each stage's records against its ``seq_len``, with the base model's tokenizer."""
    from functools import cache

    from tunearena.training.data_check import check_record_lengths
    from tunearena.training.lengths import model_context

    tokenizer = cache(lambda: load_tokenizer(cfg.model.base))
    for stage in cfg.resolved_stages():
        check_record_lengths(prepared[stage.name], stage.training, tokenizer,
                             cfg.model.chat_template is True, model_context(cfg.model.base),
                             f"stage {stage.name}")


def check_runs_dir(runs_dir: Path, name: str) -> None:
    """Write a file where the run directory will be made (in ``runs_dir/name``, or in its
    nearest parent that exists), so that a ``runs_dir`` that cannot be written is named now,
    not after the inputs were read and a cluster started. Writes nothing that stays."""
    target = (runs_dir / name).resolve()
    existing = next(p for p in (target, *target.parents) if p.exists())
    fix = "set runs_dir to a directory you can write to (--set runs_dir=...)"
    if not existing.is_dir():
        raise ConfigError(f"runs_dir {runs_dir}: {existing} is a file, not a directory, so "
                          f"the run directory {target} cannot be made there; {fix}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".tunearena-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"runs_dir {runs_dir}: cannot write in {existing} "
                          f"({e.strerror or e}); {fix}") from None
