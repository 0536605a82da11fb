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

It also starts no Ray Data actors when it is given no Ray Datasets (ours never are: each
stage's tokens reach the workers through the object store). Ray Train's ``DatasetsCallback``
otherwise starts a ``DatasetManager`` actor, which starts Ray Data's autoscaling coordinator:
two more processes, each importing Ray Data, on the path to the first step (about 4 s of a
worker group's 16 s start on a 2-core machine).
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer


class InterruptibleTorchTrainer(TorchTrainer):
    """``TorchTrainer`` that aborts its run on ``KeyboardInterrupt`` without taking over
    SIGINT, and starts no dataset actors without datasets."""

    _controller = None

    def _register_sigint_handler(self, controller) -> None:
        # Called by fit() in the main thread, right before it blocks on the controller.
        self._controller = controller

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if type(c).__name__ != "DatasetsCallback"]

    def fit(self):
        try:
            return super().fit()
        except KeyboardInterrupt:
            if self._controller is not None:
                # Not waited for: the controller stops the workers, then exits itself.
                self._controller.abort.remote()
            raise
