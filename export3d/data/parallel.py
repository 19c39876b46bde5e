"""Jobs spread over worker processes, with a worker that dies taking only its own job down.

:func:`run_jobs` runs ``work(job)`` for every job, in this process (``workers=1``) or in ``workers`` processes
started with ``spawn`` (a fresh interpreter each: no state forked from the parent, which may hold threads), each
set up once by ``initializer(*initargs)`` (``prepare``: its own MediaPipe landmarker). ``on_result(job, result)``
runs in this process as each job finishes, in the order they finish.

At most ``workers`` jobs are handed out at a time, so when a worker process dies (a crash in native code, the
kernel's out-of-memory killer), the jobs it may have been running are known: the pool is restarted for the
others, and each of those jobs is run again alone in a one-worker pool; a job that kills its worker there too is
reported through ``on_crash(job, reason)`` and the run goes on. On Ctrl-C or SIGTERM no new job starts, the
workers get a few seconds to leave their video (Ctrl-C in a terminal reaches them too, and they remove their
temporary folder) and are then killed (what a killed worker leaves is temporary, removed by the next run), and the
interrupt is re-raised.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

STOP_GRACE = 5.0  # seconds workers get to clean up after Ctrl-C before they are killed
CRASH_REASON = "the worker process running it died (a crash in native code, or killed, e.g. out of memory)"


def run_jobs(jobs: Sequence, work: Callable[[Any], Any], workers: int, on_result: Callable[[Any, Any], None],
             on_crash: Callable[[Any, str], None], initializer: Callable[..., None] | None = None,
             initargs: tuple = (), finalizer: Callable[[], None] | None = None) -> None:  # fmt: skip
    """Run ``work`` on every job (see the module's docstring). ``finalizer`` ends this process's own setup when
    ``workers`` is 1 (worker processes simply exit)."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        try:
            for job in jobs:
                on_result(job, work(job))
        finally:
            if finalizer is not None:
                finalizer()
        return
    queue = deque(jobs)
    while queue:
        suspects = _pool_pass(queue, work, min(workers, len(queue)), on_result, initializer, initargs)
        for job in suspects:  # each alone, so a job that kills its worker is known by name
            if _pool_pass(deque([job]), work, 1, on_result, initializer, initargs):
                on_crash(job, CRASH_REASON)


def _pool_pass(queue: deque, work: Callable, workers: int, on_result: Callable, initializer: Callable | None,
               initargs: tuple) -> list:  # fmt: skip
    """Run jobs from ``queue`` in one pool until it is empty or the pool breaks; returns the jobs that were in
    flight when a worker died (none when every job finished)."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=initargs)
    running: dict[Future, Any] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.popleft()
                running[pool.submit(work, job)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                wait(running)  # a broken pool fails every future: collect what finished before it broke
                suspects = []
                for future, job in running.items():
                    if isinstance(future.exception(), BrokenProcessPool):
                        suspects.append(job)
                    else:
                        on_result(job, future.result())
                return suspects
            for future in done:
                on_result(running.pop(future), future.result())
    except BaseException:
        _stop(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return []


def _stop(pool: ProcessPoolExecutor, grace: float = STOP_GRACE) -> None:
    """End the pool at once: no new job starts; a worker that does not exit within ``grace`` seconds (one still
    in the middle of a video: only this process got the signal) is killed. Python < 3.14 has no public way to
    reach the workers: the executor's process table."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0))
        if process.is_alive():
            process.kill()
