"""Freed memory kept for the next step: glibc's malloc asked not to hand large blocks back to the kernel.

Not math, speed. A training step of this project makes dozens of temporary arrays of a few
megabytes (a (64, 32, 14, 14) float32 activation is 1.6 MB), frees them, and makes them again
at the next step. With glibc's defaults, a block that large is either mapped fresh from the
kernel (mmap) and unmapped when freed, or carved from the heap, whose free top is given back to
the kernel once it exceeds a threshold (trim). Either way the next step's arrays land on pages
the kernel has to hand over again, one page fault per 4 KiB, and zero first. Measured on this
project's two-core machine, 40 DCGAN training steps (scratch/train_conv.py, one BLAS thread):
617,741 page faults and 93 ms a step with glibc's defaults, 23,067 and 69 ms with the two
settings below. PyTorch keeps its own memory much the same way (its CPU allocator caches blocks).

The two settings, through mallopt(3), once, when `scratch` is imported:
    M_MMAP_THRESHOLD  32 MiB: arrays below it come from the heap (glibc's own ceiling for the
                      threshold it raises by itself); larger ones are still mapped and unmapped
    M_TRIM_THRESHOLD 256 MiB: the heap's free top is given back only beyond this much, so a
                      process holds at most that much memory it is not using

Nothing computed changes: where an array lives never changes a number. Only glibc (Linux) has
these knobs; elsewhere this does nothing. One thing seen to change: once, NumPy reported
"invalid value encountered in matmul" in a check whose results were right. The likeliest cause,
not confirmed: a reused block holds old bytes where a fresh page held zeros, and a BLAS kernel
computes on a few bytes past a matrix in lanes it then discards (NumPy has seen such spurious
flags from OpenBLAS before, numpy/numpy#24067). Seen once in three
full test runs (the checks' results matched the ports'), not in the one run with SCRATCH_KEEP_FREED=0.

    SCRATCH_KEEP_FREED=0 python ...   # glibc's defaults, to see the difference
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory():
    """Apply the two settings above; True when glibc took both, False where it was not asked or could not."""
    if os.environ.get("SCRATCH_KEEP_FREED", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this Python runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0 and changes nothing
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


KEPT = keep_freed_memory()  # once per process, at the first import of scratch
