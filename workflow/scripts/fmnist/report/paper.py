"""The summary table formatted for papers: Markdown (summary.md) and LaTeX (summary.tex).

Accuracy is shown in percent, each metric as "mean ± std" with its 95 % interval. Only the
parameters that vary between configurations get a column; the constant ones are named once
in the note under the table, so that a sweep over two parameters gives a table a reader
can take in. Imports no torch.
"""

from __future__ import annotations

import pandas as pd

from fmnist.report.formats import (
    cell_text,
    format_interval,
    format_mean_std,
    latex_escape,
)
from fmnist.report.labels import TUTORIAL_LABEL

NOTE = (
    "Final-epoch values, mean ± sample standard deviation over seeds; "
    "95% CI: Student-t, clipped to [0, 100] %; n = number of seeds."
)
METRIC_COLUMNS = ["n", "Test accuracy (%)", "95% CI (%)", "Test loss", "Train loss"]
"""The columns after the parameters, in order."""


def split_constant_columns(summary: pd.DataFrame, group_cols: list[str]):
    """(shown, constant) configuration columns.

    Columns that vary between configurations are shown; the others are constant and go
    into the note. Rows without any parameter (tutorial logs) do not count. If nothing
    varies, all are shown (a single configuration still says what it was).
    """
    if not group_cols:
        return [], []
    with_params = summary[summary[group_cols].notna().any(axis=1)]
    varying = [c for c in group_cols if with_params[c].astype(str).nunique(dropna=False) > 1]
    if not varying:
        return list(group_cols), []
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
    for name, cells in _metric_cells(summary, pm, sep).items():
        table[name] = cells
    first = summary[summary[group_cols].notna().any(axis=1)].iloc[0] if constant else None
    constants = {c: cell_text(first[c]) for c in constant}
    return table.reset_index(drop=True), constants


def _constants_text(constants: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in constants.items())


def summary_markdown(summary: pd.DataFrame, group_cols: list[str]) -> str:
    """The summary as a Markdown table followed by a one-line note."""
    table, constants = display_table(summary, group_cols)
    text = table.to_markdown(index=False, disable_numparse=True)
    note = NOTE
    if constants:
        note += f" Same in all configurations: {_constants_text(constants)}."
    return f"{text}\n\n{note}\n"


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
        lines.append("% Same in all configurations: " + latex_escape(_constants_text(constants)))
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
