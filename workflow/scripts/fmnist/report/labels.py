"""How the report names runs and configurations: the labels of a run's page (its swept
parameters, as its run id writes them) and the configuration column of the tables.

Used by workflow/rules/analysis.smk while Snakemake builds the report; imports neither
torch nor pandas (planning stays fast).
"""

from __future__ import annotations

from fmnist.config.naming import format_value

CONFIGURATION_COLUMN = "configuration"
"""The tables' column naming each run's configuration (what the figures' legends show)."""
TUTORIAL_LABEL, BASE_LABEL = "tutorial log", "base"
"""The configuration of a tutorial log's run, and of runs that sweep nothing."""


def run_labels(run: str, runs: dict[str, dict], swept) -> dict[str, str]:
    """{parameter: value} of the swept parameters of ``run``, e.g. {"lr": "0.01", "seed":
    "0"}; {"run": run} when nothing is swept or the run is not one of the config's."""
    params = runs.get(run)
    swept = sorted(swept)
    if not swept or params is None:
        return {"run": run}
    return {key: format_value(params[key]) for key in swept}


def figure_labels(run: str, runs: dict[str, dict], swept, kind: str) -> dict[str, str]:
    """The labels of a run's figure in the report: the run's (:func:`run_labels`) and its
    format (``kind``: "image" or "vector PDF", as the training curves name theirs)."""
    return {**run_labels(run, runs, swept), "format": kind}
