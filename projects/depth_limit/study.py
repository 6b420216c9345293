"""``geomlab depth-limit study``: is the trained, rescaled weight path of a depth-limit ResNet regular as L grows?

For every dataset (the regression set ``sin`` and an image set), scaling exponent alpha, depth L and seed: fit the
depth-limit ResNet (``fit --store-grad``; its epoch-0 snapshot holds the initial weights), then fit Omega(t) ~
C/(t+1)^rho (``curve-fit --run``). Per (dataset, alpha): the rescaled weight paths k/L -> |L^beta W_k| for every L
(``paths norm``, beta = 1 - alpha) and the p-variation tables of the trained and of the initial weights
(``paths norm --pvar-only``).

The seed (the thesis' companion-code README) states no result, so every claim of the report is a hypothesis of this
study, derived from what the README does say (its title, the "regularizing parameter" delta_L, the p-variation of
the rescaled weights; see :data:`PAPER`). The statistic is scale-free: the *order ratio* r_L, the p-variation of the
path over that of the same layers in random orders (:func:`projects.depth_limit.pvar.order_ratio`). A path of
bounded p-variation relative to its spread has r_L ~ L^(-1/p); layers that are exchangeable (the i.i.d. initial
weights) have r_L ~ 1 at every L. So the slope of log r_L against log L is the test, the initial weights of the same
fits are its null (paired by seed), and no verdict can come from the path's amplitude (the old statistic, the slope of
the raw p-variation, is shown beside it for the trained and the initial weights, but no verdict rests on it: a path
that shrinks with L passes it, the untrained one included). Every verdict first checks that its fits trained: the
last full-batch training loss at most the first / ``--min-fall``; otherwise the claim is "not tested".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

from shared.errors import check
from shared.study import (SEEDS_HELP, Claim, Paper, PaperClaim, Precondition, Report, Study, fmt_spread, mean_ci,
                          setting, verdict_vs_null)

#: the lr rule of the thesis' resnet_cifar10.py, eta = L^(alpha - beta - LR_OFFSET) (here times the base rate)
LR_OFFSET = 0.05
LR_RULES = ("depth", "fixed")
#: the claim-name prefixes of each of the thesis' statements that the report tests (PAPER's tested_by follows them)
BOUNDED, ALPHA = "bounded_pvar_", "alpha_dependence_"
#: the smallest alpha effect that counts, as a share of 1/p (the slope gap between exchangeable and bounded paths)
ALPHA_SHARE = 0.25

PAPER = Paper(
    reference=("“Weights regularity for Residual Neural Networks in the depth limit”, a thesis (2024; its author is "
               "not named in the seed README), with its companion code github.com/ladezai/residual-network, whose "
               "README is the seed"),
    claims=(
        PaperClaim("weights_regularity", "title",
                   "Weights regularity for Residual Neural Networks in the depth limit",
                   tuple(f"{BOUNDED}{d}_alpha{a:g}" for d in ("sin", "fashion_mnist") for a in (0.5, 0.75))),
        PaperClaim("regularizing_delta", "README, Models and hyper-parameters (`alpha`)",
                   "describing the rate of the regularizing parameter $\\delta_L = L^\\alpha$ with $L$ being the "
                   "number of layers of the network.",
                   tuple(f"{ALPHA}{d}" for d in ("sin", "fashion_mnist"))),
        PaperClaim("rescaled_trajectories", "README, Paths visualization (`beta`)",
                   "`beta` corresponds to the rescaling $L^\\beta$ applied to the trajectories before plotting.",
                   why_not="a convention, not a result: the study rescales every path by L^beta with beta = 1 - alpha "
                           "(the figures and the raw p-variation table); its verdicts use a scale-free statistic, "
                           "which no rescaling changes"),
        PaperClaim("irregular_is_inefficient", "README, Models and hyper-parameters (`dynamic_lr`)",
                   "The idea being that if the trajectory becomes less and less regular, we should stop the "
                   "learning procedure as it is an inefficient optimization path.",
                   why_not="the rationale of --dynamic-lr, stated as an idea; the study trains at a set learning "
                           "rate and does not compare how efficiently regular and irregular paths optimize"),
        PaperClaim("omega_decay", "README, Curve fitting procedure for Omega(t) (`infer_shift`)",
                   "If true, the fitting procedure uses a function $$g(t) = C/(t+T_0)^\\rho$$ with $C, T_0, \\rho$ "
                   "as the parameters to infer.",
                   why_not="the README fits Omega(t) by a power law but states no exponent to test; the report "
                           "tables the fitted rho of every L"),
    ))


@dataclass(frozen=True)
class Settings:
    regression: str = setting("sin", "Regression set (sin or constant; empty: none).")
    classification: str = setting("digits", "Image set (any of `geomlab datasets`; empty: none).")
    data_path: str = setting("./data", like="fit")
    depths: tuple = setting((8, 16, 32), "Depths L (comma-separated, at least two; three or more "
                                         "for a fitted slope: the statistic is a slope against log L).")
    alphas: tuple = setting((0.5, 0.75), "Scaling exponents alpha (comma-separated, at least two).")
    seeds: tuple = setting((1234, 1235), SEEDS_HELP)  # each fits every (dataset, alpha, L) once (paired by seed)
    epochs: int = setting(60, like="fit")  # full-batch gradient steps of every fit
    regression_dim: int = setting(10, "Hidden dimension of the regression fits.")
    class_dim: int = setting(10, "Hidden dimension of the classification fits (>= classes).")
    num_samples: int = setting(200, like="fit")
    train_fraction: float = setting(1.0, like="fit")  # of the image training set (full batch)
    regression_lr: float = setting(4.0, "Learning rate of the regression fits (--lr-rule depth: its base rate).")
    class_lr: float = setting(5.0, "Learning rate of the classification fits (--lr-rule depth: its base rate).")
    lr_rule: str = setting("depth", "fixed: every fit at its set's rate (the thesis' fit examples); depth: that "
                                    "rate times L^(alpha - beta - 0.05) (beta = 1 - alpha), the rule of the thesis' "
                                    "resnet_cifar10.py, under which every L and alpha takes about the same step in "
                                    "function space (not the thesis' rule for fit).")
    p_var: float = setting(2.0, like=["paths", "norm"])  # of the rescaled path
    shuffles: int = setting(16, "Random layer orders in the denominator of the order ratio.")
    min_fall: float = setting(2.0, "A regression fit has trained when its last full-batch training loss (mean "
                                   "squared error) is at most its first divided by this factor; every verdict needs "
                                   "all of its fits trained.")
    class_min_fall: float = setting(1.25, "The same factor for the classification fits (cross-entropy, which "
                                          "starts at chance, log 10 = 2.30).")
    log_pvar: bool = setting(False, like="fit")
    device: str = setting("auto", like="fit")

    def validate(self) -> None:
        check(len(self.alphas) >= 2, "--alphas needs at least two values to compare")
        check(len(set(self.depths)) >= 2 and all(isinstance(L, int) and L >= 2 for L in self.depths),
              f"--depths needs at least two different depths >= 2 (a slope against log L), got "
              f"{','.join(map(str, self.depths))}")
        check(len(self.seeds) >= 2 and len(set(self.seeds)) == len(self.seeds)
              and all(isinstance(v, int) for v in self.seeds),
              f"--seeds needs at least two different integer seeds (the verdicts pair by seed), got "
              f"{','.join(map(str, self.seeds))}")
        check(bool(self.regression or self.classification), "give --regression or --classification")
        check(self.lr_rule in LR_RULES, f"--lr-rule must be one of: {', '.join(LR_RULES)}; got {self.lr_rule!r}")
        check(self.shuffles >= 2, f"--shuffles must be >= 2, got {self.shuffles}")
        for name, v in (("min-fall", self.min_fall), ("class-min-fall", self.class_min_fall)):
            check(v > 1.0, f"--{name} must be > 1 (the factor by which the loss must fall), got {v}")
        check(self.p_var >= 1.0, f"--p-var must be >= 1, got {self.p_var}")


PRESETS = {
    # the embedded 8x8 digits and sin, small depths: shows the study runs end to end, says nothing about the thesis
    "smoke": Settings(),
    # Fashion-MNIST (10 % of the training set, full batch) and sin (200 points: x in +-0.025; dim 10), L up to 512,
    # 3 seeds, 100 full-batch steps, the depth rule for the rate. Measured here before it was fixed (100 steps): at
    # the fixed rate 9, alpha = 0.75 does not train on sin (the loss stays at 0.49); with 2000 points (x in +-0.0077)
    # and dim 2 some seeds stay on the loss plateau; with base rate 9 at alpha = 0.5 the L = 512 fits oscillate
    # (loss 0.49 -> 0.32); with 200 points, dim 10 and base 4 every fit leaves the plateau by step 45. On
    # Fashion-MNIST, base 10 makes alpha = 0.5, L = 512 oscillate (2.34 -> 2.08); base 5 falls x1.55 to x1.72 there
    # and x1.44 to x1.62 at L = 8. The time of each child is in STUDIES.md.
    "cpu": Settings(classification="fashion_mnist", depths=(8, 32, 128, 512), seeds=(1234, 1235, 1236), epochs=100,
                    train_fraction=0.1),
    # the thesis' setting: MNIST (20% of the training set, its default) and sin (2000 points), L up to 1024, its
    # fixed rate (9, as in both of its fit examples), the p-variations logged every step
    "paper": Settings(classification="mnist", depths=(8, 32, 128, 512, 1024), seeds=(1234, 1235, 1236, 1237, 1238),
                      epochs=200, train_fraction=0.2, num_samples=2000, regression_lr=9.0, class_lr=9.0,
                      lr_rule="fixed", log_pvar=True),
}


# ------------------------------------------------------------------------------------------------------------------
# pure helpers (the tests call them)


def fit_lr(base: float, rule: str, L: int, alpha: float) -> float:
    """The learning rate of a fit: ``base`` (rule fixed) or ``base * L^(alpha - beta - 0.05)`` with beta = 1 - alpha
    (rule depth, the thesis' resnet_cifar10 rule: the gradient of a block is O(L^-alpha), so this rate gives every L
    and alpha about the same step in function space)."""
    check(rule in LR_RULES, f"unknown lr rule {rule!r}; use one of: {', '.join(LR_RULES)}")
    return float(base) if rule == "fixed" else float(base) * float(L) ** (alpha - (1.0 - alpha) - LR_OFFSET)


def log_log_slope(Ls, values) -> float:
    """Least-squares slope of log(value) against log(L); nan when undefined."""
    import numpy as np

    x, y = np.log(np.asarray(Ls, float)), np.asarray(values, float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(x[ok], np.log(y[ok]), 1)[0])


def slopes_by_seed(values: dict[tuple[int, int], float], depths: Sequence[int], seeds: Sequence[int]) -> list[float]:
    """One :func:`log_log_slope` per seed of {(L, seed): value} over ``depths`` (nan where a seed lacks a depth)."""
    out = []
    for seed in seeds:
        if any((L, seed) not in values for L in depths):
            out.append(math.nan)
            continue
        out.append(log_log_slope(depths, [values[(L, seed)] for L in depths]))
    return out


def loss_fall(first: float, last: float) -> float:
    """first / last training loss (inf when the last is 0, nan when either is not finite or the first is <= 0)."""
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0:
        return math.nan
    return math.inf if last <= 0 else first / last


def trained_precondition(losses: dict[str, tuple[float, float]], factor: float) -> Precondition:
    """Every fit trained: its last training loss at most its first / ``factor``. ``losses``: label -> (first, last).
    No fits, or a fit without a loss, fails."""
    falls = {k: loss_fall(a, b) for k, (a, b) in losses.items()}
    bad = [k for k, f in falls.items() if not (math.isfinite(f) or f == math.inf) or f < factor]
    finite = [f for f in falls.values() if not math.isnan(f)]
    if not falls:
        measured = "no fits"
    else:
        worst = min(falls, key=lambda k: (not math.isnan(falls[k]), falls[k]))
        a, b = losses[worst]
        measured = (f"{len(falls) - len(bad)} of {len(falls)} fits fell by x{factor:g} or more; smallest fall "
                    f"x{min(finite):.3g} ({worst}: {a:.4g} -> {b:.4g})" if finite else
                    f"{len(falls)} fits without a finite loss")
        if bad:
            measured += f"; not trained: {', '.join(bad[:6])}" + (" ..." if len(bad) > 6 else "")
    return Precondition("fits trained", measured, f"last full-batch training loss <= first / {factor:g} in every fit",
                        bool(falls) and not bad)


def bounded_min_effect(p: float) -> float:
    """Half of 1/p: half-way between exchangeable layers (slope 0) and a bounded p-variation (slope -1/p)."""
    return 0.5 / p


def alpha_min_effect(p: float) -> float:
    return ALPHA_SHARE / p


def bounded_claim(ds: str, alpha: float, trained: list[float], initial: list[float], precondition: Precondition, *,
                  p: float, depths: Sequence[int], shuffles: int) -> Claim:
    """The trained path's order-ratio slope lies below the initial weights' (paired by seed) by >= 1/(2p)."""
    eff = bounded_min_effect(p)
    verdict, d = verdict_vs_null(trained, initial, min_effect=eff, larger=False)
    return Claim(
        f"{BOUNDED}{ds}_alpha{alpha:g}",
        "after training, the rescaled weight path k/L -> L^beta W_k has a bounded p-variation relative to its spread "
        "as L grows (it is regular in the depth limit), which the initial weights, whose layers are i.i.d., do not",
        "study hypothesis, from the thesis' title and its p-variation of the rescaled weights (the seed states no "
        "result)",
        f"{ds}, alpha = {alpha:g}: per seed, the slope over L = {', '.join(map(str, depths))} of log r_L, where the "
        f"order ratio r_L is the {p:g}-variation of the path x_k = L^{1 - alpha:g} vec W_k over the mean "
        f"{p:g}-variation of the same layers in {shuffles} random orders (scale-free: about 1 for exchangeable "
        f"layers at every L, about L^(-1/p) for a path of bounded p-variation)",
        f"trained weights: {fmt_spread(trained)}; paired (initial - trained): {fmt_spread(d)}",
        f"holds when the trained slope lies below the initial weights' by at least 1/(2p) = {eff:g} (half-way from "
        "exchangeable layers to a bounded p-variation), the arms' 95% t-intervals apart and the paired interval above "
        f"0; does not hold when the paired 95% t-interval lies wholly below {eff:g}; else inconclusive "
        "(verdict_vs_null)",
        verdict, mean_ci(d)[0] if d else None,
        null=f"the same slope of the initial weights of the same fits (their epoch-0 snapshots): {fmt_spread(initial)}",
        null_value=mean_ci(initial)[0], preconditions=[precondition], hypothesis=True)


def alpha_claim(ds: str, a0: float, a1: float, trained: list[float], initial: list[float],
                preconditions: list[Precondition], *, p: float) -> Claim:
    """The order-ratio slope at the larger alpha minus that at the smaller (paired by seed) lies below the same
    difference of the initial weights by >= ALPHA_SHARE / p."""
    eff = alpha_min_effect(p)
    verdict, d = verdict_vs_null(trained, initial, min_effect=eff, larger=False)
    return Claim(
        f"{ALPHA}{ds}",
        f"a larger alpha (a smaller delta_L = L^-alpha, the thesis' 'regularizing parameter') gives a more regular "
        f"trained path: its order-ratio slope is lower at alpha = {a1:g} than at alpha = {a0:g}",
        "study hypothesis, from the thesis' name for delta_L, 'the regularizing parameter' (the seed states no result)",
        f"{ds}: per seed, the order-ratio slope (as in {BOUNDED}{ds}_alpha*) at alpha = {a1:g} minus that at alpha = "
        f"{a0:g}; scale-free, so the update's amplitude (L^(1-2 alpha) at a fixed rate) does not enter it",
        f"trained weights: {fmt_spread(trained)}; paired (initial - trained): {fmt_spread(d)}",
        f"holds when the trained difference lies below the initial weights' by at least {ALPHA_SHARE:g}/p = {eff:g} "
        f"(a {ALPHA_SHARE:.0%} share of the slope gap 1/p between exchangeable layers and a bounded p-variation), "
        f"the arms' 95% t-intervals apart and the paired interval above 0; does not hold when the paired 95% "
        f"t-interval lies wholly below {eff:g}; else inconclusive (verdict_vs_null)",
        verdict, mean_ci(d)[0] if d else None,
        null=f"the same difference of the initial weights (both alphas' epoch-0 snapshots): {fmt_spread(initial)}",
        null_value=mean_ci(initial)[0], preconditions=list(preconditions), hypothesis=True)


def paper_for(claims: Sequence[Claim]) -> Paper:
    """PAPER with each statement's tested_by set to the report's claims that test it (their names follow the
    datasets and alphas of the run)."""
    prefixes = {"weights_regularity": BOUNDED, "regularizing_delta": ALPHA}
    out = []
    for pc in PAPER.claims:
        pre = prefixes.get(pc.name)
        out.append(dataclasses.replace(pc, tested_by=tuple(c.name for c in claims if c.name.startswith(pre)))
                   if pre else pc)
    return Paper(PAPER.reference, tuple(out))


# ------------------------------------------------------------------------------------------------------------------
# the study


def _fit_values(s: Settings, dataset: str, L: int, alpha: float, seed: int, precision: str,
                channels_last: bool) -> dict:
    regression = dataset == s.regression
    base = s.regression_lr if regression else s.class_lr
    v = {"dataset": dataset, "data_path": s.data_path, "L": L, "alpha": alpha, "gamma": 1.0, "init": "ntrunc",
         "dim": s.regression_dim if regression else s.class_dim, "store_grad": True, "log_pvar": s.log_pvar,
         "epochs": s.epochs, "seed": seed, "lr": fit_lr(base, s.lr_rule, L, alpha), "batch_size": 0,
         "device": s.device, "precision": precision, "channels_last": channels_last}
    if regression:
        v["num_samples"] = s.num_samples
    else:
        v["train_fraction"] = s.train_fraction
    return v


def _initial_snapshot(run_id: str) -> str:
    from shared.experiment import run_snapshots

    snaps = [uri for epoch, uri in run_snapshots(run_id) if epoch == 0]
    check(bool(snaps), f"fit run {run_id} has no epoch-0 snapshot (snapshots/epoch_000.pt): the initial weights")
    return snaps[0]


def run(study: Study) -> None:
    from shared.hardware import fast_precision

    s: Settings = study.settings
    precision, channels_last = fast_precision(s.device)
    datasets = [d for d in (s.regression, s.classification) if d]
    results = {}  # (dataset, alpha) -> {"fits": {(L, seed): run id}, "init": {...}, "rho": {...}, tables' run ids}
    for ds in datasets:
        for alpha in s.alphas:
            fits, init, rho = {}, {}, {}
            for L in s.depths:
                for seed in s.seeds:
                    tag = f"{ds}-a{alpha:g}-L{L}-s{seed}"
                    fit = study.child(f"fit-{tag}", "fit", _fit_values(s, ds, L, alpha, seed, precision,
                                                                       channels_last), resumable=True)
                    fits[(L, seed)] = fit.run_id
                    init[(L, seed)] = _initial_snapshot(fit.run_id)
                    cf = study.child(f"curvefit-{tag}", "curve-fit", {"run": fit.run_id})
                    rho[(L, seed)] = study.run(cf.run_id).data.metrics.get("fit_rho", math.nan)
            keys = sorted(fits)
            beta = 1.0 - alpha
            paths = study.child(f"paths-{ds}-a{alpha:g}", ["paths", "norm"],
                                {"sources": [fits[k] for k in keys], "beta": beta, "ci": True})
            table = study.child(f"pvar-{ds}-a{alpha:g}", ["paths", "norm"],
                                {"sources": [fits[k] for k in keys], "beta": beta, "p_var": s.p_var,
                                 "pvar_only": True})
            table0 = study.child(f"pvar-init-{ds}-a{alpha:g}", ["paths", "norm"],
                                 {"sources": [init[k] for k in keys], "beta": beta, "p_var": s.p_var,
                                  "pvar_only": True})
            results[(ds, alpha)] = {"fits": fits, "init": init, "rho": rho, "paths": paths.run_id,
                                    "table": table.run_id, "table0": table0.run_id}
    study.publish(report(study, results, precision, channels_last))


def _by_run(study: Study, table_run: str, keys: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """{(L, seed): p-variation} from a `paths norm --pvar-only` table (its runs per L in the order of the sorted
    keys that the study passed)."""
    doc = study.load_json(table_run, "paths/paths_norm.json")
    pv = {int(L): list(v) for L, v in doc["pvar"].items()}
    out = {}
    for L in sorted({k[0] for k in keys}):
        seeds = [k[1] for k in keys if k[0] == L]
        for seed, v in zip(seeds, pv.get(L, [])):
            out[(L, seed)] = float(v)
    return out


def _losses(study: Study, run_id: str) -> tuple[float, float, list[float]]:
    hist = [v for _, v in study.metric_history(run_id, "train_loss")]
    return (hist[0], hist[-1], hist) if hist else (math.nan, math.nan, [])


def _measure(study: Study, results: dict, s: Settings) -> dict:
    """Per (dataset, alpha): the order ratios and raw p-variations of the trained weights, the initial ones and the
    change, per (L, seed), and every fit's training loss."""
    from projects.depth_limit import paths as P
    from projects.depth_limit.inputs import load_weight_sources
    from projects.depth_limit.models import weight_path
    from projects.depth_limit.pvar import p_variation

    out = {}
    for (ds, alpha), r in results.items():
        beta = 1.0 - alpha
        m = {"ratio": {}, "ratio0": {}, "ratio_change": {}, "pv_change": {}, "loss": {}, "hist": {}}
        for key, rid in r["fits"].items():
            (_, w1, _), = load_weight_sources([rid])
            (_, w0, _), = load_weight_sources([r["init"][key]])
            dw = P.weight_change(w1, w0)
            m["ratio"][key] = P.layer_order_ratio(w1, s.p_var, beta, s.shuffles)
            m["ratio0"][key] = P.layer_order_ratio(w0, s.p_var, beta, s.shuffles)
            m["ratio_change"][key] = P.layer_order_ratio(dw, s.p_var, beta, s.shuffles)
            m["pv_change"][key] = p_variation(weight_path(dw, beta), s.p_var).norm
            first, last, hist = _losses(study, rid)
            m["loss"][key] = (first, last)
            m["hist"][key] = hist
        keys = sorted(r["fits"])
        m["pv"] = _by_run(study, r["table"], keys)
        m["pv0"] = _by_run(study, r["table0"], keys)
        out[(ds, alpha)] = m
    return out


def report(study: Study, results: dict, precision: str = "fp32", channels_last: bool = False) -> Report:
    s: Settings = study.settings
    depths, seeds = sorted(s.depths), list(s.seeds)
    meas = _measure(study, results, s)
    claims, pre_by, slopes = [], {}, {}
    for (ds, alpha), m in meas.items():
        pre = trained_precondition({f"L{L} seed {seed}": m["loss"][(L, seed)] for L, seed in sorted(m["loss"])},
                                   s.min_fall if ds == s.regression else s.class_min_fall)
        pre_by[(ds, alpha)] = pre
        tr = slopes_by_seed(m["ratio"], depths, seeds)
        ini = slopes_by_seed(m["ratio0"], depths, seeds)
        slopes[(ds, alpha)] = (tr, ini)
        claims.append(bounded_claim(ds, alpha, tr, ini, pre, p=s.p_var, depths=depths, shuffles=s.shuffles))
    for ds in sorted({ds for ds, _ in meas}, key=[d for d in (s.regression, s.classification) if d].index):
        a0, a1 = min(s.alphas), max(s.alphas)
        (t0, i0), (t1, i1) = slopes[(ds, a0)], slopes[(ds, a1)]
        pres = [dataclasses.replace(pre_by[(ds, a)], name=f"fits trained at alpha = {a:g}") for a in (a0, a1)]
        claims.append(alpha_claim(ds, a0, a1, [y - x for x, y in zip(t0, t1)], [y - x for x, y in zip(i0, i1)],
                                  pres, p=s.p_var))
    tables = _tables(s, results, meas, slopes)
    figures, captions = _figures(study, results, meas, s)
    datasets = [d for d in (s.regression, s.classification) if d]
    lr_text = (f"at a fixed rate ({s.regression_lr:g} on {s.regression or '-'}, {s.class_lr:g} on "
               f"{s.classification or '-'})" if s.lr_rule == "fixed" else
               f"at the rate base * L^(alpha - beta - {LR_OFFSET:g}) (the thesis' resnet_cifar10 rule; base "
               f"{s.regression_lr:g} on {s.regression or '-'}, {s.class_lr:g} on {s.classification or '-'})")
    summary = (f"Depth-limit ResNets (tanh, skip rule, gamma 1, ntrunc init) fitted by full-batch gradient descent for "
               f"{s.epochs} steps {lr_text} at L = {', '.join(map(str, depths))}, alpha = "
               f"{', '.join(f'{a:g}' for a in s.alphas)}, {len(seeds)} seeds, on {', '.join(datasets)}"
               + (f" ({s.train_fraction:.0%} of the image training set)" if s.classification else "")
               + (f"; sin: {s.num_samples} points, dim {s.regression_dim}" if s.regression == "sin" else "") + ". "
               + ("" if study.scale == "paper" else "Reduced from the thesis: fewer gradient steps and seeds, depths "
                                                    "only up to the largest L listed"
                  + ("" if s.lr_rule == "fixed" else ", and the depth rule for the learning rate") + ". ")
               + "The seed states no result: every claim below is a hypothesis of this study.")
    spent = (f"{len(datasets) * len(s.alphas) * len(depths) * len(seeds)} fits ({len(depths)} depths x "
             f"{len(s.alphas)} alphas x {len(seeds)} seeds per data set), each with its Omega curve fit; per (data "
             "set, alpha) one figure and two p-variation tables (trained, initial). The order ratios are computed "
             "in the report from the fits' weights.")
    return Report(
        title="depth_limit study: regularity of rescaled weight paths as L grows", project="depth_limit",
        scale=study.scale, summary=summary, claims=claims, tables=tables, figures=figures, captions=captions,
        paper=paper_for(claims), spent=spent,
        hardware={"precision": precision, "channels_last": str(channels_last)})


def _tables(s: Settings, results: dict, meas: dict, slopes: dict) -> list:
    depths = sorted(s.depths)
    loss_rows, ratio_rows, slope_rows = [], [], []
    for (ds, alpha), m in meas.items():
        base = s.regression_lr if ds == s.regression else s.class_lr
        for L in depths:
            ks = [(L, seed) for seed in s.seeds if (L, seed) in m["loss"]]
            first = [m["loss"][k][0] for k in ks]
            last = [m["loss"][k][1] for k in ks]
            falls = [loss_fall(a, b) for a, b in zip(first, last)]
            loss_rows.append([ds, alpha, L, f"{fit_lr(base, s.lr_rule, L, alpha):.4g}", fmt_spread(first),
                              fmt_spread(last), f"{min(falls):.3g}" if falls else "n/a"])
            rho = [results[(ds, alpha)]["rho"][k] for k in ks]
            ratio_rows.append([ds, alpha, L, fmt_spread([m["ratio"][k] for k in ks]),
                               fmt_spread([m["ratio0"][k] for k in ks]), fmt_spread([m["ratio_change"][k] for k in ks]),
                               fmt_spread([m["pv"][k] for k in ks if k in m["pv"]]),
                               fmt_spread([m["pv0"][k] for k in ks if k in m["pv0"]]),
                               fmt_spread([m["pv_change"][k] for k in ks]), fmt_spread(rho)])
        tr, ini = slopes[(ds, alpha)]
        raw = slopes_by_seed(m["pv"], depths, s.seeds)
        raw0 = slopes_by_seed(m["pv0"], depths, s.seeds)
        rawd = slopes_by_seed(m["pv_change"], depths, s.seeds)
        slope_rows.append([ds, alpha, fmt_spread(tr), fmt_spread(ini),
                           fmt_spread(slopes_by_seed(m["ratio_change"], depths, s.seeds)), fmt_spread(raw),
                           fmt_spread(raw0), fmt_spread(rawd),
                           f"{1 - 2 * alpha:g}" if s.lr_rule == "fixed" else f"{-LR_OFFSET:g}"])  # L^beta lr L^-alpha
    p = f"{s.p_var:g}"
    return [
        ("Training (the precondition of every verdict): full-batch training loss, first and last step, over seeds",
         ["dataset", "alpha", "L", "lr", "first loss", "last loss", "smallest fall (first / last)"], loss_rows),
        (f"Order ratio r_L ({p}-variation over that of {s.shuffles} random layer orders; scale-free), raw "
         f"{p}-variation of the rescaled path L^beta W, and the Omega(t) decay exponent rho, per L (over seeds)",
         ["dataset", "alpha", "L", "r_L trained", "r_L initial", "r_L change (trained - initial)",
          f"{p}-variation trained", f"{p}-variation initial", f"{p}-variation change", "Omega fit rho"], ratio_rows),
        ("Slopes against log L per seed (over seeds). The verdicts use the order-ratio slopes only. The raw slope "
         "(the statistic of the first version of this study) follows the path's amplitude: the initial path's is "
         "about -1/2 (i.i.d. layers of size L^-1 after rescaling, whatever alpha), and the first gradient step "
         "moves the rescaled path by L^beta lr L^-alpha, whose exponent is 1 - 2 alpha at a fixed rate (-0.05 "
         "under the depth rule), so a raw slope below a bound can come from the amplitude alone",
         ["dataset", "alpha", "order ratio, trained", "order ratio, initial", "order ratio, change",
          "raw, trained", "raw, initial", "raw, change", "exponent of the first step's amplitude"], slope_rows),
    ]


def _figures(study: Study, results: dict, meas: dict, s: Settings):
    import matplotlib.image as mpimg
    import mlflow
    import numpy as np
    from matplotlib.figure import Figure

    depths = sorted(s.depths)
    figures, captions = {}, {}
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for (ds, alpha), m in meas.items():
        tr = [np.mean([m["ratio"][(L, sd)] for sd in s.seeds]) for L in depths]
        ini = [np.mean([m["ratio0"][(L, sd)] for sd in s.seeds]) for L in depths]
        line, = ax.plot(depths, tr, "o-", label=f"{ds}, alpha={alpha:g}, trained")
        ax.plot(depths, ini, "s--", color=line.get_color(), alpha=0.6, label=f"{ds}, alpha={alpha:g}, initial")
        for L in depths:
            ax.scatter([L] * len(s.seeds), [m["ratio"][(L, sd)] for sd in s.seeds], s=8, color=line.get_color(),
                       alpha=0.5)
    ref = np.asarray(depths, float)
    ax.plot(ref, (ref / ref[0]) ** (-1.0 / s.p_var), ":", color="grey", label=f"L^(-1/{s.p_var:g}) (bounded)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("L (residual blocks)")
    ax.set_ylabel("order ratio r_L")
    ax.legend(fontsize=6)
    figures["order_ratio_vs_L"] = fig
    captions["order_ratio_vs_L"] = ("order ratio of the rescaled weight path against L (mean over seeds, dots: seeds), "
                                    "trained (solid) and initial (dashed); the grey line has the slope -1/p of a path "
                                    "of bounded p-variation")
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for (ds, alpha), m in meas.items():
        tr = [np.mean([m["pv"][(L, sd)] for sd in s.seeds]) for L in depths]
        ini = [np.mean([m["pv0"][(L, sd)] for sd in s.seeds]) for L in depths]
        line, = ax.plot(depths, tr, "o-", label=f"{ds}, alpha={alpha:g}, trained")
        ax.plot(depths, ini, "s--", color=line.get_color(), alpha=0.6, label=f"{ds}, alpha={alpha:g}, initial")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("L (residual blocks)")
    ax.set_ylabel(f"{s.p_var:g}-variation of L^beta W")
    ax.legend(fontsize=6)
    figures["pvar_vs_L"] = fig
    captions["pvar_vs_L"] = ("raw p-variation of the rescaled weight path against L (mean over seeds), trained (solid) "
                             "and initial (dashed): it follows the path's amplitude, so no verdict uses it")
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    L = max(depths)
    for (ds, alpha), m in meas.items():
        for i, sd in enumerate(s.seeds):
            h = m["hist"].get((L, sd), [])
            if h:
                ax.plot(range(1, len(h) + 1), np.asarray(h) / h[0], lw=0.8,
                        color=f"C{list(meas).index((ds, alpha))}", label=f"{ds}, alpha={alpha:g}" if i == 0 else None)
    for f, ls in ((s.min_fall, ":"), (s.class_min_fall, "--")):
        ax.axhline(1.0 / f, color="grey", ls=ls, lw=0.8, label=f"1/{f:g} (trained)")
    ax.set_yscale("log")
    ax.set_xlabel("full-batch step")
    ax.set_ylabel("training loss / first")
    ax.legend(fontsize=6)
    figures["training_loss"] = fig
    captions["training_loss"] = f"training loss relative to the first step at L = {L}, every seed"
    for (ds, alpha), r in results.items():  # the paths figures as `paths norm` drew them
        png = next(p for p in study.artifacts(r["paths"], "figures") if p.endswith(".png"))
        local = mlflow.artifacts.download_artifacts(run_id=r["paths"], artifact_path=png)
        fig = Figure(figsize=(6, 4.5), layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(mpimg.imread(local))
        ax.set_axis_off()
        figures[f"paths_{ds}_alpha{alpha:g}"] = fig
    return figures, captions
