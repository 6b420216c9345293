"""The original's per-model CSV row and the combined sweep CSV (pure functions, no I/O besides text in / text out).

Columns (``main.py`` of the original, in its order): Filters, Parameters, Mean, Variance, Skew, BestVal,
BestValsTrain, BestEpoch, LastValPrec, LastTrainPrec, AllTrain, AllVal. Accuracies are top-1 in percent, epochs are
0-based, ``Variance`` is the skew-normal *scale* (the original's name), lists are written as Python lists.
"""
from __future__ import annotations

import ast
import csv
import io
import math
from typing import Any, Iterable, Sequence

from shared.errors import UsageError

CSV_COLUMNS = ("Filters", "Parameters", "Mean", "Variance", "Skew", "BestVal", "BestValsTrain", "BestEpoch",
               "LastValPrec", "LastTrainPrec", "AllTrain", "AllVal")
#: Columns we add after the original ones.
EXTRA_COLUMNS = ("VariantIndex", "VariantId", "TrueParameters", "EpochsDone", "StopReason", "MicroBatch", "Chunks",
                 "RunId")
LIST_COLUMNS = ("Filters", "AllTrain", "AllVal")


def best_of(train_prec: Sequence[float], val_prec: Sequence[float]) -> dict[str, Any]:
    """BestVal (the first strict maximum of the validation top-1), its 0-based epoch and the train top-1 then,
    plus the last values. Before any epoch beats 0 % the best is (0, epoch 0, train 0), as the original starts."""
    if len(train_prec) != len(val_prec):
        raise ValueError(f"need one train and one val value per epoch, got {len(train_prec)} and {len(val_prec)}")
    best, best_epoch, best_train = 0.0, 0, 0.0
    for epoch, (t, v) in enumerate(zip(train_prec, val_prec)):
        if v > best:
            best, best_epoch, best_train = float(v), epoch, float(t)
    return {"BestVal": best, "BestValsTrain": best_train, "BestEpoch": best_epoch,
            "LastValPrec": float(val_prec[-1]) if len(val_prec) else 0.0,
            "LastTrainPrec": float(train_prec[-1]) if len(train_prec) else 0.0}


def eval_key(history: Sequence[dict]) -> str:
    """The per-epoch evaluation metric of a shared-Trainer history: ``val_acc`` with a validation split, else
    ``test_acc`` (the original validated on the test set)."""
    for h in history:
        if "val_acc" in h:
            return "val_acc"
    return "test_acc"


def record_from_history(history: Sequence[dict], *, widths: Sequence[int], parameters: int, mean: float | None,
                        scale: float | None, skew: float | None, **extra: Any) -> dict[str, Any]:
    """One CSV row from the trainer's per-epoch history (``train_acc`` and ``val_acc``/``test_acc`` fractions)."""
    key = eval_key(history)
    rows = [h for h in history if "train_acc" in h and key in h]
    train = [100.0 * h["train_acc"] for h in rows]
    val = [100.0 * h[key] for h in rows]
    rec: dict[str, Any] = {"Filters": [int(w) for w in widths], "Parameters": int(parameters),
                           "Mean": mean, "Variance": scale, "Skew": skew}
    rec.update(best_of(train, val))
    rec["AllTrain"], rec["AllVal"] = train, val
    rec.update(extra)
    return rec


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(v)


def to_csv(records: Iterable[dict[str, Any]]) -> str:
    """The combined CSV: the original columns, then ours, one row per record, in the order given."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    cols = list(CSV_COLUMNS) + list(EXTRA_COLUMNS)
    w.writerow(cols)
    for r in records:
        w.writerow([_cell(r.get(c)) for c in cols])
    return out.getvalue()


def _parse(col: str, s: str) -> Any:
    if s == "":
        return None
    if col in LIST_COLUMNS:
        try:
            v = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            raise UsageError(f"column {col} holds {s[:40]!r}, not a list; pass a CSV written by a feature-amounts "
                             "sweep (or the original's model_NNN.csv)") from None
        return [float(x) for x in v]
    try:
        f = float(s)
    except ValueError:
        return s
    return int(f) if col in ("Parameters", "BestEpoch", "VariantIndex", "TrueParameters", "EpochsDone",
                             "MicroBatch", "Chunks") and math.isfinite(f) else f


def from_csv(text: str) -> list[dict[str, Any]]:
    """Read a combined CSV (ours, or an original ``model_NNN.csv`` with its leading index column)."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise UsageError("the results CSV is empty; pass the sweep's feature_amounts/sweep.csv")
    header = rows[0]
    missing = [c for c in ("Mean", "Skew", "BestVal", "Parameters") if c not in header]
    if missing:
        raise UsageError(f"the results CSV lacks the columns {', '.join(missing)}; pass a CSV written by a "
                         "feature-amounts sweep")
    out = []
    for r in rows[1:]:
        if not any(r):
            continue
        out.append({c: _parse(c, v) for c, v in zip(header, r) if c})
    return out


def late_gain(values: Sequence[float], last: int = 2) -> float:
    """How much a training curve still rose at its end: the best of all ``values`` (per-epoch validation top-1)
    minus the best before the ``last`` epochs, in the curve's units (never negative; NaN when the curve has no more
    than ``last`` points). A flattened curve gains little; one still learning gains a lot."""
    v = [float(x) for x in values]
    if last < 1:
        raise ValueError(f"last must be >= 1, got {last}")
    if len(v) <= last or not all(math.isfinite(x) for x in v):
        return math.nan
    return max(v) - max(v[:-last])
