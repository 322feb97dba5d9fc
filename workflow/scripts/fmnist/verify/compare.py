"""Does a run reproduce? An original run folder against a rerun of it from scratch.

Compared byte for byte: every metric column of epochs.csv (times excluded: they are not
meant to repeat) and every tensor of model.pt. Then the two run.json are compared for what
is known to change the bits (devices and their names, versions, thread count, CPU
capability, code) and for what cannot (the host). The verdict of a run:

* ``reproduced``: the bits are the same;
* ``expected to differ: <what>``: they differ, and so does something known to change them;
* ``not reproduced``: they differ and nothing known to change them does: a failure;
* ``not comparable: <what> differ``: the two runs had other settings or other data: a
  failure too (the verification was set up wrong).

Only :func:`compare_weights` imports torch (to read model.pt), when it is called.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fmnist.report import htmltables as h
from fmnist.report.formats import rst_escape
from fmnist.rundir import runfiles

VERSIONS = ["python", "torch", "cuda", "cudnn", "numpy", "torchvision"]

NOT_COMPARABLE = ["settings", "data"]
"""Differences that make a comparison meaningless."""
CHANGES_BITS = [
    "devices",
    "device names",
    "threads",
    "CPU capability",
    "train step",
    "determinism",
    "python",  # sum() of floats is compensated from Python 3.12 on: the train loss
    "torch",
    "cuda",
    "cudnn",
    "code",
]
"""Differences known to change the numbers (in this order in a verdict)."""
INFORMATIVE = ["numpy", "torchvision", "host"]
"""Differences reported that do not change the numbers."""

PASS, FAIL = "yes", "no"


@dataclass
class Comparison:
    """How two sets of numbers differ: per name, the largest absolute and relative
    difference; ``identical`` is about the bits, not about the differences being 0."""

    identical: bool = True
    diffs: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)


def float_bits(value: float) -> bytes:
    return struct.pack("<d", value)


def abs_rel(a: float, b: float) -> tuple[float, float]:
    if float_bits(a) == float_bits(b) or (math.isnan(a) and math.isnan(b)):
        return 0.0, 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf, math.inf
    diff = abs(a - b)
    scale = max(abs(a), abs(b))
    return diff, (diff / scale if scale else 0.0)


# --------------------------------------------------------------------------- epochs.csv


def metric_columns(columns) -> list[str]:
    """The columns that must repeat: all but the measurements (times, peak memory)."""
    return [c for c in columns if not runfiles.is_measurement(c)]


def compare_metrics(original: dict[str, list], rerun: dict[str, list]) -> tuple[Comparison, int]:
    """Every metric column, epoch by epoch, and the number of epochs both hold."""
    result = Comparison()
    epochs_a, epochs_b = original["epoch"], rerun["epoch"]
    common = sorted(set(epochs_a) & set(epochs_b))
    if epochs_a != epochs_b:
        result.identical = False
        result.notes.append(f"epochs: {len(epochs_a)} vs {len(epochs_b)}")
    at_a = {e: i for i, e in enumerate(epochs_a)}
    at_b = {e: i for i, e in enumerate(epochs_b)}
    columns = metric_columns(dict.fromkeys([*original, *rerun]))
    for column in columns:
        if column == "epoch":
            continue
        if column not in original or column not in rerun:
            result.identical = False
            result.notes.append(
                f"{column} only in the {'original' if column in original else 'rerun'}"
            )
            continue
        worst = (0.0, 0.0)
        for epoch in common:
            a, b = original[column][at_a[epoch]], rerun[column][at_b[epoch]]
            if float_bits(a) != float_bits(b):
                result.identical = False
                if column not in result.differing:
                    result.differing.append(column)
            worst = tuple(map(max, worst, abs_rel(a, b)))
        result.diffs[column] = worst
    return result, len(common)


# --------------------------------------------------------------------------- model.pt


def _tensor_diff(a, b) -> tuple[bool, float, float]:
    """(same bytes, largest absolute difference, largest relative difference)."""
    import torch

    a, b = a.detach().cpu().contiguous().reshape(-1), b.detach().cpu().contiguous().reshape(-1)
    same = torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    if same or a.numel() == 0:
        return same, 0.0, 0.0
    x, y = a.to(torch.float64), b.to(torch.float64)
    diff = (x - y).abs()
    diff = torch.where(torch.isnan(x) & torch.isnan(y), torch.zeros_like(diff), diff)
    scale = torch.maximum(x.abs(), y.abs())
    rel = torch.where(scale > 0, diff / scale, torch.zeros_like(diff))
    return same, float(diff.max()), float(rel.max())


def compare_weights(original: Path, rerun: Path) -> Comparison:
    """Every tensor of the two state dicts (model.pt), byte for byte."""
    import torch

    result = Comparison()
    a = torch.load(original, map_location="cpu", weights_only=True)
    b = torch.load(rerun, map_location="cpu", weights_only=True)
    for name in sorted(set(a) ^ set(b)):
        result.identical = False
        result.notes.append(f"tensor {name} only in the {'original' if name in a else 'rerun'}")
    worst = (0.0, 0.0)
    for name in [n for n in a if n in b]:
        if a[name].dtype != b[name].dtype or a[name].shape != b[name].shape:
            result.identical = False
            result.differing.append(name)
            result.notes.append(
                f"tensor {name}: {a[name].dtype}{list(a[name].shape)} vs "
                f"{b[name].dtype}{list(b[name].shape)}"
            )
            continue
        same, abs_diff, rel_diff = _tensor_diff(a[name], b[name])
        if not same:
            result.identical = False
            result.differing.append(name)
        worst = (max(worst[0], abs_diff), max(worst[1], rel_diff))
    result.diffs["weights"] = worst
    return result


# --------------------------------------------------------------------------- run.json


def provenance_facts(record: dict) -> dict:
    """What run.json says about the run's conditions, by the name a verdict gives it.

    Per attempt facts are the last attempt's (it finished the run). ``CPU capability`` is
    the attempt's ``cpu_capability`` (torch's CPU kernel set), which training records in
    every attempt; None in run folders written before it was recorded.
    """
    last, setup = record["attempts"][-1], record["setup"]
    return {
        "settings": record["params"],
        "data": setup["data_md5"],
        "devices": setup["devices"],
        "device names": last["device_names"],
        "threads": setup["threads"],
        "CPU capability": last.get("cpu_capability"),
        "train step": setup["train_step"],
        "determinism": setup["determinism"],
        **{name: last["versions"].get(name) for name in VERSIONS},
        "code": record["git"],
        "host": last["hostname"],
    }


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def describe(name: str, a, b) -> str:
    """One difference in words: "threads: 1 → 2", "settings: lr 0.01 → 0.001"."""
    if isinstance(a, dict) and isinstance(b, dict) and name != "code":
        keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
        return f"{name}: " + ", ".join(f"{k} {_shown(a.get(k))} → {_shown(b.get(k))}" for k in keys)
    if name == "code":
        a = f"{a.get('commit')}{' (dirty)' if a.get('dirty') else ''}"
        b = f"{b.get('commit')}{' (dirty)' if b.get('dirty') else ''}"
    return f"{name}: {_shown(a)} → {_shown(b)}"


def provenance_differences(original: dict, rerun: dict) -> tuple[list[str], list[str]]:
    """(names of the facts that differ, each in words), in the order of the facts.

    A fact one side did not record (None, e.g. CPU capability from format 2) is unknown,
    not different.
    """
    a, b = provenance_facts(original), provenance_facts(rerun)
    names, words = [], []
    for name in a:
        if name == "CPU capability" and (a[name] is None or b[name] is None):
            continue
        if a[name] != b[name]:
            names.append(name)
            words.append(describe(name, a[name], b[name]))
    return names, words


def verdict(identical: bool, differing: list[str]) -> str:
    if identical:
        return "reproduced"
    broken = [n for n in NOT_COMPARABLE if n in differing]
    if broken:
        return f"not comparable: {' and '.join(broken)} differ"
    explained = [n for n in CHANGES_BITS if n in differing]
    if explained:
        return f"expected to differ: {', '.join(explained)}"
    return "not reproduced"


def passed(text: str) -> bool:
    return text == "reproduced" or text.startswith("expected to differ")


# --------------------------------------------------------------------------- one run


def compare_run(original: Path, rerun: Path) -> dict:
    """reproduction.csv's row for one run (RunFileError if a folder lacks a file)."""
    original, rerun = Path(original), Path(rerun)
    for folder in (original, rerun):
        for name in (runfiles.EPOCHS_FILE, runfiles.RECORD_FILE, runfiles.MODEL_FILE):
            if not (folder / name).is_file():
                raise runfiles.RunFileError(f"{folder / name}: missing")
    record_a = runfiles.read_record(original / runfiles.RECORD_FILE)
    record_b = runfiles.read_record(rerun / runfiles.RECORD_FILE)
    metrics, epochs = compare_metrics(
        runfiles.read_epochs(original / runfiles.EPOCHS_FILE),
        runfiles.read_epochs(rerun / runfiles.EPOCHS_FILE),
    )
    weights = compare_weights(original / runfiles.MODEL_FILE, rerun / runfiles.MODEL_FILE)
    names, words = provenance_differences(record_a, record_b)
    identical = metrics.identical and weights.identical
    said = verdict(identical, names)
    row = {
        "run": record_a["run_id"],
        "epochs_compared": epochs,
        "identical": PASS if identical else FAIL,
        "verdict": said,
        "passed": PASS if passed(said) else FAIL,
    }
    for name, (abs_diff, rel_diff) in {**metrics.diffs, **weights.diffs}.items():
        row[f"{name}_max_abs_diff"], row[f"{name}_max_rel_diff"] = abs_diff, rel_diff
    row["differing"] = ", ".join(metrics.differing + weights.differing)
    row["provenance_differences"] = "; ".join(words)
    row["notes"] = "; ".join(metrics.notes + weights.notes)
    row["original"], row["rerun"] = str(original), str(rerun)
    return row


def reproduction_table(pairs) -> pd.DataFrame:
    """One row per (original folder, rerun folder): the verdict and what differed first,
    then the largest differences, then where the two runs are."""
    rows = [compare_run(a, b) for a, b in pairs]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = ["run", "verdict", "passed", "identical", "epochs_compared", "differing"]
    head.append("provenance_differences")
    tail = ["notes", "original", "rerun"]
    columns = head + [c for c in columns if c not in head + tail] + tail
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- in words


def failures(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["passed"] != PASS]


def summary_sentence(table: pd.DataFrame) -> str:
    """What the landing page and the page's banner say (plain text)."""
    failed, n = failures(table), len(table)
    if len(failed):
        which = "; ".join(f"{r.run}: {r.verdict}" for r in failed.itertuples())
        return (
            f"Verification FAILED: {len(failed)} of {n} re-run run(s) did not give the "
            f"original's numbers ({which})."
        )
    exact = table[table["identical"] == PASS]
    expected = table[table["identical"] != PASS]
    parts = []
    if len(exact):
        runs = ", ".join(exact["run"].astype(str))
        parts.append(
            f"{len(exact)} of {n} run(s) ({runs}) re-run from scratch gave bit-identical "
            "metrics and weights"
        )
    if len(expected):
        why = "; ".join(f"{r.run}: {r.verdict}" for r in expected.itertuples())
        parts.append(f"{len(expected)} of {n} differ as expected ({why})")
    return "Verification passed: " + "; ".join(parts) + "."


def verdict_rst(table: pd.DataFrame) -> str:
    """The landing page's sentence, one line of reStructuredText; red when it failed (the
    report's page uses the ``raw-html`` role workflow.rst defines)."""
    text = summary_sentence(table).replace("`", "'")
    if len(failures(table)):
        text += " See the Reproduction section."
        return f':raw-html:`<strong style="color:#b00020">{h.escape(text)}</strong>`'
    return rst_escape(text)


def reproduction_page(table: pd.DataFrame) -> str:
    failed = len(failures(table)) > 0
    classes = ["fail" if p != PASS else "pass" for p in table["passed"]]
    return h.page(
        "Reproduction",
        f'<p class="banner {"fail" if failed else "pass"}">{h.escape(summary_sentence(table))}</p>',
        h.paragraph(
            "Each run re-run from scratch with its recorded settings (results/verify/{run}), "
            "compared with the original byte for byte: every metric of epochs.csv (times "
            "excluded) and every tensor of model.pt. provenance_differences: what differed "
            "between the two runs' run.json; a difference known to change the numbers makes "
            "a mismatch expected, and nothing known differing makes it a failure.",
            "note",
        ),
        h.table(table, row_classes=classes, table_id="reproduction"),
    )
