"""``geomlab feature-amounts study``: the same feature budget placed early, late, or as VGG places it (Mundt et al.).

Trains three networks of the same feature budget, each with every seed of ``--seeds`` (``train``): the reference
VGG scaled to exactly the variants' budget (``train --widths``); the *early* variant, the skew-normal variant with at
least ``--min-share`` of its features in the first third of the layers (of those, the one whose narrowest layer is
widest); and the *late* variant, its mirror (the variant nearest to its widths reversed). All are chosen by rule
before training and trained for ``--epochs`` (one SGDR cycle at the cpu scale). The report tests, paired by seed,
whether the early variant is at most ``--tolerance`` worse than the reference (an equivalence claim), whether it
differs from its mirror by at least that, and whether it learns more slowly than the reference; a network still
learning at the end of its training makes a claim "not tested".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from shared.errors import check
from shared.study import (FAILS, HOLDS, INCONCLUSIVE, SEEDS_HELP, Claim, Paper, PaperClaim, Precondition, Report,
                          Study, fmt_spread, mean_ci, setting, verdict_vs_null)

PAPER = Paper(
    reference=("Martin Mundt, Sagnik Majumder, Tobias Weis, Visvanathan Ramesh, “Rethinking Layer-wise Feature "
               "Amounts in Convolutional Neural Network Architectures”, NeurIPS 2018 Workshop on Critiquing and "
               "Correcting Trends in Machine Learning (CRACT), arXiv:1812.05836"),
    claims=(
        PaperClaim("early_features", "README (the paper's abstract)",
                   "show how large amounts of features in early layers challenge common design assumptions",
                   ("early_features_comparable",)),
        PaperClaim("budget_shift", "README (the paper's abstract)",
                   "we characterize the classification accuracy of a family of VGG-like models by shifting a constant "
                   "amount of total features to different convolutional layers",
                   ("budget_spread_matters",)),
        PaperClaim("approx_200_variants", "README (Running the code)",
                   "approx. 200 architectural variants of the VGG-16 (D) network",
                   why_not="the study trains two variants chosen by where their features are, with seeds, instead "
                           "of the whole family once; `geomlab feature-amounts sweep` trains the family"),
    ))

#: Accuracy (pp above chance) that the reference must exceed in every seed: two networks that learned nothing are
#: trivially "comparable" (a null in both arms), so a claim about them is not tested.
LEARNED_MARGIN = 20.0


@dataclass(frozen=True)
class Settings:
    dataset: str = setting("digits", like="train")
    data_path: str = setting("./data", like="train")
    vgg_depth: int = setting(16, like="train")  # every setting below: the same for every network
    width_multiplier: float = setting(0.05, like="train")
    patch_size: int = setting(16, like="train")
    epochs: int = setting(4, like="train")
    train_fraction: float = setting(0.5, like="train")
    batch_size: int = setting(32, like="train")
    lr: float = setting(0.05, like="train")
    lr_wr_epochs: int = setting(4, like="train")
    dropout: float = setting(0.0, like="train")
    seeds: tuple = setting((0, 1), SEEDS_HELP)  # each trains the reference and both variants (paired by seed)
    min_share: float = setting(0.5, "Share of its features that the early variant must have in the first third of "
                                    "the layers (VGG-16 has 0.12, a uniform spread 1/3); the late one is its mirror.")
    tolerance: float = setting(2.0, "Accuracy (percentage points) within which a variant counts as comparable to the "
                                    "reference, and the smallest difference that counts.")
    flat_epochs: int = setting(2, "Epochs at the end of training over which a curve must have flattened.")
    flat_gain: float = setting(1.0, "A network whose best validation top-1 rose by this much (pp, mean over seeds) "
                                    "in its last --flat-epochs epochs is still learning: its claims are not tested.")
    device: str = setting("auto", like="train")

    def validate(self) -> None:
        check(len(self.seeds) >= 2 and len(set(self.seeds)) == len(self.seeds),
              f"--seeds needs at least two different seeds (the verdicts pair the networks by seed), got "
              f"{','.join(map(str, self.seeds))}")
        check(all(isinstance(s, int) for s in self.seeds), f"--seeds must be integers, got {self.seeds}")
        check(0.0 < self.min_share < 1.0, f"--min-share must be in (0, 1), got {self.min_share}")
        check(self.tolerance > 0, f"--tolerance must be > 0 percentage points, got {self.tolerance}")
        check(1 <= self.flat_epochs < self.epochs,
              f"--flat-epochs must be in 1..{self.epochs - 1} (fewer than --epochs {self.epochs}), got "
              f"{self.flat_epochs}")
        check(self.flat_gain > 0, f"--flat-gain must be > 0 percentage points, got {self.flat_gain}")


PRESETS = {
    # the embedded digits: it runs end to end; it says nothing about the paper
    "smoke": Settings(),
    # Fashion-MNIST at 16 px, budget x0.1, batch 64 (as the first cpu study, whose 5 seeds of the reference spanned
    # 0.37 pp), 40 % of the training set (the first study: 50 %, cut to pay for the seeds); one SGDR cycle of 10
    # epochs (the paper's first cycle) instead of 6, so that the curves flatten; 3 networks x 3 seeds instead of 12
    # variants + the reference x 1 seed. Not the paper's: no dropout (at a tenth of the budget the variants' last
    # hidden layer has 4-5 features -- 38 or more at the full budget -- and dropout 0.5 there slowed the early
    # variant from 51 % to 35 % after 2 short epochs in a probe here). Time on an idle 2-core AVX2 machine: the CPU
    # time per step measured here (1 thread: early variant 104-113 ms, reference 26-28 ms, late 25 ms; the first
    # study's 13 networks 985 ms together) scaled by the first study's 962 s on AVX-512 (x1.4 for AVX2) gives an
    # epoch of 24 000 images ~18 s for the early variant and ~5 s for the reference and the late one: a child ~3.2
    # min (early) or ~1 min, 9 children with their start-up about 16 min (at most ~19 if the AVX2 factor is 1.7).
    "cpu": Settings(dataset="fashion_mnist", width_multiplier=0.1, epochs=10, train_fraction=0.4, batch_size=64,
                    lr=0.01, lr_wr_epochs=10, dropout=0.0, seeds=(0, 1, 2)),
    # the paper's training: CIFAR-10, the full budget, 150 epochs of SGDR (10 + 20 + 40 + 80), 32 px, batch 128;
    # the three networks and the three seeds are this study's design (the paper trained ~200 variants once)
    "paper": Settings(dataset="cifar10", width_multiplier=1.0, patch_size=32, epochs=150, train_fraction=1.0,
                      batch_size=128, lr=0.01, lr_wr_epochs=10, dropout=0.5, seeds=(0, 1, 2), flat_epochs=10),
}


# ------------------------------------------------------------------------------------------------------------------
# The design: which networks


def pick_variant(variants: Sequence, where: str, min_share: float):
    """The variant to test, chosen before training: among those with at least ``min_share`` of their features in the
    first (``where="first"``) or last third of the layers, the one whose narrowest layer is widest (a reduced budget
    thins every layer, and the 2-feature floor makes the thinnest layers bottlenecks), then the larger share, then
    the lower index. None when no variant qualifies."""
    from .variants import budget_share

    ok = [v for v in variants if budget_share(v.widths, where) >= min_share]
    if not ok:
        return None
    return min(ok, key=lambda v: (-min(v.widths), -budget_share(v.widths, where), v.index))


def pick_mirror(variants: Sequence, of):
    """The late counterpart of variant ``of``, chosen before training: the variant whose widths are nearest (L1) to
    ``of``'s widths reversed -- the same profile with its features at the other end of the network (then the lower
    index)."""
    rev = list(of.widths)[::-1]
    return min(variants, key=lambda v: (sum(abs(a - b) for a, b in zip(v.widths, rev)) if len(v.widths) == len(rev)
                                        else math.inf, v.index))


def describe_widths(widths: Sequence[int]) -> dict[str, float]:
    """Where a network's features are: its total, the shares in the first and last third, the centre of mass."""
    from .variants import budget_share, centre_of_mass

    return {"total": int(sum(widths)), "first_third": budget_share(widths, "first"),
            "last_third": budget_share(widths, "last"), "centre": centre_of_mass(widths), "narrowest": min(widths)}


# ------------------------------------------------------------------------------------------------------------------
# The rules (pure)


def verdict_non_inferior(measured: Sequence[float], reference: Sequence[float], *,
                         tolerance: float) -> tuple[str, list[float]]:
    """The verdict of an equivalence claim ("comparable accuracy": at most ``tolerance`` worse than the reference),
    paired by replicate (seed): d_i = measured_i - reference_i.

    * holds: the paired 95% t-interval of d lies wholly above -tolerance (at most that much worse, or better);
    * does not hold: it lies wholly below -tolerance (worse by more than the tolerance);
    * else inconclusive (the interval straddles -tolerance; also with fewer than 2 pairs, or a non-finite value).

    Its null, the reference against itself (seed-only differences, centred on 0), may hold -- as it should, for a
    network is comparable to itself -- but gives "does not hold" in at most 2.5% of draws (the interval lies below
    -tolerance < 0 only when its upper 97.5% bound misses the true 0). Two arms that learned nothing would hold
    trivially: that is the claim's precondition (:func:`learned`), not this rule's."""
    pairs = [(a, b) for a, b in zip(measured, reference) if a is not None and b is not None
             and math.isfinite(a) and math.isfinite(b)]
    d = [a - b for a, b in pairs]
    if len(d) < 2 or len(d) < len(list(measured)) or len(list(measured)) != len(list(reference)):
        return INCONCLUSIVE, d
    _, _, lo, hi = mean_ci(d)
    if lo > -tolerance:
        return HOLDS, d
    if hi < -tolerance:
        return FAILS, d
    return INCONCLUSIVE, d


def verdict_differs(measured: Sequence[float], null: Sequence[float], *, min_effect: float) -> tuple[str, list[float]]:
    """Two-sided :func:`~shared.study.verdict_vs_null`: holds when the measured arm exceeds the null, or falls below
    it, by the rules of ``verdict_vs_null`` (at least ``min_effect``, beyond both arms' spread); does not hold when
    both directions do not hold (the paired interval of d lies within (-min_effect, min_effect)); else inconclusive.
    Returns the verdict and d = measured - null. Seed-only differences give "holds" in about 0.5% of draws (twice
    one side's 0.25%), identical arms never."""
    up, d = verdict_vs_null(measured, null, min_effect=min_effect, larger=True)
    down, _ = verdict_vs_null(measured, null, min_effect=min_effect, larger=False)
    if HOLDS in (up, down):
        return HOLDS, d
    if up == FAILS and down == FAILS:
        return FAILS, d
    return INCONCLUSIVE, d


def flattened(curves: dict[str, Sequence[Sequence[float]]], *, last: int, max_gain: float, epochs: int) -> Precondition:
    """Every network trained all ``epochs`` and its curve flattened: over the seeds, the mean rise of the best
    validation top-1 in the last ``last`` epochs (:func:`~projects.feature_amounts.results.late_gain`) is below
    ``max_gain`` pp. Else the network is still learning, and a gap at this length would not tell a slower learner
    from a worse one."""
    from .results import late_gain

    parts, ok = [], bool(curves)
    for name, runs in curves.items():
        gains = [late_gain(list(r), last) for r in runs]
        short = [len(r) for r in runs if len(r) < epochs]
        m = sum(gains) / len(gains) if gains else math.nan
        good = bool(gains) and not short and all(math.isfinite(g) for g in gains) and m < max_gain
        ok = ok and good
        parts.append(f"{name} +{m:.2f} pp (max {max(gains, default=math.nan):.2f})"
                     + (f", stopped after {min(short)} of {epochs} epochs" if short else ""))
    return Precondition("curves flattened", "; ".join(parts),
                        f"every network trained all {epochs} epochs and its best validation top-1 rose by less than "
                        f"{max_gain:g} pp (mean over seeds) in its last {last} epochs; else still learning", ok)


def learned(reference: Sequence[float], chance: float, margin: float = LEARNED_MARGIN,
            name: str = "reference learned") -> Precondition:
    """The null arm learned: its accuracy exceeds chance by at least ``margin`` pp in every seed (two networks that
    learned nothing are trivially alike)."""
    low = min(reference) if reference else math.nan
    ok = bool(reference) and all(math.isfinite(a) for a in reference) and low >= chance + margin
    return Precondition(name, f"lowest seed {low:.2f} % (chance {chance:.3g} %)",
                        f"at least {margin:g} pp above chance in every seed: two networks that learned nothing "
                        f"would be trivially alike", ok)


def _seed_null(values: Sequence[float]) -> list[float]:
    """Seed-only differences of one network: consecutive seeds' differences (cyclic), the null of a paired gap."""
    v = list(values)
    return [v[(i + 1) % len(v)] - v[i] for i in range(len(v))] if len(v) >= 2 else []


def _best(recs: Sequence[dict]) -> list[float]:
    return [float(r["BestVal"]) for r in recs]


def _first(recs: Sequence[dict]) -> list[float]:
    return [float(r["AllVal"][0]) if r.get("AllVal") else math.nan for r in recs]


def early_claim(ref: Sequence[dict], early: Sequence[dict], *, tolerance: float, chance: float, epochs: int,
                flat_epochs: int, flat_gain: float, early_text: str) -> Claim:
    """The paper's claim: the early variant's best top-1 is not worse than the budget-matched reference's by more
    than ``tolerance`` (paired by seed; :func:`verdict_non_inferior`)."""
    r, e = _best(ref), _best(early)
    verdict, d = verdict_non_inferior(e, r, tolerance=tolerance)
    m, _, lo, hi = mean_ci(d)
    null = _seed_null(r)
    return Claim(
        "early_features_comparable", PAPER.claim("early_features").quote, "README (the paper's abstract)",
        f"best validation top-1 of the early variant ({early_text}) minus that of the reference at the same budget, "
        f"paired by seed",
        f"{fmt_spread(d)} pp; early {fmt_spread(e)} %, reference {fmt_spread(r)} %",
        f"non-inferiority: holds when the paired 95% interval of the gap lies above -{tolerance:g} pp (at most "
        f"{tolerance:g} pp worse, or better), does not hold when it lies below -{tolerance:g} pp, else inconclusive",
        verdict, m,
        null=f"seed-only differences of the reference (consecutive seeds): {fmt_spread(null)} pp; the reference's sd "
             f"over seeds {mean_ci(r)[1]:.3g} pp; this design's paired interval {lo:+.2f} .. {hi:+.2f} pp",
        null_value=mean_ci(r)[1],
        preconditions=[learned(r, chance),
                       flattened({"reference": [x["AllVal"] for x in ref], "early": [x["AllVal"] for x in early]},
                                 last=flat_epochs, max_gain=flat_gain, epochs=epochs)])


def spread_claim(early: Sequence[dict], late: Sequence[dict], *, tolerance: float, chance: float, epochs: int,
                 flat_epochs: int, flat_gain: float, early_text: str, late_text: str) -> Claim:
    """Where the same budget goes changes accuracy: the early variant and its mirror (the same profile at the other
    end of the network) differ by at least ``tolerance``, beyond the seeds' spread (two-sided, paired by seed;
    :func:`verdict_differs`). The mirror is the null arm: the same features, with "where" changed."""
    e, lt = _best(early), _best(late)
    verdict, d = verdict_differs(e, lt, min_effect=tolerance)
    return Claim(
        "budget_spread_matters", PAPER.claim("budget_shift").quote, "README (the paper's abstract)",
        f"best validation top-1 of the early variant ({early_text}) minus that of its mirror, the same profile "
        f"placed late ({late_text}), paired by seed",
        f"{fmt_spread(d)} pp; early {fmt_spread(e)} %, late {fmt_spread(lt)} %",
        f"two-sided, the mirror as the null arm: holds when the gap is at least {tolerance:g} pp either way, its "
        f"paired 95% interval excludes 0 and the two arms' intervals do not overlap; does not hold when the paired "
        f"interval lies within ±{tolerance:g} pp; else inconclusive",
        verdict, mean_ci(d)[0],
        null=f"the mirror over seeds: {fmt_spread(lt)} %; its seed-only differences {fmt_spread(_seed_null(lt))} pp",
        null_value=mean_ci(lt)[0],
        preconditions=[learned(lt, chance, name="mirror learned"),
                       flattened({"early": [x["AllVal"] for x in early], "late": [x["AllVal"] for x in late]},
                                 last=flat_epochs, max_gain=flat_gain, epochs=epochs)])


def slower_claim(ref: Sequence[dict], early: Sequence[dict], *, tolerance: float, chance: float,
                 early_text: str) -> Claim:
    """The study's hypothesis (from the first cpu study, where the early variants were far behind after 6 epochs):
    the early variant learns more slowly, i.e. after the first epoch it is at least ``tolerance`` behind."""
    r, e = _first(ref), _first(early)
    verdict, d = verdict_vs_null(e, r, min_effect=tolerance, larger=False)
    return Claim(
        "early_learns_slower", "variants with most features in early layers learn more slowly: after one epoch they "
        "are behind the reference at the same budget", "study hypothesis",
        f"validation top-1 after the first epoch: early variant ({early_text}) minus the reference, paired by seed",
        f"lag (reference - early) {fmt_spread(d)} pp; early {fmt_spread(e)} %, reference {fmt_spread(r)} %",
        f"holds when the early variant is behind by at least {tolerance:g} pp, the paired 95% interval excludes 0 and "
        f"the arms' intervals do not overlap (verdict_vs_null, reference as the null arm); does not hold when the "
        f"paired interval of the lag lies below {tolerance:g} pp; else inconclusive",
        verdict, mean_ci(d)[0] if d else None,
        null=f"the reference after one epoch: {fmt_spread(r)} %; seed-only differences {fmt_spread(_seed_null(r))} pp",
        null_value=mean_ci(r)[0], hypothesis=True,
        preconditions=[learned(r, chance, name="reference learned in the first epoch")])


# ------------------------------------------------------------------------------------------------------------------
# The study


def networks(s: Settings) -> list[tuple[str, dict[str, Any], Any]]:
    """(role, the ``train`` options that select it, its Variant or None) of the study's three networks."""
    from .variants import generate_variants, reference_widths_at_budget

    variants = generate_variants(s.vgg_depth, s.patch_size, s.width_multiplier)
    out: list[tuple[str, dict[str, Any], Any]] = [
        ("reference", {"widths": ",".join(map(str, reference_widths_at_budget(s.vgg_depth, s.patch_size,
                                                                               s.width_multiplier)))}, None)]
    early = pick_variant(variants, "first", s.min_share)
    check(early is not None, f"no variant has {s.min_share:g} of its features in the first third of the layers; "
                             "lower --min-share")
    late = pick_mirror(variants, early)
    out += [("early", {"variant": early.index}, early), ("late", {"variant": late.index}, late)]
    return out


def run(study: Study) -> None:
    from shared.hardware import fast_precision

    s: Settings = study.settings
    precision, channels_last = fast_precision(s.device)
    common = {"dataset": s.dataset, "data_path": s.data_path, "vgg_depth": s.vgg_depth, "patch_size": s.patch_size,
              "width_multiplier": s.width_multiplier, "epochs": s.epochs, "train_fraction": s.train_fraction,
              "batch_size": s.batch_size, "lr": s.lr, "lr_wr_epochs": s.lr_wr_epochs, "dropout": s.dropout,
              "device": s.device, "precision": precision, "channels_last": channels_last}
    nets = networks(s)
    records: dict[str, list[dict]] = {role: [] for role, _, _ in nets}
    for seed in s.seeds:  # seed by seed: an interrupted study has whole pairs
        for role, select, v in nets:
            name = f"{role}-s{seed}" if v is None else f"{role}-v{v.index:03d}-s{seed}"
            c = study.child(name, "train", {**common, **select, "seed": seed}, resumable=True)
            records[role].append(study.load_json(c.run_id, "feature_amounts/result.json"))
    study.publish(report(study, nets, records, precision, channels_last))


def report(study: Study, nets: list, records: dict[str, list[dict]], precision: str = "fp32",
           channels_last: bool = False) -> Report:
    from shared.data import DATASETS

    from .plots import figure_curves, figure_profiles
    from .variants import capacity

    s: Settings = study.settings
    num_classes = DATASETS.get(s.dataset).num_classes
    chance = 100.0 / num_classes
    widths = {role: (tuple(int(x) for x in records[role][0]["Filters"]) if records[role] else ())
              for role, _, _ in nets}
    where = {role: describe_widths(w) for role, w in widths.items() if w}
    label = {role: (f"{v.id}" if v is not None else f"vgg{s.vgg_depth} at the variants' budget")
             for role, _, v in nets}

    def text(role: str) -> str:
        d = where[role]
        return (f"{label[role]}: {d['first_third']:.0%} of its {d['total']} features in the first third of the layers, "
                f"{d['last_third']:.0%} in the last, centre of mass at layer {d['centre']:.1f}")

    kw = dict(tolerance=s.tolerance, chance=chance, epochs=s.epochs, flat_epochs=s.flat_epochs,
              flat_gain=s.flat_gain)
    claims = [early_claim(records["reference"], records["early"], early_text=text("early"), **kw),
              spread_claim(records["early"], records["late"], early_text=label["early"], late_text=text("late"),
                           **kw),
              slower_claim(records["reference"], records["early"], tolerance=s.tolerance, chance=chance,
                           early_text=text("early"))]
    from .results import late_gain

    seeds = list(s.seeds)
    net_rows = [[role, label[role], ",".join(map(str, widths[role])), where[role]["total"],
                 f"{where[role]['first_third']:.3f}", f"{where[role]['last_third']:.3f}",
                 f"{where[role]['centre']:.2f}", where[role]["narrowest"], capacity(widths[role], num_classes)]
                for role, _, _ in nets]
    acc_rows = []
    for role, _, _ in nets:
        recs = records[role]
        acc_rows.append([role, *[f"{x:.2f}" for x in _best(recs)], fmt_spread(_best(recs)),
                         fmt_spread(_first(recs)),
                         fmt_spread([late_gain(r["AllVal"], s.flat_epochs) for r in recs]),
                         ",".join(str(r.get("EpochsDone")) for r in recs)])
    gap_rows = [[f"{role} - reference", *[f"{a - b:+.2f}" for a, b in zip(_best(records[role]),
                                                                          _best(records["reference"]))],
                 fmt_spread([a - b for a, b in zip(_best(records[role]), _best(records["reference"]))])]
                for role in ("early", "late")]
    curves = {f"{role}: {label[role]}": [r["AllVal"] for r in records[role]] for role, _, _ in nets}
    title = f"{s.dataset}, budget x{s.width_multiplier:g}, {len(seeds)} seeds"
    reduced = "" if study.scale == "paper" else (
        " Reduced from the paper: Fashion-MNIST or digits instead of CIFAR-10, a fraction of the feature budget and "
        "of the training set, 16 px, one SGDR cycle instead of 150 epochs.")
    if s.dropout != 0.5:
        reduced += (f" Not the paper's: dropout {s.dropout:g} before the classifier (the paper: 0.5), for every "
                    f"network: at a reduced budget the variants' last hidden layer has only a few features.")
    return Report(
        title=f"feature_amounts study: VGG-{s.vgg_depth} features placed early, late or as VGG does, on {s.dataset}",
        project="feature_amounts", scale=study.scale,
        summary=(f"Three networks with the same feature budget (x{s.width_multiplier:g} of VGG-{s.vgg_depth}'s), "
                 f"each trained with seeds {','.join(map(str, seeds))} for {s.epochs} epochs of SGDR (first cycle "
                 f"{s.lr_wr_epochs} epochs) on {s.train_fraction:.0%} of {s.dataset} at {s.patch_size} px: the "
                 f"reference VGG scaled to exactly the variants' nominal budget ({where['reference']['total']} "
                 f"features; `train --reference` rounds each layer up instead), the early variant, chosen before "
                 f"training as the variant with at least {s.min_share:g} of its features in the first third of the "
                 f"layers whose narrowest layer is widest, and the late variant, its mirror (the variant nearest to "
                 f"its widths reversed). Accuracy is the original's "
                 f"BestVal: the best top-1 over epochs on the test set.{reduced}"),
        claims=claims,
        tables=[("The networks (where their features are)",
                 ["role", "network", "widths", "features", "share in first third", "share in last third",
                  "centre of mass (layer)", "narrowest layer", "parameters (original's formula)"], net_rows),
                ("Best validation top-1 % per seed",
                 ["network", *[f"seed {x}" for x in seeds], "mean ± sd", "after epoch 1",
                  f"rise in the last {s.flat_epochs} epochs (pp)", "epochs done"], acc_rows),
                ("Gaps to the reference, paired by seed (pp)",
                 ["gap", *[f"seed {x}" for x in seeds], "mean ± sd"], gap_rows)],
        figures={"curves": figure_curves(curves, title, s.tolerance),
                 "profiles": figure_profiles({f"{role}: {label[role]}": widths[role] for role, _, _ in nets},
                                             f"where the {where['reference']['total']} features are")},
        captions={"curves": "validation top-1 per epoch: mean over seeds, band from the lowest to the highest seed; "
                            "the right panel zooms on the end, the grey band spans the tolerance",
                  "profiles": "share of each network's features per layer; the dashed lines end the first third of "
                              "the layers and begin the last"},
        paper=PAPER, hardware={"precision": precision, "channels_last": str(channels_last)},
        spent=(f"The budget of this scale went to {len(nets)} networks x {len(seeds)} seeds = {len(nets) * len(seeds)} "
               f"trainings of {s.epochs} epochs: fewer networks, each trained until its curve should flatten and "
               f"repeated over seeds so that each gap is judged against the seeds' spread (the first cpu study "
               f"trained 12 variants and the reference once, for 6 epochs)."))
