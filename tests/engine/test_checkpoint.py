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


# --------------------------------------------------------------- shards and model.pt

PARAMS = {"hidden_sizes": [30, 20], "activation": "relu", "stage_split": [1, 2]}
PARAMS |= {"devices": ["cpu", "cpu"], "lr": 0.01, "adam_impl": "for_loop"}


def stepped_model(steps: int):
    from fmnist.engine.model import model_for
    from fmnist.engine.step import make_optimizer

    torch.manual_seed(0)
    model = model_for(PARAMS, [CPU, CPU])
    optimizer = make_optimizer(model, PARAMS)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.rand(8, 784)).square().sum().backward()
        optimizer.step()
    return model, optimizer


def layers_of(model) -> dict:
    from fmnist.engine.model import layer_parameters

    return layer_parameters(dict(enumerate(model.stages)), model.split)


def test_model_pt_written_from_the_shards_is_the_model_s_state_dict(tmp_path, torch_state):
    """Names, order and bits of model.state_dict(), though written a layer at a time."""
    from fmnist.engine.model_file import write_model

    model, optimizer = stepped_model(2)
    checkpoint.save_shards(tmp_path / "checkpoint.1.dcp", layers_of(model), optimizer)
    write_model(tmp_path / "model.pt", tmp_path / "checkpoint.1.dcp", PARAMS)
    written = torch.load(tmp_path / "model.pt", weights_only=True)
    expected = model.state_dict()
    assert list(written) == list(expected) == [
        "stages.0.0.weight", "stages.0.0.bias", "stages.1.0.weight", "stages.1.0.bias",
        "stages.1.2.weight", "stages.1.2.bias",
    ]  # fmt: skip
    assert all(torch.equal(written[k], v) for k, v in expected.items())


def test_shards_load_into_another_split_by_layer_name(tmp_path, torch_state):
    """Saved from stages [1, 2], loaded into a model split [2, 1]: the same weights and Adam
    state, layer by layer."""
    from fmnist.engine.model import model_for
    from fmnist.engine.step import make_optimizer

    model, optimizer = stepped_model(3)
    checkpoint.save_shards(tmp_path / "shards", layers_of(model), optimizer)
    other_params = {**PARAMS, "stage_split": [2, 1]}
    other = model_for(other_params, [CPU, CPU])
    other_optimizer = make_optimizer(other, other_params)
    checkpoint.load_shards(tmp_path / "shards", layers_of(other), other_optimizer)
    mine, theirs = layers_of(model), layers_of(other)
    assert list(mine) == list(theirs)
    for name, p in mine.items():
        assert torch.equal(p, theirs[name]), name
        for key in checkpoint.ADAM_STATE:
            assert torch.equal(optimizer.state[p][key], other_optimizer.state[theirs[name]][key])


def test_a_fresh_optimizer_saved_and_loaded_steps_as_a_fresh_one(tmp_path, torch_state):
    """No step taken yet: the shards hold the zeros Adam starts from, and an optimizer
    loaded from them takes the same first step, to the bit, as one never saved."""
    model, optimizer = stepped_model(0)
    checkpoint.save_shards(tmp_path / "shards", layers_of(model), optimizer)
    twin, twin_optimizer = stepped_model(0)
    checkpoint.load_shards(tmp_path / "shards", layers_of(twin), twin_optimizer)
    assert all(float(s["step"]) == 0 for s in twin_optimizer.state.values())
    x = torch.rand(8, 784)
    for m, o in ((model, optimizer), (twin, twin_optimizer)):
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
