"""Tests of fmnist/engine/checkpoint.py: what a checkpoint must match, and damaged checkpoints."""

from __future__ import annotations

import shutil

import torch
from fmnist.engine import checkpoint

CPU = torch.device("cpu")


def test_unreadable_checkpoint_starts_from_scratch(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    assert checkpoint.read_position(path, "anything") is None
    assert f"checkpoint {path} is unreadable" in capsys.readouterr().out
    assert checkpoint.read_position(tmp_path / "missing.pt", "anything") is None


def test_thread_count_is_part_of_the_checkpoint_fingerprint(torch_state):
    # CPU matmuls sum differently with more threads: a resume must not mix the two.
    args = ({"lr": 0.01}, [CPU, CPU], {"f": "0" * 32})
    torch.set_num_threads(1)
    one = checkpoint.fingerprint(*args)
    torch.set_num_threads(2)
    assert checkpoint.fingerprint(*args) != one
    torch.set_num_threads(1)
    assert checkpoint.fingerprint(*args) == one


def test_code_digest_covers_the_code_that_shapes_the_numbers_only(tmp_path, monkeypatch):
    """An edit to the engine, the data reader or the settings refuses a resume; one to the
    report (a page, a table) does not throw away the checkpoints of runs in progress."""
    library = tmp_path / "fmnist"
    shutil.copytree(checkpoint.LIBRARY, library)
    (tmp_path / "train.py").write_bytes(checkpoint.TRAINING_SCRIPT.read_bytes())
    monkeypatch.setattr(checkpoint, "LIBRARY", library)
    monkeypatch.setattr(checkpoint, "TRAINING_SCRIPT", tmp_path / "train.py")
    monkeypatch.setattr(
        checkpoint, "NUMBERS_CODE", [library / n for n in ("engine", "data", "config")]
    )
    same = checkpoint.code_digest()
    assert same == checkpoint.code_digest()
    with open(library / "report" / "htmltables.py", "a") as handle:
        handle.write("\n# an edit to a report page\n")
    assert checkpoint.code_digest() == same
    for edited in ("data/idx.py", "engine/model.py", "config/settings.py", "../train.py"):
        with open(library / edited, "a") as handle:
            handle.write("\n# an edit to how the numbers are made\n")
        assert checkpoint.code_digest() != same, edited
        same = checkpoint.code_digest()
