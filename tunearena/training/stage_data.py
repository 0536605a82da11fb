"""A stage's training data as the run trains on it: its files and the data it replays, read,
cleaned and split (``prepare``), tokenised (``data``) and mixed (``mixture``).

``prepare_stage_data`` is the one route from files to tokens: the run's training step,
``run_stage``'s default and ``tunearena preflight``'s batch arithmetic all count the same
sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tunearena.training.config import DatasetConfig, Stage, TrainingConfig, ancestors
from tunearena.training.data import TaskRecords, TokenizedSplit, tokenize_tasks
from tunearena.training.formats import require_chat_template, uses_chat_template
from tunearena.training.lengths import check_long_records, fit_to_seq_len
from tunearena.training.mixture import Mixture, build_mixture
from tunearena.training.prepare import PreparedData, prepare_dataset

REPLAY_PREFIX = "replay:"
"""Task names of replayed data: ``replay:<stage>/<task>`` for an earlier stage's task,
``replay:<task>`` for a replay dataset."""


@dataclass
class StageData:
    """One stage's training data, prepared and tokenised."""

    prepared: dict[str, PreparedData]
    """The stage's own files (by task) and its replay datasets (``replay:<task>``), cleaned and
    split, with the report of what cleaning did: what the run writes to ``data/<stage>/``."""
    tasks: list[TaskRecords]
    """The tasks trained on: the stage's own, then the replayed ones."""
    train: TokenizedSplit
    validation: TokenizedSplit | None
    mixture: Mixture

    @property
    def replay_sources(self) -> list[str]:
        """The replayed tasks, ``<stage>/<task>`` or a replay dataset's task."""
        return [t.name.removeprefix(REPLAY_PREFIX) for t in self.tasks
                if t.name.startswith(REPLAY_PREFIX)]


def stage_mixture(cfg: TrainingConfig, train: TokenizedSplit, task_names: list[str],
                  replay_fraction: float = 0.0) -> Mixture:
    """The mixture of a stage whose training rows are tagged with ``task_names``' indices:
    the first ``len(cfg.datasets)`` are the stage's own tasks, the rest replayed data."""
    task = train.task if train.task is not None else np.zeros(len(train), dtype=np.int16)
    sizes = np.bincount(task, minlength=len(task_names)).tolist()
    n_own = len(cfg.datasets)
    weights = {ds.task: ds.weight for ds in cfg.datasets}
    return build_mixture(dict(zip(task_names[:n_own], sizes[:n_own], strict=True)), weights,
                         cfg.mixture_temperature,
                         dict(zip(task_names[n_own:], sizes[n_own:], strict=True)), replay_fraction)


def prepare_stage_data(stage: Stage, tokenizer, stages: Sequence[Stage] = (),
                       questions: Mapping[str, list[str]] | None = None,
                       chat_template: bool = False) -> StageData:
    """Read, clean, leak-check, split and tokenise ``stage``'s datasets and what it replays.

    ``stages`` are the run's resolved stages, needed when ``stage`` replays earlier ones: an
    earlier stage's tasks are prepared with that stage's own settings, exactly as its own run
    prepared them. ``questions`` maps each benchmark to its question texts, for the leak
    check (none: nothing can leak). ``chat_template``: the run's prompts go through the chat
    template, and so do ``instruction`` records. Raises ``DataError`` naming the file when a
    record is broken or no record is left to train on, and ``LongRecordsError`` naming each
    file with records longer than ``seq_len`` unless ``long_records`` drops them.
    """
    t = stage.training
    replayed = stage.replay.datasets if stage.replay is not None else []
    for ds in [*t.datasets, *replayed]:
        if uses_chat_template(ds.format, chat_template):
            # Before any file is read: a tokenizer that cannot render the records fails fast.
            require_chat_template(tokenizer, f"{ds.path}: format {ds.format!r}")
    asked = dict(questions or {})
    measured: list[tuple[PreparedData, TrainingConfig]] = []

    def prepare(ds: DatasetConfig, training: TrainingConfig) -> PreparedData:
        data = fit_to_seq_len(prepare_dataset(ds, training.data_prep,
                                              training.validation_fraction, training.seed, asked),
                              tokenizer, training, chat_template)
        measured.append((data, training))
        return data

    def records(name: str, p: PreparedData) -> TaskRecords:
        return TaskRecords(name, p.format, p.train, p.validation)

    prepared = {ds.task: prepare(ds, t) for ds in t.datasets}
    tasks = [records(name, p) for name, p in prepared.items()]
    replay_fraction = 0.0
    if stage.replay is not None:
        by_name = {s.name: s for s in stages}
        sources = (ancestors(list(stages), stage.name) if stage.replay.stages == "earlier"
                   else stage.replay.stages)
        for source in sources:
            # An earlier stage's tasks keep their own format; each is replayed as one task.
            earlier = by_name[source].training
            tasks += [records(f"{REPLAY_PREFIX}{source}/{ds.task}", prepare(ds, earlier))
                      for ds in earlier.datasets]
        for ds in replayed:
            name = REPLAY_PREFIX + ds.task
            prepared[name] = prepare(ds, t)
            tasks.append(records(name, prepared[name]))
        replay_fraction = stage.replay.fraction
    # Every file's long records at once, each measured by the stage that trains on it.
    for training in {id(tr): tr for _, tr in measured}.values():
        check_long_records([d for d, tr in measured if tr is training], training, None,
                           f"stage {stage.name}")
    return StageData(prepared, tasks, *tokenize_stage(t, tasks, tokenizer, replay_fraction,
                                                      chat_template))


def tokenize_stage(training: TrainingConfig, tasks: list[TaskRecords], tokenizer,
                   replay_fraction: float = 0.0, chat_template: bool = False,
                   ) -> tuple[TokenizedSplit, TokenizedSplit | None, Mixture]:
    """Tokenise a stage's prepared tasks (its own first, then replayed ones) and mix them:
    the training split, the validation split, and the mixture that samples the training rows.
    The run's train step calls this on the files the prepare step wrote; preflight and
    ``run_stage``'s default call it through ``prepare_stage_data``."""
    train, validation = tokenize_tasks(tasks, tokenizer, training.seq_len, training.packing,
                                       chat_template)
    mixture = stage_mixture(training, train, [task.name for task in tasks], replay_fraction)
    return train, validation, mixture
