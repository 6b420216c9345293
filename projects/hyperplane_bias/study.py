"""``geomlab hyperplane-bias study``: the paper's experiment end to end (seed 001), with computed verdicts.

Per seed: train the network with a snapshot every epoch (the clean run), and on the first ``--control-seeds`` seeds
each control of ``--controls`` with the same settings and its own ``--noise-seed`` (the seed): random labels (every
training label drawn uniformly: no learnable signal), pixel shuffle (each training image's pixels permuted by its own
fixed permutation), label noise (``--control-noise`` of the labels moved to another class: the paper's control; it
keeps the signal, the true class stays the most frequent label). Then the projection statistics over training of
every run (``projections --run``, normalized), the re-initialization of the clean run's layers to their epoch-0
weights (``reinit --run --checkpoint-epochs 0 --rand``) and its correlation with the projection bias
(``correlate``). The untrained network is each run's own initialization (``epoch_000``), a random layer of every
width; the exact bias of random layers of each width is beside it (:func:`~.projections.random_layer_bias_pmf`).

Claims (each against its null, measured in the same study; a failed precondition makes it "not tested"):

* ``biased_in_many_layers``: per layer, the trained bias |mass - 0.5| against the same layer at its initialization,
  paired by seed; holds when at least half of the layers hold;
* ``emerges_from_training``: the network's pooled bias (``net``) trained against initialized, paired by seed;
* ``correlates_with_learning_<control>``: the clean run's pooled bias against the control's, paired by seed; needs a
  clean run that learned and a control whose test accuracy is at chance (no learnable signal) and that trained;
* ``biased_layers_are_critical``: per seed, Spearman's rho between each layer's bias beyond a random layer of its
  width and its re-initialization drop, against the same rho computed with the initialization's bias (and, to hold,
  better than the width's own rho with the drops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from shared.errors import check
from shared.study import (FAILS, HOLDS, INCONCLUSIVE, SEEDS_HELP, Claim, Paper, PaperClaim, Precondition, Report, Study,
                          fmt_spread, mean_ci, setting, spearman, verdict_vs_null)

SOURCE = "README, Introduction (the paper's main message)"
QUOTE_MANY = "Hyperplane arrangements of many layers of trained convolutional networks exhibit strong regularities"
QUOTE_EMERGE = "that emerge from training"
QUOTE_LEARNING = "correlate with learning"
QUOTE_CRITICAL = ("for low-complexity datasets, layers presenting biased hyperplane arrangements are critical to the "
                  "performance of the network")
QUOTE_RESET = ("when the bias is not observed, the corresponding layers' weights can be reset to their value at "
               "initialization without considerable loss in performance")

#: the controls the study can train, with what each changes in the clean run's training
CONTROLS = ("random", "shuffle", "noise")
CONTROL_TEXT = {"random": "random labels (every training label drawn uniformly from the K classes)",
                "shuffle": "pixel shuffle (each training image permuted by its own fixed permutation)",
                "noise": "label noise (the --control-noise fraction of labels moved to another class)"}

# -- the design's thresholds (stated in every report) ---------------------------------------------------------------
LEARNED_MARGIN = 0.25  # a clean run learned: test accuracy >= 1/K + 0.25 in every seed
CHANCE_TOLERANCE = 0.05  # a control has no learnable signal: test accuracy <= 1/K + 0.05 (within 5 pp of chance)
MOVED_FRACTION = 0.5  # a control trained: its weights moved from their initialization >= half as far as the clean run's
MIN_BIAS_EFFECT = 0.1  # the smallest bias difference that counts: a tenth of the filters beyond a balanced split
MIN_RHO_EFFECT = 0.5  # the smallest rank correlation (above its null) that makes biased layers "critical"
MIN_DROP_RANGE = 0.05  # the re-initialization drops must differ between layers by this much to be ranked
MANY = 0.5  # "many layers": at least half of them


@dataclass(frozen=True)
class Settings:
    arch: str = setting("lenet", like="train")  # every training setting: the same for every run
    dataset: str = setting("digits", like="train")
    data_path: str = setting("./data", like="train")
    seeds: tuple = setting((0, 1), SEEDS_HELP)  # each: a clean run, its re-initialization and correlation
    control_seeds: int = setting(2, "How many seeds (the first of --seeds) also train every control (each with "
                                    "--noise-seed = its seed); all of them when there are fewer seeds.")
    controls: tuple = setting(("random", "shuffle"), "Controls trained beside the clean run (comma-separated): random "
                                                   "(--random-labels: no learnable signal), shuffle (--pixel-shuffle), "
                                                   "noise (--control-noise of the labels corrupted: the paper's "
                                                   "control, which keeps the signal).")
    epochs: int = setting(3, like="train")
    train_fraction: float = setting(1.0, like="train")  # below 1: each seed its own subset (--split-seed = seed)
    batch_size: int = setting(64, like="train")
    lr: float = setting(0.01, like="train")  # SGD, momentum 0.9
    control_noise: float = setting(0.5, "Fraction of training labels corrupted in the label-noise control run.")
    max_test: int = setting(0, like="reinit")
    device: str = setting("auto", like="train")

    def validate(self) -> None:
        check(len(self.seeds) >= 1, "--seeds needs at least one seed")
        check(len(set(self.seeds)) == len(self.seeds), f"--seeds has a repeated seed: {self.seeds}")
        check(all(isinstance(k, int) for k in self.seeds), f"--seeds takes integers, got {self.seeds}")
        check(self.control_seeds >= 0, f"--control-seeds must be >= 0, got {self.control_seeds}")
        bad = [c for c in self.controls if c not in CONTROLS]
        check(not bad, f"--controls: unknown control(s) {', '.join(map(str, bad))}; use some of: {', '.join(CONTROLS)}")
        check(len(set(self.controls)) == len(self.controls), f"--controls has a repeated control: {self.controls}")
        check(0 < self.control_noise <= 1, f"--control-noise must be in (0, 1], got {self.control_noise}")
        check(0 < self.train_fraction <= 1, f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        check(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")


PRESETS = {
    "smoke": Settings(),
    # Fashion-MNIST, LeNet. The critical-layer claim has one rho per seed over 6 layers (a noisy number: its null
    # spreads with sd ~0.45), so the budget goes to seeds: 11 clean runs (each with its re-initialization on 2000 test
    # images); the two controls without signal on the first 5 seeds. Each run: 3 epochs on a seeded half of the
    # training set (705 SGD steps; the layers' masses had flattened after ~500 steps in the old 6-epoch runs).
    # 21 trainings; estimated ~16 min on an idle 2-core AVX2 machine (see the STUDIES text).
    "cpu": Settings(dataset="fashion_mnist", seeds=tuple(range(11)), control_seeds=5, epochs=3, train_fraction=0.5,
                    batch_size=128, max_test=2000),
    # the paper: VGG-11 on CIFAR-10 (the README's example), 20 epochs, with the paper's own controls (label noise,
    # pixel shuffle); not the paper's: the random-labels control beside them and the numbers of seeds
    "paper": Settings(arch="vgg11", dataset="cifar10", seeds=(0, 1, 2, 3, 4), control_seeds=3,
                      controls=("random", "shuffle", "noise"), epochs=20, batch_size=128, lr=0.001),
}


def control_options(control: str, s: Settings, seed: int) -> dict[str, Any]:
    """The train options a condition adds to the clean run's: each replicate its own label draw / permutations."""
    if control == "clean":
        return {}
    return {"random": {"random_labels": True}, "shuffle": {"pixel_shuffle": True},
            "noise": {"noise": s.control_noise}}[control] | {"noise_seed": seed}


# ------------------------------------------------------------------------------------------------------------------
# what one training run gives the claims


@dataclass
class RunStats:
    """One training run, as the claims use it."""

    test_acc: float
    train_acc: float  # running accuracy on the run's own training labels during its last epoch
    num_classes: int
    layers: list[dict]  # projections.layer_biases of the trained (last) snapshot
    init_layers: list[dict]  # ... of the initialization (epoch 0)
    net: float  # the pooled bias |mass - 0.5| of all counted layers, trained
    net_init: float
    net_filters: int
    distance: float  # mean over counted layers of ||W - W0|| / ||W0|| (the trained weights from their epoch 0)

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes


def run_stats(docs: Sequence[Mapping[str, Any]], test_acc: float, train_acc: float, num_classes: int) -> RunStats:
    """A run's statistics from its projections documents (epoch order; the first is epoch 0, the last the trained)."""
    from .projections import iter_layer_entries, layer_biases

    first, last = docs[0], docs[-1]
    check(int(first["epoch"]) == 0, "the projections of a study run must start at its initialization (epoch 0)")
    dists = [float(e["l2_dist"]) for _, _, e in iter_layer_entries(last) if e.get("l2_dist") is not None]
    return RunStats(test_acc, train_acc, num_classes, layer_biases(last), layer_biases(first),
                    abs(float(last["net"]["mass"]) - 0.5), abs(float(first["net"]["mass"]) - 0.5),
                    len(last["net"]["projections"]), sum(dists) / len(dists) if dists else math.nan)


# ------------------------------------------------------------------------------------------------------------------
# preconditions (pure)


def learned(test_accs: Sequence[float], num_classes: int) -> Precondition:
    """The clean runs learned: every one's test accuracy at least 1/K + LEARNED_MARGIN."""
    chance, thr = 1.0 / num_classes, 1.0 / num_classes + LEARNED_MARGIN
    lo = min(test_accs) if test_accs else math.nan
    return Precondition("the clean runs learned", f"lowest clean test accuracy {lo:.3f} over {len(test_accs)} runs "
                        f"(chance 1/K = {chance:.3f})", f"every one ≥ 1/K + {LEARNED_MARGIN:g} = {thr:.3f}",
                        bool(test_accs) and lo >= thr)


def without_signal(control: str, test_accs: Sequence[float], num_classes: int) -> Precondition:
    """A control destroyed the learnable signal: every run's test accuracy within CHANCE_TOLERANCE of 1/K."""
    chance = 1.0 / num_classes
    thr = chance + CHANCE_TOLERANCE
    hi = max(test_accs) if test_accs else math.nan
    return Precondition(f"the {control} control has no learnable signal",
                        f"highest {control} test accuracy {hi:.3f} over {len(test_accs)} runs (chance {chance:.3f})",
                        f"every one ≤ 1/K + {CHANCE_TOLERANCE:g} = {thr:.3f}",
                        bool(test_accs) and hi <= thr)


def control_trained(control: str, control_dist: Sequence[float], clean_dist: Sequence[float]) -> Precondition:
    """A control was optimized as the clean run was: its weights moved from their initialization at least
    MOVED_FRACTION as far (mean relative l2 distance over the layers, averaged over its seeds)."""
    a = [d for d in control_dist if math.isfinite(d)]
    b = [d for d in clean_dist if math.isfinite(d)]
    ratio = (sum(a) / len(a)) / (sum(b) / len(b)) if a and b and sum(b) > 0 else math.nan
    return Precondition(f"the {control} control trained",
                        f"its weights moved {ratio:.2f} times as far from their initialization as the clean runs' "
                        "(mean relative l2 distance over the layers)", f"≥ {MOVED_FRACTION:g}",
                        math.isfinite(ratio) and ratio >= MOVED_FRACTION)


def drops_spread(ranges: Sequence[float]) -> Precondition:
    """The re-initialization drops differ between layers in every seed (else their ranks are test-set noise)."""
    lo = min(ranges) if ranges else math.nan
    return Precondition("re-initialization drops differ between layers",
                        f"smallest (largest − smallest drop) over {len(ranges)} seeds {lo:.3f}",
                        f"every seed ≥ {MIN_DROP_RANGE:g}", bool(ranges) and lo >= MIN_DROP_RANGE)


# ------------------------------------------------------------------------------------------------------------------
# claims (pure: numbers in, Claim out)


def _rule(min_effect: float, what: str) -> str:
    return (f"verdict_vs_null, paired by seed, min_effect {min_effect:g}: holds if the 95% t-intervals of the two "
            f"arms do not overlap, the paired 95% t-interval of {what} lies above 0 and its mean is "
            f"≥ {min_effect:g}; does not hold if the paired interval lies wholly below {min_effect:g}; "
            "else inconclusive")


def layer_verdicts(trained: Mapping[str, Sequence[float]], init: Mapping[str, Sequence[float]],
                   min_effect: float = MIN_BIAS_EFFECT) -> dict[str, tuple[str, list[float]]]:
    """Per layer: verdict_vs_null of its trained bias against its bias at initialization, paired by seed."""
    return {lab: verdict_vs_null(list(trained[lab]), list(init[lab]), min_effect=min_effect) for lab in trained}


def many_layers_claim(trained: Mapping[str, Sequence[float]], init: Mapping[str, Sequence[float]],
                      widths: Mapping[str, int], preconditions: Sequence[Precondition] = ()) -> Claim:
    """At least half of the layers are biased by training: each layer's own verdict (trained bias against its bias at
    initialization, paired by seed) holds. Does not hold when more than half of them do not hold."""
    from .projections import random_layer_bias_mean

    per = layer_verdicts(trained, init)
    n = len(per)
    held = [lab for lab, (v, _) in per.items() if v == HOLDS]
    failed = [lab for lab, (v, _) in per.items() if v == FAILS]
    verdict = HOLDS if n and len(held) >= MANY * n else FAILS if len(failed) > (1 - MANY) * n else INCONCLUSIVE
    diffs = "; ".join(f"{lab}: {fmt_spread(d)}" for lab, (_, d) in per.items())
    measured = (f"{len(held)} of {n} layers hold ({', '.join(held) or 'none'}), {len(failed)} do not hold "
                f"({', '.join(failed) or 'none'}), {n - len(held) - len(failed)} inconclusive; per layer "
                f"bias(trained) − bias(initialization): {diffs}")
    null = ("each layer's bias at its own initialization (epoch 0: a random layer of its width), per layer "
            + "; ".join(f"{lab}: {fmt_spread(list(init[lab]))}" for lab in init)
            + "; the exact E|mass − 0.5| of a random layer: "
            + ", ".join(f"{lab} ({widths[lab]} filters) {random_layer_bias_mean(widths[lab]):.3f}" for lab in init))
    return Claim("biased_in_many_layers", QUOTE_MANY, SOURCE,
                 "per conv layer: its projection bias |mass − 0.5| (normalized projections) after training against "
                 "its bias at initialization, paired by seed (each layer's own verdict by the rule below); the "
                 "claim counts the layers", measured,
                 f"each layer: {_rule(MIN_BIAS_EFFECT, 'bias(trained) − bias(init)')}. The claim holds if at least "
                 f"{MANY:.0%} of the layers hold, does not hold if more than {1 - MANY:.0%} of them do not hold, "
                 "else inconclusive", verdict, len(held) / n if n else None, null=null,
                 preconditions=list(preconditions))


def emergence_claim(trained: Sequence[float], init: Sequence[float], net_filters: int,
                    preconditions: Sequence[Precondition] = ()) -> Claim:
    """The pooled bias of all layers after training against the same network at initialization, paired by seed."""
    from .projections import random_layer_bias_mean

    verdict, d = verdict_vs_null(list(trained), list(init), min_effect=MIN_BIAS_EFFECT)
    m = mean_ci(d)[0] if d else None
    return Claim("emerges_from_training", QUOTE_EMERGE, SOURCE,
                 "the pooled projection bias |mass − 0.5| of all conv layers (the original's `net`, normalized "
                 "projections; its filters are mostly those of the widest layers) after training, against the same "
                 "network at initialization, paired by seed",
                 f"trained {fmt_spread(list(trained))}; trained − initialization {fmt_spread(d)}",
                 _rule(MIN_BIAS_EFFECT, "bias(trained) − bias(init)"), verdict, m,
                 null=f"the initialization (epoch 0) {fmt_spread(list(init))}; the exact E|mass − 0.5| of a random "
                      f"network of {net_filters} filters {random_layer_bias_mean(net_filters):.3f}",
                 null_value=mean_ci(list(init))[0], preconditions=list(preconditions))


def learning_claim(control: str, clean: Sequence[float], ctrl: Sequence[float],
                   preconditions: Sequence[Precondition] = ()) -> Claim:
    """The clean run's pooled bias against a control's (the same training without a learnable signal)."""
    verdict, d = verdict_vs_null(list(clean), list(ctrl), min_effect=MIN_BIAS_EFFECT)
    m = mean_ci(d)[0] if d else None
    return Claim(f"correlates_with_learning_{control.replace('-', '_')}", QUOTE_LEARNING, SOURCE,
                 "the pooled projection bias |mass − 0.5| of all conv layers after training: the clean run against "
                 f"the {CONTROL_TEXT[control]} control trained the same way from the same initialization, paired by "
                 "seed", f"clean {fmt_spread(list(clean))}; clean − control {fmt_spread(d)}",
                 _rule(MIN_BIAS_EFFECT, "bias(clean) − bias(control)"), verdict, m,
                 null=f"the {control} control {fmt_spread(list(ctrl))}", null_value=mean_ci(list(ctrl))[0],
                 preconditions=list(preconditions))


def critical_claim(measured: Sequence[float | None], null: Sequence[float | None],
                   width: Sequence[float | None] | None = None, extra: str = "",
                   preconditions: Sequence[Precondition] = ()) -> Claim:
    """Per seed: rho(bias beyond a random layer of the layer's width, drop) of the trained network against the same
    rho with the initialization's bias (a random layer: chance by construction) and the same drops. With ``width``
    (per seed, the width's own rho with the drops), "holds" also needs the bias to rank the drops better than the
    width alone does (else inconclusive: where trained layers saturate, the wider ones can exceed their null more)."""
    verdict, d = verdict_vs_null(list(measured), list(null), min_effect=MIN_RHO_EFFECT)
    beats_width = None
    if width is not None and verdict == HOLDS:
        beats_width = verdict_vs_null(list(measured), list(width))[0] == HOLDS
        verdict = HOLDS if beats_width else INCONCLUSIVE
    shown = [x for x in measured if x is not None]
    undefined = len(measured) - len(shown)
    m = mean_ci(shown)[0] if shown else None
    return Claim("biased_layers_are_critical", QUOTE_CRITICAL, SOURCE,
                 "per seed, Spearman's rho over the conv layers between a layer's bias beyond a random layer of its "
                 "width (|mass − 0.5| − E|mass − 0.5| of a random layer with as many filters; trained network) "
                 "and its relative test-accuracy drop when re-initialized to its epoch-0 weights (the paper's "
                 "converse, unbiased layers reset without loss, is the same rank association)",
                 f"rho per seed {fmt_spread(shown)}" + (f" ({undefined} undefined: a constant column)"
                                                        if undefined else "")
                 + f"; rho − null rho {fmt_spread(d)}" + (f"; {extra}" if extra else ""),
                 _rule(MIN_RHO_EFFECT, "rho − null rho") + ("; and holds only if the rho also beats the width's "
                                                             "own rho with the drops (verdict_vs_null, paired by "
                                                             "seed, min_effect 0), else inconclusive"
                                                             if width is not None else "")
                 + ("" if beats_width is None else
                    f" (it {'does' if beats_width else 'does not'} beat the width's rho here)"), verdict, m,
                 null="the same rho with each layer's bias at initialization (epoch 0, a random layer) against the "
                      f"same drops: {fmt_spread([x for x in null if x is not None])}",
                 null_value=mean_ci([x for x in null if x is not None])[0], preconditions=list(preconditions))


# ------------------------------------------------------------------------------------------------------------------
# the study


def _last(study: Study, run_id: str, key: str) -> float:
    hist = study.metric_history(run_id, key)
    return float(hist[-1][1]) if hist else math.nan


def run(study: Study) -> None:
    from shared.hardware import fast_precision

    from .correlate import drops_by_layer

    s: Settings = study.settings
    precision, channels_last = fast_precision(s.device)
    base = {"arch": s.arch, "dataset": s.dataset, "data_path": s.data_path, "epochs": s.epochs,
            "batch_size": s.batch_size, "lr": s.lr, "snapshot_every": 1, "device": s.device,
            "precision": precision, "channels_last": channels_last}
    stats: dict[str, dict[int, RunStats]] = {c: {} for c in ("clean",) + tuple(s.controls)}
    drops: dict[int, dict[str, float]] = {}
    first: dict[str, Any] = {}
    for i, seed in enumerate(s.seeds):
        data = {"train_fraction": s.train_fraction, "split_seed": seed} if s.train_fraction < 1 else {}
        clean_id = None
        for cond in ("clean",) + (tuple(s.controls) if i < s.control_seeds else ()):
            tr = study.child(f"train-{cond}-seed{seed}", "train",
                             {**base, **data, **control_options(cond, s, seed), "seed": seed}, resumable=True)
            pr = study.child(f"projections-{cond}-seed{seed}", "projections", {"run": tr.run_id, "cosine": True})
            names = sorted(p for p in study.artifacts(pr.run_id, "projections") if p.endswith(".json"))
            docs = sorted((study.load_json(pr.run_id, p) for p in names), key=lambda d: int(d["epoch"]))
            k = int(study.run(tr.run_id).data.params["data.num_classes"])
            stats[cond][seed] = run_stats(docs, _last(study, tr.run_id, "test_acc"),
                                          _last(study, tr.run_id, "train_acc"), k)
            if cond == "clean":
                clean_id = tr.run_id
                first.setdefault("proj_docs", docs)
        ri = study.child(f"reinit-seed{seed}", "reinit", {"run": clean_id, "checkpoint_epochs": "0", "rand": True,
                                                          "max_test": s.max_test, "device": s.device})
        co = study.child(f"correlate-seed{seed}", "correlate", {"reinit_results": ri.run_id, "cosine": True})
        result = study.load_json(co.run_id, "correlate/correlate.json")
        drops[seed] = drops_by_layer(result)
        if "reinit_id" not in first:
            first.update(reinit_id=ri.run_id, correlation=result, seed=seed)
    study.publish(report(study, stats, drops, first, precision))


def per_layer(runs: Mapping[int, RunStats], seeds: Sequence[int], init: bool = False) -> dict[str, list[float]]:
    """Layer label -> its bias in each seed's run (trained, or at initialization)."""
    out: dict[str, list[float]] = {}
    for k in seeds:
        for r in (runs[k].init_layers if init else runs[k].layers):
            out.setdefault(r["layer"], []).append(r["bias"])
    return out


def critical_rhos(clean: Mapping[int, RunStats], drops: Mapping[int, Mapping[str, float]]) -> dict[str, list]:
    """Per seed: rho(excess, drop) trained and at initialization, rho(raw bias, drop), rho(width, drop), drop range."""
    out: dict[str, list] = {"seeds": [], "measured": [], "null": [], "raw": [], "width": [], "range": []}
    for k in sorted(drops):
        d = drops[k]
        tr = [r for r in clean[k].layers if r["layer"] in d]
        it = {r["layer"]: r for r in clean[k].init_layers}
        ys = [d[r["layer"]] for r in tr]
        out["seeds"].append(k)
        out["measured"].append(spearman([r["excess"] for r in tr], ys)[0])
        out["null"].append(spearman([it[r["layer"]]["excess"] for r in tr], ys)[0])
        out["raw"].append(spearman([r["bias"] for r in tr], ys)[0])
        out["width"].append(spearman([float(r["n"]) for r in tr], ys)[0])
        out["range"].append(max(ys) - min(ys) if ys else math.nan)
    return out


def build_claims(stats: Mapping[str, Mapping[int, RunStats]], drops: Mapping[int, Mapping[str, float]],
                 controls: Sequence[str]) -> tuple[list[Claim], dict[str, list]]:
    """Every claim of the report from the runs' statistics (pure)."""
    clean = stats["clean"]
    seeds = sorted(clean)
    k = clean[seeds[0]].num_classes
    pre_learned = learned([clean[s].test_acc for s in seeds], k)
    widths = {r["layer"]: r["n"] for r in clean[seeds[0]].layers}
    claims = [many_layers_claim(per_layer(clean, seeds), per_layer(clean, seeds, init=True), widths, [pre_learned]),
              emergence_claim([clean[s].net for s in seeds], [clean[s].net_init for s in seeds],
                              clean[seeds[0]].net_filters, [pre_learned])]
    for c in controls:
        cs = sorted(stats[c])
        pre = [learned([clean[s].test_acc for s in cs], k), without_signal(c, [stats[c][s].test_acc for s in cs], k),
               control_trained(c, [stats[c][s].distance for s in cs], [clean[s].distance for s in cs])]
        claims.append(learning_claim(c, [clean[s].net for s in cs], [stats[c][s].net for s in cs], pre))
    rhos = critical_rhos(clean, drops)
    defined = lambda key: [x for x in rhos[key] if x is not None]  # noqa: E731
    extra = (f"the raw bias's rho (which a random layer ranks by width) {fmt_spread(defined('raw'))}; "
             f"the width's own rho with the drops {fmt_spread(defined('width'))}")
    claims.append(critical_claim(rhos["measured"], rhos["null"], rhos["width"], extra,
                                 [pre_learned, drops_spread(rhos["range"])]))
    return claims, rhos


def report(study: Study, stats, drops, first, precision: str) -> Report:
    from . import plots
    from .projections import random_layer_bias_mean, random_layer_bias_quantile

    s: Settings = study.settings
    controls = [c for c in s.controls if stats[c]]
    claims, rhos = build_claims(stats, drops, controls)
    clean = stats["clean"]
    seeds = sorted(clean)
    k = clean[seeds[0]].num_classes
    conds = ["clean"] + controls
    acc_rows = [[c, len(stats[c]), fmt_spread([r.test_acc for r in stats[c].values()]),
                 fmt_spread([r.train_acc for r in stats[c].values()]), f"{1 / k:.3f}",
                 fmt_spread([r.distance for r in stats[c].values()])] for c in conds]
    net_rows = [["initialization", *[clean[x].net_init for x in seeds], fmt_spread([clean[x].net_init for x in seeds])]]
    net_rows += [[c, *[stats[c][x].net if x in stats[c] else None for x in seeds],
                  fmt_spread([r.net for r in stats[c].values()])] for c in conds]
    trained = {c: per_layer(stats[c], sorted(stats[c])) for c in conds}
    init = per_layer(clean, seeds, init=True)
    widths = {r["layer"]: r["n"] for r in clean[seeds[0]].layers}
    lv = layer_verdicts(trained["clean"], init)
    layer_rows = []
    for lab, n in widths.items():
        row = [lab, n, f"{random_layer_bias_mean(n):.3f} (95%: {random_layer_bias_quantile(n, 0.95):.3f})",
               fmt_spread(init[lab]), fmt_spread(trained["clean"][lab]), lv[lab][0]]
        for c in controls:
            paired = per_layer(clean, sorted(stats[c]))[lab]  # the clean runs of the control's seeds
            row += [fmt_spread(trained[c][lab]),
                    verdict_vs_null(paired, trained[c][lab], min_effect=MIN_BIAS_EFFECT)[0]]
        layer_rows.append(row)
    layer_header = ["layer", "filters", "random layer: mean bias (95% quantile)", "initialization",
                    "clean, trained", "clean vs initialization"]
    for c in controls:
        layer_header += [f"{c}, trained", f"clean vs {c}"]
    crit_rows = [[sd, m, nl, raw, w, rg] for sd, m, nl, raw, w, rg in
                 zip(rhos["seeds"], rhos["measured"], rhos["null"], rhos["raw"], rhos["width"], rhos["range"])]
    figures = {"layer_bias": plots.layer_bias_figure(
                   list(widths), [widths[x] for x in widths],
                   {"initialization": init, **{f"{c}, trained": trained[c] for c in conds}}),
               "critical_rho_vs_null": plots.rho_vs_null_figure(rhos["seeds"], rhos["measured"], rhos["null"]),
               "projections_mass": plots.projections_over_training(first["proj_docs"], "mass"),
               "reinit_heatmap": plots.reinit_heatmap(study.load_json(
                   first["reinit_id"], next(p for p in study.artifacts(first["reinit_id"], "reinit")
                                            if p.endswith(".json")))),
               "bias_vs_drop": plots.correlation_figure(first["correlation"])}
    ctl = ", ".join(f"{CONTROL_TEXT[c]}" for c in controls) or "none"
    reduced = "" if study.scale == "paper" else (
        " Reduced from the paper: a small LeNet for a few epochs"
        + (f" on a seeded {s.train_fraction:g} of the training set (each seed its own)" if s.train_fraction < 1 else "")
        + " instead of VGG/AlexNet for tens of epochs on CIFAR-10; re-initialization on "
        + ("all" if not s.max_test else str(s.max_test)) + " test images.")
    summary = (f"{len(seeds)} seeds, each a clean run ({s.epochs} epochs, a snapshot every epoch) re-initialized layer "
               f"by layer to its epoch-0 weights; on the first {min(s.control_seeds, len(seeds))} seeds the controls: "
               f"{ctl}, each with --noise-seed = its seed. The untrained network is each run's own initialization "
               f"(epoch 0), beside the exact bias of random layers of each width. Thresholds: a clean run learned when "
               f"its test accuracy is ≥ 1/K + {LEARNED_MARGIN:g}; a control has no learnable signal when its test "
               f"accuracy is ≤ 1/K + {CHANCE_TOLERANCE:g}, and trained when its weights moved ≥ {MOVED_FRACTION:g} "
               f"times as far from their initialization as the clean runs'; the smallest bias effect that counts is "
               f"{MIN_BIAS_EFFECT:g}, the smallest rank correlation above its null {MIN_RHO_EFFECT:g}." + reduced)
    spent = (f"The budget goes to seeds: the critical-layer claim has one rank correlation per seed over "
             f"{len(widths)} layers, whose null spreads widely, so {len(seeds)} clean runs with their "
             f"re-initialization; the controls, whose effect is a difference of pooled biases, on "
             f"{min(s.control_seeds, len(seeds))} seeds; one re-initialization checkpoint (epoch 0, the one the claim "
             "uses) plus a fresh draw.")
    return Report(
        title=f"hyperplane_bias study: {s.arch} on {s.dataset}", project="hyperplane_bias", scale=study.scale,
        summary=summary, claims=claims, paper=PAPER, spent=spent, hardware={"precision": precision},
        tables=[("Accuracy per condition (test: the clean test set; train: running accuracy on the run's own "
                 "training labels in its last epoch; distance: mean relative l2 distance of the layers from their "
                 "initialization)", ["condition", "runs", "test accuracy", "train accuracy", "chance 1/K",
                                     "weights moved"], acc_rows),
                ("Pooled (net) projection bias |mass − 0.5| per condition and seed",
                 ["condition", *[f"seed {x}" for x in seeds], "mean ± sd"], net_rows),
                ("Per-layer projection bias |mass − 0.5| (mean ± sd over seeds) against a random layer of the same "
                 "width, with each layer's verdict (min_effect "
                 f"{MIN_BIAS_EFFECT:g}, paired by seed)", layer_header, layer_rows),
                ("Critical layers per seed: Spearman rho with the re-initialization drop (epoch 0)",
                 ["seed", "rho(bias − random-layer mean)", "null: same at initialization", "rho(raw bias)",
                  "rho(width)", "drop range"], crit_rows)],
        figures=figures,
        captions={"layer_bias": "per layer: the bias at initialization, after training (clean and controls), mean "
                                "± sd over seeds, and the random layer of that width (mean, 95% quantile)",
                  "critical_rho_vs_null": "per seed: rho(bias beyond a random layer, drop) of the trained network "
                                          "and of its initialization (the null)",
                  "projections_mass": f"projection mass per layer over training (seed {seeds[0]}, clean run)",
                  "reinit_heatmap": f"re-initialization heatmap, layers x (epoch 0, rand) (seed {first['seed']})",
                  "bias_vs_drop": f"bias vs re-initialization drop per layer (seed {first['seed']})"})


PAPER = Paper(
    reference=("M. Gamba et al., “Hyperplane Arrangements of Trained ConvNets Are Biased” (arXiv:2003.07797, 2020; "
               "code: magamba/hp_arrangements)"),
    claims=(
        PaperClaim("regularities_in_many_layers", SOURCE, QUOTE_MANY, ("biased_in_many_layers",)),
        PaperClaim("emerge_from_training", SOURCE, QUOTE_EMERGE, ("emerges_from_training",)),
        PaperClaim("correlate_with_learning", SOURCE, QUOTE_LEARNING,
                   tuple(f"correlates_with_learning_{c.replace('-', '_')}" for c in CONTROLS),
                   "no control was trained"),
        PaperClaim("biased_layers_are_critical", SOURCE, QUOTE_CRITICAL, ("biased_layers_are_critical",)),
        PaperClaim("unbiased_layers_can_be_reset", SOURCE, QUOTE_RESET, ("biased_layers_are_critical",)),
    ))
