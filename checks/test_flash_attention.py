"""FlashAttention (scratch/flash_attention.py) is scaled dot-product attention, computed in blocks.

It equals scratch's plain attention (with causal_mask when causal) on drawn shapes and blocks, its
backward equals central differences, every port equals it, and it keeps its two promises about
cost: the cache holds nothing of size Tq × Tk, causal blocks above the diagonal are never computed,
and the forward+backward's peak memory at T = 2048 is at most 1/8 of the plain attention's.
"""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.bench_flash import traced_peak
from checks.implementations import PORTS, require
from checks.strategies import DTYPES, flash_cases
from checks.tolerances import assert_close, assert_vjp
from scratch import attention as A
from scratch import flash_attention as F

pytestmark = pytest.mark.flash

dtype_ids = lambda d: np.dtype(d).name  # noqa: E731


def run_flash(module, case):
    out, cache = module.flash_attention_forward(case.q, case.k, case.v, case.causal, case.block_q, case.block_k)
    dq, dk, dv = module.flash_attention_backward(case.dout, cache)
    return {"out": out, "dq": dq, "dk": dk, "dv": dv}


def run_plain(case):
    mask = A.causal_mask(case.q.shape[-2]) if case.causal else None
    out, cache = A.scaled_dot_product_attention_forward(case.q, case.k, case.v, mask)
    dq, dk, dv = A.scaled_dot_product_attention_backward(case.dout, cache)
    return {"out": out, "dq": dq, "dk": dk, "dv": dv}


def assert_all_close(actual, expected, impl, against, dtype):
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name].dtype == np.dtype(dtype), f"{impl}: flash {name} is {actual[name].dtype}, input was {np.dtype(dtype)}"
        assert_close(actual[name], value, impl=impl, what=f"flash attention {name} against {against}")


# ----------------------------------------------------------------------------------------------
# Equal to the plain attention, and to central differences
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@given(case=flash_cases(np.float64))
def test_flash_equals_plain_attention(dtype, case):
    case = case._replace(**{f: getattr(case, f).astype(dtype) for f in ("q", "k", "v", "dout")})
    assert_all_close(run_flash(F, case), run_plain(case), "scratch", "scaled_dot_product_attention", dtype)


@pytest.mark.parametrize("causal", [False, True], ids=["none", "causal"])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_flash_backward_matches_finite_differences(causal, data, seed):
    case = data.draw(flash_cases(np.float64, causal=causal), label="case")
    assert_vjp(
        lambda p: F.flash_attention_forward(p["q"], p["k"], p["v"], case.causal, case.block_q, case.block_k),
        lambda g, cache: dict(zip("qkv", F.flash_attention_backward(g, cache))),
        {"q": case.q, "k": case.k, "v": case.v}, seed, f"flash attention (causal={causal})",
    )


# Causal, T = 7: blocks of 1 query before one key block of 7 and the reverse, blocks that do not divide T,
# blocks larger than T, and each block of queries (rows r0 … r1 − 1) meeting key blocks that start after
# some of its rows (rows that see none of the block: their weights there must be exactly 0, not NaN).
EDGE_BLOCKS = [(1, 7), (7, 1), (2, 3), (3, 2), (4, 4), (64, 64), (1, 1), (5, 64), (64, 5)]


@pytest.mark.parametrize("block_q, block_k", EDGE_BLOCKS)
def test_causal_query_blocks_before_key_blocks_are_handled(block_q, block_k):
    rng = np.random.default_rng(block_q * 100 + block_k)
    q, k, v, dout = (rng.standard_normal((2, 7, 3)) for _ in range(4))
    out, cache = F.flash_attention_forward(q, k, v, True, block_q, block_k)
    grads = F.flash_attention_backward(dout, cache)
    expected = run_plain(type("Case", (), {"q": q, "k": k, "v": v, "dout": dout, "causal": True})())
    for name, value in zip(("out", "dq", "dk", "dv"), (out, *grads)):
        assert np.all(np.isfinite(value)), f"scratch: flash {name} is not finite for blocks ({block_q}, {block_k})"
        assert_close(value, expected[name], impl="scratch", what=f"causal flash {name}, blocks ({block_q}, {block_k})")
    # the first query sees the first key only: its output is exactly that key's value
    assert_close(out[:, 0], v[:, 0], impl="scratch", what="row 0, which attends to key 0 alone")


# ----------------------------------------------------------------------------------------------
# What it costs: the cache, the blocks computed, the memory
# ----------------------------------------------------------------------------------------------


def _arrays(cache):
    return {name: value for name, value in cache._asdict().items() if isinstance(value, np.ndarray)}


def test_cache_holds_only_arrays_linear_in_t():
    rng = np.random.default_rng(0)
    sizes = {}
    for t in (256, 512):
        q, k, v = (rng.standard_normal((2, 3, t, 4)) for _ in range(3))
        _, cache = F.flash_attention_forward(q, k, v, True, 32, 32)
        arrays = _arrays(cache)
        assert set(arrays) == {"q", "k", "v", "out", "lse"}, f"the cache holds {sorted(arrays)}"
        assert cache.lse.shape == (2, 3, t), f"lse has shape {cache.lse.shape}, expected (B, H, Tq) = {(2, 3, t)}"
        largest = max(a.size for a in arrays.values())
        assert largest <= 2 * 3 * t * 4, f"the cache's largest array holds {largest} values at T = {t}: more than B·H·T·d"
        assert all(a.shape.count(t) <= 1 for a in arrays.values()), "an array of the cache has two axes of length T"
        sizes[t] = largest
    assert sizes[512] == 2 * sizes[256], f"the cache's largest array grows from {sizes[256]} to {sizes[512]} when T doubles"


class _CountingNumPy:
    """NumPy, with every exp of a (..., rows, columns) block recorded: one per block of scores computed."""

    def __init__(self, block_ndim):
        self.block_ndim, self.blocks = block_ndim, []

    def __getattr__(self, name):
        return getattr(np, name)

    def exp(self, x, *args, **kwargs):
        if np.ndim(x) == self.block_ndim:
            self.blocks.append(x.shape[-2:])
        return np.exp(x, *args, **kwargs)


def _blocks_below_the_diagonal(t, block_q, block_k):
    """Query/key block pairs with at least one (row, column) on or below the diagonal: column c ≤ row r."""
    return [(i, j) for i in range(-(-t // block_q)) for j in range(-(-t // block_k)) if j * block_k <= min(t, (i + 1) * block_q) - 1]


@pytest.mark.parametrize("t, block_q, block_k", [(64, 16, 16), (50, 8, 12), (50, 12, 8), (30, 64, 4), (9, 1, 1)])
def test_causal_blocks_wholly_above_the_diagonal_are_never_computed(t, block_q, block_k, monkeypatch):
    rng = np.random.default_rng(t)
    q, k, v, dout = (rng.standard_normal((2, t, 3)) for _ in range(4))
    counting = _CountingNumPy(block_ndim=3)
    monkeypatch.setattr(F, "np", counting)
    _, cache = F.flash_attention_forward(q, k, v, True, block_q, block_k)
    forward, counting.blocks = counting.blocks, []
    F.flash_attention_backward(dout, cache)
    backward = counting.blocks
    expected = len(_blocks_below_the_diagonal(t, block_q, block_k))
    everything = -(-t // block_q) * -(-t // block_k)
    assert expected < everything or block_q >= t  # one query block holding every row sees every key block
    assert len(forward) == expected, f"the causal forward computed {len(forward)} blocks of scores, expected {expected} of {everything}"
    assert len(backward) == expected, f"the causal backward recomputed {len(backward)} blocks, expected {expected} of {everything}"


def test_peak_memory_at_t_2048_is_at_most_an_eighth_of_the_plain_attention():
    """tracemalloc counts every NumPy buffer allocated (NumPy reports them), so the peak is deterministic."""
    t, dk = 2048, 16
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, 2, t, dk), dtype=np.float32) for _ in range(4))
    mask = A.causal_mask(t)

    def plain():
        _, cache = A.scaled_dot_product_attention_forward(q, k, v, mask)
        A.scaled_dot_product_attention_backward(dout, cache)

    def flash():
        _, cache = F.flash_attention_forward(q, k, v, True)
        F.flash_attention_backward(dout, cache)

    plain_peak, flash_peak = traced_peak(plain), traced_peak(flash)
    assert plain_peak >= 2 * t * t * 4, f"the plain attention peaked at {plain_peak} bytes: tracemalloc missed its (T, T) arrays"
    assert flash_peak * 8 <= plain_peak, (
        f"flash attention peaked at {flash_peak / 2**20:.1f} MiB, the plain at {plain_peak / 2**20:.1f} MiB "
        f"(ratio {flash_peak / plain_peak:.3f}, target ≤ 1/8)")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@settings(max_examples=30)
@given(case=flash_cases(np.float64), threads=st.integers(2, 5))
def test_threads_split_the_heads_without_changing_a_bit(dtype, case, threads):
    """The (batch · heads) pairs shared out over threads give exactly the one-thread result: same products per pair."""
    case = case._replace(**{f: getattr(case, f).astype(dtype) for f in ("q", "k", "v", "dout")})
    results = []
    for n in (1, threads):
        out, cache = F.flash_attention_forward(case.q, case.k, case.v, case.causal, case.block_q, case.block_k, threads=n)
        results.append((out, cache.lse, *F.flash_attention_backward(case.dout, cache, threads=n)))
    for name, one, many in zip(("out", "lse", "dq", "dk", "dv"), *results):
        assert many.dtype == one.dtype and many.shape == one.shape, f"{name}: {many.dtype}{many.shape} against {one.dtype}{one.shape}"
        np.testing.assert_array_equal(many, one, err_msg=f"{name} with {threads} threads, leading axes {case.q.shape[:-2]}")


def test_flash_threads_argument_gets_a_clear_error():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive int or None"):
            F.flash_attention_forward(x, x, x, threads=bad)


# ----------------------------------------------------------------------------------------------
# Input errors: the plain attention's, word for word, in every implementation
# ----------------------------------------------------------------------------------------------

x = np.zeros((2, 3, 4))
BAD_INPUTS = {
    "integer q": (np.zeros((2, 3, 4), int), x, x),
    "k of another width": (x, np.zeros((2, 3, 5)), x),
    "v of another length": (x, x, np.zeros((2, 4, 4))),
    "other leading axes": (x, np.zeros((1, 3, 4)), np.zeros((1, 3, 4))),
    "mixed dtypes": (x, x.astype(np.float32), x),
    "q without a time axis": (np.zeros(4), x, x),
}


@pytest.mark.parametrize("impl", ("scratch",) + PORTS)
@pytest.mark.parametrize("what", sorted(BAD_INPUTS))
def test_bad_inputs_raise_the_plain_attentions_errors(impl, what):
    module = require(impl, "flash_attention")
    q, k, v = BAD_INPUTS[what]
    with pytest.raises((TypeError, ValueError)) as plain:
        A.scaled_dot_product_attention_forward(q, k, v)
    with pytest.raises(plain.type) as flash:
        module.flash_attention_forward(q, k, v)
    assert str(flash.value) == str(plain.value), f"{impl}: {what}: flash says {flash.value!s}, plain says {plain.value!s}"


@pytest.mark.parametrize("impl", ("scratch",) + PORTS)
@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"causal": True, "k": np.zeros((2, 5, 4)), "v": np.zeros((2, 5, 4))}, ValueError, "causal attention needs Tq = Tk"),
    ({"block_q": 0}, ValueError, "block_q must be a positive int, got 0"),
    ({"block_k": 2.5}, ValueError, "block_k must be a positive int, got 2.5"),
    ({"causal": "yes"}, TypeError, "causal must be True or False"),
])
def test_flash_arguments_get_clear_errors(impl, kwargs, error, fragment):
    module = require(impl, "flash_attention")
    args = {"q": x, "k": x, "v": x, **kwargs}
    with pytest.raises(error, match=fragment):
        module.flash_attention_forward(**args)


# ----------------------------------------------------------------------------------------------
# Every port equals scratch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=15)
@given(data=st.data())
def test_port_matches_scratch(impl, dtype, data):
    port = require(impl, "flash_attention")
    case = data.draw(flash_cases(dtype, max_t=7, max_block=5), label="case")
    assert_all_close(run_flash(port, case), run_flash(F, case), impl, "scratch's flash attention", dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_torch_port_runs_on_the_fused_flash_kernel(dtype):
    """With every other SDPA backend switched off, the port still runs: the fused CPU kernel takes its inputs."""
    port = require("torch", "flash_attention")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rng = np.random.default_rng(1)
    q, k, v, dout = (rng.standard_normal((2, 3, 33, 8)).astype(dtype) for _ in range(4))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out, cache = port.flash_attention_forward(q, k, v, True)
        grads = port.flash_attention_backward(dout, cache)
    case = type("Case", (), {"q": q, "k": k, "v": v, "dout": dout, "causal": True})()
    assert_all_close(dict(zip(("out", "dq", "dk", "dv"), (out, *grads))), run_plain(case), "torch", "plain attention", dtype)


@pytest.mark.parametrize("causal", [False, True], ids=["none", "causal"])
def test_keras_dot_product_attention_equals_flash(causal):
    """keras.ops.dot_product_attention, Keras's own kernel (plain on the TensorFlow backend), against scratch's flash.

    Measured: in float64 Keras rounds its scale 1/√d_k through float32 (as its MultiHeadAttention does, see
    ports/keras/gpt.py), so it equals scratch's flash with that scale, not with the exact one.
    """
    require("keras", "flash_attention")
    from keras import ops

    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 3, 37, 8)) for _ in range(3))  # (B, H, T, d)
    bthd = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3))  # noqa: E731  Keras's layout (B, T, H, d)
    out = ops.convert_to_numpy(ops.dot_product_attention(bthd(q), bthd(k), bthd(v), is_causal=causal)).transpose(0, 2, 1, 3)
    exact, _ = F.flash_attention_forward(q, k, v, causal, 16, 8)
    keras_scale = float(np.float32(1.0 / np.sqrt(8.0)))
    as_keras, _ = F.flash_attention_forward(q * (keras_scale * np.sqrt(8.0)), k, v, causal, 16, 8)
    assert_close(out, as_keras, impl="keras", what=f"ops.dot_product_attention (causal={causal}), scale rounded to float32")
    difference = np.abs(out - exact).max()
    assert 1e-10 < difference < 1e-6, f"keras: with the exact scale the difference is {difference:.3g}, not float32 rounding"


# ----------------------------------------------------------------------------------------------
# The models with attention="flash"
# ----------------------------------------------------------------------------------------------


def test_gpt_trained_with_flash_attention_follows_the_plain_one():
    """Five Adam steps of a GPT whose 150 positions span three flash blocks of 64 (the last one short)."""
    from scratch.gpt import GPTConfig, gpt_loss_backward, gpt_loss_forward, init_gpt
    from scratch.optim import Adam

    plain = GPTConfig(vocab_size=11, block_size=150, n_layer=2, n_head=2, d_model=8)
    flash = plain._replace(attention="flash")
    rng = np.random.default_rng(0)
    start = init_gpt(plain, rng)
    tokens = rng.integers(0, plain.vocab_size, (2, plain.block_size + 1))
    runs = {}
    for config in (plain, flash):
        params, optimizer, losses = {k: v.copy() for k, v in start.items()}, Adam(lr=1e-2), []
        for _ in range(5):
            loss, cache = gpt_loss_forward(tokens, params, config)
            optimizer.step(params, gpt_loss_backward(1.0, cache))
            losses.append(loss)
        runs[config.attention] = (np.array(losses), params)
    assert_close(runs["flash"][0], runs["plain"][0], impl="scratch", what="GPT losses over 5 steps, flash against plain")
    assert runs["flash"][0][-1] < runs["flash"][0][0], "the flash GPT did not learn"
    for name, value in runs["plain"][1].items():
        assert_close(runs["flash"][1][name], value, impl="scratch", what=f"GPT {name} after 5 steps, flash against plain")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_encoder_decoder_with_flash_self_attention_equals_the_plain_one(dtype):
    """The decoder's causal self-attention by flash (targets of 70 positions: two blocks), padded sources plain."""
    from scratch import encoder_decoder as M

    config = M.TransformerConfig(src_vocab=7, tgt_vocab=9, d_model=8, num_heads=2, d_ff=16, num_layers=2, max_len=80,
                                 norm_first=True)
    rng = np.random.default_rng(1)
    params = M.init_transformer(config, rng, dtype)
    src = rng.integers(1, config.src_vocab, (3, 12))
    src[1, 7:] = src[2, 3:] = config.pad_id  # padded sources: the encoder and the cross-attention keep their masks
    tgt_in = rng.integers(1, config.tgt_vocab, (3, 70))
    logits, cache = M.transformer_forward(src, tgt_in, params, config)
    dlogits = rng.standard_normal(logits.shape).astype(dtype)
    grads = M.transformer_backward(dlogits, cache)
    flash_logits, flash_cache = M.transformer_forward(src, tgt_in, params, config._replace(attention="flash"))
    flash_grads = M.transformer_backward(dlogits, flash_cache)
    assert flash_logits.dtype == np.dtype(dtype)
    assert_close(flash_logits, logits, impl="scratch", what="encoder-decoder logits, flash against plain")
    for name, value in grads.items():
        assert_close(flash_grads[name], value, impl="scratch", what=f"encoder-decoder d{name}, flash against plain")
    assert "dec.0.self_attn" not in M.attention_maps(flash_cache) and "dec.0.cross_attn" in M.attention_maps(flash_cache)
    with pytest.raises(ValueError, match="config.attention must be one of"):
        M.transformer_forward(src, tgt_in, params, config._replace(attention="sparse"))
