"""Both cores for attention: the (batch, head) pairs shared out over a small pool of threads.

Not math, speed. Every (batch, head) pair of an attention call is computed independently of the
others, and NumPy lets go of Python's global lock inside each matrix product and each ufunc. So a
call can cut its leading axes into parts and run the same code on each part in its own thread.
On a two-core machine of this kind OpenBLAS runs the small products of attention on one thread,
and the exponentials and reductions always run on one: without the split one core sits idle.

Each part computes exactly what the whole call computes for its rows, product by product, so the
result does not change by one bit (checks/test_flash_attention.py pins it).

    SCRATCH_THREADS=1 python ...   # no threads at all; the default is the CPUs this process may use, at most 8
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# a split pays for its hand-off to the pool (tens of microseconds) only past this much score work,
# Tq · Tk · (the number of (batch, head) pairs): 8 pairs of 128 × 128 scores reach it
THREADED_WORK = 1 << 17
# A tiled call (FlashAttention) makes one NumPy call per block and step, each holding (pairs in the part) · Br · Bc
# scores. Between calls a thread runs Python and holds the interpreter's lock, so two threads hand the lock to each
# other at every call; below this many scores a call, the hand-offs cost more than the second core gives. Measured
# on this project's two-core machine (T = 1024, B = 2, H = 4, causal, forward + backward): 64 × 64 blocks, 4 pairs
# a thread (16,384 scores a call), 71–75 ms on one thread against 90 ms on two; 128 × 128 (65,536), 59–68 against 53–55.
BLOCK_WORK = 1 << 15
_POOLS = {}


def default_threads():
    """SCRATCH_THREADS when set, else the CPUs this process may run on, at most 8."""
    if os.environ.get("SCRATCH_THREADS"):
        return max(1, int(os.environ["SCRATCH_THREADS"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def thread_count(threads, lead, tq, tk, block=None):
    """How many threads a call on leading axes `lead` uses. threads=None: default_threads() once the work
    reaches THREADED_WORK, else 1; an int: that many, whatever the size. Never more than there are pairs.
    block: a tiled call's (Br, Bc), its blocks at most (Tq, Tk); with threads=None it then splits only where
    each thread's block still holds BLOCK_WORK scores."""
    pairs = int(np.prod(lead, dtype=np.int64))
    if threads is None:
        threads = default_threads() if pairs * tq * tk >= THREADED_WORK else 1
        if block is not None and threads > 1:
            scores = min(block[0], tq) * min(block[1], tk)  # one block of one pair
            threads = max(1, min(threads, pairs * scores // BLOCK_WORK))  # each part holds ≥ BLOCK_WORK scores a call
    elif isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return int(max(1, min(threads, pairs)))


def split_axis(lead, threads):
    """The leading axis to cut: the first long enough to give every thread a part, else the longest."""
    for axis, size in enumerate(lead):
        if size >= threads:
            return axis
    return int(np.argmax(lead))


def over_threads(fn, arrays, lead, threads):
    """fn(*parts) on `threads` parts of one leading axis of `arrays` (all start with the axes `lead`; slices are
    views, nothing is copied), run side by side; each array fn returns, put back together along that axis.

    Each part copies its results into the whole arrays itself, in its own thread, right after computing them:
    the copies run side by side and find the results still in the cache (np.concatenate after both parts, on one
    thread, cost 1.2 of 5.2 ms of the plain attention's forward + backward at B = H = 8, T = 128)."""
    axis = split_axis(lead, threads)
    threads = min(threads, lead[axis])
    bounds = np.linspace(0, lead[axis], threads + 1).round().astype(int)
    cut = lambda a, lo, hi: a[(slice(None),) * axis + (slice(lo, hi),)]  # noqa: E731
    pool = _POOLS.get(threads) or _POOLS.setdefault(threads, ThreadPoolExecutor(threads, thread_name_prefix="scratch"))
    wholes, lock = [], threading.Lock()

    def run(lo, hi):
        results = fn(*(cut(a, lo, hi) for a in arrays))
        with lock:  # the first part to finish sizes the whole arrays: its shapes, with the full length on the cut axis
            if not wholes:
                wholes.extend(np.empty(r.shape[:axis] + (lead[axis],) + r.shape[axis + 1:], r.dtype) for r in results)
        for whole, result in zip(wholes, results):
            cut(whole, lo, hi)[...] = result

    list(pool.map(run, bounds[:-1], bounds[1:]))  # list(): wait for every part, and raise what a part raised
    return tuple(wholes)
