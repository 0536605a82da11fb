"""Experiment config: YAML loading, overrides, path resolution and readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunearena.configbase import ConfigError
from tunearena.launch.config import ExperimentConfig, apply_override, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


MINIMAL = """
model: {base: some-org/some-model}
evaluation:
  arms: [base]
  benchmarks: [{name: qa, path: qa.jsonl, kind: domain}]
"""


def test_demo_config_loads_and_paths_resolve_relative_to_the_file():
    cfg = load_config(DEMO)
    assert cfg.name == "demo"
    docs, qa, qa_replay = cfg.resolved_stages()
    assert docs.training.datasets[0].path == REPO / "examples/demo_world/domain/docs_train.jsonl"
    assert qa_replay.replay is not None
    assert qa_replay.replay.datasets[0].path == REPO / "examples/demo_world/general/replay.jsonl"
    assert cfg.rag.corpus == REPO / "examples/demo_world/domain/documents.jsonl"
    assert Path(cfg.model.base) == REPO / "examples/demo_world/base_model"
    assert cfg.training.seed == cfg.seed == docs.training.seed
    # Each stage is an arm, before the selected ft arms.
    assert cfg.evaluation.arms == ["base", "base+fewshot", "base+rag", "ft@docs", "ft@qa",
                                   "ft@qa_replay", "ft",
                                   "ft+rag"]


def test_the_methods_demo_config_sets_each_method_beside_the_full_fine_tune():
    cfg = load_config(REPO / "configs" / "demo_methods.yaml")
    docs, qa, qa_lora, qa_dpo, qa_raft = cfg.resolved_stages()
    assert (qa.training.method, qa_lora.training.method) == ("full", "lora")
    assert (qa_dpo.training.kind, qa_dpo.start_from) == ("dpo", "qa")
    assert qa_raft.rag_context is not None and qa_raft.rag_context.p_gold == 0.8
    assert cfg.evaluation.arms == ["base", "base+rag", "ft@docs", "ft@qa", "ft@qa_lora",
                                   "ft@qa_dpo", "ft@qa_raft", "ft@qa_raft+rag", "ft", "ft+rag"]


STAGED = MINIMAL + """training:
  datasets: [{path: t.jsonl}]
  lr: 1.0e-3
  epochs: 2
stages:
  - name: one
  - name: two
    lr: 5.0e-4
    datasets: [{path: u.jsonl, format: instruction}]
  - name: side
    start_from: one
    method: lora
    replay: {fraction: 0.25}
"""


def test_stages_inherit_what_they_leave_unset(tmp_path):
    one, two, side = load_config(write(tmp_path, STAGED)).resolved_stages()
    assert (one.start_from, two.start_from, side.start_from) == ("base", "one", "one")
    assert one.training.lr == 1.0e-3 and two.training.lr == 5.0e-4
    assert two.training.epochs == side.training.epochs == 2
    assert one.training.datasets[0].path == tmp_path / "t.jsonl"
    assert two.training.datasets[0].path == tmp_path / "u.jsonl"  # relative to the YAML too
    assert side.training.method == "lora" and two.training.method == "full"
    assert side.replay is not None and side.replay.stages == "earlier"


def test_a_stage_key_that_is_no_training_key_is_named(tmp_path):
    path = write(tmp_path, STAGED.replace("    lr: 5.0e-4", "    learning_rate: 5.0e-4"))
    with pytest.raises(ConfigError, match=r"stages\.1.*unknown key 'learning_rate'"):
        load_config(path)


@pytest.mark.parametrize("change, message", [
    (("start_from: one", "start_from: three"), "start_from 'three' is not an earlier stage"),
    (("  - name: two", "  - name: one"), "the name 'one' is taken"),
    (("replay: {fraction: 0.25}", "replay: {fraction: 0.25, stages: [side]}"),
     "replay.stages names 'side', not an earlier stage"),
    (("    lr: 5.0e-4", "    lr: -1"), r"stages.1 \(two\): lr: Input should be greater than 0 "
                                      r"\(got -1\)"),
])
def test_stage_mistakes_name_the_stage(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, STAGED.replace(*change)))


def test_an_arm_must_name_a_stage(tmp_path):
    path = write(tmp_path, STAGED.replace("arms: [base]", "arms: [base, ft@three+rag]"))
    with pytest.raises(ConfigError, match="'ft@three\\+rag' but there is no stage 'three'"):
        load_config(path)
    path = write(tmp_path, STAGED.replace("arms: [base]", "arms: [base, ft-rag]"))
    with pytest.raises(ConfigError, match="unknown arm 'ft-rag'"):
        load_config(path)


def test_a_stage_after_an_unmerged_lora_stage_must_continue_its_adapter(tmp_path):
    text = STAGED.replace("  - name: one\n", "  - name: one\n    method: lora\n"
                          "    lora: {merge: false}\n")
    with pytest.raises(ConfigError, match="starts from lora stage 'one', whose adapter is not "
                                          "merged"):
        load_config(write(tmp_path, text.replace("arms: [base]", "arms: [base]")))


def test_mixture_weights_are_all_or_none(tmp_path):
    text = STAGED.replace("datasets: [{path: u.jsonl, format: instruction}]",
                          "datasets: [{path: u.jsonl, weight: 2}, {path: t.jsonl}]")
    with pytest.raises(ConfigError, match="set weight on every dataset of a stage or on none"):
        load_config(write(tmp_path, text))


def test_forgetting_tolerance_moved_to_evaluation(tmp_path):
    path = write(tmp_path, MINIMAL + "report: {forgetting_tolerance: 0.1}\n")
    with pytest.raises(ConfigError, match="moved to evaluation.forgetting_tolerance"):
        load_config(path)


def test_unknown_key_suggests_the_closest_name(tmp_path):
    path = write(tmp_path, MINIMAL + "traning: {}\n")
    with pytest.raises(ConfigError, match=r"traning: unknown key 'traning'; did you mean 'training'\?"):
        load_config(path)


def test_unknown_nested_key_names_its_section(tmp_path):
    path = write(tmp_path, MINIMAL.replace("arms: [base]", "arms: [base]\n  batch_sise: 4"))
    with pytest.raises(ConfigError, match=r"evaluation\.batch_sise: .*did you mean 'batch_size'"):
        load_config(path)


def test_wrong_type_names_field_and_value(tmp_path):
    path = write(tmp_path, MINIMAL + "rag: {top_k: many}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: rag\.top_k: .*\(got 'many'\)"):
        load_config(path)


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, MINIMAL + "rag: {top_k: 0}\ncluster: {num_workers: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "rag.top_k" in str(err.value) and "cluster.num_workers" in str(err.value)


def test_cross_section_rules(tmp_path):
    path = write(tmp_path, MINIMAL.replace("arms: [base]", "arms: [base, ft]"))
    with pytest.raises(ConfigError, match="ft arms but training is not enabled"):
        load_config(path)
    path = write(tmp_path, MINIMAL.replace("arms: [base]", "arms: [base, base+rag]"))
    with pytest.raises(ConfigError, match=r"\+rag arms but rag has no corpus"):
        load_config(path)


def test_overrides_parse_yaml_values_and_reach_list_items():
    cfg = load_config(DEMO, ["training.max_steps=7", "evaluation.limit=5", "rag.index_factory=HNSW32",
                             "evaluation.benchmarks.1.kind=domain", "cluster.use_gpu=false"])
    assert cfg.training.max_steps == 7 and cfg.evaluation.limit == 5
    assert cfg.rag.index_factory == "HNSW32"
    assert cfg.evaluation.benchmarks[1].kind == "domain"
    assert cfg.cluster.use_gpu is False


def test_override_of_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        load_config(DEMO, ["training.max_step=3"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "training.max_steps")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = write(tmp_path, "model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_arms_put_base_first_and_reject_duplicates(tmp_path):
    cfg = load_config(DEMO, ["evaluation.arms=[ft+rag, ft, base+rag, ft@qa+rag]"])
    # In a fixed order: base, each stage in order, the selected ft; each before its +rag.
    assert cfg.evaluation.arms == ["base", "base+rag", "ft@docs", "ft@qa", "ft@qa+rag",
                                   "ft@qa_replay", "ft", "ft+rag"]
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(DEMO, ["evaluation.arms=[ft, ft]"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(DEMO, ["training.max_steps=3"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.section_hash("training") == cfg.section_hash("training")
    assert cfg.section_hash("training") != load_config(DEMO).section_hash("training")


def test_hub_ids_are_left_alone(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.model.base == "some-org/some-model"
    assert isinstance(cfg, ExperimentConfig)


def test_cluster_example_config_is_valid():
    cfg = load_config(REPO / "configs" / "cluster_lora.yaml")
    assert cfg.training.method == "lora" and cfg.cluster.placement == "STRICT_SPREAD"
    assert cfg.training.datasets[1].format == "chat"
    assert cfg.cluster.max_failures == 3


def test_an_unmerged_adapter_is_scored_but_not_started_from(tmp_path):
    # The ft arm scores base + adapter; a later stage needs a whole model to start from.
    text = MINIMAL.replace("arms: [base]", "arms: [base, ft]") + (
        "training:\n  datasets: [{path: t.jsonl}]\n  method: lora\n  lora: {merge: false}\n")
    assert load_config(write(tmp_path, text)).training.lora.merge is False
    staged = text + "stages:\n  - name: a\n  - name: b\n    method: full\n"
    with pytest.raises(ConfigError, match="whose adapter is not merged; set its lora.merge"):
        load_config(write(tmp_path, staged))
    prompt = text.replace("method: lora", "method: prompt_tuning") + (
        "stages:\n  - name: a\n  - name: b\n    lora_init: continue\n    method: lora\n")
    with pytest.raises(ConfigError, match="keeps training the prompt_tuning adapter of 'a'"):
        load_config(write(tmp_path, prompt))


def test_the_minimal_config_an_empty_file_is_shown_is_valid(tmp_path):
    from tunearena.launch.config import MINIMAL_CONFIG

    cfg = load_config(write(tmp_path, MINIMAL_CONFIG))
    assert cfg.model.base == "my-model-dir" and cfg.evaluation.arms == ["base"]
    with pytest.raises(ConfigError, match=r"the file is empty.*\nmodel:\n  base:"):
        load_config(write(tmp_path, "# to do\n"))


def test_a_config_with_a_bom_and_crlf_loads(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.replace("\n", "\r\n").encode())
    assert load_config(path).evaluation.arms == ["base"]


def test_a_config_in_latin_1_is_named(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(MINIMAL.encode() + "# café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="exp.yaml: not valid UTF-8.*save the file as UTF-8"):
        load_config(path)


def test_set_on_a_list_says_which_entries_there_are():
    with pytest.raises(ConfigError, match=r"there is no stages\.3: stages has 3 entries \(0 to 2\)"):
        load_config(DEMO, ["stages.3.lr=1"])
    with pytest.raises(ConfigError, match=r"stages\.qa is not a number: stages has 3 entries"):
        load_config(DEMO, ["stages.qa.lr=1"])
    with pytest.raises(ConfigError, match=r"there is no evaluation\.arms\.9: .* has 5 entries"):
        load_config(DEMO, ["evaluation.arms.9=base"])
    with pytest.raises(ConfigError, match=r"there is no stages\.0\.datasets\.0: .* is empty"):
        apply_override({"stages": [{"datasets": []}]}, "stages.0.datasets.0.path=x")


def test_errors_a_set_causes_are_blamed_on_it_and_the_files_on_the_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["training.lr=fast", "rag.top_k=3"])
    assert str(err.value).startswith("--set training.lr=fast: training.lr:")
    assert str(DEMO) not in str(err.value)
    # A rule across fields, broken by a --set, names the --set too.
    with pytest.raises(ConfigError, match=r"^--set rag.chunk_overlap_tokens=500: rag: "):
        load_config(DEMO, ["rag.chunk_overlap_tokens=500"])
    # A mistake in the file stays the file's, even with an unrelated --set beside it.
    bad = write(tmp_path, MINIMAL + "seed: many\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: seed: "):
        load_config(bad, ["rag.top_k=3"])


def test_a_directory_or_a_list_given_as_the_config(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, expected a config file"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="the top level is a list, expected a mapping"):
        load_config(write(tmp_path, "- model: {base: x}\n"))


RAFT = MINIMAL.replace("arms: [base]", "arms: [base, ft+rag]") + """rag: {corpus: docs.jsonl}
stages:
  - name: qa
    datasets: [{path: qa.jsonl, format: instruction}]
  - name: qa_raft
    start_from: base
    datasets: [{path: qa.jsonl, format: instruction}]
    rag_context: {p_gold: 0.7}
"""


def test_a_rag_aware_stage_is_scored_beside_ft_plus_rag(tmp_path):
    cfg = load_config(write(tmp_path, RAFT))
    qa, raft = cfg.resolved_stages()
    assert qa.rag_context is None
    assert raft.rag_context is not None and raft.rag_context.p_gold == 0.7
    assert cfg.evaluation.arms == ["base", "ft@qa", "ft@qa_raft", "ft@qa_raft+rag", "ft+rag"]
    # Without ft+rag there is nothing to set it beside: no arm is added.
    no_rag = load_config(write(tmp_path, RAFT.replace("arms: [base, ft+rag]", "arms: [base]")))
    assert "ft@qa_raft+rag" not in no_rag.evaluation.arms


@pytest.mark.parametrize("change, message", [
    (("rag: {corpus: docs.jsonl}", "rag: {}"), "stage 'qa_raft': .*rag.corpus is not set"),
    (("rag: {corpus: docs.jsonl}", "rag: {corpus: docs.jsonl, enabled: false}"),
     "stage 'qa_raft': .*rag.enabled is false"),
    (("[{path: qa.jsonl, format: instruction}]\n    rag_context",
      "[{path: qa.jsonl, format: text}]\n    rag_context"),
     r"stage 'qa_raft': .*'instruction' only; not .*qa\.jsonl \(text\)"),
])
def test_a_rag_aware_stage_the_run_cannot_serve_is_refused_naming_it(tmp_path, change, message):
    text = RAFT.replace(*change)
    if "rag: {}" in text or "enabled: false" in text:
        text = text.replace("arms: [base, ft+rag]", "arms: [base]")  # no +rag arm to refuse
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))
