"""When each arm can be scored, as the results of the others come in.

An arm on the base model can be scored at once. An arm on a stage's model waits for the probe
(when there is one) to pass. The plain ``ft`` arms wait for the stage they use: with
selection, the one ``choose_stage`` chooses once the base and every stage's arm are scored;
without, the last stage, after the probe. A plain ``ft`` arm that is its stage's arm under
another name takes that arm's scores instead of a second scoring.

So the slow arms on the base (few-shot and RAG prompts are long) are scored beside the probe,
the stages' arms and the choice of stage, and no CPU or GPU waits for a phase to end. Plain
functions over scores, tested without Ray: the scoring itself is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.arms import ArmScores, choose_stage
from tunearena.evaluation.config import EvaluationConfig


class ScoreOrder:
    """The arms of one evaluation, handed out by ``ready()`` as their inputs become ready;
    the caller scores each and reports its scores with ``add`` (an arm that fails is never
    added, and the arms that wait for it are never handed out). ``probed``: the stages'
    arms wait for ``pass_probe()``. ``select``: the plain ``ft`` arms use the stage chosen
    between ``stages`` (the rule is printed on ``console``), else the last of them."""

    def __init__(self, arms: Sequence[Arm], stages: Sequence[str], select: bool,
                 evaluation: EvaluationConfig, console: Console, probed: bool = False):
        self.arms, self.stages, self.select = list(arms), list(stages), select
        self.evaluation, self.console = evaluation, console
        self.probe_passed = not probed
        self.scores = ArmScores()
        self.handed: set[Arm] = set()

    def pass_probe(self) -> None:
        self.probe_passed = True

    def add(self, arm: Arm, samples: dict, latency: dict) -> None:
        self.scores.add(arm, samples, latency)

    def first(self, arm: Arm) -> bool:
        """Whether ``arm`` goes ahead of the arms queued without it: an arm on a fine-tuned
        model (the probe, the choice of stage and the plain ``ft`` arms come one after
        another), or the base when the choice reads it. The other arms on the base can run
        at any time, so they fill the gaps."""
        if arm.model == "ft":
            return True
        return self.select and str(arm) == "base" and any(
            a.model == "ft" and a.stage is None for a in self.arms)

    def ready(self) -> list[tuple[Arm, str | None]]:
        """The arms that can be scored now and were not handed out before, each with the
        stage a plain ``ft`` arm uses (None for the others). A plain ``ft`` arm that is its
        stage's scored arm is not handed out: it takes that arm's scores here."""
        out: list[tuple[Arm, str | None]] = []
        for arm in self.arms:
            if arm in self.handed or (arm.model == "ft" and not self.probe_passed):
                continue
            stage = None
            if arm.model == "ft" and arm.stage is None:
                stage = self._stage()
                if stage is None:
                    continue
                same = arm.at_stage(stage)
                if str(same) in self.scores.samples:
                    self.handed.add(arm)
                    self.add(arm, self.scores.samples[str(same)], self.scores.latency[str(same)])
                    continue
                if same in self.arms:  # scored under its own name: wait for it
                    continue
            self.handed.add(arm)
            out.append((arm, stage))
        return out

    def _stage(self) -> str | None:
        """The stage the plain ``ft`` arms use, once it is known."""
        if not self.stages:
            return None
        if not self.select:
            return self.stages[-1]
        if self.scores.selection is None:
            needed = ["base"] + [f"ft@{s}" for s in self.stages]
            if not all(n in self.scores.samples for n in needed):
                return None
            self.scores.selection = choose_stage(self.scores.samples, self.stages,
                                                 self.evaluation.benchmarks,
                                                 self.evaluation.forgetting_tolerance)
            self.console.print(escape(self.scores.selection["rule"]))  # "ft is stage <s>: ..."
            if self.scores.selection.get("warning"):
                self.console.print(
                    f"[bold red]WARNING: {escape(self.scores.selection['warning'])}[/bold red]")
        return self.scores.selection["selected"]

    def result(self) -> ArmScores:
        """The scores so far, in the order the arms were listed, with the selection."""
        samples, latency = self.scores.samples, self.scores.latency
        order = [str(a) for a in self.arms if str(a) in samples]
        return ArmScores({n: samples[n] for n in order}, {n: latency[n] for n in order},
                         self.scores.selection, self.scores.probe)
