"""The original tutorial's log (``Epoch [1/10], Loss: 0.5234`` lines), converted to a Run.

Old runs of the tutorial left only such a log. Converting it into the same
:class:`runfiles.Run` a run folder gives (no parameters, no record, NaN for every metric
but the train loss) means nothing after reading has to know there are two input formats.
Imports no torch.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fmnist.rundir.runfiles import (
    EPOCH_COLUMNS,
    IncompleteRunError,
    Run,
    RunFileError,
    parse_cell,
)

_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
TUTORIAL_LINE = re.compile(
    r"Epoch \[(?P<epoch>\d+)/(?P<total>\d+)\], Loss: (?P<loss>" + _FLOAT + r")",
    re.IGNORECASE,
)
"""A full epoch line of the tutorial's log (matched against the stripped line).

"0." counts as a number: the tutorial prints with a fixed precision, and a log cut off
mid-number still holds a value that is no worse than the others. nan and inf match, so
that a diverged run is refused by its loss, not mistaken for a garbled line."""


@dataclass
class TutorialLog:
    """What a tutorial log holds: every column of epochs.csv (NaN but for the epoch and the
    train loss), the epoch count n of its ``[i/n]`` lines, the line numbers skipped."""

    columns: dict[str, list]
    total: int
    skipped: list[int]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise RunFileError(f"{path}: cannot read: {err}") from err


def _fault(match: re.Match | None, total: int | None) -> str | None:
    """Why a line starting with "Epoch" is malformed (None: it is not); ``total`` is the n
    of the epoch lines before it."""
    if match is None:
        return "not 'Epoch [i/n], Loss: x'"
    epoch, its_total = int(match["epoch"]), int(match["total"])
    if not 1 <= epoch <= its_total:
        return f"epoch {epoch} outside 1..{its_total}"
    if total is not None and its_total != total:
        return f"{its_total} epochs, where the lines before say {total}"
    return None


def check_epochs_increasing(epochs: list[int], where, line_numbers: list[int]) -> None:
    for i in range(1, len(epochs)):
        if not epochs[i] > epochs[i - 1]:
            raise RunFileError(
                f"{where}:{line_numbers[i]}: epoch numbers not increasing "
                f"(epoch {epochs[i]} after epoch {epochs[i - 1]})"
            )


def parse_tutorial_log(path: str | os.PathLike, skip_bad_lines: bool = False) -> TutorialLog:
    """The log's epochs and losses, and the line numbers skipped.

    Lines not starting with "Epoch" are ignored (the tutorial prints other lines too). A
    line starting with "Epoch" that is not a full ``Epoch [i/n], Loss: x`` line, whose
    epoch lies outside 1..n, or whose n differs from the first epoch line's, is malformed:
    an error naming the file and 1-based line number, unless ``skip_bad_lines``, in which
    case it is skipped and its number returned. A loss that epochs.schema.yaml refuses for
    train_loss (NaN, infinite, negative) is an error naming the line, skipped or not.
    """
    path = Path(path)
    epochs, losses, line_numbers, skipped, total = [], [], [], [], None
    for lineno, raw in enumerate(_read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("Epoch"):
            continue
        match = TUTORIAL_LINE.fullmatch(line)
        fault = _fault(match, total)
        if fault is not None:
            if skip_bad_lines:
                skipped.append(lineno)
                continue
            raise RunFileError(f"{path}:{lineno}: malformed epoch line ({fault}): {raw!r}")
        total = int(match["total"])
        epochs.append(int(match["epoch"]))
        losses.append(parse_cell(match["loss"], "train_loss", f"{path}:{lineno}: loss"))
        line_numbers.append(lineno)
    if not epochs:
        raise RunFileError(f"{path}: no epoch lines found")
    check_epochs_increasing(epochs, path, line_numbers)
    columns = {name: [math.nan] * len(epochs) for name in EPOCH_COLUMNS}
    columns.update(epoch=epochs, train_loss=losses)
    return TutorialLog(columns, total, skipped)


def number_ranges(numbers: list[int]) -> str:
    """Sorted integers said short: [2, 3, 4, 7] -> "2..4, 7"."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def check_complete(log: TutorialLog, path: Path) -> None:
    """IncompleteRunError unless the log holds every epoch 1..n (each once, in order: the
    parsing has checked that)."""
    missing = sorted(set(range(1, log.total + 1)) - set(log.columns["epoch"]))
    if missing:
        raise IncompleteRunError(
            f"{path}: tutorial log of a {log.total}-epoch run without epoch(s) "
            f"{number_ranges(missing)}"
        )


def read_tutorial_log(path: str | os.PathLike, skip_bad_lines: bool = False) -> Run:
    """A finished tutorial log as a Run without parameters; its run id is the file name's
    stem. IncompleteRunError if epochs are missing."""
    path = Path(path)
    log = parse_tutorial_log(path, skip_bad_lines)
    check_complete(log, path)
    return Run(
        path.stem, path, params={}, epochs=log.columns, record=None, skipped_lines=log.skipped
    )
