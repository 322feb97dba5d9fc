"""How values are written for people: one definition of each, for every table, page,
statement and sentence the report writes. Imports no torch.

A missing value (None, NaN, pandas' NA) is a dash in tables; numbers in HTML cells have 6
significant digits, hours 3, durations a unit; escaping for reStructuredText and LaTeX.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fmnist.config.naming import format_value

MISSING = "–"


def is_missing(value) -> bool:
    """None, NaN or pandas' NA (a list or a string is never missing)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def cell_text(value) -> str:
    """A parameter value in a table cell: floats shortest-%g (a column that some runs lack
    is float even for integers), NaN as a dash, anything else as naming writes it."""
    if is_missing(value):
        return MISSING
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:g}"
    return format_value(value)


def format_mean_std(mean, std, scale: float = 1.0, decimals: int = 2, pm: str = " ± ") -> str:
    """ "m ± s" (just "m" when s is NaN, a dash when m is NaN)."""
    if is_missing(mean):
        return MISSING
    text = f"{mean * scale:.{decimals}f}"
    if not is_missing(std):
        text += f"{pm}{std * scale:.{decimals}f}"
    return text


def format_interval(low, high, scale: float = 1.0, decimals: int = 2, sep=", ") -> str:
    if is_missing(low) or is_missing(high):
        return MISSING
    return f"[{low * scale:.{decimals}f}{sep}{high * scale:.{decimals}f}]"


def format_number(value: float) -> str:
    """6 significant digits; thousands separators from a million on; tiny and huge
    numbers (a difference of 1e-17) with an exponent."""
    if value == 0:
        return "0"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if 1e-4 <= abs(value) < 1e6:
        return f"{value:.6g}"
    if 1e6 <= abs(value) < 1e15:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_hours(hours: float) -> str:
    """3 significant digits without an exponent: 0.0000756, 0.0123, 1.23, 12.3, 1,234."""
    if is_missing(hours):
        return "–"
    if hours == 0:
        return "0"
    if hours >= 100:
        return f"{hours:,.0f}"
    decimals = max(0, 2 - math.floor(math.log10(abs(hours))))
    return f"{hours:.{decimals}f}"


def format_duration(seconds: float) -> str:
    if is_missing(seconds):
        return "unknown"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def rst_escape(text: str) -> str:
    """Plain text that reStructuredText shows as written (no emphasis, references, roles)."""
    return "".join("\\" + c if c in "\\*`_|" else c for c in str(text))


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
