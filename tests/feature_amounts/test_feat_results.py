"""CSV rows (best tracking as the original), CSV round trip, and the sweep figures."""
import random

import numpy as np
import pytest

from projects.feature_amounts import plots, results as R
from shared.errors import UsageError


def original_loop(train, val):
    """Literal transcription of the original's per-model bookkeeping in main.py."""
    best_prec, best_epoch, best_val_train = 0, 0, 0
    all_train, all_val = [], []
    for epoch in range(len(train)):
        train_prec = train[epoch]
        prec = val[epoch]
        all_train.append(train_prec)
        all_val.append(prec)
        is_best = prec > best_prec
        if is_best:
            best_prec = prec
            best_epoch = epoch
            best_val_train = train_prec
    return {"BestVal": best_prec, "BestValsTrain": best_val_train, "BestEpoch": best_epoch,
            "LastValPrec": all_val[-1], "LastTrainPrec": all_train[-1]}


def test_best_of_matches_original_loop():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        val = [rng.choice([10.0, 20.0, 30.0, 30.0, 45.5]) for _ in range(n)]  # many ties
        train = [rng.uniform(0, 100) for _ in range(n)]
        assert R.best_of(train, val) == original_loop(train, val)


def test_record_from_trainer_history_and_csv_round_trip():
    hist = [{"epoch": 1, "train_acc": 0.25, "test_acc": 0.3, "train_loss": 2.0},
            {"epoch": 2, "train_acc": 0.5, "test_acc": 0.6},
            {"epoch": 3, "train_acc": 0.75, "test_acc": 0.55}]
    rec = R.record_from_history(hist, widths=[5, 6], parameters=123, mean=1.0, scale=0.5, skew=-4.0,
                                VariantIndex=7, VariantId="v007_m1_s0.5_a-4", RunId="abc", StopReason=None)
    assert rec["AllTrain"] == [25.0, 50.0, 75.0] and rec["AllVal"] == [30.0, 60.0, 55.00000000000001]
    assert (rec["BestVal"], rec["BestEpoch"], rec["BestValsTrain"]) == (60.0, 1, 50.0)
    assert rec["LastTrainPrec"] == 75.0
    hist_val = [dict(h, val_acc=h["test_acc"] / 2) for h in hist]
    assert R.record_from_history(hist_val, widths=[1], parameters=1, mean=0, scale=1, skew=0)["BestVal"] == 30.0
    text = R.to_csv([rec, {**rec, "Mean": None, "Variance": None, "Skew": None, "VariantId": "vgg_reference"}])
    header = text.splitlines()[0].split(",")
    assert header[:12] == list(R.CSV_COLUMNS)
    back = R.from_csv(text)
    assert back[0]["Filters"] == [5, 6] and back[0]["AllVal"] == rec["AllVal"]
    assert back[0]["Parameters"] == 123 and back[0]["BestEpoch"] == 1 and back[0]["VariantIndex"] == 7
    assert back[1]["Mean"] is None and back[1]["VariantId"] == "vgg_reference"
    with pytest.raises(UsageError, match="columns"):
        R.from_csv("a,b\n1,2\n")
    with pytest.raises(UsageError):
        R.from_csv("")


def test_reads_original_model_csv_with_index_column():
    text = (",Filters,Parameters,Mean,Variance,Skew,BestVal,BestValsTrain,BestEpoch,LastValPrec,LastTrainPrec,AllTrain,AllVal\n"
            '0,"[823.0, 961.0]",100,0,4.0,8,50.0,60.0,3,49.0,70.0,"[1.0, 2.0]","[3.0, 4.0]"\n')
    r = R.from_csv(text)[0]
    assert r["Filters"] == [823.0, 961.0] and r["Skew"] == 8 and r["BestEpoch"] == 3


def test_mean_skew_grid_takes_best_over_scales():
    recs = [{"Mean": 0, "Skew": 8, "Variance": 4.0, "BestVal": 50.0, "Parameters": 10},
            {"Mean": 0, "Skew": 8, "Variance": 4.5, "BestVal": 55.0, "Parameters": 11},
            {"Mean": 3, "Skew": -4, "Variance": 1.0, "BestVal": 40.0, "Parameters": 12}]
    means, skews, acc = plots.mean_skew_grid(recs)
    assert list(means) == [0, 3] and list(skews) == [-4, 8]
    assert acc[0, 1] == 55.0 and acc[1, 0] == 40.0 and np.isnan(acc[0, 0]) and np.isnan(acc[1, 1])
    f1 = plots.figure_mean_skew(recs, "t")
    f2 = plots.figure_parameters(recs + [{"Mean": None, "Skew": None, "BestVal": 60.0, "Parameters": 99,
                                          "VariantId": "vgg_reference"}])
    assert len(f1.axes) >= 3 and f2.axes[0].get_xscale() == "log"
    with pytest.raises(UsageError):
        plots.figure_mean_skew([{"Mean": None, "Skew": None, "BestVal": 1.0}])
