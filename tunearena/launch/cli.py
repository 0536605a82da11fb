"""The ``tunearena`` command: parse, build, run, clean up."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Nothing is ever fetched from a model hub at run time unless the user says so.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunearena",
        description="Fine-tune on Ray + DeepSpeed, compare against RAG, report what is worth it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set training.max_steps=10 (repeatable)")

    run = sub.add_parser("run", help="run an experiment config end to end")
    run.add_argument("config", type=Path, help="experiment YAML")
    run.add_argument("--resume", action="store_true",
                     help="continue an existing run directory, reusing completed steps")
    common(run)
    demo = sub.add_parser("demo", help="run the embedded demo (configs/demo.yaml)")
    demo.add_argument("--resume", action="store_true", help="reuse completed steps of runs/demo")
    common(demo)
    check = sub.add_parser("check", help="validate a config and its input files, print it resolved")
    check.add_argument("config", type=Path)
    common(check)
    preflight = sub.add_parser("preflight", help="check a config against its cluster before "
                               "running it: resources, storage, collective, memory, batch, "
                               "tokenizer; prints a table with fixes")
    preflight.add_argument("config", type=Path)
    common(preflight)
    sub.add_parser("reference", help="print the config reference (Markdown)")
    report = sub.add_parser("report", help="re-render report.md and report.html from a run's "
                            "results.json (recomputes nothing)")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run directory, e.g. runs/demo")
    return parser


def _report(run_dir: Path, console, err) -> int:
    """Re-render a finished run's reports from its results.json alone."""
    from rich.markup import escape

    from tunearena.evaluation.report import ResultsError, load_results, write_reports

    try:
        results = load_results(run_dir / "results.json")
    except ResultsError as e:
        err.print(f"[bold red]error:[/bold red] {escape(str(e))}", markup=True, soft_wrap=True)
        return 2
    for path in write_reports(run_dir, results):
        console.print(f"report: {path}", soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    err = Console(stderr=True, highlight=False)
    if args.command == "report":  # reads one JSON file: no need to import torch and friends
        return _report(args.run_dir, console, err)
    import transformers
    from rich.markup import escape

    transformers.utils.logging.disable_progress_bar()

    from tunearena.cluster.preflight import PreflightError
    from tunearena.configbase import ConfigError
    from tunearena.evaluation.benchmarks import BenchmarkError
    from tunearena.launch.config import dump_config, load_config
    from tunearena.launch.pipeline import Pipeline, RunDirExists, check_inputs
    from tunearena.rag.corpus import CorpusError
    from tunearena.training.checkpoint import ResumeError
    from tunearena.training.data import DataError
    from tunearena.training.tracking import TrackerUnavailable
    from tunearena.training.trainer import MethodUnavailable, ModelDirError

    # Errors that mean "the input or the cluster is wrong": one clear message, no traceback.
    user_errors = (ConfigError, RunDirExists, DataError, CorpusError, BenchmarkError, ModelDirError,
                   PreflightError, ResumeError, MethodUnavailable, TrackerUnavailable)

    if args.command == "reference":
        from tunearena.launch.config import config_reference

        sys.stdout.write(config_reference())
        return 0
    config_path = DEMO_CONFIG if args.command == "demo" else args.config
    try:
        cfg = load_config(config_path, args.overrides)
        if args.command == "preflight":
            from tunearena.launch.preflight import run_preflight

            return 0 if run_preflight(cfg, console) else 1
        if args.command == "check":
            check_inputs(cfg)
            console.print(dump_config(cfg), end="")
            console.print("[green]config and inputs are valid[/green]")
            return 0
        Pipeline(cfg, console, resume=args.resume).run()
        return 0
    except user_errors as e:
        err.print(f"[bold red]error:[/bold red] {escape(str(e))}", markup=True, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted; completed steps are kept (rerun with --resume)[/yellow]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
