"""Shared pytest fixtures.

- ``mlflow_store``: a fresh, migrated SQLite MLflow store in ``tmp_path`` (copied from one built once per session,
  so each test skips the ~2 s of migrations), exported as MLFLOW_TRACKING_URI (subprocesses inherit it); the
  working directory is ``tmp_path`` so local artifacts and outputs land there. Yields the tracking URI.
- ``warm_cache``: the digits split, built once per session, copied into ``tmp_path/cache`` (the GEOMLAB_CACHE of
  ``mlflow_store`` and of the subprocess tests): a cold cache costs each process that loads digits the ~2 s
  scikit-learn import (the cold path has its own test in tests/shared/test_data_options_and_formats.py).
- ``cli``: run ``geomlab`` commands in-process: ``cli("cone-geometry", "train", "--epochs", "1")`` returns a
  typer Result (``.exit_code``, ``.stdout``, ``.stderr``).
- ``write_mnist_like`` / ``write_cifar_like``: tiny datasets in the exact on-disk formats torchvision reads.
- every test ends with :func:`shared.interrupts.uninstall`: an in-process command installs the stop-request handlers
  in pytest's own process, and a request left pending by one test must not stop the next.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GEOMLAB_NO_PROGRESS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).parent))

from helpers import copy_store, write_cifar_like, write_mnist_like  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _no_pending_interrupts():
    yield
    from shared import interrupts

    interrupts.uninstall()


@pytest.fixture
def one_torch_thread():
    """Tiny networks: one torch thread is fastest, and robust when the machine is busy (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")`` in a module, or an autouse wrapper in a conftest)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _template_store(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("mlflow-template")
    db = d / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(scope="session")
def _digits_cache(tmp_path_factory) -> Path:
    from shared.datasets import digits_cache_file, load_digits_split

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOMLAB_CACHE", str(tmp_path_factory.mktemp("digits-cache")))
        load_digits_split()
        return digits_cache_file()


@pytest.fixture
def warm_cache(_digits_cache, tmp_path) -> Path:
    d = tmp_path / "cache"
    d.mkdir(exist_ok=True)
    shutil.copy(_digits_cache, d / _digits_cache.name)
    return d


@pytest.fixture
def mlflow_store(_template_store, warm_cache, tmp_path, monkeypatch):
    import mlflow

    db = copy_store(_template_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("GEOMLAB_CACHE", str(warm_cache))
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    # code under test may set these (mlflow.set_experiment does); monkeypatch.delenv of an absent variable does not
    # restore it, so clear them here: they would point the next test (or its subprocesses) at this store's ids
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(var, None)
    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from shared.cli import app

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, [str(a) for a in args], input=input)

    return invoke
