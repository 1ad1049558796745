"""Bjøntegaard delta rate (VCEG-M33) and delta PSNR between two rate-distortion curves, numpy only.

BD-rate: log(rate) is modelled as a function of PSNR for each curve, both functions are integrated over the
PSNR interval the two curves share (the OVERLAP, never extrapolated), and the mean log-rate difference is
turned back into a ratio: exp(mean(log R_test - log R_ref)) - 1. Negative = the test codec needs less rate
for the same PSNR (-0.5: half the bytes).

Interpolation, `method`:
  "pchip" (default): piecewise cubic Hermite through the points with Fritsch-Carlson monotone slopes (the
      same interpolant as scipy.interpolate.PchipInterpolator; the piecewise-cubic variant used by JVET's
      common-test-conditions sheets). It passes through every point and never overshoots.
  "cubic": the original VCEG-M33 least-squares cubic polynomial (degree min(3, points - 1)).

Curves with no overlapping PSNR range give a result with value None and a reason, not an exception; so do
curves with fewer than two distinct points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

METHODS = ("pchip", "cubic")


@dataclass(frozen=True)
class BDResult:
    """value: a fraction (-0.25 = 25% fewer bytes) for BD-rate, dB for BD-PSNR; None when not computable."""

    value: float | None
    overlap: tuple[float, float] | None  # the shared interval (PSNR dB for BD-rate, log-rate for BD-PSNR)
    method: str
    reason: str | None = None  # why value is None

    @property
    def ok(self) -> bool:
        return self.value is not None

    @property
    def percent(self) -> float | None:
        return None if self.value is None else 100.0 * self.value

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["overlap"] = None if self.overlap is None else list(self.overlap)
        return d

    def __str__(self) -> str:
        if self.value is None:
            return f"n/a ({self.reason})"
        return f"{100 * self.value:+.1f}%"


def _curve(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray] | str:
    """Finite points sorted by x, duplicates in x merged (mean y); a string says why the curve is unusable."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"{name}: rates and PSNRs must be 1-D and of equal length")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    ux, inv = np.unique(xa, return_inverse=True)
    uy = np.bincount(inv, weights=ya, minlength=len(ux)) / np.bincount(inv, minlength=len(ux))
    if len(ux) < 2:
        return f"{name} has {len(ux)} usable point(s); need at least 2"
    return ux, uy


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson derivatives at the knots (scipy's PchipInterpolator rules, including the ends)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    n = len(x)
    d = np.zeros(n)
    if n == 2:
        return np.full(2, delta[0])
    for k in range(1, n - 1):
        if delta[k - 1] * delta[k] > 0:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
    d[0] = _edge(h[0], h[1], delta[0], delta[1])
    d[-1] = _edge(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _edge(h0: float, h1: float, m0: float, m1: float) -> float:
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > abs(3 * m0):
        return 3 * m0
    return d


def integrate(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str = "pchip") -> float:
    """Integral over [lo, hi] (inside [x[0], x[-1]]) of the interpolant of sorted points (x, y)."""
    if method == "cubic":
        coef = np.polyfit(x, y, min(3, len(x) - 1))
        anti_coef = np.polyint(coef)
        return float(np.polyval(anti_coef, hi) - np.polyval(anti_coef, lo))
    if method != "pchip":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    d = pchip_slopes(x, y)
    total = 0.0
    for k in range(len(x) - 1):
        a, b = max(lo, x[k]), min(hi, x[k + 1])
        if b <= a:
            continue
        h = x[k + 1] - x[k]
        delta = (y[k + 1] - y[k]) / h
        c0, c1 = y[k], d[k]
        c2 = (3 * delta - 2 * d[k] - d[k + 1]) / h
        c3 = (d[k] + d[k + 1] - 2 * delta) / h**2

        def anti(t: float, c0=c0, c1=c1, c2=c2, c3=c3) -> float:
            return c0 * t + c1 * t**2 / 2 + c2 * t**3 / 3 + c3 * t**4 / 4

        total += anti(b - x[k]) - anti(a - x[k])
    return total


def evaluate_at(x: np.ndarray, y: np.ndarray, at: float, method: str = "pchip") -> float:
    """The interpolant of sorted points (x, y) at `at` (inside [x[0], x[-1]])."""
    if method == "cubic":
        return float(np.polyval(np.polyfit(x, y, min(3, len(x) - 1)), at))
    d = pchip_slopes(x, y)
    k = min(max(int(np.searchsorted(x, at, side="right")) - 1, 0), len(x) - 2)
    h, t = x[k + 1] - x[k], at - x[k]
    delta = (y[k + 1] - y[k]) / h
    c2 = (3 * delta - 2 * d[k] - d[k + 1]) / h
    c3 = (d[k] + d[k + 1] - 2 * delta) / h**2
    return float(y[k] + d[k] * t + c2 * t**2 + c3 * t**3)


def _delta(x_ref, y_ref, x_test, y_test, method: str, axis: str) -> BDResult:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    ref, test = _curve(x_ref, y_ref, "reference curve"), _curve(x_test, y_test, "test curve")
    if isinstance(ref, str):
        return BDResult(None, None, method, ref)
    if isinstance(test, str):
        return BDResult(None, None, method, test)
    (xr, yr), (xt, yt) = ref, test
    lo, hi = max(xr[0], xt[0]), min(xr[-1], xt[-1])
    if not hi > lo:
        return BDResult(None, None, method, f"no overlap: reference covers {axis} {xr[0]:.3g}..{xr[-1]:.3g}, "
                        f"test {xt[0]:.3g}..{xt[-1]:.3g}")
    diff = (integrate(xt, yt, lo, hi, method) - integrate(xr, yr, lo, hi, method)) / (hi - lo)
    return BDResult(diff, (float(lo), float(hi)), method)


def bd_rate(ref_rate: Sequence[float], ref_psnr: Sequence[float], test_rate: Sequence[float],
            test_psnr: Sequence[float], method: str = "pchip") -> BDResult:
    """Average rate change of `test` vs `ref` at equal PSNR, over the overlapping PSNR range."""
    if min(np.min(ref_rate, initial=1), np.min(test_rate, initial=1)) <= 0:
        raise ValueError("rates must be positive")
    r = _delta(ref_psnr, np.log(ref_rate), test_psnr, np.log(test_rate), method, "PSNR dB")
    return r if r.value is None else BDResult(math.expm1(r.value), r.overlap, method)


def bd_psnr(ref_rate: Sequence[float], ref_psnr: Sequence[float], test_rate: Sequence[float],
            test_psnr: Sequence[float], method: str = "pchip") -> BDResult:
    """Average PSNR change (dB) of `test` vs `ref` at equal rate, over the overlapping log-rate range."""
    if min(np.min(ref_rate, initial=1), np.min(test_rate, initial=1)) <= 0:
        raise ValueError("rates must be positive")
    return _delta(np.log(ref_rate), ref_psnr, np.log(test_rate), test_psnr, method, "log-rate")


def rate_at(rates: Sequence[float], psnrs: Sequence[float], psnr: float, method: str = "pchip") -> float | None:
    """The rate a curve needs for `psnr` (interpolated in log-rate), or None outside the curve's PSNR range."""
    c = _curve(psnrs, np.log(np.asarray(rates, dtype=np.float64)), "curve")
    if isinstance(c, str):
        return None
    x, y = c
    if not x[0] <= psnr <= x[-1]:
        return None
    return math.exp(evaluate_at(x, y, psnr, method))
