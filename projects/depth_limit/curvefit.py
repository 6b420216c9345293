"""Fit Omega(t) = C / (t + T0)^rho (or C / (t + 1)^rho) to an Omega history (curve_fit_avg_grad.py).

Preprocessing, in the original's order (:func:`clean_series`):

1. index the values t = 1..n;
2. ``filter_period > 0``: drop every point whose t is divisible by filter_period;
3. ``window_size >= 1``: split the rest into n' // window_size contiguous, nearly equal chunks (numpy.array_split)
   and drop, in each chunk, every point equal to the chunk's maximum or minimum; ``window_size <= 0`` skips this;
4. x = t * scaling_x (t keeps the original index of each surviving point).

Fit (:func:`fit_omega`): scipy ``curve_fit`` with method 'trf' and the original's bounds, C, rho in [0, 3] without the
shift; C in [0, 1], rho in [0, 3], T0 in [1, 500] with it. Reports the parameters, SD = sqrt(diag(cov)) and the
original's "std error" SD / sqrt(N), N = number of points fitted. The values are divided by max |y| before the
fit (C rescaled back), which changes nothing but the conditioning (see README).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import curve_fit

from shared.errors import UsageError

BOUNDS_NO_SHIFT = ((0.0, 0.0), (3.0, 3.0))  # C, rho
BOUNDS_SHIFT = ((0.0, 0.0, 1.0), (1.0, 3.0, 500.0))  # C, rho, T0


def power_decay(t, C, rho):
    """C / (t + 1)^rho."""
    return C / (t + 1.0) ** rho


def power_decay_shift(t, C, rho, T0):
    """C / (t + T0)^rho."""
    return C / (t + T0) ** rho


def clean_series(values, filter_period: int = 0, window_size: int = 5, steps=None) -> tuple[np.ndarray, np.ndarray]:
    """(t, v) after the filter and window steps; t is 1-based (or the given ``steps``, one per value)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise UsageError("the Omega history is empty; log it with --store-grad (metric 'avg_grad_norm')")
    t = np.arange(1, v.size + 1) if steps is None else np.asarray(steps).reshape(-1)
    if t.shape != v.shape:
        raise UsageError(f"got {t.size} steps for {v.size} values; pass one step per value")
    if filter_period < 0:
        raise UsageError(f"--filter-period must be >= 0 (0 keeps every point), got {filter_period}")
    if filter_period > 0:
        keep = t % filter_period != 0
        t, v = t[keep], v[keep]
    if window_size >= 1:
        chunks = v.size // window_size
        if chunks < 1:
            raise UsageError(f"--window-size {window_size} is larger than the {v.size} points left after filtering; "
                             "use a smaller window (or 0 to skip the max/min removal)")
        ts, vs = [], []
        for tc, vc in zip(np.array_split(t, chunks), np.array_split(v, chunks)):
            keep = (vc != vc.max()) & (vc != vc.min())
            ts.append(tc[keep])
            vs.append(vc[keep])
        t, v = np.concatenate(ts), np.concatenate(vs)
    return t, v


@dataclass
class OmegaFit:
    """Fitted parameters with their SD (sqrt of the covariance diagonal) and std error (SD / sqrt(N))."""

    params: dict[str, float]
    sd: dict[str, float]
    std_error: dict[str, float]
    n_points: int
    infer_shift: bool
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.infer_shift:
            return power_decay_shift(x, self.params["C"], self.params["rho"], self.params["T0"])
        return power_decay(x, self.params["C"], self.params["rho"])

    def as_dict(self) -> dict:
        return {"params": self.params, "sd": self.sd, "std_error": self.std_error, "n_points": self.n_points,
                "infer_shift": self.infer_shift}


def fit_omega(x, y, infer_shift: bool = False, bounds=None, p0=None) -> OmegaFit:
    """Least-squares fit of C/(x+1)^rho, or C/(x+T0)^rho with ``infer_shift``; bounds default to the original's."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    names = ("C", "rho", "T0") if infer_shift else ("C", "rho")
    if x.size != y.size:
        raise UsageError(f"got {x.size} x values for {y.size} y values")
    if x.size < len(names) + 1:
        raise UsageError(f"only {x.size} points left to fit {len(names)} parameters; use a smaller --window-size "
                         "or --filter-period 0, or a longer history")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise UsageError("the Omega history contains NaN or infinite values; fit a finite window of it")
    bounds = bounds or (BOUNDS_SHIFT if infer_shift else BOUNDS_NO_SHIFT)
    f = power_decay_shift if infer_shift else power_decay
    # C enters linearly: fit y / s with C / s (s = max |y|) so that tiny histories (Omega in the code's convention is
    # ~1e-7) are as well conditioned as O(1) ones; the minimiser and the bounds are the same, only rescaled.
    s = float(np.max(np.abs(y))) or 1.0
    lo, hi = np.array(bounds[0], dtype=float), np.array(bounds[1], dtype=float)
    lo[0], hi[0] = lo[0] / s, hi[0] / s
    if p0 is None:
        p0 = np.clip(np.ones(len(names)), lo, hi)
    else:
        p0 = np.array(p0, dtype=float)
        p0[0] /= s
    try:
        popt, pcov = curve_fit(f, x, y / s, p0=p0, bounds=(lo, hi), method="trf")
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"the fit did not converge ({e}); try --infer-shift, a smaller --scaling-x or another window")
    scale = np.ones(len(names))
    scale[0] = s
    popt = popt * scale
    pcov = pcov * np.outer(scale, scale)
    sd = np.sqrt(np.clip(np.diag(pcov), 0, np.inf))
    se = sd / np.sqrt(x.size)
    return OmegaFit(dict(zip(names, map(float, popt))), dict(zip(names, map(float, sd))),
                    dict(zip(names, map(float, se))), int(x.size), infer_shift, x, y)


def fit_history(values, *, steps=None, filter_period: int = 0, window_size: int = 5, scaling_x: float = 1.0,
                infer_shift: bool = False, bounds=None) -> OmegaFit:
    """clean_series, then x = t * scaling_x, then fit_omega."""
    if not scaling_x > 0:
        raise UsageError(f"--scaling-x must be > 0, got {scaling_x}")
    t, v = clean_series(values, filter_period, window_size, steps)
    return fit_omega(t * scaling_x, v, infer_shift, bounds)
