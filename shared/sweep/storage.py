"""The Optuna storage: its URL (default, drivers, the password kept out of sight), a per-study lock shared by all
workers, and the RDBStorage with heartbeats."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Iterator

from shared.errors import UsageError, check

from .command import first_line

#: The environment variable that gives --storage (so that no password is on a command line).
STORAGE_ENV = "GEOMLAB_OPTUNA_STORAGE"


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (also when it does not parse as a database URL)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def default_storage() -> str:
    """$GEOMLAB_OPTUNA_STORAGE, else ``optuna.db`` in the working folder. The variable counts also where
    ``--storage`` is given empty, as the MLproject's ``sweep`` entry does when ``-P storage`` is not passed."""
    return os.environ.get(STORAGE_ENV) or f"sqlite:///{Path.cwd().resolve() / 'optuna.db'}"


def normalize_storage(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = url or default_storage()
    try:
        u = make_url(url)
    except ArgumentError:
        raise UsageError(f"--storage {redact(url)!r} is not a database URL; use sqlite:///path/optuna.db (one "
                         "machine) or postgresql://user@host:5432/db (several machines; the password in ~/.pgpass)"
                         ) from None
    backend = u.get_backend_name()
    check(backend in ("sqlite", "postgresql", "mysql"), f"--storage {redact(url)}: unsupported database "
                                                        f"{backend!r}; use sqlite, postgresql or mysql")
    if u.drivername in ("postgresql", "mysql"):  # SQLAlchemy's default drivers (psycopg 3, mysqlclient) or these
        import importlib.util

        default, alternative = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("MySQLdb", "pymysql")}[backend]
        if importlib.util.find_spec(default) is None and importlib.util.find_spec(alternative) is not None:
            url = u.set(drivername=f"{backend}+{alternative}").render_as_string(hide_password=False)
    if backend == "sqlite":
        check(bool(u.database) and u.database != ":memory:",
              "--storage sqlite needs a file (sqlite:///path/optuna.db): an in-memory study cannot be resumed")
        db = Path(u.database).expanduser().resolve()
        check(db.parent.is_dir(), f"--storage {url}: folder {db.parent} does not exist; create it or choose "
                                  "another path")
        for path in (db.parent, *([db] if db.exists() else [])):  # SQLite writes a journal beside the database
            check(os.access(path, os.W_OK), f"--storage {url}: {path} is not writable (permission denied); make it "
                                            "writable or choose another --storage")
        url = f"sqlite:///{db}"
    return url


def engine_kwargs(url: str) -> dict:
    from sqlalchemy.engine import make_url

    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}


class StudyLock:
    """A per-study mutex shared by every worker of the storage: advisory lock (PostgreSQL, MySQL) or lock file."""

    def __init__(self, url: str, study: str):
        from sqlalchemy.engine import make_url

        self.url, self.study = url, study
        self.backend = make_url(url).get_backend_name()
        self.key = int.from_bytes(hashlib.blake2b(f"geomlab-sweep:{study}".encode(), digest_size=8).digest(),
                                  "big", signed=True)
        self._engine = None
        self._conn = None
        self._file = None
        self._depth = 0
        self._mutex = threading.RLock()
        if self.backend == "sqlite":
            self.path = Path(make_url(url).database + ".lock")
        else:
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            try:
                self._engine = sqlalchemy.create_engine(url, poolclass=NullPool,
                                                        connect_args=engine_kwargs(url)["connect_args"])
            except ImportError as e:
                raise UsageError(f"--storage {redact(url)} needs the database driver {e.name!r}, which is not "
                                 "installed; pip install psycopg2-binary (PostgreSQL) or pymysql (MySQL), or "
                                 "name the driver in the URL (postgresql+psycopg2://...)") from None

    def connect(self) -> None:
        """Open the lock's connection (the first contact with the storage: unreachable -> UsageError)."""
        if self._engine is not None and self._conn is None:
            try:
                self._conn = self._engine.connect()
            except Exception as e:
                raise UsageError(f"cannot reach the Optuna storage {redact(self.url)} "
                                 f"({first_line(getattr(e, 'orig', None) or e)}); check "
                                 "--storage (host, port, database, user) and that the server runs") from None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        from sqlalchemy import text

        with self._mutex:
            if self._depth == 0:
                if self.backend == "sqlite":
                    try:
                        self._file = open(self.path, "a+")
                    except OSError as e:
                        raise UsageError(f"cannot write the study lock {self.path} ({e.strerror}); make its folder "
                                         "writable or choose another --storage") from None
                    fcntl.flock(self._file, fcntl.LOCK_EX)
                else:
                    self.connect()
                    sql = ("SELECT pg_advisory_lock(:k)" if self.backend == "postgresql"
                           else "SELECT GET_LOCK(:k, 600)")
                    self._conn.execute(text(sql), {"k": self.key if self.backend == "postgresql" else str(self.key)})
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    if self.backend == "sqlite":
                        fcntl.flock(self._file, fcntl.LOCK_UN)
                        self._file.close()
                    else:
                        sql = ("SELECT pg_advisory_unlock(:k)" if self.backend == "postgresql"
                               else "SELECT RELEASE_LOCK(:k)")
                        self._conn.execute(text(sql), {"k": self.key if self.backend == "postgresql"
                                                       else str(self.key)})
                        self._conn.commit()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()


def open_storage(url: str, heartbeat: int, lock: StudyLock):
    """An RDBStorage with heartbeats and retries of trials whose worker died (created under the study lock)."""
    import optuna
    from sqlalchemy.exc import OperationalError

    with quiet_optuna():
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs(url), heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
        except OperationalError as e:
            raise UsageError(f"cannot open the Optuna storage {redact(url)} ({first_line(e.orig or e)}); check "
                             "--storage and that the database server runs") from None
        except Exception as e:  # e.g. a storage written by an incompatible optuna version
            raise UsageError(f"cannot use the Optuna storage {redact(url)} ({type(e).__name__}: {first_line(e)})"
                             "; use another --storage") from None



@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # ask/tell with our own heartbeat thread (_Heartbeat) is what Study.optimize does inside
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


