"""``tunearena check`` and ``tunearena reference`` as a user runs them: exit codes and output."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunearena.launch.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"


def test_check_prints_the_resolved_config_and_exits_0():
    # The console script's own path: a subprocess, as a user runs it.
    proc = subprocess.run([sys.executable, "-m", "tunearena.launch.cli", "check", str(DEMO),
                           "--set", "training.lr=0.002"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("name: demo\n")
    assert "lr: 0.002" in proc.stdout  # the override, resolved
    # Relative paths resolved against the config file's folder.
    assert f"base: {REPO / 'examples/demo_world/base_model'}" in proc.stdout
    assert proc.stdout.rstrip().endswith("config and inputs are valid")
    assert "Traceback" not in proc.stderr


def test_check_names_an_unknown_field_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\nmodel:\n  base: {REPO / 'examples/demo_world/base_model'}\n"
                   "training:\n  micro_batch_sise: 2\n  datasets:\n    - path: a.jsonl\n")
    assert main(["check", str(bad)]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "training.micro_batch_sise: unknown key" in err
    assert "did you mean 'micro_batch_size'?" in err


def test_check_names_a_bad_value_and_exits_2(capsys):
    assert main(["check", str(DEMO), "--set", "training.micro_batch_size=0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "training.micro_batch_size" in err and "(got 0)" in err


def test_check_names_a_missing_input_file_and_exits_2(tmp_path, capsys):
    missing = tmp_path / "nowhere.jsonl"
    assert main(["check", str(DEMO), "--set", f"stages.0.datasets.0.path={missing}"]) == 2
    assert str(missing) in "".join(capsys.readouterr().err.split())


@pytest.fixture(scope="module")
def reference() -> str:
    proc = subprocess.run([sys.executable, "-m", "tunearena.launch.cli", "reference"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_reference_is_a_markdown_table_of_every_field(reference):
    from tunearena.launch.config import ExperimentConfig

    lines = reference.splitlines()
    assert lines[0] == "# Config reference"  # a whole docs page: title, then the table
    header = lines.index("| key | type | default | meaning |")
    assert lines[header + 1] == "|---|---|---|---|"
    keys = {line.split("`")[1] for line in lines[header + 2:] if line.startswith("| `")}
    # Every top-level field, and the nested fields a newcomer sets first.
    assert set(ExperimentConfig.model_fields) <= {re.split(r"[.\[]", key)[0] for key in keys}
    assert {"model.base", "cluster.num_workers", "training.micro_batch_size",
            "training.datasets[].path", "stages[].name"} <= keys


def test_reference_rows_say_type_default_and_meaning(reference):
    row = next(line for line in reference.splitlines()
               if line.startswith("| `cluster.num_workers` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["`cluster.num_workers`", "int", "`2`", cells[3]] and cells[3]


def _raised() -> KeyError:
    try:
        {}["tokenizer"]  # a bug of ours, as a user would meet it
    except KeyError as e:
        return e
    raise AssertionError("unreachable")


@pytest.mark.parametrize("has_run_dir", [True, False])
def test_an_internal_error_is_one_line_and_its_traceback_is_saved(tmp_path, capsys,
                                                                  has_run_dir):
    from rich.console import Console

    from tunearena.launch.cli import _internal_error

    run_dir = tmp_path / "run" if has_run_dir else None
    if run_dir is not None:
        run_dir.mkdir()
    code = _internal_error(_raised(), run_dir, ["run", "x.yaml"], False, Console(stderr=True))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1
    assert "internal error: KeyError: 'tokenizer'" in err and "Traceback" not in err
    saved = Path(err.split("the full traceback is in ")[1].split(" (")[0])
    if run_dir is not None:
        assert saved == run_dir / "error.log"
    text = saved.read_text()
    assert "tunearena run x.yaml" in text and "Traceback" in text and '{}["tokenizer"]' in text
    if run_dir is None:
        saved.unlink()


def test_debug_prints_the_traceback_too(tmp_path, capsys):
    from rich.console import Console

    from tunearena.launch.cli import _internal_error

    assert _internal_error(_raised(), tmp_path, ["run"], True, Console(stderr=True)) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
