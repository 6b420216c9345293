"""Figures of depth_limit: each function returns matplotlib figures; the callers save and log them."""
from __future__ import annotations

import numpy as np

from shared.plotting import new_figure


def landscape_axes(steps: int, res: float) -> np.ndarray:
    """Grid coordinates (j - steps//2) * res: distances along the filter-normalised directions."""
    return (np.arange(steps) - steps // 2) * res


def plot_landscape(surface: np.ndarray, res: float, levels: int = 50) -> dict:
    """``{"surface": 3-D surface (viridis), "contour": ``levels`` contour levels}``."""
    import matplotlib.pyplot as plt

    n = surface.shape[0]
    ax_vals = landscape_axes(n, res)
    X, Y = np.meshgrid(ax_vals, ax_vals)  # X varies along columns (d1), Y along rows (d2)
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(X, Y, surface, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("d1")
    ax.set_ylabel("d2")
    ax.set_zlabel("loss")
    ax.set_title(f"loss landscape ({n}x{n}, res {res:g})")
    surface_fig = fig
    fig, ax = new_figure(figsize=(5.5, 4.5))
    lv = levels if np.ptp(surface) > 0 else 1
    cs = ax.contour(X, Y, surface, levels=lv, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="loss")
    ax.plot([0], [0], "r+", ms=10, label="trained weights")
    ax.set_xlabel("d1")
    ax.set_ylabel("d2")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("loss contours")
    return {"surface": surface_fig, "contour": fig}


def plot_norm_curves(curves, beta: float, band: bool):
    """Mean |L^beta W_k|_F against k/(L-1), one line per L, with the 95% band when ``band``."""
    import matplotlib.pyplot as plt

    fig, ax = new_figure(figsize=(6, 4))
    colors = plt.get_cmap("tab20c")(np.linspace(0, 1, max(len(curves), 1), endpoint=False))
    for c, col in zip(curves, colors):
        ax.plot(c.x, c.mean, color=col, label=f"L={c.L} ({c.runs} run{'s' if c.runs != 1 else ''})")
        if band and c.runs > 1:
            ax.fill_between(c.x, c.mean - c.half_width, c.mean + c.half_width, color=col, alpha=0.3)
    ax.set_xlabel("k / L")
    ax.set_ylabel(rf"$\| L^{{{beta:g}}} W_k \|_F$")
    ax.legend(fontsize=8)
    return fig


def plot_entry_curves(lines, entry: tuple[int, int], beta: float):
    """L^beta W_k[i, j] against k/(L-1), one line per (L, run)."""
    fig, ax = new_figure(figsize=(6, 4))
    for L, label, x, y in lines:
        ax.plot(x, y, label=f"L={L} ({label})")
    ax.set_xlabel("k / L")
    ax.set_ylabel(rf"$L^{{{beta:g}}} W_k[{entry[0]},{entry[1]}]$")
    if len(lines) <= 12:
        ax.legend(fontsize=7)
    return fig


def plot_curve_fit(fit, tag: str):
    """The fitted points (orange crosses) and the fitted curve on a dense grid of the same x range."""
    fig, ax = new_figure(figsize=(6, 4))
    xx = np.linspace(0.0, float(fit.x.max()), 400)
    p = fit.params
    if fit.infer_shift:
        label = rf"$g(t) = {p['C']:.3g} / (t + {p['T0']:.3g})^{{{p['rho']:.3g}}}$"
    else:
        label = rf"$g(t) = {p['C']:.3g} / (t + 1)^{{{p['rho']:.3g}}}$"
    ax.plot(xx, fit.predict(xx), color="royalblue", linewidth=2.5, label=label)
    ax.scatter(fit.x, fit.y, marker="x", color="orange", label="data", s=14)
    ax.set_xlabel("step (t)")
    ax.set_ylabel(tag)
    ax.legend()
    return fig
