"""Sequential fine-tuning stages through ``tunearena run``: what each stage starts from, LoRA
adapters carried across stages and loaded from a moved run directory, early stopping, the task
mixture and replay, and a driver killed in the middle of a stage that ``--resume`` continues.

Real local Ray, two Ray Train workers, real DeepSpeed ZeRO-2 on gloo (fp32), real peft. Each
Ray Train run costs tens of seconds on a small machine, so one experiment carries every
check: seven stages, trained once for the module (the driver is killed during the second and
the run resumed), and the tests read its run directory. Stages whose weights must come out
as they went in train with ``lr: 1e-12`` (AdamW moves each weight by about ``lr`` a step).
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tunearena.launch.cli import main
from tunearena.training import checkpoint as ckpt
from tunearena.training.export import ADAPTER_DIR

pytestmark = pytest.mark.slow

NAME = "stages"
MICRO_BATCH_SIZE, NUM_WORKERS = 4, 2
GLOBAL_BATCH_SIZE = MICRO_BATCH_SIZE * NUM_WORKERS  # no gradient accumulation
MIX_STEPS = 20  # s1: two tasks weighted 3 : 1
RESUMED_STEPS, CHECKPOINT_EVERY = 40, 4  # s2: the stage the driver is killed in
EARLY_STOP_MAX_STEPS = 30  # s3
FROZEN_LR = 1e-12  # weights move by ~1e-12 a step: the stage's output is its input
EQUAL_ABS = 1e-6  # "the same weights"
CHANGED_ABS = 1e-3  # "clearly trained"


# -- data ------------------------------------------------------------------------------------


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_data(root: Path) -> dict[str, Path]:
    """Distinct synthetic records (so cleaning drops none) in text and instruction format.

    ``qa`` (weight 1) holds four times the records, and tokens, of ``facts`` (weight 3): by
    size alone facts would get a fifth of the sequences, by weight it gets three quarters.
    """
    rng = random.Random(0)
    facts = [{"text": f"The {_word(rng).title()} tower in {_word(rng).title()} is {10 + i} "
                      f"meters tall and was built in {1900 + 3 * i}."} for i in range(16)]
    qa = [{"prompt": f"Question: How many bells does the {_word(rng)} hall of {_word(rng)} have?"
                     f"\nAnswer:", "response": f" {i + 2} bells"} for i in range(64)]
    notes = [{"text": f"Note {i}: the {_word(rng)} river floods every {i + 2} years near "
                      f"{_word(rng).title()} village."} for i in range(30)]
    general = [{"text": f"A {_word(rng)} is a kind of {_word(rng)} found in {i + 5} "
                        f"countries, mostly in the {_word(rng)} hills."} for i in range(30)]
    trivia = [{"id": f"q{i}", "question": f"Which of these is {what}?", "choices": choices,
               "answer": 0}
              for i, (what, choices) in enumerate([("a colour", ["red", "seven", "dog"]),
                                                   ("a number", ["seven", "red", "dog"]),
                                                   ("an animal", ["dog", "red", "seven"]),
                                                   ("a fruit", ["apple", "stone", "nine"])])]
    return {name: write_jsonl(root / f"{name}.jsonl", rows) for name, rows in
            [("facts", facts), ("qa", qa), ("notes", notes), ("general", general),
             ("trivia", trivia)]}


def experiment(root: Path, model_dir: Path, ray_address: str) -> Path:
    """The experiment YAML: seven stages, each a check (see the tests)."""
    files = write_data(root)
    text = {"format": "text"}
    cfg = {
        "name": NAME,
        "runs_dir": str(root / "runs"),
        "model": {"base": str(model_dir)},
        # The test's Ray instance: the driver subprocess joins it, and the in-process resume
        # finds it initialised (and leaves it to the fixture to shut down).
        "cluster": {"address": ray_address, "num_workers": NUM_WORKERS, "cpus_per_worker": 1,
                    "use_gpu": False},
        "training": {
            "datasets": [{"path": str(files["notes"]), **text}],
            "validation_fraction": 0.1, "seq_len": 32, "micro_batch_size": MICRO_BATCH_SIZE,
            "max_steps": 2, "lr": FROZEN_LR, "precision": "fp32", "zero_stage": 2,
            "log_every_steps": 4, "eval_every_steps": 1000,
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "merge": True},
        },
        "stages": [
            # A real fine-tune, on two tasks mixed by weight.
            # Its seq_len holds each instruction record (79 tokens) whole.
            {"name": "s1", "lr": 3e-3, "max_steps": MIX_STEPS, "seq_len": 96,
             "datasets": [{"path": str(files["facts"]), **text, "weight": 3},
                          {"path": str(files["qa"]), "format": "instruction", "weight": 1}]},
            # Continues s1 (start_from defaults to the stage before), half of it replay; the
            # driver is killed after its first checkpoint.
            {"name": "s2", "max_steps": RESUMED_STEPS, "checkpoint_every_steps": CHECKPOINT_EVERY,
             "replay": {"fraction": 0.5, "stages": [],
                        "datasets": [{"path": str(files["general"]), **text}]}},
            # A branch from the base model, stopped early: min_delta makes a flat validation
            # loss count as no improvement.
            {"name": "s3", "start_from": "base", "max_steps": EARLY_STOP_MAX_STEPS,
             "eval_every_steps": 1, "early_stopping_patience": 2,
             "early_stopping_min_delta": 1e-3},
            # A LoRA fine-tune, then a stage that keeps training its adapter, then a fresh
            # adapter on l2's merged model.
            {"name": "l1", "start_from": "base", "method": "lora", "lr": 3e-3, "max_steps": 4},
            {"name": "l2", "method": "lora", "lora_init": "continue"},
            {"name": "l3", "method": "lora", "lr": 3e-3, "max_steps": 4},
        ],
        "evaluation": {
            "benchmarks": [{"name": "trivia", "path": str(files["trivia"]), "kind": "general"}],
            "arms": ["base", "ft"], "limit": 4, "bootstrap_samples": 100,
            # s3 is the base again on purpose (a frozen learning rate), which the probe refuses.
            "probe": False,
        },
    }
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


# -- the run, killed during s2 and resumed ---------------------------------------------------


@dataclass
class StagedRun:
    run_dir: Path
    manifest_at_kill: dict
    s1_export_mtime_at_kill: int
    s2_ray_run: str
    s2_step_at_kill: int


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def wait_for_first_checkpoint(storage: Path, stage: str, driver: subprocess.Popen, log: Path,
                              timeout_s: float = 600) -> tuple[str, int]:
    """(Ray run name, step) of the first checkpoint Ray registered for ``stage``'s run
    (named ``<experiment>-<stage>-<hash8>``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for run in storage.glob(f"{NAME}-{stage}-*"):
            try:
                latest = ckpt.latest(str(storage), run.name)
            except (ValueError, OSError):  # Ray's snapshot caught mid-write
                continue
            if latest is not None:
                return run.name, latest[1]["step"]
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited with {driver.returncode} before {stage} "
                                 f"wrote a checkpoint:\n{tail(log)}")
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint of {stage} after {timeout_s} s:\n{tail(log)}")


@pytest.fixture(scope="module")
def staged(ray_local, tiny_model_dir, tmp_path_factory) -> StagedRun:
    root = tmp_path_factory.mktemp("stages")
    config = experiment(root, tiny_model_dir, ray_local)
    run_dir = root / "runs" / NAME
    log = root / "driver.log"
    # The first attempt is a separate driver process, killed like a closed laptop once s2
    # has a checkpoint: Ray ends its trainer and workers, and only the run directory remains.
    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "tunearena.launch.cli", "run",
                                   str(config)], cwd=root, stdout=out, stderr=subprocess.STDOUT)
    try:
        ray_run, step = wait_for_first_checkpoint(run_dir / "ray", "s2", driver, log)
    finally:
        driver.kill()
        driver.wait(timeout=60)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    mtime = (run_dir / "models" / "s1" / "model.safetensors").stat().st_mtime_ns
    assert main(["run", str(config), "--resume"]) == 0
    return StagedRun(run_dir, manifest, mtime, ray_run, step)


def steps(run: StagedRun) -> dict:
    return json.loads((run.run_dir / "manifest.json").read_text())["steps"]


def summary(run: StagedRun, stage: str) -> dict:
    """The training summary the manifest holds for ``stage``."""
    return steps(run)[f"train:{stage}"]["outputs"]


def tensors(model_dir: Path, file: str = "model.safetensors") -> dict:
    return load_file(str(model_dir / file))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def binomial_slack(p: float, n: int) -> float:
    """Four standard errors of a share ``p`` estimated from ``n`` draws."""
    return 4 * math.sqrt(p * (1 - p) / n)


# -- the tests -------------------------------------------------------------------------------


def test_a_killed_driver_resumes_inside_the_stage_and_reuses_finished_ones(staged):
    # When killed, s1 was done and s2 was running with no export.
    at_kill = staged.manifest_at_kill["steps"]
    assert at_kill["train:s1"]["status"] == "done"
    assert at_kill["train:s2"]["status"] == "running"
    assert staged.s2_step_at_kill == CHECKPOINT_EVERY
    assert re.fullmatch(rf"{NAME}-s2-[0-9a-f]{{8}}", staged.s2_ray_run), staged.s2_ray_run

    after = steps(staged)
    assert all(s["status"] == "done" for s in after.values()), after
    # Finished steps are reused, not redone: s1's outputs and export are untouched.
    for step in ("prepare:s1", "prepare:s2", "train:s1"):
        assert "reused" in after[step], step
    assert after["train:s1"]["outputs"] == at_kill["train:s1"]["outputs"]
    assert after["train:s1"]["finished"] == at_kill["train:s1"]["finished"]
    model = staged.run_dir / "models" / "s1" / "model.safetensors"
    assert model.stat().st_mtime_ns == staged.s1_export_mtime_at_kill
    # s2 continued its own Ray run from a checkpoint rather than starting over.
    assert "reused" not in after["train:s2"]
    s2 = summary(staged, "s2")
    assert CHECKPOINT_EVERY <= s2["resumed_from_step"] < RESUMED_STEPS
    assert s2["steps"] == s2["planned_steps"] == RESUMED_STEPS
    assert [p.name for p in (staged.run_dir / "ray").glob(f"{NAME}-s2-*")] == [staged.s2_ray_run]
    # The history restored from the checkpoint and the one after it join without a repeat.
    logged = [h["step"] for h in s2["history"]]
    assert logged == sorted(set(logged)) and logged[-1] == RESUMED_STEPS
    assert (staged.run_dir / "models" / "s2" / "model.safetensors").is_file()
    # Every stage after the killed one ran, and every stage's arm was scored.
    for stage in ("s3", "l1", "l2", "l3"):
        assert after[f"train:{stage}"]["status"] == "done" and "reused" not in after[f"train:{stage}"]
    assert ({f"evaluate:ft@{s}" for s in ("s1", "s2", "s3", "l1", "l2", "l3")}
            <= after.keys())


def test_a_stage_starts_from_its_predecessor_unless_told_base(staged, tiny_model_dir):
    base = tensors(tiny_model_dir)
    models = staged.run_dir / "models"
    s1, s2, s3 = (tensors(models / s) for s in ("s1", "s2", "s3"))
    assert max_abs_diff(s1, base) > CHANGED_ABS  # s1 really trained
    # s2 (start_from: the stage before) loaded s1's weights; s3 (start_from: base) the base.
    assert max_abs_diff(s2, s1) < EQUAL_ABS
    assert max_abs_diff(s3, base) < EQUAL_ABS
    assert max_abs_diff(s3, s1) > CHANGED_ABS

    expected = {"s1": "base", "s2": "s1", "s3": "base", "l1": "base", "l2": "l1", "l3": "l2"}
    assert {s: summary(staged, s)["start_from"] for s in expected} == expected
    results = json.loads((staged.run_dir / "results.json").read_text())
    assert results["stages"]["order"] == list(expected)
    assert {s: results["stages"]["stages"][s]["start_from"] for s in expected} == expected
    # No domain benchmark to choose by: ft is the last stage.
    assert results["stages"]["selection"]["selected"] == "l3"


def test_a_lora_stage_continues_its_predecessors_adapter_on_the_base(staged, tiny_model_dir):
    models = staged.run_dir / "models"
    l1 = tensors(models / "l1" / ADAPTER_DIR, "adapter_model.safetensors")
    l2 = tensors(models / "l2" / ADAPTER_DIR, "adapter_model.safetensors")
    # l1's adapter trained (peft starts lora_B at zero), and l2 went on from it, not afresh.
    assert max(float(v.abs().max()) for k, v in l1.items() if "lora_B" in k) > CHANGED_ABS
    assert max_abs_diff(l2, l1) < EQUAL_ABS
    for stage in ("l1", "l2"):
        adapter = json.loads((models / stage / ADAPTER_DIR / "adapter_config.json").read_text())
        assert Path(adapter["base_model_name_or_path"]).resolve() == tiny_model_dir.resolve()
    # Both merge into the original base: merged onto l1's merged model, l2 would carry the
    # adapter's update twice.
    base = tensors(tiny_model_dir)
    merged_l1, merged_l2 = tensors(models / "l1"), tensors(models / "l2")
    assert max_abs_diff(merged_l1, base) > CHANGED_ABS / 10
    assert max_abs_diff(merged_l2, merged_l1) < EQUAL_ABS
    l1_summary, l2_summary = summary(staged, "l1"), summary(staged, "l2")
    assert l2_summary["lora_init"] == "continue" and l2_summary["method"] == "lora"
    assert l2_summary["trainable_parameters"] == l1_summary["trainable_parameters"]


def test_each_adapter_loads_from_a_moved_run_directory_on_the_base_it_names(
        staged, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunearena.training.adapters import AdapterBaseError, check_base

    def logits(model, ids):
        with torch.no_grad():
            return model.eval()(ids).logits

    home = staged.run_dir
    moved = Path(shutil.move(home, tmp_path / "elsewhere" / NAME))
    try:
        models = moved / "models"
        ids = AutoTokenizer.from_pretrained(models / "l3")(
            "Question: How many bells does the tower have?", return_tensors="pt")["input_ids"]
        named, merged = {}, {}
        for stage in ("l1", "l2", "l3"):
            adapter = models / stage / ADAPTER_DIR
            config = json.loads((adapter / "adapter_config.json").read_text())
            named[stage] = config["base_model_name_or_path"]
            # A relative base is relative to the run directory, wherever it now is.
            base_dir = Path(named[stage]) if Path(named[stage]).is_absolute() \
                else moved / named[stage]
            base = AutoModelForCausalLM.from_pretrained(base_dir)
            merged[stage] = logits(AutoModelForCausalLM.from_pretrained(models / stage), ids)
            torch.testing.assert_close(logits(PeftModel.from_pretrained(base, adapter), ids),
                                       merged[stage], rtol=1e-4, atol=1e-4, msg=stage)
            assert f'PeftModel.from_pretrained(base, "models/{stage}/adapter")' in (
                adapter / "README.md").read_text()
        # l1 and l2 sit on the original base (outside the run dir, named as the run read it),
        # l3 on l2's merged model, named inside the run directory.
        assert Path(named["l1"]).resolve() == Path(named["l2"]).resolve() == tiny_model_dir.resolve()
        assert named["l3"] == "models/l2"

        # The mistake the record guards against: l3's adapter on the original base is another
        # model, and tunearena refuses it, naming both.
        l3_adapter = models / "l3" / ADAPTER_DIR
        on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                            l3_adapter)
        assert float((logits(on_base, ids) - merged["l3"]).abs().max()) > CHANGED_ABS
        with pytest.raises(AdapterBaseError, match=r"stage l2 \(models/l2\)") as err:
            check_base(l3_adapter, moved, str(tiny_model_dir))
        assert str(tiny_model_dir) in str(err.value)
        check_base(l3_adapter, moved, str(models / "l2"))
    finally:
        shutil.move(moved, home)


def test_early_stopping_ends_the_stage_and_exports_that_model(staged):
    s3 = summary(staged, "s3")
    # Validated every step: the first loss is the best, the next two do not improve on it by
    # min_delta, and patience 2 stops the stage at step 3.
    assert s3["stopped_early_at"] == 3
    assert s3["steps"] == 3 and s3["planned_steps"] == EARLY_STOP_MAX_STEPS
    assert [h["step"] for h in s3["history"] if "val_loss" in h] == [1, 2, 3]
    assert (staged.run_dir / "models" / "s3" / "model.safetensors").is_file()
    assert summary(staged, "s1")["stopped_early_at"] is None


def test_the_mixture_draws_tasks_by_weight_not_size(staged):
    mix = summary(staged, "s1")["mix"]
    assert mix["target"] == pytest.approx({"facts": 0.75, "qa": 0.25})
    drawn = sum(mix["sequences"].values())
    assert drawn == MIX_STEPS * GLOBAL_BATCH_SIZE
    for task, target in mix["target"].items():
        assert mix["realised"][task] == pytest.approx(mix["sequences"][task] / drawn)
        assert abs(mix["realised"][task] - target) <= binomial_slack(target, drawn), mix
    # By size alone facts would be the minority: the weights, not the sizes, decided.
    data = summary(staged, "s1")["data"]
    assert data["facts"]["train"] < data["qa"]["train"]


def test_replay_takes_its_fraction_of_the_stage(staged):
    s2 = summary(staged, "s2")
    mix = s2["mix"]
    assert mix["target"] == pytest.approx({"notes": 0.5, "replay:general": 0.5})
    # The counts survive the restart: they cover every step, not only the resumed ones.
    drawn = sum(mix["sequences"].values())
    assert drawn == RESUMED_STEPS * GLOBAL_BATCH_SIZE
    for task, target in mix["target"].items():
        assert abs(mix["realised"][task] - target) <= binomial_slack(target, drawn), mix
    assert s2["replay"] == {"fraction": 0.5, "sources": ["general"]}
    assert "replay:general" in s2["data"]
    assert (staged.run_dir / "data" / "s2" / "replay" / "general.train.jsonl").is_file()
