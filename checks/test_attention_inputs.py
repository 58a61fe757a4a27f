"""dtypes, bad input and extreme values, in every implementation."""

import numpy as np
import pytest
from hypothesis import given

from checks.implementations import IMPLEMENTATIONS, require
from checks.runners import RUNNERS
from checks.strategies import attention_cases, multi_head_cases, softmax_cases
from checks.tolerances import assert_clear_error
from scratch import attention as A

pytestmark = pytest.mark.attention


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=attention_cases(np.float32), mha=multi_head_cases(np.float32), sm=softmax_cases(np.float32))
def test_float32_in_gives_float32_out(impl, case, mha, sm):
    module = require(impl, "attention")
    for op, c in (("softmax", sm), ("attention", case), ("multi_head", mha)):
        for name, value in RUNNERS[op](module, c).items():
            assert value.dtype == np.float32, f"{impl}: {op} {name} came back as {value.dtype}"


def _mha_inputs(d=4, t_q=3, t_k=5, dtype=np.float64):
    rng = np.random.default_rng(0)
    params = {n: p.astype(dtype) for n, p in A.init_multi_head_attention(d, rng).items()}
    return rng.standard_normal((2, t_q, d)).astype(dtype), rng.standard_normal((2, t_k, d)).astype(dtype), params


def _qkv(tq=3, tk=4, dk=5, dv=6, dtype=np.float64):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((2, tq, dk)).astype(dtype), rng.standard_normal((2, tk, dk)).astype(dtype),
            rng.standard_normal((2, tk, dv)).astype(dtype))


BAD_INPUTS = {
    "mismatched d_k": (lambda m: m.scaled_dot_product_attention_forward(*_qkv()[:1], _qkv(dk=7)[1], _qkv()[2]),
                       ValueError, ["k", "(2, 3, 5)", "(2, 4, 7)"]),
    "v length differs from k": (lambda m: m.scaled_dot_product_attention_forward(*_qkv()[:2], _qkv(tk=2)[2]),
                                ValueError, ["v", "(2, 4, 5)", "(2, 2, 6)"]),
    "wrong mask shape": (lambda m: m.scaled_dot_product_attention_forward(*_qkv(), mask=np.ones((4, 3), bool)),
                         ValueError, ["mask", "(2, 3, 4)", "(4, 3)"]),
    "non-boolean mask": (lambda m: m.scaled_dot_product_attention_forward(*_qkv(), mask=np.ones((3, 4))),
                         TypeError, ["mask", "bool", "float64", "(3, 4)"]),
    "integer q": (lambda m: m.scaled_dot_product_attention_forward(np.ones((2, 3, 5), int), *_qkv()[1:]),
                  TypeError, ["q", "int64", "(2, 3, 5)"]),
    "integer softmax input": (lambda m: m.softmax_forward(np.arange(6).reshape(2, 3)),
                              TypeError, ["x", "int64", "(2, 3)"]),
    "mixed float32/float64": (lambda m: m.scaled_dot_product_attention_forward(_qkv(dtype=np.float32)[0], *_qkv()[1:]),
                              TypeError, ["q float32", "k float64"]),
    "d_model not divisible by num_heads": (lambda m: m.multi_head_attention_forward(*_mha_inputs(d=6), num_heads=4),
                                           ValueError, ["d_model = 6", "num_heads = 4", "(2, 3, 6)"]),
    "x_kv width differs": (lambda m: m.multi_head_attention_forward(_mha_inputs()[0], _mha_inputs(d=8)[1], _mha_inputs()[2], 2),
                           ValueError, ["x_kv", "(2, 3, 4)", "(2, 5, 8)"]),
    "wrong weight shape": (lambda m: m.multi_head_attention_forward(*_mha_inputs()[:2], {**_mha_inputs()[2], "W_k": np.ones((4, 3))}, 2),
                           ValueError, ["W_k", "(4, 4)", "(4, 3)"]),
    "missing weight": (lambda m: m.multi_head_attention_forward(*_mha_inputs()[:2], {k: v for k, v in _mha_inputs()[2].items() if k != "b_o"}, 2),
                       ValueError, ["b_o"]),
    "wrong mha mask shape": (lambda m: m.multi_head_attention_forward(*_mha_inputs(), 2, mask=np.ones((3, 3), bool)),
                             ValueError, ["mask", "(2, 3, 5)", "(3, 3)"]),
}


@pytest.mark.parametrize("bad", sorted(BAD_INPUTS))
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bad_input_gets_a_clear_error(impl, bad):
    module = require(impl, "attention")
    call, error, fragments = BAD_INPUTS[bad]
    assert_clear_error(impl, bad, lambda: call(module), error, fragments)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scores_of_1e4_give_finite_outputs_and_gradients(impl):
    module = require(impl, "attention")
    rng = np.random.default_rng(1)
    for dtype in (np.float64, np.float32):
        x = (rng.choice([-1e4, 1e4], size=(3, 5)) + rng.standard_normal((3, 5))).astype(dtype)
        y, cache = module.softmax_forward(x)
        dx = module.softmax_backward(rng.standard_normal((3, 5)).astype(dtype), cache)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx)), f"{impl}: softmax of ±1e4 is not finite ({dtype.__name__})"
        # q · k / √d_k = ±1e4 for every pair: the scores of ±1e4 the issue asks about
        q = np.array([[[100.0], [-100.0]]], dtype)  # (1, 2, 1)
        k = np.array([[[100.0], [-100.0], [50.0]]], dtype)  # (1, 3, 1)
        v = rng.standard_normal((1, 3, 2)).astype(dtype)
        out, cache = module.scaled_dot_product_attention_forward(q, k, v)
        grads = module.scaled_dot_product_attention_backward(np.ones_like(out), cache)
        assert np.all(np.isfinite(out)), f"{impl}: attention output with scores ±1e4 is not finite"
        assert all(np.all(np.isfinite(g)) for g in grads), f"{impl}: attention gradients with scores ±1e4 are not finite"
        np.testing.assert_allclose(out[0, 0], v[0, 0], rtol=1e-6)  # query 0 picks key 0 (score 1e4) alone


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_fully_masked_row_gives_zero_output_and_zero_gradient(impl):
    module = require(impl, "attention")
    q, k, v = _qkv()
    mask = np.ones((2, 3, 4), bool)
    mask[1, 2] = False  # batch 1, query 2 may attend to nothing
    out, cache = module.scaled_dot_product_attention_forward(q, k, v, mask)
    dq, dk, dv = module.scaled_dot_product_attention_backward(np.ones_like(out), cache)
    assert np.all(out[1, 2] == 0.0), f"{impl}: fully masked row gives {out[1, 2]}, expected 0"
    assert np.all(dq[1, 2] == 0.0), f"{impl}: fully masked row has query gradient {dq[1, 2]}, expected 0"
    assert np.all(np.isfinite(dk)) and np.all(np.isfinite(dv))
