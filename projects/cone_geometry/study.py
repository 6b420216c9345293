"""``geomlab cone-geometry study``: teachers, students from several teacher epochs, their cones' nesting states, and
the poster's two conclusions, each against its null (seeds 000/002).

Per seed (an independent run): train a teacher with a snapshot every epoch (``train --snapshot-every 1``); from each
of the chosen teacher epochs (epoch 0: the untrained teacher) distill a Student with that seed (``distill --teacher
runs:/<id>/snapshots/epoch_NNN.pt --seed <seed>``: the students of one run start from the same weights and see the
same batches, so that they differ by their teacher alone); compute the nesting statistics of every student at the
end of distillation and at its initialization (``nesting --student runs:/<distill>/snapshots/epoch_000.pt``, which
every distill run writes), and the agreement of the untrained teacher's student with the trained teacher (the
distill runs log their own agreement, ``test_teacher_agreement`` / ``test_teacher_kl``).

Claims (replicate = run; each against its null, measured in the same study):

* ``low_variance_higher_blocks`` ("Low variance for higher blocks."): a block's state fractions average over its n
  filter-channels (36, 256, 4096 in LeNet9), so their variance across runs falls as 1/n whatever training does. The
  statistic therefore divides the variance by its sampling floor (sum over states of p (1 - p) / n) and splits it
  into each run's share (:func:`~.aggregate.variance_shares`, averaged over the trained teacher epochs); per run, the
  slope over the blocks of the share's square root (the run's deviation from the others in sampling SDs: a squared
  deviation is too skewed for a t-interval), against the same slope of the same students at initialization.
  On one-channel inputs block 0 compares each cone with a single cone (its block's first convolution has one input
  channel), not with a combination of cones as the higher blocks do: it is a different statistic and is left out of
  the slope (shown apart).
* ``distribution_stabilizes`` ("Distribution stabilizes during training"): per run, the total-variation distance
  between the net-wise state distributions of the students of consecutive trained teacher epochs (per teacher
  epoch), and how much it shrank from the first step to the last (:func:`~.aggregate.contrast`), against the same
  statistic of the same students at initialization.

Precondition of both: the students mimic their teachers -- in every run, the least top-1 test agreement of a trained
teacher's student with its teacher beats the agreement of the untrained teacher's student with the trained teacher
(it had the same data, seed and training, but no trained teacher) by at least ``MIN_AGREEMENT_GAIN``, and the gain
holds by ``verdict_vs_null`` with that smallest effect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from shared.errors import check
from shared.study import (HOLDS, SEEDS_HELP, Claim, Paper, PaperClaim, Precondition, Report, Study, fmt_spread,
                          setting, verdict_vs_null)

QUOTE_VAR = "Low variance for higher blocks."
QUOTE_STABLE = "Distribution “stabilizes” during training."
QUOTE_CONES = "Each channel of each filter defines a **polyhedral cone** with *apex on the identity line*."
QUOTE_LARGE = "How strongly does this reflect the behaviour of large CNNs?"
SOURCE = "poster, Conclusion (figures 'Net-wise' and 'Block-wise distribution for LeNet9')"

PAPER = Paper(
    "Matteo Gamba, Stefan Carlsson, Hossein Azizpour, Mårten Björkman (KTH Royal Institute of Technology), "
    "“On the Geometry of Rectifier Convolutional Neural Networks”, poster (seed 002) with the code's README (seed "
    "000, github.com/magamba/cones); venue and year are not given there (ICCV workshops 2019 per this project's "
    "README)",
    (PaperClaim("low_variance_higher_blocks", SOURCE, QUOTE_VAR, ("low_variance_higher_blocks",)),
     PaperClaim("distribution_stabilizes", SOURCE, QUOTE_STABLE, ("distribution_stabilizes",)),
     PaperClaim("cones_apex_on_identity_line", "poster, Polyhedral Cones", QUOTE_CONES,
                why_not="a property of the construction, not an experiment: the fidelity tests (tests/cone_geometry) "
                        "check the apex, opening and rotation against the literal definitions"),
     PaperClaim("large_cnns", "poster, Conclusion", QUOTE_LARGE,
                why_not="an open question of the poster, not a claim; this study trains LeNet9 only")))

# -- the design's thresholds (stated in every report) ---------------------------------------------------------------
#: the smallest agreement gain that makes a student a mimic: a fifth of the test images more than the untrained
#: teacher's student agrees with the trained teacher
MIN_AGREEMENT_GAIN = 0.2
#: the smallest change of the slope over blocks of a run's deviation (in sampling SDs) that counts: one sampling SD
#: per block, about half the deviation of students at initialization (~1.9 SDs in every block of random LeNet9
#: students, measured on 64 of them)
MIN_VAR_EFFECT = 1.0
#: the smallest stabilization that counts: the last step's distance at most 2/3 of the first's (contrast 0.2)
MIN_SHRINK = 0.2
#: consecutive trained teacher epochs needed to see a change of the step size (two steps)
MIN_TRAINED_EPOCHS = 3


@dataclass(frozen=True)
class Settings:
    arch: str = setting("LeNet9", like="train")  # of the teachers (LeNet9 or VGG9 in the poster)
    dataset: str = setting("digits", like="train")
    data_path: str = setting("./data", like="train")
    seeds: tuple = setting((0, 1, 2), SEEDS_HELP)  # one teacher run each and its students; at least 3
    teacher_epochs_total: int = setting(3, "Teacher training epochs (a snapshot after each).")
    teacher_train_fraction: float = setting(1.0, "Fraction of the training set the teachers train on (train "
                                                 "--train-fraction, seeded by --split-seed 0; the students': "
                                                 "--train-fraction).")
    teacher_epochs: tuple = setting((0, 1, 2, 3), like="distill-all")  # must hold 0 (the untrained teacher)
    student_epochs: int = setting(1, "Distillation epochs of every student.")
    train_fraction: float = setting(1.0, like="distill")  # of the students' distillation (the teachers: all)
    temperature: float = setting(4.0, like="distill")
    kl_weight: float = setting(1.0, like="distill")
    kl_reduction: str = setting("batchmean", like="distill")
    optimizer: str = setting("adam", like="train")  # of teachers and students, as lr and batch_size
    lr: float = setting(1e-3, like="train")  # Adam at 3e-3 leaves the students at chance accuracy (measured)
    batch_size: int = setting(32, like="train")
    quick: bool = setting(False, like="nesting")
    device: str = setting("auto", like="train")

    def validate(self) -> None:
        check(len(self.seeds) >= 3, "--seeds needs at least three runs (each run's share of the variance across "
                                    "runs is the replicate; two runs would have equal shares)")
        check(len(set(self.seeds)) == len(self.seeds), f"--seeds has a repeated seed: {self.seeds}")
        check(len(set(self.teacher_epochs)) == len(self.teacher_epochs),
              f"--teacher-epochs has a repeated epoch: {self.teacher_epochs}")
        check(all(0 <= e <= self.teacher_epochs_total for e in self.teacher_epochs),
              f"--teacher-epochs must lie in 0..{self.teacher_epochs_total} (--teacher-epochs-total)")
        check(0 in self.teacher_epochs, "--teacher-epochs must hold 0: the untrained teacher's student is the null "
                                        "of the agreement precondition")
        check(any(e > 0 for e in self.teacher_epochs), "--teacher-epochs needs a trained epoch (> 0)")
        check(self.student_epochs >= 1, f"--student-epochs must be >= 1, got {self.student_epochs}")
        check(0 < self.train_fraction <= 1, f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        check(0 < self.teacher_train_fraction <= 1,
              f"--teacher-train-fraction must be in (0, 1], got {self.teacher_train_fraction}")


PRESETS = {
    # the cpu design on the embedded digits (seconds per child)
    "smoke": Settings(),
    # Fashion-MNIST, LeNet9, 5 runs (the replicates: the budget goes to runs, as the variance across runs needs them):
    # a teacher of 6 epochs on a seeded half of the training set (batch 128, a snapshot after each: 1407 Adam steps
    # in all) and 4 students each (teacher epochs 0, 2, 4, 6), each distilled for 1 epoch on a seeded 25% of the
    # training set (117 Adam steps) with the KL term alone (kl-weight 1: the student never sees a label), batchmean,
    # T = 4. Probe students (teacher after 1 epoch, test acc 0.83) agreed with their teacher on 0.54 of the test
    # images after 47 steps and 0.67 after 94 (the untrained student: 0.09); T = 1 and batch 32 did no better.
    # Estimated on an idle 2-core AVX2 machine from single-thread CPU times: teacher ~72 s (11 s a half epoch + a
    # test pass), student ~32 s (0.136 s a step + 3 test passes of 4.4 s), nesting child ~1 s, cross agreement
    # ~6.5 s: ~215 s a run, ~18 min in all (see the STUDIES text).
    "cpu": Settings(dataset="fashion_mnist", seeds=(0, 1, 2, 3, 4), teacher_epochs_total=6,
                    teacher_train_fraction=0.5, teacher_epochs=(0, 2, 4, 6), student_epochs=1, train_fraction=0.25,
                    batch_size=128),
    # the poster: LeNet9 on CIFAR-10, 75 epochs of SGD, students from every 10th epoch, 30 distillation epochs, with
    # the original's distillation loss (T = 22, kl-weight 0.7, KL averaged over batch x classes): the paper's
    # settings, under which a student also learns from the labels (the precondition says whether it mimics)
    "paper": Settings(dataset="cifar10", seeds=(0, 1, 2, 3, 4), teacher_epochs_total=75,
                      teacher_epochs=(0, 10, 20, 30, 40, 50, 60, 70, 75), student_epochs=30, temperature=22.0,
                      kl_weight=0.7, kl_reduction="mean", optimizer="sgd", lr=0.1, batch_size=100),
}


@dataclass
class Results:
    """What the children gave: nesting documents of the students at the end of distillation and at initialization
    (keyed (seed, teacher epoch)), their agreement with their teachers, the untrained teacher's student's agreement
    with the trained teacher (per seed), and the accuracies."""

    seeds: list
    epochs: list  # teacher epochs, 0 first
    trained: dict  # (seed, epoch) -> nesting document of the distilled student
    init: dict  # (seed, epoch) -> nesting document of the same student at initialization
    agreement: dict = field(default_factory=dict)  # (seed, epoch) -> {"init", "final", "kl_init", "kl_final"}
    cross: dict = field(default_factory=dict)  # seed -> (agreement, kl) of the epoch-0 student with the last teacher
    accs: dict = field(default_factory=dict)  # (seed, epoch) -> (teacher test_acc, student test_acc)
    in_channels: int = 1

    @property
    def trained_epochs(self) -> list:
        return [e for e in self.epochs if e > 0]


def _nesting(study: Study, name: str, student: str, quick: bool) -> dict:
    ne = study.child(name, "nesting", {"student": student, "quick": quick})
    path = next(p for p in study.artifacts(ne.run_id, "nesting") if p.endswith(".json"))
    return study.load_json(ne.run_id, path)


def _first_last(history: list) -> tuple[float | None, float | None]:
    """(value at step 0, last value) of a metric history."""
    if not history:
        return None, None
    return (history[0][1] if history[0][0] == 0 else None), history[-1][1]


def run(study: Study) -> None:
    from shared.datasets import DATASETS
    from shared.hardware import fast_precision

    from .runner import snapshot_agreement

    s: Settings = study.settings
    precision, channels_last = fast_precision(s.device)
    compute = {"precision": precision, "channels_last": channels_last}
    opt = {"optimizer": s.optimizer, "lr": s.lr, "batch_size": s.batch_size, "device": s.device}
    kd = {"train_fraction": s.train_fraction, "temperature": s.temperature, "kl_weight": s.kl_weight,
          "kl_reduction": s.kl_reduction}
    epochs = sorted(s.teacher_epochs)
    res = Results(list(s.seeds), epochs, {}, {}, in_channels=len(DATASETS.get(s.dataset).mean))
    for seed in s.seeds:
        teacher = study.child(f"teacher-seed{seed}", "train",
                              {"arch": s.arch, "dataset": s.dataset, "data_path": s.data_path,
                               "epochs": s.teacher_epochs_total, "snapshot_every": 1, "seed": seed,
                               "train_fraction": s.teacher_train_fraction, **opt, **compute},
                              resumable=True)
        teacher_acc = dict(study.metric_history(teacher.run_id, "test_acc"))  # step = epoch
        untrained_student = None
        for e in epochs:
            st = study.child(f"student-seed{seed}-epoch{e}", "distill",
                             {"teacher": f"runs:/{teacher.run_id}/snapshots/epoch_{e:03d}.pt", "data_path": s.data_path,
                              "epochs": s.student_epochs, "seed": seed, **kd, **opt, **compute})
            untrained_student = st if e == 0 else untrained_student
            res.trained[(seed, e)] = _nesting(study, f"nesting-seed{seed}-epoch{e}", st.run_id, s.quick)
            res.init[(seed, e)] = _nesting(study, f"nesting-init-seed{seed}-epoch{e}",
                                           f"runs:/{st.run_id}/snapshots/epoch_000.pt", s.quick)
            a0, a1 = _first_last(study.metric_history(st.run_id, "test_teacher_agreement"))
            k0, k1 = _first_last(study.metric_history(st.run_id, "test_teacher_kl"))
            res.agreement[(seed, e)] = {"init": a0, "final": a1, "kl_init": k0, "kl_final": k1}
            student_acc = study.metric_history(st.run_id, "test_acc")
            res.accs[(seed, e)] = (teacher_acc.get(e), student_acc[-1][1] if student_acc else None)
        # the untrained teacher's student against the trained teacher: what agreement needs no trained teacher
        res.cross[seed] = snapshot_agreement(untrained_student.run_id,
                                             f"runs:/{teacher.run_id}/snapshots/epoch_{epochs[-1]:03d}.pt",
                                             dataset=s.dataset, data_path=s.data_path, device=s.device)
    study.publish(report(study, res))


# ------------------------------------------------------------------------------------------------------------------
# statistics and rules (pure: documents and numbers in, claims out)


def _finite(values: Sequence[Any]) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def agreement_precondition(res: Results) -> tuple[Precondition, list[float], list[float]]:
    """Students mimic their teachers: per run, the least final top-1 agreement of a trained teacher's student with its
    teacher (``own``) against the untrained teacher's student's agreement with the last trained teacher (``null``),
    paired by run: ok when every run gains at least ``MIN_AGREEMENT_GAIN`` and the gain holds by
    :func:`verdict_vs_null` with that min_effect."""
    finals = [[res.agreement[(k, e)]["final"] for e in res.trained_epochs] for k in res.seeds]
    own = [None if any(v is None for v in f) else min(f) for f in finals]
    null = [res.cross[k][0] if res.cross.get(k) else None for k in res.seeds]
    if not (_finite(own) and _finite(null)):
        return Precondition("students mimic their teachers", "agreement not measured for every run",
                            "every run needs the students' test_teacher_agreement", False), own, null
    verdict, gain = verdict_vs_null(own, null, min_effect=MIN_AGREEMENT_GAIN)
    measured = (f"least top-1 test agreement of a run's trained-teacher students with their teachers "
                f"{fmt_spread(own)}; the untrained teacher's student with the epoch-{res.epochs[-1]} teacher "
                f"{fmt_spread(null)}; gain {fmt_spread(gain)}")
    rule = (f"the gain, paired by run, is at least {MIN_AGREEMENT_GAIN} in every run and holds by verdict_vs_null "
            f"with min_effect {MIN_AGREEMENT_GAIN} (the arms' 95% t-intervals apart, the paired one above 0)")
    ok = verdict == HOLDS and min(gain) >= MIN_AGREEMENT_GAIN
    return Precondition("students mimic their teachers", measured, rule, ok), own, null


def trend_blocks(n_blocks: int, in_channels: int) -> list[int]:
    """The blocks of the variance slope: all but block 0 on one-channel inputs (there each cone is compared with a
    single cone, as its block's first convolution has one input channel, not with a combination of cones)."""
    return [b for b in range(n_blocks) if not (b == 0 and in_channels == 1)]


def run_shares(docs: dict, seeds: Sequence, epochs: Sequence) -> "np.ndarray":
    """(runs, blocks): each run's share of the across-run variance of each block's state fractions in units of the
    block's sampling floor (:func:`~.aggregate.variance_shares` per teacher epoch), averaged over ``epochs``."""
    import numpy as np

    from .aggregate import block_fraction_stack, block_sizes, variance_shares

    n = block_sizes(docs[(seeds[0], epochs[0])])
    return np.mean([variance_shares(block_fraction_stack([docs[(k, e)] for k in seeds]), n) for e in epochs], axis=0)


def raw_variance(docs: dict, seeds: Sequence, epochs: Sequence) -> "np.ndarray":
    """(blocks,): the poster's statistic, the variance across runs (ddof 1) of each block's state fractions summed
    over the four states, averaged over ``epochs``."""
    import numpy as np

    from .aggregate import block_fraction_stack

    return np.mean([block_fraction_stack([docs[(k, e)] for k in seeds]).var(axis=0, ddof=1).sum(axis=-1)
                    for e in epochs], axis=0)


def _arm_text(shares: "np.ndarray", blocks: Sequence[int]) -> str:
    return ", ".join(f"block {b}: {fmt_spread(list(shares[:, b]))}" for b in blocks)


def variance_claim(res: Results, pre: Sequence[Precondition]) -> tuple[Claim, dict]:
    """``low_variance_higher_blocks``: per run, the slope over the trend blocks of its normalized variance shares
    (trained students, averaged over the trained teacher epochs), against the same slope at initialization; smaller
    is the claim's side. The untrained teacher's students are shown beside (one network per run)."""
    import numpy as np

    from .aggregate import slope

    seeds, te = res.seeds, res.trained_epochs
    tr = run_shares(res.trained, seeds, te)
    ini = run_shares(res.init, seeds, te)
    unt = run_shares(res.trained, seeds, [0])
    nb = tr.shape[1]
    blocks = trend_blocks(nb, res.in_channels)
    pre = list(pre)
    pre.append(Precondition("at least two blocks in the trend", f"{len(blocks)} (blocks {blocks})",
                            "a slope over the blocks needs two", len(blocks) >= 2))
    def slopes(shares):  # on the standard-deviation scale: a share is a squared deviation, far from normal
        return list(slope(blocks, np.sqrt(shares[:, blocks]))) if len(blocks) >= 2 else [math.nan] * len(seeds)

    s_tr, s_in, s_un = slopes(tr), slopes(ini), slopes(unt)
    verdict, _ = verdict_vs_null(s_tr, s_in, min_effect=MIN_VAR_EFFECT, larger=False)
    v_un, _ = verdict_vs_null(s_tr, s_un, min_effect=MIN_VAR_EFFECT, larger=False)
    raw = {"trained": raw_variance(res.trained, seeds, te), "init": raw_variance(res.init, seeds, te),
           "untrained_teacher": raw_variance(res.trained, seeds, [0])}
    excluded = [b for b in range(nb) if b not in blocks]
    measured = (f"slope {fmt_spread(s_tr)} (sampling SDs per block); normalized variance per block: "
                f"{_arm_text(tr, range(nb))}"
                + (f" (block {', '.join(map(str, excluded))} left out of the slope: one-channel inputs, each cone "
                   "compared with a single cone)" if excluded else "")
                + "; the poster's raw variance per block " + ", ".join(f"{v:.3g}" for v in raw["trained"]))
    null = (f"the same students at initialization: slope {fmt_spread(s_in)}; {_arm_text(ini, range(nb))}; raw "
            + ", ".join(f"{v:.3g}" for v in raw["init"]) + f". Beside it, the untrained teacher's students (one "
            f"network per run): slope {fmt_spread(s_un)} (trained against them: {v_un}); raw "
            + ", ".join(f"{v:.3g}" for v in raw["untrained_teacher"]))
    c = Claim("low_variance_higher_blocks", QUOTE_VAR, SOURCE,
              f"per run: its share of the variance across {len(seeds)} runs of each block's state fractions (summed "
              f"over the 4 states), divided by the block's sampling floor sum_s p(1-p)/n (n = the block's "
              f"filter-channels), averaged over teacher epochs {', '.join(map(str, te))}; the least-squares slope "
              f"of its square root (the run's deviation in sampling SDs) over blocks {', '.join(map(str, blocks))}",
              measured,
              f"paired by run, verdict_vs_null(trained slope, slope at initialization, min_effect {MIN_VAR_EFFECT}, "
              "smaller is the claim): holds when the trained slope lies below the null's by at least "
              f"{MIN_VAR_EFFECT} sampling SD per block with the 95% t-intervals apart; does not hold when the paired "
              f"interval of (null - trained) lies wholly below {MIN_VAR_EFFECT}", verdict,
              float(np.mean(s_tr)) if _finite(s_tr) else None, null=null,
              null_value=float(np.mean(s_in)) if _finite(s_in) else None, preconditions=pre)
    return c, {"trained": tr, "init": ini, "untrained_teacher": unt, "raw": raw, "blocks": blocks,
               "slopes": {"trained": s_tr, "init": s_in, "untrained_teacher": s_un}}


def step_rates(docs: dict, seeds: Sequence, epochs: Sequence) -> "np.ndarray":
    """(runs, steps): the total-variation distance between the net-wise state distributions of consecutive
    ``epochs``, divided by the epochs between them."""
    import numpy as np

    from .aggregate import doc_fractions, tv_distance

    out = []
    for k in seeds:
        p = [doc_fractions(docs[(k, e)])["net"] for e in epochs]
        out.append([float(tv_distance(p[i], p[i - 1])) / (epochs[i] - epochs[i - 1]) for i in range(1, len(p))])
    return np.asarray(out, dtype=float).reshape(len(seeds), max(len(epochs) - 1, 0))


def stabilization_claim(res: Results, pre: Sequence[Precondition]) -> tuple[Claim, dict]:
    """``distribution_stabilizes``: per run, the contrast (first - last) / (first + last) of the per-epoch distance
    between consecutive trained teacher epochs' students, against the same contrast at initialization."""
    import numpy as np

    from .aggregate import contrast

    seeds, te = res.seeds, res.trained_epochs
    pre = list(pre)
    pre.append(Precondition("trained teacher epochs", f"{len(te)} ({', '.join(map(str, te))})",
                            f"at least {MIN_TRAINED_EPOCHS} (two steps to compare)", len(te) >= MIN_TRAINED_EPOCHS))
    r_tr, r_in = step_rates(res.trained, seeds, te), step_rates(res.init, seeds, te)
    if len(te) >= MIN_TRAINED_EPOCHS:
        c_tr = [contrast(r[0], r[-1]) for r in r_tr]
        c_in = [contrast(r[0], r[-1]) for r in r_in]
    else:
        c_tr = c_in = [math.nan] * len(seeds)
    verdict, _ = verdict_vs_null(c_tr, c_in, min_effect=MIN_SHRINK)
    steps = [f"{te[i - 1]}→{te[i]}" for i in range(1, len(te))]

    def per_step(r):
        return "; ".join(f"{st}: {fmt_spread(list(r[:, i]))}" for i, st in enumerate(steps)) or "no step"

    c = Claim("distribution_stabilizes", QUOTE_STABLE, SOURCE,
              "per run: the total-variation distance between the net-wise state distributions of the students of "
              "consecutive trained teacher epochs (same seed: same initial weights and batches), per teacher epoch; "
              "the contrast (first step - last step) / (first + last), in [-1, 1] (1: the last step did not change "
              "the distribution)",
              f"contrast {fmt_spread(c_tr)}; distance per step: {per_step(r_tr)}",
              f"paired by run, verdict_vs_null(trained contrast, contrast at initialization, min_effect {MIN_SHRINK}): "
              "holds when the last step is at most 2/3 of the first, beyond the null, with the 95% t-intervals apart; "
              f"does not hold when the paired interval lies wholly below {MIN_SHRINK}",
              verdict, float(np.mean(c_tr)) if _finite(c_tr) else None,
              null=f"the same students at initialization: contrast {fmt_spread(c_in)}; distance per step: "
                   f"{per_step(r_in)}",
              null_value=float(np.mean(c_in)) if _finite(c_in) else None, preconditions=pre)
    return c, {"trained": r_tr, "init": r_in, "steps": steps, "contrast": {"trained": c_tr, "init": c_in}}


def claims(res: Results) -> tuple[list[Claim], dict, dict, Precondition]:
    pre, _, _ = agreement_precondition(res)
    c1, var = variance_claim(res, [pre])
    c2, stab = stabilization_claim(res, [pre])
    return [c1, c2], var, stab, pre


def _cell(vals: Sequence[Any]) -> str:
    import numpy as np

    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def accuracy_rows(accs: dict, seeds, epochs) -> list[list[str]]:
    """Per teacher epoch: the teachers' and the students' test accuracies (mean ± sd over runs); a student at chance
    accuracy did not learn, and its nesting statistics describe an untrained network."""
    return [[str(e), _cell([accs[(k, e)][0] for k in seeds]), _cell([accs[(k, e)][1] for k in seeds])]
            for e in epochs]


def agreement_rows(res: Results) -> list[list[str]]:
    """Per teacher epoch: accuracies and the students' agreement with their own teacher at initialization and at the
    end of distillation (top-1, KL at T = 1), mean ± sd over runs; last, the untrained teacher's student against the
    last trained teacher."""
    rows = []
    for e in res.epochs:
        a = [res.agreement[(k, e)] for k in res.seeds]
        rows.append([str(e), _cell([res.accs[(k, e)][0] for k in res.seeds]),
                     _cell([res.accs[(k, e)][1] for k in res.seeds]), _cell([x["init"] for x in a]),
                     _cell([x["final"] for x in a]), _cell([x["kl_final"] for x in a])])
    cross = [res.cross.get(k) for k in res.seeds]
    rows.append([f"0 against {res.epochs[-1]}", "–", "–", "–", _cell([c[0] if c else None for c in cross]),
                 _cell([c[1] if c else None for c in cross])])
    return rows


def report(study: Study, res: Results) -> Report:
    from shared.hardware import fast_precision

    from . import plots
    from .aggregate import aggregate_states, evolution
    from .nesting import STATE_NAMES

    s: Settings = study.settings
    seeds, epochs = res.seeds, res.epochs
    cl, var, stab, pre = claims(res)
    by_epoch = {str(e): [res.trained[(k, e)] for k in seeds] for e in epochs}
    evo = evolution(by_epoch)
    title = f"Student_{s.arch} on {s.dataset}"
    last = aggregate_states(by_epoch[str(epochs[-1])])
    first = aggregate_states(by_epoch[str(epochs[0])])
    at_init = aggregate_states([res.init[(k, epochs[-1])] for k in seeds])
    figures = {"netwise_states_last": plots.states_net(last, f"{title}, teacher epoch {epochs[-1]}"),
               "blockwise_states_last": plots.states_blocks(last, f"{title}, teacher epoch {epochs[-1]}"),
               "blockwise_states_init": plots.states_blocks(at_init, f"{title}, at initialization"),
               "blockwise_states_untrained_teacher": plots.states_blocks(first, f"{title}, untrained teacher"),
               "evolution_states": plots.evolution_states(evo, title),
               "normalized_variance": plots.normalized_variance(
                   {"trained students": var["trained"], "at initialization": var["init"],
                    "untrained teacher's students": var["untrained_teacher"]}, var["blocks"], title),
               "step_distances": plots.step_distances({"trained students": stab["trained"],
                                                       "at initialization": stab["init"]}, stab["steps"], title)}
    rows = [[str(e)] + [f"{evo['net_mean'][i][j]:.3f} ± {evo['net_std'][i][j]:.3f}" for j in range(4)]
            for i, e in enumerate(epochs)]
    nb = var["trained"].shape[1]
    var_rows = [[arm] + [_cell(list(var[key][:, b])) for b in range(nb)] + [f"{v:.3g}" for v in var["raw"][key]]
                for arm, key in (("trained teachers' students", "trained"), ("the same at initialization", "init"),
                                 ("untrained teacher's students", "untrained_teacher"))]
    dist_rows = [[st, _cell(list(stab["trained"][:, i])), _cell(list(stab["init"][:, i]))]
                 for i, st in enumerate(stab["steps"])]
    est = ("" if study.scale != "cpu" else
           " Estimated on an idle 2-core AVX2 machine: teacher ~72 s, student ~32 s, nesting child ~1 s, cross "
           "agreement ~6.5 s: about 18 minutes in all.")
    spent = (f"The budget: {len(seeds)} runs (the replicates); per run a teacher of {s.teacher_epochs_total} "
             f"epochs on {s.teacher_train_fraction:.0%} of the training set and {len(epochs)} students (teacher "
             f"epochs {', '.join(map(str, epochs))}) of "
             f"{s.student_epochs} epoch(s) on {s.train_fraction:.0%} of the training set, each analysed twice (at the "
             f"end of distillation and at initialization, the null).{est}")
    precision, _ = fast_precision(s.device)
    return Report(
        title=f"cone_geometry study: {title}", project="cone_geometry", scale=study.scale,
        summary=(f"{len(seeds)} teacher runs ({s.arch}, {s.teacher_epochs_total} epochs on "
                 f"{s.teacher_train_fraction:.0%} of the training set, {s.optimizer} lr {s.lr:g}); "
                 f"a student distilled from teacher epochs {', '.join(map(str, epochs))} for {s.student_epochs} "
                 f"epoch(s) each with the run's seed, on {s.train_fraction:.0%} of the training set (T = "
                 f"{s.temperature:g}, kl-weight {s.kl_weight:g}, KL {s.kl_reduction}); nesting statistics "
                 f"{'without' if s.quick else 'with'} the exact rotation, of every student and of its initialization. "
                 + ("The paper's distillation settings." if study.scale == "paper" else
                    "Reduced from the poster: far fewer teacher and distillation epochs (75 and 30 there), on 28x28 "
                    "images instead of CIFAR-10; the KL term alone at T = 4 with batchmean, not the original's "
                    "T = 22, kl-weight 0.7 and mean (under which the students learn from the labels: they kept "
                    "the paper preset).")),
        claims=cl, paper=PAPER, spent=spent, hardware={"precision": precision},
        tables=[("Students and teachers: test accuracy, and the students' top-1 agreement with their own teacher at "
                 "initialization and after distillation, and KL(teacher || student) at T = 1 (mean ± sd over runs; "
                 "epoch 0: the untrained teacher; last row: its student against the trained teacher, the null of "
                 f"the precondition). Precondition: {pre.text()}",
                 ["teacher epoch", "teacher test_acc", "student test_acc", "agreement at init", "agreement",
                  "KL (nats)"], agreement_rows(res)),
                ("Variance across runs per block: each run's share in units of the block's sampling floor (mean ± sd "
                 "over runs; 1 = what independent filter-channels give) and the poster's raw variance (summed over "
                 "states), averaged over the trained teacher epochs",
                 ["arm"] + [f"block {b} (normalized)" for b in range(nb)] + [f"block {b} (raw)" for b in range(nb)],
                 var_rows),
                ("Distance per teacher epoch between consecutive trained teacher epochs' students (net-wise, total "
                 "variation; mean ± sd over runs)", ["step", "trained students", "at initialization"], dist_rows),
                ("Net-wise state fractions over teacher epochs (mean ± std over runs)",
                 ["teacher epoch"] + list(STATE_NAMES), rows)],
        figures=figures,
        captions={"evolution_states": "net-wise state fractions over teacher epochs (mean ± std over runs)",
                  "normalized_variance": "each run's share of the variance across runs, in units of the sampling "
                                         "floor, per block (points: runs; bars: means)",
                  "step_distances": "distance per teacher epoch between consecutive trained teacher epochs' "
                                    "students, per run"})
