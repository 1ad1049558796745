"""BD-rate against cases worked by hand, scipy's PCHIP, and curves that do not overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeae.evaluate.bdrate import bd_psnr, bd_rate, integrate, rate_at

PSNR = np.array([28.0, 31.0, 33.5, 36.0, 40.0])
RATE = np.array([1000.0, 1800.0, 2600.0, 4000.0, 8000.0])


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_half_the_rate_at_every_psnr_is_minus_50_percent(method):
    r = bd_rate(RATE, PSNR, RATE / 2, PSNR, method=method)
    assert r.value == pytest.approx(-0.5, abs=1e-12)
    assert r.overlap == (28.0, 40.0)
    assert str(r) == "-50.0%"


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("c", [-1.3, -0.2, 0.0, 0.4, 2.0])
def test_an_exponential_rate_shift_gives_exp_c_minus_1(method, c):
    r = bd_rate(RATE, PSNR, RATE * math.exp(c), PSNR, method=method)
    assert r.value == pytest.approx(math.expm1(c), rel=1e-9, abs=1e-12)
    # and reversed
    assert bd_rate(RATE * math.exp(c), PSNR, RATE, PSNR, method=method).value == pytest.approx(math.expm1(-c))


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_a_psnr_shift_on_a_log_linear_curve_only_counts_the_overlap(method):
    # log R = a + b * PSNR. The test codec gives d dB more at every rate: log R_test(P) = a + b * (P - d),
    # so at equal PSNR its log-rate is b * d lower, on the shared range [28 + d, 40] only.
    a, b, d = 1.0, 0.15, 2.5
    p = np.linspace(28, 40, 6)
    r = bd_rate(np.exp(a + b * p), p, np.exp(a + b * p), p + d, method=method)
    assert r.value == pytest.approx(math.exp(-b * d) - 1, rel=1e-9)
    assert r.overlap == pytest.approx((28 + d, 40))
    bp = bd_psnr(np.exp(a + b * p), p, np.exp(a + b * p), p + d, method=method)
    assert bp.value == pytest.approx(d, rel=1e-9)


def test_curves_that_do_not_overlap_give_a_result_not_an_exception():
    r = bd_rate(RATE, PSNR, RATE, PSNR + 20)
    assert r.value is None and r.percent is None and not r.ok
    assert r.overlap is None and "no overlap" in r.reason
    assert str(r).startswith("n/a (no overlap")
    touching = bd_rate(RATE, PSNR, RATE, PSNR + 12)  # share only the point 40 dB: zero width
    assert touching.value is None and "no overlap" in touching.reason


def test_too_few_points_and_bad_rates():
    r = bd_rate([100.0], [30.0], RATE, PSNR)
    assert r.value is None and "need at least 2" in r.reason
    assert bd_rate([100.0, 100.0], [30.0, 30.0], RATE, PSNR).value is None  # one distinct PSNR
    with pytest.raises(ValueError):
        bd_rate([0.0, 1.0], [30.0, 31.0], RATE, PSNR)
    with pytest.raises(ValueError):
        bd_rate(RATE, PSNR, RATE, PSNR, method="akima")


def test_order_of_points_does_not_matter():
    perm = [3, 0, 4, 1, 2]
    assert bd_rate(RATE[perm], PSNR[perm], (RATE * 0.7)[::-1], PSNR[::-1]).value == pytest.approx(-0.3)


def test_pchip_integral_matches_scipy():
    interpolate = pytest.importorskip("scipy.interpolate")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = np.sort(rng.uniform(0, 10, 6))
        y = rng.normal(size=6)  # not monotone: exercises the zero-slope and end rules
        lo, hi = np.sort(rng.uniform(x[0], x[-1], 2))
        want = interpolate.PchipInterpolator(x, y).integrate(lo, hi)
        assert integrate(x, y, lo, hi, "pchip") == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_rate_at_interpolates_inside_and_refuses_outside():
    assert rate_at(RATE, PSNR, 33.5) == pytest.approx(2600.0)
    assert 1800 < rate_at(RATE, PSNR, 32.0) < 2600
    assert rate_at(RATE, PSNR, 45.0) is None
