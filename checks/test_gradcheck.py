"""The gradient checker itself: it must catch the bugs it exists for."""

import numpy as np
import pytest

from checks.tolerances import GRADCHECK_RTOL
from scratch import attention as A
from scratch.gradcheck import check_vjp, numerical_gradient, relative_error

pytestmark = pytest.mark.gradcheck


def test_numerical_gradient_of_a_known_function():
    x = np.array([[0.5, -1.0], [2.0, 0.25]])
    grad = numerical_gradient(lambda a: np.sum(np.sin(a) * a**2), x)
    np.testing.assert_allclose(grad, np.cos(x) * x**2 + 2 * x * np.sin(x), rtol=1e-8)


def test_relative_error():
    assert relative_error(1.0, 1.0) == 0.0
    assert relative_error(1.0, -1.0) == 1.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0


def _softmax_check(backward, seed=0):
    x = np.random.default_rng(seed).standard_normal((3, 4))
    return check_vjp(lambda p: A.softmax_forward(p["x"]), lambda g, c: {"x": backward(g, c)}, {"x": x},
                     np.random.default_rng(seed))


def test_check_vjp_accepts_the_correct_softmax_backward():
    assert _softmax_check(A.softmax_backward).error < GRADCHECK_RTOL


def test_check_vjp_catches_a_backward_that_a_sum_loss_cannot():
    """sum(softmax(x)) = 1 whatever x is, so with dout = 1 the true gradient is 0, and a backward
    that returns zeros looks right. The random upstream gradient of check_vjp exposes it."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    _, cache = A.softmax_forward(x)
    wrong = lambda g, c: np.zeros_like(g)  # noqa: E731
    assert np.allclose(wrong(np.ones((3, 4)), cache), A.softmax_backward(np.ones((3, 4)), cache))  # fooled by .sum()
    assert _softmax_check(wrong).error > 0.5


def test_check_vjp_catches_a_subtle_error():
    """The Jacobian diagonal alone, y(1 − y), without the off-diagonal −y_i y_j terms."""
    diagonal_only = lambda g, c: g * c.y * (1 - c.y)  # noqa: E731
    assert _softmax_check(diagonal_only).error > 1e-2


def test_check_vjp_rejects_gradients_of_the_wrong_shape():
    with pytest.raises(ValueError, match="gradient for x must have shape"):
        _softmax_check(lambda g, c: g[:, :2])
