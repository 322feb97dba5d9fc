"""Tests of fmnist.report.stats: mean, sample std and the clipped Student-t 95 % interval."""

from __future__ import annotations

import math

import pytest
from fmnist.report import stats

T_TABLE_975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105}
"""Two-sided 95 % Student-t quantiles from a printed table (df: t)."""


@pytest.mark.parametrize(
    ("df", "expected"),
    [*T_TABLE_975.items(), (9, 2.262157163), (30, 2.042272456)],
)
def test_t_quantile_known_values(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, rel=1e-9)


def test_t_quantile_closed_forms_and_symmetry():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
        assert stats.t_quantile(p, 2) == pytest.approx(
            (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12
        )
        assert stats.t_quantile(1 - p, 7) == pytest.approx(-stats.t_quantile(p, 7), rel=1e-12)
    assert stats.t_quantile(0.5, 3) == 0.0
    # Large df approaches the normal quantile 1.959963985.
    assert stats.t_quantile(0.975, 1e7) == pytest.approx(1.959963985, rel=1e-6)
    for p, df in [(1.0, 3), (0.0, 3), (0.5, 0)]:
        with pytest.raises(ValueError):
            stats.t_quantile(p, df)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_ci_half_width_is_the_t_table_value(n):
    values = [0.5 + 0.01 * i for i in range(n)]
    result = stats.mean_std_ci95(values)
    half = T_TABLE_975[n - 1] * result.std / math.sqrt(n)
    assert result.n == n
    assert result.ci95_low == pytest.approx(result.mean - half, rel=1e-9)
    assert result.ci95_high == pytest.approx(result.mean + half, rel=1e-9)


def test_ci_of_many_values_is_near_normal():
    values = [i % 7 for i in range(100_000)]
    result = stats.mean_std_ci95(values)
    half = (result.ci95_high - result.ci95_low) / 2
    # t(0.975, 99999) = 1.95998: within 1e-4 of the normal quantile.
    assert half == pytest.approx(1.95996 * result.std / math.sqrt(len(values)), rel=1e-4)


def test_mean_std_ci95_small_samples():
    assert stats.mean_std_ci95([])[0] == 0
    assert all(math.isnan(v) for v in stats.mean_std_ci95([])[1:])
    n, mean, std, low, high = stats.mean_std_ci95([0.5, float("nan")])
    assert (n, mean) == (1, 0.5)
    assert all(math.isnan(v) for v in (std, low, high))


def test_accuracy_interval_stays_within_0_and_1():
    # Two seeds near 1: the t interval (12.7 std / sqrt 2 wide) reaches far past 1.
    values = [0.97, 0.995]
    unclipped = stats.mean_std_ci95(values)
    assert unclipped.ci95_high > 1
    clipped = stats.mean_std_ci95(values, 0.0, 1.0)
    assert clipped.ci95_high == 1.0
    assert 0.0 <= clipped.ci95_low == unclipped.ci95_low <= clipped.mean
    assert clipped[:3] == unclipped[:3]
    near_zero = stats.mean_std_ci95([0.001, 0.05, 0.002], 0.0, 1.0)
    assert near_zero.ci95_low == 0.0 and near_zero.ci95_high <= 1.0
