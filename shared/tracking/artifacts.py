"""Local artifact stores: the folder behind an artifact URI, and hard links instead of copies where possible."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def _local_artifact_dir(uri: str | None) -> Path | None:
    """The folder of a local artifact URI (``file://...`` or a plain path), None for remote stores."""
    if not uri:
        return None
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if "://" in uri or uri.startswith(("mlflow-artifacts:", "dbfs:", "runs:", "models:")):
        return None
    return Path(uri)


def _link_into(src: Path, dest_dir: Path) -> bool:
    """Hard-link ``src`` as ``dest_dir/<name>`` (atomically replacing it); False where links are impossible."""
    dest = dest_dir / src.name
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".{src.name}.{os.getpid()}.link"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(src, tmp)
    except OSError as e:
        if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False  # another file system: MLflow copies it
        raise
    os.replace(tmp, dest)
    return True
