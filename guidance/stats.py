"""Paired statistics for claims: the mean difference of paired samples with a confidence interval.

A toy-world result compares guided and unguided images of the same prompt-seed pairs, so the differences are
paired: d_i = a_i - b_i. `paired_difference` gives their mean, standard error and an interval, either the normal
approximation (mean ± z · se) or a percentile bootstrap over pairs (Efron and Tibshirani 1993). A result is a
gain only when its interval excludes 0 (`significant`).
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

METHODS = ("bootstrap", "se")


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, method: str = "bootstrap",
                      seed: int = 0, resamples: int = 10_000) -> dict:  # fmt: skip
    """Mean of a - b over paired samples with a `confidence` interval (`bootstrap` percentile or `se` normal).

    Returns `mean`, `low`, `high`, `n`, `se` (sample standard deviation / sqrt(n)) and `significant` (the
    interval excludes 0)."""
    diff = _differences(a, b)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must lie in (0, 1)")
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {list(METHODS)}")
    n, mean = len(diff), float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    if method == "se":
        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        low, high = mean - z * se, mean + z * se
    else:
        low, high = _bootstrap(diff, confidence, seed, resamples)
    return {
        "mean": mean,
        "low": low,
        "high": high,
        "n": n,
        "se": se,
        "significant": bool(low > 0 or high < 0),
    }


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """a - b as a float array, with errors for unpaired or empty samples."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have equal lengths (got {a.size} and {b.size})")
    if a.size == 0:
        raise ValueError("paired samples are empty")
    return a - b


def _bootstrap(diff: np.ndarray, confidence: float, seed: int, resamples: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the pairs with replacement."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def describe(result: dict, digits: int = 3) -> str:
    """`+0.030 ± 0.002 [0.026, 0.034], n 800` for a table (± is the half-width of the interval)."""
    half = (result["high"] - result["low"]) / 2
    return (f"{result['mean']:+.{digits}f} ± {half:.{digits}f} [{result['low']:.{digits}f}, "
            f"{result['high']:.{digits}f}], n {result['n']}")  # fmt: skip
