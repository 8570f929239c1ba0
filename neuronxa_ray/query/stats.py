"""Significance of correlations as DuckDB scalar functions: p-values and Fisher-z confidence intervals.

DuckDB computes a correlation coefficient (corr) but has no Student-t or beta distribution. These functions take
the coefficient and the number of pairs and reproduce scipy.stats exactly, with scipy's own formulas:

- pearson_pvalue(r, n): two-sided p of scipy.stats.pearsonr: under H0, r follows Beta(n/2-1, n/2-1) on (-1, 1);
  p = 2 * betaincc(a, a, (|r| + 1) / 2). n = 2 gives p = 1, as scipy.
- spearman_pvalue(rho, n): two-sided p of scipy.stats.spearmanr: t = rho * sqrt((n-2) / ((rho+1)(1-rho))) with
  n-2 degrees of freedom; p = 2 * stdtr(n-2, -|t|).
- fisher_ci_low / fisher_ci_high(r, n, confidence): the interval of PearsonRResult.confidence_interval():
  tanh(atanh(r) -/+ z * sqrt(1 / (n-3))), z = ndtri(0.5 + confidence / 2); (-1, 1) when n <= 3. Applied to
  Spearman's rho it is the same interval for the Pearson correlation of the ranks (what rho is).

A NULL or NaN coefficient (a constant input) gives NULL; n < 2 gives NULL.
"""

from __future__ import annotations

import math

import numpy as np


def _special():
    """scipy.special on first use: importing it costs a quarter of a second, which every CLI call would pay."""
    from scipy import special

    return special


def _clip(r: float) -> float:
    return min(1.0, max(-1.0, r))  # corr() can land a rounding error outside [-1, 1]; scipy clips the same way


def pearson_pvalue(r: float | None, n: int | None) -> float | None:
    """Two-sided p-value of Pearson's r over n pairs, as scipy.stats.pearsonr."""
    if r is None or n is None or math.isnan(r) or n < 2:
        return None
    if n == 2:
        return 1.0
    r = _clip(r)
    ab = n / 2 - 1
    p = 2 * _special().betaincc(ab, ab, (abs(r) - (-1)) / 2)
    return float(p)


def spearman_pvalue(rho: float | None, n: int | None) -> float | None:
    """Two-sided p-value of Spearman's rho over n pairs, as scipy.stats.spearmanr (Student t, n-2 d.f.)."""
    if rho is None or n is None or math.isnan(rho) or n < 2:
        return None
    rho = np.float64(_clip(rho))
    dof = np.float64(n - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = rho * np.sqrt(np.clip(dof / ((rho + 1.0) * (1.0 - rho)), 0, None))
        p = 2 * _special().stdtr(dof, -np.abs(t))
    return None if np.isnan(p) else float(p)


def _fisher(r: float | None, n: int | None, confidence: float | None, sign: int) -> float | None:
    if r is None or n is None or confidence is None or math.isnan(r) or n < 2:
        return None
    if not 0 < confidence < 1:
        raise ValueError(f"confidence level {confidence!r} must lie strictly between 0 and 1")
    if n <= 3:
        return float(sign)
    r = np.float64(_clip(r))
    with np.errstate(divide="ignore", invalid="ignore"):
        zr = np.arctanh(r)
        se = np.sqrt(1 / (np.float64(n) - 3))
        h = _special().ndtri(0.5 + np.float64(confidence) / 2)
        bound = np.tanh(zr + sign * h * se)
    return None if np.isnan(bound) else float(bound)


def fisher_ci_low(r: float | None, n: int | None, confidence: float | None) -> float | None:
    """Lower end of the Fisher-z confidence interval of a correlation, as PearsonRResult.confidence_interval()."""
    return _fisher(r, n, confidence, -1)


def fisher_ci_high(r: float | None, n: int | None, confidence: float | None) -> float | None:
    """Upper end of the Fisher-z confidence interval of a correlation."""
    return _fisher(r, n, confidence, 1)
