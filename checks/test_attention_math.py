"""The hand-written backward is the derivative of the forward, and the math keeps its promises."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.implementations import IMPLEMENTATIONS, require
from checks.strategies import attention_cases, floats, multi_head_cases, softmax_cases
from checks.tolerances import GRADCHECK_RTOL, assert_close
from scratch import attention as A
from scratch.gradcheck import check_vjp

pytestmark = pytest.mark.attention


def assert_vjp(forward, backward, inputs, seed, what):
    result = check_vjp(forward, backward, inputs, np.random.default_rng(seed))
    assert result.error < GRADCHECK_RTOL, (
        f"scratch: {what} backward disagrees with central differences along a random direction: "
        f"analytic {result.analytic!r}, numeric {result.numeric!r}, relative error {result.error:.3g} "
        f"(tolerance {GRADCHECK_RTOL:g})"
    )


# ----------------------------------------------------------------------------------------------
# Gradients against central differences (float64, random upstream gradient, random direction)
# ----------------------------------------------------------------------------------------------

seeds = st.integers(0, 2**32 - 1)


@given(case=softmax_cases(np.float64), seed=seeds)
def test_softmax_backward_matches_finite_differences(case, seed):
    assert_vjp(
        lambda p: A.softmax_forward(p["x"], case.axis, case.mask),
        lambda g, cache: {"x": A.softmax_backward(g, cache)},
        {"x": case.x}, seed, "softmax",
    )


@given(case=attention_cases(np.float64), seed=seeds)
def test_attention_backward_matches_finite_differences(case, seed):
    assert_vjp(
        lambda p: A.scaled_dot_product_attention_forward(p["q"], p["k"], p["v"], case.mask),
        lambda g, cache: dict(zip("qkv", A.scaled_dot_product_attention_backward(g, cache))),
        {"q": case.q, "k": case.k, "v": case.v}, seed, "scaled dot-product attention",
    )


@given(case=attention_cases(np.float64, empty_rows=True), seed=seeds)
def test_attention_backward_matches_finite_differences_with_fully_masked_rows(case, seed):
    assert_vjp(
        lambda p: A.scaled_dot_product_attention_forward(p["q"], p["k"], p["v"], case.mask),
        lambda g, cache: dict(zip("qkv", A.scaled_dot_product_attention_backward(g, cache))),
        {"q": case.q, "k": case.k, "v": case.v}, seed, "scaled dot-product attention (fully masked rows)",
    )


@given(case=multi_head_cases(np.float64, self_attention=False), seed=seeds)
def test_cross_attention_backward_matches_finite_differences(case, seed):
    def forward(p):
        params = {name: p[name] for name in A.MHA_PARAM_NAMES}
        return A.multi_head_attention_forward(p["x_q"], p["x_kv"], params, case.num_heads, case.mask)

    def backward(g, cache):
        dx_q, dx_kv, grads = A.multi_head_attention_backward(g, cache)
        return {"x_q": dx_q, "x_kv": dx_kv, **grads}

    inputs = {"x_q": case.x_q, "x_kv": case.x_kv, **case.params}
    assert_vjp(forward, backward, inputs, seed, "multi-head cross-attention")


@given(case=multi_head_cases(np.float64, self_attention=True), seed=seeds)
def test_self_attention_backward_matches_finite_differences(case, seed):
    """With x_kv = x_q = x, the gradient with respect to x is dx_q + dx_kv."""

    def forward(p):
        params = {name: p[name] for name in A.MHA_PARAM_NAMES}
        return A.multi_head_attention_forward(p["x"], p["x"], params, case.num_heads, case.mask)

    def backward(g, cache):
        dx_q, dx_kv, grads = A.multi_head_attention_backward(g, cache)
        return {"x": dx_q + dx_kv, **grads}

    assert_vjp(forward, backward, {"x": case.x_q, **case.params}, seed, "multi-head self-attention")


# ----------------------------------------------------------------------------------------------
# Invariants, in every implementation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=softmax_cases(np.float64, masked=True))
def test_masked_softmax_rows_sum_to_one_and_masked_entries_are_exactly_zero(impl, case):
    module = require(impl, "attention")
    y, _ = module.softmax_forward(case.x, case.axis, case.mask)
    mask = np.broadcast_to(case.mask, y.shape)
    assert np.all(y[~mask] == 0.0), f"{impl}: a masked entry got weight {y[~mask].max()!r}, expected exactly 0"
    assert_close(y.sum(axis=case.axis), np.ones(np.delete(y.shape, case.axis % y.ndim)), impl=impl, what="row sums")


@given(case=attention_cases(np.float64, masked=True))
def test_attention_weights_rows_sum_to_one_and_masked_keys_get_zero(case):
    _, cache = A.scaled_dot_product_attention_forward(case.q, case.k, case.v, case.mask)
    mask = np.broadcast_to(case.mask, cache.weights.shape)
    assert np.all(cache.weights[~mask] == 0.0)
    assert_close(cache.weights.sum(axis=-1), np.ones(cache.weights.shape[:-1]), impl="scratch", what="row sums")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=softmax_cases(np.float64, masked=False), data=st.data())
def test_softmax_is_invariant_to_adding_a_constant_per_row(impl, case, data):
    module = require(impl, "attention")
    row_shape = list(case.x.shape)
    row_shape[case.axis] = 1
    shift = data.draw(floats(np.float64, tuple(row_shape), bound=50.0), label="shift per row")
    y, _ = module.softmax_forward(case.x, case.axis)
    y_shifted, _ = module.softmax_forward(case.x + shift, case.axis)
    assert_close(y_shifted, y, impl=impl, what="softmax(x + c) against softmax(x)")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=multi_head_cases(np.float64, masked=False, self_attention=True), data=st.data())
def test_causal_self_attention_ignores_later_tokens(impl, case, data):
    module = require(impl, "attention")
    t = case.x_q.shape[1]
    cut = data.draw(st.integers(1, t), label="tokens kept")
    changed = case.x_q.copy()
    changed[:, cut:] = data.draw(floats(np.float64, changed[:, cut:].shape), label="new later tokens")
    mask = A.causal_mask(t)
    out, _ = module.multi_head_attention_forward(case.x_q, case.x_q, case.params, case.num_heads, mask)
    out_changed, _ = module.multi_head_attention_forward(changed, changed, case.params, case.num_heads, mask)
    assert np.array_equal(out[:, :cut], out_changed[:, :cut]), (
        f"{impl}: outputs before position {cut} changed when only later tokens did "
        f"(max change {np.abs(out[:, :cut] - out_changed[:, :cut]).max():.3g})"
    )


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=multi_head_cases(np.float64, masked=False, self_attention=True), data=st.data())
def test_self_attention_without_positions_is_permutation_equivariant(impl, case, data):
    module = require(impl, "attention")
    order = np.array(data.draw(st.permutations(range(case.x_q.shape[1])), label="permutation"))
    x = case.x_q
    out, _ = module.multi_head_attention_forward(x, x, case.params, case.num_heads)
    out_permuted, _ = module.multi_head_attention_forward(x[:, order], x[:, order], case.params, case.num_heads)
    assert_close(out_permuted, out[:, order], impl=impl, what="MHA(x permuted) against MHA(x) permuted")


def test_causal_mask_is_lower_triangular():
    assert A.causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert A.causal_mask(0).shape == (0, 0)


def test_padding_mask_blocks_keys_past_each_length():
    mask = A.padding_mask(np.array([3, 1]), t_k=4, t_q=2)
    assert mask.shape == (2, 2, 4)
    assert mask[0].tolist() == [[True, True, True, False]] * 2
    assert mask[1].tolist() == [[True, False, False, False]] * 2
