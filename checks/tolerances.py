"""One tolerance table, keyed by dtype, and the one comparison every check uses.

An entry passes when |actual − expected| ≤ atol · scale + rtol · |expected|, where scale is
max(1, max |expected|) over the whole array. The absolute part is scaled because rounding
errors are relative to the size of the terms being summed, not to the result: a gradient
that is exactly 0 in one implementation (a softmax over a single key) comes out as 1e-5 in
another when it is the difference of two float32 terms of size 20.

float64: implementations differ only in the order of their sums, about 1e-15 relative to the
terms; 1e-9 leaves room for long reductions. float32: eps is 1.2e-7, and after a few hundred
roundings in a backward pass 1e-4 relative to the array's scale is reached. A real mistake
(a missing 1/√d_k, a transposed key, a lost term) is an error of order the values themselves,
1e-1 or more, far outside either tolerance.
"""

from typing import NamedTuple

import numpy as np

from scratch.gradcheck import check_vjp


class Tolerance(NamedTuple):
    rtol: float
    atol: float


TOLERANCES = {
    np.dtype(np.float64): Tolerance(rtol=1e-9, atol=1e-10),
    np.dtype(np.float32): Tolerance(rtol=1e-4, atol=1e-4),
}

# Central differences in float64 along one random direction (scratch/gradcheck.py).
GRADCHECK_RTOL = 1e-6


def assert_close(actual, expected, *, impl, what, dtype=None):
    """Assert |actual − expected| ≤ atol + rtol·|expected| elementwise, and say where it fails."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    dtype = np.dtype(dtype or expected.dtype)
    tol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, f"{impl}: {what} has shape {actual.shape}, scratch gives {expected.shape}"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    error = np.abs(a - e)
    if error.size == 0:
        return
    scale = max(1.0, float(np.max(np.abs(e))))
    if np.all(error <= tol.atol * scale + tol.rtol * np.abs(e)):
        return
    worst = np.unravel_index(np.argmax(error - tol.rtol * np.abs(e)), error.shape)
    relative = error / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
    raise AssertionError(
        f"{impl}: {what} ({dtype}) differs from scratch: max abs error {error.max():.3g}, "
        f"max rel error {relative.max():.3g} (tolerance rtol={tol.rtol:g}, atol={tol.atol:g} × scale {scale:.3g}); "
        f"worst at index {tuple(int(i) for i in worst)}: got {a[worst]!r}, expected {e[worst]!r}"
    )


def assert_like_the_full_call(impl, what, actual, expected, dtype):
    """A call that skipped some work (needs_input_grad=False) against scratch's full call, name by name:
    scratch to the bit (the same code computed them), a port within its tolerance, both in the input's dtype."""
    assert sorted(actual) == sorted(expected), f"{impl}: {what} returned {sorted(actual)}, the full call {sorted(expected)}"
    for name, value in expected.items():
        got = np.asarray(actual[name])
        assert got.dtype == np.dtype(dtype), f"{impl}: {what} {name} is {got.dtype}, the input was {np.dtype(dtype)}"
        if impl == "scratch":
            np.testing.assert_array_equal(got, value, err_msg=f"scratch: {what} {name} moved")
        else:
            assert_close(got, value, impl=impl, what=f"{what} {name}")


def assert_clear_error(impl, what, call, error, fragments):
    """`call()` must raise `error` whose message names every one of `fragments` (argument, shapes)."""
    import pytest

    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{impl}: the error for {what} should mention {missing}; it says: {message}"


def assert_vjp(forward, backward, inputs, seed, what, scale=None):
    """check_vjp's relative error below GRADCHECK_RTOL, or an absolute error below the rounding floor.

    Central differences carry a rounding error of about ε_mach · (size of the terms summed) / h,
    1e-10 × that size at h = 1e-6; at a stationary point (μ = 0, log σ² = 0 for the KL) the exact
    derivative is 0 and only this noise is left, so the relative error is 1 whatever the backward
    does. The floor, 1e-8 × `scale` (by default 1 + Σ|out|), sits 100× above that noise and far
    below the size of a real mistake, which is of the order of the gradient itself.
    """
    result = check_vjp(forward, backward, inputs, np.random.default_rng(seed))
    if scale is None:
        scale = 1.0 + float(np.sum(np.abs(forward({k: np.asarray(v, np.float64) for k, v in inputs.items()})[0])))
    floor = 1e-8 * scale
    assert result.error < GRADCHECK_RTOL or abs(result.analytic - result.numeric) < floor, (
        f"scratch: {what} backward disagrees with central differences along a random direction: "
        f"analytic {result.analytic!r}, numeric {result.numeric!r}, relative error {result.error:.3g} "
        f"(tolerance {GRADCHECK_RTOL:g}, or an absolute error below {floor:.3g})"
    )
