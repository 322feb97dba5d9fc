"""The run folders and tutorial logs the gathering tests share (tables, paper, CLI).

Run folders are written by conftest's write_run_folder, so their run.json is always valid
format 2; this module only picks the parameters and metrics of the scenarios.
"""

from __future__ import annotations

from pathlib import Path

from conftest import RUN_HEADER, write_run_folder

BASE_PARAMS = {
    "devices": "auto",
    "epochs": 3,
    "batch_size": 100,
    "lr": 0.001,
    "hidden_size": 200,
    "seed": 0,
    "tutorial_double_scaling": False,
    "microbatches": 1,
    "adam_impl": "for_loop",
}

TUTORIAL_LOG = """\
Epoch [1/3], Loss: 0.5234
Some other line
Epoch [2/3], Loss: 0.4123
Epoch [3/3], Loss: 0.39
Training finished.
"""


def slurm_job(job_id: str, partition="debug", node="n1") -> dict:
    return {"job_id": job_id, "partition": partition, "node": node, "account": None, "gpus": None}


def write_run(
    root: Path,
    run_id: str,
    rows: list[tuple],
    header: str = RUN_HEADER,
    *,
    slurm: dict | None = None,
    git_commit: str | None = "abc123",
    stages=("cpu", "cpu"),
    **params,
) -> Path:
    """A run folder like training writes it; ``params`` override BASE_PARAMS."""
    return write_run_folder(
        root,
        run_id,
        rows,
        {**BASE_PARAMS, **params},
        header,
        swept=sorted(params),
        setup={"devices": list(stages)},
        git={"commit": git_commit, "dirty": False},
        attempts=[{"slurm": slurm, "device_names": ["cpu"] * len(stages)}],
    )


def three_epochs(final_acc: float, best=None, loss=0.3, sps=1000.0) -> list[tuple]:
    """Three epochs ending at ``final_acc`` (epoch 2 has ``best`` if given)."""
    mid = best if best is not None else final_acc - 0.05
    return [
        (1, 1.0, 1.1, final_acc - 0.10, 2.0, sps),
        (2, 0.5, 0.6, mid, 3.0, sps + 100),
        (3, loss, loss + 0.1, final_acc, 4.0, sps + 200),
    ]


def write_three_seeds(tmp_path: Path) -> list[Path]:
    """One configuration, seeds 0..2, final accuracies 0.80, 0.82, 0.84."""
    return [
        write_run(
            tmp_path / "runs",
            f"lr=0.001_seed={seed}",
            three_epochs(acc, loss=loss),
            seed=seed,
            slurm=slurm_job(f"{100 + seed}"),
        )
        for seed, acc, loss in [(0, 0.80, 0.30), (1, 0.82, 0.20), (2, 0.84, 0.40)]
    ]


def write_several_configs(tmp_path: Path) -> list[Path]:
    """Three learning rates with 3, 2 and 1 seeds; final accuracies 0.80..0.84, 0.70 and
    0.74, 0.5."""
    finals = {0.001: [0.80, 0.82, 0.84], 0.01: [0.70, 0.74], 0.1: [0.5]}
    return [
        write_run(tmp_path, f"lr={lr}_s={seed}", three_epochs(acc), lr=lr, seed=seed)
        for lr, accs in finals.items()
        for seed, acc in enumerate(accs)
    ]


def write_tutorial_log(path: Path, text: str = TUTORIAL_LOG) -> Path:
    path.write_text(text)
    return path
