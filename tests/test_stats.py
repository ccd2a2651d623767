"""Paired statistics: known inputs give known intervals."""

import numpy as np
import pytest

from guidance.stats import describe, paired_difference


@pytest.mark.parametrize("method", ["bootstrap", "se"])
def test_constant_differences_have_zero_width(method):
    a = np.linspace(0, 1, 50)
    result = paired_difference(a + 0.25, a, method=method)
    assert result["mean"] == pytest.approx(0.25)
    assert result["low"] == pytest.approx(0.25) and result["high"] == pytest.approx(0.25)
    assert result["se"] == pytest.approx(0.0, abs=1e-12) and result["n"] == 50 and result["significant"]


def test_se_interval_is_mean_plus_minus_1_96_se():
    rng = np.random.default_rng(1)
    b = rng.normal(size=800)
    a = b + rng.normal(0.1, 0.5, size=800)
    d = a - b
    result = paired_difference(a, b, method="se")
    se = d.std(ddof=1) / np.sqrt(800)
    assert result["se"] == pytest.approx(se) and result["mean"] == pytest.approx(d.mean())
    assert result["low"] == pytest.approx(d.mean() - 1.959964 * se, abs=1e-6)
    assert result["high"] == pytest.approx(d.mean() + 1.959964 * se, abs=1e-6)
    assert result["significant"]  # 0.1 with se about 0.018


def test_bootstrap_agrees_with_se_on_a_normal_sample_and_is_reproducible():
    rng = np.random.default_rng(2)
    d = rng.normal(0.0, 1.0, size=1000)
    boot = paired_difference(d, np.zeros(1000), seed=3)
    se = paired_difference(d, np.zeros(1000), method="se")
    assert boot["low"] == pytest.approx(se["low"], abs=0.01) and boot["high"] == pytest.approx(
        se["high"], abs=0.01
    )
    assert paired_difference(d, np.zeros(1000), seed=3) == boot
    assert not se["significant"]  # a mean-zero sample: the interval holds 0 (|mean| < 2 se here)


def test_wider_confidence_gives_wider_interval_and_errors_name_the_input():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=100), rng.normal(size=100)
    narrow = paired_difference(a, b, confidence=0.8, method="se")
    wide = paired_difference(a, b, confidence=0.99, method="se")
    assert wide["high"] - wide["low"] > narrow["high"] - narrow["low"]
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="method='t' must be"):
        paired_difference([1, 2], [1, 2], method="t")
    with pytest.raises(ValueError, match="confidence=1.5"):
        paired_difference([1, 2], [1, 2], confidence=1.5)


def test_describe():
    result = {"mean": 0.03, "low": 0.028, "high": 0.032, "n": 800}
    assert describe(result) == "+0.030 ± 0.002 [0.028, 0.032], n 800"
