"""The MLflow UI in a real browser (headless Chromium) on a store filled by a tiny demo (issue 12.11).

Marked ``ui``; skipped where Chromium is not installed (``.ci/run`` installs Debian's ``chromium``). The UI is a
single-page app: the test renders it with ``chromium --headless --dump-dom`` and asserts on the DOM it produced.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(url: str, *, dom: bool = True, screenshot: Path | None = None, budget_ms: int = 30000) -> str:
    """Render ``url`` in headless Chromium; the DOM after ``budget_ms`` of virtual time (or write a screenshot)."""
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1600,1000", f"--virtual-time-budget={budget_ms}", "--hide-scrollbars"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    res = subprocess.run([*args, url], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _text(html: str) -> str:
    import re

    t = re.sub(r"<script.*?</script>|<style.*?</style>", "", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t))


def _api(base: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory):
    """A store filled by the demo's hyperplane_bias step (train, projections, reinit, correlate), and `mlflow ui` serving it on 127.0.0.1."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    d = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=uri, GEOMLAB_NO_PROGRESS="1", OMP_NUM_THREADS="2",
               MLFLOW_DISABLE_TELEMETRY="true", GEOMLAB_CACHE=str(d / "cache"))
    demo = subprocess.run([sys.executable, "-m", "shared.demo", "--steps", "hyperplane_bias", "--out-dir",
                           str(d / "out")], cwd=d, env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "mlflow ui --backend-store-uri" in demo.stdout and "--host 127.0.0.1" in demo.stdout  # how to open the UI
    port = _free_port()
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_exe), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
                               str(port), "--workers", "1"], cwd=d, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.read().strip() == b"OK":
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() - t0 < 240, "mlflow ui did not come up"
            time.sleep(1)
        yield base, d
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _experiment(base: str, name: str) -> str:
    q = urllib.parse.urlencode({"experiment_name": name})
    return _api(base, f"/api/2.0/mlflow/experiments/get-by-name?{q}")["experiment"]["experiment_id"]


def _runs(base: str, eid: str) -> list[dict]:
    return _api(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [eid], "max_results": 100})["runs"]


def test_runs_page_shows_names_datasets_and_a_metric_column(ui_store):
    base, d = ui_store
    eid = _experiment(base, "hyperplane_bias")
    runs = _runs(base, eid)
    names = [r["info"]["run_name"] for r in runs]
    train = next(r for r in runs if r["inputs"].get("dataset_inputs") and "test_acc" in
                 {m["key"] for m in r["data"].get("metrics", [])})
    acc = next(m["value"] for m in train["data"]["metrics"] if m["key"] == "test_acc")
    dom = _text(chromium(f"{base}/#/experiments/{eid}/runs?viewStateShareKey=geomlab"))  # geomlab's runs view
    for n in names:
        assert n in dom, f"run name {n} not on the runs page"
    digest = train["inputs"]["dataset_inputs"][0]["dataset"]["digest"]
    assert f"digits ({digest})" in dom  # the Dataset column
    header = dom[dom.index("Run Name"):]
    assert "Models" in header and "test_acc" in header  # the Models column and a metric column ...
    assert str(acc)[:6] in dom  # ... with the training run's value


def test_artifact_page_shows_a_figure(ui_store):
    base, d = ui_store
    eid = _experiment(base, "hyperplane_bias")
    figure = None
    for r in _runs(base, eid):
        rid = r["info"]["run_id"]
        for top in ("figures",):
            q = urllib.parse.urlencode({"run_id": rid, "path": top})
            files = _api(base, f"/api/2.0/mlflow/artifacts/list?{q}").get("files", [])
            pngs = [f["path"] for f in files if f["path"].endswith(".png")]
            if pngs:
                figure = (rid, pngs[0])
                break
        if figure:
            break
    assert figure, "no run of the hyperplane_bias experiment logged a figure"
    rid, path = figure
    dom = chromium(f"{base}/#/experiments/{eid}/runs/{rid}/artifacts/{path}")
    import re

    img = re.search(r'<img[^>]*alt="' + re.escape(path) + r'"[^>]*>', dom)
    assert img and 'src="blob:' in img.group(0), "the artifact page shows no image of the figure"  # fetched, shown


def test_screenshots(ui_store):
    """The screenshots in docs/screenshots/ (written when GEOMLAB_SCREENSHOTS names a folder)."""
    out = os.environ.get("GEOMLAB_SCREENSHOTS")
    if not out:
        pytest.skip("set GEOMLAB_SCREENSHOTS=<folder> to write the screenshots")
    base, d = ui_store
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    eid = _experiment(base, "hyperplane_bias")
    chromium(f"{base}/#/experiments/{eid}/runs?viewStateShareKey=geomlab", screenshot=out / "runs-page.png")
    train = next(r for r in _runs(base, eid) if r["inputs"].get("dataset_inputs"))
    chromium(f"{base}/#/experiments/{eid}/runs/{train['info']['run_id']}", screenshot=out / "run-page.png")
    for r in _runs(base, eid):
        q = urllib.parse.urlencode({"run_id": r["info"]["run_id"], "path": "figures"})
        pngs = [f["path"] for f in _api(base, f"/api/2.0/mlflow/artifacts/list?{q}").get("files", [])
                if f["path"].endswith(".png")]
        if pngs:
            chromium(f"{base}/#/experiments/{eid}/runs/{r['info']['run_id']}/artifacts/{pngs[0]}",
                     screenshot=out / "artifact-figure.png")
            break
    assert all((out / f).stat().st_size > 10_000 for f in ("runs-page.png", "run-page.png", "artifact-figure.png"))
