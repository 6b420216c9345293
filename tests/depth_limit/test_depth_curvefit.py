"""Omega curve fit (recovers known parameters) and the TensorBoard event reader (on files written here by hand)."""
from __future__ import annotations

import numpy as np
import pytest

from projects.depth_limit import curvefit as CF
from projects.depth_limit import tfevents as TE
from depth_helpers import _crc32c_bitwise, _event, _record, _simple, _tensor
from depth_reference import clean_series_reference
from shared.errors import UsageError


# ------------------------------------------------------------------ preprocessing and fit


@pytest.mark.parametrize("n,fp,ws", [(50, 0, 5), (53, 3, 4), (20, 0, 0), (17, 2, 1), (40, 7, 13)])
def test_clean_series_matches_reference(n, fp, ws):
    rng = np.random.default_rng(n)
    vals = np.round(rng.standard_normal(n), 1)  # rounding creates ties with the chunk max/min
    t, v = CF.clean_series(vals, fp, ws)
    rt, rv = clean_series_reference(list(vals), fp, ws)
    assert list(t) == rt and np.allclose(v, rv)


def test_clean_series_errors():
    with pytest.raises(UsageError, match="window"):
        CF.clean_series(np.ones(4), 0, 5)
    with pytest.raises(UsageError, match="empty"):
        CF.clean_series([], 0, 5)
    with pytest.raises(UsageError, match="filter"):
        CF.clean_series(np.ones(4), -1, 1)


def test_fit_recovers_parameters_without_shift():
    t = np.arange(1, 401, dtype=float)
    rng = np.random.default_rng(0)
    y = 2.2 / (t + 1) ** 0.7 * (1 + 0.01 * rng.standard_normal(t.size))
    fit = CF.fit_history(y, window_size=5)
    assert fit.params["C"] == pytest.approx(2.2, rel=0.03)
    assert fit.params["rho"] == pytest.approx(0.7, rel=0.02)
    assert fit.sd["C"] > 0 and fit.std_error["C"] == pytest.approx(fit.sd["C"] / np.sqrt(fit.n_points))
    assert fit.n_points < 400  # the window step removed each chunk's max and min


def test_fit_recovers_parameters_with_shift_and_scaling():
    t = np.arange(1, 601, dtype=float)
    x = 0.5 * t
    y = 0.6 / (x + 25.0) ** 1.3
    fit = CF.fit_history(y, window_size=0, scaling_x=0.5, infer_shift=True)
    assert fit.params["C"] == pytest.approx(0.6, rel=1e-4)
    assert fit.params["rho"] == pytest.approx(1.3, rel=1e-4)
    assert fit.params["T0"] == pytest.approx(25.0, rel=1e-4)
    assert np.allclose(fit.predict(x), y, rtol=1e-5)


def test_fit_tiny_values_same_parameters():
    # Omega in the code's convention is ~1/B^2 smaller; the fitted rho and the relative errors must not change
    t = np.arange(1, 201, dtype=float)
    rng = np.random.default_rng(1)
    y = 0.9 / (t + 1) ** 0.35 * (1 + 0.005 * rng.standard_normal(t.size))
    big = CF.fit_history(y, window_size=0)
    small = CF.fit_history(y * 1e-7, window_size=0)
    assert big.params["rho"] == pytest.approx(0.35, rel=0.02)
    assert small.params["rho"] == pytest.approx(big.params["rho"], rel=1e-6)
    assert small.params["C"] == pytest.approx(1e-7 * big.params["C"], rel=1e-6)
    assert small.sd["C"] == pytest.approx(1e-7 * big.sd["C"], rel=1e-4)


def test_fit_too_few_points():
    with pytest.raises(UsageError, match="points left"):
        CF.fit_omega([1.0, 2.0], [1.0, 0.5])


# ------------------------------------------------------------------ event files, written by hand


def test_crc32c_known_vector():
    assert TE.crc32c(b"123456789") == 0xE3069283
    assert TE.crc32c(b"") == 0
    data = bytes(range(256)) * 3
    assert TE.crc32c(data) == _crc32c_bitwise(data)


def test_reader_on_handwritten_file(tmp_path):
    records = [_event(0, 1.0, [], version="brain.Event:2")]
    expected = []
    for s in range(30):
        v = 1.0 / (s + 1)
        records.append(_event(s, 100.0 + s, [_simple("avg_grad_norm", v), _simple("loss", 2 * v)]))
        expected.append(v)
    records.append(_event(30, 200.0, [_tensor("avg_grad_norm", 0.125, "float_val")]))
    records.append(_event(31, 201.0, [_tensor("avg_grad_norm", 0.0625, "double_content")]))
    records.append(_event(32, 202.0, [_tensor("avg_grad_norm", 0.03125, "double_val"), _tensor("note", 0, "string"),
                                      _tensor("vec", 0, "vector")]))
    records.append(_event(-1 & ((1 << 64) - 1), 203.0, []))  # a negative step as protobuf writes it
    expected += [0.125, 0.0625, 0.03125]
    d = tmp_path / "run"
    d.mkdir()
    f = d / "events.out.tfevents.123.host"
    f.write_bytes(b"".join(_record(r) for r in records) + b"\x05\x00\x00")  # + a truncated tail, as while writing
    steps, vals = TE.read_scalar_series(d, "avg_grad_norm")
    assert list(steps) == list(range(33))
    assert np.allclose(vals, expected, rtol=1e-6)
    allv = TE.read_scalars(f)
    assert set(allv) == {"avg_grad_norm", "loss"}
    assert allv["loss"][3][1] == 103.0
    with pytest.raises(UsageError, match="holds: avg_grad_norm, loss"):
        TE.read_scalar_series(f, "missing")


def test_reader_detects_corruption(tmp_path):
    rec = bytearray(_record(_event(1, 1.0, [_simple("a", 1.0)])))
    rec[20] ^= 0xFF
    f = tmp_path / "x.tfevents"
    f.write_bytes(bytes(rec))
    with pytest.raises(UsageError, match="corrupt"):
        TE.read_scalars(f)
    with pytest.raises(UsageError, match="does not exist"):
        TE.read_scalars(tmp_path / "nope")
