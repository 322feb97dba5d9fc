"""Does a run reproduce? An original run folder against a rerun of it from scratch.

Compared byte for byte: every metric column of epochs.csv (times excluded: they are not
meant to repeat) and every tensor of model.pt. Then the two run.json are compared for what
change the bits by rounding alone (devices and their names, versions, thread count, CPU
capability: the same sums added in another order), for the code that shapes the numbers
(its digest), and for what cannot change them (the host). The verdict of a run:

* ``reproduced (bit-identical)``: the bits are the same;
* ``reproduced within tolerance (<what> differ)``: something that changes the rounding
  differs, and every number is within :data:`TOLERANCE` of the original's;
* ``unverifiable here: <what> differ``: the rerun could not match the original's
  conditions (the code differs, or the rounding does and the numbers differ beyond
  :data:`TOLERANCE`): it neither confirms nor refutes the original; a failure unless
  ``verify.accept_unverifiable`` accepts it;
* ``not reproduced``: they differ and nothing known to change them does: a failure;
* ``not comparable: <what> differ``: the two runs had other settings or other data: a
  failure too (the verification was set up wrong);
* ``incomplete: ...``: a run folder lacks epochs its run.json promises: always a failure.

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
CHANGES_ROUNDING = [
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
]
"""Differences known to change the numbers by rounding alone: the same operations, their
sums added in another order (in this order in a verdict)."""
CHANGES_CODE = ["code"]
"""The code that shapes the numbers (its digest): any change to the numbers is possible."""
INFORMATIVE = ["numpy", "torchvision", "host"]
"""Differences reported that do not change the numbers."""
UNKNOWN_WHEN_ABSENT = ["CPU capability", "code"]
"""Facts older run.json lack: unknown there, not different."""

TOLERANCE = {"relative": 1e-5, "test_accuracy": 1e-3}
"""How far a rerun under other rounding may be from the original and still reproduce it.

A reassociated float32 sum differs in its last bits (a few units of 2**-24 ~ 6e-8
relative); Adam normalises each step by the gradient's running size, so such differences
are not damped but carried into every later step and grow: measured on this model (10000
synthetic images, 3 epochs of 100 steps, autograd step, 1 thread against 2) the test
accuracy differed by 10 points after the first epoch and by 0.85 after the third. Only
differences still near rounding level can be excused by rounding: every loss and every
weight (relative to its tensor's largest magnitude) within 1e-5 relative, about 100
float32 units in the last place, and the test accuracy within 1e-3 (a few predictions at
a near-tie flipping: 1e-4 each on FashionMNIST's 10000 test images). Beyond it rounding
may be the cause or not: the run is unverifiable here, never reproduced.
"""

PASS, FAIL, ACCEPTED = "yes", "no", "accepted"
REPRODUCED = "reproduced (bit-identical)"
WITHIN_TOLERANCE = "reproduced within tolerance"
UNVERIFIABLE = "unverifiable here"


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
            result.diffs[column] = (math.inf, math.inf)
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
    """(same bytes, largest absolute difference, that relative to the tensor's largest
    magnitude: element by element, weights near 0 would make any difference large)."""
    import torch

    a, b = a.detach().cpu().contiguous().reshape(-1), b.detach().cpu().contiguous().reshape(-1)
    same = torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    if same or a.numel() == 0:
        return same, 0.0, 0.0
    x, y = a.to(torch.float64), b.to(torch.float64)
    diff = (x - y).abs()
    diff = torch.where(torch.isnan(x) & torch.isnan(y), torch.zeros_like(diff), diff)
    scale = float(torch.maximum(x.abs(), y.abs()).max())
    largest = float(diff.max())
    return same, largest, (largest / scale if scale else 0.0)


def load_weights(path: Path, side: str) -> dict:
    """model.pt as a state dict; RunFileError naming the file and the side (original or
    rerun) when it is not one (truncated, empty, another kind of file)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not its format
        raise runfiles.RunFileError(
            f"{path} (the {side}): cannot read it as a model.pt: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise runfiles.RunFileError(
            f"{path} (the {side}): not a model.pt: expected a state dict of tensors, got "
            f"{type(state).__name__}"
        )
    return state


def compare_weights(original: Path, rerun: Path) -> Comparison:
    """Every tensor of the two state dicts (model.pt), byte for byte."""
    result = Comparison()
    a, b = load_weights(original, "original"), load_weights(rerun, "rerun")
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
            worst = (math.inf, math.inf)
            continue
        same, abs_diff, rel_diff = _tensor_diff(a[name], b[name])
        if not same:
            result.identical = False
            result.differing.append(name)
        worst = (max(worst[0], abs_diff), max(worst[1], rel_diff))
    if set(a) ^ set(b):
        worst = (math.inf, math.inf)
    result.diffs["weights"] = worst
    return result


# --------------------------------------------------------------------------- run.json


def code_fact(record: dict):
    """What says which code shaped the numbers: the digest of that code (run.json's
    git.code_digest), or, in run folders written before it was recorded, the commit when
    the tree was clean; None (unknown) otherwise. A dirty tree is not other code: an edited
    config file or README changes no number."""
    git = record["git"]
    if git.get("code_digest"):
        return {"code_digest": git["code_digest"]}
    if git.get("commit") and git.get("dirty") is False:
        return {"commit": git["commit"]}
    return None


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
        "code": code_fact(record),
        "host": last["hostname"],
    }


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def describe(name: str, a, b) -> str:
    """One difference in words: "threads: 1 → 2", "settings: lr 0.01 → 0.001"."""
    if name == "code":
        a, b = (next(iter(x.values()))[:12] for x in (a, b))
    elif isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
        return f"{name}: " + ", ".join(f"{k} {_shown(a.get(k))} → {_shown(b.get(k))}" for k in keys)
    return f"{name}: {_shown(a)} → {_shown(b)}"


def provenance_differences(original: dict, rerun: dict) -> tuple[list[str], list[str]]:
    """(names of the facts that differ, each in words), in the order of the facts.

    A fact one side did not record (None, e.g. CPU capability from format 2) is unknown,
    not different.
    """
    a, b = provenance_facts(original), provenance_facts(rerun)
    names, words = [], []
    for name in a:
        if name in UNKNOWN_WHEN_ABSENT and (a[name] is None or b[name] is None):
            continue
        if name == "code" and a[name].keys() != b[name].keys():
            continue  # a digest against a commit: unknown, not different
        if a[name] != b[name]:
            names.append(name)
            words.append(describe(name, a[name], b[name]))
    return names, words


# --------------------------------------------------------------------------- the verdict


def incomplete(record: dict, epochs: list[int], side: str) -> str | None:
    """Why a run folder does not hold the run its run.json promises (None if it does)."""
    promised = record["params"]["epochs"]
    if epochs == list(range(1, promised + 1)):
        return None
    held = f"epochs {epochs[0]}..{epochs[-1]} ({len(epochs)} rows)" if epochs else "no epoch"
    return f"the {side} holds {held} of the {promised} its run.json promises"


def beyond_tolerance(diffs: dict[str, tuple[float, float]]) -> list[str]:
    """The numbers further from the original's than rounding explains (see TOLERANCE),
    each with its difference: "test_accuracy by 0.1"."""
    beyond = []
    for name, (abs_diff, rel_diff) in diffs.items():
        if name == "test_accuracy":
            if abs_diff > TOLERANCE["test_accuracy"]:
                beyond.append(f"{name} by {abs_diff:.3g}")
        elif rel_diff > TOLERANCE["relative"]:
            beyond.append(f"{name} by {rel_diff:.3g} relative")
    return beyond


def verdict(identical: bool, differing: list[str], beyond: list[str] | None = None) -> str:
    """The verdict of a complete run: ``differing`` the facts of run.json that differ,
    ``beyond`` the numbers beyond TOLERANCE (every number differing, if not given)."""
    broken = [n for n in NOT_COMPARABLE if n in differing]
    if broken:
        return f"not comparable: {' and '.join(broken)} differ"
    if identical:
        return REPRODUCED
    rounding = [n for n in CHANGES_ROUNDING if n in differing]
    code = [n for n in CHANGES_CODE if n in differing]
    if code:
        return f"{UNVERIFIABLE}: {', '.join(code + rounding)} differ"
    if not rounding:
        return "not reproduced"
    if beyond is not None and not beyond:
        return f"{WITHIN_TOLERANCE} ({', '.join(rounding)} differ)"
    return f"{UNVERIFIABLE}: {', '.join(rounding)} differ, numbers beyond rounding"


def passed(text: str, accept_unverifiable: bool = False) -> str:
    """PASS for a reproduction, ACCEPTED for an unverifiable run the user accepts, else FAIL."""
    if text == REPRODUCED or text.startswith(WITHIN_TOLERANCE):
        return PASS
    if text.startswith(UNVERIFIABLE) and accept_unverifiable:
        return ACCEPTED
    return FAIL


# --------------------------------------------------------------------------- one run


def read_side(folder: Path, side: str) -> tuple[dict, dict]:
    """(run.json, epochs.csv's columns) of the original or the rerun; RunFileError naming
    the file and the side."""
    for name in (runfiles.EPOCHS_FILE, runfiles.RECORD_FILE, runfiles.MODEL_FILE):
        if not (folder / name).is_file():
            raise runfiles.RunFileError(f"{folder / name} (the {side}): missing")
    try:
        record = runfiles.read_record(folder / runfiles.RECORD_FILE)
        epochs = runfiles.read_epochs(folder / runfiles.EPOCHS_FILE)
    except runfiles.RunFileError as err:
        raise runfiles.RunFileError(f"{err} (the {side})") from None
    return record, epochs


def compare_run(original: Path, rerun: Path, accept_unverifiable: bool = False) -> dict:
    """reproduction.csv's row for one run (RunFileError if a folder lacks a file or holds
    one that cannot be read)."""
    original, rerun = Path(original), Path(rerun)
    record_a, epochs_a = read_side(original, "original")
    record_b, epochs_b = read_side(rerun, "rerun")
    metrics, epochs = compare_metrics(epochs_a, epochs_b)
    weights = compare_weights(original / runfiles.MODEL_FILE, rerun / runfiles.MODEL_FILE)
    names, words = provenance_differences(record_a, record_b)
    identical = metrics.identical and weights.identical
    diffs = {**metrics.diffs, **weights.diffs}
    beyond = beyond_tolerance(diffs)
    missing = [
        why
        for why in (
            incomplete(record_a, epochs_a["epoch"], "original"),
            incomplete(record_b, epochs_b["epoch"], "rerun"),
        )
        if why
    ]
    said = f"incomplete: {'; '.join(missing)}" if missing else verdict(identical, names, beyond)
    row = {
        "run": record_a["run_id"],
        "epochs_compared": epochs,
        "identical": PASS if identical else FAIL,
        "verdict": said,
        "passed": passed(said, accept_unverifiable),
    }
    for name, (abs_diff, rel_diff) in diffs.items():
        row[f"{name}_max_abs_diff"], row[f"{name}_max_rel_diff"] = abs_diff, rel_diff
    row["differing"] = ", ".join(metrics.differing + weights.differing)
    row["beyond_tolerance"] = ", ".join(beyond) if not identical else ""
    row["provenance_differences"] = "; ".join(words)
    row["notes"] = "; ".join(metrics.notes + weights.notes)
    row["original"], row["rerun"] = str(original), str(rerun)
    return row


def reproduction_table(pairs, accept_unverifiable: bool = False) -> pd.DataFrame:
    """One row per (original folder, rerun folder): the verdict and what differed first,
    then the largest differences, then where the two runs are."""
    rows = [compare_run(a, b, accept_unverifiable) for a, b in pairs]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = ["run", "verdict", "passed", "identical", "epochs_compared", "differing"]
    head += ["beyond_tolerance", "provenance_differences"]
    tail = ["notes", "original", "rerun"]
    columns = head + [c for c in columns if c not in head + tail] + tail
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- in words


def failures(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["passed"] == FAIL]


def _listed(rows: pd.DataFrame, with_verdict: bool) -> str:
    if with_verdict:
        return "; ".join(f"{r.run}: {r.verdict}" for r in rows.itertuples())
    return ", ".join(rows["run"].astype(str))


def summary_sentence(table: pd.DataFrame) -> str:
    """What the landing page and the page's banner say (plain text)."""
    failed, n = failures(table), len(table)
    if len(failed):
        return (
            f"Verification FAILED: {len(failed)} of {n} re-run run(s) did not confirm the "
            f"original's numbers ({_listed(failed, True)})."
        )
    exact = table[table["verdict"] == REPRODUCED]
    close = table[table["verdict"].str.startswith(WITHIN_TOLERANCE)]
    accepted = table[table["passed"] == ACCEPTED]
    parts = []
    if len(exact):
        parts.append(
            f"{len(exact)} of {n} run(s) ({_listed(exact, False)}) re-run from scratch gave "
            "bit-identical metrics and weights"
        )
    if len(close):
        parts.append(
            f"{len(close)} of {n} within rounding tolerance under other conditions "
            f"({_listed(close, True)})"
        )
    if len(accepted):
        parts.append(
            f"{len(accepted)} of {n} NOT verified: unverifiable here, accepted by "
            f"verify.accept_unverifiable ({_listed(accepted, True)})"
        )
    said = "Verification accepted, not all verified" if len(accepted) else "Verification passed"
    return f"{said}: " + "; ".join(parts) + "."


def verdict_rst(table: pd.DataFrame) -> str:
    """The landing page's sentence, one line of reStructuredText; red when it failed or
    accepted an unverifiable run (the report's page uses the ``raw-html`` role workflow.rst
    defines)."""
    text = summary_sentence(table).replace("`", "'")
    if len(failures(table)) or (table["passed"] == ACCEPTED).any():
        text += " See the Reproduction section."
        return f':raw-html:`<strong style="color:#b00020">{h.escape(text)}</strong>`'
    return rst_escape(text)


def reproduction_page(table: pd.DataFrame) -> str:
    failed = len(failures(table)) > 0
    classes = ["pass" if p == PASS else "fail" for p in table["passed"]]
    return h.page(
        "Reproduction",
        f'<p class="banner {"fail" if failed else "pass"}">{h.escape(summary_sentence(table))}</p>',
        h.paragraph(
            "Each run re-run from scratch with its recorded settings (results/verify/{run}), "
            "compared with the original byte for byte: every metric of epochs.csv (times "
            "excluded) and every tensor of model.pt. provenance_differences: what differed "
            "between the two runs' run.json. Other bits are excused only when something that "
            "changes the rounding differs (threads, devices, versions) and every number is "
            f"within {TOLERANCE['relative']:g} relative of the original's (test accuracy "
            f"within {TOLERANCE['test_accuracy']:g}): beyond_tolerance names those further "
            "off. A run under other code, or under other rounding beyond that, is unverifiable "
            "here (a failure unless verify.accept_unverifiable); other bits with nothing "
            "known differing are a failure, and so is a run missing epochs.",
            "note",
        ),
        h.table(table, row_classes=classes, table_id="reproduction"),
    )
