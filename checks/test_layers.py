"""scratch/layers.py: gradients against finite differences, values against PyTorch's functions."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from checks.strategies import floats
from checks.tolerances import GRADCHECK_RTOL, assert_close
from scratch import layers as L
from scratch.gradcheck import check_vjp

pytestmark = pytest.mark.layers

ACTIVATIONS = {  # name → (scratch forward, scratch backward, the same function in torch)
    "relu": (L.relu_forward, L.relu_backward, lambda t, F: F.relu(t)),
    "leaky_relu": (L.leaky_relu_forward, L.leaky_relu_backward, lambda t, F: F.leaky_relu(t, 0.01)),
    "tanh": (L.tanh_forward, L.tanh_backward, lambda t, F: F.tanh(t)),
    "sigmoid": (L.sigmoid_forward, L.sigmoid_backward, lambda t, F: F.sigmoid(t)),
    "gelu": (L.gelu_forward, L.gelu_backward, lambda t, F: F.gelu(t, approximate="tanh")),  # GPT-2's
}
shapes = hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_activation_backward_matches_finite_differences(name, data, seed):
    forward, backward, _ = ACTIVATIONS[name]
    # Away from relu's kink at 0, where the derivative is not defined.
    x = data.draw(floats(np.float64, data.draw(shapes)).filter(lambda a: np.all(np.abs(a) > 1e-3)))
    result = check_vjp(lambda p: forward(p["x"]), lambda g, c: {"x": backward(g, c)}, {"x": x}, np.random.default_rng(seed))
    assert result.error < GRADCHECK_RTOL, f"scratch: {name} backward: {result}"


@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_linear_backward_matches_finite_differences(data, seed):
    lead, n_in, n_out = data.draw(st.lists(st.integers(1, 3), max_size=2)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    inputs = {"x": data.draw(floats(np.float64, (*lead, n_in))), "W": data.draw(floats(np.float64, (n_in, n_out))),
              "b": data.draw(floats(np.float64, (n_out,)))}
    result = check_vjp(lambda p: L.linear_forward(p["x"], p["W"], p["b"]),
                       lambda g, c: dict(zip("xWb", L.linear_backward(g, c))), inputs, np.random.default_rng(seed))
    assert result.error < GRADCHECK_RTOL, f"scratch: linear backward: {result}"


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@given(data=st.data())
def test_activation_matches_torch(name, dtype, data):
    torch = pytest.importorskip("torch")
    forward, backward, reference = ACTIVATIONS[name]
    x = data.draw(floats(dtype, data.draw(shapes)))
    dout = data.draw(floats(dtype, x.shape))
    t = torch.tensor(x, requires_grad=True)
    out = reference(t, torch.nn.functional)
    (dt,) = torch.autograd.grad(out, t, torch.from_numpy(dout))
    y, cache = forward(x)
    dx = backward(dout, cache)
    assert y.dtype == dx.dtype == np.dtype(dtype)
    assert_close(y, out.detach().numpy(), impl=f"torch {name}", what="out")
    assert_close(dx, dt.numpy(), impl=f"torch {name}", what="dx")


def test_sigmoid_is_stable_for_large_inputs():
    for dtype in (np.float64, np.float32):
        x = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype=dtype)
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # an overflow in exp would raise
            y, cache = L.sigmoid_forward(x)
            dx = L.sigmoid_backward(np.ones_like(x), cache)
        assert y.dtype == dtype
        assert y[0] == 0.0 and y[-1] == 1.0 and y[3] == 0.5
        assert np.all(np.isfinite(dx)) and np.all(dx >= 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("slope", [1e-30, 0.01, 0.2, 1.0])
def test_leaky_relu_is_the_definition_to_the_bit_at_extreme_inputs(slope, dtype):
    # the branch-free lines (max(x, s·x), dout · max(1[x > 0], s)) against the definition, np.where, bit for bit:
    # signed zeros, infinities, NaN, the smallest subnormal and the largest finite number, on each side of 0
    tiny, huge = np.finfo(dtype).smallest_subnormal, np.finfo(dtype).max
    x = np.array([-np.inf, -huge, -1.5, -tiny, -0.0, 0.0, tiny, 1.5, huge, np.inf, np.nan], dtype=dtype)
    dout = np.array([np.inf, -2.0, 3.0, -0.0, 1.0, 1.0, huge, -np.inf, 0.5, 2.0, 1.0], dtype=dtype)
    with np.errstate(all="ignore"):
        expected_y = np.where(x > 0, x, slope * x)
        expected_dx = np.where(x > 0, dout, slope * dout)
        y, cache = L.leaky_relu_forward(x, slope)
        dx = L.leaky_relu_backward(dout, cache)
    assert y.dtype == dx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, expected_y, strict=True)  # NaN where NaN
    np.testing.assert_array_equal(np.signbit(y), np.signbit(expected_y))  # −0 stays −0
    np.testing.assert_array_equal(dx, expected_dx, strict=True)
    np.testing.assert_array_equal(np.signbit(dx), np.signbit(expected_dx))
    assert not np.isnan(y[:-1]).any() and not np.isnan(dx[:-1]).any()  # only the NaN input gives NaN


@pytest.mark.parametrize("slope", [0.0, -0.01, 1.5, np.inf, np.nan, True, "0.2", None])
def test_leaky_relu_refuses_a_slope_outside_0_1(slope):
    with pytest.raises(ValueError, match=r"negative_slope must be a number in \(0, 1\], got"):
        L.leaky_relu_forward(np.ones(3), slope)


def test_linear_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"W must have shape \(3, O\).*got shape \(4, 2\)"):
        L.linear_forward(np.ones((5, 3)), np.ones((4, 2)), np.ones(2))
    with pytest.raises(ValueError, match=r"b must have shape \(2,\), got shape \(3,\)"):
        L.linear_forward(np.ones((5, 3)), np.ones((3, 2)), np.ones(3))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        L.relu_forward(np.arange(3))
