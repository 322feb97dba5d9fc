import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# Scripts run from the checkout (not a copy) so that they can import their package.
SCRIPTS_DIR = Path(workflow.basedir, "workflow", "scripts")
sys.path.insert(0, str(SCRIPTS_DIR))
from fmnist.cluster.slurm_plugin import (
    identity_message,
    normalise_job_states,
    unset_identity_variables,
)
from fmnist.config import stages  # no torch: planning stays fast
from fmnist.config.checks import validate_config
from fmnist.config.settings import SettingError, command_line
from fmnist.config.sweep import configured_runs
from fmnist.data import idx
from fmnist.verify import results_config
from fmnist.verify.plan import PlanError

SYNTHETIC_MIRROR = "resources/synthetic_fashion_mnist_mirror"
TRAIN_RESOURCES = config["resources"]["train_model_parallel"]


# A cancelled job ("CANCELLED by <uid>" in sacct) must end the wait (fmnist/cluster/slurm_plugin.py).
if normalise_job_states():  # jobs go to SLURM: the profile's account must be set
    UNSET = unset_identity_variables(
        {
            name: getattr(resource, "raw", resource)
            for name, resource in workflow.resource_settings._parsed_default_resources.items()
        }
    )
    if UNSET:
        raise WorkflowError(identity_message(UNSET))
validate_config(
    config, str(Path(workflow.basedir, "workflow/schemas/config.schema.yaml"))
)
try:
    RUNS = configured_runs(config)
except SettingError as err:
    raise WorkflowError(f"invalid config: {err}") from None


def script_path(name):
    """Relative to the working directory, so that a clone elsewhere reruns nothing."""
    return os.path.relpath(SCRIPTS_DIR / name)


def data_files():
    return [f"{config['data']['dir']}/{name}" for name in idx.FILE_NAMES]


def data_manifest():
    """The four files' verified sums, written by the download rule once they all match.

    Its name carries a digest of what the data are (their expected sums, or the synthetic
    data's settings), and training depends on it alone, as ancient: a file fetched again
    with the same bytes retrains nothing, while other data make a new manifest name and so
    retrain every run. Checksums decide, not timestamps.
    """
    identity = json.dumps(data_identity(), sort_keys=True).encode()
    return f"{config['data']['dir']}/{idx.MANIFEST}.{hashlib.sha256(identity).hexdigest()[:12]}"


def data_identity():
    """What the data are: their expected sums, or the synthetic data's settings."""
    data = config["data"]
    return data["synthetic"] if data["synthetic"] is not None else data["md5"]


# Which configuration results/ holds (results/config.json, written by the default target):
# the report and `snakemake verify` refuse to show another's under this one's name.
RESULTS_FINGERPRINT = results_config.fingerprint(
    RUNS, data_identity(), TRAIN_RESOURCES["cpus_per_task"]
)
CONFIG_OPTIONS = results_config.config_options(
    workflow.config_settings.configfiles, workflow.config_settings.config_args
)


def refuse_other_results(what):
    """An input function that ends Snakemake, naming the --configfile to repeat, when
    results/ holds another configuration's results; ``what``: what was asked."""

    def check(wildcards):
        problem = results_config.mismatch(RESULTS_FINGERPRINT, CONFIG_OPTIONS, what)
        if problem:
            stop_planning(problem)
        return []

    return check


def refuse_other_results_when_shown(wildcards):
    """For the default target: refuse another configuration's results when they are shown
    (--report, --dag: Snakemake then has no execution settings), not when they are made.
    """
    if workflow.execution_settings is None:
        return refuse_other_results("build the report")(wildcards)
    return []


def synthetic_mirror_files():
    if config["data"]["synthetic"] is None:
        return []
    return [f"{SYNTHETIC_MIRROR}/{name}" for name in idx.FILE_NAMES + ["MD5SUMS"]]


def download_arguments(wildcards, input):
    """Mirrors and expected sums for the download script."""
    if input.mirror:
        return f"--mirror {SYNTHETIC_MIRROR} --md5-file {SYNTHETIC_MIRROR}/MD5SUMS"
    mirrors = " ".join(f"--mirror {shlex.quote(m)}" for m in config["data"]["mirrors"])
    sums = " ".join(
        f"--md5 {shlex.quote(f'{name}={value}')}"
        for name, value in config["data"]["md5"].items()
    )
    return f"{mirrors} {sums} --timeout {shlex.quote(str(config['data']['timeout_seconds']))}"


def train_arguments(wildcards):
    """The training script's options for one run, derived from the schema's settings."""
    words = command_line(RUNS[wildcards.run])
    words += ["--run-id", wildcards.run, "--swept", *sorted(config["sweep"])]
    return shlex.join(words)


def run_params(wildcards):
    """The training settings of the run a training job trains."""
    return RUNS[wildcards.run]


def verify_params(wildcards):
    """The settings the rerun of a run is trained with (its original's; verify.smk)."""
    return planned(lambda wildcards: VERIFY.settings_of(wildcards.run)[0])(wildcards)


def stage_tasks(params):
    """Processes a run's job starts: one per stages_per_process stages for the distributed
    engine, else one."""
    return stages.process_count(params)


def configured_threads(wildcards):
    return TRAIN_RESOURCES["cpus_per_task"]


def verify_threads(wildcards):
    """A rerun's threads per process: its original's (run.json), as the thread count
    shapes how CPU matmuls sum; cpus_per_task while the original has not run."""
    return planned(lambda w: VERIFY.threads_of(w.run))(wildcards) or configured_threads(
        wildcards
    )


def train_threads(params_of, threads_of=configured_threads):
    """Cores a training job takes here: ``threads_of`` for each of its processes."""
    return lambda wildcards: threads_of(wildcards) * stage_tasks(params_of(wildcards))


def process_threads(params_of, threads_of=configured_threads):
    """train.py's --threads: each process's share of the job's cores. A dry run without
    --cores caps every job at the 1 core Snakemake assumes then, which no job runs with:
    it shows the cores the job asks for (cpus_per_task per process, as under SLURM)."""

    def per_process(wildcards, threads):
        if workflow.dryrun and workflow.resource_settings.cores == 1:
            threads = train_threads(params_of, threads_of)(wildcards)
        return max(1, threads // stage_tasks(params_of(wildcards)))

    return per_process


def launch_arguments(params_of):
    """The distributed engine's options for starting its processes (none otherwise)."""

    def arguments(wildcards):
        if stage_tasks(params_of(wildcards)) == 1:
            return ""
        words = ["--process-group-timeout", TRAIN_RESOURCES["process_group_timeout"]]
        if TRAIN_RESOURCES["tasks_per_node"]:
            words += ["--tasks-per-node", TRAIN_RESOURCES["tasks_per_node"]]
        return shlex.join(map(str, words))

    return arguments


def train_scheduler_resources(params_of, threads_of=configured_threads):
    """What SLURM is asked for per training job; optional keys only when set.

    A distributed run is one job of one task per stage (the executor plugin's multi-task
    resources: tasks, nodes, one GPU per task; `mpi` tells its job step to leave the
    starting of the tasks to the job's command, which runs srun itself).
    """
    gpu = TRAIN_RESOURCES["gpu"]
    per_node = TRAIN_RESOURCES["tasks_per_node"]

    def tasks(wildcards):
        count = stage_tasks(params_of(wildcards))
        return count if count > 1 else None

    def when_distributed(value_of):
        return lambda wildcards: (
            None if tasks(wildcards) is None else value_of(tasks(wildcards))
        )

    extra = {
        key: TRAIN_RESOURCES[key]
        for key in ("gpu_model", "constraint")
        if TRAIN_RESOURCES[key] is not None
    }
    return {
        "gpu": lambda wildcards: (
            gpu if tasks(wildcards) is None or not gpu else tasks(wildcards)
        ),
        "cpus_per_task": threads_of,
        "mem_mb": TRAIN_RESOURCES["mem_mb"],
        "runtime": TRAIN_RESOURCES["runtime"],
        "tasks": tasks,
        "mpi": when_distributed(lambda n: "srun"),
        "tasks_per_gpu": when_distributed(lambda n: 1 if gpu else None),
        "nodes": when_distributed(lambda n: -(-n // per_node) if per_node else None),
        # Read by the script, not by SLURM; resources, so changing them reruns nothing.
        "signal_seconds": TRAIN_RESOURCES["signal_seconds"],
        "failure_retries": TRAIN_RESOURCES["failure_retries"],
        # SIGURG is ignored by every process but the training script, which checkpoints.
        "slurm_extra": f"--signal=URG@{TRAIN_RESOURCES['signal_seconds']}",
        **extra,
    }


def run_outputs(name):
    return expand("results/runs/{run}/{file}", run=RUNS, file=[name])


def planned(function):
    """An input or params function of the plan whose PlanError (a verify: setting or a
    source folder at fault) ends Snakemake with its message alone, before any job."""

    def planned_function(wildcards):
        try:
            return function(wildcards)
        except PlanError as err:
            stop_planning(err)

    return planned_function


def stop_planning(problem):
    """End Snakemake with ``problem`` alone: it prints an input function's exception with a
    traceback, while SystemExit ends it with the message (and leaves no lock behind)."""
    raise SystemExit(f"error: {problem}") from None


def verify_inputs(wildcards):
    """The target's input, once the plan and results/ are known to fit this config: own
    runs are only verified under the configuration that made them."""
    if VERIFY.local:
        refuse_other_results("verify the runs")(wildcards)
    VERIFY.runs()
    return [REPRODUCTION]
