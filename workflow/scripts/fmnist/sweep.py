"""A sweep: the Cartesian product of swept values over the base training settings, one run each."""

from __future__ import annotations

import itertools

from .naming import run_id
from .settings import SettingError, check_run_params, check_sweep


def build_runs(train: dict, sweep: dict) -> dict[str, dict]:
    """{run id: parameters}, checked: swept values against the schema, each run's settings
    against the rules between settings, and no two runs under one id."""
    check_sweep(sweep)
    keys = list(sweep)
    runs, swept = {}, {}
    for combination in itertools.product(*(sweep[k] for k in keys)):
        values = dict(zip(keys, combination))
        name = run_id(values)
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
