"""Run names: ``<command>-<arch>-<dataset>[-<variant>][-s<seed>][-e<checkpoint>]-<digest>``.

The digest hashes the run's params and tags, so that two runs share a default name only when they have the same
configuration; :func:`_generated_name` recognizes MLflow's random names (``sedate-loon-804``), which geomlab replaces.
"""
from __future__ import annotations

import hashlib
import json
import re


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out


def _generated_name(name: str | None) -> bool:
    """Is ``name`` one of MLflow's random run names (``sedate-loon-804``)?"""
    from mlflow.utils import name_utils

    m = re.fullmatch(r"([a-z]+)-([a-z]+)-(\d+)", name or "")
    return bool(m) and m.group(1) in {w.lower() for w in name_utils._GENERATOR_PREDICATES} and \
        m.group(2) in {w.lower() for w in name_utils._GENERATOR_NOUNS}


def default_run_name(entry_point: str, params: dict | None = None, tags: dict | None = None) -> str:
    """``<command>-<arch>-<dataset>[-<variant>][-s<seed>][-e<checkpoint>]-<digest>``.

    The parts come from the run's params and tags (``arch``, ``dataset``/``data.dataset``, ``variant``,
    ``train.seed``/``seed``, a checkpoint ``epoch_NNN`` in a source path or ``checkpoint``); the digest is a hash of
    all params and tags, so that two runs share a default name only when their configuration is the same.
    """
    p = {**_flat(params or {}), **{k: v for k, v in (tags or {}).items()}}

    def first(*keys):
        for k in keys:
            v = p.get(k)
            if v not in (None, ""):
                return str(v)
        return None

    parts = [entry_point.replace("_", "-"), first("arch", "model.arch", "source_arch"),
             first("dataset", "data.dataset", "source_dataset"), first("variant", "fa.variant", "VariantId")]
    seed = first("train.seed", "seed")
    if seed is not None:
        parts.append(f"s{seed}")
    ckpt = first("checkpoint")
    if ckpt is None:
        for v in p.values():
            m = re.search(r"epoch_(\d+)", str(v))
            if m:
                ckpt = m.group(1)
                break
    if ckpt is not None:
        parts.append(f"e{ckpt}")
    config = json.dumps({k: str(v) for k, v in sorted(p.items()) if k not in ("git_commit",)}, sort_keys=True)
    parts.append(hashlib.sha1(config.encode()).hexdigest()[:6])
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", x) for x in parts if x)
