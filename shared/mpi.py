"""MPI helpers that also work without mpiexec (a size-1 world) and without mpi4py installed.

Launch as ``mpiexec -n N python -m mpi4py -m shared.cli ...`` so that an exception on one rank aborts the job
instead of leaving the others blocked. Only rank 0 talks to MLflow.
"""
from __future__ import annotations

import os
from typing import Any, Sequence


class _SelfComm:
    rank, size = 0, 1

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather(self, obj: Any, root: int = 0) -> list:
        return [obj]

    def allgather(self, obj: Any) -> list:
        return [obj]

    def scatter(self, objs: Sequence, root: int = 0) -> Any:
        return objs[0]

    def Barrier(self) -> None: ...

    def barrier(self) -> None: ...


def world():
    """MPI.COMM_WORLD when running under an MPI launcher with more than one rank, else a size-1 stand-in."""
    launched = any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"))
    if not launched:
        return _SelfComm()
    try:
        from mpi4py import MPI
    except ImportError:
        return _SelfComm()
    return MPI.COMM_WORLD


def is_root(comm=None) -> bool:
    return (comm or world()).Get_rank() == 0
