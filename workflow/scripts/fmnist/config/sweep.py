"""A configuration's runs: the Cartesian product of swept values over the base training
settings, one run each, every one checked."""

from __future__ import annotations

import itertools

from fmnist.config.checks import (
    check_data_dir,
    check_memory,
    check_run_params,
    check_stop_margin,
    check_sweep,
    check_time_limit,
    check_values,
)
from fmnist.config.naming import RUN_ID_RULE, is_run_id, run_id
from fmnist.config.settings import SettingError


def build_runs(train: dict, sweep: dict) -> dict[str, dict]:
    """{run id: parameters}, checked: swept values against the schema, each run's settings
    against the rules between settings, and no two runs under one id."""
    check_sweep(sweep)
    keys = list(sweep)
    runs, swept = {}, {}
    for combination in itertools.product(*(sweep[k] for k in keys)):
        values = dict(zip(keys, combination))
        name = run_id(values)
        if not is_run_id(name):
            raise SettingError(
                f"sweep: values {values} give the run id {name!r}: not {RUN_ID_RULE}"
            )
        if name in runs:
            raise SettingError(
                f"sweep: values {values} and {swept[name]} give the same run id {name!r}"
            )
        swept[name], runs[name] = values, {**train, **values}
        try:
            check_run_params(runs[name])
        except SettingError as err:
            raise SettingError(f"run {name}: {err}") from None
    return runs


def configured_runs(config: dict) -> dict[str, dict]:
    """The runs of a configuration the schema has validated, after every check no schema
    entry can state (values, the data folder, each run's settings, memory and stop margin,
    the time limit); SettingError names the key."""
    check_values(config)
    check_data_dir(config["data"])
    resources = config["resources"]["train_model_parallel"]
    runs = build_runs(config["train"], config["sweep"])
    for name, params in runs.items():
        check_memory(params, resources["mem_mb"], name)
        check_stop_margin(params, resources["signal_seconds"], name)
    check_time_limit(resources)
    return runs
