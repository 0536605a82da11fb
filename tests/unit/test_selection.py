"""select_stage: which stage becomes ft, on hand-made accuracies."""

from __future__ import annotations

import pytest

from tunearena.evaluation.selection import select_stage

KINDS = {"dom": "domain", "dom2": "domain", "gen": "general"}
BASE = {"dom": 0.2, "dom2": 0.4, "gen": 0.8}


def _acc(dom: float, dom2: float, gen: float) -> dict[str, float]:
    return {"dom": dom, "dom2": dom2, "gen": gen}


def test_within_tolerance_picks_the_largest_domain_gain():
    stages = {
        "docs": _acc(0.3, 0.5, 0.79),  # gain +10, forgets 1
        "qa": _acc(0.7, 0.9, 0.60),  # gain +50, forgets 20: beyond the tolerance
        "qa_replay": _acc(0.5, 0.6, 0.81),  # gain +25, improves gen
    }
    sel = select_stage(stages, BASE, KINDS, 0.02)
    assert sel["selected"] == "qa_replay"
    assert sel["tolerance"] == 0.02 and sel["warning"] is None
    cands = {c["stage"]: c for c in sel["candidates"]}
    assert [c["stage"] for c in sel["candidates"]] == ["docs", "qa", "qa_replay"]
    assert cands["docs"]["domain_gain"] == pytest.approx(0.1)
    assert cands["docs"]["forgetting"] == pytest.approx(0.01)
    assert cands["qa"]["forgetting"] == pytest.approx(0.2)
    assert cands["qa_replay"]["forgetting"] == pytest.approx(-0.01)  # signed: gen improved
    assert [c["within_tolerance"] for c in sel["candidates"]] == [True, False, True]
    assert sel["rule"] == (
        "ft is stage qa_replay: the largest mean gain on the domain benchmarks (+25.0 points) "
        "among the stages that lose at most 2 points on every general benchmark (the 2-point "
        "forgetting tolerance)."
    )


def test_a_tie_goes_to_the_earlier_stage():
    stages = {"a": _acc(0.3, 0.5, 0.8), "b": _acc(0.4, 0.4, 0.8), "c": _acc(0.3, 0.5, 0.79)}
    # a and c gain +10 on average, b +10 as well (0.2 + 0.0) / 2: all tie.
    assert select_stage(stages, BASE, KINDS, 0.02)["selected"] == "a"
    later_better = {"a": _acc(0.3, 0.5, 0.8), "b": _acc(0.31, 0.5, 0.8)}
    assert select_stage(later_better, BASE, KINDS, 0.02)["selected"] == "b"


def test_a_drop_of_exactly_the_tolerance_is_within_it():
    # 0.8 - 0.78 is 0.020000000000000018 in floating point; it still counts as 2 points.
    sel = select_stage({"a": _acc(0.3, 0.5, 0.78)}, BASE, KINDS, 0.02)
    assert sel["candidates"][0]["within_tolerance"] is True
    assert sel["warning"] is None


def test_every_stage_beyond_the_tolerance_selects_the_least_forgetting_and_warns():
    stages = {
        "docs": _acc(0.3, 0.5, 0.75),  # forgets 5
        "qa": _acc(0.7, 0.9, 0.60),  # forgets 20
        "qa_replay": _acc(0.5, 0.6, 0.77),  # forgets 3
        "late": _acc(0.9, 0.9, 0.77),  # forgets 3 too, but later
    }
    sel = select_stage(stages, BASE, KINDS, 0.02)
    assert sel["selected"] == "qa_replay"
    assert not any(c["within_tolerance"] for c in sel["candidates"])
    assert sel["warning"] == (
        "Every fine-tuning stage forgets more than the 2-point tolerance allows (largest drop "
        "on a general benchmark, in points: docs 5.0, qa 20.0, qa_replay 3.0, late 3.0). ft is "
        "qa_replay, the one that forgets least, but it still loses general ability: consider "
        "replaying general data, a lower learning rate, or fewer steps."
    )
    assert sel["rule"].startswith(
        "ft is stage qa_replay: no stage stays within the 2-point forgetting tolerance, so the "
        "stage that forgets least was chosen (it loses 3.0 points"
    )


def test_forgetting_is_the_worst_general_benchmark():
    kinds = {"dom": "domain", "gen": "general", "gen2": "general"}
    base = {"dom": 0.2, "gen": 0.8, "gen2": 0.5}
    sel = select_stage({"a": {"dom": 0.4, "gen": 0.9, "gen2": 0.4}}, base, kinds, 0.05)
    assert sel["candidates"][0]["forgetting"] == pytest.approx(0.1)
    assert sel["warning"] is not None


def test_without_a_general_benchmark_forgetting_is_zero_and_the_rule_says_so():
    kinds = {"dom": "domain"}
    stages = {"a": {"dom": 0.5}, "b": {"dom": 0.6}}
    sel = select_stage(stages, {"dom": 0.2}, kinds, 0.0)
    assert sel["selected"] == "b" and sel["warning"] is None
    assert [c["forgetting"] for c in sel["candidates"]] == [0.0, 0.0]
    assert all(c["within_tolerance"] for c in sel["candidates"])
    assert "no general benchmark was scored, so forgetting could not be checked" in sel["rule"]


@pytest.mark.parametrize(
    ("stages", "base", "kinds", "match"),
    [
        ({}, BASE, KINDS, "no stage to choose from"),
        ({"a": {"gen": 0.7}}, {"gen": 0.8}, {"gen": "general"}, "no domain benchmark"),
        ({"a": _acc(0.3, 0.5, 0.8)}, BASE, {**KINDS, "gen": "other"}, "unknown benchmark kind"),
        ({"a": {"dom": 0.3, "gen": 0.8}}, BASE, KINDS, "stage 'a' has no accuracy for .*'dom2'"),
        ({"a": _acc(0.3, 0.5, 0.8)}, {"dom": 0.2}, KINDS, "base has no accuracy for .*'dom2'"),
    ],
)
def test_bad_inputs_are_errors(stages, base, kinds, match):
    with pytest.raises(ValueError, match=match):
        select_stage(stages, base, kinds, 0.02)
