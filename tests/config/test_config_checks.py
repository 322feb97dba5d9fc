"""Configuration: the schema and the workflow's own checks refuse bad settings before any
job, naming the key; good settings become the runs and command lines they say.

The checks are functions (fmnist.config), tested here as the workflow calls them: the
overlay merged over config/config.yaml as `--configfile` merges it, Snakemake's schema
validation, then fmnist.config.sweep.configured_runs. A handful of real dry runs
(`snakemake -n -p`) check the wiring: the Snakefile calls them, commands carry the settings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from fmnist.config.checks import validate_config
from fmnist.config.settings import SettingError, command_line
from fmnist.config.sweep import configured_runs
from helpers import REPO_ROOT, copy_workflow, merge, run_snakemake
from snakemake.exceptions import WorkflowError

CONFIG = REPO_ROOT / "config" / "config.yaml"
SCHEMA = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


def configured(overlay: dict) -> dict[str, dict]:
    """The runs of config.yaml with ``overlay`` (as YAML reads it) merged over it, checked
    as the Snakefile checks it."""
    config = merge(yaml.safe_load(CONFIG.read_text()), yaml.safe_load(yaml.safe_dump(overlay)))
    validate_config(config, str(SCHEMA))
    return configured_runs(config)


def snakemake(workdir: Path, *args: str, overlay: dict | None = None) -> tuple[int, str]:
    """Run snakemake in `workdir`; return (exit status, stdout + stderr)."""
    if overlay is not None:
        path = workdir / "overlay.yaml"
        path.write_text(yaml.safe_dump(overlay, sort_keys=False))
        args = (*args, "--configfile", str(path))
    result = run_snakemake(workdir, *args, limit=180)
    return result.returncode, result.stdout + result.stderr


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run."""
    table = output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def train_run_ids(output: str) -> list[str]:
    return sorted(set(re.findall(r"output: results/runs/([^/\s]+)/epochs\.csv", output)))


def train_commands(output: str) -> dict[str, str]:
    """Run id -> the training job's shell command."""
    commands = {}
    for line in output.splitlines():
        if "workflow/scripts/train.py" in line:
            commands[re.search(r"--run-id (\S+)", line)[1]] = line
    return commands


def download_command(output: str) -> str:
    return next(line for line in output.splitlines() if "download_fashion_mnist.py" in line)


# --------------------------------------------------------------------- bad configs

# name: (overlay, texts the error output must contain)
BAD_CONFIGS = {
    "typo-train-epoch": ({"train": {"epoch": 3}}, ["'epoch' was unexpected"]),
    "unknown-top-level-key": ({"sweeps": {"lr": [0.1]}}, ["'sweeps' was unexpected"]),
    "lr-not-a-number": (
        {"train": {"lr": "fast"}},
        ["'fast' is not of type 'number'", "instance['train']['lr']"],
    ),
    "lr-written-as-yaml-text": (
        {"train": {"lr": "1e-3"}},  # dumped as 1e-3, which YAML 1.1 reads as text
        [
            "'1e-3' is not of type 'number'",
            "config key train.lr: '1e-3' is text to YAML, not a number",
            "write 0.001",
        ],
    ),
    "process-group-timeout-that-overflows": (
        {"resources": {"train_model_parallel": {"process_group_timeout": 10**15}}},
        ["1000000000000000 is greater than the maximum of 604800"],
    ),
    "signal-seconds-shorter-than-a-checkpoint": (
        {"train": {"hidden_sizes": [8192, 8192, 8192, 8192]}},
        [
            "run base: resources.train_model_parallel.signal_seconds (90) is too short",
            "at least 280",
        ],
    ),
    "epochs-zero": (
        {"train": {"epochs": 0}},
        ["0 is less than the minimum of 1", "instance['train']['epochs']"],
    ),
    "lr-zero": (
        {"train": {"lr": 0}},
        ["0 is less than or equal to the minimum of 0", "instance['train']['lr']"],
    ),
    "batch-size-negative": (
        {"train": {"batch_size": -1}},
        ["-1 is less than the minimum of 1", "instance['train']['batch_size']"],
    ),
    "device-tpu": (
        {"train": {"devices": ["tpu"]}},
        ["['tpu'] is not valid", "instance['train']['devices']"],
    ),
    "device-bare-string": (
        {"train": {"devices": "cuda:0"}},
        ["'cuda:0' is not valid", "instance['train']['devices']"],
    ),
    "three-devices": (
        {"train": {"devices": ["cpu", "cpu", "cpu"]}},
        ["train.devices lists 3 devices, one per stage, but train.hidden_sizes [200] makes 2"],
    ),
    "stage-split-too-long": (
        {"train": {"hidden_sizes": [64, 32], "stage_split": [1, 1, 2]}},
        ["train.stage_split [1, 1, 2] assigns 4 layers; train.hidden_sizes [64, 32] makes 3"],
    ),
    "stage-split-devices-disagree": (
        {"train": {"hidden_sizes": [64, 32], "stage_split": [1, 2], "devices": ["cpu"] * 3}},
        ["train.devices lists 3 devices but train.stage_split [1, 2] makes 2 stages"],
    ),
    "stage-split-empty-stage": (
        {"train": {"stage_split": [2, 0]}},
        ["instance['train']['stage_split']"],
    ),
    "hidden-sizes-empty": (
        {"train": {"hidden_sizes": []}},
        ["[] should be non-empty", "instance['train']['hidden_sizes']"],
    ),
    "hidden-sizes-float": (
        {"train": {"hidden_sizes": [200.0]}},
        ["config key train.hidden_sizes: 200.0 must be written as an integer"],
    ),
    "activation-unknown": (
        {"train": {"activation": "tanh"}},
        ["'tanh' is not one of ['log_softmax', 'relu']", "instance['train']['activation']"],
    ),
    "sweep-hidden-sizes-bad": (
        {"sweep": {"hidden_sizes": [[200], [0]]}},
        ["sweep.hidden_sizes[1] -> train.hidden_sizes: 0 is less than the minimum of 1"],
    ),
    "md5-31-hex-digits": (
        {"data": {"md5": {"t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd31"}}},
        [
            "'bb300cfdad3c16e7a12a480ee83cd31' does not match",
            "instance['data']['md5']['t10k-labels-idx1-ubyte.gz']",
        ],
    ),
    "md5-unknown-file": (
        {"data": {"md5": {"train-images.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d"}}},
        ["'train-images.gz' was unexpected"],
    ),
    "no-mirrors": ({"data": {"mirrors": []}}, ["instance['data']['mirrors']"]),
    "synthetic-size-zero": (
        {"data": {"synthetic": {"train_size": 0}}},
        ["instance['data']['synthetic']"],
    ),
    "runtime-below-signal": (
        {"resources": {"train_model_parallel": {"runtime": 1}}},
        [
            "resources.train_model_parallel.runtime (1 min)",
            "signal_seconds (90 s)",
            "Raise runtime or lower signal_seconds",
        ],
    ),
    "signal-seconds-too-small": (
        {"resources": {"train_model_parallel": {"signal_seconds": 5}}},
        ["5 is less than the minimum of 10", "['train_model_parallel']['signal_seconds']"],
    ),
    "sweep-duplicate-lr": (
        {"sweep": {"lr": [0.01, 0.001, 0.01]}},
        ["has non-unique elements", "instance['sweep']['lr']"],
    ),
    "sweep-duplicate-devices": (
        {"sweep": {"devices": [["cpu", "cpu"], ["cpu", "cpu"]]}},
        ["has non-unique elements", "instance['sweep']['devices']"],
    ),
    "sweep-unknown-key": (
        {"sweep": {"learning_rate": [0.1]}},
        ["sweep.learning_rate: not a training setting"],
    ),
    "sweep-bad-value": (
        {"sweep": {"lr": [0.1, -1]}},
        ["sweep.lr[1] -> train.lr: -1 is less than or equal to the minimum of 0"],
    ),
    "sweep-empty-list": ({"sweep": {"seed": []}}, ["instance['sweep']['seed']"]),
    "microbatches-over-batch-size": (
        {"train": {"microbatches": 200}},
        ["run base: train.microbatches (200) exceeds train.batch_size (100)"],
    ),
    "microbatches-over-swept-batch-size": (
        {"train": {"microbatches": 50}, "sweep": {"batch_size": [100, 10]}},
        ["run batch_size=10: train.microbatches (50) exceeds train.batch_size (10)"],
    ),
    "distributed-one-stage": (
        {"train": {"engine": "distributed", "devices": ["cpu"], "stage_split": [2]}},
        ["train.engine distributed needs two processes or more, but this model's 1 stage(s)"],
    ),
    "looped-schedule-one-stage-per-process": (
        {"train": {"engine": "distributed", "schedule": "interleaved_1f1b"}},
        [
            "train.schedule interleaved_1f1b runs 2 or more stages per process, but "
            "train.stages_per_process is 1"
        ],
    ),
    "v-schedule-three-stages-per-process": (
        {
            "train": {
                "engine": "distributed",
                "schedule": "zbv_zero_bubble",
                "stages_per_process": 3,
                "hidden_sizes": [20] * 5,
            }
        },
        ["train.schedule zbv_zero_bubble runs 2 stages per process"],
    ),
    "1f1b-fewer-microbatches-than-stages": (
        {"train": {"engine": "distributed", "schedule": "1f1b", "microbatches": 1}},
        ["train.schedule 1f1b needs at least as many micro-batches as stages (2)"],
    ),
    "interleaved-microbatches-not-in-rounds": (
        {
            "train": {
                "engine": "distributed",
                "schedule": "interleaved_1f1b",
                "microbatches": 5,
                "stages_per_process": 2,
                "hidden_sizes": [20, 20, 20],
                "batch_size": 100,
            }
        },
        ["train.microbatches (5) to be a multiple of its rounds, microbatches // processes = 2"],
    ),
    "devices-per-process": (
        {
            "train": {
                "engine": "distributed",
                "schedule": "looped_bfs",
                "stages_per_process": 2,
                "devices": ["cpu", "cpu", "cpu"],
                "stage_split": [1, 1, 1, 1],
                "hidden_sizes": [20, 20, 20],
            }
        },
        [
            "train.devices lists 3 devices but train.stage_split [1, 1, 1, 1] makes 4 stages in "
            "processes of 2: give one device per process"
        ],
    ),
    "distributed-mixed-devices": (
        {"train": {"engine": "distributed", "devices": ["cuda:0", "cpu"]}},
        ["every stage on the same kind of device"],
    ),
    "distributed-uneven-microbatches": (
        {"train": {"engine": "distributed", "microbatches": 3}},
        ["train.batch_size (100) to be a multiple of train.microbatches (3)"],
    ),
    "tasks-per-node-zero": (
        {"resources": {"train_model_parallel": {"tasks_per_node": 0}}},
        ["tasks_per_node"],
    ),
    # Values the training script refuses (positive_float) must not get past the config.
    "lr-infinite": ({"train": {"lr": float("inf")}}, ["lr"]),
    "lr-nan": ({"train": {"lr": float("nan")}}, ["lr"]),
    # A trailing newline passes a pattern's $ and would split the shell command.
    "device-with-newline": (
        {"train": {"devices": ["cpu\n", "cpu"]}},
        ["config key train.devices: 'cpu\\n' contains a control character"],
    ),
    "md5-with-newline": (
        {"data": {"md5": {"t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310\n"}}},
        ["contains a control character"],
    ),
    "seed-too-large": (
        {"train": {"seed": 10**23}},
        ["is greater than the maximum of 18446744073709551615", "instance['train']['seed']"],
    ),
    "hidden-size-out-of-memory": (
        {"train": {"hidden_sizes": [10**7]}},
        [
            "run base needs at least 151,826 MB for its weights",
            "train.hidden_sizes [10000000]",
            "resources.train_model_parallel.mem_mb (16000)",
        ],
    ),
    "data-dir-is-a-mirror": (
        {"data": {"dir": "/shared/fmnist", "mirrors": ["/shared/fmnist/"]}},
        ["config key data.dir (/shared/fmnist) is also listed in data.mirrors"],
    ),
    "data-dir-is-a-file-url-mirror": (
        {"data": {"dir": "/shared/fm", "mirrors": ["http://x.invalid/", "file:///shared/fm"]}},
        ["is also listed in data.mirrors"],
    ),
    # socket timeouts refuse NaN: the download job would crash instead of trying the mirrors.
    "timeout-nan": ({"data": {"timeout_seconds": float("nan")}}, ["timeout_seconds"]),
    "timeout-infinite": ({"data": {"timeout_seconds": float("inf")}}, ["timeout_seconds"]),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_is_refused_naming_the_key(name):
    overlay, texts = BAD_CONFIGS[name]
    with pytest.raises((WorkflowError, SettingError)) as error:
        configured(overlay)
    for text in texts:
        assert text in str(error.value), f"{text!r} missing from:\n{error.value}"


def test_integral_float_epochs_are_refused_naming_the_key():
    # JSON Schema counts 2.0 as an integer; train.py's --epochs only accepts "2".
    with pytest.raises(SettingError, match=r"config key train.epochs: 2.0 must be written as"):
        configured({"train": {"epochs": 2.0}})


@pytest.mark.parametrize(
    ("overlay", "text"),
    [
        ({"train": {"epoch": 3}}, "'epoch' was unexpected"),
        ({"resources": {"train_model_parallel": {"runtime": 1}}}, "invalid config: resources."),
        ({"sweep": {"learning_rate": [0.1]}}, "invalid config: sweep.learning_rate: not a"),
    ],
)
def test_a_bad_config_stops_snakemake_before_planning_and_creates_nothing(tmp_path, overlay, text):
    """The wiring: the Snakefile runs the schema and the checks before any job is planned."""
    workdir = copy_workflow(tmp_path / "wf")
    status, output = snakemake(workdir, "-n", overlay=overlay)
    assert status != 0 and text in output, output[-3000:]
    assert "Job stats:" not in output and "Traceback" not in output
    status, output = snakemake(workdir, "--cores", "1", overlay=overlay)
    assert status != 0
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


# ------------------------------------------------------------------------ good configs


def test_an_overlay_merges_over_the_defaults():
    (params,) = configured({"train": {"epochs": 2}}).values()
    words = " ".join(command_line(params))
    assert "--epochs 2 --batch-size 100 --lr 0.01 --hidden-sizes 200 --activation log_softmax" in (
        words
    )
    assert "--devices auto" in words


def test_sweep_runs_are_the_cartesian_product_and_adding_a_value_keeps_their_ids():
    two = configured({"sweep": {"lr": [0.01, 0.001], "seed": [0, 1]}})
    assert sorted(two) == ["lr=0.001_seed=0", "lr=0.001_seed=1", "lr=0.01_seed=0", "lr=0.01_seed=1"]
    for run, params in two.items():
        lr, seed = (part.split("=")[1] for part in run.split("_"))
        assert (params["lr"], params["seed"], params["epochs"]) == (float(lr), int(seed), 10)
    three = configured({"sweep": {"seed": [0, 1, 2], "lr": [0.01, 0.001, 1e-05]}})
    assert len(three) == 9 and set(two) <= set(three)
    assert "--lr 1e-05" in " ".join(command_line(three["lr=1e-05_seed=2"]))


def test_device_lists_and_models_in_run_ids():
    runs = configured({"sweep": {"devices": [["cuda:0", "cuda:1"], "auto", ["cpu"]]}})
    assert sorted(runs) == ["devices=auto", "devices=cpu", "devices=cuda0+cuda1"]
    assert "--devices cuda:0 cuda:1" in " ".join(command_line(runs["devices=cuda0+cuda1"]))
    overlay = {
        "sweep": {"hidden_sizes": [[200], [512, 256]], "activation": ["log_softmax", "relu"]},
        "train": {"devices": ["cpu", "cpu"]},
    }
    runs = configured(overlay)
    assert sorted(runs) == [
        "activation=logsoftmax_hidden_sizes=200",  # a run id drops "_", as in forloop
        "activation=logsoftmax_hidden_sizes=512+256",
        "activation=relu_hidden_sizes=200",
        "activation=relu_hidden_sizes=512+256",
    ]
    words = " ".join(command_line(runs["activation=relu_hidden_sizes=512+256"]))
    assert "--hidden-sizes 512 256 --activation relu" in words


# --------------------------------------------------------------------- the wiring (dry runs)


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, str]:
    """The output of `snakemake -n -p` with each overlay (and with none: the defaults)."""
    overlays = {
        "defaults": None,
        "sweep-2x2": {"sweep": {"lr": [0.01, 0.001], "seed": [0, 1]}},
        "mirrors-replaced": {
            "data": {"mirrors": ["/shared/fashion_mnist"]},
            "train": {"devices": ["cpu", "cpu"]},
        },
        "synthetic-seed": {"data": {"synthetic": {"seed": 4}, "dir": "resources/synthetic"}},
        "synthetic-empty": {"data": {"synthetic": {}}},
        "engines": ENGINES,
    }
    outputs = {}
    for name, overlay in overlays.items():
        workdir = copy_workflow(tmp_path_factory.mktemp("dry") / name)
        status, output = snakemake(workdir, "-n", "-p", "--cores", "16", overlay=overlay)
        assert status == 0, output[-3000:]
        assert "This was a dry-run" in output and not (workdir / "results").exists()
        outputs[name] = output
    return outputs


def test_default_config_dry_run(dry_runs):
    output = dry_runs["defaults"]
    assert job_counts(output) == {
        "download_fashion_mnist": 1,
        "train_model_parallel": 1,
        "gather_tables": 1,
        "render_report_pages": 1,
        "plot_training_curves": 1,
        "plot_pipeline_timeline": 1,
        "record_results_config": 1,
        "all": 1,
        "total": 8,
    }
    command = train_commands(output)["base"]
    for option in (
        "--data-dir resources/fashion_mnist",
        "--out-dir results/runs/base",
        "--devices auto",
        "--epochs 10",
        "--batch-size 100",
        "--lr 0.01",
        "--hidden-sizes 200",
        "--activation log_softmax",
        "--stage-split flops",
        "--seed 0",
        "--microbatches 1",
        "--adam-impl for_loop",
        "--signal-seconds 90",
    ):
        assert f"{option} " in command, (option, command)
    assert "--tutorial-double-scaling" not in command
    # The official mirrors and sums go to the download script.
    download = download_command(output)
    assert "--mirror http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ " in download
    assert "--md5 train-images-idx3-ubyte.gz=8d4fb7e6c68d591d4c3dfef9ec88bf0d" in download
    assert "--timeout 60" in download


def test_sweep_jobs_and_one_gather_over_them(dry_runs):
    output = dry_runs["sweep-2x2"]
    ids = ["lr=0.001_seed=0", "lr=0.001_seed=1", "lr=0.01_seed=0", "lr=0.01_seed=1"]
    assert job_counts(output)["train_model_parallel"] == 4
    assert train_run_ids(output) == ids
    commands = train_commands(output)
    assert sorted(commands) == ids
    for run in ids:
        lr, seed = (part.split("=")[1] for part in run.split("_"))
        assert f"--lr {lr} " in commands[run] and f"--seed {seed} " in commands[run]
        assert f"--out-dir results/runs/{run} " in commands[run]
        assert "--swept lr seed " in commands[run]
    assert job_counts(output)["gather_tables"] == 1
    gather = next(line for line in output.splitlines() if "scripts/gather.py" in line)
    assert all(f"results/runs/{run}" in gather for run in ids)


def test_overlay_replaces_lists_whole_and_keeps_other_keys(dry_runs):
    output = dry_runs["mirrors-replaced"]
    download = download_command(output)
    assert download.count("--mirror ") == 1
    assert "--mirror /shared/fashion_mnist " in download
    assert "amazonaws" not in download
    assert download.count("--md5 ") == 4  # data.md5 kept from the defaults
    assert "--devices cpu cpu " in train_commands(output)["base"]


def test_synthetic_settings_get_schema_defaults(dry_runs):
    output = dry_runs["synthetic-seed"]
    assert job_counts(output)["make_synthetic_fashion_mnist"] == 1
    assert "--train-size 10000 --test-size 2000 --seed 4 " in output
    download = download_command(output)
    mirror = "resources/synthetic_fashion_mnist_mirror"
    assert "--dest resources/synthetic --manifest resources/synthetic/MD5SUMS." in download
    assert f" --mirror {mirror} --md5-file {mirror}/MD5SUMS" in download
    assert "amazonaws" not in download
    assert "--data-dir resources/synthetic " in train_commands(output)["base"]


def test_empty_synthetic_mapping_means_all_defaults(dry_runs):
    # The schema documents `synthetic: {}` (an object whose keys all have defaults) as valid;
    # it must enable the synthetic data, not silently fall back to downloading the real one.
    output = dry_runs["synthetic-empty"]
    assert job_counts(output).get("make_synthetic_fashion_mnist") == 1, output[-3000:]
    assert "--train-size 10000 --test-size 2000 --seed 0 " in output


def job_resources(output: str) -> dict[str, dict[str, str]]:
    """Run id -> the training job's threads and resources, as the dry run prints them."""
    jobs = {}
    for block in output.split("rule train_model_parallel:")[1:]:
        run = re.search(r"wildcards: run=(\S+)", block)[1]
        threads = re.search(r"threads: (\d+)", block)[1]
        line = re.search(r"resources: (.*)", block)[1]
        jobs[run] = dict(item.split("=", 1) for item in line.split(", ")) | {"threads": threads}
    return jobs


ENGINES = {
    "train": {"devices": ["cpu", "cpu", "cpu"], "hidden_sizes": [64, 32]},
    "sweep": {"engine": ["single_process", "distributed"]},
    "resources": {"train_model_parallel": {"tasks_per_node": 2, "cpus_per_task": 3}},
}


def test_a_distributed_run_asks_for_one_task_per_stage(dry_runs):
    """3 stages: 3 tasks of cpus_per_task each, one GPU each, 2 per node (so 2 nodes), and
    the plugin's `mpi` so that its job step leaves starting the tasks to srun; the
    single-process run of the same sweep keeps one task (its id: engine=singleprocess, as
    run ids write values without underscores)."""
    output = dry_runs["engines"]
    jobs = job_resources(output)
    single, distributed = jobs["engine=singleprocess"], jobs["engine=distributed"]
    assert {k: distributed[k] for k in ("tasks", "mpi", "nodes", "gpu", "tasks_per_gpu")} == {
        "tasks": "3",
        "mpi": "srun",
        "nodes": "2",
        "gpu": "3",
        "tasks_per_gpu": "1",
    }
    assert distributed["cpus_per_task"] == "3" and distributed["threads"] == "9"
    assert not {"tasks", "mpi", "nodes", "tasks_per_gpu"} & set(single)
    assert single["gpu"] == "2" and single["threads"] == "3"
    commands = train_commands(output)
    assert (
        "--threads 3 --process-group-timeout 300 --tasks-per-node 2"
        in (commands["engine=distributed"])
    )
    assert "--process-group-timeout" not in commands["engine=singleprocess"]


def test_a_dry_run_without_cores_shows_the_threads_the_jobs_run_with(tmp_path):
    """Snakemake plans a dry run without --cores on 1 core; the commands still show each
    process's cpus_per_task (3), as the jobs get them under SLURM."""
    workdir = copy_workflow(tmp_path / "dry")
    status, output = snakemake(workdir, "-n", "-p", overlay=ENGINES)
    assert status == 0, output[-3000:]
    for command in train_commands(output).values():
        assert re.search(r"--threads (\d+)", command)[1] == "3"


def test_profile_names_no_machine_specific_values():
    profile = yaml.safe_load((REPO_ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["default-resources"] == {
        "slurm_account": "$FMNIST_SLURM_ACCOUNT",
        "slurm_partition": "$FMNIST_SLURM_PARTITION",
    }
    # The workflow's own needs live in the config, not in the profile.
    assert "set-resources" not in profile
    assert os.path.isdir(REPO_ROOT / "profiles/local")
