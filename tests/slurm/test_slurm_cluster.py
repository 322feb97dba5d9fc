"""The SLURM test cluster itself (tests/slurm/start_cluster.sh) is self-contained.

It must never write a system SLURM's, munge's or MariaDB's files, the controller the tests
talk to must be its own, and a port held by another process must stop it before it changes
anything. Everything here runs the real scripts and daemons. The checks that need a cluster
of their own start a second one (own state folder, own ports, own name) beside the
session's, and stop it again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO_ROOT as REPO
from helpers import START_SCRIPT, wait_for_exec

pytestmark = pytest.mark.slurm

STOP_SCRIPT = REPO / "tests/slurm/stop_cluster.sh"
# What a system SLURM, munge or MariaDB reads; the test cluster must leave all of it alone.
SYSTEM_PATHS = ["/etc/slurm", "/etc/munge", "/etc/mysql", "/run/munge", "/run/mysqld"]
DAEMONS = {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"}
SECOND_CLUSTER = "isolationtest"


def snapshot(paths=SYSTEM_PATHS) -> dict[str, tuple]:
    """Every entry under ``paths``: type, mode, owner, and a hash of each file's bytes."""
    entries: dict[str, tuple] = {}
    for top in paths:
        if not os.path.lexists(top):
            entries[top] = ("absent",)
            continue
        for root, dirs, files in os.walk(top):
            for name in [".", *dirs, *files]:
                path = os.path.normpath(os.path.join(root, name))
                info = os.lstat(path)
                digest = None
                if stat.S_ISREG(info.st_mode):
                    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                entries[path] = (stat.S_IFMT(info.st_mode), info.st_mode, info.st_uid, digest)
    return entries


def daemon_pids() -> dict[int, str]:
    """Every running SLURM, munge or MariaDB daemon on this machine: pid -> comm."""
    pids = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            if comm in DAEMONS and (proc / "stat").read_text().split()[2] != "Z":
                pids[int(proc.name)] = comm
        except OSError:
            continue
    return pids


def processes_naming(text: str) -> dict[int, str]:
    """Live processes whose command line or environment contains ``text``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "stat").read_text().split()[2] == "Z":
                continue
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found[int(proc.name)] = (proc / "comm").read_text().strip()
    return found


def free_ports(count: int, first: int = 16900) -> list[int]:
    """``count`` ports from ``first`` on that nothing listens on (any address)."""
    ports = []
    for port in range(first, first + 100):
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    pytest.fail(f"no {count} free ports in {first}-{first + 99}")


def cluster_env(state: Path, ports: list[int], **extra: str) -> dict:
    """The environment for the scripts to run a second cluster in ``state``."""
    ctld, slurmd, dbd = ports
    return dict(
        os.environ,
        SLURM_TEST_STATE=str(state),
        SLURM_TEST_CLUSTER=SECOND_CLUSTER,
        SLURM_TEST_CTLD_PORT=str(ctld),
        SLURM_TEST_SLURMD_PORT=str(slurmd),
        SLURM_TEST_DBD_PORT=str(dbd),
        **extra,
    )


def run_script(script: Path, env: dict, *args: str, timeout: int = 180):
    return subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def slurm(conf: str, *command: str) -> str:
    """A SLURM client's output, through config ``conf``."""
    return subprocess.run(
        command,
        env=dict(os.environ, SLURM_CONF=conf),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def show_config(conf: str) -> dict[str, str]:
    config = {}
    for line in slurm(conf, "scontrol", "show", "config").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state folder path for a second cluster (not created), removed afterwards.

    Under /var/tmp, not pytest's tmp_path: the daemons' users (slurm, munge, mysql) must be
    able to reach it, and unix socket paths must stay short.
    """
    parent = Path(tempfile.mkdtemp(prefix="mp-slurm-iso-", dir="/var/tmp"))
    parent.chmod(0o755)
    state = parent / "state"
    yield state
    if state.exists():
        run_script(STOP_SCRIPT, cluster_env(state, [1, 2, 3]))
    shutil.rmtree(parent, ignore_errors=True)


# --------------------------------------------------------------------------- the session's cluster


def test_tests_talk_to_the_test_cluster(slurm_cluster):
    cluster = os.environ.get("SLURM_TEST_CLUSTER", "testcluster")
    assert not slurm_cluster.startswith("/etc/"), slurm_cluster
    assert os.environ["SLURM_CONF"] == slurm_cluster
    config = show_config(slurm_cluster)
    assert config["ClusterName"] == cluster
    assert config["SlurmctldPort"] == os.environ.get("SLURM_TEST_CTLD_PORT", "16817")
    state = str(Path(slurm_cluster).parent.parent)
    assert config["AuthInfo"] == f"socket={state}/run/munge/munge.socket"
    # sinfo through the inherited environment (as every test and job does).
    rows = subprocess.run(
        ["sinfo", "-h", "-o", "%R %N %T"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    partition, node, node_state = rows[0].split()
    assert (partition, node) == ("debug", "localhost"), rows
    assert node_state in {"idle", "mixed", "allocated", "completing"}, rows
    # Accounting answers from its own slurmdbd, for this cluster.
    clusters = slurm(slurm_cluster, "sacctmgr", "-n", "-P", "list", "cluster", "format=cluster")
    assert cluster in clusters.split()
    # Every daemon of the cluster was started for this state folder.
    ours = set(processes_naming(slurm_cluster).values()) | set(processes_naming(state).values())
    assert ours >= DAEMONS, ours


def test_clients_in_a_job_without_slurm_cluster_reach_the_test_cluster(slurm_cluster, tmp_path):
    """Like the Snakemake jobstep plugin: a batch step that drops SLURM_* variables, then
    runs srun, whose step runs squeue and scontrol (as the training script does)."""
    out = tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "exec env -u SLURM_CONF srun -n 1 bash -c "
        "'echo conf=${SLURM_CONF:-unset}; squeue -h -j $SLURM_JOB_ID -o %i; "
        "scontrol show config | grep ^ClusterName'\n"
    )
    subprocess.run(
        ["sbatch", "--wait", "-A", "root", "-t", "2", "-o", str(out), str(script)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    lines = out.read_text().splitlines()
    assert f"conf={slurm_cluster}" in lines, lines
    assert any(
        line.split() == ["ClusterName", "=", show_config(slurm_cluster)["ClusterName"]]
        for line in lines
    ), lines


def test_rerun_confirms_quickly_and_keeps_the_daemons(slurm_cluster):
    state = Path(slurm_cluster).parent.parent
    pid_files = sorted((state / "run").glob("*/*.pid"))
    assert len(pid_files) == 5, pid_files
    pids = {p.name: p.read_text().strip() for p in pid_files}
    before = snapshot()
    started = time.monotonic()
    rerun = run_script(START_SCRIPT, dict(os.environ))
    elapsed = time.monotonic() - started
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1] == slurm_cluster
    assert "already running" in rerun.stderr
    assert {p.name: p.read_text().strip() for p in pid_files} == pids
    assert snapshot() == before
    # Well under a second when idle; generous here, as other tests may load the machine.
    assert elapsed < 5, elapsed


# --------------------------------------------------------------------------- a second cluster


def test_second_cluster_writes_nothing_outside_its_state_folder(slurm_cluster, state_dir):
    """A cold start (configs, munge key, MariaDB datadir, all daemons) beside the session's."""
    ports = free_ports(3)
    env = cluster_env(state_dir, ports)
    before = snapshot()
    start = run_script(START_SCRIPT, env)
    assert start.returncode == 0, start.stdout + start.stderr
    conf = start.stdout.strip().splitlines()[-1]
    assert conf == str(state_dir / "etc/slurm.conf")
    # Through its SLURM_CONF, the second cluster answers...
    config = show_config(conf)
    assert (config["ClusterName"], config["SlurmctldPort"]) == (SECOND_CLUSTER, str(ports[0]))
    assert slurm(conf, "sinfo", "-h", "-o", "%R %N %T").split() == ["debug", "localhost", "idle"]
    # ...and through the session's, still the session's cluster.
    assert show_config(slurm_cluster)["ClusterName"] != SECOND_CLUSTER
    assert snapshot() == before

    ours = processes_naming(str(state_dir))
    assert set(ours.values()) >= DAEMONS, ours
    stop = run_script(STOP_SCRIPT, env)
    assert stop.returncode == 0, stop.stderr
    assert not set(processes_naming(str(state_dir)).values()) & DAEMONS
    # The session's cluster was not disturbed.
    assert show_config(slurm_cluster)["ClusterName"] != SECOND_CLUSTER
    assert snapshot() == before


@pytest.mark.parametrize("taken", [0, 1, 2], ids=["SlurmctldPort", "SlurmdPort", "DbdPort"])
def test_port_held_by_another_process_stops_the_start(slurm_cluster, state_dir, taken):
    ports = free_ports(3, first=16950)
    daemons = daemon_pids()
    before = snapshot()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports[taken]))
        listener.listen()
        start = run_script(START_SCRIPT, cluster_env(state_dir, ports), timeout=60)
    assert start.returncode != 0, start.stdout + start.stderr
    message = start.stderr
    assert f"port {ports[taken]}" in message, message
    assert f"pid {os.getpid()}" in message, message  # names the process that holds it
    assert "nothing was changed" in message, message
    # No state folder, no new daemon, no changed system file.
    assert not state_dir.exists()
    assert daemon_pids() == daemons
    assert snapshot() == before
    assert "ready" not in start.stdout


def test_stop_signals_only_daemons_started_for_its_state_folder(slurm_cluster, state_dir, tmp_path):
    """Pid files in the state folder that name other processes (a stand-in named slurmd,
    and the session cluster's real slurmctld) are not enough to stop them."""
    session_state = Path(slurm_cluster).parent.parent
    session_ctld = (session_state / "run/slurm/slurmctld.pid").read_text().strip()
    stand_in = tmp_path / "slurmd"
    shutil.copy("/bin/sleep", stand_in)
    sleeper = subprocess.Popen([str(stand_in), "120"])
    try:
        wait_for_exec(sleeper, str(stand_in), "120")  # a slurmd by name, not ours
        run_dir = state_dir / "run/slurm"
        run_dir.mkdir(parents=True)
        (run_dir / "slurmd.pid").write_text(f"{sleeper.pid}\n")
        (run_dir / "slurmctld.pid").write_text(f"{session_ctld}\n")
        stop = run_script(STOP_SCRIPT, cluster_env(state_dir, free_ports(3)))
        assert stop.returncode == 0, stop.stderr
        assert "stopping" not in stop.stderr, stop.stderr
        assert sleeper.poll() is None
        assert Path(f"/proc/{session_ctld}/comm").read_text().strip() == "slurmctld"
        assert show_config(slurm_cluster)["ClusterName"] != SECOND_CLUSTER
    finally:
        sleeper.kill()
        sleeper.wait()


# --------------------------------------------------------------------------- make test


def make_test(env: dict, pytest_command: str) -> subprocess.CompletedProcess:
    """`make test` with ``pytest_command`` in place of the suite (the set-up left out)."""
    command = ["make", "-o", "setup", "test", f"PYTEST={pytest_command}", f"VENV={sys.prefix}"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_make_test_stops_the_cluster_it_started_and_only_that(slurm_cluster, state_dir):
    """A cluster `make test` started is stopped after the suite, whatever the suite's
    outcome (passed on as make's); the session's cluster, already up, is left up."""
    env = cluster_env(state_dir, free_ports(3))
    result = make_test(env, "false")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "slurm test cluster ready" in result.stdout
    assert "test cluster stopped" in result.stderr
    assert not set(processes_naming(str(state_dir)).values()) & DAEMONS

    state = Path(slurm_cluster).parent.parent
    pids = {p.name: p.read_text() for p in (state / "run").glob("*/*.pid")}
    result = make_test(dict(os.environ), "true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {p.name: p.read_text() for p in (state / "run").glob("*/*.pid")} == pids
    assert all(Path(f"/proc/{pid.strip()}").exists() for pid in pids.values())
