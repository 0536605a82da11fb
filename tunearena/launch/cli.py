"""The ``tunearena`` command: parse, build, run, clean up."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
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
        p.add_argument("--debug", action="store_true",
                       help="on an internal error, print the full traceback too (it is always "
                       "saved: RUN_DIR/error.log, or a temp file before the run dir exists)")

    run = sub.add_parser("run", help="run an experiment config end to end")
    run.add_argument("config", type=Path, help="experiment YAML")
    run.add_argument("--resume", action="store_true",
                     help="continue an existing run directory, reusing completed steps")
    common(run)
    demo = sub.add_parser("demo", help="run the embedded demo (configs/demo.yaml)")
    demo.add_argument("--resume", action="store_true", help="reuse completed steps of runs/demo")
    common(demo)
    synth = sub.add_parser("synth", help="write the corpus, questions and paraphrases of a "
                           "config's synthesis: section from its documents, then stop "
                           "(`run --resume` goes on from there)")
    synth.add_argument("config", type=Path)
    common(synth)
    check = sub.add_parser("check", help="validate a config and its input files, print it resolved")
    check.add_argument("config", type=Path)
    common(check)
    preflight = sub.add_parser("preflight", help="check a config against its cluster before "
                               "running it: resources, storage, collective, memory, batch, "
                               "tokenizer; prints a table with fixes")
    preflight.add_argument("config", type=Path)
    preflight.add_argument("--plan", metavar="GPU",
                           help="plan for cluster.num_workers GPUs of this kind (H100, H200, "
                                "A100, L40S, A10G, L4) without connecting to any cluster: "
                                "memory per ZeRO stage, time and cost of each stage")
    common(preflight)
    submit = sub.add_parser("submit", help="submit a run as a Ray job to a running cluster "
                            "(the working dir and config are shipped with it); prints its id")
    submit.add_argument("config", type=Path, help="experiment YAML, inside the working dir")
    address_help = ("the cluster's Ray dashboard, http://HEAD:8265 (default: "
                    "$RAY_API_SERVER_ADDRESS, or $RAY_ADDRESS if it is an http URL)")
    submit.add_argument("--address", help=address_help)
    submit.add_argument("--working-dir", type=Path, default=Path("."),
                        help="the directory shipped to the cluster (default: the current one)")
    submit.add_argument("--resume", action="store_true",
                        help="continue the run directory an earlier job left, reusing its "
                        "completed steps")
    submit.add_argument("--follow", action="store_true",
                        help="stay and print the job's output until it ends")
    common(submit)
    status = sub.add_parser("status", help="a submitted job's status, run directory and latest "
                            "output; without a job id, every tunearena job on the cluster")
    status.add_argument("job_id", nargs="?", metavar="JOB_ID")
    status.add_argument("--address", help=address_help)
    logs = sub.add_parser("logs", help="a submitted job's output")
    logs.add_argument("job_id", metavar="JOB_ID")
    logs.add_argument("--address", help=address_help)
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    stop = sub.add_parser("stop", help="stop a submitted job (finished steps are kept for "
                          "submit --resume)")
    stop.add_argument("job_id", metavar="JOB_ID")
    stop.add_argument("--address", help=address_help)
    serve = sub.add_parser("serve", help="serve a finished run's arms (the verdict's by "
                           "default) behind an OpenAI-compatible API on Ray Serve; Ctrl-C "
                           "stops it")
    serve.add_argument("served_run", type=Path, metavar="RUN_DIR",
                       help="a finished run directory")
    serve.add_argument("--arm", action="append", default=[], metavar="ARM",
                       help="an arm to serve under its own model name (repeatable: A/B "
                       "tests), e.g. ft, ft+rag, base+rag, ft@qa (default: serve.arms, else "
                       "the verdict's arm)")
    serve.add_argument("--host", help="the address to bind (serve.host, default 127.0.0.1: "
                       "this machine only)")
    serve.add_argument("--port", type=int, help="serve.port (default 8000)")
    serve.add_argument("--address", help="local (an embedded Ray, the default), auto, or a "
                       "cluster's HOST:PORT (serve.address)")
    serve.add_argument("--api-key-env", metavar="NAME", help="require the key held in this "
                       "environment variable as 'Authorization: Bearer KEY' (serve.api_key_env)")
    serve.add_argument("--log-requests", type=Path, metavar="FILE",
                       help="append each question, its documents and the answer to this "
                       "JSONL file (serve.log_requests)")
    serve.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="serve.KEY=VALUE", help="override a serve setting, e.g. --set "
                       "serve.replicas=2 (repeatable)")
    serve.add_argument("--debug", action="store_true",
                       help="on an internal error, print the full traceback too")
    sub.add_parser("reference", help="print the config reference (Markdown)")
    report = sub.add_parser("report", help="re-render report.md, report.html and review.csv "
                            "from a run's results.json (recomputes nothing)")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run directory, e.g. runs/demo")
    output = report.add_mutually_exclusive_group()
    output.add_argument("--table", action="store_true",
                        help="print every arm's scores as one Markdown table instead (for a "
                        "README or a pull request); writes nothing")
    output.add_argument("--pdf", action="store_true",
                        help="also print report.html to report.pdf, with a headless Chromium "
                        "(chromium on PATH, or $TUNEARENA_CHROMIUM)")
    return parser


def _report(run_dir: Path, console, err, table: bool = False, pdf: bool = False) -> int:
    """Re-render a finished run's reports from its results.json alone (with ``table``, print
    its scores as one Markdown table instead; with ``pdf``, print report.html to report.pdf
    too); a file that is missing, not JSON, or has a wrong field (named by its path) is a
    ``ResultsError``, no Chromium to print with a ``PdfError``: exit 2."""
    from rich.markup import escape

    from tunearena.errors import UserError
    from tunearena.evaluation.report import load_results, write_reports
    from tunearena.evaluation.report.pdf import find_chromium, write_pdf

    try:
        results = load_results(run_dir / "results.json")
        chromium = find_chromium() if pdf else None  # before anything is written
    except UserError as e:
        kept = [p.name for p in (run_dir / "report.md", run_dir / "report.html") if p.is_file()]
        err.print(f"[bold red]error:[/bold red] {escape(str(e))}"
                  + (f"\nnothing written; {' and '.join(kept)} kept as they were" if kept
                     else ""), markup=True, soft_wrap=True)
        return 2
    if table:
        from tunearena.evaluation.report.markdown import summary_table
        from tunearena.evaluation.report.view import build_view

        print(summary_table(build_view(results)), end="")
        return 0
    for path in write_reports(run_dir, results):
        console.print(f"report: {path}", soft_wrap=True)
    if chromium:
        try:
            console.print(f"report: {write_pdf(run_dir / 'report.html', chromium)}",
                          soft_wrap=True)
        except UserError as e:
            err.print(f"[bold red]error:[/bold red] {escape(str(e))}", markup=True,
                      soft_wrap=True)
            return 2
    return 0


def _serve(args: argparse.Namespace, console) -> int:
    """``serve``: the run's ``serve:`` settings, overridden by ``--set`` and the flags."""
    import json

    from tunearena.launch.serving import serve_config, serve_run

    flags = {"arms": args.arm or None, "host": args.host, "port": args.port,
             "address": args.address, "api_key_env": args.api_key_env,
             "log_requests": args.log_requests and str(args.log_requests.resolve())}
    overrides = [*args.overrides, *(f"serve.{key}={json.dumps(value)}"
                                    for key, value in flags.items() if value is not None)]
    return serve_run(args.served_run, serve_config(args.served_run, overrides), console)


def _job_command(args: argparse.Namespace, console, err) -> int:
    """``status``, ``logs`` and ``stop``: talk to the cluster's job server, nothing else."""
    from rich.markup import escape

    from tunearena.cluster.jobs import dashboard_address
    from tunearena.errors import UserError
    from tunearena.launch import submit

    try:
        address = dashboard_address(args.address)
        if args.command == "status":
            submit.show_status(address, args.job_id, console)
        elif args.command == "logs":
            return submit.show_logs(address, args.job_id, args.follow, console)
        else:
            submit.stop(address, args.job_id, console)
        return 0
    except UserError as e:
        err.print(f"[bold red]error:[/bold red] {escape(str(e))}", markup=True, soft_wrap=True)
        return 2


def _internal_error(error: Exception, run_dir: Path | None, argv: list[str], debug: bool,
                    err) -> int:
    """A bug of ours (or an error nobody translated yet): one line, and the traceback saved
    where the user can attach it to a report; ``--debug`` prints it too. Exit 1."""
    text = "".join(traceback.format_exception(error))
    header = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} tunearena {' '.join(argv)}\n"
    try:
        if run_dir is None or not run_dir.is_dir():
            raise OSError
        path = run_dir / "error.log"
        with path.open("a", encoding="utf-8") as f:
            f.write(header + text)
    except OSError:
        fd, name = tempfile.mkstemp(prefix="tunearena-error-", suffix=".log")
        path = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(header + text)
    if debug:
        sys.stderr.write(text)
    from rich.markup import escape

    err.print(f"[bold red]internal error:[/bold red] {escape(type(error).__name__)}: "
              f"{escape(str(error).splitlines()[0] if str(error) else '')}", soft_wrap=True)
    err.print(f"the full traceback is in {escape(str(path))} (please attach it to a bug "
              f"report; --debug prints it)", soft_wrap=True)
    return 1


def _command(args: argparse.Namespace, argv: list[str], console) -> int:
    """``run``, ``demo``, ``synth``, ``check``, ``preflight`` and ``submit``: build the config,
    do it. Sets ``args.run_dir`` once the run directory is known."""
    from tunearena.configbase import ConfigError
    from tunearena.launch.config import dump_config, load_config
    from tunearena.launch.inputs import check_inputs
    from tunearena.launch.pipeline import Pipeline

    if args.command == "submit":
        from tunearena.cluster.jobs import dashboard_address
        from tunearena.launch.submit import show_logs, submit

        address = dashboard_address(args.address)
        job_id = submit(args.config, args.overrides, address, args.working_dir,
                        args.resume, console)
        return show_logs(address, job_id, True, console) if args.follow else 0
    cfg = load_config(DEMO_CONFIG if args.command == "demo" else args.config, args.overrides)
    if args.command == "preflight":
        from tunearena.launch.preflight import run_preflight

        return 0 if run_preflight(cfg, console, args.plan) else 1
    if args.command == "check":
        if cfg.synthesis is not None:
            from tunearena.launch.synthesis import check_synthesis

            check_synthesis(cfg.synthesis, console)
        if cfg.synthesis is None or (cfg.synthesis_dir / "qa_test.jsonl").is_file():
            check_inputs(cfg)
        else:
            console.print("the files synthesis writes are checked once it has written them "
                          f"(tunearena synth {args.config})", highlight=False)
        console.print(dump_config(cfg), end="")
        console.print("[green]config and inputs are valid[/green]")
        return 0
    args.run_dir = (cfg.runs_dir / cfg.name).resolve()
    if args.command == "synth" and cfg.synthesis is None:
        raise ConfigError(f"{args.config} has no synthesis: section; add one (synthesis."
                          f"documents: a folder of documents) to write questions from it")
    # synth continues whatever an earlier synth or run left: drafts are never written twice.
    Pipeline(cfg, console, resume=getattr(args, "resume", False) or args.command == "synth",
             command=" ".join(["tunearena", *argv]),
             synthesis_only=args.command == "synth").run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    err = Console(stderr=True, highlight=False)
    if args.command == "report":  # reads one JSON file: no need to import torch and friends
        return _report(args.run_dir, console, err, args.table, args.pdf)
    if args.command in ("status", "logs", "stop"):  # HTTP calls only
        return _job_command(args, console, err)
    import transformers
    from rich.markup import escape

    transformers.utils.logging.disable_progress_bar()

    from tunearena.errors import UserError
    from tunearena.launch.interrupts import exit_status, signals_interrupt

    if args.command == "reference":
        from tunearena.launch.config import config_reference

        sys.stdout.write(config_reference())
        return 0
    args.run_dir = None
    # A stopped Ray job, or a scheduler ending an allocation, sends SIGTERM: it unwinds as
    # Ctrl-C does (the manifest marks the step interrupted, Ray shuts down), and exits 143.
    with signals_interrupt():
        try:
            if args.command == "serve":
                return _serve(args, console)
            return _command(args, argv, console)
        except UserError as e:  # the input or the cluster is wrong: its message, no traceback
            err.print(f"[bold red]error:[/bold red] {escape(str(e))}", markup=True,
                      soft_wrap=True)
            return 2
        except KeyboardInterrupt:
            err.print("[yellow]interrupted; completed steps are kept (rerun with --resume)"
                      "[/yellow]" if args.run_dir else "[yellow]interrupted[/yellow]")
            return exit_status()
        except Exception as e:
            return _internal_error(e, args.run_dir, argv, args.debug, err)


if __name__ == "__main__":
    sys.exit(main())
