"""``geomlab hyperplane-bias study``: the paper's experiment end to end (seed 001), with computed verdicts.

Per seed: train the network with a snapshot every epoch, and the paper's controls with the same settings -- label
noise (``--noise``) and pixel shuffle; the untrained control is each run's own initialization (``epoch_000``). Then the
projection statistics over training of every run (``projections --run``, normalized), the re-initialization heatmap
of the clean run (``reinit --run --rand``: checkpoints x layers plus a fresh draw) and its correlation with the
projection bias (``correlate``). The report tests the README's two claims:

* "regularities that emerge from training": the projection bias |mass - 0.5| of the whole network (``net``) after
  training minus at initialization, and the clean run's bias minus each control's, over seeds;
* "biased layers are critical": Spearman's rho between each layer's bias and its re-initialization drop (to the
  initialization), pooled over seeds, with its p-value.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.study import (SEEDS_HELP, Claim, Report, Study, fmt_spread, mean_ci, setting, spearman, verdict_by_interval,
                          verdict_by_p)
from shared.errors import check

SEED = "001_0d6e72c4d5690c7b.txt"
QUOTE_REGULAR = ("Hyperplane arrangements of many layers of trained convolutional networks exhibit strong "
                 "regularities, that emerge from training and correlate with learning.")
QUOTE_CRITICAL = ("for low-complexity datasets, layers presenting biased hyperplane arrangements are critical to the "
                  "performance of the network")
CONDITIONS = ("clean", "noise", "shuffle")


@dataclass(frozen=True)
class Settings:
    arch: str = setting("lenet", like="train")  # every training setting: the same for every run
    dataset: str = setting("digits", like="train")
    data_path: str = setting("./data", like="train")
    seeds: tuple = setting((0, 1), SEEDS_HELP)  # one clean run and one run per control each
    epochs: int = setting(3, like="train")
    batch_size: int = setting(64, like="train")
    lr: float = setting(0.01, like="train")  # SGD, momentum 0.9
    control_noise: float = setting(0.5, "Fraction of training labels corrupted in the label-noise control run.")
    max_test: int = setting(0, like="reinit")
    device: str = setting("auto", like="train")

    def validate(self) -> None:
        check(len(self.seeds) >= 1, "--seeds needs at least one seed")
        check(0 < self.control_noise <= 1, f"--control-noise must be in (0, 1], got {self.control_noise}")


PRESETS = {
    "smoke": Settings(),
    # Fashion-MNIST, LeNet, 6 epochs, 3 seeds x 3 conditions = 9 trainings of the 60k images; reinit on 2000 test images
    "cpu": Settings(dataset="fashion_mnist", seeds=(0, 1, 2), epochs=6, batch_size=128, max_test=2000),
    # the paper: VGG-11 on CIFAR-10 (the README's example), 20 epochs
    "paper": Settings(arch="vgg11", dataset="cifar10", seeds=(0, 1, 2), epochs=20, batch_size=128, lr=0.001),
}


def _net_bias(doc: dict) -> float:
    return abs(float(doc["net"]["mass"]) - 0.5)


def run(study: Study) -> None:
    s: Settings = study.settings
    base = {"arch": s.arch, "dataset": s.dataset, "data_path": s.data_path, "epochs": s.epochs,
            "batch_size": s.batch_size, "lr": s.lr, "snapshot_every": 1, "device": s.device}
    control = {"clean": {}, "noise": {"noise": s.control_noise}, "shuffle": {"noise": -1.0}}  # -1: pixel shuffle (seed 001)
    bias = {c: {} for c in ("init",) + CONDITIONS}  # condition -> seed -> net bias
    proj_docs, reinit_ids, correlations = {}, {}, []
    for seed in s.seeds:
        runs = {}
        for cond in CONDITIONS:
            tr = runs[cond] = study.child(f"train-{cond}-seed{seed}", "train", {**base, **control[cond], "seed": seed},
                             resumable=True)
            pr = study.child(f"projections-{cond}-seed{seed}", "projections", {"run": tr.run_id, "cosine": True})
            names = [p for p in study.artifacts(pr.run_id, "projections") if p.endswith(".json")]
            docs = [study.load_json(pr.run_id, p) for p in names]
            bias[cond][seed] = _net_bias(docs[-1])
            if cond == "clean":
                bias["init"][seed] = _net_bias(docs[0])
                proj_docs[seed] = docs
        ri = study.child(f"reinit-seed{seed}", "reinit", {"run": runs["clean"].run_id, "rand": True, "max_test": s.max_test,
                                                          "device": s.device})
        reinit_ids[seed] = ri.run_id
        co = study.child(f"correlate-seed{seed}", "correlate", {"reinit_results": ri.run_id, "cosine": True})
        correlations.append(study.load_json(co.run_id, "correlate/correlate.json"))
    study.publish(report(study, bias, proj_docs, reinit_ids, correlations))


def regularity_claims(bias: dict[str, dict[int, float]]) -> list[Claim]:
    """Trained vs initialization, and trained clean vs each control: per-seed differences and their 95% CI > 0."""
    seeds = sorted(bias["clean"])
    claims = []
    rule = ("holds if the 95% t-interval (mean ± t sd/√n over seeds) of the difference lies above 0, does not hold if it "
            "lies below 0, else inconclusive (also with a single seed)")
    pairs = [("emerges_from_training", "init", "bias(trained) − bias(initialization)"),
             ("correlates_with_learning_noise", "noise", "bias(clean) − bias(label-noise control)"),
             ("correlates_with_learning_shuffle", "shuffle", "bias(clean) − bias(pixel-shuffle control)")]
    for name, other, what in pairs:
        diffs = [bias["clean"][k] - bias[other][k] for k in seeds]
        m, _, lo, hi = mean_ci(diffs)
        claims.append(Claim(name, QUOTE_REGULAR, SEED,
                            f"net projection bias |mass − 0.5| (normalized projections, all conv layers): {what}",
                            fmt_spread(diffs), rule, verdict_by_interval(lo, hi, 0.0), m))
    return claims


def critical_claim(correlations: list[dict]) -> Claim:
    """Spearman's rho of bias vs re-initialization drop (to epoch 0), over every (seed, layer) pair."""
    xs = [r["bias"] for c in correlations for r in c["rows"]]
    ys = [r["drop"] for c in correlations for r in c["rows"]]
    per_seed = [c["spearman"]["bias"]["rho"] for c in correlations if c["spearman"]["bias"]["rho"] is not None]
    rho, p = spearman(xs, ys)
    measured = (f"rho = {rho:+.3f}, p = {p:.3g} over {len(xs)} (seed, layer) pairs" if rho is not None
                else f"undefined (constant column) over {len(xs)} pairs") + \
        f"; per seed rho = {fmt_spread(per_seed)}"
    return Claim("biased_layers_are_critical", QUOTE_CRITICAL, SEED,
                 "Spearman rho between a layer's bias |mass − 0.5| (trained) and its relative accuracy drop when "
                 "re-initialized to its epoch-0 weights, pooled over seeds", measured,
                 "holds if p < 0.05 and rho > 0; does not hold if p < 0.05 and rho < 0; else inconclusive",
                 verdict_by_p(p, rho), rho)


def report(study: Study, bias, proj_docs, reinit_ids, correlations) -> Report:
    from . import plots

    s: Settings = study.settings
    claims = regularity_claims(bias) + [critical_claim(correlations)]
    rows = [[cond] + [bias[cond][k] for k in sorted(bias["clean"])] + [fmt_spread(list(bias[cond].values()))]
            for cond in ("init",) + CONDITIONS]
    header = ["condition"] + [f"seed {k}" for k in sorted(bias["clean"])] + ["mean ± sd"]
    first = sorted(proj_docs)[0]
    figures = {"projections_mass": plots.projections_over_training(proj_docs[first], "mass"),
               "reinit_heatmap": plots.reinit_heatmap(study.load_json(
                   reinit_ids[first], next(p for p in study.artifacts(reinit_ids[first], "reinit")
                                           if p.endswith(".json")))),
               "bias_vs_drop": plots.correlation_figure(correlations[0])}
    rep = Report(
        title=f"hyperplane_bias study: {s.arch} on {s.dataset}", project="hyperplane_bias", scale=study.scale,
        summary=(f"{len(s.seeds)} seeds x 3 conditions (clean, label noise {s.control_noise}, pixel shuffle), {s.epochs} "
                 f"epochs each with a snapshot every epoch; the untrained control is each clean run's epoch-0 "
                 f"snapshot. " + ("" if study.scale == "paper" else
                                  "Reduced from the paper: a small LeNet and few epochs instead of VGG/AlexNet for "
                                  "tens of epochs on CIFAR-10; re-initialization on "
                                  f"{'all' if not s.max_test else s.max_test} test images.")),
        claims=claims, tables=[("Net projection bias |mass − 0.5| per condition", header, rows)], figures=figures,
        captions={"projections_mass": f"projection mass per layer over training (seed {first}, clean run)",
                  "reinit_heatmap": f"re-initialization heatmap, layers x checkpoints and rand (seed {first})",
                  "bias_vs_drop": f"bias vs re-initialization drop per layer (seed {first})"})
    return rep

