"""The report view as one self-contained HTML page for people who do not train models.

Everything the page needs is inside it: CSS in a ``<style>`` block, plots embedded as base64
PNG, no script, no external URL. A section the results do not hold is left out; the sections
other steps fill (retrieval, cost, latency, training, provenance) are shown as the view's
generic tables, so new keys show up without a code change.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined

from tunearena.evaluation.report import plots
from tunearena.evaluation.report.review import Sources, disagreements, review_section
from tunearena.evaluation.report.view import ReportView
from tunearena.evaluation.report.warnings import verdict_warnings
from tunearena.evaluation.results import BenchmarkRetrieval, Results

_ENV = Environment(
    loader=PackageLoader("tunearena.evaluation", "templates"),
    autoescape=True,  # every string from results.json is data, never markup
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(view: ReportView, results: Results, sources: Sources | None = None) -> str:
    """The report as one HTML page: verdict (and the stage-selection warning, if any),
    scores, stages, forgetting, retrieval, cost and latency, training, the questions the arms
    disagree on, the synthesised data, provenance, in that order. ``results`` gives the plots their numbers; every
    printed value comes from ``view``, but the review's questions, correct answers and
    passages, which ``sources`` (the run directory) give."""
    benchmarks = results.benchmarks
    colours = plots.colours(list(dict.fromkeys(a for b in benchmarks.values() for a in b.arms)))
    stages = view.stages
    if stages and results.stages:
        stages = {**stages, "plot": plots.stages_plot(results.stages, benchmarks,
                                                      stages["selected"]),
                  "sweeps": [{**s, "plot": plots.sweep_plot(s["points"], s["tolerance"],
                                                            s["chosen"])}
                             for s in stages["sweeps"]]}
    forgetting = view.forgetting
    if forgetting and results.forgetting:
        forgetting = {**forgetting, "plot": plots.forgetting_plot(
            results.forgetting.checks, results.forgetting.tolerance, colours,
            results.selected_stage)}
    retrieval = {name: r for name, r in (results.retrieval or {}).items()
                 if isinstance(r, BenchmarkRetrieval)}
    sections = view.sections
    training = None
    if "training" in sections:
        training = {"tables": sections["training"], "loss_plot": plots.loss_plot(view.history)}
    context = {
        "title": view.title,
        "ci": view.ci,
        "decision": {"rule_in_full": [], **view.decision} if view.decision else None,
        "headline": view.headline,
        "warnings": verdict_warnings(view),
        "benchmarks": view.benchmarks,
        "dropped_sentence": view.dropped_sentence,
        "accuracy_plot": plots.accuracy_plot(benchmarks, results.settings.confidence, colours,
                                             results.selected_stage)
        if benchmarks else None,
        "stages": stages,
        "forgetting": forgetting,
        "language": view.language,
        "retrieval": sections.get("retrieval"),
        "recall_plot": plots.recall_plot(retrieval, list(benchmarks)),
        "cost": sections.get("cost"),
        "cost_sentence": view.cost_sentence,
        "cost_of_pass": view.cost_of_pass,
        "latency_sentence": view.latency_sentence,
        "prompt_sentence": view.prompt_sentence,
        "latency": sections.get("latency"),
        "training": training,
        "review": review_section(results, disagreements(results, sources)),
        "data": view.data,
        "run": sections.get("provenance"),
    }
    return _ENV.get_template("report.html.j2").render(**context)

