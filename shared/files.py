"""Files: atomic writes, writable-directory checks, snapshot save/load with clear errors."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from shared import interrupts
from shared.errors import UsageError

SNAPSHOT_FORMAT = "geomlab-snapshot/1"


def cache_dir() -> Path:
    """Where geomlab keeps what it can rebuild (decompressed datasets, the digits split, compiled kernels, the
    feature_amounts split cache): ``$GEOMLAB_CACHE``, by default ``~/.cache/geomlab``."""
    return Path(os.environ.get("GEOMLAB_CACHE", Path.home() / ".cache" / "geomlab"))


def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    p = Path(path).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{what} {p} cannot be written ({e.strerror or e}); choose another with --out-dir "
                         "or fix its permissions") from None
    return p


def current_umask() -> int:
    """The process's umask (read without changing it where Linux exposes it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file.

    The file gets the mode any newly created file gets (0666 less the umask), not mkstemp's private 0600. The write
    is a critical section (:func:`shared.interrupts.critical`): Ctrl-C and SIGTERM wait for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts.critical():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            os.chmod(tmp, 0o666 & ~current_umask())
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


def write_json(path: str | os.PathLike, obj: Any, **dump_options) -> Path:
    """``obj`` as JSON (indent 1 unless ``dump_options`` say otherwise), written atomically and synced to disk."""
    dump_options.setdefault("indent", 1)

    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, **dump_options)
            f.flush()
            os.fsync(f.fileno())
    return atomic_write(path, w)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` written atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_snapshot(path: str | os.PathLike, payload: dict) -> Path:
    """Save a snapshot dict (``model_state_dict`` plus whatever the trainer adds) atomically."""
    payload = {"format": SNAPSHOT_FORMAT, **payload}

    def write(tmp):
        with open(tmp, "wb") as f:  # through a Python file: a full disk is OSError(ENOSPC), not a bare RuntimeError
            torch.save(payload, f)
    return atomic_write(path, write)


def load_snapshot(path: str | os.PathLike) -> dict:
    """Load a snapshot written by :func:`save_snapshot`, a raw state_dict, or an original `.tar` / `.pt` file.

    Always returns a dict with ``model_state_dict``. Missing, truncated and corrupted files raise UsageError.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"snapshot {p} does not exist; pass a snapshot file or an MLflow URI such as "
                         "runs:/<run_id>/snapshots/epoch_010.pt")
    if p.is_dir():
        raise UsageError(f"snapshot {p} is a directory; pass one snapshot file inside it")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"snapshot {p} is corrupted or truncated ({msg[:120]}); re-copy it or use another epoch's "
                         "snapshot") from None
    except Exception as e:  # unpickling garbage can raise nearly anything
        raise UsageError(f"snapshot {p} is corrupted or truncated, or not a torch file ({type(e).__name__}); re-copy "
                         "it or use another epoch's snapshot") from None
    if isinstance(obj, torch.nn.Module):
        obj = {"model_state_dict": obj.state_dict()}
    if not isinstance(obj, dict):
        raise UsageError(f"snapshot {p} holds a {type(obj).__name__}, not a state dict; pass a snapshot file")
    if "model_state_dict" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = {"model_state_dict": obj}
        else:
            raise UsageError(f"snapshot {p} has no model weights (keys: {', '.join(list(obj)[:6])}); pass a snapshot "
                             "written by a training run")
    obj["path"] = str(p)
    return obj


def load_weights(model: torch.nn.Module, snapshot: dict, *, strict: bool = True) -> torch.nn.Module:
    """Copy a snapshot's weights into ``model``; a snapshot of another architecture raises UsageError."""
    sd = snapshot["model_state_dict"]
    # snapshots of DataParallel-wrapped models (the original code) carry a 'module.' prefix
    if sd and all(".module." in k or k.startswith("module.") for k in sd):
        sd = {k.replace("module.", "", 1) if k.startswith("module.") else k.replace(".module.", ".", 1): v
              for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if wrong or (strict and (missing or unexpected)):
        raise UsageError(_mismatch_message(model, snapshot, sd, own, wrong, missing, unexpected))
    model.load_state_dict(sd, strict=strict)
    return model


def _mismatch_message(model, snapshot: dict, sd: dict, own: dict, wrong: list, missing: list,
                      unexpected: list) -> str:
    """Why a snapshot does not fit ``model``: another architecture, or the same one built for other data/width
    (the first differing parameter with both shapes, and the build settings that differ where both are known)."""
    spec = snapshot.get("model_spec") or {}
    mine = dict(getattr(model, "geomlab_spec", {}) or {})
    arch, my_arch = spec.get("arch"), mine.get("arch")
    name = f"snapshot {snapshot.get('path', '')}".rstrip()
    if arch and my_arch and arch != my_arch:
        return f"{name} was written for architecture {arch!r}, not {my_arch!r}; pass --arch {arch} (or a snapshot of {my_arch})"
    if wrong:
        k = wrong[0]
        detail = f"parameter {k} has shape {tuple(sd[k].shape)} in the snapshot but {tuple(own[k].shape)} here"
    else:
        detail = (f"missing parameters {', '.join(missing[:3])}" if missing else "") + \
                 ("; " if missing and unexpected else "") + \
                 (f"unexpected parameters {', '.join(unexpected[:3])}" if unexpected else "")
    settings = [f"{key} {_fmt(spec.get(key))} vs {_fmt(mine.get(key))}" for key in ("num_classes", "in_channels",
                "input_size") if key in spec and key in mine and _fmt(spec[key]) != _fmt(mine[key])]
    opts, my_opts = spec.get("options") or {}, mine.get("options") or {}
    settings += [f"{key} {_fmt(opts.get(key))} vs {_fmt(my_opts.get(key))}" for key in sorted(set(opts) | set(my_opts))
                 if _fmt(opts.get(key)) != _fmt(my_opts.get(key))]
    same = arch is not None and arch == my_arch
    what = f"the same architecture ({arch})" if same else "another architecture, or the same one"
    if settings:
        cause = f"{what} built for other settings (snapshot vs here: {', '.join(settings)})"
    elif wrong:
        cause = f"{what} built for another number of classes, input channels, input size or width"
    else:
        cause = "a snapshot of another architecture or code version"
    return f"{name} does not fit: {detail}; likely {cause}; pass the --dataset/--subsample-classes and model " \
           "options it was trained with"


def _fmt(v) -> str:
    return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
