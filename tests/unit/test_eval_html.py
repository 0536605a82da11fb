"""render_html and `tunearena report`: structure checked with Python's html.parser."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import pytest
from matplotlib.image import imread

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import html_report, markdown_report, summarise
from tunearena.evaluation.results import parse_results
from tunearena.launch.cli import main

BENCHMARKS = [
    BenchmarkConfig(name="products", path="p.jsonl", kind="domain"),
    BenchmarkConfig(name="world_facts", path="w.jsonl", kind="general"),
]
SECTIONS = ["verdict", "scores", "forgetting", "retrieval", "cost", "training", "review",
            "provenance"]
TRAINING = {
    "steps": 30, "planned_steps": 30, "method": "full", "parameters": 1000,
    "trainable_parameters": 1000, "train_tokens": 5000, "train_s": 12.5, "tokens_per_s": 400.0,
    "tokens_per_s_per_worker": 200.0, "device": "cpu", "global_batch_size": 8, "world_size": 2,
    "bf16": False, "use_gpu": False, "train_sequences": 40, "val_sequences": 4,
    "train_loss_tokens": 900,
    "mix": {"target": {"docs": 1.0}, "realised": {"docs": 1.0}, "sequences": {"docs": 160}},
    "stage": "ft", "median_step_s": 0.4, "p90_step_s": 0.5,
}
"""A training summary as the runner hands it to the report (without its history)."""


def render_html(results: dict) -> str:
    """The HTML report of results as results.json holds them."""
    return html_report(parse_results(results))


def render_markdown(results: dict) -> str:
    return markdown_report(parse_results(results))


def _scores(n: int, n_correct: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "acc": int(i < n_correct), "acc_norm": 0} for i in range(n)]


def _results(extra: dict | None = None, run_name: str = "demo") -> dict:
    """A run where ft+rag wins, with every optional section a real run writes."""
    right = {"base": (8, 70), "base+rag": (20, 70), "ft": (18, 69), "ft+rag": (34, 70)}
    samples = {
        arm: {"products": _scores(40, d, "p"), "world_facts": _scores(80, g, "w")}
        for arm, (d, g) in right.items()
    }
    if extra is None:
        extra = {
            "run": {
                "name": run_name,
                "config_hash": "cc4f263d",
                "code_version": "0.1.0+abc",
                "python": "3.11.7",
                "seed": 0,
            },
            "latency": {
                arm: {"model": f"/m/{arm}", "score_s": 1.5, "ms_per_question": 12.5}
                for arm in right
            },
            "training": {
                **TRAINING,
                "history": [
                    {"step": s, "train_loss": 4 - s / 10, "lr": 1e-4}
                    | ({"val_loss": 3.9 - s / 12} if s % 10 == 0 else {})
                    for s in range(5, 31, 5)
                ],
            },
            "cost": {
                "device": "CPU worker",
                "device_hours": 0.0069,
                "usd": 0.0174,
                "usd_per_device_hour": 2.5,
            },
            "retrieval": {
                "index": {"n_documents": 30, "index_factory": "Flat", "build_s": 1.7},
                "products": {"k": 2, "search_ms_per_question": 12.8, "recall_at_k": 0.9},
                "world_facts": {"k": 2, "search_ms_per_question": 2.1},
            },
        }
    cfg = EvaluationConfig(benchmarks=BENCHMARKS, bootstrap_samples=500)
    return summarise(samples, BENCHMARKS, cfg, ReportConfig(), extra).to_json()


class _Page(HTMLParser):
    """The parts of a page the tests look at: section ids in order, tables as rows of cell
    text, every attribute, and the text of each section."""

    def __init__(self, html: str):
        super().__init__()
        self.sections: list[str] = []
        self.text: dict[str, str] = {}
        self.tags: list[tuple[str, dict]] = []
        self.tables: list[dict] = []
        self.style = ""
        self._cell: list[str] | None = None
        self._in_style = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
            self.text[self.sections[-1]] = ""
        elif tag == "table":
            self.tables.append(
                {"class": attrs.get("class"), "section": self.sections[-1], "rows": []}
            )
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style += data
        if self._cell is not None:
            self._cell.append(data)
        if self.sections:
            self.text[self.sections[-1]] += data

    def table(self, cls: str) -> list[dict]:
        return [t for t in self.tables if t["class"] == cls]


@pytest.fixture(scope="module")
def results() -> dict:
    return _results()


@pytest.fixture(scope="module")
def page(results) -> _Page:
    return _Page(render_html(results))


def test_sections_in_order_with_the_verdict_first(page, results):
    assert page.sections == SECTIONS
    decision = results["decision"]
    assert decision["verdict"] == "both"
    verdict = " ".join(page.text["verdict"].split())
    assert verdict.startswith(f"Verdict {decision['verdict']} {decision['sentence']}")
    assert all(reason in verdict for reason in decision["reasons"])
    assert decision["confidence"] in verdict
    bullets = [" ".join(b["text"].split()) for b in decision["summary"]]
    assert bullets and all(b in verdict for b in bullets)
    # The summary comes before the rule's reasons, which are there on demand.
    assert verdict.index(bullets[-1]) < verdict.index(decision["reasons"][0])
    assert page.tags[0][0] == "html" and page.tags[0][1] == {"lang": "en"}


def test_score_tables_show_accuracy_intervals_and_changes(page):
    (products, world) = page.table("scores")
    assert products["section"] == "scores"
    assert products["rows"][0] == [
        "arm",
        "accuracy",
        "95% CI",
        "change vs base",
        "95% CI of change",
        "verdict",
    ]
    base, rag, ft, both = products["rows"][1:]
    assert base[:2] == ["base base model", "20.0%"] and base[3:] == ["—", "—", "reference"]
    assert both[:2] == ["ft+rag fine-tuned + RAG", "85.0%"]
    assert both[3] == "+65.0" and both[5] == "better than base"
    pairs = {row[0]: row for row in page.table("pairs")[0]["rows"][1:]}
    assert set(pairs) == {"ft - base+rag", "ft+rag - base+rag", "ft+rag - ft"}
    assert pairs["ft+rag - base+rag"][1] == "+35.0"
    assert pairs["ft+rag - base+rag"][3] == "better than base+rag"
    assert world["rows"][3][:2] == ["ft fine-tuned", "86.2%"]


def test_forgetting_retrieval_cost_training_and_provenance_tables(page):
    checks = page.table("forgetting")[0]["rows"]
    assert [r[0] for r in checks[1:]] == ["base+rag", "ft", "ft+rag"]
    assert "within the 2-point tolerance" in checks[1][4]
    generic = {t["section"]: [] for t in page.table("generic")}
    for t in page.table("generic"):
        generic[t["section"]].append(t["rows"])
    index, per_benchmark = generic["retrieval"]
    assert ["index factory", "Flat"] in index and ["build (s)", "1.7"] in index
    assert per_benchmark[0] == ["", "k", "search ms per question", "recall at k"]
    assert per_benchmark[1:] == [
        ["products", "2", "12.8", "90.0%"],
        ["world_facts", "2", "2.1", "—"],
    ]
    assert (
        "Fine-tuning used 0.0069 CPU worker-hours, about $0.02 at $2.5 per hour."
        in page.text["cost"]
    )
    cost, latency = generic["cost"]
    assert ["device hours", "0.0069"] in cost
    assert latency[0] == ["", "model", "score (s)", "ms per question"]
    assert latency[4] == ["ft+rag", "/m/ft+rag", "1.5", "12.5"]
    training = generic["training"][0]  # then the mixture
    assert ["steps", "30"] in training and ["use gpu", "no"] in training
    assert not any("history" in row[0] for row in training)
    (provenance,) = generic["provenance"]
    for row in (
        ["config hash", "cc4f263d"],
        ["code version", "0.1.0+abc"],
        ["seed", "0"],
        ["settings.bootstrap samples", "500"],
    ):
        assert row in provenance


def test_plots_are_embedded_pngs_that_decode(page):
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 3  # accuracy, forgetting, loss curve
    for attrs in images:
        assert attrs["alt"]
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix)
        data = base64.b64decode(attrs["src"][len(prefix) :], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = imread(io.BytesIO(data))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_page_is_self_contained(page):
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for name in ("src", "href", "srcset", "action", "poster"):
            if name in attrs:
                assert attrs[name].startswith(("data:", "#")), (tag, name, attrs[name][:60])
    assert "url(" not in page.style and "@import" not in page.style
    assert page.style.strip()


def test_values_from_results_are_escaped():
    html = render_html(_results(run_name="<script>alert(1)</script>"))
    page = _Page(html)
    assert not any(tag == "script" for tag, _ in page.tags)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_missing_sections_are_skipped():
    bare = _results(extra={})
    page = _Page(render_html(bare))
    # Provenance holds the settings only; the review comes from the per-question scores.
    assert page.sections == ["verdict", "scores", "forgetting", "review", "provenance"]
    assert len([t for t, _ in page.tags if t == "img"]) == 2
    del bare["decision"]  # a results.json written before the verdict existed
    assert _Page(render_html(bare)).sections[:2] == ["summary", "scores"]


def test_training_without_history_has_no_loss_plot(results):
    no_history = {**results, "training": TRAINING}
    page = _Page(render_html(no_history))
    assert "training" in page.sections
    assert len([t for t, _ in page.tags if t == "img"]) == 2


def _decoded_png(src: str) -> bytes:
    data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


def test_recall_curve_is_plotted_in_the_retrieval_section_beside_its_table(results):
    curve = {"1": 0.55, "2": 0.9, "3": 0.95, "5": 1.0, "10": 1.0}
    retrieval = json.loads(json.dumps(results["retrieval"]))
    retrieval["products"]["recall_curve"] = curve
    page = _Page(render_html({**results, "retrieval": retrieval}))
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 4  # accuracy, forgetting, recall curve, loss curve
    (plot,) = [a for a in images if "recall" in a["alt"]]
    assert "top_k" in plot["alt"]
    pixels = imread(io.BytesIO(_decoded_png(plot["src"])))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # The table stays: the curve is one more column of the per-benchmark table.
    _, per_benchmark = [t["rows"] for t in page.table("generic") if t["section"] == "retrieval"]
    assert per_benchmark[0][-1] == "recall curve"
    assert per_benchmark[1][-1].startswith("1: 55.0%, 2: 90.0%")  # not raw JSON
    # Without any recall_curve there is no plot, and no error.
    plain = _Page(render_html(results))
    assert not any("recall" in a.get("alt", "") for t, a in plain.tags if t == "img")


# -- tunearena report RUN_DIR ---------------------------------------------------------------


def test_cli_report_table_prints_every_arm_on_every_benchmark(tmp_path, capsys, results):
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path), "--table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    typed = parse_results(results)
    header = lines[0].split(" | ")
    assert len(header) == 1 + len(typed.benchmarks) and lines[1].startswith("|---|")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert len(rows) == len(typed.arms)
    for name, bench in typed.benchmarks.items():
        assert any(h.startswith(name + ",") for h in header)
        for arm, row in bench.arms.items():
            line = next(v for k, v in rows.items() if k.split(" (= ")[0] == arm)
            assert f"{100 * row.score:.1f}%" in line
            if row.diff_ci is not None and row.diff_ci != (0.0, 0.0):
                assert f"{100 * row.diff_ci[0]:+.1f} to {100 * row.diff_ci[1]:+.1f}" in line
    assert not (tmp_path / "report.md").exists()  # a table only: nothing written


def test_cli_report_rerenders_both_files_from_results_json(tmp_path, capsys, results):
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "report.md").write_text("stale")
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "report.md") in out and str(tmp_path / "report.html") in out
    assert (tmp_path / "report.md").read_text() == render_markdown(results)
    assert (tmp_path / "report.html").read_text() == render_html(results)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "report.html",
        "report.md",
        "results.json",
        "review.csv",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "results not found"),
        ('{"settings": ', "not valid JSON"),
        ("[]", "expected a JSON object"),
    ],
)
def test_cli_report_without_usable_results_exits_2_naming_the_path(
    tmp_path, capsys, content, message
):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {path}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report.html").exists()


def test_cli_report_names_a_wrong_field_and_exits_2(tmp_path, capsys, results):
    broken = json.loads(json.dumps(results))
    broken["benchmarks"]["products"]["arms"]["base"]["acc"] = "high"
    path = tmp_path / "results.json"
    path.write_text(json.dumps(broken))
    assert main(["report", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {path}: benchmarks.products.arms.base.acc: Input should be a valid number" \
        in err and "Traceback" not in err
    assert not (tmp_path / "report.md").exists()


def test_cli_report_renders_a_results_file_of_the_first_schema(tmp_path, results):
    """Before schema_version existed, the training summary also counted its tensors."""
    old = json.loads(json.dumps(results))
    del old["schema_version"]
    old["training"]["tensors"] = 39
    (tmp_path / "results.json").write_text(json.dumps(old))
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").read_text() == render_html(results)


# -- sequential stages -----------------------------------------------------------------------

WARNING = (
    "Every fine-tuning stage forgets more than the 2-point tolerance allows (largest drop on "
    "a general benchmark, in points: docs 3.8, qa 12.5). ft is docs, the one that forgets least."
)


def _stage_results(warning: str | None = WARNING) -> dict:
    """Two stages, docs (from base) then qa (from docs); ft is docs."""
    right = {"base": (8, 70), "base+rag": (20, 70), "ft@docs": (18, 67), "ft@qa": (30, 60)}
    samples = {
        arm: {"products": _scores(40, d, "p"), "world_facts": _scores(80, g, "w")}
        for arm, (d, g) in right.items()
    }
    samples["ft"] = samples["ft@docs"]
    samples["ft+rag"] = {"products": _scores(40, 34, "p"), "world_facts": _scores(80, 67, "w")}
    stages = {
        "order": ["docs", "qa"],
        "selection": {
            "selected": "docs",
            "tolerance": 0.02,
            "rule": "ft is stage docs: no stage stays within the 2-point forgetting tolerance.",
            "candidates": [
                {
                    "stage": "docs",
                    "domain_gain": 0.25,
                    "forgetting": 0.0375,
                    "within_tolerance": False,
                },
                {
                    "stage": "qa",
                    "domain_gain": 0.55,
                    "forgetting": 0.125,
                    "within_tolerance": False,
                },
            ],
            "warning": warning,
        },
        "stages": {
            "docs": {
                "start_from": "base",
                "method": "full",
                "steps": 120,
                "stopped_early_at": None,
                "final_val_loss": 1.2,
                "val_loss_by_task": {"docs_train": 1.2},
                "mix": {
                    "target": {"docs_train": 1.0},
                    "realised": {"docs_train": 1.0},
                    "sequences": {"docs_train": 480},
                },
                "replay": None,
                "data": {
                    "docs_train": {
                        "read": 510,
                        "empty_or_garbled": 3,
                        "exact_duplicates": 17,
                        "near_duplicates": 6,
                        "leaked": 4,
                        "kept": 480,
                        "train": 456,
                        "validation": 24,
                        "test": 0,
                    }
                },
            },
            "qa": {
                "start_from": "docs",
                "steps": 80,
                "stopped_early_at": 60,
                "replay": {"fraction": 0.25, "sources": ["general_facts"]},
            },
        },
    }
    extra = {
        "stages": stages,
        "cost": {
            "device_hours": 1.0,
            "usd": 2.5,
            "per_stage": {
                "docs": {"device_hours": 0.6, "usd": 1.5},
                "qa": {"device_hours": 0.4, "usd": 1.0},
            },
        },
    }
    arms = ["base", "base+rag", "ft@docs", "ft@qa", "ft", "ft+rag"]
    cfg = EvaluationConfig(benchmarks=BENCHMARKS, arms=arms, bootstrap_samples=500)
    return summarise(samples, BENCHMARKS, cfg, ReportConfig(), extra).to_json()


@pytest.fixture(scope="module")
def stage_page() -> _Page:
    return _Page(render_html(_stage_results()))


def _warning_boxes(page: _Page) -> list[dict]:
    return [a for tag, a in page.tags if tag == "div" and "alert" in a.get("class", "")]


def test_stages_section_sits_between_scores_and_forgetting(stage_page):
    assert stage_page.sections == [
        "verdict",
        "scores",
        "stages",
        "forgetting",
        "cost",
        "review",
        "provenance",
    ]
    text = " ".join(stage_page.text["stages"].split())
    assert "ft is stage docs: its scores are the ft rows above." in text
    assert "ft is stage docs: no stage stays within the 2-point forgetting tolerance." in text
    assert "backward transfer" in text


def test_the_selection_warning_is_an_alert_right_after_the_verdict():
    html = render_html(_stage_results())
    (box,) = _warning_boxes(_Page(html))
    assert box["role"] == "alert" and box["id"] == "stage-warning"
    after_verdict = html[html.index("</section>") :]  # the verdict is the first section
    assert after_verdict.index('id="stage-warning"') < after_verdict.index('id="scores"')
    assert f"<strong>Warning:</strong> {WARNING}" in html
    assert _warning_boxes(_Page(render_html(_stage_results(warning=None)))) == []


def test_stage_candidates_and_matrix_tables(stage_page):
    (candidates,) = stage_page.table("stage-candidates")
    assert candidates["rows"] == [
        [
            "stage",
            "domain gain (points)",
            "largest general drop (points)",
            "within the 2-point tolerance",
        ],
        ["docsft", "+25.0", "3.8", "no"],
        ["qa", "+55.0", "12.5", "no"],
    ]
    (matrix,) = stage_page.table("stage-matrix")
    assert matrix["rows"][0] == [
        "stage",
        "starts from",
        "products (domain)",
        "world_facts (general)",
    ]
    assert matrix["rows"][1] == ["base", "—", "20.0%", "87.5%"]
    # docs from base: 18/40 and 67/80; qa from docs: 30/40 and 60/80.
    assert matrix["rows"][2] == [
        "docsft",
        "base",
        "45.0%+25.0 vs base+25.0 vs start",
        "83.8%-3.8 vs base-3.8 vs start",
    ]
    assert matrix["rows"][3] == [
        "qa",
        "docs",
        "75.0%+55.0 vs base+30.0 vs start",
        "75.0%-12.5 vs base-8.8 vs start",
    ]


def test_stage_training_mixture_data_and_cost_tables(stage_page):
    (training,) = stage_page.table("stage-training")
    assert training["rows"][0] == [
        "stage",
        "starts from",
        "method",
        "steps",
        "stopped early",
        "final val loss",
        "device-hours",
        "USD",
    ]
    assert training["rows"][1:] == [
        ["docs", "base", "full", "120", "no", "1.200", "0.6", "1.50"],
        ["qa", "docs", "—", "80", "at step 60", "—", "0.4", "1.00"],
    ]
    (mix,) = stage_page.table("stage-mix")
    assert mix["rows"][1] == ["docs_train", "100.0%", "100.0%", "480", "1.200"]
    (data,) = stage_page.table("stage-data")
    assert data["rows"][1] == ["docs_train", "510", "3", "17", "6", "4", "480", "456", "24", "0"]
    text = " ".join(stage_page.text["stages"].split())
    assert "Replay: none." in text
    assert "Replay: 25% of sequences replayed from general_facts." in text
    per_stage = [t["rows"] for t in stage_page.table("generic") if t["section"] == "cost"][1]
    assert per_stage == [["", "device hours", "usd"], ["docs", "0.6", "1.5"], ["qa", "0.4", "1"]]


def test_score_tables_say_which_stage_ft_is(stage_page):
    products = stage_page.table("scores")[0]["rows"]
    arms = [row[0] for row in products[1:]]
    assert arms == [
        "base base model",
        "base+rag base model + RAG",
        "ft@docs stage docs",
        "ft@qa stage qa",
        "ft (= ft@docs) fine-tuned",
        "ft+rag (= ft@docs+rag) fine-tuned + RAG",
    ]


def test_stage_plot_is_an_embedded_png_that_decodes(stage_page):
    images = {attrs["alt"]: attrs["src"] for tag, attrs in stage_page.tags if tag == "img"}
    assert len(images) == 3  # accuracy, stages, forgetting (no training history here)
    (src,) = [src for alt, src in images.items() if "after each stage" in alt]
    data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = imread(io.BytesIO(data))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_stages_with_sparse_records_still_render():
    results = _stage_results()
    results["stages"] = {"order": ["docs", "qa"], "stages": {"docs": None}, "matrix": {}}
    page = _Page(render_html(results))
    assert "stages" in page.sections and _warning_boxes(page) == []
    (matrix,) = page.table("stage-matrix")
    assert matrix["rows"][2] == ["docs", "—", "not scored", "not scored"]
    assert page.table("stage-candidates") == [] and page.table("stage-data") == []
