"""``ExperimentConfig``: the packages' sections composed, loaded from YAML with overrides.

Relative paths inside a YAML file are taken relative to that file, so a config can be run
from any directory; paths given with ``--set`` are taken relative to the working directory.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from tunearena.cluster.config import ClusterConfig
from tunearena.configbase import ConfigError, StrictModel, format_validation_error, reference_rows
from tunearena.documents.config import OUTPUTS as SYNTHESIS_OUTPUTS
from tunearena.documents.config import SynthesisConfig
from tunearena.evaluation.arm import Arm
from tunearena.evaluation.config import EvaluationConfig, ReportConfig
from tunearena.rag.config import RagConfig
from tunearena.serve.config import ServeConfig
from tunearena.training.config import (
    ModelConfig,
    Stage,
    StageConfig,
    TrainingConfig,
    resolve_stages,
)
from tunearena.training.model_dir import means_local_dir
from tunearena.training.rag_context import check_rag_context_stage


class ExperimentConfig(StrictModel):
    """One experiment: a base model, how to fine-tune it, the RAG baseline, how to compare."""

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Run name; the run directory is ``<runs_dir>/<name>``."""
    runs_dir: Path = Path("runs")
    """Parent directory of run directories (relative to the working directory)."""
    seed: int = 0
    """Seeds training data order and initialisation (copied into ``training.seed``)."""
    model: ModelConfig
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(enabled=False))
    stages: list[StageConfig] = Field(default_factory=list)
    """Sequential fine-tuning: each stage starts from ``start_from``'s weights (default: the
    stage before); its keys override ``training``. Empty: ``training`` is the one stage."""
    rag: RagConfig = Field(default_factory=RagConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    synthesis: SynthesisConfig | None = None
    """Write the corpus, training questions, paraphrases and test questions from a folder of
    documents first; the other sections name them as ``synthesis:<file>``."""
    serve: ServeConfig = Field(default_factory=ServeConfig)
    """How ``tunearena serve RUN_DIR`` serves the finished run (read from the run's
    ``config.yaml``); no step of the run reads it."""

    @property
    def synthesis_dir(self) -> Path:
        """Where synthesis writes: ``<runs_dir>/<name>/synthesis``."""
        return (self.runs_dir / self.name / "synthesis").resolve()

    @model_validator(mode="after")
    def _stages_resolve(self) -> ExperimentConfig:
        if self.stages:
            self.training.enabled = True  # the stages are the fine-tuning
        elif self.training.enabled and not self.training.datasets:
            raise ValueError("training.enabled is true but training.datasets is empty")
        stages = self.resolved_stages()  # raises naming the stage and key
        names = [s.name for s in stages]
        arms = [Arm.parse(a) for a in self.evaluation.arms]
        if self.stages:
            # Every stage is scored, giving the stage x benchmark matrix.
            arms += [Arm("ft", n) for n in names if Arm("ft", n) not in arms]
        if Arm("ft", None, "rag") in arms:
            # A RAG-aware stage is scored as it was trained to be used: beside plain ft+rag.
            arms += [a for s in stages if s.rag_context is not None
                     and (a := Arm("ft", s.name, "rag")) not in arms]

        def position(arm: Arm) -> tuple[int, int, int]:
            # base first, then each stage in order, then the selected ft; each alone, then
            # with examples, then with retrieval.
            rank = 0 if arm.model == "base" else 1 if arm.stage else 2
            return (rank, names.index(arm.stage) if arm.stage in names else 0,
                    ("", "fewshot", "rag").index(arm.context))

        arms.sort(key=position)
        self.evaluation.arms = [str(arm) for arm in arms]
        for arm in arms:
            stage = arm.stage
            if stage and stage not in names:
                raise ValueError(f"evaluation.arms lists {str(arm)!r} but there is no stage "
                                 f"{stage!r}")
        return self

    def resolved_stages(self) -> list[Stage]:
        """The fine-tuning stages with inherited keys filled in (see ``resolve_stages``)."""
        return resolve_stages(self.training, self.stages)

    @model_validator(mode="after")
    def _arms_have_what_they_need(self) -> ExperimentConfig:
        arms = [Arm.parse(a) for a in self.evaluation.arms]
        if any(a.is_finetuned for a in arms) and not self.training.enabled:
            raise ValueError("evaluation.arms lists ft arms but training is not enabled "
                             "(set training.enabled and training.datasets, or add stages, or "
                             "drop the ft arms)")
        if any(a.context == "rag" for a in arms) and not (self.rag.enabled and self.rag.corpus):
            raise ValueError("evaluation.arms lists +rag arms but rag has no corpus "
                             "(set rag.corpus, or drop the +rag arms)")
        if self.evaluation.enabled and not self.evaluation.benchmarks:
            raise ValueError("evaluation.benchmarks is empty: nothing to compare the arms on")
        for stage in self.resolved_stages():
            if stage.rag_context is not None:
                check_rag_context_stage(
                    stage.name, [(d.path, d.format) for d in stage.training.datasets],
                    self.rag.enabled, self.rag.corpus)
        return self

    def section_hash(self, *sections: str) -> str:
        """A short hash of the named sections (what a pipeline step's output depends on)."""
        dumped = self.model_dump(mode="json")
        blob = json.dumps({s: dumped[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Config fields holding file paths, as key paths ("*": every item of a list).
_DATASET_PATHS = (("path",), ("validation_path",))
_PATH_FIELDS = (
    *(("training", "datasets", "*", *k) for k in _DATASET_PATHS),
    *(("stages", "*", "datasets", "*", *k) for k in _DATASET_PATHS),
    *(("stages", "*", "replay", "datasets", "*", *k) for k in _DATASET_PATHS),
    ("evaluation", "benchmarks", "*", "path"),
    ("evaluation", "benchmarks", "*", "task_dir"),
    ("evaluation", "fewshot", "path"),
    ("rag", "corpus"),
    ("model", "base"),
    ("model", "gguf_cache_dir"),
    ("synthesis", "documents"),
    ("synthesis", "generator", "model"),
)
SYNTHESIS_PREFIX = "synthesis:"
"""How a path names a file that synthesis writes (``synthesis:qa_test.jsonl``)."""


_HUB_KEYS = ("model.base", "synthesis.generator.model")
"""Path fields that may hold a hub id (``org/name``) rather than a path."""


def _map_paths(raw: dict, fn: Callable[[str, str], object]) -> None:
    """Replace each path field's value in ``raw`` by ``fn(value, key)``, ``key`` dotted
    (``stages.0.datasets.1.path``)."""

    def walk(node, keys: tuple[str, ...], where: str) -> None:
        head, rest = keys[0], keys[1:]
        if head == "*":
            for i, item in enumerate(node if isinstance(node, list) else []):
                walk(item, rest, f"{where}.{i}")
        elif isinstance(node, dict) and head in node:
            key = f"{where}.{head}".lstrip(".")
            if rest:
                walk(node[head], rest, key)
            elif isinstance(node[head], str):
                node[head] = fn(node[head], key)

    for keys in _PATH_FIELDS:
        walk(raw, keys, "")


def _resolve_paths(raw: dict, base_dir: Path) -> None:
    """Make the YAML's relative paths absolute against the YAML file's directory."""

    def fix(value: str, key: str) -> str:
        may_be_hub_id = key in _HUB_KEYS
        if Path(value).is_absolute() or value.startswith(SYNTHESIS_PREFIX):
            return value
        candidate = (base_dir / value).resolve()
        # model.base may be a hub id ("org/name"); only rewrite what names a local path, or
        # reads as one gone wrong (a typo of a dir beside the config), so the input check
        # names the missing dir instead of looking for a hub id.
        if may_be_hub_id and value.startswith("~"):
            return str(Path(value).expanduser())
        if may_be_hub_id and not (value.startswith(".") or candidate.exists()
                                  or means_local_dir(value, base_dir)):
            return value
        return str(candidate)

    _map_paths(raw, fix)


def _synthesis_paths(raw: dict) -> None:
    """Point ``synthesis:<file>`` paths at the run directory's ``synthesis/``; a file that
    synthesis does not write, or a config without a ``synthesis`` section, is named."""
    run_dir = Path(str(raw.get("runs_dir", "runs"))) / str(raw.get("name", "experiment"))

    def fix(value: str, key: str) -> str:
        if not value.startswith(SYNTHESIS_PREFIX):
            return value
        name = value[len(SYNTHESIS_PREFIX):]
        if not raw.get("synthesis"):
            raise ConfigError(f"{key} is {value!r}, but the config has no synthesis: section "
                              f"to write it; add one (synthesis.documents: a folder of "
                              f"documents) or name a file")
        if name not in SYNTHESIS_OUTPUTS:
            raise ConfigError(f"{key} is {value!r}: synthesis writes "
                              f"{', '.join(SYNTHESIS_PREFIX + n for n in SYNTHESIS_OUTPUTS)}")
        return str((run_dir / "synthesis" / name).resolve())

    _map_paths(raw, fix)


def input_paths(cfg: ExperimentConfig) -> list[Path]:
    """The local paths a config reads (data, corpus, benchmarks, the base model's dir)."""
    found: list[Path] = []

    def collect(value: str, key: str) -> str:
        if Path(value).is_absolute():
            found.append(Path(value))
        return value

    _map_paths(cfg.model_dump(mode="json"), collect)
    return found


def _list_entry(node: list, part: str, key: str, assignment: str) -> int:
    """The index ``part`` names in the list at ``key``; a wrong one says what there is."""
    if part.isdigit() and int(part) < len(node):
        return int(part)
    there = (f"{key} is empty" if not node else
             f"{key} has {len(node)} {'entry' if len(node) == 1 else 'entries'} "
             f"(0 to {len(node) - 1})")
    want = f"there is no {key}.{part}" if part.isdigit() else f"{key}.{part} is not a number"
    raise ConfigError(f"--set {assignment!r}: {want}: {there}; a --set can change an entry "
                      "but not add one (add it to the YAML file)")


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML (``2``, ``true``, ``[1]``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. training.max_steps=10")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node: object = raw
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[:i])
        if isinstance(node, list):
            node = node[_list_entry(node, part, where, assignment)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {where or 'the config'} is not a section "
                              f"(it holds {node!r})")
        node = node.setdefault(part, {})
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML: {e}") from None
    last, where = parts[-1], ".".join(parts[:-1])
    if isinstance(node, list):
        node[_list_entry(node, last, where, assignment)] = parsed
    elif isinstance(node, dict):
        node[last] = parsed
    else:
        raise ConfigError(f"--set {assignment!r}: {where} is not a section (it holds {node!r})")


MINIMAL_CONFIG = """\
model:
  base: my-model-dir            # a Hugging Face model dir, a GGUF file or a hub id
evaluation:
  arms: [base]
  benchmarks:
    - {name: mine, path: qa.jsonl, kind: domain}
"""
"""The least a config holds; ``training`` or ``stages`` add fine-tuning, ``rag`` retrieval."""


def _read_yaml(path: Path) -> dict:
    """The top-level mapping of the YAML file ``path``; what it is not is said plainly."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a config file (YAML), e.g. "
                          "configs/demo.yaml")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 ({e}); save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (or only comments); a config needs at "
                          f"least:\n{MINIMAL_CONFIG}and training: or stages: to fine-tune, rag: "
                          "to compare retrieval (configs/demo.yaml shows every section)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level is a {type(raw).__name__}, expected a mapping "
                          f"of sections (model:, training:, evaluation:, ...), e.g.:\n"
                          f"{MINIMAL_CONFIG}")
    return raw


def _blamed_on(raw_file: dict, overrides: Sequence[str], path: Path) -> Callable[[dict], str]:
    """Who a validation error is blamed on: the YAML file when the file alone has it, else the
    ``--set`` arguments (the one whose key it lies under, when one does)."""
    try:
        ExperimentConfig.model_validate(copy.deepcopy(raw_file))
        from_file: set[tuple] = set()
    except ValidationError as e:
        from_file = {(tuple(x["loc"]), x["msg"]) for x in e.errors()}

    def related(assignment: str, loc: tuple) -> bool:
        key = tuple(assignment.split("=", 1)[0].strip().split("."))
        loc_keys = tuple(str(p) for p in loc)
        n = min(len(key), len(loc_keys))
        return n > 0 and key[:n] == loc_keys[:n]

    def source(error: dict) -> str:
        if not overrides or (tuple(error["loc"]), error["msg"]) in from_file:
            return str(path)
        named = [a for a in overrides if related(a, tuple(error["loc"]))] or list(overrides)
        return ", ".join(f"--set {a}" for a in named)

    return source


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment YAML; errors name the file and field, and an
    error that only the ``--set`` arguments cause names them rather than the file."""
    path = Path(path)
    raw_file = copy.deepcopy(_read_yaml(path))
    _resolve_paths(raw_file, path.resolve().parent)
    raw = copy.deepcopy(raw_file)
    for assignment in overrides:
        apply_override(raw, assignment)
    _synthesis_paths(raw)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise format_validation_error(e, ExperimentConfig,
                                      _blamed_on(raw_file, overrides, path)) from None
    # One seed for the experiment: training inherits it unless the YAML set its own.
    if "seed" not in (raw.get("training") or {}):
        cfg.training.seed = cfg.seed
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what is saved into the run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_reference() -> str:
    """The config reference as a Markdown page: a title, how to read it, and one table row per
    key. ``docs/config-reference.md`` is this text verbatim (a unit test keeps it so)."""

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("``", "`").replace("|", "\\|")

    lines = [
        "# Config reference",
        "",
        "Every key of an experiment YAML: its type, its default and what it means. A dotted key",
        "is a section's field (`training.lr`); `[]` marks a list of such entries",
        "(`training.datasets[].path`). Any key can be overridden on the command line with",
        "`--set KEY=VALUE`. Generated from the config models' field docs by `tunearena reference`",
        "(`tunearena reference > docs/config-reference.md` rewrites this page).",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    rows = reference_rows(ExperimentConfig)
    # A stage also takes every training key; one row says so rather than repeating them all.
    at = max(i for i, row in enumerate(rows) if row[0].startswith("stages[]")) + 1
    rows.insert(at, ("stages[].<training key>", "as in training", "inherited",
                     "Any `training` key (`datasets`, `epochs`, `lr`, `method`, `lora`, ...) "
                     "set on a stage overrides the `training` section for that stage."))
    for key, type_name, default, doc in rows:
        lines.append(f"| `{key}` | {cell(type_name)} | {cell(default)} | {cell(doc)} |")
    return "\n".join(lines) + "\n"
