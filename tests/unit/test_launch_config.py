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
    assert cfg.training.datasets[0].path == REPO / "examples/demo_world/domain/docs_train.jsonl"
    assert cfg.rag.corpus == REPO / "examples/demo_world/domain/documents.jsonl"
    assert Path(cfg.model.base) == REPO / "examples/demo_world/base_model"
    assert cfg.training.seed == cfg.seed


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
    cfg = load_config(DEMO, ["evaluation.arms=[ft, base+rag]"])
    assert cfg.evaluation.arms == ["base", "ft", "base+rag"]
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


def test_ft_arms_need_a_merged_lora_model(tmp_path):
    text = MINIMAL.replace("arms: [base]", "arms: [base, ft]") + (
        "training:\n  datasets: [{path: t.jsonl}]\n  method: lora\n  lora: {merge: false}\n")
    with pytest.raises(ConfigError, match="training.lora.merge is false"):
        load_config(write(tmp_path, text))
