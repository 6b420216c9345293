"""depth_limit's inputs: weight stacks and metric histories from MLflow runs or files (the original's layouts)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from projects.depth_limit import paths as P
from shared.errors import UsageError
from shared.experiment import run_ref
from shared.tracking import configure_tracking, list_run_artifacts, parse_run_ref, resolve_input


def _stack_from_object(obj, where: str) -> np.ndarray:
    if isinstance(obj, dict):
        sd = obj.get("model_state_dict", obj)
        if isinstance(sd, dict) and "W" in sd:
            return P.as_stack(sd["W"])
        raise UsageError(f"{where} is a dict without depth-limit weights (no 'W'); pass an exported "
                         "weights/resnet_L.pth file, a fit snapshot or a fit run")
    if isinstance(obj, (list, tuple)) or torch.is_tensor(obj) or isinstance(obj, np.ndarray):
        return P.as_stack(obj)
    raise UsageError(f"{where} holds a {type(obj).__name__}; expected a list of L weight matrices")


def load_weight_file(path: Path) -> np.ndarray:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt file, not a torch file
        raise UsageError(f"{path} is not a readable torch file ({type(e).__name__}); pass an exported weights file") from None
    return _stack_from_object(obj, str(path))


def load_weight_sources(sources: list[str], ext: str = "pth") -> list[tuple[str, np.ndarray, str | None]]:
    """(label, stack, source_run_id) for every weight stack named by ``sources``: MLflow runs (their
    ``weights/resnet_*.pth``), artifact URIs, exported files, or folders of ``resnet_*.<ext>`` files (the original's
    layout: one folder per repetition, one file per L)."""
    expanded: list[str] = []
    for src in sources:  # an MLproject passes all sources as one space-separated value
        expanded += [src] if Path(src).expanduser().exists() else src.split()
    if not expanded:
        raise UsageError("no inputs given; pass MLflow run ids, runs:/ URIs, weight files or folders of them")
    out = []
    for src in expanded:
        p = Path(src).expanduser()
        if p.is_dir():
            files = sorted(p.glob(f"resnet_*.{ext}"), key=lambda f: _first_int(f.stem))
            if not files:
                raise UsageError(f"folder {p} holds no resnet_<L>.{ext} files; pass --ext or the files themselves")
            out += [(f"{p.name}/{f.stem}", load_weight_file(f), None) for f in files]
        elif p.is_file():
            out.append((p.stem, load_weight_file(p), None))
        elif run_ref(src) is not None:
            run_id = run_ref(src)
            arts = [a for a in list_run_artifacts(run_id, "weights") if a.endswith(f".{ext}")]
            if not arts:
                raise UsageError(f"run {run_id} has no weights/*.{ext} artifacts; pass the run of a depth-limit fit")
            for a in arts:
                local, _ = resolve_input(f"runs:/{run_id}/{a}", "weights")
                out.append((f"{run_id[:8]}/{Path(a).stem}", load_weight_file(local), run_id))
        else:
            local, run_id = resolve_input(src, "weights")
            out.append((Path(src).stem, load_weight_file(local), run_id))
    return out


def _first_int(text: str) -> int:
    m = re.search(r"\d+", text)
    return int(m.group()) if m else 0


def metric_history(run: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of an MLflow metric, ordered by step."""
    from mlflow.tracking import MlflowClient

    configure_tracking()
    run_id = parse_run_ref(run)
    client = MlflowClient()
    try:
        run_obj = client.get_run(run_id)
    except Exception:
        raise UsageError(f"MLflow run {run_id} not found; check the run id (mlflow ui lists them)") from None
    hist = client.get_metric_history(run_id, key)
    if not hist:
        keys = ", ".join(sorted(run_obj.data.metrics)) or "(none)"
        raise UsageError(f"run {run_id} has no metric {key!r} (it has: {keys}); train with --store-grad or pass --tag")
    hist = sorted(hist, key=lambda m: (m.step, m.timestamp))
    return np.array([m.step for m in hist]), np.array([m.value for m in hist], dtype=np.float64)


