"""A ``TorchTrainer`` whose ``fit()`` leaves the process's signal handlers alone.

Ray Train V2's ``fit()`` installs its own SIGINT handler (``_register_sigint_handler`` in
``ray/train/v2/api/data_parallel_trainer.py``) and never restores the previous one: Ctrl-C then
asks the controller to abort and calls ``sys.exit``, so the driver's own handler (which marks
the step interrupted and exits 130) never runs, and the run ends as ``SystemExit: 1`` seconds
later. Here the controller's handle is kept instead, the driver's handler stays in charge, and
the ``KeyboardInterrupt`` it raises (Ctrl-C, or SIGTERM turned into one) asks the controller
to abort, as Ray's handler would have, and goes on up at once: the driver must record the
step as interrupted within the seconds a scheduler grants before its SIGKILL (``ray job
stop`` waits 3 s). The driver's ``ray.shutdown`` (or, on a cluster, its disconnecting, which
ends the actors it owns) stops whatever the abort has not.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer


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
            if self._controller is not None:
                # Not waited for: the controller stops the workers, then exits itself.
                self._controller.abort.remote()
            raise
