"""Where independent student fits run: a small executor interface.

An executor maps a picklable function over picklable jobs and returns the results in job order.
``serial`` runs them in this process; ``process`` (the default) in local worker processes
(``concurrent.futures.ProcessPoolExecutor``, spawned, each with ``threads`` torch threads). A
distributed engine (Ray, Dask, a batch queue) implements the same ``map`` and registers itself.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol

from cmm.errors import UnknownNameError

DoneFn = Callable[[int, int], None]  # on_done(done, total)


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any],
            on_done: DoneFn | None = None) -> list[Any]: ...


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    from cmm.procs import die_with_parent

    die_with_parent(parent_pid)  # a killed run leaves no workers behind
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


class SerialExecutor:
    """Runs every job here, one after the other (tests, debugging, one core)."""

    def __init__(self, max_workers: int = 1, threads: int = 1) -> None:
        self.threads = threads

    def map(self, fn, jobs, on_done=None):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            out = []
            for i, job in enumerate(jobs):
                out.append(fn(job))
                if on_done:
                    on_done(i + 1, len(jobs))
            return out
        finally:
            torch.set_num_threads(before)


class ProcessExecutor:
    """Local worker processes (spawned: no forked torch state), ``threads`` torch threads each."""

    def __init__(self, max_workers: int = 2, threads: int = 1) -> None:
        self.max_workers = max_workers
        self.threads = threads

    def map(self, fn, jobs, on_done=None):
        if not jobs:
            return []
        workers = min(self.max_workers, len(jobs))
        if workers <= 1:
            return SerialExecutor(threads=self.threads).map(fn, jobs, on_done)
        out: list[Any] = [None] * len(jobs)
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker,
                                 initargs=(self.threads, os.getpid())) as pool:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            for done, fut in enumerate(as_completed(futures), start=1):
                out[futures[fut]] = fut.result()
                if on_done:
                    on_done(done, len(jobs))
        return out


EXECUTORS: dict[str, Callable[..., Executor]] = {"serial": SerialExecutor,
                                                 "process": ProcessExecutor}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Add an executor (``factory(max_workers=..., threads=...)``) under ``name``."""
    EXECUTORS[name] = factory


def get_executor(name: str, max_workers: int = 2, threads: int = 1) -> Executor:
    if name not in EXECUTORS:
        raise UnknownNameError("executor", name, list(EXECUTORS))
    return EXECUTORS[name](max_workers=max_workers, threads=threads)
