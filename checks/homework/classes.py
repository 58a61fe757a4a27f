"""A class graded several submissions at a time, each in a process of its own.

`--jobs N` runs N grading processes (spawned, so none inherits the parent's state); each takes
one submission after another and grades it behind the wall, with its own sandbox uid (its slot),
so that no two submissions graded at once share a uid. A pool process gets SIGKILL when the
grader dies, and its sandboxes with it. The functions live here, not in __main__, so that the
spawned processes can import them.
"""

import ctypes
import signal
import sys
import time


def _grade_one(job):
    """One submission, in a worker process of the pool: (name, results, seconds)."""
    from checks.homework import grader
    from checks.homework.tasks import tasks_for

    name, folder, modules, budget, limits, isolation = job
    start = time.monotonic()
    results = grader.grade(folder, tasks_for(modules), budget, limits, isolation, _SLOT[0])
    return name, results, time.monotonic() - start


_SLOT = [0]  # this process's sandbox slot: each process of the pool has its own uid for its sandboxes


def _pool_start(slots):
    _SLOT[0] = slots.get()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a pool process dies with the grader


def graded(jobs, count):
    """Grade the jobs `count` at a time, in order: yields (name, results, seconds)."""
    if count == 1 or len(jobs) == 1:
        yield from map(_grade_one, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(1, count + 1):
        slots.put(slot)
    with ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=_pool_start, initargs=(slots,)) as pool:
        yield from pool.map(_grade_one, jobs)
