"""Bad inputs, as a hostile but fair user would give them: each case is an input, the exit code
it must get, the words its message must contain, and the files that must come through it
unchanged. ``tunearena`` runs in process (``main(argv)``), so each case costs no interpreter
start; the cases that need real signals or two drivers live in the integration tests
(``test_run_guard.py``).

A case builds its input in ``tmp_path`` and returns the command line; files it lists under
``keep`` are hashed before and after the command, and must not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunearena.launch.cli import main
from tunearena.launch.lock import RunLock

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
DEMO_BASE = REPO / "examples" / "demo_world" / "base_model"


@dataclass(frozen=True)
class Case:
    """One bad input. ``build(tmp_path)`` writes what it needs and returns ``(argv, keep)``:
    the command line and the files that must come through unchanged."""

    name: str
    build: Callable[[Path], tuple[list[str], list[Path]]]
    code: int
    words: tuple[str, ...]
    no_traceback: bool = True
    marks: tuple = field(default=())
    env: tuple[tuple[str, str | None], ...] = ()
    """Environment for the command: ``(name, value)``, ``{tmp}`` in a value standing for
    ``tmp_path``; a value of None unsets the variable."""


# --- model files: weights, hub ids, custom code ------------------------------------------


def _check_model(model: Path | str, *overrides: str) -> list[str]:
    """``tunearena check`` on the demo config with ``model.base`` replaced."""
    return ["check", str(DEMO), "--set", f"model.base={model}",
            *(a for o in overrides for a in ("--set", o))]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_json(path: Path, **changes) -> None:
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _garble_header(d: Path) -> None:
    data = bytearray((d / "model.safetensors").read_bytes())
    data[9:17] = b"\xff" * 8  # inside the JSON header, past its opening brace
    (d / "model.safetensors").write_bytes(bytes(data))


def _grow_vocab(d: Path) -> None:
    import json

    vocab = json.loads((d / "config.json").read_text())["vocab_size"]
    _edit_json(d / "config.json", vocab_size=vocab + 7)


def add_custom_code(d: Path, marker: Path, where: str = "config.json") -> None:
    """Give model dir ``d`` an ``auto_map`` (in ``where``) naming a module that writes
    ``marker`` when imported: proof, if the file appears, that the dir's code ran."""
    (d / "evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, PreTrainedTokenizerFast\n\n"
        "class EvilConfig(LlamaConfig):\n    pass\n\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    auto_map = ({"AutoConfig": "evil.EvilConfig"} if where == "config.json"
                else {"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    _edit_json(d / where, auto_map=auto_map)


def _shard(d: Path, drop_second: bool = True) -> None:
    """Split the weights into two shards with an index; drop the second shard."""
    import json

    from safetensors.torch import load_file, save_file

    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, d / file)
    weight_map = {k: file for file, keys in halves.items() for k in keys}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    if drop_second:
        (d / "model-00002-of-00002.safetensors").unlink()


def _to_bin(d: Path) -> None:
    """Weights as a truncated ``pytorch_model.bin`` instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    _truncate(d / "pytorch_model.bin")


class _RunsCode:
    """Unpickling it would run ``touch MARKER``; torch's plain-tensor loader refuses it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import subprocess

        return (subprocess.call, (["touch", str(self.marker)],))


def pickle_that_runs_code(d: Path, marker: Path) -> None:
    """Weights as a ``pytorch_model.bin`` whose pickle would create ``marker`` if loaded."""
    import torch

    torch.save({"model.embed_tokens.weight": _RunsCode(marker)}, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()


def _weights_as_dir(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").mkdir()


def _model_case(name: str, damage: Callable[[Path], None], words: tuple[str, ...],
                base: Callable[[Path], Path] = lambda d: d) -> Case:
    """A tiny model dir (``make_tiny_model_dir``), damaged, checked as ``model.base``."""

    def build(tmp_path: Path) -> tuple[list[str], list[Path]]:
        from conftest import make_tiny_model_dir

        d = make_tiny_model_dir(tmp_path / "model")
        damage(d)
        return _check_model(base(d)), [d]

    return Case(name, build, 2, words)


def _tiny_gguf(path: Path) -> Path:
    """A GGUF file with one 64x64 F32 tensor (not a loadable model: enough to be read)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((64, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_case(name: str, damage: Callable[[Path], None], words: tuple[str, ...]) -> Case:
    def build(tmp_path: Path) -> tuple[list[str], list[Path]]:
        path = _tiny_gguf(tmp_path / "tiny.gguf")
        damage(path)
        return _check_model(path, f"model.gguf_cache_dir={tmp_path / 'cache'}"), [path]

    return Case(name, build, 2, words)


def _garbage_gguf(path: Path) -> None:
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)


def _relative_typo(base: str, words: tuple[str, ...]) -> Case:
    """A config beside a model dir ``base_model`` whose ``model.base`` is ``base``."""

    def build(tmp_path: Path) -> tuple[list[str], list[Path]]:
        from conftest import make_tiny_model_dir

        (tmp_path / "models").mkdir()
        d = make_tiny_model_dir(tmp_path / "base_model")
        config = tmp_path / "experiment.yaml"
        config.write_text(f"model:\n  base: {base}\n"
                          "evaluation:\n  enabled: false\n  arms: [base]\n")
        return ["check", str(config)], [d, config]

    return Case(f"typo_relative_path:{base}", build, 2, words)


def _directory_as_gguf(tmp_path: Path) -> tuple[list[str], list[Path]]:
    (tmp_path / "model.gguf").mkdir()
    return _check_model(tmp_path / "model.gguf"), []


MODEL_CASES: list[Case] = [
    _model_case("truncated_safetensors", lambda d: _truncate(d / "model.safetensors"),
                ("model.safetensors is damaged", "truncated", "download it again")),
    _model_case("truncated_safetensors_header",
                lambda d: _truncate(d / "model.safetensors", 0.001),
                ("model.safetensors is damaged", "truncated: its header claims")),
    _model_case("safetensors_header_not_json", _garble_header,
                ("model.safetensors is damaged", "header is not valid JSON")),
    _model_case("embedding_rows_vs_vocab_size", _grow_vocab,
                ("model.embed_tokens.weight", "vocab_size", "different models")),
    _model_case("embedding_width_vs_hidden_size",
                lambda d: _edit_json(d / "config.json", hidden_size=32),
                ("model.embed_tokens.weight", "hidden size 32", "different models")),
    _model_case("custom_code_in_config",
                lambda d: add_custom_code(d, d.parent / "ran"),
                ("ships its own Python code", "config.json has an auto_map",
                 "model.trust_remote_code")),
    _model_case("custom_code_in_tokenizer",
                lambda d: add_custom_code(d, d.parent / "ran", "tokenizer_config.json"),
                ("tokenizer_config.json has an auto_map", "model.trust_remote_code")),
    _model_case("missing_shard", _shard,
                ("model-00002-of-00002.safetensors", "weights file not found")),
    _model_case("truncated_pytorch_bin", _to_bin, ("pytorch_model.bin is damaged",)),
    _model_case("pytorch_bin_pickle_runs_code",
                lambda d: pickle_that_runs_code(d, d.parent / "ran"),
                ("pytorch_model.bin holds more than plain tensors", "could run code")),
    _model_case("weights_file_is_a_directory", _weights_as_dir,
                ("model.safetensors is a directory, not a weights file",)),
    _model_case("config_json_not_json", lambda d: (d / "config.json").write_text("{oops"),
                ("config.json cannot be read as JSON", "damaged")),
    _model_case("base_is_a_file_not_a_dir", lambda d: None,
                ("is a file", "name the model dir"), base=lambda d: d / "model.safetensors"),
    Case("hub_id_offline_not_cached",
         lambda tmp_path: (_check_model("tunearena-tests/not-a-cached-model"), []), 2,
         ("not a local dir and not in the offline Hugging Face cache", "hf download",
          "HF_HUB_OFFLINE=0")),
    _relative_typo("base_modle", ("base_modle does not exist", "no such model dir",
                                  "did you mean", "base_model?")),
    _relative_typo("models/tiny", ("models/tiny does not exist", "config file's directory")),
    _relative_typo("./base-model", ("base-model does not exist", "did you mean")),
    _gguf_case("truncated_gguf", lambda p: _truncate(p, 0.75),
               ("tiny.gguf is not a complete GGUF file", "truncated", "fetch it again")),
    _gguf_case("garbled_gguf", _garbage_gguf,
               ("tiny.gguf is not a complete GGUF file", "fetch it again")),
    Case("directory_given_as_gguf_file", _directory_as_gguf, 2,
         ("model.gguf is a directory, not a GGUF file",)),
]


# --- data and config: training files, corpus, index, YAML, --set --------------------------

DEMO_DOMAIN = REPO / "examples" / "demo_world" / "domain"


def _check(tmp: Path, *overrides: str, command: str = "check") -> list[str]:
    """``tunearena check`` (or ``run``) of the demo config, its run directory in ``tmp``."""
    argv = [command, str(DEMO), "--set", f"runs_dir={tmp / 'runs'}"]
    for assignment in overrides:
        argv += ["--set", assignment]
    return argv


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _data_case(file: str, records: list[dict], key: str = "stages.0.datasets.0.path"):
    """A case whose training (or other) file at ``key`` holds ``records``."""
    def build(tmp: Path) -> tuple[list[str], list[Path]]:
        path = _jsonl(tmp / file, records)
        return _check(tmp, f"{key}={path}"), [path]
    return build


def _file_case(file: str, content: bytes, key: str):
    def build(tmp: Path) -> tuple[list[str], list[Path]]:
        path = tmp / file
        path.write_bytes(content)
        return _check(tmp, f"{key}={path}"), [path]
    return build


def _leaked_qa(tmp: Path) -> tuple[list[str], list[Path]]:
    """Instruction records that are the test questions themselves: all dropped as leaks."""
    questions = [json.loads(line)["question"]
                 for line in (DEMO_DOMAIN / "qa_test.jsonl").read_text().splitlines()[:5]]
    path = _jsonl(tmp / "leaked.jsonl",
                  [{"prompt": f"Question: {q}\nAnswer:", "response": " yes"} for q in questions])
    return _check(tmp, f"stages.1.datasets.0.path={path}"), [path]


def _huge_line(tmp: Path) -> tuple[list[str], list[Path]]:
    path = tmp / "huge.jsonl"
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"text": "A small record."}) + "\n")
        f.write(json.dumps({"text": "word " * (2 * 2**20)}) + "\n")  # 10 MiB on line 2
    return _check(tmp, f"stages.0.datasets.0.path={path}"), [path]


def _runs_dir_under_file(command: str):
    def build(tmp: Path) -> tuple[list[str], list[Path]]:
        blocker = tmp / "runs"
        blocker.write_text("not a directory\n")
        return [command, str(DEMO), "--set", f"runs_dir={blocker / 'sub'}"], [blocker]
    return build


def _config_file(name: str, content: str | None):
    """A config file ``name`` holding ``content`` (None: a directory of that name)."""
    def build(tmp: Path) -> tuple[list[str], list[Path]]:
        path = tmp / name
        if content is None:
            path.mkdir()
            (path / "demo.yaml").write_bytes(DEMO.read_bytes())
        else:
            path.write_text(content, encoding="utf-8")
        return ["check", str(path)], [path]
    return build


def _directory_for(key: str):
    def build(tmp: Path) -> tuple[list[str], list[Path]]:
        folder = tmp / "folder"
        folder.mkdir()
        _jsonl(folder / "inside.jsonl", [{"text": "a record"}])
        return _check(tmp, f"{key}={folder}"), [folder]
    return build


def _demo_only(*overrides: str):
    def build(tmp: Path) -> tuple[list[str], list[Path]]:
        return _check(tmp, *overrides), [DEMO_DOMAIN]
    return build


LONG_ANSWER = {"prompt": "Question: Tell me everything.\nAnswer:",
               "response": " The whole story, told again and again." * 60}

def _methods_demo(*overrides: str, pairs: list[dict] | None = None):
    """``tunearena check`` of configs/demo_methods.yaml; ``pairs``: its DPO stage's file."""
    def build(tmp: Path) -> tuple[list[str], list[Path]]:
        argv = ["check", str(METHODS_DEMO), "--set", f"runs_dir={tmp / 'runs'}"]
        keep = [DEMO_DOMAIN]
        if pairs is not None:
            path = _jsonl(tmp / "pairs.jsonl", pairs)
            argv += ["--set", f"stages.3.datasets.0.path={path}"]
            keep = [path]
        for assignment in overrides:
            argv += ["--set", assignment]
        return argv, keep
    return build


METHODS_DEMO = REPO / "configs" / "demo_methods.yaml"
PAIR = {"prompt": "Question: What does the Zephyr lamp cost?\nAnswer:", "chosen": " 40 dollars",
        "rejected": " 55 dollars"}

DATA_CASES: list[Case] = [
    Case("preference-record-missing-a-field",
         _methods_demo(pairs=[PAIR, {k: v for k, v in PAIR.items() if k != "rejected"}]), 2,
         ("pairs.jsonl:2", "no 'rejected' field", "prompt (or messages), chosen and rejected")),
    Case("rag-aware-stage-without-a-corpus",
         _methods_demo("rag.enabled=false", "evaluation.arms=[base, ft]"), 2,
         ("stage 'qa_raft'", "rag.enabled is false")),
    Case("qlora-under-zero3",
         _methods_demo("stages.2.method=qlora", "stages.2.zero_stage=3"), 2,
         ("stages.2 (qa_lora)", "ZeRO-3 cannot partition 4-bit weights")),
    Case("sweep-space-names-an-unknown-key",
         _methods_demo("stages.1.sweep={space: {lrr: {grid: [0.001, 0.003]}}}"), 2,
         ("stages.1 (qa).sweep.space", "'lrr' is not a training key", "did you mean 'lr'")),
    Case("sweep-space-is-empty", _methods_demo("stages.1.sweep={space: {}}"), 2,
         ("space is empty", "stages")),
    Case("sweep-more-concurrent-trials-than-the-cluster-places",
         _methods_demo("stages.1.sweep={space: {lr: {grid: [0.001, 0.003, 0.01]}}, "
                       "max_concurrent_trials: 3}", "cluster.num_cpus=2"), 2,
         ("stage qa: sweep.max_concurrent_trials is 3", "places 1 trial(s)")),
    Case("training-file-all-empty",
         _data_case("empty.jsonl", [{"text": ""}, {"text": "   "}, {"text": "\t"}]), 2,
         ("empty.jsonl", "no record is left after cleaning", "3 read",
          "3 dropped as empty or garbled", "training.data_prep")),
    Case("training-file-all-leaked", _leaked_qa, 2,
         ("leaked.jsonl", "no record is left after cleaning", "5 read",
          "5 dropped as holding a benchmark question", "leak_check")),
    Case("training-file-is-a-directory", _directory_for("stages.0.datasets.0.path"), 2,
         ("folder: is a directory, expected a training file",)),
    Case("corpus-is-a-directory", _directory_for("rag.corpus"), 2,
         ("folder: is a directory, expected a corpus file",)),
    Case("corpus-is-a-csv-table",
         _file_case("docs.csv", b"id,text\nd1,Some text\n", "rag.corpus"), 2,
         ("docs.csv: a .csv table", "JSONL", "to_json(")),
    Case("benchmark-utf16-without-bom",
         _file_case("qa.jsonl", '{"id": "a"}\n'.encode("utf-16-le"),
                    "evaluation.benchmarks.0.path"), 2,
         ("qa.jsonl", "UTF-16 without a byte-order mark", "save it as UTF-8")),
    Case("benchmark-in-latin-1",
         _file_case("qa.jsonl", json.dumps({"id": "a", "question": "Où?", "choices": ["x"],
                                            "answer": 0}, ensure_ascii=False).encode("latin-1"),
                    "evaluation.benchmarks.0.path"), 2,
         ("qa.jsonl:1: not valid UTF-8", "save the file as UTF-8")),
    Case("huge-jsonl-line", _huge_line, 2,
         ("huge.jsonl:2", "a record of 10.0 MiB", "over the 8 MiB", "split it")),
    Case("records-longer-than-seq-len",
         _data_case("long.jsonl", [LONG_ANSWER, {"prompt": "Q?\nAnswer:", "response": " A"}],
                    "stages.1.datasets.0.path"), 2,
         ("stage qa", "long.jsonl: 1 record(s)", "longer than training.seq_len 256",
          "long_records: drop")),
    Case("faiss-factory-unparsable", _demo_only("rag.index_factory=HNSWx,Flatt"), 2,
         ("'HNSWx,Flatt'", "could not parse index string", "rag.index_factory")),
    Case("faiss-ivf-lists-above-chunks", _demo_only("rag.index_factory=IVF4096,Flat"), 2,
         ("rag.index_factory", "4096 lists", "only 30 chunks")),
    Case("faiss-search-params-unknown", _demo_only("rag.index_search_params=nprobe=4"), 2,
         ("'nprobe=4'", "rag.index_search_params")),
    Case("top-k-above-corpus-chunks", _demo_only("rag.top_k=100"), 2,
         ("rag.top_k is 100", "gives only 30 chunks", "at most 30")),
    Case("chunk-tokens-above-embedder", _demo_only("rag.chunk_tokens=1000"), 2,
         ("rag.chunk_tokens (1000) exceeds", "at most 254")),
    Case("embedding-model-missing", _demo_only("rag.embedding_model=no-such-embedder"), 2,
         ("rag.embedding_model 'no-such-embedder' cannot be loaded",)),
    Case("runs-dir-under-a-file", _runs_dir_under_file("check"), 2,
         ("runs_dir", "is a file, not a directory", "--set runs_dir=")),
    Case("runs-dir-under-a-file-run", _runs_dir_under_file("run"), 2,
         ("runs_dir", "is a file, not a directory")),
    Case("config-is-a-directory", _config_file("configs", None), 2,
         ("configs: is a directory, expected a config file",)),
    Case("config-empty", _config_file("empty.yaml", "# nothing yet\n"), 2,
         ("empty.yaml: the file is empty", "model:", "base:", "benchmarks:")),
    Case("config-is-a-list", _config_file("list.yaml", "- model\n- training\n"), 2,
         ("list.yaml: the top level is a list, expected a mapping of sections",)),
    Case("set-index-past-the-stages", _demo_only("stages.5.lr=1"), 2,
         ("--set 'stages.5.lr=1'", "there is no stages.5", "stages has 3 entries (0 to 2)")),
    Case("set-value-blamed-on-set", _demo_only("rag.chunk_overlap_tokens=500"), 2,
         ("error: --set rag.chunk_overlap_tokens=500: rag:", "must be smaller")),
]


# --- run directories, reports, cluster -----------------------------------------------------


def _reported_run(tmp_path: Path) -> Path:
    """A run dir with a good results.json and the reports rendered from it."""
    from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
    from tunearena.evaluation.report import summarise, write_reports, write_results

    benchmarks = [BenchmarkConfig(name="dom", path="dom.jsonl", kind="domain")]
    samples = {arm: {"dom": [{"id": f"q{i}", "acc": int(i < right), "acc_norm": 0}
                             for i in range(10)]}
               for arm, right in (("base", 3), ("base+rag", 7), ("ft", 5), ("ft+rag", 8))}
    results = summarise(samples, benchmarks,
                        EvaluationConfig(benchmarks=benchmarks, bootstrap_samples=200),
                        ReportConfig(), {})
    run_dir = tmp_path / "runs" / "done"
    run_dir.mkdir(parents=True)
    write_results(run_dir, results)
    write_reports(run_dir, results)
    return run_dir


def _report_over(results_json: str | None) -> Callable[[Path], tuple[list[str], list[Path]]]:
    """``tunearena report`` on a reported run whose results.json became ``results_json``
    (None: deleted); its reports must come through."""

    def build(tmp_path: Path) -> tuple[list[str], list[Path]]:
        run_dir = _reported_run(tmp_path)
        path = run_dir / "results.json"
        if results_json is None:
            path.unlink()
        else:
            path.write_text(results_json)
        return ["report", str(run_dir)], [run_dir / "report.html", run_dir / "report.md"]

    return build


REPORT_CASES: list[Case] = [
    Case("report-results-without-results", _report_over('{"arms": 5}'), 2,
         ("results.json", "settings: Field required", "arms: Input should be a valid list",
          "benchmarks: Field required", "report.md and report.html kept")),
    Case("report-results-truncated", _report_over('{"schema_version": 3, "arms": ["ba'), 2,
         ("results.json: not valid JSON", "kept as they were")),
    Case("report-results-a-list", _report_over('[{"arms": ["base"]}]'), 2,
         ("results.json: expected a JSON object, got list", "kept as they were")),
    Case("report-results-missing", _report_over(None), 2,
         ("results.json: results not found", "kept as they were")),
    Case("report-results-empty-object",
         _report_over('{"settings": {}, "arms": [], "benchmarks": {}}'), 2,
         ("results.json", "kept as they were")),
]


_HELD_LOCKS: list[RunLock] = []  # held until the session ends, like a driver still running


def _run(tmp: Path, *extra: str) -> list[str]:
    """``tunearena run`` of the demo config into ``tmp/runs/r``."""
    return ["run", str(DEMO), "--set", f"runs_dir={tmp / 'runs'}", "--set", "name=r", *extra]


def _earlier_run(tmp: Path, **steps: dict) -> Path:
    """A run directory ``tmp/runs/r`` whose manifest holds ``steps``; returns the manifest."""
    run_dir = tmp / "runs" / "r"
    run_dir.mkdir(parents=True)
    entries = {name.replace("__", ":"): {"config_hash": "0123", "started": "2026-01-01T10:00:00",
                                         "artifacts": {}, **entry}
               for name, entry in steps.items()}
    path = run_dir / "manifest.json"
    path.write_text(json.dumps({"created": "2026-01-01T10:00:00", "steps": entries}))
    return path


def _truncated_manifest(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, index={"status": "done"})
    path.write_text(path.read_text()[:40])  # a disk that filled up mid-write
    return _run(tmp, "--resume"), [path]


def _manifest_without_hashes(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp)
    path.write_text(json.dumps({"steps": {"index": {"status": "done"}}}))
    return _run(tmp, "--resume"), [path]


def _locked_run_dir(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, prepare={"status": "done"}, train={"status": "running"})
    lock = RunLock(path.parent, "tunearena run first.yaml")
    lock.acquire()
    _HELD_LOCKS.append(lock)
    return _run(tmp, "--resume"), [path]


def _stale_lock(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, train={"status": "failed", "error": "RuntimeError: worker died"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names a driver that is gone; the kernel released its flock
    (path.parent / ".lock").write_text(json.dumps(
        {"pid": dead.pid, "host": "h1", "command": "tunearena run old.yaml", "since": "then"}))
    return _run(tmp), [path]


def _failed_run(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, prepare__s1={"status": "done"},
                        train__s1={"status": "failed", "error": "RuntimeError: worker died\nmore"})
    return _run(tmp), [path]


def _interrupted_run(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, train__s1={"status": "interrupted", "signal": "SIGTERM"})
    return _run(tmp), [path]


RUN_CASES: list[Case] = [
    Case("truncated manifest, --resume", _truncated_manifest, 2,
         ("manifest.json: not a readable run manifest", "Remove it and rerun with --resume",
          "--set name=")),
    Case("manifest step without its hash, --resume", _manifest_without_hashes, 2,
         ("manifest.json: not a readable run manifest", "step 'index' lacks")),
    Case("run dir locked by a running driver, --resume", _locked_run_dir, 2,
         ("is in use by pid", f"pid {os.getpid()}", "(tunearena run first.yaml)",
          "one driver per run directory")),
    Case("stale lock of a dead driver, earlier run failed", _stale_lock, 2,
         ("the previous driver of this run", "(tunearena run old.yaml), died holding it",
          "step train failed (RuntimeError: worker died)", "Pass --resume to continue it")),
    Case("failed run, rerun without --resume", _failed_run, 2,
         ("already holds a run: step train:s1 failed (RuntimeError: worker died)",
          "Pass --resume to continue it", "--set name=...")),
    Case("interrupted run, rerun without --resume", _interrupted_run, 2,
         ("step train:s1 was interrupted (SIGTERM)", "Pass --resume to continue it")),
]


# Ray's own session files (what `ray start` recorded) are looked for under a private
# RAY_TMPDIR, so clusters other programs run on this machine are not seen.
_NO_CLUSTER = (("RAY_TMPDIR", "{tmp}"), ("RAY_ADDRESS", None))

CLUSTER_CASES: list[Case] = [
    Case("cluster-address-auto-with-no-cluster",
         lambda tmp: (["preflight", str(DEMO), "--set", "cluster.address=auto"], []), 2,
         ("no Ray cluster is running here", "ray start --head", "cluster.address: local"),
         env=_NO_CLUSTER),
    Case("cluster-address-nobody-answers",
         lambda tmp: (["preflight", str(DEMO), "--set", "cluster.address=127.0.0.1:1"], []), 2,
         ("cannot reach", "127.0.0.1:1"), env=_NO_CLUSTER),
]


ALL_CASES = [*CLUSTER_CASES, *MODEL_CASES, *DATA_CASES, *REPORT_CASES, *RUN_CASES]


def _digest(path: Path) -> str:
    if path.is_dir():
        return "".join(_digest(p) for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=c.marks) for c in ALL_CASES])
def test_bad_input(case: Case, tmp_path, capsys, monkeypatch):
    for name, value in case.env:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value.format(tmp=tmp_path))
    argv, keep = case.build(tmp_path)
    before = {p: _digest(p) for p in keep}
    code = main(argv)
    out, err = capsys.readouterr()
    said = " ".join((out + err).split())  # rich wraps long lines
    assert code == case.code, said
    for word in case.words:
        assert " ".join(word.split()) in said, f"{word!r} not in: {said}"
    if case.no_traceback:
        assert "Traceback" not in said
    for path, digest in before.items():
        assert path.exists() and _digest(path) == digest, f"{path} changed"
