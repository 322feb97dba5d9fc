#!/usr/bin/env python3
"""Train the tutorial's MLP on FashionMNIST with its layers in stages on devices.

Stage i of the model (by default the tutorial's two: Linear 784->200 + log_softmax,
then Linear 200->10) lives on devices[i]; activations move between the stages.
Writes, into --out-dir: epochs.csv (one row per epoch, flushed as it goes),
run.json (provenance) and model.pt (final weights). A checkpoint (checkpoint.pt) is
written after every epoch and whenever the run is told to stop (SIGTERM/SIGINT/SIGURG,
or the SLURM deadline drawing near); a restarted run resumes from it and ends with
exactly the metrics of an uninterrupted run.

With train.engine distributed, this process starts one process per stage (torchrun
locally, srun in a SLURM job: fmnist.engine.launch) running this script with --as-rank, and
waits for them; they train the run together (fmnist.engine.distributed).

Exit codes: 0 done (or, under SLURM, stopped early and the job requeued to go on);
2 a failure running again cannot fix (arguments, devices, data, memory, a busy run
folder); 75 stopped early with a checkpoint saved (run again to resume); 1 anything
else, e.g. a non-finite loss.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist.cluster.requeue import FAILURE_COUNT_FILE, requeue_after_failure, requeue_self
from fmnist.config import settings
from fmnist.config.checks import check_run_params, stop_grace_seconds, working_memory_mb
from fmnist.config.naming import RUN_ID_RULE, is_run_id
from fmnist.config.stages import process_count, stage_count
from fmnist.console import log, quiet
from fmnist.data.idx import DataError, IdxFormatError, read_md5_file
from fmnist.engine.launch import (
    EXIT_DIVERGED,
    end_with_launcher,
    exit_status_text,
    launch_stages,
)
from fmnist.rundir.files import NEEDS_SOMEONE, LockedError, WriteError
from fmnist.rundir.runfiles import RunFileError, RunFolderState, remove_checkpoint

if TYPE_CHECKING:
    from fmnist.engine.trainer import RunSetup

# torch takes seconds to import: the modules that need it are imported once the arguments
# are known to be good, so that --help and a bad argument answer at once.


def available_cpus() -> int:
    """The CPUs this process may use (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv=None) -> tuple[dict, RunSetup]:
    """The run's training settings (checked against the schema) and its setup."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python workflow/scripts/train.py --data-dir resources/fashion_mnist "
        "--out-dir results/runs/base --devices cpu cpu --epochs 2",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="the four .gz files")
    parser.add_argument(
        "--md5-file",
        type=Path,
        help="md5sum-style sums the four files must have (checked before training; "
        "a file that differs is moved aside and named)",
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="run folder for outputs")
    settings.add_options(parser)
    parser.add_argument("--threads", type=int, default=available_cpus(), help="torch threads")
    parser.add_argument(
        "--signal-seconds",
        type=float,
        default=90.0,
        help="under SLURM, checkpoint and leave this many seconds before the time limit "
        "(resources.train_model_parallel.signal_seconds; SLURM's warning signal comes then)",
    )
    parser.add_argument(
        "--failure-requeues",
        type=int,
        default=0,
        help="under SLURM, requeue the job after this many unexpected failures of the run at "
        "most (a time-limit stop never counts)",
    )
    parser.add_argument(
        "--process-group-timeout",
        type=int,
        default=300,
        help="distributed engine: seconds a stage's process waits for the others at most",
    )
    parser.add_argument(
        "--tasks-per-node",
        type=int,
        help="distributed engine under SLURM: stage processes per node (default: srun's)",
    )
    parser.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help="name recorded in run.json (default: out-dir's name)")
    parser.add_argument("--swept", nargs="*", default=[], help="parameters a sweep varies")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    run_id = args.run_id or args.out_dir.name  # what run.json will record: checked now
    if not is_run_id(run_id):
        parser.error(f"run id {run_id!r} (--run-id, else --out-dir's name): not {RUN_ID_RULE}")
    try:
        params = settings.params_from_args(args)
        check_run_params(params)
    except settings.SettingError as err:
        parser.error(str(err))
    try:
        expected = read_md5_file(args.md5_file) if args.md5_file else None
    except (OSError, ValueError) as err:
        parser.error(f"--md5-file: {err}")
    from fmnist.engine.trainer import RunSetup

    setup = RunSetup(
        args.data_dir,
        args.out_dir,
        args.threads,
        args.signal_seconds,
        args.run_id,
        args.swept,
        expected_md5=expected,
        failure_requeues=args.failure_requeues,
        process_group_timeout=args.process_group_timeout,
        tasks_per_node=args.tasks_per_node,
        stage_process=args.as_rank,
    )
    return params, setup


def print_error(message) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def fail(message: str):
    """Exit with status 2 and a message that names what is wrong."""
    print_error(message)
    raise SystemExit(2)


def permanent_failures() -> tuple[type[Exception], ...]:
    """Failures that running again cannot fix: exit 2 with the message, never requeued."""
    from fmnist.engine.devices import DeviceError

    return (DeviceError, DataError, IdxFormatError, LockedError, RunFileError)


def main(argv=None) -> int:
    params, setup = parse_args(argv)
    from fmnist.engine.devices import resolve_devices
    from fmnist.engine.single_process import SingleProcessEngine
    from fmnist.engine.trainer import (
        EXIT_RESUMABLE,
        NonFiniteLossError,
        configure_determinism,
        train,
    )

    configure_determinism(setup.threads)
    if setup.stage_process:
        return run_stage_process(params, setup)
    try:
        if params["engine"] == "distributed":
            finished = run_stage_processes(params, setup, sys.argv[1:] if argv is None else argv)
        else:
            devices, why = resolve_devices(params["devices"], stage_count(params))
            log(why)
            finished = train(params, setup, SingleProcessEngine(devices))
    except permanent_failures() as err:
        fail(str(err))
    except NonFiniteLossError as err:  # the same settings diverge again: never requeued
        print_error(err)
        return 1
    except RuntimeError as err:  # torch.OutOfMemoryError is one too
        if out_of_memory(err):
            fail(out_of_memory_message(err, params))
        return requeue_or_raise(setup, err)
    except OSError as err:
        if lasting := lasting_failure(err):
            fail(lasting)
        return requeue_or_raise(setup, err)
    except Exception as err:
        return requeue_or_raise(setup, err)
    if finished:
        (setup.out_dir / FAILURE_COUNT_FILE).unlink(missing_ok=True)
        return 0
    return 0 if requeue_self("stopped before its time limit") else EXIT_RESUMABLE


class StageProcessesFailed(RuntimeError):
    """A stage's process failed in a way that may not happen again (its log says how)."""


def run_stage_processes(params: dict, setup: RunSetup, argv: list[str]) -> bool:
    """The distributed engine: start the stages' processes and wait for them; True if
    the run is finished, False if they stopped early (with a checkpoint, or saying why not)."""
    stages = process_count(params)  # the launcher's processes, one per rank
    script = str(Path(__file__).resolve())
    if not os.environ.get("SLURM_JOB_ID"):  # under SLURM, srun gives each task its GPU
        from fmnist.engine.ranks import check_local_stage_devices

        check_local_stage_devices(params["devices"], stages)
    if params["devices"] == "auto":
        import torch

        wants_gpus = torch.cuda.device_count() > 0
    else:
        wants_gpus = any(name.startswith("cuda") for name in params["devices"])
    before = RunFolderState(setup.out_dir)
    status = launch_stages(
        [script, *argv],
        stages,
        setup.threads,
        wants_gpus,
        setup.tasks_per_node,
        stop_grace_seconds(params),
    )
    after = RunFolderState(setup.out_dir)
    if after.outputs_written_since(before):
        if status != 0:  # e.g. a stage died at the final barrier: the outputs stand
            log(
                f"warning: a stage's process ended with {exit_status_text(status)} after the "
                "run's outputs were complete; the run is finished"
            )
        remove_checkpoint(setup.out_dir)
        return True
    if status == 2:
        fail("a stage's process could not train this run (its error is above)")
    if status == EXIT_DIVERGED:
        from fmnist.engine.trainer import NonFiniteLossError

        raise NonFiniteLossError("a stage's process found a non-finite loss (see above)")
    if status != 0:
        raise StageProcessesFailed(f"a stage's process failed ({exit_status_text(status)})")
    if not after.checkpoint_saved_since(before):
        log(
            "the stage processes stopped early, before they could save a checkpoint: the "
            + (
                "next attempt resumes from the previous checkpoint"
                if after.checkpoint
                else "next attempt starts the run from the beginning"
            )
        )
    return False


def run_stage_process(params: dict, setup: RunSetup) -> int:
    """One stage's process: 0 when the run is finished or stopped with a checkpoint, 2 for
    what running again cannot fix, 65 for a non-finite loss, 1 when a peer stopped answering
    or ended (named; transient, like any failure that is not named); else the error
    propagates."""
    from fmnist.engine.distributed import DistributedEngine, PeerSetupError
    from fmnist.engine.peers import PeerFailure
    from fmnist.engine.ranks import RankEnvironment, start_process_group, stop_process_group
    from fmnist.engine.trainer import NonFiniteLossError, train

    end_with_launcher()
    try:
        env = RankEnvironment.from_environment()
        if env.rank != 0:
            quiet()
        ctx = start_process_group(env, params["devices"], setup.process_group_timeout)
        try:
            train(params, setup, DistributedEngine(ctx, params))
        except RuntimeError as err:
            if failure := ctx.peers.explain(err):
                raise failure from err
            raise
        finally:
            ctx.peers.stop()
            stop_process_group()
    except (*permanent_failures(), PeerSetupError) as err:
        print_error(err)
        return 2
    except PeerFailure as err:
        print_error(err)
        return 1
    except NonFiniteLossError as err:
        print_error(err)
        return EXIT_DIVERGED
    except RuntimeError as err:
        if not out_of_memory(err):
            raise
        print_error(out_of_memory_message(err, params))
        return 2
    except OSError as err:
        if not (lasting := lasting_failure(err)):
            raise
        print_error(lasting)
        return 2
    return 0


def lasting_failure(err: OSError) -> str | None:
    """What a file error that stays until someone acts (a full disk, a read-only folder, a
    folder in a file's place) is about; None for one that running again may not meet."""
    if isinstance(err, WriteError):
        return str(err) if err.permanent else None
    if err.errno in NEEDS_SOMEONE and err.filename is not None:
        return f"{err.filename}: {err.strerror}"
    return None


def requeue_or_raise(setup: RunSetup, err: Exception) -> int:
    """An unexpected failure may be transient (a node, a file system): under SLURM, requeue
    the job while the run's failure budget lasts (--failure-requeues), else fail (exit 1)."""
    why = f"failed with {type(err).__name__}"
    if requeue_after_failure(setup.out_dir, setup.failure_requeues, why):
        traceback.print_exception(err)
        return 0
    if isinstance(err, StageProcessesFailed):  # the stage's own log above says more
        print_error(err)
        return 1
    raise err


def out_of_memory(err: RuntimeError) -> bool:
    return type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(err)


def out_of_memory_message(err: RuntimeError, params: dict) -> str:
    """What ran out (a GPU's memory or the host's) and what to change: mem_mb is host
    memory, which a GPU out of memory does not need more of."""
    needed = (
        f"This run needs at least {working_memory_mb(params):,.0f} MB beyond torch and "
        f"the data (train.hidden_sizes {params['hidden_sizes']}, train.batch_size "
        f"{params['batch_size']})"
    )
    if "CUDA out of memory" in str(err):
        return (
            f"GPU out of memory ({str(err).splitlines()[0]}). {needed}, spread over the "
            "stages' GPUs: lower them, or split the model over more GPUs (train.devices, "
            "train.stage_split); resources.train_model_parallel.mem_mb is host memory and "
            "does not help"
        )
    return (
        f"out of memory ({str(err).splitlines()[0]}). {needed}: raise "
        "resources.train_model_parallel.mem_mb or lower them"
    )


if __name__ == "__main__":
    sys.exit(main())
