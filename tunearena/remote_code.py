"""Whether a model dir's own Python code may run: ``model.trust_remote_code``, one answer for
every process of a run.

A model dir whose ``config.json`` has an ``auto_map`` ships Python files that transformers
imports to build the model. Left to its default, transformers asks ``Do you wish to run the
custom code? [y/N]`` on whatever stdin holds, so a piped ``y`` ran a stranger's code. Every
``from_pretrained`` (and ``from_config``) in tunearena passes ``trust_remote_code=`` this
answer instead, and the input check refuses such a dir unless the config allows it.

The answer is set once from the config by the input check and kept in an environment
variable, which the cluster passes to every Ray worker (``ray_cluster.PASSTHROUGH_ENV``), so a
scoring task or a training worker reads the same answer as the driver; a process that never
saw it reads false.
"""

from __future__ import annotations

import os

ENV = "TUNEARENA_TRUST_REMOTE_CODE"


def trust_remote_code() -> bool:
    """The run's ``model.trust_remote_code``; false unless the input check set it true."""
    return os.environ.get(ENV, "") == "1"


def set_trust_remote_code(value: bool) -> None:
    """Record ``model.trust_remote_code`` for this process and the workers it starts."""
    os.environ[ENV] = "1" if value else "0"
