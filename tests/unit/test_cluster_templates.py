"""The cluster templates in cluster/templates/ stay usable: each is read by what reads it in
practice (Ray's cluster-launcher schema and config preparation, KubeRay's RayCluster-to-
autoscaler translation, bash, Docker's FROM), and the tunearena command each one runs is
parsed by tunearena's own CLI parser with a config that loads, overrides applied.

No Ray is started: the Slurm script runs against stub `srun`, `scontrol`, `python` and
`tunearena` commands that record what it did.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from tunearena.launch.cli import _parser
from tunearena.launch.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "cluster" / "templates"
LAUNCHER = TEMPLATES / "ray-cluster-gpu.yaml"
RAYJOB = TEMPLATES / "kuberay-rayjob.yaml"
SBATCH = TEMPLATES / "slurm-tunearena.sbatch"
DOCKERFILE = TEMPLATES / "Dockerfile"
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


# ------------------------------------------------------------------------------ helpers


def readme_torch_pin() -> str:
    """The torch pin of the README's install command (the templates must install the same)."""
    match = re.search(r'pip install "torch==([^"]+)"', (REPO / "README.md").read_text())
    assert match, "the README lost its install command"
    return match.group(1)


def comment_commands(text: str) -> list[str]:
    """The shell commands shown in a template's comments: its code blocks, as in Markdown
    (lines indented four spaces or more after the ``#``, after an empty ``#`` line, so an
    indented list item's second line is not one), backslash continuations joined."""
    commands, pending, in_block, after_blank = [], "", False, False
    for line in text.splitlines():
        match = re.match(r"#( {4,}\S.*)$", line)
        in_block = match is not None and (in_block or after_blank)
        after_blank = line.rstrip() == "#"
        if match is None or not in_block:
            continue
        pending += match.group(1).strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
        else:
            commands.append(pending)
            pending = ""
    return commands


def tunearena_argvs(command: str) -> list[list[str]]:
    """The argv of every ``tunearena ...`` in a shell command, including inside a quoted
    command (``ray exec CLUSTER '... && tunearena run ...'``)."""
    argvs = []
    tokens = shlex.split(command, comments=True)
    for i, token in enumerate(tokens):
        if token == "tunearena" and i + 1 < len(tokens):
            argv = []
            for arg in tokens[i + 1:]:
                if arg in SHELL_OPERATORS:
                    break
                argv.append(arg)
            argvs.append(argv)
        elif " " in token and "tunearena " in token:
            argvs.extend(tunearena_argvs(token))
    return argvs


def load_run(argv: list[str], checkout: Path | str = REPO) -> ExperimentConfig:
    """Parse a ``tunearena run`` argv with tunearena's parser and load its config with its
    overrides; ``checkout`` is where the repository is on the machine that runs it."""
    args = _parser().parse_args(argv)
    assert args.command == "run", argv
    config = Path(args.config)
    if config.is_absolute():
        config = REPO / config.relative_to(checkout)
    assert config.is_file(), f"the template's config {args.config} is not in the repository"
    return load_config(config, args.overrides)


def assert_fits(cfg: ExperimentConfig, gpus_per_node: int, cpus_per_node: int, nodes: int,
                shared: str) -> None:
    """The run uses every GPU, one worker each, within each node's CPUs, and keeps its run
    directory and checkpoints on the storage every node mounts."""
    assert cfg.cluster.address == "auto"
    assert cfg.cluster.num_workers == nodes * gpus_per_node
    assert cfg.cluster.gpus_per_worker == 1
    assert cfg.cluster.placement in ("PACK", "SPREAD")  # several workers share a node
    assert cfg.cluster.cpus_per_worker * gpus_per_node <= cpus_per_node
    prefix = shared.rstrip("/") + "/"
    assert str(cfg.runs_dir).startswith(prefix), cfg.runs_dir
    assert cfg.cluster.storage_path is not None
    assert cfg.cluster.storage_path.startswith(prefix), cfg.cluster.storage_path


def dockerfile() -> tuple[str, str, list[list[str]], list[str]]:
    """The Dockerfile's base image, where the checkout goes, its COPY lines, its RUN lines."""
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    base = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    copies = [shlex.split(ln)[1:] for ln in lines if ln.startswith("COPY ")]
    runs = [ln[len("RUN "):] for ln in lines if ln.startswith("RUN ")]
    assert len(base) == 1 and copies and runs
    dests = {c[-1].rstrip("/") for c in copies if c[-2] in ("pyproject.toml", "README.md")}
    assert len(dests) == 1, "pyproject.toml and README.md go to the checkout's root"
    return base[0], dests.pop(), copies, runs


@pytest.mark.parametrize("template", [LAUNCHER, RAYJOB, SBATCH, DOCKERFILE], ids=lambda p: p.name)
def test_header_commands_parse_and_name_real_files(template):
    commands = comment_commands(template.read_text())
    assert commands, "the header shows the commands to use the template"
    assert any(f"cluster/templates/{template.name}" in c for c in commands)
    for path in re.findall(r"cluster/templates/[\w.-]*\w", template.read_text()):
        assert (REPO / path).is_file(), path
    for command in commands:
        for argv in tunearena_argvs(command):
            _parser().parse_args(argv)  # exits, failing the test, on a wrong command line


# ----------------------------------------------------------------------------- launcher


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def test_launcher_validates_against_rays_schema_and_config_preparation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = launcher()
    jsonschema.validate(cfg, schema)
    # What `ray up` does before it talks to the cloud: fill Ray's AWS defaults in, merge the
    # setup commands, set per-type worker bounds, validate again (no network, no credentials).
    validate_config(prepare_config(copy.deepcopy(cfg)))

    # The schema does bite: a misspelt node-type key is refused.
    typo = copy.deepcopy(cfg)
    typo["available_node_types"]["gpu"]["min_worker"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)


def test_launcher_sets_every_command_list_rays_defaults_would_fill():
    # Ray fills top-level keys the file leaves out from its provider's defaults.yaml, whose
    # setup_commands install a nightly Ray wheel: every command list must be set here.
    from ray.autoscaler._private.providers import _get_default_config

    cfg = launcher()
    defaults = _get_default_config(cfg["provider"])
    missing = [k for k in defaults if k.endswith("_commands") and k not in cfg]
    assert not missing


def test_launcher_node_types_image_and_install():
    cfg = launcher()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    gpu_types = [name for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types == ["gpu"]
    gpu = types["gpu"]
    # A fixed size: tunearena's preflight checks the resources of the nodes that are up.
    assert gpu["min_workers"] == gpu["max_workers"] == cfg["max_workers"] >= 1
    assert gpu["node_config"]["InstanceType"]

    base, _, _, _ = dockerfile()
    assert cfg["docker"]["image"] == base  # the image the Dockerfile builds on
    assert cfg["file_mounts"] == {"~/tunearena": "."}
    assert cfg["setup_commands"] == [f'cd ~/tunearena && pip install "torch=={readme_torch_pin()}" -e .']
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])


def test_launcher_run_command_parses_and_loads_its_config():
    cfg = launcher()
    text = LAUNCHER.read_text()
    commands = comment_commands(text)
    assert any(c.startswith("ray up cluster/templates/ray-cluster-gpu.yaml") for c in commands)
    runs = [(c, argv) for c in commands for argv in tunearena_argvs(c) if argv[0] == "run"]
    assert len(runs) == 1, "one tunearena run command in the header"
    command, argv = runs[0]
    assert command.startswith("ray exec cluster/templates/ray-cluster-gpu.yaml")
    # It runs in the synced checkout, where the config's relative path points.
    assert "'cd ~/tunearena && tunearena run " in command
    experiment = load_run(argv)

    gpu = cfg["available_node_types"]["gpu"]
    volumes = [o.split("=", 1)[1].split(":") for o in cfg["docker"]["run_options"]
               if o.startswith("--volume=")]
    assert volumes == [["/shared", "/shared"]], "the host's shared mount, at the same path"
    assert any("/shared" in c and "mount" in c for c in cfg["initialization_commands"])
    assert_fits(experiment, gpu["resources"]["GPU"], gpu["resources"]["CPU"],
                gpu["min_workers"], "/shared")


def test_launcher_dashboard_listens_on_loopback_and_says_how_to_reach_it():
    # The dashboard is Ray's Jobs API: reachable means able to run code on the cluster.
    [head_start] = [c for c in launcher()["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in LAUNCHER.read_text()
    header = " ".join(ln.lstrip("# ") for ln in LAUNCHER.read_text().splitlines()
                      if ln.startswith("#"))
    assert "`ray dashboard cluster/templates/ray-cluster-gpu.yaml`" in header
    assert "`ssh -L 8265:localhost:8265" in header


# ------------------------------------------------------------------------------- RayJob


def rayjob() -> dict:
    docs = list(yaml.safe_load_all(RAYJOB.read_text()))
    assert len(docs) == 1
    return docs[0]


def shared_mount(pod_spec: dict) -> tuple[str, str]:
    """(claim name, mount path) of the pod's PersistentVolumeClaim in its Ray container."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}
    assert len(claims) == 1
    (name, claim), = claims.items()
    paths = [m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"]
             if m["name"] == name]
    assert len(paths) == 1
    return claim, paths[0]


def test_rayjob_manifest_structure():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    assert isinstance(spec["entrypoint"], str)
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__

    head = cluster["headGroupSpec"]["template"]["spec"]
    assert isinstance(head["containers"], list) and head["containers"]
    image = head["containers"][0]["image"]
    assert isinstance(image, str) and re.search(r"/tunearena:[\w.-]+$", image)
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    assert all(isinstance(v, str) for v in cluster["headGroupSpec"]["rayStartParams"].values())

    groups = cluster["workerGroupSpecs"]
    assert isinstance(groups, list) and groups
    for group in groups:
        assert isinstance(group["groupName"], str)
        counts = [group[k] for k in ("minReplicas", "replicas", "maxReplicas")]
        assert all(isinstance(n, int) for n in counts) and 1 <= counts[0] <= counts[1] <= counts[2]
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] == image
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert isinstance(gpus, int) and gpus >= 1


def test_rayjob_dashboard_stays_inside_the_kubernetes_cluster():
    # In a pod the operator and the submitter reach the dashboard at the pod's IP, so it
    # listens on every interface there; the head Service is what keeps it in the cluster.
    head = rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["serviceType"] == "ClusterIP"
    text = RAYJOB.read_text()
    assert "never make it a" in text and "LoadBalancer or NodePort" in text
    assert "kubectl port-forward svc/<raycluster>-head-svc 8265:8265" in text


def test_rayjob_shared_volume_holds_runs_and_checkpoints():
    cluster = rayjob()["spec"]["rayClusterSpec"]
    head = shared_mount(cluster["headGroupSpec"]["template"]["spec"])
    workers = [shared_mount(g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    assert all(w == head for w in workers), "one claim, mounted at one path on every pod"


def test_rayjob_cluster_reads_as_kuberay_autoscaler_reads_it():
    # KubeRay's autoscaler turns the RayCluster spec into Ray's node types (CPU and GPU
    # counts from rayStartParams and the container limits) and validates the result.
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cluster = rayjob()["spec"]["rayClusterSpec"]
    derived = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": "tunearena", "namespace": "default"}, "spec": cluster})
    types = derived["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert "GPU" not in types["headgroup"]["resources"]
    assert types["gpu"]["resources"]["GPU"] == 4


def test_rayjob_entrypoint_parses_and_loads_its_config():
    job = rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    argvs = tunearena_argvs(job["spec"]["entrypoint"])
    assert len(argvs) == 1 and argvs[0][0] == "run"
    _, checkout, _, _ = dockerfile()
    experiment = load_run(argvs[0], checkout=checkout)  # a config inside the image

    [group] = cluster["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    _, shared = shared_mount(cluster["headGroupSpec"]["template"]["spec"])
    assert_fits(experiment, limits["nvidia.com/gpu"], int(limits["cpu"]), group["replicas"],
                shared)


# -------------------------------------------------------------------------------- Slurm


def sbatch_directives() -> dict[str, str]:
    """The #SBATCH options; sbatch reads them only before the script's first command."""
    directives, body_started = {}, False
    for line in SBATCH.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            assert not body_started, f"sbatch ignores {line!r} after the first command"
            key, _, value = line.split(maxsplit=1)[1].removeprefix("--").partition("=")
            directives[key] = value
        elif line.strip() and not line.startswith("#"):
            body_started = True
    return directives


def test_sbatch_syntax_and_directives():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    directives = sbatch_directives()
    for key in ("nodes", "ntasks-per-node", "gpus-per-task", "cpus-per-task", "time", "output"):
        assert key in directives, key
    assert directives["ntasks-per-node"] == "1"  # one Ray node per machine
    assert int(directives["nodes"]) >= 2 and int(directives["gpus-per-task"]) >= 1
    text = SBATCH.read_text()
    assert "trap cleanup EXIT" in text and "ray start --head" in text


STUBS = {
    # Records each step; a `ray start` step makes its node join (unless it never does).
    "srun": r"""
echo "srun $*" >> "$STUB_LOG"
if [[ " $* " == *" ray start "* ]]; then
    node=""; prev=""
    for arg in "$@"; do [[ $prev == -w ]] && node=$arg; prev=$arg; done
    [[ " ${STUB_NEVER_JOINS:-} " == *" $node "* ]] || echo "$node" >> "$STUB_DIR/joined"
fi
""",
    "scontrol": r"""[[ "$1 $2" == "show hostnames" ]] && printf 'gpu-a\ngpu-b\n'""",
    "hostname": r"""echo "fe80::1 10.1.2.3" """,
    # The script counts alive Ray nodes with python.
    "python": r"""cat "$STUB_DIR/joined" 2>/dev/null | wc -l""",
    "sleep": "true",
    "tunearena": r"""
printf '%s\0' "$@" > "$STUB_DIR/tunearena.argv"
echo "tunearena with $(cat "$STUB_DIR/joined" | wc -l) nodes joined" >> "$STUB_LOG"
exit "${STUB_TUNEARENA_RC:-0}"
""",
}


def run_sbatch(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the Slurm script as Slurm would on the first node, with stub commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text("#!/bin/bash\n" + body.strip() + "\n")
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    directives = sbatch_directives()
    log = tmp_path / "log"
    log.touch()
    environment = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_DIR": str(tmp_path),
        "SLURM_JOB_NUM_NODES": directives["nodes"],
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_GPUS_PER_TASK": "a100:" + directives["gpus-per-task"],  # typed, as Slurm may
        "SLURM_CPUS_PER_TASK": directives["cpus-per-task"],
        "SLURMD_NODENAME": "gpu-a",
        **env,
    }
    assert directives["nodes"] == "2", "the stub scontrol knows two nodes"
    done = subprocess.run(["bash", str(SBATCH)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=60)
    return done, log.read_text().splitlines()


def test_sbatch_starts_ray_runs_tunearena_then_stops_ray(tmp_path):
    done, log = run_sbatch(tmp_path)
    assert done.returncode == 0, done.stderr
    directives = sbatch_directives()
    gpus, cpus = directives["gpus-per-task"], directives["cpus-per-task"]
    resources = f"--num-cpus={cpus} --num-gpus={gpus} --block"
    head = [ln for ln in log if "ray start --head" in ln]
    assert head == [f"srun --nodes=1 --ntasks=1 --cpus-per-task={cpus} --gpus-per-task={gpus} "
                    f"-w gpu-a ray start --head --node-ip-address=10.1.2.3 --port=6379 "
                    f"{resources}"]
    workers = [ln for ln in log if "ray start --address" in ln]
    assert workers == [f"srun --nodes=1 --ntasks=1 --cpus-per-task={cpus} --gpus-per-task={gpus} "
                       f"-w gpu-b ray start --address=10.1.2.3:6379 {resources}"]
    # tunearena runs once, after both nodes joined; then Ray is stopped on every node.
    ran = [i for i, ln in enumerate(log) if ln.startswith("tunearena")]
    assert len(ran) == 1 and log[ran[0]] == "tunearena with 2 nodes joined"
    stops = [i for i, ln in enumerate(log) if ln.endswith("ray stop")]
    assert stops and stops[0] > ran[0] and "--overlap --nodes=2" in log[stops[0]]

    argv = (tmp_path / "tunearena.argv").read_text().split("\0")[:-1]
    experiment = load_run(argv)
    assert_fits(experiment, int(gpus), int(cpus), 2, "/shared/tunearena")


def test_sbatch_stops_ray_when_tunearena_fails(tmp_path):
    done, log = run_sbatch(tmp_path, STUB_TUNEARENA_RC="3")
    assert done.returncode == 3
    assert log[-1].endswith("ray stop")


def test_sbatch_gives_up_when_a_node_never_joins(tmp_path):
    done, log = run_sbatch(tmp_path, STUB_NEVER_JOINS="gpu-b", JOIN_TIMEOUT_S="1")
    assert done.returncode != 0
    assert "only 1 of 2 Ray nodes joined" in done.stderr
    assert not any(ln.startswith("tunearena") for ln in log)
    assert log[-1].endswith("ray stop")


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_on_the_installed_ray_and_the_readme_pin():
    base, checkout, copies, runs = dockerfile()
    match = re.fullmatch(r"rayproject/ray:(\S+)-py3(\d+)-gpu", base)
    assert match, base
    assert match.group(1) == ray.__version__
    pyproject = (REPO / "pyproject.toml").read_text()
    least = re.search(r'requires-python = ">=3\.(\d+)"', pyproject)
    assert least and int(match.group(2)) >= int(least.group(1))

    assert runs == [f'pip install --no-cache-dir "torch=={readme_torch_pin()}" {checkout}']
    sources = {src for c in copies for src in c[:-1] if not src.startswith("--")}
    assert {"pyproject.toml", "README.md", "tunearena", "configs"} <= sources
    assert all((REPO / src).exists() for src in sources)
