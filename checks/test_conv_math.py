"""scratch/conv.py and batch norm (scratch/layers.py): the math on its own.

Gradients against central differences, the transposed convolution as conv2d's adjoint, values and
gradients against torch.nn.functional (written independently of this project), dtypes, the
extremes of batch norm, and the errors a student meets first.
"""

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.strategies import batch_norm_cases, conv_cases
from checks.tolerances import assert_clear_error, assert_close, assert_vjp
from scratch import conv as C
from scratch import layers as L
from scratch.validate import as_pair

pytestmark = pytest.mark.conv


def torch_or_skip():
    """torch, or a skip while developing and a failure in CI (where every framework is installed)."""
    try:
        import torch
    except ImportError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"torch cannot be imported: {error}")
        pytest.skip(f"torch cannot be imported: {error}")
    return torch


def conv_call(case, transposed):
    """The scratch forward and backward of one case, as the functions and their keyword settings."""
    if transposed:
        settings = dict(stride=case.stride, padding=case.padding, output_padding=case.output_padding, dilation=case.dilation)
        return C.conv_transpose2d_forward, C.conv_transpose2d_backward, settings
    return C.conv2d_forward, C.conv2d_backward, dict(stride=case.stride, padding=case.padding, dilation=case.dilation)


KINDS = pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])

# ----------------------------------------------------------------------------------------------
# Gradients against central differences, every input and parameter
# ----------------------------------------------------------------------------------------------


@KINDS
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_conv_backward_matches_finite_differences(transposed, data, seed):
    case = data.draw(conv_cases(np.float64, transposed))
    forward, backward, settings = conv_call(case, transposed)
    inputs = {"x": case.x, "w": case.w} | ({} if case.b is None else {"b": case.b})

    def backward_dict(g, cache):
        dx, dw, db = backward(g, cache)
        assert (db is None) == (case.b is None), "db must be None exactly when the forward had no bias"
        return {"x": dx, "w": dw} | ({} if db is None else {"b": db})

    assert_vjp(lambda p: forward(p["x"], p["w"], p.get("b"), **settings), backward_dict, inputs, seed,
               "conv_transpose2d" if transposed else "conv2d")


@given(case=batch_norm_cases(np.float64), seed=st.integers(0, 2**32 - 1))
def test_batch_norm_backward_matches_finite_differences(case, seed):
    inputs = {"x": case.x, "gamma": case.gamma, "beta": case.beta}
    assert_vjp(lambda p: L.batch_norm_forward(p["x"], p["gamma"], p["beta"]),
               lambda g, c: dict(zip(("x", "gamma", "beta"), L.batch_norm_backward(g, c))), inputs, seed, "batch_norm")


# ----------------------------------------------------------------------------------------------
# The transposed convolution is conv2d's adjoint
# ----------------------------------------------------------------------------------------------


@given(case=conv_cases(np.float64))
def test_conv_transpose2d_is_the_adjoint_of_conv2d(case):
    """⟨conv2d(x, w), y⟩ = ⟨x, conv_transpose2d(y, w)⟩, with output_padding giving back x's size."""
    y = case.dout  # any array shaped like conv2d's output
    out, _ = C.conv2d_forward(case.x, case.w, None, case.stride, case.padding, case.dilation)
    s, p, d = (as_pair(n, v, m) for n, v, m in (("stride", case.stride, 1), ("padding", case.padding, 0),
                                                     ("dilation", case.dilation, 1)))
    # conv2d drops the last (H + 2p − d(k − 1) − 1) mod s rows: the transpose gets them back as output_padding
    op = tuple((n + 2 * pi - di * (k - 1) - 1) % si for n, pi, di, k, si in zip(case.x.shape[2:], p, d, case.w.shape[2:], s))
    back, _ = C.conv_transpose2d_forward(y, case.w, None, s, p, op, d)
    assert back.shape == case.x.shape
    lhs, rhs = float(np.sum(out * y)), float(np.sum(case.x * back))
    assert abs(lhs - rhs) <= 1e-12 * (1.0 + np.sum(np.abs(out * y))), f"⟨conv2d(x, w), y⟩ = {lhs!r} but ⟨x, conv2dᵀ(y, w)⟩ = {rhs!r}"
    # and its dx is that same transpose: conv2d's backward with dout = y
    dx, _, _ = C.conv2d_backward(y, C.conv2d_forward(case.x, case.w, None, s, p, d)[1])
    assert_close(back, dx, impl="scratch conv_transpose2d", what="conv2d's dx")


def test_conv2d_is_a_cross_correlation_and_its_sizes():
    """The kernel is not flipped: a single 1 at w[0, 0, 0, 1] copies the right-hand neighbour; and
    the DCGAN sizes: 28 → 14 with kernel 4, stride 2, padding 1, and back 14 → 28 with the transpose."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 1] = 1.0
    out, _ = C.conv2d_forward(x, w, None)
    np.testing.assert_array_equal(out[0, 0], x[0, 0, :3, 1:])
    out, _ = C.conv2d_forward(np.zeros((2, 1, 28, 28)), np.zeros((64, 1, 4, 4)), np.zeros(64), stride=2, padding=1)
    assert out.shape == (2, 64, 14, 14)
    out, _ = C.conv_transpose2d_forward(np.zeros((2, 64, 14, 14)), np.zeros((64, 1, 4, 4)), None, stride=2, padding=1)
    assert out.shape == (2, 1, 28, 28)
    out, _ = C.conv_transpose2d_forward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3)), None, 2, 1, output_padding=1)
    assert out.shape == (1, 1, 6, 6)  # (3 − 1)·2 − 2 + 2 + 1 + 1
    out, _ = C.conv2d_forward(np.zeros((1, 1, 7, 7)), np.zeros((1, 1, 3, 3)), None, dilation=(2, 3), padding=(0, 1))
    assert out.shape == (1, 1, 3, 3)  # ⌊(7 − 2·2 − 1)/1⌋ + 1 = 3 and ⌊(7 + 2 − 3·2 − 1)/1⌋ + 1 = 3


# ----------------------------------------------------------------------------------------------
# Against torch.nn.functional, float64
# ----------------------------------------------------------------------------------------------


@KINDS
@given(data=st.data())
def test_conv_matches_torch_functional(transposed, data):
    torch = torch_or_skip()
    case = data.draw(conv_cases(np.float64, transposed))
    forward, backward, settings = conv_call(case, transposed)
    name = "torch.nn.functional." + ("conv_transpose2d" if transposed else "conv2d")
    tensors = [torch.tensor(a, requires_grad=True) for a in (case.x, case.w) + (() if case.b is None else (case.b,))]
    bias = tensors[2] if case.b is not None else None
    if transposed:
        out = torch.nn.functional.conv_transpose2d(tensors[0], tensors[1], bias, case.stride, case.padding,
                                                   case.output_padding, 1, case.dilation)
    else:
        out = torch.nn.functional.conv2d(tensors[0], tensors[1], bias, case.stride, case.padding, case.dilation)
    grads = torch.autograd.grad(out, tensors, torch.from_numpy(case.dout))
    expected, cache = forward(case.x, case.w, case.b, **settings)
    assert_close(out.detach().numpy(), expected, impl=name, what="out")
    for what, g, e in zip(("dx", "dw", "db"), grads, backward(case.dout, cache)):
        assert_close(g.numpy(), e, impl=name, what=what)


@given(case=batch_norm_cases(np.float64), steps=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_batch_norm_matches_torch_functional_training_eval_and_running_statistics(case, steps, seed):
    """Training mode (output and gradients), then `steps` batches of running statistics, then eval mode."""
    torch = torch_or_skip()
    F = torch.nn.functional
    x, gamma, beta = (torch.tensor(a, requires_grad=True) for a in (case.x, case.gamma, case.beta))
    t_mean, t_var = torch.tensor(case.running_mean), torch.tensor(case.running_var)  # updated in place by torch
    out = F.batch_norm(x, t_mean, t_var, gamma, beta, training=True, momentum=0.1, eps=1e-5)
    grads = torch.autograd.grad(out, (x, gamma, beta), torch.from_numpy(case.dout))
    expected, cache = L.batch_norm_forward(case.x, case.gamma, case.beta)
    assert_close(out.detach().numpy(), expected, impl="torch.nn.functional.batch_norm", what="out (training)")
    for what, g, e in zip(("dx", "dgamma", "dbeta"), grads, L.batch_norm_backward(case.dout, cache)):
        assert_close(g.numpy(), e, impl="torch.nn.functional.batch_norm", what=what)
    running = L.batch_norm_update_running(case.running_mean, case.running_var, cache)
    rng = np.random.default_rng(seed)
    for _ in range(steps - 1):  # more batches, shifted and scaled so the statistics move
        batch = rng.standard_normal(case.x.shape) * rng.uniform(0.5, 2.0) + rng.uniform(-1.0, 1.0)
        F.batch_norm(torch.from_numpy(batch), t_mean, t_var, None, None, training=True, momentum=0.1)
        running = L.batch_norm_update_running(*running, L.batch_norm_forward(batch, case.gamma, case.beta)[1])
    assert_close(t_mean.numpy(), running[0], impl="torch.nn.functional.batch_norm", what=f"running_mean after {steps}")
    assert_close(t_var.numpy(), running[1], impl="torch.nn.functional.batch_norm", what=f"running_var after {steps}")
    out = F.batch_norm(torch.from_numpy(case.x), t_mean, t_var, gamma.detach(), beta.detach(), training=False, eps=1e-5)
    assert_close(out.numpy(), L.batch_norm_eval(case.x, case.gamma, case.beta, *running), impl="torch.nn.functional.batch_norm",
                 what="out (eval)")


def test_running_statistics_use_the_unbiased_variance_and_leave_their_inputs():
    x = np.array([[0.0], [2.0]])  # μ = 1, biased σ² = 1, unbiased 2
    _, cache = L.batch_norm_forward(x, np.ones(1), np.zeros(1))
    mean, var = np.zeros(1), np.ones(1)
    new_mean, new_var = L.batch_norm_update_running(mean, var, cache)
    assert new_mean[0] == pytest.approx(0.1) and new_var[0] == pytest.approx(0.9 + 0.1 * 2.0)
    assert mean[0] == 0.0 and var[0] == 1.0, "batch_norm_update_running must return new arrays, not update its inputs"
    new_mean, new_var = L.batch_norm_update_running(mean, var, cache, momentum=1.0)
    assert new_mean[0] == 1.0 and new_var[0] == 2.0


# ----------------------------------------------------------------------------------------------
# Batch norm at its extremes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_batch_norm_of_a_constant_channel_is_beta_with_finite_gradients(dtype):
    """σ² = 0 exactly: ε keeps 1/√(σ² + ε) finite, x̂ = 0, y = β; the same in torch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 2, 2)).astype(dtype)
    x[:, 1] = 7.0  # channel 1 constant
    gamma, beta, dout = np.array([1.5, 2.0], dtype), np.array([0.5, -0.25], dtype), rng.standard_normal(x.shape).astype(dtype)
    with np.errstate(all="raise"):
        y, cache = L.batch_norm_forward(x, gamma, beta)
        dx, dgamma, dbeta = L.batch_norm_backward(dout, cache)
    assert np.all(y[:, 1] == beta[1]) and dgamma[1] == 0.0
    assert np.all(np.isfinite(dx)) and y.dtype == dx.dtype == dtype
    # dx = (γ/√ε)(dout − mean(dout)): finite but large, as in torch
    assert_close(dx[:, 1], gamma[1] / np.sqrt(dtype(1e-5)) * (dout[:, 1] - dout[:, 1].mean()), impl="scratch batch_norm",
                 what="dx of the constant channel")
    torch = torch_or_skip()
    t = torch.tensor(x, requires_grad=True)
    out = torch.nn.functional.batch_norm(t, None, None, torch.from_numpy(gamma), torch.from_numpy(beta), training=True)
    (tdx,) = torch.autograd.grad(out, t, torch.from_numpy(dout))
    assert_close(out.detach().numpy(), y, impl="torch.nn.functional.batch_norm", what="out, constant channel")
    assert_close(tdx.numpy() / 1e3, dx / 1e3, impl="torch.nn.functional.batch_norm", what="dx / 1000, constant channel")


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 3)], ids=["B=1,H=W=1", "B=1"])
def test_batch_norm_of_one_value_per_channel(shape):
    """N = 1: the value is its own mean, so y = β and dx = 0 exactly (torch refuses to train on it);
    the running variance, which divides by N − 1, refuses too."""
    x = np.array([3.0, -1.0, 0.5]).reshape(shape)
    beta, dout = np.array([0.1, 0.2, 0.3]), np.ones(shape)
    y, cache = L.batch_norm_forward(x, np.full(3, 2.0), beta)
    dx, dgamma, dbeta = L.batch_norm_backward(dout, cache)
    np.testing.assert_array_equal(y.reshape(-1), beta)
    np.testing.assert_array_equal(dx, np.zeros(shape))
    np.testing.assert_array_equal(dgamma, np.zeros(3))
    np.testing.assert_array_equal(dbeta, np.ones(3))
    with pytest.raises(ValueError, match=r"at least 2 values per channel \(B·H·W ≥ 2\), got 1"):
        L.batch_norm_update_running(np.zeros(3), np.ones(3), cache)


def test_batch_norm_is_exact_far_from_zero():
    """A channel offset by 10⁶ with spread 1: the variance is taken of the centred values, not E[x²] − μ²."""
    torch = torch_or_skip()
    x = np.random.default_rng(1).standard_normal((16, 2)) + np.array([1e6, -1e6])
    y, _ = L.batch_norm_forward(x, np.ones(2), np.zeros(2))
    out = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True)
    assert_close(out.numpy(), y, impl="torch.nn.functional.batch_norm", what="out, channels at ±1e6")
    np.testing.assert_allclose(y.std(axis=0), np.sqrt(1.0 / (1.0 + 1e-5 / x.var(axis=0))), rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# dtypes: float32 stays float32
# ----------------------------------------------------------------------------------------------


@KINDS
@given(data=st.data())
def test_conv_float32_stays_float32(transposed, data):
    case = data.draw(conv_cases(np.float32, transposed))
    forward, backward, settings = conv_call(case, transposed)
    out, cache = forward(case.x, case.w, case.b, **settings)
    grads = [g for g in backward(case.dout, cache) if g is not None]
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads), [out.dtype] + [g.dtype for g in grads]
    out64, _ = forward(case.x.astype(np.float64), case.w.astype(np.float64), None if case.b is None else case.b.astype(np.float64),
                       **settings)
    assert_close(out, out64.astype(np.float32), impl="scratch float32", what="out", dtype=np.float32)


@given(case=batch_norm_cases(np.float32))
def test_batch_norm_float32_stays_float32(case):
    y, cache = L.batch_norm_forward(case.x, case.gamma, case.beta)
    arrays = [y, *L.batch_norm_backward(case.dout, cache), *L.batch_norm_update_running(case.running_mean, case.running_var, cache),
              L.batch_norm_eval(case.x, case.gamma, case.beta, case.running_mean, case.running_var)]
    assert all(a.dtype == np.float32 for a in arrays), [a.dtype for a in arrays]


# ----------------------------------------------------------------------------------------------
# Bad input: a ValueError (TypeError for the dtype) naming the argument and the shapes
# ----------------------------------------------------------------------------------------------

X, W, B = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3)), np.zeros(4)
WT = np.zeros((3, 4, 3, 3))  # (C_in, C_out, kh, kw) for the transpose
CONV_ERRORS = {  # what → (call, error, fragments the message must hold)
    "channel mismatch": (lambda: C.conv2d_forward(X, np.zeros((4, 2, 3, 3)), B), ValueError,
                         ["w must have shape (C_out, C_in=3, kh, kw)", "(2, 3, 5, 5)", "got shape (4, 2, 3, 3)"]),
    "transpose channel mismatch": (lambda: C.conv_transpose2d_forward(X, np.zeros((4, 3, 3, 3)), None), ValueError,
                                   ["w must have shape (C_in=3, C_out, kh, kw)", "(2, 3, 5, 5)", "got shape (4, 3, 3, 3)"]),
    "bias of the wrong length": (lambda: C.conv2d_forward(X, W, np.zeros(3)), ValueError,
                                 ["b must have shape (C_out=4,)", "(4, 3, 3, 3)", "got shape (3,)"]),
    "transpose bias of the wrong length": (lambda: C.conv_transpose2d_forward(X, WT, np.zeros(3)), ValueError,
                                           ["b must have shape (C_out=4,)", "got shape (3,)"]),
    "kernel larger than the padded input": (lambda: C.conv2d_forward(X, np.zeros((4, 3, 8, 2)), None, padding=1), ValueError,
                                            ["w's kernel 8×2", "(4, 3, 8, 2)", "padded input 7×7", "(2, 3, 5, 5)"]),
    "dilated kernel larger than the padded input": (lambda: C.conv2d_forward(X, W, None, dilation=3), ValueError,
                                                    ["spans 7×7", "padded input 5×5"]),
    "zero stride": (lambda: C.conv2d_forward(X, W, B, stride=0), ValueError, ["stride must be a positive int", "got 0"]),
    "negative stride pair": (lambda: C.conv_transpose2d_forward(X, WT, None, stride=(1, -2)), ValueError,
                             ["stride must be a positive int", "got (1, -2)"]),
    "zero dilation": (lambda: C.conv2d_forward(X, W, B, dilation=(1, 0)), ValueError, ["dilation must be a positive int", "(1, 0)"]),
    "negative padding": (lambda: C.conv2d_forward(X, W, B, padding=-1), ValueError, ["padding must be a non-negative int", "-1"]),
    "a float stride": (lambda: C.conv2d_forward(X, W, B, stride=1.5), ValueError, ["stride must be a positive int", "1.5"]),
    "a triple padding": (lambda: C.conv2d_forward(X, W, B, padding=(1, 1, 1)), ValueError, ["padding", "(1, 1, 1)"]),
    "output_padding not below the stride": (lambda: C.conv_transpose2d_forward(X, WT, None, stride=2, output_padding=2), ValueError,
                                            ["output_padding (2, 2) must be smaller than the stride (2, 2) or the dilation (1, 1)"]),
    "output_padding on conv2d's stride 1": (lambda: C.conv_transpose2d_forward(X, WT, None, output_padding=(0, 1)), ValueError,
                                            ["output_padding (0, 1) must be smaller"]),
    "transpose padding leaving no output": (lambda: C.conv_transpose2d_forward(np.zeros((1, 3, 1, 1)), WT, None, padding=2),
                                            ValueError, ["padding (2, 2) is too large", "(1, 3, 1, 1)", "-1×-1"]),
    "x without a batch axis": (lambda: C.conv2d_forward(np.zeros((3, 5, 5)), W, B), ValueError,
                               ["x must have shape (B, C_in, H, W), got shape (3, 5, 5)"]),
    "w of 3 axes": (lambda: C.conv2d_forward(X, np.zeros((4, 3, 3)), B), ValueError,
                    ["w must have shape (C_out, C_in, kh, kw), got shape (4, 3, 3)"]),
    "transpose x of 5 axes": (lambda: C.conv_transpose2d_forward(np.zeros((1, 2, 3, 5, 5)), WT, None), ValueError,
                              ["x must have shape (B, C_in, H, W), got shape (1, 2, 3, 5, 5)"]),
    "integer x": (lambda: C.conv2d_forward(np.zeros((2, 3, 5, 5), int), W, B), TypeError,
                  ["x must be a floating-point array", "int64", "(2, 3, 5, 5)"]),
    "float32 w with float64 x": (lambda: C.conv2d_forward(X, W.astype(np.float32), B), TypeError,
                                 ["arrays must share one dtype", "x float64", "w float32"]),
}
BATCH_NORM_ERRORS = {
    "x of 3 axes": (lambda: L.batch_norm_forward(np.zeros((2, 3, 4)), np.ones(3), np.zeros(3)), ValueError,
                    ["x must have shape (B, C) or (B, C, H, W), got shape (2, 3, 4)"]),
    "gamma of the wrong length": (lambda: L.batch_norm_forward(np.zeros((2, 3, 4, 4)), np.ones(4), np.zeros(3)), ValueError,
                                  ["gamma must have shape (C=3,)", "(2, 3, 4, 4)", "got shape (4,)"]),
    "beta of the wrong length": (lambda: L.batch_norm_forward(np.zeros((2, 3)), np.ones(3), np.zeros(2)), ValueError,
                                 ["beta must have shape (C=3,)", "got shape (2,)"]),
    "integer x": (lambda: L.batch_norm_forward(np.zeros((2, 3), int), np.ones(3), np.zeros(3)), TypeError,
                  ["x must be a floating-point array"]),
    "an empty batch": (lambda: L.batch_norm_forward(np.zeros((0, 3)), np.ones(3), np.zeros(3)), ValueError,
                       ["at least one value per channel", "(0, 3)"]),
    "running_var of the wrong length": (lambda: L.batch_norm_eval(np.zeros((2, 3)), np.ones(3), np.zeros(3), np.zeros(3), np.ones(2)),
                                        ValueError, ["running_var must have shape (C=3,), got shape (2,)"]),
    "a negative running_var": (lambda: L.batch_norm_eval(np.zeros((2, 1)), np.ones(1), np.zeros(1), np.zeros(1), -np.ones(1)),
                               ValueError, ["running_var must be ≥ 0"]),
    "float32 running stats for float64 x": (
        lambda: L.batch_norm_eval(np.zeros((2, 1)), np.ones(1), np.zeros(1), np.zeros(1, np.float32), np.ones(1)), TypeError,
        ["running_mean must have the layer's dtype float64, got float32"]),
}


@pytest.mark.parametrize("what", sorted(CONV_ERRORS))
def test_conv_rejects_bad_input_with_a_clear_message(what):
    call, error, fragments = CONV_ERRORS[what]
    assert_clear_error("scratch conv", what, call, error, fragments)


@pytest.mark.parametrize("what", sorted(BATCH_NORM_ERRORS))
def test_batch_norm_rejects_bad_input_with_a_clear_message(what):
    call, error, fragments = BATCH_NORM_ERRORS[what]
    assert_clear_error("scratch batch_norm", what, call, error, fragments)


def test_batch_norm_update_running_rejects_a_momentum_outside_0_1():
    _, cache = L.batch_norm_forward(np.arange(4.0).reshape(2, 2), np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\], got 1.5"):
        L.batch_norm_update_running(np.zeros(2), np.ones(2), cache, momentum=1.5)
