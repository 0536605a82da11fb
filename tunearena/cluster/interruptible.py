"""A ``TorchTrainer`` whose ``fit()`` leaves the process's signal handlers alone.

Ray Train V2's ``fit()`` installs its own SIGINT handler (``_register_sigint_handler`` in
``ray/train/v2/api/data_parallel_trainer.py``) and never restores the previous one: Ctrl-C then
asks the controller to abort and calls ``sys.exit``, so the driver's own handler (which marks
the step interrupted and exits 130) never runs, and the run ends as ``SystemExit: 1`` seconds
later. Here the controller's handle is kept instead, the driver's handler stays in charge, and
the ``KeyboardInterrupt`` it raises (Ctrl-C, or SIGTERM turned into one) aborts the controller
as Ray's handler would have, then goes on up.
"""

from __future__ import annotations

import logging

import ray
from ray.train.torch import TorchTrainer

log = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 15.0
"""How long an interrupted ``fit()`` waits for the controller to stop its workers; the
driver's ``ray.shutdown`` ends whatever is left."""


class InterruptibleTorchTrainer(TorchTrainer):
    """``TorchTrainer`` that aborts its run on ``KeyboardInterrupt`` without taking over
    SIGINT."""

    _controller = None

    def _register_sigint_handler(self, controller) -> None:
        # Called by fit() in the main thread, right before it blocks on the controller.
        self._controller = controller

    def fit(self):
        try:
            return super().fit()
        except KeyboardInterrupt:
            self._abort()
            raise

    def _abort(self) -> None:
        """Ask the controller to stop the workers (it exits itself once they are stopped)."""
        if self._controller is None:
            return
        try:
            ray.get(self._controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
        except ray.exceptions.RayActorError:
            pass  # the controller exits as its last act of aborting
        except (ray.exceptions.RayError, KeyboardInterrupt) as e:
            log.warning("the training controller did not abort cleanly (%s: %s); Ray's "
                        "shutdown ends its workers", type(e).__name__, e)
