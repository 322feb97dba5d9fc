"""Checkpoints: everything a run needs to resume exactly, and what it must match to be resumed.

A checkpoint is two things: the shards (each process's layers and their Adam state, saved by
every process in parallel with torch.distributed.checkpoint into checkpoint.{n}.dcp/, under
the layer names layers.{j}.weight that do not depend on the stage split) and checkpoint.pt
(the run's position, RNG states and history), written by the leading process once every
shard and the shards' metadata are on disk. checkpoint.pt names its shards folder, so a save
cut short leaves the previous checkpoint whole; a run resumes with any stage layout, each
process reading only the layers it holds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from fmnist.console import log
from fmnist.engine.devices import device_name
from fmnist.rundir import runfiles
from fmnist.rundir.files import atomic_write, write_failure

LIBRARY = Path(__file__).resolve().parents[1]
NUMBERS_CODE = [LIBRARY / "engine", LIBRARY / "data", LIBRARY / "config"]
"""The code that shapes a run's numbers; the report, verify and the cluster code do not."""
TRAINING_SCRIPT = LIBRARY.parent / "train.py"


def code_digest() -> str:
    """sha256 over the code that shapes the numbers (engine, data, config and the training
    script): editing a report page does not throw away the checkpoints of runs in progress."""
    digest = hashlib.sha256()
    paths = sorted(p for folder in NUMBERS_CODE for p in folder.glob("*.py"))
    for path in [*paths, TRAINING_SCRIPT]:
        name = path.relative_to(LIBRARY.parent).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


LAYOUT_SETTINGS = (
    "devices",
    "stage_split",
    "engine",
    "schedule",
    "stages_per_process",
    "cpu_step",
)
"""Settings that place the model without changing its numbers: on one kind of device a
layer computes the same bits whatever stage holds it, the schedules accumulate gradients
micro-batch by micro-batch in order, and the hand-written CPU step is autograd's bit for
bit. A checkpoint resumes across them (move a run to the devices that are free)."""


def fingerprint(
    params: dict, devices: list[torch.device], data_md5: dict, ranks: list[dict] | None = None
) -> dict:
    """What a checkpoint must match to be resumed exactly (saved in it, so that a mismatch
    can be named).

    Anything that changes the numbers: settings but the layout, data, the code, the kinds
    of device and what they are (a retried job may land on another node type), the
    kernels' library versions and CPU instruction set, and the thread count (it changes
    how CPU matmuls sum). ``ranks`` (the distributed engine) says what each stage's
    process runs on.
    """
    names = [r["device_name"] for r in ranks] if ranks else [device_name(d) for d in devices]
    capability = [r["cpu_capability"] for r in ranks] if ranks else []
    key = {
        "params": {k: v for k, v in params.items() if k not in LAYOUT_SETTINGS},
        "data": data_md5,
        "code": code_digest(),
        "device_types": sorted({d.type for d in devices}),
        "device_names": sorted(set(names)),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cpu_capability": sorted({torch.backends.cpu.get_cpu_capability(), *capability}),
        "threads": torch.get_num_threads(),
    }
    # Through JSON: what torch.load(weights_only=True) gives back is what is compared.
    return json.loads(json.dumps(key, sort_keys=True))


def differences(saved: dict, expected: dict, prefix: str = "") -> list[str]:
    """Each setting where ``saved`` differs from ``expected``, as 'key: saved (now: x)'."""
    found = []
    for key in sorted(set(saved) | set(expected)):
        old, new = saved.get(key), expected.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            if key == "code":
                old, new = old[:12] if old else old, new[:12] if new else new
            found.append(f"{prefix}{key}: {old!r} (now {new!r})")
    return found


POSITION_KEYS = {
    "fingerprint",
    "shards",
    "torch_rng",
    "shuffle_rng",
    "epoch",
    "order",
    "batch_losses",
    "batches_done",
    "epoch_seconds_so_far",
    "history",
    "attempts",
    "timeline",
}
"""What checkpoint.pt holds (Trainer.position_state() and its shards folder's number):
anything else there is not a checkpoint of ours."""
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")
CHECKPOINT_ERRORS = (CheckpointException, OSError, RuntimeError, ValueError, KeyError, TypeError)
"""What reading a checkpoint's shards raises when they do not fit (CheckpointException,
raised in every process when one fails, is not an Exception)."""


def shards_path(out_dir: Path, number: int) -> Path:
    return out_dir / runfiles.shards_folder_name(number)


def shard_state(layers: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> dict:
    """This process's part of a checkpoint: each of its parameters and their Adam state,
    flattened to the layer names (model.layers.{j}.weight, optimizer.layers.{j}.weight.step…).

    An optimizer that has not stepped yet holds no state; it is saved as the zeros Adam
    starts from, which is what Adam makes at its first step. (torch's own
    get_optimizer_state_dict fills such a state by stepping with a zero learning rate, which
    counts a step Adam never took: the bias correction of every later step would differ.)
    """
    state = {}
    for name, p in layers.items():
        adam = optimizer.state.get(p) or {
            "step": torch.zeros((), dtype=torch.float32),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }
        state[f"model.{name}"] = p.detach()
        state.update({f"optimizer.{name}.{key}": adam[key].detach() for key in ADAM_STATE})
    return state


def alone() -> bool:
    """No process group: torch.distributed.checkpoint then reads and writes without one."""
    return not dist.is_initialized()


def save_shards(folder: Path, layers: dict, optimizer) -> None:
    """Save this process's shard into ``folder`` (collective: every process calls it; it
    returns once every shard and the metadata are written and synced to disk). A write
    that fails for want of room or rights raises WriteError naming the folder."""
    state = shard_state(layers, optimizer)
    try:
        with quiet_when_alone():
            dcp.save(state, checkpoint_id=folder, no_dist=alone())
    except (CheckpointException, RuntimeError, OSError) as err:
        failure = write_failure(folder, sum(t.nbytes for t in state.values()))
        if failure is None:
            raise
        raise failure from err


@contextmanager
def quiet_when_alone():
    """torch.distributed.checkpoint warns, at every save and load without a process group,
    that it assumes one process: that is the single-process engine's intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def load_shards(folder: Path, layers: dict, optimizer) -> None:
    """Load this process's layers and their Adam state from ``folder`` (collective), in
    place: only the layers named are read."""
    state = shard_state(layers, optimizer)
    with quiet_when_alone():
        dcp.load(state, checkpoint_id=folder, no_dist=alone())
    order = [p for group in optimizer.param_groups for p in group["params"]]
    names = {p: name for name, p in layers.items()}
    optimizer.load_state_dict(
        {
            "state": {
                i: {key: state[f"optimizer.{names[p]}.{key}"] for key in ADAM_STATE}
                for i, p in enumerate(order)
            },
            "param_groups": optimizer.state_dict()["param_groups"],
        }
    )


def load_tensors(folder: Path, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Some tensors of a checkpoint's shards, read by this process alone."""
    tensors = {name: torch.empty(shape) for name, shape in shapes.items()}
    with quiet_when_alone():
        dcp.load(tensors, checkpoint_id=folder, no_dist=True)
    return tensors


def set_aside(path: Path, why: str) -> None:
    """Move a checkpoint that cannot be resumed out of the way (kept for a post-mortem), so
    that it is reported once and never blocks the fresh start of the next attempt."""
    aside = path.with_name(path.name + ".bad")
    path.replace(aside)
    for shards in runfiles.shards_folders(path.parent):
        shards_aside = shards.with_name(shards.name + ".bad")
        shutil.rmtree(shards_aside, ignore_errors=True)
        shards.replace(shards_aside)
    log(f"checkpoint {path} {why}; moved it aside to {aside} and starting from scratch")


def read_position(path: Path, expected_fingerprint: dict):
    """The position saved at ``path`` if it is a checkpoint of these settings whose shards
    are complete, else None (anything else there is set aside). Shards folders it does not
    name are deleted: older ones, or a save cut short."""
    state = _read_position(path, expected_fingerprint)
    runfiles.remove_shards(path.parent, keep=None if state is None else _shards_name(state))
    return state


def _shards_name(state: dict) -> str:
    return runfiles.shards_folder_name(state["shards"])


def _read_position(path: Path, expected_fingerprint: dict):
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged checkpoint must not block a fresh start
        set_aside(path, f"is unreadable ({err})")
        return None
    if isinstance(state, dict) and {"fingerprint", "model", "optimizer"} <= set(state):
        set_aside(path, "was written by an older version of this workflow (in one file)")
        return None
    if not isinstance(state, dict) or set(state) != POSITION_KEYS:
        set_aside(path, "is not a training checkpoint of this workflow")
        return None
    saved = state["fingerprint"]
    if not isinstance(saved, dict):
        set_aside(path, "was written by an older version of this workflow")
        return None
    if saved != expected_fingerprint:
        named = "; ".join(differences(saved, expected_fingerprint))
        set_aside(path, f"belongs to other settings or data ({named})")
        return None
    shards = path.parent / _shards_name(state) if isinstance(state["shards"], int) else None
    if shards is None or not (shards / ".metadata").is_file():
        set_aside(path, f"has lost its shards ({shards} is missing or incomplete)")
        return None
    return state


def save_position(path: Path, state: dict) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))
