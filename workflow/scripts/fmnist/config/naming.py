"""How parameter values are written in run ids and configuration labels (one definition)."""

from __future__ import annotations

import re


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
