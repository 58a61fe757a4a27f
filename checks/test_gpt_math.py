"""The GPT's hand-written backward is the derivative of its forward, it is causal, its cached
generation equals recomputing the prefix, and its sampling filters and draws mean what they say.

Gradients: one block against central differences along a random direction, and a whole tiny
model against the full numerical gradient of every entry of every parameter. Behaviour:
changing a later token leaves earlier logits bit for bit unchanged; gpt_step's logits equal
gpt_forward's, and generate with the cache equals generate without it, token for token, for
prompts of every length up to the block size. Sampling: filter_logits on logits with many ties
(top-k keeps ties, top-p keeps a minimal set, never empty) and equal to transformers' warpers;
sample's draws pass a χ² test against the filtered softmax, which a planted off-by-one fails.
"""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.strategies import logits_with_ties
from checks.tolerances import assert_clear_error, assert_vjp
from scratch import gpt as G
from scratch.attention import softmax_forward
from scratch.gradcheck import numerical_gradient

pytestmark = pytest.mark.gpt

seeds = st.integers(0, 2**32 - 1)
TINY = G.GPTConfig(vocab_size=7, block_size=6, n_layer=2, n_head=2, d_model=8)


def tiny_params(config=TINY, seed=0, spread=0.3, dtype=np.float64):
    """GPT-2's initialisation plus noise: off the symmetric start (γ ≠ 1, β ≠ 0), logits far from uniform."""
    rng = np.random.default_rng(seed)
    params = G.init_gpt(config, rng)
    return {k: (v + rng.normal(0.0, spread, v.shape)).astype(dtype) for k, v in params.items()}


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


@given(seed=seeds)
def test_block_gradients(seed):
    rng = np.random.default_rng(seed)
    params = tiny_params(seed=seed % 1000)
    names = G.layer_names(1)

    def forward(i):
        return G.block_forward(i["x"], {k: i[k] for k in names}, 1, TINY.n_head)

    def backward(dout, cache):
        dx, grads = G.block_backward(dout, cache)
        return {"x": dx, **grads}

    inputs = {"x": rng.standard_normal((2, 5, 8)), **{k: params[k] for k in names}}
    assert_vjp(forward, backward, inputs, seed, "GPT block")


TOKENS = np.array([[1, 3, 4, 5, 2, 6, 0], [1, 5, 2, 6, 0, 0, 0], [1, 1, 1, 6, 6, 0, 0]])  # (B, T + 1), 0 pads


def test_whole_model_gradient_of_every_parameter():
    """Every entry of every parameter against central differences, padding ignored by the loss."""
    params = tiny_params()
    loss, cache = G.gpt_loss_forward(TOKENS, params, TINY, pad_id=0)
    grads = G.gpt_loss_backward(1.0, cache)
    assert list(grads) == list(params) == list(G.parameter_shapes(TINY))
    for name, p in params.items():
        numeric = numerical_gradient(lambda value: G.gpt_loss_forward(TOKENS, {**params, name: value}, TINY, 0)[0], p.copy())
        # b_k shifts every score of a query by the same amount, which softmax ignores: its true gradient
        # is 0 and central differences give rounding noise, so it is compared absolutely.
        if name.endswith("b_k"):
            assert np.abs(grads[name]).max() < 1e-12 and np.abs(numeric).max() < 1e-8, name
            continue
        error = np.abs(grads[name] - numeric).max() / (np.abs(numeric).max() + 1e-12)
        assert error < 1e-6, f"scratch: d{name} differs from central differences: error {error:.3g} of its largest entry"
    # the tied embedding gets both gradients: without the output's share it would be far off
    assert np.abs(grads["wte"]).max() > 1e-3


def test_padding_counts_for_nothing():
    params = tiny_params()
    short, _ = G.gpt_loss_forward(TOKENS[1:2, :5], params, TINY, 0)
    padded, _ = G.gpt_loss_forward(TOKENS[1:2], params, TINY, 0)
    assert padded == pytest.approx(short, rel=1e-13)


# ----------------------------------------------------------------------------------------------
# Causality and cached generation
# ----------------------------------------------------------------------------------------------


@settings(max_examples=15)
@given(seed=seeds, t=st.integers(1, TINY.block_size - 1))
def test_later_tokens_never_change_earlier_logits(seed, t):
    rng = np.random.default_rng(seed)
    params = tiny_params(seed=seed % 100)
    tokens = rng.integers(0, TINY.vocab_size, (3, TINY.block_size))
    changed = tokens.copy()
    changed[:, t:] = (tokens[:, t:] + rng.integers(1, TINY.vocab_size, tokens[:, t:].shape)) % TINY.vocab_size
    before, after = G.gpt_forward(tokens, params, TINY)[0], G.gpt_forward(changed, params, TINY)[0]
    np.testing.assert_array_equal(after[:, :t], before[:, :t])  # bit for bit
    assert np.abs(after[:, t:] - before[:, t:]).max() > 1e-6  # and the later ones do change


CACHE_CONFIG = G.GPTConfig(vocab_size=11, block_size=9, n_layer=3, n_head=2, d_model=12)


def test_cached_step_equals_the_full_forward_at_every_position():
    params = tiny_params(CACHE_CONFIG, seed=4, spread=0.5)
    tokens = np.random.default_rng(0).integers(0, 11, (4, 9))
    full = G.gpt_forward(tokens, params, CACHE_CONFIG)[0]  # (B, T, V)
    kv = G.empty_kv_cache(params, CACHE_CONFIG, 4)
    for t in range(9):
        logits, grown = G.gpt_step(tokens[:, t], kv, params, CACHE_CONFIG)
        assert kv.keys[0].shape[2] == t and grown.keys[0].shape[2] == t + 1  # appended; the old cache unchanged
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-12, atol=1e-12, err_msg=f"position {t}")
        kv = grown
    with pytest.raises(ValueError, match="block_size = 9"):
        G.gpt_step(tokens[:, 0], kv, params, CACHE_CONFIG)


@pytest.mark.parametrize("prompt_length", range(1, CACHE_CONFIG.block_size + 1))
@pytest.mark.parametrize("filters", [{}, {"temperature": 0.0}, {"temperature": 1.3, "top_k": 4, "top_p": 0.8}],
                         ids=["sampled", "greedy", "filtered"])
def test_cached_generation_equals_recomputing_the_prefix(prompt_length, filters):
    params = tiny_params(CACHE_CONFIG, seed=prompt_length, spread=0.5)
    prompt = np.random.default_rng(prompt_length).integers(0, 11, (5, prompt_length))
    cached = G.generate(params, CACHE_CONFIG, prompt, 20, np.random.default_rng(7), **filters)
    recomputed = G.generate(params, CACHE_CONFIG, prompt, 20, np.random.default_rng(7), use_cache=False, **filters)
    np.testing.assert_array_equal(cached, recomputed)
    # the sequence stops at block_size + 1 tokens: the last is read off position block_size − 1
    assert cached.shape == (5, CACHE_CONFIG.block_size + 1)
    np.testing.assert_array_equal(cached[:, :prompt_length], prompt)
    # logit for logit: replaying the cached steps along the generated sequence gives the full forward's logits
    full = G.gpt_forward(cached[:, :-1], params, CACHE_CONFIG)[0]
    kv = G.empty_kv_cache(params, CACHE_CONFIG, 5)
    for t in range(CACHE_CONFIG.block_size):
        logits, kv = G.gpt_step(cached[:, t], kv, params, CACHE_CONFIG)
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-12, atol=1e-12, err_msg=f"position {t}")


def test_generation_errors_and_limits():
    params = tiny_params(CACHE_CONFIG)
    rng = np.random.default_rng(0)
    assert_clear_error("scratch", "a prompt over block_size", lambda: G.generate(params, CACHE_CONFIG, np.ones((2, 10), int), 3, rng),
                       ValueError, ["prompt", "(2, 10)", "block_size = 9"])
    assert_clear_error("scratch", "an empty prompt", lambda: G.generate(params, CACHE_CONFIG, np.ones((2, 0), int), 3, rng),
                       ValueError, ["prompt", "(2, 0)"])
    assert G.generate(params, CACHE_CONFIG, [3, 4], 4, rng).shape == (6,)  # a 1-D prompt gives a 1-D sequence
    assert G.generate(params, CACHE_CONFIG, [3] * 9, 5, rng).shape == (10,)  # at most block_size + 1 tokens
    assert G.generate(params, CACHE_CONFIG, [3, 4], 0, rng).tolist() == [3, 4]


# ----------------------------------------------------------------------------------------------
# The model's contract and its input checks
# ----------------------------------------------------------------------------------------------


def test_parameters_and_initialisation_are_gpt2s():
    config = G.GPTConfig(vocab_size=50, block_size=32, n_layer=4, n_head=4, d_model=64)
    params = G.init_gpt(config, np.random.default_rng(0), dtype=np.float32)
    expected = ["wte", "wpe"]
    for i in range(4):
        expected += [f"h.{i}.ln_1.gamma", f"h.{i}.ln_1.beta"] + [f"h.{i}.attn.{n}" for n in
                                                                  ("W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o")]
        expected += [f"h.{i}.ln_2.gamma", f"h.{i}.ln_2.beta", f"h.{i}.mlp.W1", f"h.{i}.mlp.b1", f"h.{i}.mlp.W2", f"h.{i}.mlp.b2"]
    assert list(params) == expected + ["ln_f.gamma", "ln_f.beta"]
    assert params["wte"].shape == (50, 64) and params["wpe"].shape == (32, 64)
    assert params["h.0.mlp.W1"].shape == (64, 256) and params["h.0.mlp.W2"].shape == (256, 64)
    assert all(p.dtype == np.float32 for p in params.values())
    stacked = lambda leaf: np.concatenate([params[f"h.{i}.{leaf}"].ravel() for i in range(4)])  # noqa: E731
    assert np.std(stacked("attn.W_q")) == pytest.approx(0.02, rel=0.03)
    assert np.std(params["wte"]) == pytest.approx(0.02, rel=0.05)
    for leaf in ("attn.W_o", "mlp.W2"):  # 0.02 / √(2L) on the residual projections
        assert np.std(stacked(leaf)) == pytest.approx(0.02 / np.sqrt(8), rel=0.03), leaf
    assert not np.any(stacked("attn.b_o")) and np.all(stacked("ln_1.gamma") == 1) and not np.any(params["ln_f.beta"])


def test_float32_stays_float32():
    params = tiny_params(dtype=np.float32)
    logits, cache = G.gpt_forward(TOKENS[:, :-1], params, TINY)
    assert logits.dtype == np.float32
    assert all(g.dtype == np.float32 for g in G.gpt_backward(np.ones_like(logits), cache).values())
    logits, kv = G.gpt_step(np.array([1, 2]), G.empty_kv_cache(params, TINY, 2), params, TINY)
    assert logits.dtype == np.float32 and kv.keys[0].dtype == np.float32


def test_bad_input_gets_clear_errors():
    params = tiny_params()
    forward = lambda tokens: G.gpt_forward(tokens, params, TINY)  # noqa: E731
    assert_clear_error("scratch", "float tokens", lambda: forward(np.ones((2, 3))), ValueError, ["tokens", "integer", "(2, 3)"])
    assert_clear_error("scratch", "1-D tokens", lambda: forward(np.ones(3, int)), ValueError, ["tokens", "(B, T)", "(3,)"])
    assert_clear_error("scratch", "T over block_size", lambda: forward(np.ones((2, 7), int)), ValueError,
                       ["tokens", "(2, 7)", "block_size = 6"])
    assert_clear_error("scratch", "an id outside the vocabulary", lambda: forward(np.array([[1, 7]])), ValueError,
                       ["tokens", "[0, vocab_size=7)", "[1, 7]"])
    del params["h.1.mlp.b2"]
    assert_clear_error("scratch", "a missing parameter", lambda: forward(np.ones((1, 2), int)), ValueError, ["h.1.mlp.b2"])
    assert_clear_error("scratch", "an unknown attention kind", lambda: G.check_gpt_config(TINY._replace(attention="sparse")),
                       ValueError, ["attention", "plain", "flash", "sparse"])
    assert_clear_error("scratch", "heads not dividing the width", lambda: G.init_gpt(TINY._replace(n_head=3), np.random.default_rng(0)),
                       ValueError, ["d_model = 8", "n_head = 3"])


# ----------------------------------------------------------------------------------------------
# filter_logits: top-k keeps ties, top-p keeps a minimal set that reaches p, never empty
# ----------------------------------------------------------------------------------------------

top_ks = st.integers(1, 9)
top_ps = st.sampled_from([0.25, 0.5, 0.75, 0.9, 1.0]) | st.floats(0.01, 1.0)


def _mass_above(probs_row, kept_row):
    """Sorted kept probabilities, most likely first, and the mass of all but the least likely kept."""
    kept = np.sort(probs_row[kept_row])[::-1]
    return kept, kept[:-1].sum()


@given(logits=logits_with_ties(), top_k=top_ks)
def test_top_k_keeps_every_entry_tied_with_the_kth(logits, top_k):
    out = G.filter_logits(logits, top_k=top_k)
    for row, filtered in zip(logits, out):
        finite = np.sort(row[np.isfinite(row)])[::-1]
        kth = finite[min(top_k, len(finite)) - 1] if top_k <= len(row) else -np.inf
        keep = row >= kth
        np.testing.assert_array_equal(filtered[keep], row[keep])  # kept entries untouched
        assert np.all(np.isneginf(filtered[~keep]))
        assert keep.sum() >= min(top_k, len(finite))  # at least k, more when the k-th is tied


@given(logits=logits_with_ties(), top_p=top_ps)
def test_top_p_keeps_the_smallest_set_reaching_p(logits, top_p):
    out = G.filter_logits(logits, top_p=top_p)
    probs, _ = softmax_forward(logits)
    for row, p, filtered in zip(logits, probs, out):
        kept_row = np.isfinite(filtered)
        assert kept_row.any(), "top-p removed every token"
        np.testing.assert_array_equal(filtered[kept_row], row[kept_row])
        # a top set: nothing removed is more likely than something kept
        if (~kept_row).any():
            assert row[~kept_row].max() <= row[kept_row].min()
        kept, without_least = _mass_above(p, kept_row)
        assert kept.sum() >= top_p - 1e-12 or not (~kept_row & (p > 0)).any(), "the kept set does not reach p"
        assert without_least < top_p + 1e-12, "a smaller set would reach p: the set is not minimal"


@given(logits=logits_with_ties(), top_k=top_ks, top_p=top_ps)
def test_top_k_then_top_p(logits, top_k, top_p):
    """Both filters: top-p works on what top-k left, its mass renormalised over the survivors."""
    both = G.filter_logits(logits, top_k=top_k, top_p=top_p)
    np.testing.assert_array_equal(both, G.filter_logits(G.filter_logits(logits, top_k=top_k), top_p=top_p))
    assert np.all(np.isfinite(both).sum(axis=-1) >= 1)
    assert np.all(np.isfinite(both) <= np.isfinite(G.filter_logits(logits, top_k=top_k)))


def _transformers():
    """transformers' logits warpers; a missing package skips while developing and fails in CI."""
    try:
        import torch
        from transformers import TopKLogitsWarper, TopPLogitsWarper
    except ImportError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"transformers cannot be imported: {error}")
        pytest.skip(f"transformers cannot be imported: {error}")
    return torch, TopKLogitsWarper, TopPLogitsWarper


@settings(max_examples=60)
@given(logits=logits_with_ties(), top_k=st.none() | top_ks, top_p=st.none() | top_ps)
def test_filter_logits_equals_transformers_warpers(logits, top_k, top_p):
    """The same kept set as TopKLogitsWarper then TopPLogitsWarper (float64), up to which member of a tie
    at the top-p boundary is kept: torch.sort does not order equal logits stably, so transformers may keep
    another member than our lower index; the number kept and the values kept are always the same."""
    torch, TopK, TopP = _transformers()
    ours = G.filter_logits(logits, top_k=top_k, top_p=top_p)
    theirs = torch.from_numpy(logits.copy())
    if top_k is not None:
        theirs = TopK(top_k)(None, theirs)
    if top_p is not None:
        theirs = TopP(top_p)(None, theirs)
    theirs = theirs.numpy()
    ours_kept, theirs_kept = np.isfinite(ours), np.isfinite(theirs)
    np.testing.assert_array_equal(ours_kept.sum(-1), theirs_kept.sum(-1), err_msg="a different number of tokens kept")
    for row, a, b in zip(logits, ours_kept, theirs_kept):
        np.testing.assert_array_equal(np.sort(row[a]), np.sort(row[b]), err_msg="different logits kept")
        if top_p is None:
            np.testing.assert_array_equal(a, b)  # top-k alone keeps ties: no choice to make
    np.testing.assert_array_equal(ours[ours_kept & theirs_kept], theirs[ours_kept & theirs_kept])


def test_filter_and_sample_arguments_are_checked():
    logits, rng = np.zeros((2, 4)), np.random.default_rng(0)
    for kwargs, fragment in (({"top_k": 0}, "top_k"), ({"top_k": 1.5}, "top_k"), ({"top_k": True}, "top_k"),
                             ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")):
        assert_clear_error("scratch", f"filter_logits({kwargs})", lambda: G.filter_logits(logits, **kwargs), ValueError,
                           [fragment, repr(next(iter(kwargs.values())))])
    for t in (-1.0, float("nan"), float("inf")):
        assert_clear_error("scratch", f"temperature {t}", lambda: G.sample(logits, rng, temperature=t), ValueError, ["temperature"])
    assert_clear_error("scratch", "NaN logits", lambda: G.sample(np.array([[0.0, np.nan]]), rng), ValueError, ["logits", "NaN"])
    assert_clear_error("scratch", "all −inf", lambda: G.filter_logits(np.full((1, 3), -np.inf)), ValueError, ["all −inf"])
    assert_clear_error("scratch", "a seed instead of a Generator", lambda: G.sample(logits, 0), TypeError, ["rng", "Generator"])


# ----------------------------------------------------------------------------------------------
# sample: draws from the filtered softmax
# ----------------------------------------------------------------------------------------------

DRAWS = 20_000
ROW = np.array([2.0, 1.0, 1.0, 0.5, 0.0, -1.0, -3.0])  # a tie at the second place


def chi_squared_p_value(tokens, expected_probs):
    """Pearson's χ² goodness of fit of the drawn tokens to expected_probs; a draw of a token with probability 0 fails."""
    from scipy.stats import chi2

    counts = np.bincount(tokens, minlength=len(expected_probs))
    support = expected_probs > 0
    if counts[~support].any():
        return 0.0
    expected = DRAWS * expected_probs[support]
    statistic = float(((counts[support] - expected) ** 2 / expected).sum())
    return float(chi2.sf(statistic, df=support.sum() - 1))


def filtered_softmax(row, temperature=1.0, top_k=None, top_p=None):
    """What sample should draw from, written out: softmax over the tokens filter_logits keeps."""
    z = G.filter_logits(row / temperature, top_k=top_k, top_p=top_p)
    return softmax_forward(z)[0]


@pytest.mark.parametrize("filters", [{}, {"top_k": 2}, {"top_p": 0.6}, {"temperature": 0.7, "top_k": 5, "top_p": 0.9},
                                     {"temperature": 2.0}], ids=["plain", "top-k-tie", "top-p", "combined", "hot"])
def test_sample_draws_from_the_filtered_softmax(filters):
    tokens = G.sample(np.tile(ROW, (DRAWS, 1)), np.random.default_rng(123), **filters)
    assert tokens.shape == (DRAWS,)
    p_value = chi_squared_p_value(tokens, filtered_softmax(ROW, **filters))
    assert p_value > 1e-3, f"scratch: sample({filters}) does not draw from the filtered softmax: χ² p-value {p_value:.3g}"


def test_the_chi_squared_check_rejects_planted_bugs():
    """The same statistic fails the catalogued sampling bugs: it can tell a right sampler from a wrong one."""
    rng = np.random.default_rng(123)
    rows = np.tile(ROW, (DRAWS, 1))
    expected = filtered_softmax(ROW, top_k=2)
    assert np.count_nonzero(expected) == 3  # 2.0 and both of the tied 1.0s
    # top-k keeping k − 1 tokens
    assert chi_squared_p_value(G.sample(rows, rng, top_k=1), expected) < 1e-6
    # top-k keeping exactly k tokens, dropping the tie at the k-th
    exactly_k = rows.copy()
    exactly_k[:, 2:] = -np.inf
    assert chi_squared_p_value(G.sample(exactly_k, rng), expected) < 1e-6
    # the temperature applied to the probabilities (p / τ, renormalised, is p again) instead of the logits
    assert chi_squared_p_value(G.sample(rows, rng), filtered_softmax(ROW, temperature=0.5)) < 1e-6


def test_temperature_zero_is_the_argmax_and_draws_nothing():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    logits = np.array([[0.0, 3.0, 3.0, 1.0], [5.0, -1.0, 2.0, 5.0]])
    np.testing.assert_array_equal(G.sample(logits, rng, temperature=0.0), [1, 0])  # ties: the first index
    assert rng.bit_generator.state == state
    assert G.sample(logits, rng, temperature=0.0, top_k=1, top_p=0.1).tolist() == [1, 0]
    assert G.sample(logits, None, temperature=0.0).tolist() == [1, 0]  # greedy needs no generator


def test_the_same_generator_state_gives_the_same_tokens():
    logits = np.random.default_rng(0).standard_normal((50, 9))
    a = G.sample(logits, np.random.default_rng(9), temperature=0.8, top_p=0.9)
    b = G.sample(logits, np.random.default_rng(9), temperature=0.8, top_p=0.9)
    np.testing.assert_array_equal(a, b)
