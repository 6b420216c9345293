"""``geomlab cone-geometry study``: teachers, students from several teacher epochs, nesting statistics (seeds 000/002).

Per seed (an independent run): train a teacher with a snapshot every epoch (``train --snapshot-every 1``); from each
of the chosen teacher epochs distill a Student (``distill --teacher runs:/<id>/snapshots/epoch_NNN.pt``) and compute
its full nesting statistics (``nesting --student <distill run>``, the exact rotation). The report draws the poster's
net-wise and block-wise distributions of the four states (mean and std over runs) and their evolution over teacher
epochs, and tests the poster's two conclusions:

* "Low variance for higher blocks": the variance across runs of each block's state distribution (summed over the four
  states), against the block index (Spearman, pooled over teacher epochs);
* "Distribution stabilizes during training": the total-variation distance between the net-wise distributions of
  consecutive teacher epochs, per run, and whether it decreases with the epoch (Spearman, pooled over runs).
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.errors import check
from shared.study import SEEDS_HELP, Claim, Report, Study, fmt_spread, setting, spearman, verdict_by_p

SEED = "002_c8e1d96860136141.txt"
QUOTE_VAR = "Low variance for higher blocks."
QUOTE_STABLE = "Distribution “stabilizes” during training."


@dataclass(frozen=True)
class Settings:
    arch: str = setting("LeNet9", like="train")  # of the teachers (LeNet9 or VGG9 in the poster)
    dataset: str = setting("digits", like="train")
    data_path: str = setting("./data", like="train")
    seeds: tuple = setting((0, 1), SEEDS_HELP)  # one teacher run each, at least 2
    teacher_epochs_total: int = setting(3, "Teacher training epochs (a snapshot after each).")
    teacher_epochs: tuple = setting((0, 1, 2, 3), like="distill-all")  # at least 2
    student_epochs: int = setting(1, "Distillation epochs of every student.")
    optimizer: str = setting("adam", like="train")  # of teachers and students, as lr and batch_size
    lr: float = setting(1e-3, like="train")  # Adam at 3e-3 leaves the students at chance accuracy (measured)
    batch_size: int = setting(32, like="train")
    quick: bool = setting(False, like="nesting")
    device: str = setting("auto", like="train")

    def validate(self) -> None:
        check(len(self.seeds) >= 2, "--seeds needs at least two runs (the variance is taken across runs)")
        check(len(self.teacher_epochs) >= 2, "--teacher-epochs needs at least two epochs")
        check(all(0 <= e <= self.teacher_epochs_total for e in self.teacher_epochs),
              f"--teacher-epochs must lie in 0..{self.teacher_epochs_total} (--teacher-epochs-total)")


PRESETS = {
    "smoke": Settings(),
    # Fashion-MNIST with LeNet9: 3 teacher runs (seeds) of 6 epochs, students from 4 teacher epochs, 1 epoch each
    # (measured here: a teacher epoch of the 60k images ~10 s, a Student_LeNet9 distillation epoch ~50 s, so 12
    # students of 2 epochs would take most of the 25 minutes on their own)
    "cpu": Settings(dataset="fashion_mnist", seeds=(0, 1, 2), teacher_epochs_total=6, teacher_epochs=(0, 2, 4, 6),
                    student_epochs=1, batch_size=128),
    # the poster: LeNet9 on CIFAR-10, 75 epochs of SGD, students from every 10th epoch, 30 distillation epochs
    "paper": Settings(dataset="cifar10", seeds=(0, 1, 2), teacher_epochs_total=75,
                      teacher_epochs=(0, 10, 20, 30, 40, 50, 60, 70, 75), student_epochs=30, optimizer="sgd", lr=0.1,
                      batch_size=100),
}


def run(study: Study) -> None:
    s: Settings = study.settings
    opt = {"optimizer": s.optimizer, "lr": s.lr, "batch_size": s.batch_size, "device": s.device}
    docs = {}  # (seed, teacher epoch) -> nesting document
    accs = {}  # (seed, teacher epoch) -> (the teacher's test accuracy at that epoch, the student's final one)
    for seed in s.seeds:
        teacher = study.child(f"teacher-seed{seed}", "train",
                              {"arch": s.arch, "dataset": s.dataset, "data_path": s.data_path,
                               "epochs": s.teacher_epochs_total, "snapshot_every": 1, "seed": seed, **opt},
                              resumable=True)
        teacher_acc = dict(study.metric_history(teacher.run_id, "test_acc"))  # step = epoch
        for e in s.teacher_epochs:
            st = study.child(f"student-seed{seed}-epoch{e}", "distill",
                             {"teacher": f"runs:/{teacher.run_id}/snapshots/epoch_{e:03d}.pt", "data_path": s.data_path,
                              "epochs": s.student_epochs, "seed": seed, **opt})
            ne = study.child(f"nesting-seed{seed}-epoch{e}", "nesting", {"student": st.run_id, "quick": s.quick})
            path = next(p for p in study.artifacts(ne.run_id, "nesting") if p.endswith(".json"))
            doc = study.load_json(ne.run_id, path)
            docs[(seed, e)] = {**doc, "epoch": str(e)}
            student_acc = study.metric_history(st.run_id, "test_acc")
            accs[(seed, e)] = (teacher_acc.get(e), student_acc[-1][1] if student_acc else None)
    study.publish(report(study, docs, accs))


def block_variance(docs: dict, seeds, epochs) -> "np.ndarray":
    """(epochs, blocks): the variance across runs of each block's state fractions, summed over the four states."""
    import numpy as np

    from .aggregate import doc_fractions

    out = []
    for e in epochs:
        fr = np.stack([np.stack(doc_fractions(docs[(k, e)])["blocks"]) for k in seeds])  # runs x blocks x 4
        out.append(np.nansum(fr.var(axis=0, ddof=1), axis=1))
    return np.asarray(out)


def consecutive_distances(docs: dict, seeds, epochs) -> "np.ndarray":
    """(runs, epochs - 1): total-variation distance 0.5 |p_t - p_{t-1}|_1 between consecutive net-wise distributions."""
    import numpy as np

    from .aggregate import doc_fractions

    out = []
    for k in seeds:
        p = [doc_fractions(docs[(k, e)])["net"] for e in epochs]
        out.append([0.5 * float(np.nansum(np.abs(p[i] - p[i - 1]))) for i in range(1, len(p))])
    return np.asarray(out)


def claims(docs: dict, seeds, epochs) -> tuple[list[Claim], "np.ndarray", "np.ndarray"]:
    import numpy as np

    var = block_variance(docs, seeds, epochs)
    nb = var.shape[1]
    xs = [b for _ in epochs for b in range(nb)]
    rho, p = spearman(xs, [float(v) for v in var.ravel()])
    means = ", ".join(f"block {b}: {fmt_spread(list(var[:, b]))}" for b in range(nb))
    c1 = Claim("low_variance_higher_blocks", QUOTE_VAR, SEED,
               f"variance across {len(seeds)} runs of each block's state distribution (summed over the 4 states) at "
               f"each of {len(epochs)} teacher epochs; Spearman rho against the block index, pooled over epochs",
               (f"rho = {rho:+.3f}, p = {p:.3g}" if rho is not None else "rho undefined") + f"; per block over "
               f"epochs: {means}", "holds if p < 0.05 and rho < 0; does not hold if p < 0.05 and rho > 0; else "
                                   "inconclusive", verdict_by_p(p, rho, positive=False), rho)
    dist = consecutive_distances(docs, seeds, epochs)
    ts = [i for _ in seeds for i in range(1, len(epochs))]
    rho2, p2 = spearman(ts, [float(v) for v in dist.ravel()])
    per_step = ", ".join(f"{epochs[i - 1]}→{epochs[i]}: {fmt_spread(list(dist[:, i - 1]))}"
                         for i in range(1, len(epochs)))
    c2 = Claim("distribution_stabilizes", QUOTE_STABLE, SEED,
               "total-variation distance between the net-wise state distributions of consecutive teacher epochs, per "
               "run; Spearman rho against the step index, pooled over runs",
               (f"rho = {rho2:+.3f}, p = {p2:.3g}" if rho2 is not None else "rho undefined") + f"; {per_step}",
               "holds if p < 0.05 and rho < 0 (distances shrink); does not hold if p < 0.05 and rho > 0; else "
               "inconclusive", verdict_by_p(p2, rho2, positive=False), rho2)
    return [c1, c2], var, np.asarray(dist)


def accuracy_rows(accs: dict, seeds, epochs) -> list[list[str]]:
    """Per teacher epoch: the teachers' and the students' test accuracies (mean ± std over runs); a student at chance
    accuracy did not learn, and its nesting statistics describe an untrained network."""
    import numpy as np

    def cell(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "–"
        return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"

    return [[str(e), cell([accs[(k, e)][0] for k in seeds]), cell([accs[(k, e)][1] for k in seeds])]
            for e in epochs]


def report(study: Study, docs: dict, accs: dict) -> Report:
    from . import plots
    from .aggregate import aggregate_states, evolution
    from .nesting import STATE_NAMES

    s: Settings = study.settings
    seeds, epochs = list(s.seeds), list(s.teacher_epochs)
    cl, var, dist = claims(docs, seeds, epochs)
    by_epoch = {str(e): [docs[(k, e)] for k in seeds] for e in epochs}
    evo = evolution(by_epoch)
    title = f"Student_{s.arch} on {s.dataset}"
    last = aggregate_states(by_epoch[str(epochs[-1])])
    first = aggregate_states(by_epoch[str(epochs[0])])
    figures = {"netwise_states_last": plots.states_net(last, f"{title}, teacher epoch {epochs[-1]}"),
               "blockwise_states_last": plots.states_blocks(last, f"{title}, teacher epoch {epochs[-1]}"),
               "netwise_states_first": plots.states_net(first, f"{title}, teacher epoch {epochs[0]}"),
               "blockwise_states_first": plots.states_blocks(first, f"{title}, teacher epoch {epochs[0]}"),
               "evolution_states": plots.evolution_states(evo, title)}
    rows = [[str(e)] + [f"{evo['net_mean'][i][j]:.3f} ± {evo['net_std'][i][j]:.3f}" for j in range(4)]
            for i, e in enumerate(epochs)]
    var_rows = [[str(e)] + [float(v) for v in var[i]] for i, e in enumerate(epochs)]
    return Report(
        title=f"cone_geometry study: {title}", project="cone_geometry", scale=study.scale,
        summary=(f"{len(seeds)} teacher runs ({s.arch}, {s.teacher_epochs_total} epochs, {s.optimizer} lr {s.lr:g}); "
                 f"a student distilled from teacher epochs {', '.join(map(str, epochs))} for {s.student_epochs} "
                 f"epoch(s) each; nesting statistics {'without' if s.quick else 'with'} the exact rotation. "
                 + ("" if study.scale == "paper" else "Reduced from the poster: far fewer teacher and distillation "
                                                      "epochs (75 and 30 there), on 28x28 images instead of "
                                                      "CIFAR-10.")),
        claims=cl,
        tables=[("Test accuracy of the teachers and of their students (mean ± sd over runs; epoch 0: the untrained "
                 "teacher)", ["teacher epoch", "teacher test_acc", "student test_acc"],
                 accuracy_rows(accs, seeds, epochs)),
                ("Net-wise state fractions over teacher epochs (mean ± std over runs)",
                 ["teacher epoch"] + list(STATE_NAMES), rows),
                ("Variance across runs per block (summed over states)",
                 ["teacher epoch"] + [f"block {b}" for b in range(var.shape[1])], var_rows)],
        figures=figures,
        captions={"evolution_states": "net-wise state fractions over teacher epochs (mean ± std over runs)"})
