"""Starting the distributed engine's processes, one per stage: torchrun, or srun in a job.

The process the rule starts (train.py with train.engine distributed) starts the stages'
processes and waits for them. Locally that is torch's own launcher (torchrun's elastic
agent, no restarts: a rerun resumes from the checkpoint instead); in a SLURM job it is
srun, one task per stage, in the allocation the job's resources asked for (see
train_scheduler_resources in workflow/rules/common.smk). Either ends every process when
one fails, and reports the worst exit status.

The processes exit 0 both when the run is finished and when they stopped early with a
checkpoint (a non-zero status would make either launcher kill the others while rank 0
may still be writing); the checkpoint left in the run folder tells the two apart.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import uuid

from fmnist.console import log

EXIT_DIVERGED = 65  # a stage's process found a non-finite loss (EX_DATAERR)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def srun_command(stages: int, threads: int, gpus: bool, tasks_per_node: int | None) -> list[str]:
    """One task per stage, each with its CPUs (and GPU); one failing task ends them all."""
    words = ["srun", f"--ntasks={stages}", f"--cpus-per-task={threads}", "--kill-on-bad-exit=1"]
    words += ["--export=ALL"]
    if tasks_per_node:
        words += [f"--ntasks-per-node={tasks_per_node}"]
    if gpus:
        words += ["--gpus-per-task=1"]
    return words


# What the allocation may export that the step's own --gpus-per-task=1 conflicts with:
# "srun: fatal: --gpus-per-task is mutually exclusive with --ntasks-per-gpu and
# SLURM_NTASKS_PER_GPU" (our jobs ask sbatch for --ntasks-per-gpu=1, and a job script of
# a user's may too). The step asks for what it needs itself: one GPU per task.
ALLOCATION_ONLY = ("SLURM_NTASKS_PER_GPU",)


def srun_environment(environ: dict, master_port: int) -> dict:
    """The stage tasks' environment: the job's, where to meet (task 0 runs on this node,
    the job's first), without what srun would refuse beside the step's own options."""
    env = {k: v for k, v in environ.items() if k not in ALLOCATION_ONLY}
    return env | {"MASTER_ADDR": socket.gethostname(), "MASTER_PORT": str(master_port)}


def run_with_srun(argv: list[str], stages: int, threads: int, gpus: bool, per_node) -> int:
    env = srun_environment(os.environ, free_port())
    command = [*srun_command(stages, threads, gpus, per_node), sys.executable, *argv]
    log(f"starting {stages} stage processes: {shlex.join(command)}")
    return worst_exit_status([subprocess.run(command, env=env, check=False).returncode])


def run_with_torchrun(argv: list[str], stages: int, grace_seconds: int) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=stages,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,  # a failed stage ends the attempt; the next one resumes
        monitor_interval=0.2,
        # From a stop signal to the stages' end: what saving their checkpoint needs
        # (torch's 30 s cut off the checkpoints of large models).
        shutdown_timeout=grace_seconds,
    )
    log(f"starting {stages} stage processes with torchrun on this machine")
    try:
        elastic_launch(config, sys.executable)(*argv)
    except ChildFailedError as err:
        return worst_exit_status([f.exitcode for f in err.failures.values()])
    except SignalException as err:
        # The agent has passed the signal on to the stages and waited for them: they
        # stopped together and left a checkpoint, as if one of them had been signalled.
        log(f"stopping the stage processes: {err}")
    return 0


def worst_exit_status(codes: list[int]) -> int:
    """The status that says most: a permanent failure (2), a divergence, another failure
    (negative: killed by that signal)."""
    for status in (2, EXIT_DIVERGED):
        if status in codes:
            return status
    return next((code for code in codes if code != 0), 0)


def exit_status_text(status: int) -> str:
    """'exit status 1', or 'killed by SIGKILL' for a process a signal ended."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def launch_stages(
    argv: list[str], stages: int, threads: int, gpus: bool, per_node, grace_seconds: int
) -> int:
    """Run ``train.py argv --as-rank`` once per stage; the worst exit status. Under SLURM
    the stages stop on their own before the time limit (signal_seconds covers their
    checkpoint); locally they get ``grace_seconds`` from a stop signal to their end."""
    argv = [*argv, "--as-rank"]
    if os.environ.get("SLURM_JOB_ID"):
        return run_with_srun(argv, stages, threads, gpus, per_node)
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the stages inherit it
    return run_with_torchrun(argv, stages, grace_seconds)


LAUNCHER_PID = "FMNIST_LAUNCHER_PID"
"""Set for stage processes whose parent is their launcher (torchrun's, not srun's)."""


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_launcher() -> None:
    """Have the kernel send this stage process SIGTERM when its launcher dies (torchrun
    starts each stage in its own session, so nothing else would: the orphans kept the run
    folder's lock and wrote into a folder Snakemake had cleared). SIGTERM: the stages stop
    together and keep their checkpoint. Linux only; elsewhere nothing changes."""
    launcher_pid = os.environ.get(LAUNCHER_PID)
    if not launcher_pid or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(launcher_pid):  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
