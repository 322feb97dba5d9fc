"""Mean, sample standard deviation and 95 % confidence interval over seeds.

The interval is Student's t (few seeds: the normal would be far too narrow), clipped to
the bounds the metric cannot leave: with two seeds the t interval of an accuracy near 1
reaches past 100 %, which no reader should see in a paper table.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Summary(NamedTuple):
    n: int
    mean: float
    std: float
    ci95_low: float
    ci95_high: float


def t_quantile(p: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t distribution with ``df`` degrees of freedom."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if not df > 0:
        raise ValueError("df must be positive")
    # Imported here, not at the top: scipy.stats takes half a second to import, and
    # plotting, which imports the tables module for its column names, never needs it.
    from scipy import stats

    return float(stats.t.ppf(p, df))


def mean_std_ci95(values, low: float = -math.inf, high: float = math.inf) -> Summary:
    """n, mean, sample std (ddof=1) and 95 % CI of the non-NaN ``values``.

    The Student-t interval is clipped to [low, high], the metric's bounds. std and the
    interval are NaN with fewer than two values; everything is NaN with none.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, max(mean - half, low), min(mean + half, high))
