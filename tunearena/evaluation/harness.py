"""Score a model on lm-eval tasks and keep every per-question result.

Our own tasks (written by ``tasks.py``) are scored alongside named lm-eval tasks from task
folders or lm-eval's registry (``hellaswag``, ``arc_easy``, ...), multiple-choice or
generate-until.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tunearena.evaluation.benchmarks import BenchmarkError
from tunearena.remote_code import trust_remote_code

# Evaluation reads only local model dirs and local data: refuse the hub rather than hang on it.
# Set before the Hugging Face libraries are imported, since they read these once at import.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

logger = logging.getLogger(__name__)

SUPPORTED_OUTPUT_TYPES = ("multiple_choice", "generate_until", "loglikelihood_rolling")
"""lm-eval output types whose per-document results ``score_model`` can report."""

_NOISY_LOGGERS = ("lm_eval", "datasets", "transformers", "accelerate", "huggingface_hub")


def score_model(
    model_dir: Path,
    task_dir: Path,
    task_names: list[str],
    batch_size: int = 32,
    limit: int | None = None,
    device: str = "cpu",
    *,
    extra_task_paths: Sequence[Path] = (),
    include_defaults: bool = False,
    loaded: tuple | None = None,
    chat_template: bool = False,
) -> dict[str, list[dict]]:
    """Score ``model_dir`` on the named tasks; one dict per question, in the data's order.

    Returns ``{task_name: [row, ...]}`` (the first ``limit`` questions when ``limit`` is set).
    Tasks are looked up in ``task_dir`` (where ``write_mc_task`` / ``write_generative_task``
    wrote them), then ``extra_task_paths`` and, with ``include_defaults``, lm-eval's registry;
    a task in ``task_dir`` wins over one of the same name elsewhere. Rows of our own tasks:

    - multiple choice: ``{"id", "acc", "acc_norm", "choice", "doc_id"}``; ``acc`` is right
      when ``choice``, the index of the choice of highest summed log-likelihood, is the
      answer; ``acc_norm`` normalises that sum by the choice's length in characters
      (lm-eval's definitions); both 0 or 1;
    - generative: ``{"id", "exact_match", "f1", "prediction", "doc_id"}``; ``exact_match``
      is 0 or 1, ``f1`` in [0, 1] (``tunearena.evaluation.generative``), ``prediction`` the
      model's response as lm-eval filtered it (up to the first newline).

    ``id`` is the question's id and ``doc_id`` its source document (None when unknown),
    which the report clusters CIs by. A row of a RAG task (``write_*_task`` with
    ``retrieved_docs``) also holds ``retrieved_doc``, the document of the first passage in
    its prompt. Rows of other tasks have ``id`` = the document's index and ``doc_id`` None;
    a multiple-choice one holds ``acc``, ``acc_norm`` (None where the task does not compute
    it) and ``choice``, a generate-until one ``prediction`` and the task's own metrics under
    its first filter.

    ``loaded``: the ``(model, tokenizer)`` of ``model_dir`` from ``load_model``, when the
    caller keeps using them (to time answers), so the weights are read once.

    ``chat_template``: every task's prompt goes through the tokenizer's chat template, as
    lm-eval's ``apply_chat_template`` renders it: the prompt (with any few-shot examples of a
    registry task, ``fewshot_as_multiturn`` off) is one user message followed by the
    assistant's header; a choice follows the header with no delimiter, and a generated answer
    also stops at the tokenizer's EOS. ``lm_eval run --apply_chat_template
    --fewshot_as_multiturn false`` scores the same requests.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    own_dir = Path(task_dir).resolve()
    with _quiet(), _without_env_report():
        # Our task dir last: in lm-eval's index a later folder overrides an earlier one.
        task_manager = _task_manager([*extra_task_paths, own_dir], include_defaults)
        _check_tasks(task_manager, task_names, [*extra_task_paths, own_dir], include_defaults)
        model, tokenizer = loaded if loaded is not None else load_model(model_dir, device)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
                  trust_remote_code=trust_remote_code())
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(task_names),
            task_manager=task_manager,
            limit=limit,
            log_samples=True,
            bootstrap_iters=0,  # the report bootstraps the per-question results itself
            apply_chat_template=chat_template,
            # Few-shot examples stay in the user's one message, as our +fewshot arms send them.
            fewshot_as_multiturn=False,
        )
    if results is None:  # only on a non-zero rank, which a single-process HFLM never is
        raise RuntimeError("lm-eval returned no results")
    scores = {}
    for name in task_names:
        rows = []
        # A group (mmlu) is its leaf tasks' questions one after another, ids prefixed by
        # the leaf's name; a task is its own single leaf.
        leaves = _leaves(name, results.get("group_subtasks", {}))
        for leaf in leaves:
            output_type = results["configs"][leaf]["output_type"]
            if output_type not in SUPPORTED_OUTPUT_TYPES:
                raise ValueError(_unsupported(leaf, output_type))
            own = Path(task_manager.task_index[leaf].yaml_path).parent == own_dir
            samples = _first_filter(results["samples"][leaf])
            if output_type != "loglikelihood_rolling":  # read in windows, never cut
                _refuse_truncated(leaf, samples, tokenizer, lm)
            prefix = f"{leaf}/" if leaf != name else ""
            rows += [_row(s, output_type, own, prefix) for s in samples]
        scores[name] = rows
    return scores


def _leaves(name: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    """The tasks under ``name`` (itself when it is a task), in sorted order."""
    if name not in group_subtasks:
        return [name]
    return [leaf for sub in sorted(group_subtasks[name]) for leaf in _leaves(sub, group_subtasks)]


def load_model(model_dir: Path, device: str = "cpu") -> tuple:
    """``(model, tokenizer)`` from a local model dir, in eval mode on ``device`` (fp32 on CPU,
    the checkpoint's dtype on a GPU); a stage exported as an adapter alone is its base with
    the adapter on it (``adapted.py``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunearena.evaluation.adapted import load_adapted, unmerged_adapter

    adapter = unmerged_adapter(model_dir)
    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                                  trust_remote_code=trust_remote_code())
        if adapter is not None:
            dtype = torch.float32 if device == "cpu" else torch.bfloat16
            return load_adapted(adapter, dtype, device), tokenizer
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, dtype=torch.float32 if device == "cpu" else "auto",
            trust_remote_code=trust_remote_code(),
        ).to(device)
    return model.eval(), tokenizer


def check_lm_eval_task(name: str, task_paths: Sequence[Path], include_defaults: bool) -> str:
    """Find the lm-eval task ``name`` and load its data; return its ``output_type``.

    Looks in ``task_paths`` (folders of task YAMLs) and, with ``include_defaults``,
    lm-eval's registry. Data is read offline, from local files or the local datasets cache,
    so this answers in seconds (indexing the registry takes the most). Raises
    ``BenchmarkError`` for an unknown name (with close matches), a tag, an output type other
    than multiple_choice, generate_until or loglikelihood_rolling (a group's tasks must
    share one), or data that cannot be loaded.
    """
    missing = [str(p) for p in task_paths if not Path(p).is_dir()]
    if missing:
        raise BenchmarkError(f"lm-eval task folder(s) not found: {', '.join(missing)}")
    with _quiet():
        task_manager = _task_manager(task_paths, include_defaults)
    entry = task_manager.task_index.get(name)
    if entry is None:
        where = [str(p) for p in task_paths] + (["lm-eval's registry"] if include_defaults else [])
        raise BenchmarkError(
            f"unknown lm-eval task {name!r} (searched {', '.join(where) or 'nothing'})"
            + _did_you_mean(name, task_manager.all_subtasks)
        )
    if name in task_manager.all_tags:
        raise BenchmarkError(
            f"lm-eval name {name!r} is a tag over tasks, not a task or group; name its tasks "
            "one by one"
        )
    # Refused before any data is read.
    declared = None if name in task_manager.all_groups else _declared_output_type(entry)
    if declared is not None and declared not in SUPPORTED_OUTPUT_TYPES:
        raise BenchmarkError(_unsupported(name, declared))
    try:
        with _quiet():
            loaded = task_manager.load([name])["tasks"]
    except OSError as e:  # datasets' ConnectionError, FileNotFoundError, ...
        raise BenchmarkError(
            f"lm-eval task {name!r}: its data is not reachable (evaluation runs offline and "
            f"it is not in the local datasets cache): {e}"
        ) from None
    except Exception as e:
        raise BenchmarkError(
            f"lm-eval task {name!r} could not be loaded: {type(e).__name__}: {e}"
        ) from None
    types = {task.OUTPUT_TYPE for task in _loaded_leaves(loaded)}
    for output_type in types - set(SUPPORTED_OUTPUT_TYPES):
        raise BenchmarkError(_unsupported(name, output_type))
    if len(types) != 1:
        raise BenchmarkError(f"lm-eval group {name!r} mixes task types {sorted(types)}; a "
                             "benchmark is scored one way")
    return types.pop()


def _loaded_leaves(loaded: dict) -> list:
    """The task objects of ``TaskManager.load(...)["tasks"]``, groups opened."""
    leaves = []
    for value in loaded.values():
        leaves += _loaded_leaves(value) if isinstance(value, dict) else [value]
    return leaves


def _row(sample: dict, output_type: str, own: bool, prefix: str = "") -> dict:
    doc = sample["doc"]
    row: dict = {"id": str(doc["id"]) if own else f"{prefix}{sample['doc_id']}"}
    if output_type == "loglikelihood_rolling":
        # lm-eval's bits_per_byte is (log-likelihood, UTF-8 bytes) per document, aggregated
        # as a ratio of sums; the report does the same (and bootstraps it).
        loglikelihood, n_bytes = sample["bits_per_byte"]
        row["loglikelihood"], row["bytes"] = float(loglikelihood), int(n_bytes)
    elif output_type == "multiple_choice":
        row["acc"], row["acc_norm"] = _as_int(sample.get("acc")), _as_int(sample.get("acc_norm"))
        row["choice"] = _chosen(sample)
    elif own:
        row["exact_match"], row["f1"] = int(sample["exact_match"]), float(sample["f1"])
        row["prediction"] = str(sample["filtered_resps"][0])
    else:
        row["prediction"] = str(sample["filtered_resps"][0])
        row.update({m: sample[m] for m in sample["metrics"]})
    if own and "retrieved_doc" in doc:  # a RAG task's row: the document its first passage is from
        row["retrieved_doc"] = doc["retrieved_doc"]
    row["doc_id"] = doc.get("source_doc") if own else None
    return row


def _chosen(sample: dict) -> int:
    """The index of the choice ``acc`` picks: the highest summed log-likelihood, the first
    of equal ones (lm-eval's ``np.argmax``)."""
    lls = [float(ll) for ll, _ in sample["filtered_resps"]]
    if "acc_mutual_info" in sample["metrics"]:  # the unconditional log-likelihoods follow
        lls = lls[: len(lls) // 2]
    return max(range(len(lls)), key=lls.__getitem__)


def _as_int(value) -> int | None:
    return None if value is None else int(value)


def _first_filter(logged: list[dict]) -> list[dict]:
    # lm-eval logs one entry per (doc, filter), filter by filter; our tasks have the single
    # "none" filter. doc_id is the row index in the data, so sorting restores item order.
    first = [s for s in logged if s["filter"] == logged[0]["filter"]] if logged else []
    return sorted(first, key=lambda s: s["doc_id"])


def _refuse_truncated(name: str, samples: list[dict], tokenizer, lm) -> None:
    # lm-eval silently cuts an over-long prompt from the left, which drops retrieved
    # passages first; a RAG arm that lost its context must not be scored as if it had it.
    # Our own tasks were measured before training (``context.py``), by the same rule.
    from tunearena.evaluation.context import check_harness_samples

    check_harness_samples(name, samples, tokenizer, lm.max_length, lm.max_gen_toks)


def _check_tasks(
    task_manager, task_names: list[str], paths: Sequence[Path], include_defaults: bool
) -> None:
    """Refuse, before the model is loaded, names that are unknown, groups, or tasks without
    per-question answers."""
    index = task_manager.task_index
    unknown = [n for n in task_names if n not in index]
    if unknown:
        known = task_manager.all_subtasks
        where = ", ".join(map(str, paths)) + (" and lm-eval's registry" if include_defaults else "")
        # lm-eval's registry holds thousands of names; list them only for our small task dirs.
        hint = (
            "".join(_did_you_mean(n, known) for n in unknown)
            if include_defaults
            else (f"; found: {sorted(known) or 'none'}")
        )
        raise ValueError(f"unknown task(s) {unknown} in {where}{hint}")
    tags = [n for n in task_names if n in task_manager.all_tags]
    if tags:
        raise ValueError(f"{tags} are tags over lm-eval tasks; name their tasks one by one")
    for name in task_names:
        if name in task_manager.all_groups:
            continue  # its tasks' types are checked once lm-eval has built them
        declared = _declared_output_type(index[name])
        if declared is not None and declared not in SUPPORTED_OUTPUT_TYPES:
            raise ValueError(_unsupported(name, declared))


def _declared_output_type(entry) -> str | None:
    """The output type an indexed task's YAML declares (lm-eval's default if none); None
    for a task defined by a Python class, whose type is known only once it is built."""
    cfg = entry.cfg or {}
    return None if "class" in cfg else cfg.get("output_type", "generate_until")


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _unsupported(name: str, output_type: str) -> str:
    return (
        f"lm-eval task {name!r} is a {output_type} task; only multiple_choice, "
        "generate_until and loglikelihood_rolling (bits per byte) tasks can be scored"
    )


def _task_manager(task_paths: Sequence[Path], include_defaults: bool):
    """An lm-eval ``TaskManager`` over ``task_paths`` (and its registry), reused while no
    task YAML under ``task_paths`` changes.

    Indexing the registry parses some 15,000 YAMLs (about 10 s on two cores). The index
    only records each task's name and YAML path, and lm-eval reads the YAML again to load
    a task, so it stays valid until a YAML is added, removed or rewritten.
    """
    paths = tuple(str(Path(p).resolve()) for p in task_paths)
    stamp = tuple(
        (str(f), f.stat().st_mtime_ns) for p in paths for f in sorted(Path(p).glob("**/*.yaml"))
    )
    return _cached_task_manager(paths, include_defaults, stamp)


@functools.lru_cache(maxsize=8)
def _cached_task_manager(paths: tuple[str, ...], include_defaults: bool, stamp: tuple):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)


@contextlib.contextmanager
def _without_env_report() -> Iterator[None]:
    """Skip the environment report ``simple_evaluate`` adds to its results.

    It runs ``pip list`` and ``git`` in subprocesses (about a second per call, every arm
    pays it), and the harness keeps none of it: a run's provenance is in ``results.json``.
    """
    from lm_eval import evaluator

    saved = evaluator.add_env_info, evaluator.get_git_commit_hash
    evaluator.add_env_info, evaluator.get_git_commit_hash = (lambda results: None), (lambda: None)
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = saved


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
