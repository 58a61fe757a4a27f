"""The hand-written Transformer backward is the derivative of its forward, and the model behaves
as an encoder-decoder must.

Gradients: every op and layer (post-norm and pre-norm) against central differences along random
directions, and a whole tiny model (2 layers, 2 heads) against the full numerical gradient of
every parameter, with the output projection separate and tied. Behaviour: the positional
encoding is the paper's formula and a rotation per offset; layer norm standardises and ignores
shifts and scales of its input; the decoder is causal; source padding changes nothing; cached
decoding equals decoding by full recomputation; beam search of width 1 is greedy decoding.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.tolerances import assert_clear_error, assert_vjp
from scratch import decoding as Dec
from scratch import encoder_decoder as M
from scratch import transformer as T
from scratch.attention import causal_mask
from scratch.gradcheck import numerical_gradient
from scratch.layers import dropout_backward, dropout_forward, embedding_backward, embedding_forward

pytestmark = pytest.mark.transformer

seeds = st.integers(0, 2**32 - 1)


def layer_params(rng, names, d, f):
    """Random layer parameters; γ near 1 and nonzero biases, so no ReLU sits exactly on its kink."""
    params = {}
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        shape = {"W1": (d, f), "b1": (f,), "W2": (f, d)}.get(leaf, (d, d) if leaf.startswith("W") else (d,))
        params[name] = rng.normal(1.0 if leaf == "gamma" else 0.0, 0.5, shape)
    return params


# ----------------------------------------------------------------------------------------------
# Ops and layers against central differences
# ----------------------------------------------------------------------------------------------


@given(seed=seeds)
def test_layer_norm_gradients(seed):
    rng = np.random.default_rng(seed)
    inputs = {"x": 3.0 * rng.standard_normal((2, 3, 5)) + 1.0, "gamma": rng.normal(1, 0.5, 5), "beta": rng.normal(0, 1, 5)}

    def backward(dout, cache):
        return dict(zip(("x", "gamma", "beta"), T.layer_norm_backward(dout, cache)))

    assert_vjp(lambda i: T.layer_norm_forward(i["x"], i["gamma"], i["beta"]), backward, inputs, seed, "layer_norm")


@given(seed=seeds)
def test_feed_forward_gradients(seed):
    rng = np.random.default_rng(seed)
    params = layer_params(rng, T.FF_PARAM_NAMES, 4, 6)

    def forward(i):
        return T.feed_forward_forward(i["x"], {k: i[k] for k in T.FF_PARAM_NAMES})

    def backward(dout, cache):
        dx, grads = T.feed_forward_backward(dout, cache)
        return {"x": dx, **grads}

    assert_vjp(forward, backward, {"x": rng.standard_normal((2, 3, 4)), **params}, seed, "feed_forward")


@given(seed=seeds, norm_first=st.booleans())
def test_encoder_layer_gradients(seed, norm_first):
    rng = np.random.default_rng(seed)
    params = layer_params(rng, T.ENCODER_LAYER_NAMES, 4, 6)
    mask = np.array([[[True, True, True, False]], [[True, True, False, False]]])  # (B, 1, S): padded sources

    def forward(i):
        return T.encoder_layer_forward(i["x"], {k: i[k] for k in params}, 2, mask, norm_first)

    def backward(dout, cache):
        dx, grads = T.encoder_layer_backward(dout, cache)
        return {"x": dx, **grads}

    assert_vjp(forward, backward, {"x": rng.standard_normal((2, 4, 4)), **params}, seed, f"encoder_layer (norm_first={norm_first})")


@given(seed=seeds, norm_first=st.booleans())
def test_decoder_layer_gradients(seed, norm_first):
    rng = np.random.default_rng(seed)
    params = layer_params(rng, T.DECODER_LAYER_NAMES, 4, 6)
    memory_mask = np.array([[[True, True, False]], [[True, True, True]]])  # (B, 1, S)

    def forward(i):
        return T.decoder_layer_forward(i["y"], i["memory"], {k: i[k] for k in params}, 2, causal_mask(4), memory_mask,
                                       norm_first)

    def backward(dout, cache):
        dy, dmemory, grads = T.decoder_layer_backward(dout, cache)
        return {"y": dy, "memory": dmemory, **grads}

    inputs = {"y": rng.standard_normal((2, 4, 4)), "memory": rng.standard_normal((2, 3, 4)), **params}
    assert_vjp(forward, backward, inputs, seed, f"decoder_layer (norm_first={norm_first})")


@given(seed=seeds, smoothing=st.sampled_from([0.0, 0.1, 0.5]), ignore=st.booleans())
def test_cross_entropy_gradients(seed, smoothing, ignore):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 5, (3, 4))
    targets[0, 0] = 1

    def forward(i):
        loss, cache = T.cross_entropy_forward(i["logits"], targets, smoothing, 0 if ignore else None)
        return np.array(loss), cache

    def backward(dout, cache):
        return {"logits": T.cross_entropy_backward(float(dout), cache)}

    assert_vjp(forward, backward, {"logits": 3.0 * rng.standard_normal((3, 4, 5))}, seed, "cross_entropy")


def test_embedding_gradient_adds_repeated_ids():
    table = np.arange(12.0).reshape(4, 3)
    ids = np.array([[1, 1, 3], [1, 0, 3]])
    y, cache = embedding_forward(ids, table)
    np.testing.assert_array_equal(y, table[ids])
    dtable = embedding_backward(np.ones((2, 3, 3)), cache)
    np.testing.assert_array_equal(dtable[:, 0], [1.0, 3.0, 0.0, 2.0])  # id 1 three times, id 2 never


def test_dropout_scales_the_kept_entries_and_reuses_the_mask():
    x = np.ones((200, 50))
    y, cache = dropout_forward(x, 0.25, np.random.default_rng(0))
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    np.testing.assert_array_equal(dropout_backward(np.full_like(x, 2.0), cache) != 0, kept)
    same, none = dropout_forward(x, 0.25, None)
    assert same is x and none is None  # evaluation: the identity


# ----------------------------------------------------------------------------------------------
# The whole model against the full numerical gradient of every parameter
# ----------------------------------------------------------------------------------------------

SRC = np.array([[3, 4, 5, 2, 0], [6, 5, 2, 0, 0]])  # (B, S), 0 pads
TGT = np.array([[1, 3, 4, 5, 2], [1, 5, 2, 0, 0]])  # (B, T + 1), BOS … EOS, then padding


def tiny_model(norm_first=False, tie_output=False, seed=0):
    config = M.TransformerConfig(src_vocab=7, tgt_vocab=6, d_model=8, num_heads=2, d_ff=12, num_layers=2, max_len=10,
                                 norm_first=norm_first, tie_output=tie_output)
    rng = np.random.default_rng(seed)
    params = M.init_transformer(config, rng)
    params = {k: v + rng.normal(0.0, 0.2, v.shape) for k, v in params.items()}  # off the symmetric start
    return config, params


@pytest.mark.parametrize("norm_first,tie_output", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["post-norm", "pre-norm", "post-norm-tied", "pre-norm-tied"])
def test_whole_model_gradient_of_every_parameter(norm_first, tie_output):
    config, params = tiny_model(norm_first, tie_output)

    def loss(name, value):  # the loss with one parameter replaced
        logits, _ = M.transformer_forward(SRC, TGT[:, :-1], {**params, name: value}, config)
        return T.cross_entropy_forward(logits, TGT[:, 1:], 0.1, 0)[0]

    logits, cache = M.transformer_forward(SRC, TGT[:, :-1], params, config)
    _, loss_cache = T.cross_entropy_forward(logits, TGT[:, 1:], 0.1, 0)
    grads = M.transformer_backward(T.cross_entropy_backward(1.0, loss_cache), cache)
    assert list(grads) == list(params)
    for name, p in params.items():
        numeric = numerical_gradient(lambda value: loss(name, value), p.copy())
        # b_k only shifts every score of a query by the same amount, which softmax ignores: its true
        # gradient is 0 and central differences give rounding noise, so compare it absolutely.
        if name.endswith("b_k"):
            assert np.abs(grads[name]).max() < 1e-12 and np.abs(numeric).max() < 1e-8, name
            continue
        # relative to the array's largest entry: a tiny entry carries the same absolute rounding noise
        error = np.abs(grads[name] - numeric).max() / (np.abs(numeric).max() + 1e-12)
        assert error < 1e-6, f"scratch: d{name} differs from central differences: error {error:.3g} of its largest entry"


# ----------------------------------------------------------------------------------------------
# Behaviour
# ----------------------------------------------------------------------------------------------


def test_positional_encoding_is_the_papers_formula():
    pe = T.positional_encoding(50, 16)
    pos, i = 37, 5
    assert pe[pos, 2 * i] == pytest.approx(np.sin(pos / 10000 ** (2 * i / 16)))
    assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(pos / 10000 ** (2 * i / 16)))
    assert T.positional_encoding(3, 7).shape == (3, 7) and T.positional_encoding(4, 6, np.float32).dtype == np.float32


@given(offset=st.integers(1, 20))
def test_positional_encoding_shifts_by_a_rotation(offset):
    """§3.5's reason for sinusoids: PE(pos + k) = R_k PE(pos) with R_k independent of pos."""
    pe = T.positional_encoding(60, 8)
    # the least-squares map from rows pos to rows pos + k fits every pos exactly
    rotation, *_ = np.linalg.lstsq(pe[:-offset], pe[offset:], rcond=None)
    np.testing.assert_allclose(pe[:-offset] @ rotation, pe[offset:], atol=1e-9)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(8), atol=1e-9)  # orthogonal


@given(seed=seeds, shift=st.floats(-5, 5), scale=st.floats(0.1, 10))
def test_layer_norm_standardises_and_ignores_shift_and_scale(seed, shift, scale):
    x = np.random.default_rng(seed).standard_normal((3, 16))
    y, _ = T.layer_norm_forward(x, np.ones(16), np.zeros(16), eps=0.0)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-12)  # the biased variance is exactly 1
    np.testing.assert_allclose(T.layer_norm_forward(scale * x + shift, np.ones(16), np.zeros(16), eps=0.0)[0], y, atol=1e-9)


def test_cross_entropy_definition_and_padding():
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((4, 6)), np.array([1, 0, 5, 0])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    q = 0.9 * np.eye(6)[targets] + 0.1 / 6
    expected = -(q * log_p)[[0, 2]].sum(-1).mean()  # rows with target 0 ignored
    assert T.cross_entropy_forward(logits, targets, 0.1, 0)[0] == pytest.approx(expected, rel=1e-12)
    loss, cache = T.cross_entropy_forward(logits, np.zeros(4, int), 0.1, 0)
    assert loss == 0.0 and not np.any(T.cross_entropy_backward(1.0, cache))  # nothing counted: 0, not NaN
    assert T.cross_entropy_forward(logits.astype(np.float32), targets, 0.1, 0)[0].dtype == np.float32


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_decoder_is_causal(norm_first):
    config, params = tiny_model(norm_first)
    tgt_in = np.array([[1, 3, 4, 5, 2], [1, 5, 2, 4, 4]])
    changed = tgt_in.copy()
    changed[:, 3:] = [[4, 4], [2, 3]]
    before, after = M.transformer_forward(SRC, tgt_in, params, config)[0], M.transformer_forward(SRC, changed, params, config)[0]
    np.testing.assert_array_equal(after[:, :3], before[:, :3])  # positions 0–2 never read positions 3–4
    assert np.abs(after[:, 3:] - before[:, 3:]).max() > 1e-3  # and the later ones do change


def test_source_padding_changes_nothing():
    config, params = tiny_model()
    short = M.transformer_forward(SRC[:1, :4], TGT[:1, :-1], params, config)[0]
    padded = M.transformer_forward(np.array([[3, 4, 5, 2, 0, 0, 0]]), TGT[:1, :-1], params, config)[0]
    np.testing.assert_allclose(padded, short, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm_first,tie_output", [(False, False), (True, True)], ids=["post-norm", "pre-norm-tied"])
def test_cached_decoding_equals_full_recomputation(norm_first, tie_output):
    config, params = tiny_model(norm_first, tie_output, seed=3)
    memory, _ = M.encode_forward(SRC, params, config)
    full = M.decode_forward(TGT[:, :-1], memory, SRC, params, config)[0]
    np.testing.assert_allclose(Dec.incremental_logits(SRC, TGT[:, :-1], params, config), full, rtol=1e-12, atol=1e-12)
    cached, recomputed = Dec.greedy_decode(SRC, params, config), Dec.greedy_decode(SRC, params, config, use_cache=False)
    np.testing.assert_array_equal(cached, recomputed)


@settings(max_examples=10)
@given(seed=seeds)
def test_beam_search_of_width_one_is_greedy(seed):
    config, params = tiny_model(seed=seed % 1000)
    src = np.random.default_rng(seed).integers(3, 7, (3, 5))
    np.testing.assert_array_equal(Dec.beam_search(src, params, config, beam_width=1), Dec.greedy_decode(src, params, config))


def test_beam_search_finds_a_better_total_log_probability_than_greedy():
    """On random weights the wider beam never scores below greedy: it keeps greedy's path as a candidate."""
    config, params = tiny_model(seed=5)
    src = np.random.default_rng(1).integers(3, 7, (6, 5))

    def score(tgt):
        tgt_in = np.concatenate([np.full((len(tgt), 1), 1), tgt[:, :-1]], axis=1)
        logits = M.transformer_forward(src, tgt_in, params, config)[0]
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(log_p, tgt[..., None], -1)[..., 0]
        ended = np.cumsum(tgt == Dec.EOS_ID, axis=1) - (tgt == Dec.EOS_ID) > 0  # positions after EOS
        return np.where(ended, 0.0, picked).sum(1)

    greedy = Dec.greedy_decode(src, params, config, max_len=6)
    beam = Dec.beam_search(src, params, config, beam_width=4, max_len=6)
    assert np.all(score(beam) >= score(greedy) - 1e-9)


def test_bad_input_gets_clear_errors():
    config, params = tiny_model()
    long = np.full((1, 11), 3)
    assert_clear_error("scratch", "a source over max_len", lambda: M.transformer_forward(long, TGT[:1, :2], params, config),
                       ValueError, ["src", "11", "max_len = 10"])
    assert_clear_error("scratch", "an id outside the vocabulary",
                       lambda: M.transformer_forward(np.array([[9, 2]]), TGT[:1, :2], params, config),
                       ValueError, ["src", "[0, 7)"])
    assert_clear_error("scratch", "float token ids", lambda: M.transformer_forward(SRC * 1.0, TGT[:, :2], params, config),
                       ValueError, ["src", "integer", "(2, 5)"])
    assert_clear_error("scratch", "a wrong gamma", lambda: T.layer_norm_forward(np.ones((2, 4)), np.ones(3), np.zeros(4)),
                       ValueError, ["gamma", "(4,)", "(3,)"])
    assert_clear_error("scratch", "targets of the wrong shape",
                       lambda: T.cross_entropy_forward(np.ones((2, 3, 5)), np.ones((2, 4), int)), ValueError,
                       ["targets", "(2, 3)", "(2, 4)"])
    layer = layer_params(np.random.default_rng(0), T.ENCODER_LAYER_NAMES, 4, 6)
    del layer["ln2.beta"]
    assert_clear_error("scratch", "a missing parameter", lambda: T.encoder_layer_forward(np.ones((1, 2, 4)), layer, 2),
                       ValueError, ["ln2.beta"])
