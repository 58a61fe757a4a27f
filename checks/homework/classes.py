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

    name, folder, modules, budget, limits, isolation, *share = job
    tasks = tasks_for(modules)
    if share:  # (k, n): the tasks k, k + n, k + 2n … of one submission split over n processes
        tasks = tasks[share[0]::share[1]]
    start = time.monotonic()
    results = grader.grade(folder, tasks, budget, limits, isolation, _SLOT[0])
    return name, results, time.monotonic() - start


_SLOT = [0]  # this process's sandbox slot: each process of the pool has its own uid for its sandboxes


def _pool_start(slots):
    _SLOT[0] = slots.get()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a pool process dies with the grader


def graded(jobs, count):
    """Grade the jobs `count` at a time, in order: yields (name, results, seconds).

    A single submission is split instead: its tasks dealt round-robin over `count` processes
    (every module's tasks spread over all of them), the results put back in task order."""
    if count == 1:
        yield from map(_grade_one, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(1, count + 1):
        slots.put(slot)
    with ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=_pool_start, initargs=(slots,)) as pool:
        if len(jobs) > 1:
            yield from pool.map(_grade_one, jobs)
            return
        start = time.monotonic()
        parts = list(pool.map(_grade_one, [(*jobs[0], k, count) for k in range(count)]))
        results = [None] * sum(len(part[1]) for part in parts)
        for k, (_, part, _) in enumerate(parts):
            results[k::count] = part
        yield jobs[0][0], results, time.monotonic() - start
