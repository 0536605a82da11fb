"""What synthesis reads, checked before any Ray actor starts: the documents (ingested, the
unreadable files named) and the generator (its model dir resolved, or its endpoint asked)."""

from __future__ import annotations

from rich.console import Console

from tunearena.documents.config import SynthesisConfig
from tunearena.documents.ingest import Ingested, ingest


def check_synthesis(cfg: SynthesisConfig, console: Console) -> tuple[Ingested, str | None]:
    """The ingested documents and the generator's model dir (``None`` for an endpoint, which
    is asked once here so that one that is down is named now)."""
    from pathlib import Path

    ingested = ingest(cfg.documents, Path.cwd())
    console.print(f"{len(ingested.documents)} documents read from {cfg.documents}", highlight=False)
    for skipped in ingested.skipped:
        console.print(f"[yellow]skipped {skipped.path}: {skipped.reason}[/yellow]",
                      highlight=False)
    if cfg.generator.base_url:
        from tunearena.documents.generator import EndpointGenerator

        EndpointGenerator(cfg.generator).check()
        return ingested, None
    from tunearena.remote_code import trust_remote_code
    from tunearena.training.gguf import resolve_base
    from tunearena.training.model_dir import check_model_dir

    model_dir = resolve_base(cfg.generator.model)
    check_model_dir(model_dir, trust_remote_code())
    return ingested, model_dir
