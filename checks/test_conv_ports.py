"""Every port computes what scratch/conv.py and scratch's batch norm compute: outputs and every
gradient, float64 and float32, and the same error for every bad input.

The cases (checks/strategies.py) draw strides larger than the kernel, padding up to the kernel
size, dilation, output_padding, 1×1 and non-square kernels, C_in ≠ C_out, batch 1 and no bias.
Batch norm runs the whole layer: the training forward and backward, the running statistics
updated from that batch, and the evaluation path with them.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.implementations import IMPLEMENTATIONS, PORTS, require
from checks.runners import RUNNERS
from checks.strategies import DTYPES, batch_norm_cases, conv_cases
from checks.tolerances import assert_close, assert_like_the_full_call

pytestmark = pytest.mark.conv

TOPIC = {"conv2d": "conv", "conv_transpose2d": "conv", "batch_norm": "layers"}
CASES = {
    "conv2d": lambda dtype: conv_cases(dtype),
    "conv_transpose2d": lambda dtype: conv_cases(dtype, transposed=True),
    "batch_norm": lambda dtype: batch_norm_cases(dtype),
}


def assert_all_close(impl, what, actual, expected, dtype):
    """The same names (no "db" exactly where scratch has none), the input's dtype, the same values."""
    assert sorted(actual) == sorted(expected), f"{impl}: {what} returned {sorted(actual)}, scratch returns {sorted(expected)}"
    for name, value in expected.items():
        got = np.asarray(actual[name])
        assert got.dtype == np.dtype(dtype), f"{impl}: {what} {name} is {got.dtype}, the input was {np.dtype(dtype)}"
        assert_close(got, value, impl=impl, what=f"{what} {name}")


NAMES = {
    "conv": ("conv2d_forward", "conv2d_backward", "conv_transpose2d_forward", "conv_transpose2d_backward"),
    "layers": ("batch_norm_forward", "batch_norm_backward", "batch_norm_update_running", "batch_norm_eval"),
}


@pytest.mark.parametrize("topic", sorted(NAMES))
@pytest.mark.parametrize("impl", PORTS)
def test_port_has_scratchs_names_and_arguments(impl, topic):
    """Each port mirrors scratch: the same module, the same function names, the same argument names and defaults."""
    import inspect

    port, scratch = require(impl, topic), require("scratch", topic)
    for name in NAMES[topic]:
        assert hasattr(port, name), f"{impl}: ports/{impl}/{topic}.py has no {name}"
        ours, theirs = inspect.signature(getattr(port, name)), inspect.signature(getattr(scratch, name))
        assert str(ours) == str(theirs), f"{impl}: {name}{ours}, scratch has {name}{theirs}"


@pytest.mark.parametrize("op", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@given(data=st.data())
def test_port_matches_scratch(impl, dtype, op, data):
    port, scratch = require(impl, TOPIC[op]), require("scratch", TOPIC[op])
    case = data.draw(CASES[op](dtype), label="case")
    assert_all_close(impl, op, RUNNERS[op](port, case), RUNNERS[op](scratch, case), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(data=st.data())
def test_conv2d_backward_without_the_input_gradient(impl, dtype, data):
    """needs_input_grad=False (data, or a batch no gradient flows into): dx is None, dw and db are the full
    backward's, to the bit in scratch (the same code computes them), within the tolerance in the ports."""
    module, scratch = require(impl, "conv"), require("scratch", "conv")
    case = data.draw(conv_cases(dtype), label="case")
    expected = RUNNERS["conv2d"](scratch, case)
    out, cache = module.conv2d_forward(case.x, case.w, case.b, case.stride, case.padding, case.dilation)
    dx, dw, db = module.conv2d_backward(case.dout, cache, needs_input_grad=False)
    assert dx is None, f"{impl}: needs_input_grad=False still returned a dx of shape {np.shape(dx)}"
    expected.pop("dx")
    actual = {"out": out, "dw": dw, **({} if db is None else {"db": db})}
    assert_like_the_full_call(impl, "conv2d without dx", actual, expected, dtype)


@pytest.mark.parametrize("impl", PORTS)
def test_batch_norm_matches_scratch_on_degenerate_channels(impl):
    """One value per channel (B·H·W = 1: x − μ = 0, y = β, dx = 0; torch's own F.batch_norm refuses
    it) and a constant channel (σ² = 0 exactly, ε alone under the root)."""
    port, scratch = require(impl, "layers"), require("scratch", "layers")
    rng = np.random.default_rng(0)
    single = rng.standard_normal((1, 3, 1, 1))
    constant = rng.standard_normal((4, 2, 2, 3))
    constant[:, 1] = 0.75
    for what, x in (("one value per channel", single), ("a constant channel", constant)):
        c = x.shape[1]
        gamma, beta, dout = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(x.shape)
        expected, cache = scratch.batch_norm_forward(x, gamma, beta)
        actual, port_cache = port.batch_norm_forward(x, gamma, beta)
        assert np.all(np.isfinite(actual)), f"{impl}: batch norm on {what} is not finite"
        assert_close(actual, expected, impl=impl, what=f"batch norm on {what}: out")
        for name, got, want in zip(("dx", "dgamma", "dbeta"), port.batch_norm_backward(dout, port_cache),
                                   scratch.batch_norm_backward(dout, cache)):
            assert_close(got, want, impl=impl, what=f"batch norm on {what}: {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
def test_running_statistics_over_several_steps_match_scratch(impl, dtype):
    """Five training steps on different batches, each updating the running statistics at
    momentum 0.3 from the last: the chains stay together, and evaluation agrees at the end."""
    port, scratch = require(impl, "layers"), require("scratch", "layers")
    rng = np.random.default_rng(1)
    c = 3
    gamma, beta = rng.uniform(0.5, 1.5, c).astype(dtype), rng.uniform(-0.5, 0.5, c).astype(dtype)
    state = {"scratch": (np.zeros(c, dtype), np.ones(c, dtype)), impl: (np.zeros(c, dtype), np.ones(c, dtype))}
    for step in range(5):
        x = (rng.standard_normal((2, c, 3, 2)) * 2.0 + 1.0).astype(dtype)
        for name, module in (("scratch", scratch), (impl, port)):
            _, cache = module.batch_norm_forward(x, gamma, beta)
            state[name] = module.batch_norm_update_running(*state[name], cache, momentum=0.3)
        for i, what in enumerate(("running_mean", "running_var")):
            assert state[impl][i].dtype == np.dtype(dtype), f"{impl}: {what} is {state[impl][i].dtype}"
            assert_close(state[impl][i], state["scratch"][i], impl=impl, what=f"{what} after step {step + 1}")
    x = rng.standard_normal((3, c, 2, 2)).astype(dtype)
    assert_close(port.batch_norm_eval(x, gamma, beta, *state[impl]), scratch.batch_norm_eval(x, gamma, beta, *state["scratch"]),
                 impl=impl, what="batch_norm_eval after five steps")


# ----------------------------------------------------------------------------------------------
# Bad inputs: every port raises scratch's error, word for word
# ----------------------------------------------------------------------------------------------

rng = np.random.default_rng(2)
X, W, B = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(4)
WT = rng.standard_normal((3, 4, 2, 2))  # a transposed convolution's weight, (C_in, C_out, kh, kw)
DOUT = np.ones((2, 4, 4, 3))  # conv2d(X, W)'s shape: an upstream gradient
BN_X, BN_G, BN_B = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(3), rng.standard_normal(3)
RM, RV = np.zeros(3), np.ones(3)

BAD_CALLS = {  # name → (topic, call(module))
    "conv2d channel mismatch": ("conv", lambda m: m.conv2d_forward(X, W[:, :2], B)),
    "conv2d x not 4-D": ("conv", lambda m: m.conv2d_forward(X[0], W, B)),
    "conv2d w not 4-D": ("conv", lambda m: m.conv2d_forward(X, W[0], B)),
    "conv2d bias of the wrong length": ("conv", lambda m: m.conv2d_forward(X, W, B[:3])),
    "conv2d kernel larger than the padded input": ("conv", lambda m: m.conv2d_forward(X, W, B, dilation=4)),
    "conv2d kernel larger than the input, no padding": ("conv", lambda m: m.conv2d_forward(X[:, :, :1], W, B)),
    "conv2d stride 0": ("conv", lambda m: m.conv2d_forward(X, W, B, stride=0)),
    "conv2d negative stride in a pair": ("conv", lambda m: m.conv2d_forward(X, W, B, stride=(1, -2))),
    "conv2d dilation 0": ("conv", lambda m: m.conv2d_forward(X, W, B, dilation=(0, 1))),
    "conv2d negative padding": ("conv", lambda m: m.conv2d_forward(X, W, B, padding=-1)),
    "conv2d stride a triple": ("conv", lambda m: m.conv2d_forward(X, W, B, stride=(1, 1, 1))),
    "conv2d integer x": ("conv", lambda m: m.conv2d_forward(X.astype(np.int64), W, B)),
    "conv2d mixed dtypes": ("conv", lambda m: m.conv2d_forward(X.astype(np.float32), W, B)),
    "conv_transpose2d channel mismatch": ("conv", lambda m: m.conv_transpose2d_forward(X, W, B[:4])),
    "conv_transpose2d output_padding = stride": ("conv", lambda m: m.conv_transpose2d_forward(X, WT, B, stride=2, output_padding=2)),
    "conv_transpose2d output_padding without stride or dilation": (
        "conv", lambda m: m.conv_transpose2d_forward(X, WT, B, output_padding=(0, 1))),
    "conv_transpose2d padding too large": ("conv", lambda m: m.conv_transpose2d_forward(X, WT, B, padding=4)),
    "conv_transpose2d bias of the wrong length": ("conv", lambda m: m.conv_transpose2d_forward(X, WT, B[:3])),
    "conv_transpose2d stride 0": ("conv", lambda m: m.conv_transpose2d_forward(X, WT, B, stride=0)),
    "conv2d needs_input_grad 0, not a bool": (
        "conv", lambda m: m.conv2d_backward(DOUT, m.conv2d_forward(X, W, B)[1], needs_input_grad=0)),
    "conv2d needs_input_grad None": (
        "conv", lambda m: m.conv2d_backward(DOUT, m.conv2d_forward(X, W, B)[1], needs_input_grad=None)),
    "batch norm x 3-D": ("layers", lambda m: m.batch_norm_forward(BN_X[0], BN_G, BN_B)),
    "batch norm gamma of the wrong length": ("layers", lambda m: m.batch_norm_forward(BN_X, BN_G[:2], BN_B)),
    "batch norm integer x": ("layers", lambda m: m.batch_norm_forward(BN_X.astype(np.int32), BN_G, BN_B)),
    "batch norm mixed dtypes": ("layers", lambda m: m.batch_norm_forward(BN_X, BN_G.astype(np.float32), BN_B)),
    "batch norm empty x": ("layers", lambda m: m.batch_norm_forward(BN_X[:0], BN_G, BN_B)),
    "running stats of the wrong length": (
        "layers", lambda m: m.batch_norm_update_running(RM[:2], RV, m.batch_norm_forward(BN_X, BN_G, BN_B)[1])),
    "running stats of another dtype": (
        "layers", lambda m: m.batch_norm_update_running(RM.astype(np.float32), RV, m.batch_norm_forward(BN_X, BN_G, BN_B)[1])),
    "negative running variance": (
        "layers", lambda m: m.batch_norm_update_running(RM, -RV, m.batch_norm_forward(BN_X, BN_G, BN_B)[1])),
    "momentum above 1": (
        "layers", lambda m: m.batch_norm_update_running(RM, RV, m.batch_norm_forward(BN_X, BN_G, BN_B)[1], momentum=1.5)),
    "running variance from one value per channel": (
        "layers", lambda m: m.batch_norm_update_running(RM, RV, m.batch_norm_forward(BN_X[:1, :, :1, :1], BN_G, BN_B)[1])),
    "batch norm eval with running_var too short": ("layers", lambda m: m.batch_norm_eval(BN_X, BN_G, BN_B, RM, RV[:1])),
}


def raised(call, module):
    with pytest.raises((ValueError, TypeError)) as error:
        call(module)
    return type(error.value), str(error.value)


@pytest.mark.parametrize("what", sorted(BAD_CALLS))
@pytest.mark.parametrize("impl", PORTS)
def test_bad_input_raises_scratchs_error(impl, what):
    topic, call = BAD_CALLS[what]
    expected = raised(call, require("scratch", topic))
    actual = raised(call, require(impl, topic))
    assert actual == expected, (f"{impl}: {what} raises {actual[0].__name__}({actual[1]!r}); "
                                f"scratch raises {expected[0].__name__}({expected[1]!r})")
