"""The README stays true: its config reference is the one the code generates."""

from __future__ import annotations

import re
from pathlib import Path

from tunearena.launch.config import config_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_reference_matches_the_code():
    text = README.read_text()
    match = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", text, re.S)
    assert match, "README lost its config-reference markers"
    assert match.group(1) == config_reference(), (
        "README config reference is stale: paste the output of `tunearena reference`"
    )


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "ruff check . && mypy && python -m pytest -q" in README.read_text()
    assert "\nruff check .\nmypy\npython -m pytest -q\n" in ci
