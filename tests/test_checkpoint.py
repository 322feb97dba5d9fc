"""Tests of fmnist/checkpoint.py: what a checkpoint must match, and damaged checkpoints."""

from __future__ import annotations

import torch
from fmnist import checkpoint

CPU = torch.device("cpu")


def test_unreadable_checkpoint_starts_from_scratch(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    assert checkpoint.load_checkpoint(path, "anything") is None
    assert f"checkpoint {path} is unreadable" in capsys.readouterr().out
    assert checkpoint.load_checkpoint(tmp_path / "missing.pt", "anything") is None


def test_thread_count_is_part_of_the_checkpoint_fingerprint(torch_state):
    # CPU matmuls sum differently with more threads: a resume must not mix the two.
    args = ({"lr": 0.01}, [CPU, CPU], {"f": "0" * 32})
    torch.set_num_threads(1)
    one = checkpoint.fingerprint(*args)
    torch.set_num_threads(2)
    assert checkpoint.fingerprint(*args) != one
    torch.set_num_threads(1)
    assert checkpoint.fingerprint(*args) == one


def test_code_digest_covers_every_module_of_the_package(tmp_path, monkeypatch):
    """A change to any module that shapes the numbers (not only train.py) refuses a resume."""
    package = tmp_path / "fmnist"
    package.mkdir()
    for path in checkpoint.PACKAGE_DIR.glob("*.py"):
        (package / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(checkpoint, "PACKAGE_DIR", package)
    same = checkpoint.code_digest()
    assert same == checkpoint.code_digest()
    with open(package / "idx.py", "a") as handle:
        handle.write("\n# an edit to how the data are read\n")
    assert checkpoint.code_digest() != same
