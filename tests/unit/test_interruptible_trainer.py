"""A worker group without Ray Datasets starts no dataset actors (two processes fewer on the
path to the first step); Ray's own TorchTrainer still has the callback this removes, so the
name it goes by is still Ray's."""

from __future__ import annotations

from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from tunearena.cluster.interruptible import InterruptibleTorchTrainer


def _loop(config: dict) -> None:
    pass


def _callback_names(trainer) -> list[str]:
    return [type(c).__name__ for c in trainer._create_default_callbacks()]


def test_no_dataset_actors_without_datasets():
    scaling = ScalingConfig(num_workers=1)
    assert "DatasetsCallback" in _callback_names(TorchTrainer(_loop, scaling_config=scaling))
    names = _callback_names(InterruptibleTorchTrainer(_loop, scaling_config=scaling))
    assert "DatasetsCallback" not in names
    assert "BackendSetupCallback" in names  # the process group is still set up
