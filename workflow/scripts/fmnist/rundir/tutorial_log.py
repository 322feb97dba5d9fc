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
from pathlib import Path

from fmnist.rundir.runfiles import EPOCH_COLUMNS, Run, RunFileError, check_epochs_increasing

_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
TUTORIAL_LINE = re.compile(
    r"Epoch \[(?P<epoch>\d+)/(?P<total>\d+)\], Loss: (?P<loss>" + _FLOAT + r")",
    re.IGNORECASE,
)
"""A full epoch line of the tutorial's log (matched against the stripped line).

"0." counts as a number: the tutorial prints with a fixed precision, and a log cut off
mid-number still holds a value that is no worse than the others."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise RunFileError(f"{path}: cannot read: {err}") from err


def parse_tutorial_log(
    path: str | os.PathLike, skip_bad_lines: bool = False
) -> tuple[dict[str, list], list[int]]:
    """The columns of the log (every column of epochs.csv) and the line numbers skipped.

    Lines not starting with "Epoch" are ignored (the tutorial prints other lines too). A
    line starting with "Epoch" that is not a full ``Epoch [i/n], Loss: x`` line, or whose
    epoch lies outside 1..n, is malformed: an error naming the file and 1-based line
    number, unless ``skip_bad_lines``, in which case it is skipped and its number returned.
    """
    path = Path(path)
    epochs, losses, line_numbers, skipped = [], [], [], []
    for lineno, raw in enumerate(_read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("Epoch"):
            continue
        match = TUTORIAL_LINE.fullmatch(line)
        if match is None or not 1 <= int(match["epoch"]) <= int(match["total"]):
            if skip_bad_lines:
                skipped.append(lineno)
                continue
            raise RunFileError(f"{path}:{lineno}: malformed epoch line: {raw!r}")
        epochs.append(int(match["epoch"]))
        losses.append(float(match["loss"]))
        line_numbers.append(lineno)
    if not epochs:
        raise RunFileError(f"{path}: no epoch lines found")
    check_epochs_increasing(epochs, path, line_numbers)
    columns = {name: [math.nan] * len(epochs) for name in EPOCH_COLUMNS}
    columns.update(epoch=epochs, train_loss=losses)
    return columns, skipped


def read_tutorial_log(path: str | os.PathLike, skip_bad_lines: bool = False) -> Run:
    """A tutorial log as a Run without parameters; its run id is the file name's stem."""
    path = Path(path)
    columns, skipped = parse_tutorial_log(path, skip_bad_lines)
    return Run(path.stem, path, params={}, epochs=columns, record=None, skipped_lines=skipped)
