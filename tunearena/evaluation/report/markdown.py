"""The report view as Markdown: verdict, headline, scores, stages, forgetting, then the
sections other steps filled (training, cost, retrieval, latency, the synthesised data, run)."""

from __future__ import annotations

from typing import Any

from tunearena.evaluation.report.formats import NONE
from tunearena.evaluation.report.table import Table
from tunearena.evaluation.report.view import ReportView, tables
from tunearena.evaluation.report.warnings import verdict_warnings

_SECTIONS = (
    ("training", "Training"),
    ("cost", "Cost"),
    ("retrieval", "Retrieval"),
    ("latency", "Latency and evaluation time per arm"),
    ("run", "Run"),
)


def render_markdown(view: ReportView) -> str:
    """The report as Markdown; a section the view does not hold is left out."""
    lines = [f"# {view.title}", ""]
    if view.decision:
        d = view.decision
        lines += [f"## Verdict: {d['verdict']}", "", f"**{d['sentence']}**", ""]
        lines += [f"- {b['text']}" for b in d["summary"]]
        cautions = verdict_warnings(view)
        lines += ["", *(f"> **Caution:** {w}" for w in cautions)] if cautions else []
        lines += ["", f"**Why {d['verdict']}** (the rule, checked in order):", "",
                  *(f"- {r}" for r in d["reasons"]), "", f"**How sure**: {d['confidence']}", ""]
    if view.stages and view.stages["warning"]:
        lines += [f"**Warning:** {view.stages['warning']}", ""]
    lines += ["## Headline", "", *(f"- {s}" for s in view.headline), ""]
    lines += ["## Scores", ""]
    if view.prompt_sentence:
        lines += [view.prompt_sentence, ""]
    if view.dropped_sentence:
        lines += [view.dropped_sentence, ""]
    for bench in view.benchmarks:
        lines += _scores(bench, view.ci)
    lines.append("Differences are in percentage points, paired question by question.\n")
    if view.stages:
        lines += _stages(view.stages)
    if view.forgetting:
        lines += ["## Forgetting", "", view.forgetting["summary"], ""]
        lines += [f"- {c['sentence']}." for c in view.forgetting["checks"]]
        lines.append("")
    for bench in view.language:
        lines += _language(bench, view.ci)
    for key, title in _SECTIONS:
        if key == "run" and view.data:
            lines += _data(view.data)
        if key in view.sections or (key == "cost" and view.cost_of_pass):
            lines += [f"## {title}", ""]
            if key == "latency" and view.latency_sentence:
                lines += [view.latency_sentence, ""]
            for table in view.sections.get(key, []):
                lines += [*table_lines(table), ""]
            if key == "cost" and view.cost_of_pass:
                lines += [view.cost_of_pass["sentence"], "",
                          *table_lines(view.cost_of_pass["table"]), ""]
            if key == "training" and view.history:
                lines += [*table_lines(_history(view.history)), ""]
    if view.review_sentence:
        lines += ["## Questions the arms disagree on", "", view.review_sentence, ""]
    return "\n".join(lines).rstrip() + "\n"


def table_lines(table: Table) -> list[str]:
    """One table as Markdown: a pipe table under its title; a table without column names
    (a key/value table) as a bullet list."""
    lines = [f"#### {table.title}", ""] if table.title else []
    if not table.columns:
        return lines + [f"- **{row[0]}**: {_cell(row[1])}" if len(row) > 1 else _cell(row[0])
                        for row in table.rows]
    numeric = table.numeric or [False] * len(table.columns)
    rule = "".join("---:|" if n else "---|" for n in numeric)
    lines += ["| " + " | ".join(map(_cell, table.columns)) + " |", "|" + rule]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in table.rows]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _scores(bench: dict[str, Any], ci: str) -> list[str]:
    lines = [f"### {bench['name']} ({bench['kind']}, n = {bench['n']})", ""]
    if bench["n_clusters"] is not None:
        lines += [f"CIs resample the {bench['n_clusters']} source documents, not single "
                  "questions, because questions on one document are correlated.", ""]
    scores = Table(
        ["arm", bench["primary"], ci, bench["secondary"], "diff vs base", f"{ci} of diff",
         "verdict"],
        [[r["arm"], r["score"], r["score_ci"], r["secondary"], r["diff"], r["diff_ci"],
          r["verdict"]] for r in bench["rows"]],
        numeric=[False, True, True, True, True, True, False])
    lines += [*table_lines(scores), ""]
    if bench["pairs"]:
        pairs = Table(["between arms", "diff", f"{ci} of diff", "verdict"],
                      [[p["comparison"], p["diff"], p["ci"], p["verdict"]] for p in bench["pairs"]],
                      numeric=[False, True, True, False])
        lines += [*table_lines(pairs), ""]
    return lines


def _language(bench: dict[str, Any], ci: str) -> list[str]:
    table = Table(
        ["arm", "bits per byte", ci, "change vs base", f"{ci} of change", "verdict"],
        [[r["arm"], r["value"], r["ci"], r["diff"], r["diff_ci"], r["verdict"]]
         for r in bench["rows"]],
        numeric=[False, True, True, True, True, False])
    return [f"### {bench['name']}: bits per byte ({bench['kind']}, {bench['n']} documents; "
            "fewer is better)", "", *table_lines(table), ""]


def _stages(view: dict[str, Any]) -> list[str]:
    lines = ["## Stages", "", view["intro"], ""]
    if view["rule"]:
        lines += [f"- **How ft was chosen**: {view['rule']}", ""]
    if view["candidates"]:
        candidates = Table(
            ["stage", "domain gain (points)", "largest general drop (points)",
             f"within the {view['tolerance']} tolerance"],
            [[f"**{c['stage']}** (ft)" if c["selected"] else c["stage"], c["gain"],
              c["forgetting"], c["within"]] for c in view["candidates"]],
            numeric=[False, True, True, False])
        lines += [*table_lines(candidates), "", view["candidates_note"], ""]
    if view["methods"].rows:
        lines += ["### How the methods compare", "", *table_lines(view["methods"]), "",
                  view["methods_note"], ""]
    for sweep in view["sweeps"]:
        lines += [f"### Sweep: stage {sweep['stage']}", "", sweep["sentence"], "",
                  *table_lines(sweep["table"]), ""]
    for aware in view["rag_aware"]:
        lines += [f"### RAG-aware fine-tuning: stage {aware['stage']}", "", aware["sentence"], ""]
        if aware["table"].rows:
            lines += [*table_lines(aware["table"]), ""]
    lines += ["### Accuracy after each stage", "", view["matrix_note"], "", view["bt_note"], ""]
    names = [f"{b['name']} ({b['kind']})" for b in view["benchmarks"]]
    matrix = Table(["stage", "starts from", *names],
                   [[f"**{row['stage']}** (ft)" if row["selected"] else row["stage"],
                     row["start"], *map(_matrix_cell, row["cells"])] for row in view["matrix"]],
                   numeric=[False, False, *[True] * len(names)])
    lines += [*table_lines(matrix), ""]
    if view["training"].rows:
        lines += ["### Training per stage", "", *table_lines(view["training"]), ""]
    for detail in view["details"]:
        lines += [f"### Stage {detail['stage']}: data", "", f"Replay: {detail['replay']}.", ""]
        for table in (detail["tasks"], detail["data"]):
            if table.rows:
                lines += [*table_lines(table), ""]
    return lines


def _data(data: dict[str, Any]) -> list[str]:
    lines = ["## Data: the synthesised questions", "", data["read"], ""]
    if data["skipped"]:
        lines += [*(f"- skipped **{s['path']}**: {s['reason']}" for s in data["skipped"]), ""]
    lines += [*table_lines(data["gates"]), "", data["made"], ""]
    for known in data["known"]:
        lines += [known["sentence"], ""]
        if known["flagged"]:
            lines += [f"Answered without the document: {', '.join(known['flagged'])}.", ""]
    if data["warnings"]:
        lines += [*(f"> **Caution:** {w}" for w in data["warnings"]), ""]
    if data["samples"]:
        lines += ["### Sample synthesised questions", ""]
        for s in data["samples"]:
            lines += [f"- **{s['question']}** Answer: {s['answer']}. Wrong choices: "
                      f"{s['distractors']}. From {s['doc_id']}: “{s['passage']}”"]
        lines.append("")
    return lines


def _matrix_cell(cell: dict[str, Any]) -> str:
    changes = [f"{cell[k]} {k.replace('_', ' ')}" for k in ("vs_base", "vs_start") if cell[k]]
    return cell["acc"] + (f" ({', '.join(changes)})" if changes else "")


def _history(history: list[dict[str, float]]) -> Table:
    (table,) = tables({"history": history})
    return table



def summary_table(view: ReportView) -> str:
    """Every arm's score on every benchmark as one Markdown table, for a README or a pull
    request: a row per arm, a column per benchmark, each score with its paired change against
    the base and that change's CI (``tunearena report RUN_DIR --table``)."""
    arms = list(dict.fromkeys(r["arm"] for b in view.benchmarks for r in b["rows"]))
    columns = [f"{b['name']}, {b['metric']} ({b['kind']}, {b['n']} q)" for b in view.benchmarks]
    cells = {(b["name"], r["arm"]): _summary_cell(r, view.ci)
             for b in view.benchmarks for r in b["rows"]}
    table = Table(["arm", *columns],
                  [[arm, *(cells.get((b["name"], arm), "") for b in view.benchmarks)]
                   for arm in arms],
                  numeric=[False, *[True] * len(columns)])
    return "\n".join(table_lines(table)) + "\n"


def _summary_cell(row: dict[str, Any], ci: str) -> str:
    if NONE in (row["diff"], row["diff_ci"]):
        return row["score"]
    if row["diff"] == "+0.0" and row["diff_ci"] == "+0.0 to +0.0":
        return f"{row['score']} (no change)"
    return f"{row['score']} ({row['diff']}, {ci} {row['diff_ci']})"
