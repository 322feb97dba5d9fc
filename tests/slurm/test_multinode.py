"""Across nodes: the multi-node test cluster (tests/slurm/start_cluster.sh with
SLURM_TEST_NODES=3), the distributed engine spread over two of its nodes through
`snakemake --profile profiles/slurm`, and a run that loses a node mid-epoch.

Each node is a real slurmd in its own network, host-name and mount namespace on this
machine; jobs and their steps run inside their node's namespaces, meet by host name and
talk over the cluster's bridge. Marked `multinode` so a quick subset can leave them out.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
from conftest import MULTI_NODE
from fmnist.data.synthetic import write_synthetic
from helpers import (
    START_SCRIPT,
    assert_same_tensors,
    copy_workflow,
    load_weights,
    metric_columns,
    slurm_env,
)
from jobs import (
    finished_output,
    sacct_rows,
    start_reference,
    start_snakemake,
    training_job,
    wait_for,
    write_overlay,
)

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]

STOP_SCRIPT = helpers.REPO_ROOT / "tests/slurm/stop_cluster.sh"
NODES = [f"node{i}" for i in range(1, MULTI_NODE + 1)]
# A task on each of two nodes: task 0 serves on its node, task 1 connects to it by name.
MEET = """
import os, socket, time
rank, port = int(os.environ["SLURM_PROCID"]), 29777
if rank == 0:
    with socket.create_server(("", port)) as server:
        peer, _ = server.accept()
        print("task 0 on", socket.gethostname(), "heard from", peer.recv(64).decode())
else:
    first = os.environ["MEET_AT"]
    for _ in range(100):
        try:
            with socket.create_connection((first, port), timeout=5) as conn:
                conn.sendall(socket.gethostname().encode())
            break
        except OSError:
            time.sleep(0.1)
    print("task 1 on", socket.gethostname(), "reached", first)
"""


def cluster_env() -> dict:
    """The environment of the cluster scripts for this cluster."""
    return helpers.cluster_script_env(MULTI_NODE)


def node_states() -> dict[str, str]:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split() for line in out.splitlines())


def test_the_cluster_has_its_nodes_and_a_two_node_step_runs_a_task_on_each(multinode_cluster):
    wait_for(lambda: set(node_states().values()) == {"idle"}, "every node idle", 60)
    assert sorted(node_states()) == NODES
    step = subprocess.run(
        ["srun", "-A", "root", "-p", "debug", "-t", "1", "-N", "2", "-n", "2",
         "--ntasks-per-node=1", "-w", "node1,node2", sys.executable, "-c", MEET],
        capture_output=True, text=True, timeout=120, env=os.environ | {"MEET_AT": "node1"},
    )  # fmt: skip
    assert step.returncode == 0, step.stdout + step.stderr
    lines = sorted(step.stdout.splitlines())
    # Each task saw its own host name; the second reached the first over TCP by its name.
    assert lines == ["task 0 on node1 heard from node2", "task 1 on node2 reached node1"]


def two_node_overlay(workdir: Path, train: dict, data: dict, **resources) -> Path:
    per_job = {"tasks_per_node": 1, "cpus_per_task": 1} | resources
    return write_overlay(
        workdir / "overlay.yaml",
        data=data,
        train=train,
        resources={"train_model_parallel": per_job},
    )


def job_steps(job: str) -> list[list[str]]:
    """The job's steps (not its batch or extern step): id, tasks, nodes, node list, state."""
    rows = subprocess.run(
        ["sacct", "-n", "-P", "-j", job, "-o", "JobID,NTasks,NNodes,NodeList,State"],
        env=slurm_env(), capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    steps = [row.split("|") for row in rows]
    return [s for s in steps if s[0].split(".")[-1].isdigit() and "." in s[0]]


SYNTHETIC = {"train_size": 2000, "test_size": 500, "seed": 0}
DATA = {"dir": "resources/synthetic", "synthetic": SYNTHETIC}
TWO_STAGES = {"epochs": 2, "devices": ["cpu", "cpu"], "engine": "distributed"}


def test_a_two_stage_run_over_two_nodes_equals_the_single_process_engine(
    multinode_cluster, tmp_path
):
    """One job on two nodes: one srun step of two tasks, one per node; the stages meet at
    the job's first node by its name; the numbers are the single process's, bit for bit."""
    workdir = copy_workflow(tmp_path / "wf")
    overlay = two_node_overlay(workdir, TWO_STAGES, DATA)
    write_synthetic(tmp_path / "reference_data", **SYNTHETIC)
    reference = start_reference(
        tmp_path / "reference_data", tmp_path / "reference", TWO_STAGES | {"hidden_sizes": [200]}
    )
    workflow = start_snakemake(workdir, "--configfile", str(overlay))
    output = finished_output(workflow, workdir, timeout=400)
    reference_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_out
    assert workflow.returncode == 0, output

    run_dir = workdir / "results/runs/base"
    (attempt,) = json.loads((run_dir / "run.json").read_text())["attempts"]
    hosts = [r["hostname"] for r in attempt["ranks"]]
    assert len(set(hosts)) == 2 and set(hosts) <= set(NODES), hosts
    assert attempt["hostname"] == hosts[0]  # the launcher ran on the job's first node
    job = attempt["slurm"]["job_id"]
    ((_, tasks, nodes, nodelist, state),) = job_steps(job)
    assert (tasks, nodes, state) == ("2", "2", "COMPLETED"), nodelist
    assert metric_columns(run_dir / "epochs.csv") == metric_columns(
        tmp_path / "reference/epochs.csv"
    )
    assert_same_tensors(
        load_weights(run_dir / "model.pt"), load_weights(tmp_path / "reference/model.pt")
    )
    # Each host's clock is its own: the timeline names it and bounds its error; stage 0's
    # host is the reference clock.
    rows = list(csv.DictReader((run_dir / "timeline.csv").open()))
    clocks = {(r["stage"], r["host"], float(r["clock_error_seconds"]) > 0) for r in rows}
    assert clocks == {("0", hosts[0], False), ("1", hosts[1], True)}, clocks
    assert max(float(r["clock_error_seconds"]) for r in rows) < 1.0


def namespace_commands(node: str) -> list[str]:
    """The command names of every process in ``node``'s network namespace."""
    netns = f"mpsl{controller_port()}-{node}"
    pids = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=True
    ).stdout.split()
    names = []
    for pid in pids:
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue  # it ended meanwhile
    return names


def controller_port(conf: str | None = None) -> str:
    """The SlurmctldPort of the cluster ``conf`` describes (default: this test's), which
    the cluster's bridge and namespaces are named after."""
    text = Path(conf or slurm_env()["SLURM_CONF"]).read_text()
    return next(
        line.split("=")[1] for line in text.splitlines() if line.startswith("SlurmctldPort=")
    )


def second_node(job: str) -> str:
    """The node of the job's second task (the first runs the batch script and rank 0)."""
    nodelist = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True, check=True
    ).stdout.strip()
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(hosts) == 2, nodelist
    return hosts[1]


PG_TIMEOUT_S = 20  # the test's process_group_timeout: how long rank 0 waits for its peer
GAVE_UP = re.compile(
    rf"stage 1's process \(rank 1 on host (node\d)\) did not answer within {PG_TIMEOUT_S} s"
)


@pytest.mark.timeout(1200)
def test_a_node_lost_mid_epoch_is_survived_with_the_uninterrupted_metrics(
    multinode_cluster, tmp_path
):
    """Power loss of the node holding stage 1, mid-epoch: its link goes down and every
    process on it dies (no reset reaches rank 0). Rank 0 gives up after the process-group
    timeout naming the rank and host that stopped answering; the node is then marked down,
    as SLURM does once it misses its pings; SLURM requeues the job (NODE_FAIL), which
    resumes from the last checkpoint on the two nodes that remain and ends with exactly
    the uninterrupted run's metrics. Nothing of the run is left on any node."""
    workdir = copy_workflow(tmp_path / "wf")
    synthetic = {"train_size": 20000, "test_size": 500, "seed": 0}
    data = {"dir": "resources/synthetic", "synthetic": synthetic}
    train = TWO_STAGES | {"epochs": 4, "batch_size": 50, "hidden_sizes": [1024]}
    overlay = two_node_overlay(workdir, train, data, process_group_timeout=PG_TIMEOUT_S)
    write_synthetic(tmp_path / "reference_data", **synthetic)
    reference = start_reference(
        tmp_path / "reference_data", tmp_path / "reference", train, "--batch-size", "50"
    )
    epochs_csv = workdir / "results/runs/base/epochs.csv"
    log = workdir / "results/logs/train_model_parallel/base.log"
    lost = None
    try:
        with helpers.requeued_jobs_released():
            workflow = start_snakemake(workdir, "--configfile", str(overlay))
            job = wait_for(lambda: training_job(workdir), "the training job's submission")
            wait_for(
                lambda: epochs_csv.exists() and epochs_csv.read_text().count("\n") >= 2,
                "epoch 1",
                300,
            )
            time.sleep(1.0)  # into epoch 2, past its checkpoint
            lost = second_node(job)
            subprocess.run(
                ["bash", str(STOP_SCRIPT), "--power-off", lost], env=cluster_env(), check=True
            )
            cut = time.monotonic()
            gave_up = wait_for(lambda: GAVE_UP.search(log.read_text()), "rank 0 to give up")
            waited = time.monotonic() - cut
            # What SLURM does once the node misses SlurmdTimeout of pings.
            subprocess.run(
                ["scontrol", "update", f"nodename={lost}", "state=down", "reason=power loss"],
                check=True,
            )
            output = finished_output(workflow, workdir, timeout=600)
        reference_out, _ = reference.communicate(timeout=600)
    finally:
        if lost:  # the node comes back for the other tests
            subprocess.run(["bash", str(START_SCRIPT)], env=cluster_env(), capture_output=True)
    assert gave_up[1] == lost, gave_up[0]  # rank 1's host, the one that was lost
    assert reference.returncode == 0, reference_out
    assert workflow.returncode == 0, output
    print(f"rank 0 gave up {waited:.1f} s after the power loss (timeout {PG_TIMEOUT_S} s)")
    assert PG_TIMEOUT_S - 2 <= waited <= PG_TIMEOUT_S + 60, waited

    run_dir = workdir / "results/runs/base"
    attempts = json.loads((run_dir / "run.json").read_text())["attempts"]
    assert {a["slurm"]["job_id"] for a in attempts} == {job}
    last_hosts = {r["hostname"] for r in attempts[-1]["ranks"]}
    assert len(last_hosts) == 2 and lost not in last_hosts, last_hosts
    history = [state for (state,) in sacct_rows(job, "State", "-D")]
    assert history[-1] == "COMPLETED" and history[0] in ("NODE_FAIL", "REQUEUED"), history
    assert metric_columns(epochs_csv) == metric_columns(tmp_path / "reference/epochs.csv")
    # No stale process keeps a GPU or a port: only the nodes' slurmd remain (the lost node's
    # started again above).
    wait_for(
        lambda: all(namespace_commands(n) == ["slurmd"] for n in NODES),
        "the jobs' processes to end",
        60,
    )
    print(f"sacct -D states of job {job}: {history}; hosts at the end: {sorted(last_hosts)}")


def network_names() -> str:
    """This machine's network namespaces and links, as ip lists them."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return namespaces + links


def test_stopping_a_multi_node_cluster_removes_what_it_made_and_nothing_else(
    multinode_cluster, tmp_path
):
    """A second multi-node cluster (two nodes: its own state folder, name, ports, bridge
    and namespaces) starts beside the three-node one; stopping it ends its daemons and the
    processes in its namespaces, removes the namespaces, links and bridge, and leaves the
    other cluster answering."""
    env = helpers.cluster_script_env(2)
    start = subprocess.run(
        ["bash", str(START_SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    assert start.returncode == 0, start.stdout + start.stderr
    conf = start.stdout.strip().splitlines()[-1]
    assert conf != multinode_cluster and "2nodes" in conf
    port = controller_port(conf)
    made = [f"mpsl{port}-node1", f"mpsl{port}-node2", f"mpsl{port}:"]
    assert all(name in network_names() for name in made), network_names()
    # A process left in one of its nodes (as a job step would be) goes with it.
    stray = subprocess.Popen(["ip", "netns", "exec", f"mpsl{port}-node2", "sleep", "300"])
    helpers.wait_for_exec(stray, "sleep", "300")  # ip has entered the namespace
    stop = subprocess.run(
        ["bash", str(STOP_SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    assert stop.returncode == 0, stop.stderr
    assert stray.wait(timeout=30) != 0  # ended by the stop
    assert not any(name in network_names() for name in made), network_names()
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if conf.encode() in read(p)]
    # The three-node cluster still answers, all its nodes up.
    assert sorted(node_states()) == NODES
    assert all(f"mpsl{controller_port()}-{n}" in network_names() for n in NODES)


def read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""  # the process ended meanwhile
