"""The report's pages, made from the tables gathering wrote (their CSV files, as read).

* summary.html, runs.html, compute.html, provenance.html: the tables, sortable, readable in
  the report itself (the CSVs stay attached for download);
* run_pages/{run}.html: one page per run (its settings, epochs, attempts, provenance),
  listed in the report under labels naming the run's swept parameters;
* overview.rst: the landing page's paragraph (workflow/report/workflow.rst includes it):
  what was run, on what hardware, how many runs and seeds, whether the data were SYNTHETIC.

Accuracy is a fraction of the test set in every file (the CSVs) and a percentage in every
page people read, its column named "... (%)" (:func:`accuracy_in_percent`), as in summary.md
and the figures. Imports no torch.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fmnist.config.naming import RUN_ID_RULE, is_run_id
from fmnist.config.settings import defaults
from fmnist.report import htmltables as h
from fmnist.report import paper, statement
from fmnist.report.formats import cell_text, format_hours, rst_escape
from fmnist.rundir.files import atomic_write_text

TABLES = ["epochs", "runs", "summary", "provenance", "compute"]
"""The tables the pages are made of (their CSV files' names without .csv)."""
PAGES = ["summary.html", "runs.html", "compute.html", "provenance.html", "overview.rst"]
RUN_PAGES = "run_pages"
OFFICIAL_MD5 = defaults()["data"]["md5"]


def group_columns(summary: pd.DataFrame) -> list[str]:
    """The configuration's parameters: summary.csv's columns before n_seeds."""
    return list(summary.columns[: list(summary.columns).index("n_seeds")])


# --------------------------------------------------------------------------- table pages


def accuracy_in_percent(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its accuracy columns (fractions in the CSVs: test_accuracy,
    final_test_accuracy_mean, ...) in percent, each named with " (%)"."""
    columns = [c for c in table.columns if "accuracy" in c]
    if not columns:
        return table
    shown = table.copy()
    shown[columns] = shown[columns].apply(pd.to_numeric, errors="coerce") * 100
    return shown.rename(columns={c: f"{c} (%)" for c in columns})


def summary_page(summary: pd.DataFrame) -> str:
    shown, constants = paper.display_table(summary, group_columns(summary))
    note = paper.table_note(shown, constants)
    totals = [c for c in summary.columns if c.endswith("_total")]
    for column in totals:
        shown[column] = summary[column].to_numpy()
    return h.page(
        "Summary per configuration",
        h.paragraph(note + " Compute totals: sums over the configuration's runs.", "note"),
        h.table(shown, table_id="summary"),
        "<h2>Every column (summary.csv)</h2>",
        h.table(accuracy_in_percent(summary), table_id="summary-all"),
    )


def runs_page(runs: pd.DataFrame) -> str:
    return h.page(
        "Runs",
        h.paragraph(
            "One row per run: its parameters, final and best metrics, provenance summary, "
            "compute (attempts, wall seconds, allocated GPUs/CPUs, GPU-hours, CPU-hours) and "
            "the configuration it belongs to. Accuracy in percent (runs.csv: fractions). "
            "Click a header to sort.",
            "note",
        ),
        h.table(accuracy_in_percent(runs), table_id="runs"),
    )


def statement_table(said: statement.Statement) -> pd.DataFrame:
    rows = [[label, *statement.cells(t)] for label, t in said.rows]
    rows.append(["Total", *statement.cells(said.total)])
    return pd.DataFrame(rows, columns=statement.HEADER)


def compute_page(said: statement.Statement, compute: pd.DataFrame) -> str:
    return h.page(
        "Compute",
        h.paragraph(said.text),
        h.table(statement_table(said), table_id="compute-statement"),
        "<h2>Every attempt (compute.csv)</h2>",
        h.paragraph(
            "Under SLURM one row per allocation of the run's jobs (a requeued job has one per "
            "start), from sacct; locally from Snakemake's benchmark file and run.json. "
            "ended: finished, deadline (stopped before a time limit, resumed), preempted, "
            "interrupted, failed. wall_estimated: killed without recording its end, counted "
            "with the training seconds of the epochs it checkpointed. Blank energy: not "
            "measured.",
            "note",
        ),
        h.table(compute, table_id="compute"),
    )


def provenance_page(provenance: pd.DataFrame) -> str:
    return h.page(
        "Provenance",
        h.paragraph("One row per run, from its run.json.", "note"),
        h.table(provenance, table_id="provenance"),
    )


def by_run(tables: dict[str, pd.DataFrame]) -> dict[str, dict[str, pd.DataFrame]]:
    """Each table's rows per run id, grouped once (without the run_id column)."""
    grouped = {}
    for name, table in tables.items():
        if "run_id" not in table:
            grouped[name] = {}
            continue
        ids = table["run_id"].astype(str)
        rest = table.drop(columns="run_id")
        grouped[name] = {rid: rows for rid, rows in rest.groupby(ids, sort=False)}
    return grouped


def run_page(run_id: str, grouped: dict[str, dict[str, pd.DataFrame]]) -> str:
    """One run: its epochs, its row of runs.csv, its attempts, its provenance."""

    def rows(name: str) -> pd.DataFrame | None:
        return grouped[name].get(run_id)

    summary = rows("runs").iloc[0].to_dict()
    parts = []
    epochs = rows("epochs")
    if epochs is not None:
        epochs = epochs[[c for c in epochs.columns if c not in summary or c == "epoch"]]
        parts += ["<h2>Epochs</h2>", h.table(accuracy_in_percent(epochs), table_id="epochs")]
    summary = accuracy_in_percent(rows("runs")).iloc[0].to_dict()
    parts += ["<h2>Settings, results and compute (runs.csv)</h2>", h.key_values(summary)]
    if rows("compute") is not None:
        parts += ["<h2>Attempts (compute.csv)</h2>", h.table(rows("compute"), table_id="attempts")]
    if rows("provenance") is not None:
        parts += ["<h2>Provenance</h2>", h.key_values(rows("provenance").iloc[0].to_dict())]
    return h.page(f"Run {run_id}", *parts)


# --------------------------------------------------------------------------- overview


def _values(runs: pd.DataFrame, column: str) -> list[str]:
    if column not in runs:
        return []
    values = [cell_text(v) for v in pd.unique(runs[column].dropna())]
    return [v.replace(",", "+") for v in values] if column == "devices" else values


def placement(runs: pd.DataFrame) -> str:
    """Where the stages ran, as runs.csv's stage_devices records it: "its stages on their
    own devices (cuda:0+cuda:1)", "its stages all on one device (cpu)", or as recorded."""
    layouts = _values(runs, "stage_devices")
    if not layouts:
        return "its stages' devices not recorded"
    stages = [layout.split(",") for layout in layouts]
    listed = " or ".join(layout.replace(",", "+") for layout in layouts)
    if all(len(set(devices)) == len(devices) for devices in stages):
        return f"its stages on their own devices ({listed})"
    if all(len(set(devices)) == 1 for devices in stages):
        return f"its stages all on one device ({' or '.join(dict.fromkeys(d[0] for d in stages))})"
    return f"its stages on {listed}"


def model_text(fixed: dict, where: str) -> str:
    """The model in words: the tutorial's layers, or the widths of a deeper one, and
    ``where`` its stages ran (:func:`placement`)."""
    widths = fixed.get("hidden_sizes", "H").split(",")
    activation = fixed.get("activation", "log_softmax")
    if len(widths) == 1:
        layers = f"Linear 784→{widths[0]}, {activation}, Linear {widths[0]}→10"
    else:
        layers = f"Linear layers 784→{'→'.join(widths)}→10 with {activation} between them"
    return f"the tutorial's model-parallel MLP ({layers}, {where})"


def describe_runs(runs: pd.DataFrame) -> str:
    """What was run: how many runs, configurations and seeds, the model and its settings,
    what the sweep varied."""
    columns = ("hidden_sizes", "activation", "lr", "batch_size", "epochs")
    values = {c: _values(runs, c) for c in columns}
    fixed = {c: v[0] for c, v in values.items() if len(v) == 1}
    settings = [
        f"batch {fixed['batch_size']}" if "batch_size" in fixed else "",
        f"{fixed['epochs']} epochs" if "epochs" in fixed else "",
    ]
    optimizer = f"Adam (lr {fixed['lr']})" if "lr" in fixed else "Adam"
    swept = [
        f"{column} = {', '.join(vals)}"
        for column in [*values, "devices", "microbatches", "adam_impl", "tutorial_double_scaling"]
        if len(vals := values.get(column) or _values(runs, column)) > 1
    ]
    seeds = _values(runs, "seed")
    configs = runs["configuration"].nunique()
    counts = f"{statement.plural(len(runs), 'run')} ({statement.plural(configs, 'configuration')}"
    counts += f" × {statement.plural(len(seeds), 'seed')}: {', '.join(seeds)})" if seeds else ")"
    model = f"{model_text(fixed, placement(runs))} trained with " + ", ".join(
        [optimizer, *filter(None, settings)]
    )
    sweep = f"; swept: {'; '.join(swept)}" if swept else ""
    return f"This report covers {counts} of {model}{sweep}."


def describe_data(provenance: pd.DataFrame, synthetic: bool) -> str:
    columns = {name: f"md5_{name}" for name in OFFICIAL_MD5}
    if provenance.empty or not all(c in provenance for c in columns.values()):
        return "The data's checksums were not recorded."
    official = all((provenance[c] == OFFICIAL_MD5[name]).all() for name, c in columns.items())
    if official:
        return "The data were the official FashionMNIST files (MD5-checked)."
    if synthetic:
        return (
            "**These results come from SYNTHETIC data** generated in FashionMNIST's file "
            "format (an installation check), not from FashionMNIST."
        )
    return "**The data were not the official FashionMNIST files** (their MD5 sums differ)."


def overview(tables: dict[str, pd.DataFrame], said: statement.Statement, synthetic: bool) -> str:
    """The landing page's paragraph, one line of reStructuredText."""
    runs, compute = tables["runs"], tables["compute"]
    with_record = runs[runs["attempts"].notna()]
    words = [rst_escape(describe_runs(runs))]
    if len(with_record):
        total = said.total
        words.append(
            rst_escape(
                f"They ran {statement.where(compute)}, with {statement.hardware(with_record)}, "
                f"and used {format_hours(total.gpu_hours)} GPU-hours and "
                f"{format_hours(total.cpu_hours)} CPU-hours in total "
                f"({statement.plural(total.attempts, 'attempt')})."
            )
        )
    words.append(describe_data(tables["provenance"], synthetic))
    return " ".join(words)


# --------------------------------------------------------------------------- all of them


def render_pages(tables: dict[str, pd.DataFrame], synthetic: bool) -> dict[str, str]:
    """Every page's text by its path relative to the tables' folder: :data:`PAGES`, then
    ``run_pages/{run}.html`` for each run. ``tables``: :data:`TABLES` as their CSV reads."""
    for run_id in tables["runs"].get("run_id", pd.Series(dtype=str)).astype(str):
        if not is_run_id(run_id):  # it names a page: never a path out of run_pages/
            raise ValueError(f"runs.csv: run_id {run_id!r} is not a run id ({RUN_ID_RULE})")
    said = statement.statement(tables["runs"], tables["compute"])
    texts = {
        "summary.html": summary_page(tables["summary"]),
        "runs.html": runs_page(tables["runs"]),
        "compute.html": compute_page(said, tables["compute"]),
        "provenance.html": provenance_page(tables["provenance"]),
        "overview.rst": overview(tables, said, synthetic) + "\n",
    }
    grouped = by_run(tables)
    for run_id in tables["runs"]["run_id"].astype(str):
        texts[f"{RUN_PAGES}/{run_id}.html"] = run_page(run_id, grouped)
    return texts


def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """:data:`TABLES` as their CSV files read (a file without columns: an empty table)."""
    tables = {}
    for name in TABLES:
        try:
            tables[name] = pd.read_csv(folder / f"{name}.csv")
        except pd.errors.EmptyDataError:
            tables[name] = pd.DataFrame()
    return tables


def write_pages(tables_dir: Path, out_dir: Path, synthetic: bool) -> list[Path]:
    """Render every page from the tables in ``tables_dir`` first, then write each one
    atomically into ``out_dir``, and remove the pages of runs no longer gathered."""
    texts = render_pages(read_tables(tables_dir), synthetic)
    (out_dir / RUN_PAGES).mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text, durable=False)  # a lost page is made again
    for stale in (out_dir / RUN_PAGES).glob("*.html"):
        if f"{RUN_PAGES}/{stale.name}" not in texts:
            stale.unlink()
    return [out_dir / name for name in texts]
