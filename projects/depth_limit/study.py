"""``geomlab depth-limit study``: weight regularity of depth-limit ResNets as L grows (the thesis, seed 003).

For every dataset (the regression set ``sin`` and an image set), scaling exponent alpha, depth L and seed: fit the
depth-limit ResNet (``fit --store-grad``: p-variations and Omega(t) logged every step), then fit Omega(t) ~ C/(t+1)^rho
(``curve-fit --run``). Per (dataset, alpha): the rescaled weight paths k/L -> |L^beta W_k| for every L
(``paths norm``, beta = 1 - alpha) and the p-variation table (``paths norm --pvar-only``). The report answers the
thesis' question -- does the rescaled weight path stay regular (bounded p-variation) as L grows, and how does that
depend on alpha -- with the log-log slope of the p-variation against L per run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from shared.errors import check
from shared.study import SEEDS_HELP, Claim, Report, Study, fmt_spread, mean_ci, setting, verdict_by_interval

SEED = "003_ebcfadec71355410.txt"
QUOTE = ("being that if the trajectory becomes less and less regular, we should stop the learning procedure as it is "
         "an inefficient optimization path.")
QUOTE_TITLE = "Weights regularity for Residual Neural Networks in the depth limit"
#: a path whose p-variation grows slower than L^SLOPE_BOUND is counted as bounded (the rule of the verdict)
SLOPE_BOUND = 0.1


@dataclass(frozen=True)
class Settings:
    regression: str = setting("sin", "Regression set (sin or constant; empty: none).")
    classification: str = setting("digits", "Image set (any of `geomlab datasets`; empty: none).")
    data_path: str = setting("./data", like="fit")
    depths: tuple = setting((8, 32), "Depths L (comma-separated).")
    alphas: tuple = setting((0.5, 0.75), "Scaling exponents alpha (comma-separated, at least two).")
    seeds: tuple = setting((1234,), SEEDS_HELP)  # one fit per (dataset, alpha, L) each
    epochs: int = setting(20, like="fit")  # full-batch gradient steps of every fit
    regression_dim: int = setting(2, "Hidden dimension of the regression fits.")
    class_dim: int = setting(10, "Hidden dimension of the classification fits (>= classes).")
    num_samples: int = setting(2000, like="fit")
    train_fraction: float = setting(1.0, like="fit")  # of the image training set (full batch)
    regression_lr: float = setting(9.0, "Learning rate of the regression fits.")
    class_lr: float = setting(10.0, "Learning rate of the classification fits.")
    p_var: float = setting(2.0, like=["paths", "norm"])  # of the rescaled path
    device: str = setting("auto", like="fit")

    def validate(self) -> None:
        check(len(self.alphas) >= 2, "--alphas needs at least two values to compare")
        check(len(self.depths) >= 2, "--depths needs at least two depths")
        check(bool(self.regression or self.classification), "give --regression or --classification")


PRESETS = {
    "smoke": Settings(),
    # Fashion-MNIST: 20% of the training set (12000 images, full batch, the thesis' fraction), 100 steps, L up to
    # 512, 3 seeds (measured here: 40 steps on 10% take 3.5 minutes, 85% of it in the Fashion-MNIST fits)
    "cpu": Settings(classification="fashion_mnist", depths=(8, 32, 128, 512), seeds=(1234, 1235, 1236), epochs=100,
                    train_fraction=0.2),
    # the thesis' setting: MNIST (20% of the training set, its default) and sin, L up to 1024
    "paper": Settings(classification="mnist", depths=(8, 32, 128, 512, 1024), seeds=(1234, 1235, 1236, 1237, 1238),
                      epochs=200, train_fraction=0.2, regression_dim=10, class_dim=10),
}


def _fit_values(s: Settings, dataset: str, L: int, alpha: float, seed: int) -> dict:
    regression = dataset == s.regression
    v = {"dataset": dataset, "data_path": s.data_path, "L": L, "alpha": alpha, "gamma": 1.0, "init": "ntrunc",
         "dim": s.regression_dim if regression else s.class_dim, "store_grad": True, "epochs": s.epochs, "seed": seed,
         "lr": s.regression_lr if regression else s.class_lr, "batch_size": 0, "device": s.device}
    if regression:
        v["num_samples"] = s.num_samples
    else:
        v["train_fraction"] = s.train_fraction
    return v


def log_log_slope(Ls, values) -> float:
    """Least-squares slope of log(value) against log(L); nan when undefined."""
    import numpy as np

    x, y = np.log(np.asarray(Ls, float)), np.asarray(values, float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(x[ok], np.log(y[ok]), 1)[0])


def run(study: Study) -> None:
    s: Settings = study.settings
    datasets = [d for d in (s.regression, s.classification) if d]
    results = {}  # (dataset, alpha) -> {"fits": {(L, seed): run}, "rho": {...}, "paths": run id, "table": run id}
    for ds in datasets:
        for alpha in s.alphas:
            fits, rho = {}, {}
            for L in s.depths:
                for seed in s.seeds:
                    tag = f"{ds}-a{alpha:g}-L{L}-s{seed}"
                    fit = study.child(f"fit-{tag}", "fit", _fit_values(s, ds, L, alpha, seed), resumable=True)
                    fits[(L, seed)] = fit.run_id
                    cf = study.child(f"curvefit-{tag}", "curve-fit", {"run": fit.run_id})
                    rho[(L, seed)] = study.run(cf.run_id).data.metrics.get("fit_rho", math.nan)
            ids = [fits[k] for k in sorted(fits)]
            beta = 1.0 - alpha
            paths = study.child(f"paths-{ds}-a{alpha:g}", ["paths", "norm"], {"sources": ids, "beta": beta, "ci": True})
            table = study.child(f"pvar-{ds}-a{alpha:g}", ["paths", "norm"],
                                {"sources": ids, "beta": beta, "p_var": s.p_var, "pvar_only": True})
            results[(ds, alpha)] = {"fits": fits, "rho": rho, "paths": paths.run_id, "table": table.run_id}
    study.publish(report(study, results))


def _pvar_by_run(study: Study, table_run: str) -> dict[int, list[float]]:
    doc = study.load_json(table_run, "paths/paths_norm.json")
    return {int(L): list(v) for L, v in doc["pvar"].items()}


def report(study: Study, results: dict) -> Report:
    import matplotlib.image as mpimg
    from matplotlib.figure import Figure

    s: Settings = study.settings
    claims, rows, slopes_by = [], [], {}
    for (ds, alpha), r in results.items():
        pv = _pvar_by_run(study, r["table"])
        Ls = sorted(pv)
        runs = min(len(v) for v in pv.values())
        slopes = [log_log_slope(Ls, [pv[L][i] for L in Ls]) for i in range(runs)]
        slopes_by[(ds, alpha)] = slopes
        _, _, lo, hi = mean_ci(slopes)
        m = mean_ci(slopes)[0]
        claims.append(Claim(
            f"bounded_pvar_{ds}_alpha{alpha:g}", QUOTE_TITLE, SEED,
            f"{ds}, alpha = {alpha:g}: slope of log {s.p_var:g}-variation of k/L -> L^{1 - alpha:g} W_k against log L "
            f"(L = {', '.join(map(str, Ls))}), one slope per seed", fmt_spread(slopes),
            f"regular (bounded) holds if the 95% t-interval of the slope lies below {SLOPE_BOUND} (p-variation grows slower "
            f"than L^{SLOPE_BOUND}), does not hold if it lies above, else inconclusive",
            verdict_by_interval(lo, hi, SLOPE_BOUND, above_holds=False), m))
        for L in Ls:
            rh = [r["rho"][(L, seed)] for seed in s.seeds if (L, seed) in r["rho"]]
            rows.append([ds, alpha, L, fmt_spread(pv[L]), fmt_spread(rh)])
    datasets = sorted({ds for ds, _ in results})
    for ds in datasets:
        a0, a1 = min(s.alphas), max(s.alphas)
        d = [x - y for x, y in zip(slopes_by[(ds, a1)], slopes_by[(ds, a0)])]
        _, _, lo, hi = mean_ci(d)
        claims.append(Claim(
            f"alpha_dependence_{ds}", QUOTE_TITLE, SEED,
            f"{ds}: slope at alpha = {a1:g} minus slope at alpha = {a0:g} (paired by seed); the thesis' question is "
            "how regularity depends on alpha", fmt_spread(d),
            "'regularity increases with alpha' holds if the 95% t-interval of the difference lies below 0, does not hold if "
            "it lies above 0, else inconclusive", verdict_by_interval(lo, hi, 0.0, above_holds=False),
            mean_ci(d)[0]))
    figures = {}
    for (ds, alpha), r in results.items():  # the paths figures as `paths norm` drew them
        png = next(p for p in study.artifacts(r["paths"], "figures") if p.endswith(".png"))
        import mlflow

        local = mlflow.artifacts.download_artifacts(run_id=r["paths"], artifact_path=png)
        fig = Figure(figsize=(6, 4.5), layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(mpimg.imread(local))
        ax.set_axis_off()
        figures[f"paths_{ds}_alpha{alpha:g}"] = fig
    figures["pvar_vs_L"] = _pvar_figure(study, results, s)
    return Report(
        title="depth_limit study: regularity of rescaled weight paths as L grows", project="depth_limit",
        scale=study.scale,
        summary=(f"Depth-limit ResNets (gamma 1, ntrunc init, skip rule) fitted by full-batch gradient descent for "
                 f"{s.epochs} steps at L = {', '.join(map(str, s.depths))}, alpha = {', '.join(map(str, s.alphas))}, "
                 f"{len(s.seeds)} seeds, on {', '.join(datasets)}"
                 + (f" ({s.train_fraction:.0%} of the image training set)" if s.classification else "") + ". "
                 + ("" if study.scale == "paper" else "Reduced from the thesis: far fewer gradient steps and seeds, "
                                                      "and depths only up to the largest L listed.")),
        claims=claims,
        tables=[(f"{s.p_var:g}-variation of the rescaled path and the Omega(t) decay exponent rho per L",
                 ["dataset", "alpha", "L", f"{s.p_var:g}-variation (over seeds)", "Omega fit rho (over seeds)"], rows)],
        figures=figures,
        captions={"pvar_vs_L": "p-variation of the rescaled weight path against L (mean and per seed), log-log"})


def _pvar_figure(study: Study, results: dict, s: Settings):
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for (ds, alpha), r in results.items():
        pv = _pvar_by_run(study, r["table"])
        Ls = sorted(pv)
        line, = ax.plot(Ls, [np.mean(pv[L]) for L in Ls], "o-", label=f"{ds}, alpha={alpha:g}")
        for L in Ls:
            ax.scatter([L] * len(pv[L]), pv[L], s=8, color=line.get_color(), alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("L (residual blocks)")
    ax.set_ylabel(f"{s.p_var:g}-variation of L^beta W")
    ax.legend(fontsize=7)
    return fig
