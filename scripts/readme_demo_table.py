"""Write the README's demo table, and the numbers its prose quotes, from a demo run.

    python scripts/readme_demo_table.py                 # from runs/demo, rewrites README.md
    python scripts/readme_demo_table.py RUN_DIR --check # exit 1 with a diff if README differs
    python scripts/readme_demo_table.py runs/demo runs/demo_methods runs/demo_sweep  # all

A run of ``configs/demo_methods.yaml`` (its run name ``demo_methods``) writes the block
between the ``methods-table`` markers instead: the report's method comparison, what its
preference stage learned and what its RAG-aware stage's prompts held. Its time and memory
columns are written but not checked: they depend on the machine. A run of
``configs/demo_sweep.yaml`` (``demo_sweep``) writes the block between the ``sweep-table``
markers: the report's sentence and table of its sweep, its device-hours not checked.

The table between the ``demo-table`` markers is ``tunearena report RUN_DIR --table``. The
prose of "What the demo shows" quotes some of its numbers (the forgetting without and with
replay, what RAG alone adds, the verdict, ...): each is found by the words around it
(``CLAIMS``) and written from the same results, so the page never says what the run did not.
A sentence reworded so that its number is no longer found is an error naming it: update
``CLAIMS`` with the prose. Timings are not checked: they depend on the machine. ``--check``
lets a score sit within ``NOISE_POINTS`` of the run's (a near-tie answer flips between CPU
models); ``rewrite`` always writes the run's own numbers.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunearena.evaluation.report import formats as fmt
from tunearena.evaluation.report import load_results
from tunearena.evaluation.report.markdown import summary_table, table_lines
from tunearena.evaluation.report.view import build_view
from tunearena.evaluation.results import Results, ResultsError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
METHODS_RUN = "demo_methods"
METHODS_START, METHODS_END = "<!-- methods-table:start -->", "<!-- methods-table:end -->"
SWEEP_RUN = "demo_sweep"
SWEEP_START, SWEEP_END = "<!-- sweep-table:start -->", "<!-- sweep-table:end -->"
SECTION = "## What the demo shows"
DOMAIN, GENERAL = "lumora_products", "world_facts"


def _diff(results: Results, benchmark: str, arm: str) -> float:
    diff = results.benchmarks[benchmark].arms[arm].diff_vs_base
    if diff is None:
        raise ValueError(f"{arm} on {benchmark} has no difference against base")
    return diff


def _clusters(results: Results) -> str:
    return str(results.benchmarks[DOMAIN].n_clusters)


def _added_tokens(results: Results) -> str:
    latency = (results.latency or {}).get("base+rag")
    if latency is None or latency.prompt_tokens_added is None:
        raise ValueError("base+rag was not timed: no prompt tokens added to quote")
    return f"{latency.prompt_tokens_added:.0f}"


def _verdict(results: Results) -> str:
    if results.decision is None:
        raise ValueError("the results hold no verdict")
    return results.decision.verdict


def _tolerance(results: Results) -> str:
    return fmt.points(results.settings.forgetting_tolerance).removesuffix("-point")


@dataclass(frozen=True)
class Claim:
    """A number the prose quotes: ``pattern`` finds it (its one group is the number), and
    ``value`` gives it from the demo's results, written as the README writes it."""

    pattern: str
    value: Callable[[Results], str]


CLAIMS = [
    Claim(r"resample the (\d+)\s+documents", _clusters),
    Claim(r"costs general knowledge: ([\d.]+)\s+points without replay",
          lambda r: fmt.unsigned(-_diff(r, GENERAL, "ft@qa"))),
    Claim(r"keeps all but ([\d.]+) of them",
          lambda r: fmt.unsigned(-_diff(r, GENERAL, "ft@qa_replay"))),
    Claim(r"within the demo's (\d+)-point tolerance", _tolerance),
    Claim(r"verdict is\s+\*\*([a-zA-Z-]+)\*\*", _verdict),
    Claim(r"RAG alone also helps \((\+[\d.]+) points\)",
          lambda r: fmt.signed(_diff(r, DOMAIN, "base+rag"))),
    Claim(r"passages add (\d+) prompt tokens", _added_tokens),
]


class ReadmeError(ValueError):
    """The README lacks the markers or the section, or its prose no longer quotes a claim."""


def _replace_block(text: str, start: str, end: str, body: str) -> str:
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ReadmeError(f"README: expected one {start} before one {end}")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n\n{body}\n{end}{tail}"


def methods_block(results: Results) -> str:
    """The methods demo as the README shows it: the method table, then one line per
    preference stage and per RAG-aware stage, all from the report's own view."""
    stages = build_view(results).stages
    lines = [*table_lines(stages["methods"]), ""]
    records = results.stages.stages if results.stages is not None else {}
    for name, record in records.items():
        if record is not None and record.reward_accuracy is not None:
            lines += [f"Stage `{name}` ({record.kind}): held-out reward accuracy "
                      f"{record.reward_accuracy:.2f}, margin {record.reward_margin:.2f}.", ""]
    for aware in stages["rag_aware"]:
        lines += [aware["sentence"], "", *table_lines(aware["table"]), ""]
    return "\n".join(lines)


def sweep_block(results: Results) -> str:
    """The sweep demo as the README shows it: the report's sentence and table of each sweep."""
    lines: list[str] = []
    for sweep in build_view(results).stages["sweeps"]:
        lines += [sweep["sentence"], "", *table_lines(sweep["table"]), ""]
    return "\n".join(lines)


def expected_readme(text: str, results: Results) -> str:
    """``text`` (the README) with the blocks and quoted numbers ``results`` gives: the demo
    table and every quoted number for the demo, the methods block for the methods demo, the
    sweep block for the sweep demo."""
    if results.run is not None and results.run.name == METHODS_RUN:
        return _replace_block(text, METHODS_START, METHODS_END, methods_block(results))
    if results.run is not None and results.run.name == SWEEP_RUN:
        return _replace_block(text, SWEEP_START, SWEEP_END, sweep_block(results))
    text = _replace_block(text, START, END, summary_table(build_view(results)))
    if SECTION not in text:
        raise ReadmeError(f"README: no section {SECTION!r}")
    start = text.index(SECTION)
    following = text.find("\n## ", start + len(SECTION))
    end = len(text) if following < 0 else following
    section = text[start:end]
    for claim in CLAIMS:
        found = list(re.finditer(claim.pattern, section))
        if len(found) != 1:
            raise ReadmeError(f"README, {SECTION!r}: the pattern {claim.pattern!r} is found "
                              f"{len(found)} times, not once; update CLAIMS in "
                              f"{Path(__file__).name} with the prose")
        match = found[0]
        section = section[:match.start(1)] + claim.value(results) + section[match.end(1):]
    return text[:start] + section + text[end:]


def _texts(run_dir: Path, readme: Path) -> tuple[str, str]:
    """``readme``'s text, and what the demo run in ``run_dir`` makes of it."""
    text = readme.read_text(encoding="utf-8")
    return text, expected_readme(text, load_results(run_dir / "results.json"))


MACHINE_COLUMNS = ("peak memory (MB)", "train time (s)", "device-hours")
"""Columns of the method and sweep tables that depend on the machine, not on the run's
results: written, not checked."""
MACHINE_WORDS = re.compile(r"cost [0-9.e+-]+ device-hours( \(\$[0-9.,]+\))?")
"""The sweep sentence's cost, which depends on the machine too."""


def _mask_machine_columns(text: str) -> str:
    """``text`` with the method and sweep tables' machine-dependent cells blanked."""
    for start, end in ((METHODS_START, METHODS_END), (SWEEP_START, SWEEP_END)):
        text = _mask_block(text, start, end)
    return text


def _mask_block(text: str, start: str, end: str) -> str:
    if start not in text or end not in text:
        return text
    head, rest = text.split(start, 1)
    block, tail = rest.split(end, 1)
    block = MACHINE_WORDS.sub("cost ... device-hours", block)
    lines, masked = block.split("\n"), []
    columns: list[int] = []
    for line in lines:
        cells = line.split("|")
        if not columns and any(c.strip() in MACHINE_COLUMNS for c in cells):
            columns = [i for i, c in enumerate(cells) if c.strip() in MACHINE_COLUMNS]
        elif columns and line.startswith("|") and len(cells) > max(columns):
            if not set(line) <= set("|-: "):
                for i in columns:
                    cells[i] = " ... "
            line = "|".join(cells)
        elif columns and not line.startswith("|"):
            columns = []
        masked.append(line)
    return head + start + "\n".join(masked) + end + tail


NOISE_POINTS = 1.2
"""How far a quoted score may sit from a rerun's and still be the same result. Another CPU
model (its float kernels round in another order) or a patch release of a numeric library can
flip a near-tie answer: one question of the demo's 180 is 0.56 points, and an interval's ends
move with it. Words, counts and anything further apart must match."""
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def within_float_noise(text: str, expected: str) -> bool:
    """Whether ``text`` says what ``expected`` says, line for line, but for numbers at most
    ``NOISE_POINTS`` apart."""
    lines, wanted = text.splitlines(), expected.splitlines()
    if len(lines) != len(wanted):
        return False
    for line, want in zip(lines, wanted, strict=True):
        if line == want:
            continue
        if _NUMBER.sub("#", line) != _NUMBER.sub("#", want):
            return False
        for a, b in zip(_NUMBER.findall(line), _NUMBER.findall(want), strict=True):
            if abs(float(a) - float(b)) > NOISE_POINTS:
                return False
    return True


def check(run_dir: Path, readme: Path = README) -> str:
    """The unified diff from ``readme`` to what the demo run in ``run_dir`` gives; empty
    when the README says what the run did (the method table's time and memory, which depend
    on the machine, aside, and scores within ``NOISE_POINTS`` of the run's)."""
    text, expected = _texts(run_dir, readme)
    text, expected = _mask_machine_columns(text), _mask_machine_columns(expected)
    if within_float_noise(text, expected):
        return ""
    return "".join(difflib.unified_diff(text.splitlines(keepends=True),
                                        expected.splitlines(keepends=True),
                                        str(readme), f"{readme} from {run_dir}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, default=[Path("runs/demo")],
                        help="finished demo runs (default: runs/demo)")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; print the diff and exit 1 if the README differs")
    args = parser.parse_args(argv)
    status = 0
    for run_dir in args.run_dirs:
        try:
            if args.check:
                diff = check(run_dir, args.readme)
                if diff:
                    print(diff, end="")
                    print(f"{args.readme} differs from {run_dir}: rerun without --check to "
                          "rewrite it", file=sys.stderr)
                    status = 1
                continue
            text, expected = _texts(run_dir, args.readme)
        except (ReadmeError, ResultsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if expected == text:
            print(f"{args.readme}: already what {run_dir} gives")
        else:
            args.readme.write_text(expected, encoding="utf-8")
            print(f"{args.readme}: rewritten from {run_dir}")
    return status

if __name__ == "__main__":
    sys.exit(main())
