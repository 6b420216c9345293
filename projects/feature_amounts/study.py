"""``geomlab feature-amounts study``: the same feature budget spread differently over VGG layers (Mundt et al., seed 004).

Trains (``train --variant``) a grid of variants spread over the skew-normal's mean and skew -- at each of
``n_means`` means evenly spread over the valid ones, ``n_skews`` skews from the most negative to the most positive
valid one -- plus the reference VGG (``train --reference``), all at the same feature budget and with the same settings.
The report draws the heat map over (mean, skew) and accuracy against parameters (the project's plots), and tests the
paper's finding that variants with many features in early layers reach accuracy comparable to the reference; it also
gives the spread of accuracy at the fixed budget and the reference's rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from shared.errors import check
from shared.study import FAILS, HOLDS, INCONCLUSIVE, Claim, Report, Study, fmt_spread, setting

SEED = "004_33ec712cee959f3a.txt"
QUOTE = ("shifting a constant amount of total features to different convolutional layers and show how large amounts "
         "of features in early layers challenge common design assumptions")


@dataclass(frozen=True)
class Settings:
    dataset: str = setting("digits", like="train")
    data_path: str = setting("./data", like="train")
    variants: int = setting(12, "Number of variants, spread over mean and skew (plus the reference).")
    vgg_depth: int = setting(16, like="train")  # every setting below: the same for every network
    width_multiplier: float = setting(0.05, like="train")
    patch_size: int = setting(16, like="train")
    epochs: int = setting(1, like="train")
    train_fraction: float = setting(0.5, like="train")
    batch_size: int = setting(32, like="train")
    lr: float = setting(0.01, like="train")
    lr_wr_epochs: int = setting(10, like="train")
    seed: int = setting(0, like="train")
    tolerance: float = setting(2.0, "Accuracy (percentage points) within which a variant counts as comparable.")
    device: str = setting("auto", like="train")

    def validate(self) -> None:
        check(self.variants >= 2, f"--variants must be at least 2, got {self.variants}")


PRESETS = {
    "smoke": Settings(),
    # Fashion-MNIST: budget x0.1, half of the training set, 6 epochs (one SGDR cycle), 16 px patches, 12 variants +
    # the reference (measured here: 3 epochs on 10% of the set take 2 minutes and leave most variants at chance)
    "cpu": Settings(dataset="fashion_mnist", width_multiplier=0.1, epochs=6, train_fraction=0.5, batch_size=64,
                    lr_wr_epochs=6),
    # the paper: CIFAR-10, the full budget, 150 epochs of SGDR, 32 px
    "paper": Settings(dataset="cifar10", variants=30, width_multiplier=1.0, patch_size=32, epochs=150,
                      train_fraction=1.0, batch_size=128, lr_wr_epochs=10),
}


def choose_grid(variants, n: int) -> list:
    """``n`` variants spread over mean and skew: the valid (mean, skew) pairs are few per mean except at the ends,
    so take one variant per mean (its median skew) at up to ``n - 4`` evenly spaced means, then the extreme skews of
    the means with the most skews, until ``n`` are chosen. Scale: the one nearest 2."""
    import numpy as np

    by_mean: dict[float, dict[float, list]] = {}
    for v in variants:
        by_mean.setdefault(v.mean, {}).setdefault(v.skew, []).append(v)
    means = sorted(by_mean)
    k = min(len(means), n - 4 if n >= 8 else n)
    means = [means[int(round(i))] for i in np.linspace(0, len(means) - 1, k)]
    pairs = [(m, sorted(by_mean[m])[len(by_mean[m]) // 2]) for m in dict.fromkeys(means)]
    extra = sorted(by_mean, key=lambda m: (-len(by_mean[m]), m))
    for m in extra:  # the most negative and the most positive skew of the means with the most skews
        for sk in (min(by_mean[m]), max(by_mean[m])):
            if len(pairs) < n and (m, sk) not in pairs:
                pairs.append((m, sk))
    return [min(by_mean[m][sk], key=lambda v: (abs(v.scale - 2.0), v.index)) for m, sk in sorted(pairs)]


def run(study: Study) -> None:
    from .variants import generate_variants

    s: Settings = study.settings
    common = {"dataset": s.dataset, "data_path": s.data_path, "vgg_depth": s.vgg_depth, "patch_size": s.patch_size,
              "width_multiplier": s.width_multiplier, "epochs": s.epochs, "train_fraction": s.train_fraction,
              "batch_size": s.batch_size, "lr": s.lr, "lr_wr_epochs": s.lr_wr_epochs, "seed": s.seed,
              "device": s.device}
    grid = choose_grid(generate_variants(s.vgg_depth, s.patch_size, s.width_multiplier), s.variants)
    records = []
    for v in grid:
        c = study.child(f"variant{v.index}", "train", {**common, "variant": v.index}, resumable=True)
        records.append(study.load_json(c.run_id, "feature_amounts/result.json"))
    ref = study.child("reference", "train", {**common, "reference": True}, resumable=True)
    records.append(study.load_json(ref.run_id, "feature_amounts/result.json"))
    study.publish(report(study, records, s.vgg_depth))


def early_claim(records: list[dict], depth: int, tolerance: float, chance: float) -> tuple[Claim, Claim, list]:
    """Early variants (mean in the first third of the layers) vs the reference; spread and the reference's rank.
    ``chance``: the accuracy (%) of guessing; a reference within ``tolerance`` of it learned nothing."""
    variants = [r for r in records if r.get("Mean") is not None]
    ref = next(r for r in records if r.get("Mean") is None)
    ref_acc = float(ref["BestVal"])
    cut = (depth - 1) / 3.0
    early = [r for r in variants if float(r["Mean"]) <= cut]
    gaps = [float(r["BestVal"]) - ref_acc for r in early]
    best = max(gaps) if gaps else math.nan
    if not gaps or ref_acc <= chance + tolerance:
        verdict = INCONCLUSIVE
    elif best >= -tolerance:
        verdict = HOLDS
    else:
        verdict = FAILS
    c1 = Claim("early_features_comparable", QUOTE, SEED,
               f"accuracy of each variant with mean <= {cut:g} (features early) minus the reference's "
               f"({ref_acc:.2f}%), best of {len(early)} variants", f"best {best:+.2f} pp; all: {fmt_spread(gaps)} pp",
               f"holds if at least one early variant is within {tolerance:g} pp of the reference or above it, does "
               f"not hold otherwise; inconclusive without early variants or when the reference is within "
               f"{tolerance:g} pp of chance ({chance:.3g}%)", verdict, best)
    accs = sorted((float(r["BestVal"]) for r in records), reverse=True)
    rank = accs.index(ref_acc) + 1
    spread = max(accs) - min(accs)
    # a spread larger than the tolerance means the way the budget is spread matters at this scale, unless most
    # networks learned nothing (median within the tolerance of chance): then the range is noise
    median = float(sorted(accs)[len(accs) // 2])
    v2 = INCONCLUSIVE if median <= chance + tolerance else (HOLDS if spread > tolerance else FAILS)
    c2 = Claim("budget_spread_matters", QUOTE, SEED,
               f"range (max − min) of accuracy over the {len(records)} networks at the same budget; the reference "
               f"ranks {rank} of {len(records)}", f"range {spread:.2f} pp; accuracies {fmt_spread(accs)} %",
               f"holds if the range exceeds {tolerance:g} pp (where the features go changes accuracy), else does not "
               f"hold; inconclusive when the median network is within {tolerance:g} pp of chance ({chance:.3g}%)",
               v2, spread)
    rows = [[r.get("VariantId"), r.get("Mean"), r.get("Variance"), r.get("Skew"), r.get("Parameters"), r["BestVal"]]
            for r in sorted(records, key=lambda r: -float(r["BestVal"]))]
    return c1, c2, rows


def report(study: Study, records: list[dict], depth: int) -> Report:
    from .plots import figure_mean_skew, figure_parameters

    s: Settings = study.settings
    from shared.data import DATASETS

    c1, c2, rows = early_claim(records, depth, s.tolerance, 100.0 / DATASETS.get(s.dataset).num_classes)
    title = f"{len(records) - 1} variants + reference, {s.dataset}, budget x{s.width_multiplier:g}"
    return Report(
        title=f"feature_amounts study: VGG-{depth} variants on {s.dataset}", project="feature_amounts",
        scale=study.scale,
        summary=(f"{len(records) - 1} variants spread over (mean, skew) plus the reference "
                 f"VGG-{depth}, budget x{s.width_multiplier:g}, {s.patch_size} px, {s.epochs} epochs of SGDR on "
                 f"{s.train_fraction:.0%} of the training set, seed {s.seed}. "
                 + ("" if study.scale == "paper" else "Reduced from the paper: a fraction of the feature budget, of "
                                                      "the training set and of the 150 epochs, one seed, and a "
                                                      "dozen of the ~200 variants.")),
        claims=[c1, c2],
        tables=[("Accuracy at the same budget (best first)",
                 ["variant", "mean", "scale (CSV: Variance)", "skew", "parameters", "best top-1 %"], rows)],
        figures={"mean_skew": figure_mean_skew(records, title), "accuracy_vs_parameters":
                 figure_parameters(records, title)},
        captions={"mean_skew": "best accuracy over (mean, skew) and against mean and skew",
                  "accuracy_vs_parameters": "accuracy against parameters; the reference is the star"})
