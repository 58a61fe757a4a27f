"""scratch/threads.py: the (batch, head) pairs of an attention call shared out over threads change
nothing, not one bit, in the plain attention (masked and not, broadcast masks, fully masked rows).
The flash attention's own check is in checks/test_flash_attention.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.strategies import DTYPES, attention_cases
from scratch import attention as A
from scratch import threads as T

pytestmark = pytest.mark.attention


def run_plain(case, threads):
    out, cache = A.scaled_dot_product_attention_forward(case.q, case.k, case.v, case.mask, threads=threads)
    return (out, cache.weights, *A.scaled_dot_product_attention_backward(case.dout, cache, threads=threads))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@settings(max_examples=40)
@given(case=attention_cases(np.float64, empty_rows=False), threads=st.integers(2, 5), broadcast=st.booleans())
def test_threads_leave_the_plain_attention_unchanged_to_the_bit(dtype, case, threads, broadcast):
    case = case._replace(**{f: getattr(case, f).astype(dtype) for f in ("q", "k", "v", "dout")})
    if broadcast and case.mask is not None:  # a mask shared by every pair, as causal_mask is: (Tq, Tk) only
        case = case._replace(mask=case.mask.reshape(-1, *case.mask.shape[-2:])[0])
    for name, one, many in zip(("out", "weights", "dq", "dk", "dv"), run_plain(case, 1), run_plain(case, threads)):
        assert many.dtype == one.dtype and many.shape == one.shape, f"{name}: {many.dtype}{many.shape} against {one.dtype}{one.shape}"
        np.testing.assert_array_equal(many, one, err_msg=f"{name}, {threads} threads, leading axes {case.q.shape[:-2]}")


@given(case=attention_cases(np.float64, empty_rows=True), threads=st.integers(2, 3))
def test_threads_keep_fully_masked_rows_at_zero(case, threads):
    out, weights, *grads = run_plain(case, threads)
    empty = ~np.broadcast_to(case.mask, weights.shape).any(axis=-1)  # (..., Tq)
    assert np.all(weights[empty] == 0) and np.all(out[empty] == 0) and np.all(grads[0][empty] == 0)
    assert all(np.isfinite(g).all() for g in grads)


def test_default_threads_only_where_the_work_pays_for_them(monkeypatch):
    monkeypatch.setenv("SCRATCH_THREADS", "2")
    assert T.thread_count(None, (2, 4), 1024, 1024) == 2  # 8 pairs of 1024²: split
    assert T.thread_count(None, (2, 4), 8, 8) == 1  # tiny: the hand-off would cost more than it saves
    assert T.thread_count(None, (), 1024, 1024) == 1  # one pair: nothing to share
    assert T.thread_count(3, (2,), 4, 4) == 2  # asked for: at most one thread per pair
    # tiled: each thread's part must hold BLOCK_WORK scores a block (8 pairs: 4 a thread)
    assert T.thread_count(None, (2, 4), 1024, 1024, (64, 64)) == 1  # 4 · 64² = 16,384 a call: the lock's hand-offs lose
    assert T.thread_count(None, (2, 4), 1024, 1024, (128, 128)) == 2  # 4 · 128² = 65,536: split
    assert T.thread_count(None, (2, 4), 1024, 1024, (128, 64)) == 2  # exactly BLOCK_WORK a part: split
    assert T.thread_count(None, (2, 4), 100, 100, (128, 128)) == 1  # blocks clipped to T: 8 · 100² is under THREADED_WORK
    assert T.thread_count(None, (4, 4), 1024, 1024, (64, 64)) == 2  # 16 pairs: 8 · 64² a thread
    assert T.thread_count(2, (2, 4), 1024, 1024, (8, 8)) == 2  # asked for: given, whatever the blocks
    monkeypatch.setenv("SCRATCH_THREADS", "1")
    assert T.thread_count(None, (2, 4), 1024, 1024) == 1
    assert T.split_axis((1, 8), 2) == 1 and T.split_axis((4, 8), 2) == 0 and T.split_axis((1, 1, 3), 4) == 2
    x = np.zeros((2, 3, 4))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive int or None"):
            A.scaled_dot_product_attention_forward(x, x, x, threads=bad)
