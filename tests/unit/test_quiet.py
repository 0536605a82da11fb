"""The console filters drop the named noise and nothing else."""

import logging
import warnings

import pytest

from tunearena.cluster import quiet


def test_worker_output_loses_the_preemption_watcher_line_only():
    noise = ("[2026-12-04 17:22:50,999 E 4261 4293] core_worker.cc:2465: Actor with class name: "
             "'PreemptionWatcher' and ID: 'b4692b3443f8276736a5ce4d01000000' has constructor "
             "arguments in the object store and max_restarts > 0. If the arguments in the object "
             "store go out of scope or are lost, the actor restart will fail.")
    real = "[2026-12-04 17:22:51,000 E 4261 4293] core_worker.cc:901: Failed to get object"
    printed = []
    handle = quiet._filtered(printed.append)
    handle({"pid": 1, "is_err": True, "lines": [noise, real, "step 20/90 train_loss 0.78"]})
    handle({"pid": 1, "is_err": True, "lines": [noise]})  # nothing left: nothing printed
    assert [d["lines"] for d in printed] == [[real, "step 20/90 train_loss 0.78"]]
    assert printed[0]["pid"] == 1 and printed[0]["is_err"]


def test_deepspeed_cpu_fallback_is_dropped_only_where_no_gpu_was_given():
    record = logging.LogRecord("DeepSpeed", logging.WARNING, __file__, 1,
                               "Setting accelerator to CPU. If you have GPU or other "
                               "accelerator, we were unable to detect it.", None, None)
    other = logging.LogRecord("DeepSpeed", logging.WARNING, __file__, 1, "%s failed", ("op",),
                              None)
    without_gpu = quiet._DropMessage("Setting accelerator to CPU.", when=lambda: True)
    with_gpu = quiet._DropMessage("Setting accelerator to CPU.", when=lambda: False)
    assert not without_gpu.filter(record) and without_gpu.filter(other)
    assert with_gpu.filter(record)


@pytest.mark.slow  # starts Ray
def test_worker_hook_ignores_the_deprecated_collective_names_only(ray_local):
    import ray

    @ray.remote
    def warned() -> list[str]:
        # In a worker the setup hook has run.
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("default", category=UserWarning)
            for message, category in (
                ("`torch.distributed.all_gather_into_tensor` is deprecated. Use ...",
                 FutureWarning),
                ("`torch.distributed.reduce_scatter_tensor` is deprecated. Use ...",
                 FutureWarning),
                ("`torch.distributed.reduce_op` is deprecated, use ReduceOp", FutureWarning),
                ("something else", UserWarning),
            ):
                warnings.warn(message, category, stacklevel=1)
        import os

        return [str(w.message) for w in caught] + [os.environ.get("RAY_ADDRESS", "")]

    *shown, address = ray.get(warned.remote())
    assert shown == ["`torch.distributed.reduce_op` is deprecated, use ReduceOp",
                     "something else"]
    # The worker names its own cluster, so Ray's helpers never pick another on the machine.
    assert address == ray_local
