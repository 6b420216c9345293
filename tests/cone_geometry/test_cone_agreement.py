"""Student-teacher agreement of a distillation (top-1 agreement and KL(teacher || student) at T = 1 on the test set),
logged by `distill` at initialization (step 0) and at its end, against a literal computation; and the student's
initial weights, which follow --seed."""
from __future__ import annotations

import math
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _literal(student_logits, teacher_logits):
    """Agreement and KL written out one input at a time, in float64."""
    s = np.asarray(student_logits, dtype=np.float64)
    t = np.asarray(teacher_logits, dtype=np.float64)
    agree, kl = 0, 0.0
    for si, ti in zip(s, t):
        agree += int(np.argmax(si) == np.argmax(ti))
        p = np.exp(si - si.max()) / np.exp(si - si.max()).sum()
        q = np.exp(ti - ti.max()) / np.exp(ti - ti.max()).sum()
        kl += sum(qk * (math.log(qk) - math.log(pk)) for qk, pk in zip(q, p))
    return agree / len(s), kl / len(s)


def test_teacher_agreement_matches_the_literal_computation():
    from projects.cone_geometry.runner import teacher_agreement

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(50, 10, generator=g) * 3, torch.randn(50, 10, generator=g) * 3
    agree, kl = teacher_agreement(s, t)
    la, lk = _literal(s, t)
    assert agree == pytest.approx(la, abs=1e-12) and kl == pytest.approx(lk, rel=1e-9)
    assert teacher_agreement(t, t) == (1.0, pytest.approx(0.0, abs=1e-12))  # a perfect mimic
    # the KL is KL(teacher || student), not the other way
    assert teacher_agreement(s, t)[1] != pytest.approx(teacher_agreement(t, s)[1])
    # a student that ranks every class as its teacher does agrees on every input whatever its scale
    assert teacher_agreement(t * 0.1, t)[0] == 1.0 and teacher_agreement(t * 0.1, t)[1] > 0.1


class _Tracker:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))

    def flush(self):
        pass


def _trainer(student, epoch, loader):
    data = SimpleNamespace(test=loader, val=None)
    return SimpleNamespace(data=data, cfg=SimpleNamespace(precision="fp32", channels_last=False), model=student,
                           device=torch.device("cpu"), tracker=_Tracker(), epoch=epoch)


def test_the_callback_logs_at_initialization_and_at_the_end_what_the_outputs_give():
    from projects.cone_geometry.runner import TeacherAgreement

    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    xs = [torch.randn(7, 4) for _ in range(3)]
    loader = [(x, torch.zeros(len(x), dtype=torch.long)) for x in xs]
    cb = TeacherAgreement(teacher)
    tr = _trainer(student, 0, loader)
    cb.on_train_start(tr)
    with torch.no_grad():
        student.weight.mul_(-1.0)  # "training" changes the student
    tr.epoch = 2
    cb.on_train_end(tr)
    (s0, m0), (s1, m1) = tr.tracker.logged
    assert (s0, s1) == (0, 2) and set(m0) == {"test_teacher_agreement", "test_teacher_kl"}
    x = torch.cat(xs)
    with torch.no_grad():
        la, lk = _literal(student(x), teacher(x))
    assert m1["test_teacher_agreement"] == pytest.approx(la) and m1["test_teacher_kl"] == pytest.approx(lk)
    assert m0 != m1
    # a run resumed after its first epoch does not log its resumed weights as the initialization
    tr2 = _trainer(student, 1, loader)
    cb.on_train_start(tr2)
    assert tr2.tracker.logged == []
    # without a test split: the validation split, under its own name
    tr3 = _trainer(student, 0, None)
    tr3.data.val = loader
    cb.on_train_start(tr3)
    assert set(tr3.tracker.logged[0][1]) == {"val_teacher_agreement", "val_teacher_kl"}


def _metric(run_id, key):
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def test_distill_logs_the_agreement_of_its_student_with_its_teacher(mlflow_store, cli, tmp_path):
    """End to end on digits: the logged final agreement and KL equal the literal computation from the final student
    snapshot and the teacher snapshot on the test set; the step-0 values are those of the initial snapshot; two
    students distilled with one seed start from the same weights; `snapshot_agreement` gives the same numbers."""
    from projects.cone_geometry.runner import make_data_config, snapshot_agreement
    from shared.data import load_data
    from shared.experiment import load_model_from
    from shared.files import load_snapshot

    r = cli("cone-geometry", "train", "--arch", "LeNet8", "--dataset", "digits", "--epochs", "1", "--optimizer",
            "adam", "--lr", "0.003", "--batch-size", "128", "--out-dir", str(tmp_path / "t"))
    assert r.exit_code == 0, r.output
    teacher = str(tmp_path / "t" / "run_0" / "snapshots" / "epoch_001.pt")
    ids = []
    for k in range(2):
        r = cli("cone-geometry", "distill", "--teacher", teacher, "--epochs", "1", "--optimizer", "adam", "--lr",
                "0.003", "--batch-size", "128", "--seed", "3", "--kl-weight", "1", "--temperature", "4",
                "--kl-reduction", "batchmean", "--out-dir", str(tmp_path / f"s{k}"))
        assert r.exit_code == 0, r.output
        client = MlflowClient()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="tags.entry_point = 'distill'", order_by=["attributes.start_time ASC"])
        ids.append(runs[-1].info.run_id)
    rid = ids[0]
    agree, kl = _metric(rid, "test_teacher_agreement"), _metric(rid, "test_teacher_kl")
    assert [s for s, _ in agree] == [0, 1] and [s for s, _ in kl] == [0, 1]
    data = load_data(make_data_config(dataset="digits", batch_size=1000))
    t_model, _, _ = load_model_from(teacher, project="cone_geometry")
    x = torch.cat([xb for xb, _ in data.test])
    for step, name in ((0, "epoch_000.pt"), (1, "epoch_001.pt")):
        s_model, _, _ = load_model_from(str(tmp_path / "s0" / "snapshots" / name), project="cone_geometry")
        with torch.no_grad():
            la, lk = _literal(s_model.eval()(x), t_model.eval()(x))
        assert agree[step][1] == pytest.approx(la, abs=1e-9) and kl[step][1] == pytest.approx(lk, rel=1e-5)
    a2, k2 = snapshot_agreement(rid, teacher, data_path="./data")
    assert a2 == pytest.approx(agree[1][1], abs=1e-9) and k2 == pytest.approx(kl[1][1], rel=1e-5)
    # --seed fixes the student's initial weights: both students start alike (and so log the same step-0 agreement)
    w = [load_snapshot(tmp_path / f"s{k}" / "snapshots" / "epoch_000.pt")["model_state_dict"] for k in range(2)]
    assert all(torch.equal(w[0][n], w[1][n]) for n in w[0])
    assert _metric(ids[1], "test_teacher_agreement")[0] == agree[0]
    assert mlflow.get_run(rid).data.metrics["test_teacher_agreement"] == agree[1][1]
