"""scratch/allocator.py: freed memory is kept for the next step (glibc), and nothing else changes."""

import os
import subprocess
import sys

import pytest

# A training step's pattern: several temporaries of a few MB alive at once, freed, made again. Prints the page
# faults of the last 20 rounds (the first rounds may fault as the heap grows to its size).
PATTERN = """
import resource, numpy as np
import scratch
x = np.ones((64, 32, 14, 14), dtype=np.float32)  # 1.6 MB, a DCGAN activation
def step():
    a = x * 2.0; b = a - x; c = b * a; d = np.exp(c); return float(d.sum())
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, scratch.allocator.KEPT)
"""


def _faults(keep):
    env = {**os.environ, "SCRATCH_KEEP_FREED": "1" if keep else "0"}
    out = subprocess.run([sys.executable, "-c", PATTERN], env=env, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), out[1] == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt's settings are glibc's (Linux)")
def test_freed_memory_is_kept_and_the_kernel_is_not_asked_again():
    kept_faults, kept = _faults(keep=True)
    default_faults, default_kept = _faults(keep=False)
    assert kept and not default_kept
    # 20 rounds of four 1.6 MB temporaries (392 pages of 4 KiB each): 31,360 fresh pages if every one came from the kernel
    assert default_faults > 2_000, f"glibc's defaults faulted only {default_faults} pages: the pattern no longer shows the cost"
    assert kept_faults < default_faults / 20, f"with the settings {kept_faults} page faults, without {default_faults}"


def test_the_settings_are_off_when_asked(monkeypatch):
    from scratch import allocator

    monkeypatch.setenv("SCRATCH_KEEP_FREED", "0")
    assert allocator.keep_freed_memory() is False
