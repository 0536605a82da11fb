"""The input check: every file a run reads, read once before any cluster resource is claimed."""

from __future__ import annotations

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.benchmarks import QAItem, load_qa
from tunearena.launch.config import ExperimentConfig


def chat_template_of(base: str, setting: bool | str, trust_remote_code: bool = False) -> bool:
    """``model.chat_template`` resolved against ``base``'s tokenizer (see
    ``formats.resolve_chat_template``); when false, the tokenizer is not read."""
    from transformers import AutoTokenizer

    from tunearena.training.formats import resolve_chat_template
    from tunearena.training.model_dir import ModelDirError

    if setting is False:
        return False
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelDirError(f"model {base}: its tokenizer cannot be loaded: {e}") from None
    return resolve_chat_template(setting, tokenizer, base)


def check_inputs(cfg: ExperimentConfig) -> tuple[dict[str, list[QAItem]], list]:
    """Read every input file once, before any cluster resource is claimed.

    A broken benchmark found after an hour of training would waste the hour; here it fails in
    seconds, naming the file and line. Named lm-eval tasks are resolved and their data loaded,
    so one that is unknown or unreachable is named now too. Returns the QA benchmarks'
    questions and the few-shot examples (empty unless a ``+fewshot`` arm is scored).

    The base model's files are read here: a local dir's config, its weights' headers (a
    truncated or mismatched file is named), a hub id in the offline cache; a dir that ships
    its own code is refused unless ``model.trust_remote_code``, which is recorded here for
    every later load in this process and its Ray workers (``tunearena.remote_code``).
    A GGUF ``model.base`` is converted here (once; a cached conversion is reused) and
    ``cfg.model.base`` is pointed at the converted dir, so training, the RAG arms, scoring,
    export and preflight all read a plain Hugging Face dir, and a broken file is named now.
    ``cfg.model.chat_template`` is resolved here too (``auto`` becomes true or false, by
    whether the base tokenizer has a chat template), so training and evaluation read one
    answer; ``true`` for a tokenizer without one is a ``ChatTemplateError``.
    """
    from tunearena.remote_code import set_trust_remote_code
    from tunearena.training.gguf import resolve_base
    from tunearena.training.lengths import check_seq_len
    from tunearena.training.model_dir import check_model_dir
    from tunearena.training.prepare import read_jsonl

    trusted = cfg.model.trust_remote_code
    set_trust_remote_code(trusted)
    cfg.model.base = resolve_base(cfg.model.base, cfg.model.gguf_cache_dir)
    check_model_dir(cfg.model.base, trusted)
    from tunearena.training.tracking import check_trackers_available

    for stage in cfg.resolved_stages():
        check_seq_len(stage.training, cfg.model.base, f"stage {stage.name}")
        replayed = stage.replay.datasets if stage.replay else []
        for ds in [*stage.training.datasets, *replayed]:
            read_jsonl(ds.path, ds.format, allow_empty=True)
            if ds.validation_path is not None:
                read_jsonl(ds.validation_path, ds.format, allow_empty=True)
        check_trackers_available(stage.training.tracking)
    if cfg.rag.enabled and cfg.rag.corpus is not None:
        from tunearena.rag.corpus import load_documents

        load_documents(cfg.rag.corpus)
    questions = {b.name: load_qa(b.path, b.track) for b in cfg.evaluation.benchmarks
                 if b.path is not None}
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
    cfg.model.chat_template = chat_template_of(cfg.model.base, cfg.model.chat_template, trusted)
    return questions, examples
