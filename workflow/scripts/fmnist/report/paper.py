"""The summary table formatted for papers: Markdown (summary.md) and LaTeX (summary.tex).

Accuracy is shown in percent, each metric as "mean ± std" with its 95 % interval. Only the
parameters that vary between configurations get a column; the constant ones (all of them,
for a single configuration) are named once in the note under the table, so that the results
come first and a sweep over two parameters gives a table a reader can take in. Imports no
torch.
"""

from __future__ import annotations

import pandas as pd

from fmnist.report.formats import (
    cell_text,
    format_interval,
    format_mean_std,
    latex_escape,
)
from fmnist.report.labels import CONFIGURATION_COLUMN, TUTORIAL_LABEL

NOTE = (
    "Final-epoch values, mean ± sample standard deviation over seeds; "
    "95% CI: Student-t, clipped to [0, 100] %; n = number of seeds."
)
METRIC_COLUMNS = ["n", "Test accuracy (%)", "95% CI (%)", "Test loss", "Train loss"]
"""The columns after the parameters, in order."""


def split_constant_columns(summary: pd.DataFrame, group_cols: list[str]):
    """(shown, constant) configuration columns.

    Columns that vary between configurations are shown; the others are constant and go
    into the note. Rows without any parameter (tutorial logs) do not count.
    """
    if not group_cols:
        return [], []
    with_params = summary[summary[group_cols].notna().any(axis=1)]
    varying = [c for c in group_cols if with_params[c].astype(str).nunique(dropna=False) > 1]
    return varying, [c for c in group_cols if c not in varying]


def _metric_cells(summary: pd.DataFrame, pm: str, sep: str) -> dict[str, list[str]]:
    def mean_std(metric, scale, decimals):
        pairs = zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])
        return [format_mean_std(m, s, scale, decimals, pm) for m, s in pairs]

    bounds = zip(summary["final_test_accuracy_ci95_low"], summary["final_test_accuracy_ci95_high"])
    return {
        "n": summary["n_seeds"].astype(int).astype(str).tolist(),
        "Test accuracy (%)": mean_std("final_test_accuracy", 100, 2),
        "95% CI (%)": [format_interval(lo, hi, 100, 2, sep) for lo, hi in bounds],
        "Test loss": mean_std("final_test_loss", 1, 4),
        "Train loss": mean_std("final_train_loss", 1, 4),
    }


def display_table(summary: pd.DataFrame, group_cols: list[str], pm: str = " ± ", sep=", "):
    """The summary as strings, and the constant parameters as {name: text}."""
    shown, constant = split_constant_columns(summary, group_cols)
    table = pd.DataFrame(index=summary.index)
    for c in shown:
        table[c] = [cell_text(v) for v in summary[c]]
    if shown:
        no_params = summary[group_cols].isna().all(axis=1).to_numpy()
        table.loc[no_params, shown[0]] = TUTORIAL_LABEL
    elif len(summary) > 1:  # one configuration beside tutorial logs: their labels tell them apart
        table["configuration"] = summary[CONFIGURATION_COLUMN].astype(str)
    for name, cells in _metric_cells(summary, pm, sep).items():
        table[name] = cells
    first = summary[summary[group_cols].notna().any(axis=1)].iloc[0] if constant else None
    constants = {c: cell_text(first[c]) for c in constant}
    return table.reset_index(drop=True), constants


def constants_text(constants: dict, shown: pd.DataFrame) -> str:
    """The note's sentence naming the parameters no column shows ("" if none), ending in a
    full stop: "Settings: ..." of a single configuration, else "Same in all ...: ..."."""
    if not constants:
        return ""
    pairs = ", ".join(f"{k}={v}" for k, v in constants.items())
    parameters = [c for c in shown.columns if c not in [*METRIC_COLUMNS, CONFIGURATION_COLUMN]]
    several = bool(parameters)  # columns of the parameters that vary: several configurations
    return f"{'Same in all configurations' if several else 'Settings'}: {pairs}."


def table_note(table: pd.DataFrame, constants: dict) -> str:
    """The note under the table: how to read it, then the parameters it does not show."""
    return " ".join(filter(None, [NOTE, constants_text(constants, table)]))


def summary_markdown(summary: pd.DataFrame, group_cols: list[str]) -> str:
    """The summary as a Markdown table followed by a one-line note."""
    table, constants = display_table(summary, group_cols)
    text = table.to_markdown(index=False, disable_numparse=True)
    return f"{text}\n\n{table_note(table, constants)}\n"


def summary_latex(summary: pd.DataFrame, group_cols: list[str]) -> str:
    """The summary as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    pm = "\x00pm\x00"  # a placeholder that survives escaping
    table, constants = display_table(summary, group_cols, pm=pm)

    def cell(text: str) -> str:
        return latex_escape(text).replace(pm, r" $\pm$ ")

    spec = "l" * (len(table.columns) - len(METRIC_COLUMNS)) + "r" * len(METRIC_COLUMNS)
    lines = [
        "% " + latex_escape(NOTE).replace("±", r"$\pm$"),
        "% Requires \\usepackage{booktabs}.",
    ]
    if constants:
        lines.append("% " + latex_escape(constants_text(constants, table)))
    lines += [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(cell(c) for c in table.columns) + r" \\",
        r"\midrule",
        *(" & ".join(cell(v) for v in row) + r" \\" for row in table.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
        "",
    ]
    return "\n".join(lines)
