"""Checkpoints: everything a run needs to resume exactly, and what it must match to be resumed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from fmnist.console import log
from fmnist.engine.devices import device_name
from fmnist.rundir.files import atomic_write

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


def cpu_state(state):
    """A copy of a (nested) state dict with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: cpu_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_state(v) for v in state)
    return state


def fingerprint(
    params: dict, devices: list[torch.device], data_md5: dict, ranks: list[dict] | None = None
) -> dict:
    """What a checkpoint must match to be resumed exactly (saved in it, so that a mismatch
    can be named).

    Anything that changes the numbers: settings, data, the code, the devices and
    what they are (a retried job may land on another node type), the kernels' library
    versions and CPU instruction set, and the thread count (it changes how CPU matmuls sum).
    ``ranks`` (the distributed engine) says what each stage's process runs on.
    """
    key = {
        "params": params,
        "data": data_md5,
        "code": code_digest(),
        "devices": [str(d) for d in devices],
        "device_names": [device_name(d) for d in devices],
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    if ranks is not None:
        key["device_names"] = [r["device_name"] for r in ranks]
        key["cpu_capability"] = [r["cpu_capability"] for r in ranks]
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


STATE_KEYS = {
    "fingerprint",
    "model",
    "optimizer",
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
"""What Trainer.state_dict() holds: anything else in checkpoint.pt is not a checkpoint of ours."""


def set_aside(path: Path, why: str) -> None:
    """Move a checkpoint that cannot be resumed out of the way (kept for a post-mortem), so
    that it is reported once and never blocks the fresh start of the next attempt."""
    aside = path.with_name(path.name + ".bad")
    path.replace(aside)
    log(f"checkpoint {path} {why}; moved it aside to {aside} and starting from scratch")


def load_checkpoint(path: Path, expected_fingerprint: dict):
    """The state saved at ``path`` if it is a checkpoint of these settings, else None."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged checkpoint must not block a fresh start
        set_aside(path, f"is unreadable ({err})")
        return None
    if not isinstance(state, dict) or set(state) != STATE_KEYS:
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
    return state


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))
