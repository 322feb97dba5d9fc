"""How parameter values are written in run ids and configuration labels (one definition)."""

from __future__ import annotations

import re

from fmnist.schemas import load_schema

RUN_ID_PATTERN = load_schema("run")["properties"]["run_id"]["pattern"]
"""What a run id is (run.schema.yaml states it, so that reading run.json checks it too):
a plain name, used unquoted as a folder and a file name."""
RUN_ID_RULE = "letters, digits and . + = _ -, starting with a letter or digit"


def is_run_id(name) -> bool:
    """Whether ``name`` may name a run: never a path, an option or shell syntax."""
    return isinstance(name, str) and re.search(RUN_ID_PATTERN, name) is not None


def format_value(value) -> str:
    """A parameter value as people read it: true/false, lists joined with "+", else str()."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    return str(value)


def run_id(swept_values: dict) -> str:
    """`lr=0.001_seed=2` from {"lr": 0.001, "seed": 2}: keys sorted, so ids are stable;
    only characters that are safe in a file name; "base" when nothing is swept."""
    if not swept_values:
        return "base"
    return "_".join(
        f"{key}={re.sub(r'[^A-Za-z0-9.+-]', '', format_value(swept_values[key]))}"
        for key in sorted(swept_values)
    )


def config_label(values: dict) -> str:
    """ "lr=0.001, hidden_size=100": the parameters that tell configurations apart."""
    return ", ".join(f"{key}={format_value(value)}" for key, value in values.items())
