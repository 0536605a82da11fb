"""``tunearena serve --address`` onto a running two-node cluster
(``ray.cluster_utils.Cluster``): replicas spread over its nodes, answers through the
``openai`` client, and Ctrl-C takes away the application only, leaving the cluster up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import openai
import pytest
from serve_runs import make_run

pytestmark = pytest.mark.slow


def test_serve_joins_a_cluster_spreads_replicas_and_leaves_it_running(tmp_path, tiny_model_dir):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    run = make_run(tmp_path, tiny_model_dir)
    proc = None
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = tmp_path / "serve.out"
        with out.open("w") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunearena.launch.cli", "serve", str(run), "--arm",
                 "base", "--address", cluster.address, "--port", str(port),
                 "--set", "serve.replicas=2"],
                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""})
        deadline = time.monotonic() + 300
        while "serving at" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(1)
        said = out.read_text()
        assert "joined the Ray cluster" in said and "2 nodes" in said
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-",
                               max_retries=0)
        reply = client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "Where is Lumora?"}])
        assert reply.choices[0].finish_reason in ("stop", "length")
        ray.init(address=cluster.address, log_to_driver=False)
        # Two replicas of one CPU running on two nodes of one CPU each: one on each.
        app = serve.status().applications["tunearena"]
        assert app.deployments["arm-base"].replica_states == {"RUNNING": 2}
        assert ray.available_resources().get("CPU", 0) == 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, out.read_text()
        assert "tunearena" not in serve.status().applications
        assert sum(n["Alive"] for n in ray.nodes()) == 2  # the cluster is still up
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        ray.shutdown()
        cluster.shutdown()
