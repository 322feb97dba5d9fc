"""fmnist/config/settings.py: each training setting is declared once (the schema) and every other
place that names it (config.yaml, config/README.md, train.py's options, the rule's command
line, run.json's params) follows from that entry."""

from __future__ import annotations

import argparse
import copy
import re

import pytest
import yaml
from fmnist.config import checks, settings, stages
from helpers import DEFAULT_SETTINGS, REPO_ROOT, import_script

train_py = import_script("train")


def test_config_yaml_holds_exactly_the_schema_defaults():
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    expected = settings.defaults()
    # data.synthetic is left out of config.yaml (commented), so that an overlay's
    # `synthetic: {}` is not merged away; its default is null.
    assert expected["data"].pop("synthetic") is None
    assert config == expected


def test_every_training_setting_is_commented_in_config_yaml():
    text = (REPO_ROOT / "config" / "config.yaml").read_text()
    lines = text.split("\ntrain:\n", 1)[1].split("\n\n# ", 1)[0].splitlines()
    for key in settings.TRAIN_KEYS:
        (at,) = [i for i, line in enumerate(lines) if re.match(rf"  {key}: ", line)]
        assert lines[at - 1].lstrip().startswith("#"), key


def test_config_readme_table_is_the_schema_table():
    readme = (REPO_ROOT / "config" / "README.md").read_text()
    assert settings.markdown_table() in readme


def test_the_defaults_are_the_tutorials_settings():
    """A new setting may be added; the tutorial's own numbers stay the defaults."""
    defaults = settings.defaults()["train"]
    assert {key: defaults[key] for key in DEFAULT_SETTINGS} == DEFAULT_SETTINGS


def test_every_setting_has_a_default_and_a_description():
    for key, entry in settings.TRAIN_SCHEMA.items():
        assert "default" in entry and entry.get("description"), key


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {
            "devices": ["cuda:0", "cpu"],
            "lr": 1e-05,
            "tutorial_double_scaling": True,
            "microbatches": 4,
            "adam_impl": "fused",
            "cpu_step": "autograd",
            "seed": 12,
            "hidden_sizes": [512, 256],
            "activation": "relu",
            "stage_split": [1, 2],
        },
    ],
    ids=["defaults", "every-kind-changed"],
)
def test_the_rule_command_line_parses_back_to_the_same_params(changes, tmp_path):
    params = {**settings.defaults()["train"], **changes}
    argv = ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path)]
    parsed, _ = train_py.parse_args(argv + settings.command_line(params))
    assert parsed == params
    assert list(parsed) == settings.TRAIN_KEYS


def test_train_py_defaults_are_the_schema_defaults(tmp_path):
    parsed, _ = train_py.parse_args(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path)])
    assert parsed == settings.defaults()["train"]


def test_help_lists_every_setting_with_its_description(capsys):
    with pytest.raises(SystemExit):
        train_py.parse_args(["--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, even at hyphens
    for key, entry in settings.TRAIN_SCHEMA.items():
        assert settings.option(key) in text, key
        assert "".join(entry["description"].split()) in text, key


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--epochs", "0", "train.epochs: 0 is less than the minimum of 1"),
        ("--lr", "inf", "train.lr: inf is not a finite number"),
        ("--lr", "0", "train.lr: 0.0 is less than or equal to the minimum of 0"),
        ("--batch-size", "ten", "invalid literal for int()"),
        ("--hidden-sizes", "0", "train.hidden_sizes: 0 is less than the minimum of 1"),
        ("--hidden-sizes", "2.5", "train.hidden_sizes: '2.5' is not an integer"),
        ("--stage-split", "0", "train.stage_split: "),
        ("--stage-split", "3", "train.stage_split [3] assigns 3 layers"),
        ("--activation", "tanh", "invalid choice: 'tanh'"),
    ],
)
def test_train_py_refuses_what_the_schema_refuses(tmp_path, capsys, option, value, message):
    argv = ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path), option, value]
    with pytest.raises(SystemExit) as exit_info:
        train_py.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_sweep_values_are_checked_against_their_train_entry():
    checks.check_sweep({"lr": [0.1, 0.01], "devices": ["auto", ["cpu"]]})
    with pytest.raises(settings.SettingError, match=r"sweep\.lr\[1\] -> train\.lr: 0 is less"):
        checks.check_sweep({"lr": [0.1, 0]})
    with pytest.raises(settings.SettingError, match=r"sweep\.epoch: not a training setting"):
        checks.check_sweep({"epoch": [1]})


def test_a_new_schema_entry_reaches_every_derived_place(monkeypatch, tmp_path):
    """What adding a hyperparameter takes: the schema entry alone makes the option, the
    command line, the recorded params, the sweep check and the README row."""
    schema = copy.deepcopy(settings.TRAIN_SCHEMA)
    schema["example_new_setting"] = {
        "type": "number",
        "minimum": 0,
        "default": 0.0,
        "description": "Adam's L2 penalty",
    }
    monkeypatch.setattr(settings, "TRAIN_SCHEMA", schema)
    monkeypatch.setattr(settings, "TRAIN_KEYS", list(schema))
    params = {**settings.defaults()["train"], "example_new_setting": 0.5}
    assert settings.command_line(params)[-2:] == ["--example-new-setting", "0.5"]
    parser = argparse.ArgumentParser()
    settings.add_options(parser)
    args = parser.parse_args(settings.command_line(params))
    assert settings.params_from_args(args) == params
    checks.check_sweep({"example_new_setting": [0.0, 0.1]})
    with pytest.raises(settings.SettingError, match="example_new_setting"):
        checks.check_sweep({"example_new_setting": [-1.0]})
    row = "| `train.example_new_setting` | `0.0` | Adam's L2 penalty |"
    assert row in settings.markdown_table()


def test_integer_keys_come_from_the_schema():
    assert {"epochs", "batch_size", "seed", "train_size", "runtime", "signal_seconds"} <= (
        settings.integer_keys()
    )
    assert not {"lr", "timeout_seconds", "devices"} & settings.integer_keys()


def test_a_sweep_is_the_cartesian_product_with_stable_ids():
    from fmnist.config.sweep import build_runs

    train = settings.defaults()["train"]
    runs = build_runs(train, {"lr": [0.01, 0.001], "seed": [0, 1]})
    assert list(runs) == ["lr=0.01_seed=0", "lr=0.01_seed=1", "lr=0.001_seed=0", "lr=0.001_seed=1"]
    assert runs["lr=0.001_seed=1"] == {**train, "lr": 0.001, "seed": 1}
    assert list(build_runs(train, {})) == ["base"]


def test_a_sweep_refuses_colliding_ids_and_broken_rules(monkeypatch):
    from fmnist.config import sweep

    train = settings.defaults()["train"]
    with pytest.raises(settings.SettingError, match=r"run batch_size=10: train\.microbatches"):
        sweep.build_runs({**train, "microbatches": 50}, {"batch_size": [100, 10]})
    # Two values that differ only in characters a run id drops ("cuda:1" and "cuda1" can't
    # both pass the schema, so the check is reached with the schema check switched off).
    monkeypatch.setattr(sweep, "check_sweep", lambda sweep: None)
    with pytest.raises(settings.SettingError, match="give the same run id 'adam_impl=forloop'"):
        sweep.build_runs(train, {"adam_impl": ["for_loop", "for loop"]})


# ------------------------------------------------------------- layers and stages


def test_the_default_model_is_the_tutorials_two_stages():
    train = settings.defaults()["train"]
    assert stages.layer_shapes(train) == [(784, 200), (200, 10)]
    assert stages.layer_flops(train) == [2 * 784 * 200, 2 * 200 * 10]
    assert stages.stage_count(train) == 2
    assert stages.stage_split(train) == [1, 1]
    for devices in (["cpu"], ["cuda:0", "cpu"]):
        assert stages.stage_split({**train, "devices": devices}) == [1, 1]


@pytest.mark.parametrize(
    ("hidden_sizes", "changes", "split"),
    [
        ([512, 256], {}, [1, 2]),  # 802,816 | 262,144 + 5,120 FLOPs
        ([512, 256], {"devices": ["cpu"] * 3}, [1, 1, 1]),
        ([100, 100, 100], {}, [1, 3]),  # 156,800 | 20,000 + 20,000 + 2,000
        ([100, 100, 100], {"devices": ["cpu"] * 3}, [1, 1, 2]),
        ([10, 1000], {}, [2, 1]),  # 15,680 + 20,000 | 20,000
        ([512, 256], {"stage_split": [2, 1]}, [2, 1]),
        ([512, 256], {"stage_split": [3], "devices": ["cpu"]}, [3]),
        ([512, 256], {"stage_split": [1, 1, 1], "devices": "auto"}, [1, 1, 1]),
    ],
)
def test_stages_are_contiguous_balanced_by_flops_unless_given(hidden_sizes, changes, split):
    params = {**settings.defaults()["train"], "hidden_sizes": hidden_sizes, **changes}
    checks.check_run_params(params)
    assert stages.stage_split(params) == split
    assert stages.stage_count(params) == len(split)


def test_balanced_split_minimises_the_costliest_stage():
    assert stages.balanced_split([5, 1, 1, 1, 1, 1], 2) == [1, 5]
    assert stages.balanced_split([1, 1, 1, 1], 2) == [2, 2]
    assert stages.balanced_split([1, 1, 1], 3) == [1, 1, 1]
    assert stages.balanced_split([3, 1, 1, 1], 1) == [4]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"devices": ["cpu"] * 3},
            r"train\.devices lists 3 devices, one per stage, but "
            r"train\.hidden_sizes \[200\] makes 2 layers",
        ),
        (
            {"stage_split": [1]},
            r"train\.stage_split \[1\] assigns 1 layers; "
            r"train\.hidden_sizes \[200\] makes 2 layers",
        ),
        ({"stage_split": [1, 1, 1]}, r"train\.stage_split \[1, 1, 1\] assigns 3 layers"),
        (
            {"hidden_sizes": [8, 8], "stage_split": [1, 2], "devices": ["cpu"] * 3},
            r"train\.devices lists 3 devices but train\.stage_split \[1, 2\] makes 2 stages",
        ),
    ],
)
def test_stage_rules_are_checked_naming_the_keys(changes, message):
    with pytest.raises(settings.SettingError, match=message):
        checks.check_run_params({**settings.defaults()["train"], **changes})


def test_a_sweep_over_the_model_has_readable_ids():
    from fmnist.config.sweep import build_runs

    train = settings.defaults()["train"]
    runs = build_runs(train, {"hidden_sizes": [[200], [512, 256]], "activation": ["relu"]})
    assert list(runs) == [
        "activation=relu_hidden_sizes=200",
        "activation=relu_hidden_sizes=512+256",
    ]
    assert runs["activation=relu_hidden_sizes=512+256"]["hidden_sizes"] == [512, 256]
    with pytest.raises(settings.SettingError, match=r"sweep\.hidden_sizes\[1\] -> train"):
        build_runs(train, {"hidden_sizes": [[200], [0]]})
    with pytest.raises(settings.SettingError, match=r"run stage_split=1\+1\+1: train\.stage"):
        build_runs(train, {"stage_split": [[1, 1], [1, 1, 1]]})


def test_memory_estimate_covers_every_layer():
    train = settings.defaults()["train"]
    deep = {**train, "hidden_sizes": [200, 200]}
    assert checks.working_memory_mb(deep) > checks.working_memory_mb(train)
