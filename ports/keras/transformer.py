"""The Transformer in Keras 3: scratch/transformer.py and scratch/encoder_decoder.py with keras.ops,
then the translator of the seed's §5.3 built from Keras's own layers and trained by `fit`.

Read the first half beside the two scratch files: the names, the arguments and the NumPy-in/
NumPy-out interface are the same. The forward is written with backend-neutral `keras.ops`; the
backward asks the TensorFlow backend's GradientTape for the vector-Jacobian product. Inputs are
checked by scratch's own helpers, so a bad input raises the same error here as there.

Dropout: the functional forwards take `dropout` and `rng` as scratch does and draw the very same
masks from `rng` (scratch/layers.py's `dropout_forward`), so with one seed both implementations
drop the same entries; p = 0 or rng = None is the identity (evaluation), as in scratch.

The second half is the model the Keras way: a `PositionalEmbedding` layer, `TransformerEncoder`
and `TransformerDecoder` layers made of `keras.layers.MultiHeadAttention`, `LayerNormalization`
and `Dense`, the `Translator` model whose `train_step` minimises the label-smoothed cross-entropy
over the non-padding targets, the paper's warm-up schedule as a Keras `LearningRateSchedule`,
`translate` (greedy decoding), and `to_keras_translator` / `from_keras_translator`.

Shape letters as in scratch: B batch, S source positions, T target positions, V vocabulary,
D model width, F feed-forward width, H heads, Dh = D / H.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ports.keras.attention import Cache, _attention, _gradients, _watched, merge_heads, split_heads
from scratch.encoder_decoder import check_transformer_params
from scratch.validate import (check_cross_entropy_inputs, check_feed_forward_inputs, check_layer_norm_inputs,
                              check_positional_encoding_args)
from scratch.attention import causal_mask
from scratch.decoding import BOS_ID, EOS_ID
from scratch.encoder_decoder import TransformerConfig, check_tokens, init_transformer, parameter_shapes, source_mask
from scratch.layers import dropout_forward
from scratch.translation import scaled_schedule
from scratch.transformer import (DECODER_LAYER_NAMES, ENCODER_LAYER_NAMES, FF_PARAM_NAMES,
                                 check_decoder_layer_inputs, check_encoder_layer_inputs, prefixed)
from scratch.validate import check_multi_head_attention_inputs

__all__ = [
    "positional_encoding", "layer_norm_forward", "layer_norm_backward", "feed_forward_forward", "feed_forward_backward",
    "encoder_layer_forward", "encoder_layer_backward", "decoder_layer_forward", "decoder_layer_backward",
    "cross_entropy_forward", "cross_entropy_backward", "TransformerConfig", "parameter_shapes", "init_transformer",
    "transformer_forward", "transformer_backward", "ENCODER_LAYER_NAMES", "DECODER_LAYER_NAMES",
    "masked_cross_entropy", "PositionalEmbedding", "TransformerEncoder", "TransformerDecoder", "Translator",
    "TransformerSchedule", "translate", "to_keras_translator", "from_keras_translator",
]


# ----------------------------------------------------------------------------------------------
# The building blocks on tensors: shared by the functions below and by the Keras layers
# ----------------------------------------------------------------------------------------------


def _positional_encoding(t, d_model, dtype):
    # §3.5, Vaswani et al. 2017: column pair (2i, 2i+1) is a sinusoid of wavelength 2π·10000^(2i/d)
    pos = ops.cast(ops.arange(t), "float64")[:, None]  # (t, 1)
    two_i = ops.cast(ops.arange(0, d_model, 2), "float64")  # (⌈d/2⌉,), the even column indices 2i
    angle = pos / ops.power(10000.0, two_i / d_model)  # (t, ⌈d/2⌉)
    # interleave: sin into the even columns, cos into the odd ones (an odd d drops its last cos)
    pe = ops.reshape(ops.stack([ops.sin(angle), ops.cos(angle)], axis=-1), (t, -1))[:, :d_model]  # (t, D)
    return ops.cast(pe, dtype)


def _layer_norm(x, gamma, beta, eps=1e-5):
    # Ba et al. 2016: LayerNorm(x) = γ ⊙ (x − μ) / √(σ² + ε) + β, statistics over the last axis
    mu = ops.mean(x, axis=-1, keepdims=True)  # (..., 1)
    centred = x - mu  # (..., D)
    var = ops.mean(centred * centred, axis=-1, keepdims=True)  # (..., 1), biased: divides by D
    return gamma * (centred * (1.0 / ops.sqrt(var + eps))) + beta  # (..., D)


def _feed_forward(x, p):
    # Eq. (2): FFN(x) = max(0, x W1 + b1) W2 + b2
    return ops.matmul(ops.relu(ops.matmul(x, p["W1"]) + p["b1"]), p["W2"]) + p["b2"]  # (..., D)


def _multi_head(x_q, x_kv, p, num_heads, mask):
    """MultiHead(x_q, x_kv) as ports/keras/attention.py computes it; mask a bool tensor (B, Tq, Tk) or None."""
    q = split_heads(ops.matmul(x_q, p["W_q"]) + p["b_q"], num_heads)  # (B, H, Tq, Dh)
    k = split_heads(ops.matmul(x_kv, p["W_k"]) + p["b_k"], num_heads)  # (B, H, Tk, Dh)
    v = split_heads(ops.matmul(x_kv, p["W_v"]) + p["b_v"], num_heads)  # (B, H, Tk, Dh)
    heads = merge_heads(_attention(q, k, v, None if mask is None else mask[..., None, :, :]))  # (B, Tq, D)
    return ops.matmul(heads, p["W_o"]) + p["b_o"]  # (B, Tq, D)


def _dropout(x, p, rng):
    """Inverted dropout with the mask scratch draws from `rng` (the same entries dropped, scaled alike)."""
    _, keep = dropout_forward(np.ones(tuple(x.shape), keras.backend.standardize_dtype(x.dtype)), p, rng)
    return x if keep is None else x * ops.convert_to_tensor(keep)


def _sublayer(x, f, gamma, beta, norm_first, dropout, rng):
    """Post-norm LN(x + Dropout(f(x))) or pre-norm x + Dropout(f(LN(x)))."""
    if norm_first:
        return x + _dropout(f(_layer_norm(x, gamma, beta)), dropout, rng)  # (B, T, D)
    return _layer_norm(x + _dropout(f(x), dropout, rng), gamma, beta)  # (B, T, D)


def _encoder_layer(x, p, num_heads, mask, norm_first, dropout, rng):
    attn, ff = prefixed(p, "attn."), prefixed(p, "ff.")
    h = _sublayer(x, lambda a: _multi_head(a, a, attn, num_heads, mask), p["ln1.gamma"], p["ln1.beta"],
                  norm_first, dropout, rng)  # (B, S, D)
    return _sublayer(h, lambda a: _feed_forward(a, ff), p["ln2.gamma"], p["ln2.beta"], norm_first, dropout, rng)


def _decoder_layer(y, memory, p, num_heads, self_mask, memory_mask, norm_first, dropout, rng):
    self_attn, cross_attn, ff = prefixed(p, "self_attn."), prefixed(p, "cross_attn."), prefixed(p, "ff.")
    h1 = _sublayer(y, lambda a: _multi_head(a, a, self_attn, num_heads, self_mask), p["ln1.gamma"], p["ln1.beta"],
                   norm_first, dropout, rng)  # (B, T, D)
    # queries from the decoder, keys and values from the encoder
    h2 = _sublayer(h1, lambda a: _multi_head(a, memory, cross_attn, num_heads, memory_mask), p["ln2.gamma"],
                   p["ln2.beta"], norm_first, dropout, rng)  # (B, T, D)
    return _sublayer(h2, lambda a: _feed_forward(a, ff), p["ln3.gamma"], p["ln3.beta"], norm_first, dropout, rng)


def _cross_entropy(logits, targets, label_smoothing, ignore_index):
    """Label-smoothed cross-entropy, mean over the counted targets: logits (..., V), targets (...) ints."""
    eps = float(label_smoothing)
    counted = ops.ones_like(targets, "bool") if ignore_index is None else ops.not_equal(targets, ignore_index)  # (...)
    t = ops.where(counted, targets, ops.zeros_like(targets))  # (...), ignored positions point at any valid class
    log_probs = ops.log_softmax(logits, axis=-1)  # (..., V)
    # −Σ_v q_v log p_v = (1 − ε)(−log p_t) + ε · mean_v(−log p_v),  q = (1 − ε)·one-hot + ε/V
    log_p_target = ops.take_along_axis(log_probs, ops.expand_dims(t, -1), axis=-1)[..., 0]  # (...)
    per_position = -(1.0 - eps) * log_p_target - eps * ops.mean(log_probs, axis=-1)  # (...)
    weight = ops.cast(counted, logits.dtype)  # (...), 1 where counted
    # a mean over the counted positions; with none counted 0, not 0/0
    return ops.sum(per_position * weight) / ops.maximum(ops.sum(weight), 1.0)


def _named(dout, cache):
    """Gradients of a (Cache, names) pair: the leading inputs' gradients, then a dict keyed by names."""
    cache, names = cache
    grads = _gradients(dout, cache)
    lead = len(grads) - len(names)
    return grads[:lead], dict(zip(names, grads[lead:]))


def _watched_params(tape, params, names):
    return {name: _watched(tape, np.asarray(params[name])) for name in names}


# ----------------------------------------------------------------------------------------------
# Positional encoding, layer normalisation and the feed-forward block
# ----------------------------------------------------------------------------------------------


def positional_encoding(t, d_model, dtype=np.float64):
    """(t, d_model) sinusoids: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)."""
    check_positional_encoding_args(t, d_model)
    return ops.convert_to_numpy(_positional_encoding(int(t), int(d_model), "float64")).astype(dtype)


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """LayerNorm(x) = γ ⊙ (x − μ) / √(σ² + ε) + β over the last axis (biased σ², as PyTorch)."""
    x, gamma, beta = check_layer_norm_inputs(x, gamma, beta)
    with tf.GradientTape() as tape:
        inputs = tuple(_watched(tape, a) for a in (x, gamma, beta))
        y = _layer_norm(*inputs, eps)
    return ops.convert_to_numpy(y), Cache(tape, inputs, y)


def layer_norm_backward(dout, cache):
    """Return (dx, dgamma, dbeta)."""
    dx, dgamma, dbeta = _gradients(dout, cache)
    return dx, dgamma, dbeta


def feed_forward_forward(x, params):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, Eq. (2): the same two linear maps at every position."""
    x = check_feed_forward_inputs(x, params)
    with tf.GradientTape() as tape:
        xt, p = _watched(tape, x), _watched_params(tape, params, FF_PARAM_NAMES)
        y = _feed_forward(xt, p)  # (..., D)
    return ops.convert_to_numpy(y), (Cache(tape, (xt, *p.values()), y), FF_PARAM_NAMES)


def feed_forward_backward(dout, cache):
    """Return (dx, grads) with grads keyed W1 b1 W2 b2."""
    (dx,), grads = _named(dout, cache)
    return dx, grads


# ----------------------------------------------------------------------------------------------
# The encoder and decoder layers
# ----------------------------------------------------------------------------------------------


def _bool_mask(mask):
    return None if mask is None else ops.convert_to_tensor(np.asarray(mask))


def encoder_layer_forward(x, params, num_heads, mask=None, norm_first=False, dropout=0.0, rng=None):
    """One encoder layer, §3.1: self-attention, then the feed-forward block, each residual and normalised.

    x (B, S, D); `mask` broadcastable to (B, S, S), True where a position may attend (padding: False).
    """
    x = check_encoder_layer_inputs(x, params)
    _, _, _, mask = check_multi_head_attention_inputs(x, x, prefixed(params, "attn."), num_heads, mask)
    with tf.GradientTape() as tape:
        xt, p = _watched(tape, x), _watched_params(tape, params, ENCODER_LAYER_NAMES)
        y = _encoder_layer(xt, p, num_heads, _bool_mask(mask), norm_first, dropout, rng)  # (B, S, D)
    return ops.convert_to_numpy(y), (Cache(tape, (xt, *p.values()), y), ENCODER_LAYER_NAMES)


def encoder_layer_backward(dout, cache):
    """Return (dx, grads) with grads keyed like the layer's params."""
    (dx,), grads = _named(dout, cache)
    return dx, grads


def decoder_layer_forward(y, memory, params, num_heads, self_mask=None, memory_mask=None, norm_first=False,
                          dropout=0.0, rng=None):
    """One decoder layer, §3.1: masked self-attention, attention over the encoder's output, feed-forward.

    y (B, T, D) the target so far, memory (B, S, D) the encoder's output; `self_mask` broadcastable
    to (B, T, T) (causal: position i sees j ≤ i), `memory_mask` to (B, T, S) (source padding).
    """
    y, memory = check_decoder_layer_inputs(y, memory, params)
    _, _, _, self_mask = check_multi_head_attention_inputs(y, y, prefixed(params, "self_attn."), num_heads, self_mask)
    _, _, _, memory_mask = check_multi_head_attention_inputs(y, memory, prefixed(params, "cross_attn."), num_heads,
                                                             memory_mask)
    with tf.GradientTape() as tape:
        yt, mt, p = _watched(tape, y), _watched(tape, memory), _watched_params(tape, params, DECODER_LAYER_NAMES)
        out = _decoder_layer(yt, mt, p, num_heads, _bool_mask(self_mask), _bool_mask(memory_mask), norm_first,
                             dropout, rng)  # (B, T, D)
    return ops.convert_to_numpy(out), (Cache(tape, (yt, mt, *p.values()), out), DECODER_LAYER_NAMES)


def decoder_layer_backward(dout, cache):
    """Return (dy, dmemory, grads) with grads keyed like the layer's params."""
    (dy, dmemory), grads = _named(dout, cache)
    return dy, dmemory, grads


# ----------------------------------------------------------------------------------------------
# Label-smoothed cross-entropy
# ----------------------------------------------------------------------------------------------


def cross_entropy_forward(logits, targets, label_smoothing=0.0, ignore_index=None):
    """Mean over the counted targets of −Σ_v q_v log p_v, q = (1 − ε)·one-hot(target) + ε/V.

    logits (..., V), targets integers (...); a target equal to `ignore_index` counts for nothing;
    with nothing counted the loss is 0 and so is its gradient.
    """
    logits, targets, _ = check_cross_entropy_inputs(logits, targets, label_smoothing, ignore_index)
    with tf.GradientTape() as tape:
        z = _watched(tape, logits)
        loss = _cross_entropy(z, ops.convert_to_tensor(targets.astype(np.int64)), label_smoothing, ignore_index)
    return ops.convert_to_numpy(loss)[()], Cache(tape, (z,), loss)


def cross_entropy_backward(dout, cache):
    """Return dlogits (..., V)."""
    (dlogits,) = _gradients(dout, cache)
    return dlogits


# ----------------------------------------------------------------------------------------------
# The encoder-decoder model as a function of a scratch parameter dict
# ----------------------------------------------------------------------------------------------


def _embed(ids, table, dropout, rng):
    # §3.4, §3.5: x = E[ids] · √D + PE, then dropout
    d = table.shape[1]
    pe = _positional_encoding(ids.shape[1], d, table.dtype)  # (T, D)
    return _dropout(ops.take(table, ids, axis=0) * math.sqrt(d) + pe, dropout, rng)  # (B, T, D)


def _encode(src, p, config, rng):
    dropout = config.dropout if rng is not None else 0.0
    mask = ops.convert_to_tensor(source_mask(src, config.pad_id))  # (B, 1, S)
    x = _embed(ops.convert_to_tensor(src.astype(np.int64)), p["src_embed"], dropout, rng)  # (B, S, D)
    for i in range(config.num_layers):
        x = _encoder_layer(x, prefixed(p, f"enc.{i}."), config.num_heads, mask, config.norm_first, dropout, rng)
    if config.norm_first:  # pre-norm leaves the stack's output unnormalised: one more LN
        x = _layer_norm(x, p["enc.ln.gamma"], p["enc.ln.beta"])
    return x  # (B, S, D)


def _decode(tgt_in, memory, src, p, config, rng):
    dropout = config.dropout if rng is not None else 0.0
    self_mask = ops.convert_to_tensor(causal_mask(tgt_in.shape[1]))  # (T, T)
    memory_mask = ops.convert_to_tensor(source_mask(src, config.pad_id))  # (B, 1, S)
    y = _embed(ops.convert_to_tensor(tgt_in.astype(np.int64)), p["tgt_embed"], dropout, rng)  # (B, T, D)
    for i in range(config.num_layers):
        y = _decoder_layer(y, memory, prefixed(p, f"dec.{i}."), config.num_heads, self_mask, memory_mask,
                           config.norm_first, dropout, rng)  # (B, T, D)
    if config.norm_first:
        y = _layer_norm(y, p["dec.ln.gamma"], p["dec.ln.beta"])
    w_out = ops.transpose(p["tgt_embed"]) if config.tie_output else p["out.W"]  # (D, V), §3.4 weight tying
    return ops.matmul(y, w_out) + p["out.b"]  # (B, T, V)


def transformer_forward(src, tgt_in, params, config, rng=None):
    """logits (B, T, V_tgt) for source ids (B, S) and target ids (B, T) shifted right (BOS first).

    `rng`, a np.random.Generator, turns dropout on (scratch's masks); None turns it off.
    """
    src = check_tokens("src", src, config, config.src_vocab)
    tgt_in = check_tokens("tgt_in", tgt_in, config, config.tgt_vocab)
    if src.shape[0] != tgt_in.shape[0]:
        raise ValueError(f"src {src.shape} and tgt_in {tgt_in.shape} must share the batch axis B")
    check_transformer_params(params, config)
    names = tuple(params)
    with tf.GradientTape() as tape:
        p = _watched_params(tape, params, names)
        memory = _encode(src, p, config, rng)  # (B, S, D)
        logits = _decode(tgt_in, memory, src, p, config, rng)  # (B, T, V)
    return ops.convert_to_numpy(logits), (Cache(tape, tuple(p.values()), logits), names)


def transformer_backward(dlogits, cache):
    """grads keyed like params, from dlogits (B, T, V_tgt)."""
    # an embedding's gradient arrives as tf.IndexedSlices (the rows looked up); _gradients densifies it
    _, grads = _named(dlogits, cache)
    return grads


# ----------------------------------------------------------------------------------------------
# The translator the Keras way (the seed's §5.3): Keras layers, a train_step, fit
# ----------------------------------------------------------------------------------------------
# Masks. `PositionalEmbedding.compute_mask` attaches the padding mask (B, T) to the embedded
# tensor, Keras-style, and Keras hands it to each layer's `mask` argument. But
# `keras.layers.MultiHeadAttention` also reads the mask attached to its *query* and blocks every
# key for a padded query position; Keras answers a row with no key by the mean of V (it blocks a
# score by replacing it with −0.7 × the largest float, so a fully blocked row is uniform), where
# scratch masks only keys (the source padding) and the causal future, and computes the padded
# positions like any other. So each layer below drops the mask attached to its inputs and passes
# MultiHeadAttention the key mask itself: every row then has a key, a blocked score is −2.4e38,
# whose exponential is exactly 0 in float32 and float64 alike, and the weights are scratch's.
# Only a source made entirely of padding leaves its cross-attention rows with no key: scratch
# gives 0 there, Keras the mean of V (checks/test_transformer_keras.py shows the difference).


def masked_cross_entropy(targets, logits, label_smoothing=0.0, pad_id=0):
    """The Translator's loss on tensors, Keras's (y_true, y_pred) order: scratch's cross_entropy with
    ignore_index=pad_id. (keras.losses.SparseCategoricalCrossentropy has no label smoothing.)"""
    return _cross_entropy(logits, targets, label_smoothing, pad_id)


def _without_keras_mask(x):
    """The same values as a new tensor, with no Keras mask attached (see the note above)."""
    return ops.copy(x)


def _residual(x, sublayer, norm, dropout, norm_first, training):
    """Post-norm LN(x + Dropout(f(x))) or pre-norm x + Dropout(f(LN(x))), with Keras layers."""
    if norm_first:
        return x + dropout(sublayer(norm(x)), training=training)  # (B, T, D)
    return norm(x + dropout(sublayer(x), training=training))  # (B, T, D)


class PositionalEmbedding(keras.layers.Layer):
    """x = E[ids] · √D + PE (§3.4, §3.5): token ids (B, T) → (B, T, D), and the padding mask (B, T).

    The table starts N(0, 1/D), as scratch's init_transformer, so that E · √D has unit variance.
    The sinusoids are computed for the length at hand, so no max_len is built in.
    """

    def __init__(self, vocab_size, d_model, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.d_model, self.pad_id = d_model, pad_id
        initializer = keras.initializers.RandomNormal(stddev=d_model**-0.5)
        self.embedding = keras.layers.Embedding(vocab_size, d_model, embeddings_initializer=initializer,
                                                dtype=self.dtype_policy, name="embedding")

    def build(self, input_shape=None):
        self.embedding.build((None, None))

    def call(self, ids):
        pe = _positional_encoding(ops.shape(ids)[1], self.d_model, self.compute_dtype)  # (T, D)
        return self.embedding(ids) * math.sqrt(self.d_model) + pe  # (B, T, D)

    def compute_mask(self, ids, mask=None):
        return ops.not_equal(ids, self.pad_id)  # (B, T), True at real tokens


class TransformerEncoder(keras.layers.Layer):
    """One encoder layer (§3.1) of Keras layers: MultiHeadAttention, then Dense(F, relu) → Dense(D), each
    a residual sub-layer with LayerNormalization(epsilon=1e-5); post-norm, or pre-norm with norm_first.

    call(x (B, S, D), mask (B, S) True at real tokens) → (B, S, D), carrying the mask on.
    """

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0, norm_first=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.d_model, self.d_ff, self.norm_first = d_model, d_ff, norm_first
        dtype = self.dtype_policy
        self.attention = keras.layers.MultiHeadAttention(num_heads, d_model // num_heads, dtype=dtype, name="attention")
        self.norms = [keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name=f"ln{i}") for i in (1, 2)]
        self.ff1 = keras.layers.Dense(d_ff, activation="relu", dtype=dtype, name="ff1")
        self.ff2 = keras.layers.Dense(d_model, dtype=dtype, name="ff2")
        self.dropout = keras.layers.Dropout(dropout, seed=seed, dtype=dtype)  # §5.4: on every sub-layer's output

    def build(self, input_shape):
        shape = (None, None, self.d_model)
        self.attention.build(shape, shape)
        for layer in (*self.norms, self.ff1):
            layer.build(shape)
        self.ff2.build((None, None, self.d_ff))

    def call(self, x, mask=None, training=None):
        x = _without_keras_mask(x)
        keys = None if mask is None else ops.expand_dims(mask, 1)  # (B, 1, S): every query sees the real keys
        attend = lambda a: self.attention(a, a, attention_mask=keys, training=training)  # noqa: E731
        h = _residual(x, attend, self.norms[0], self.dropout, self.norm_first, training)  # (B, S, D)
        ff = lambda a: self.ff2(self.ff1(a))  # noqa: E731
        return _residual(h, ff, self.norms[1], self.dropout, self.norm_first, training)  # (B, S, D)


class TransformerDecoder(keras.layers.Layer):
    """One decoder layer (§3.1): causal self-attention, attention over the encoder's output, feed-forward.

    call(y (B, T, D), memory (B, S, D), memory_mask (B, S) True at real source tokens) → (B, T, D).
    The target's own padding is not masked (scratch does not either): the causal mask already keeps
    every real position from seeing the padding after it.
    """

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0, norm_first=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.d_model, self.d_ff, self.norm_first = d_model, d_ff, norm_first
        dtype = self.dtype_policy
        self.self_attention, self.cross_attention = (
            keras.layers.MultiHeadAttention(num_heads, d_model // num_heads, dtype=dtype, name=name)
            for name in ("self_attention", "cross_attention"))
        self.norms = [keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name=f"ln{i}") for i in (1, 2, 3)]
        self.ff1 = keras.layers.Dense(d_ff, activation="relu", dtype=dtype, name="ff1")
        self.ff2 = keras.layers.Dense(d_model, dtype=dtype, name="ff2")
        self.dropout = keras.layers.Dropout(dropout, seed=seed, dtype=dtype)

    def build(self, y_shape, memory_shape=None):
        shape = (None, None, self.d_model)
        self.self_attention.build(shape, shape)
        self.cross_attention.build(shape, shape)
        for layer in (*self.norms, self.ff1):
            layer.build(shape)
        self.ff2.build((None, None, self.d_ff))

    def call(self, y, memory, memory_mask=None, training=None):
        y, memory = _without_keras_mask(y), _without_keras_mask(memory)
        keys = None if memory_mask is None else ops.expand_dims(memory_mask, 1)  # (B, 1, S)
        # position i attends to j ≤ i: Keras builds the (T, T) lower-triangular mask itself
        attend_past = lambda a: self.self_attention(a, a, use_causal_mask=True, training=training)  # noqa: E731
        # queries from the decoder, keys and values from the encoder
        attend_source = lambda a: self.cross_attention(a, memory, attention_mask=keys, training=training)  # noqa: E731
        ff = lambda a: self.ff2(self.ff1(a))  # noqa: E731
        h = _residual(y, attend_past, self.norms[0], self.dropout, self.norm_first, training)  # (B, T, D)
        h = _residual(h, attend_source, self.norms[1], self.dropout, self.norm_first, training)  # (B, T, D)
        return _residual(h, ff, self.norms[2], self.dropout, self.norm_first, training)  # (B, T, D)


class Translator(keras.Model):
    """The encoder-decoder of scratch/encoder_decoder.py from the layers above: `model((src, tgt_in))`
    maps source ids (B, S) and target ids shifted right (B, T) to logits (B, T, V_tgt).

    `compile(optimizer, label_smoothing=ε)`, then `fit(x=(src, tgt_in), y=tgt_out)` on padded id
    arrays: `train_step` minimises scratch's cross-entropy with smoothing ε and ignore_index =
    config.pad_id, and reports `loss` and `accuracy` (the share of non-padding targets predicted).
    Pre-norm ends each stack with one more LayerNormalization; with `config.tie_output` the output
    projection is the target embedding transposed, plus a bias of its own. `config.dropout` acts where
    scratch's does (after the embeddings and on every sub-layer's output), through Keras Dropout layers
    seeded from `seed`: Keras's own masks, not NumPy's. Weights move in and out through
    to_keras_translator / from_keras_translator (checkpoints are scratch's .npz, not model.save).
    """

    def __init__(self, config, dtype="float32", seed=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.config = config
        seed_of = lambda i: None if seed is None else seed + i  # noqa: E731, each Dropout draws its own masks
        layer = dict(d_model=config.d_model, num_heads=config.num_heads, d_ff=config.d_ff, dropout=config.dropout,
                     norm_first=config.norm_first, dtype=dtype)
        d, pad = config.d_model, config.pad_id
        self.src_embed = PositionalEmbedding(config.src_vocab, d, pad, dtype=dtype, name="src_embed")
        self.tgt_embed = PositionalEmbedding(config.tgt_vocab, d, pad, dtype=dtype, name="tgt_embed")
        self.embed_dropout = keras.layers.Dropout(config.dropout, seed=seed_of(0), dtype=dtype)
        n = config.num_layers
        self.encoder_layers = [TransformerEncoder(**layer, seed=seed_of(1 + i), name=f"encoder_{i}")
                               for i in range(n)]
        self.decoder_layers = [TransformerDecoder(**layer, seed=seed_of(1 + n + i), name=f"decoder_{i}")
                               for i in range(n)]
        norm = lambda name: keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name=name)  # noqa: E731
        self.enc_norm, self.dec_norm = (norm("enc_norm"), norm("dec_norm")) if config.norm_first else (None, None)
        self.out = None if config.tie_output else keras.layers.Dense(config.tgt_vocab, dtype=dtype, name="out")
        self.label_smoothing = 0.0
        self._compiled_step = None  # translate's decoder step, traced on first use
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.build()

    def build(self, input_shape=None):
        ids, shape = (None, None), (None, None, self.config.d_model)  # (B, T) and (B, T, D)
        self.src_embed.build(ids)
        self.tgt_embed.build(ids)
        for layer in (*self.encoder_layers, self.enc_norm, self.dec_norm, self.out):
            if layer is not None:
                layer.build(shape)
        for layer in self.decoder_layers:
            layer.build(shape, shape)
        if self.out is None:  # tied: logits = y Eᵀ + b, and b is the only output weight of its own
            self.out_bias = self.add_weight(shape=(self.config.tgt_vocab,), initializer="zeros", name="out_bias")
        self.built = True

    def encode(self, src, training=None):
        """memory (B, S, D) from source ids (B, S)."""
        mask = self.src_embed.compute_mask(src)  # (B, S)
        x = self.embed_dropout(self.src_embed(src), training=training)  # (B, S, D)
        for layer in self.encoder_layers:
            x = layer(x, mask=mask, training=training)  # (B, S, D)
        return x if self.enc_norm is None else self.enc_norm(x)

    def decode(self, tgt_in, memory, src_mask, training=None):
        """logits (B, T, V) from target ids (B, T), memory (B, S, D) and the source's mask (B, S)."""
        y = self.embed_dropout(self.tgt_embed(tgt_in), training=training)  # (B, T, D)
        for layer in self.decoder_layers:
            y = layer(y, memory, memory_mask=src_mask, training=training)  # (B, T, D)
        if self.dec_norm is not None:
            y = self.dec_norm(y)
        if self.out is None:  # §3.4: the output projection shares the target embedding's weights
            return ops.matmul(y, ops.transpose(self.tgt_embed.embedding.embeddings)) + self.out_bias  # (B, T, V)
        return self.out(y)  # (B, T, V)

    def next_token_logits(self, tgt, memory, src_mask, compiled=True):
        """logits (B, V) for the position after the prefix tgt (B, t): one step of greedy decoding.

        compiled: run it as one tf.function whose signature leaves B, t and S open (traced once,
        then several times faster than the layers called eagerly one by one).
        """
        if not compiled:
            return self.decode(tgt, memory, src_mask)[:, -1]
        if self._compiled_step is None:
            ids, dtype = tf.TensorSpec((None, None), tf.int64), tf.as_dtype(self.compute_dtype)
            states, mask = tf.TensorSpec((None, None, self.config.d_model), dtype), tf.TensorSpec((None, None), tf.bool)
            signature = [ids, states, mask]  # tgt (B, t), memory (B, S, D), src_mask (B, S)
            self._compiled_step = tf.function(lambda *args: self.decode(*args)[:, -1], input_signature=signature,
                                              autograph=False)
        return self._compiled_step(tf.constant(tgt, tf.int64), memory, src_mask)

    def call(self, inputs, training=None):
        src, tgt_in = inputs
        return self.decode(tgt_in, self.encode(src, training), self.src_embed.compute_mask(src), training)

    def compile(self, optimizer="adam", label_smoothing=0.0, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.label_smoothing = float(label_smoothing)
        # the optimizer's slots made now, not inside fit's first trace (which would then trace twice)
        self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def _loss(self, data, training):
        (src, tgt_in), tgt_out = data[0], data[1]
        logits = self((src, tgt_in), training=training)  # (B, T, V)
        loss = masked_cross_entropy(tgt_out, logits, self.label_smoothing, self.config.pad_id)
        return loss, logits, tgt_out

    def _report(self, loss, logits, tgt_out):
        counted = ops.cast(ops.not_equal(tgt_out, self.config.pad_id), "float32")  # (B, T)
        correct = ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.cast(tgt_out, "int64")), "float32")  # (B, T)
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(correct, sample_weight=counted)  # a mean over the real target tokens
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, logits, tgt_out = self._loss(data, training=True)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        return self._report(loss, logits, tgt_out)

    def test_step(self, data):
        return self._report(*self._loss(data, training=False))


class TransformerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Eq. (3), Vaswani et al. 2017, for a Keras optimizer: scratch/optim.py's transformer_schedule.

    lrate = d_model^−0.5 · min(step^−0.5, step · warmup^−1.5), steps counted from 1. A Keras optimizer
    calls its schedule with the number of updates made so far, 0 before the first, so step is that
    count + 1 and the first update takes rate(1), as in scratch. (A schedule that took the count
    itself as the step would give the first update rate 0.) Computed in float32, as Keras keeps rates.
    `factor` scales the whole curve (scratch/translation.py's lr_factor).
    """

    def __init__(self, d_model, warmup, factor=1.0, cooldown=0, total=None):
        scaled_schedule(d_model, warmup, factor, cooldown, total)  # scratch's checks of every argument
        self.d_model, self.warmup, self.factor = int(d_model), int(warmup), float(factor)
        self.cooldown, self.total = int(cooldown), total

    def __call__(self, iterations):
        step = ops.cast(iterations, "float32") + 1.0  # the paper's step_num
        rate = self.factor * self.d_model**-0.5 * ops.minimum(ops.rsqrt(step), step * self.warmup**-1.5)
        if self.cooldown:  # scratch/translation.py's cooldown_factor: down to 0 over the last `cooldown` steps
            rate = rate * ops.clip((self.total + 1.0 - step) / self.cooldown, 0.0, 1.0)
        return rate

    def get_config(self):
        return {"d_model": self.d_model, "warmup": self.warmup, "factor": self.factor, "cooldown": self.cooldown,
                "total": self.total}


def translate(model, src, max_len=None, compiled=True):
    """Greedy decoding with a Translator: (B, S) source ids → (B, L) target ids, L ≤ max_len.

    scratch/decoding.py's greedy_decode: every row starts at BOS and takes the argmax token at each
    step; a row stops at its EOS (kept) and is padded after it; decoding ends when every row has
    stopped. The encoder runs once; each step re-runs the decoder on the whole prefix (Keras's
    MultiHeadAttention keeps no key/value cache), as greedy_decode(use_cache=False) does, in one
    traced tf.function unless compiled=False (`Translator.next_token_logits`).
    """
    config = model.config
    src = check_tokens("src", src, config, config.src_vocab)
    max_len = config.max_len if max_len is None else max_len
    memory, src_mask = model.encode(src), model.src_embed.compute_mask(src)  # (B, S, D), (B, S)
    tgt = np.full((src.shape[0], 1), BOS_ID)  # (B, 1)
    done = np.zeros(src.shape[0], bool)
    for _ in range(max_len):
        logits = ops.convert_to_numpy(model.next_token_logits(tgt, memory, src_mask, compiled))  # (B, V)
        nxt = np.where(done, config.pad_id, logits.argmax(axis=-1))  # (B,)
        tgt = np.concatenate([tgt, nxt[:, None]], axis=1)
        done |= nxt == EOS_ID
        if done.all():
            break
    return tgt[:, 1:]


# ----------------------------------------------------------------------------------------------
# Where each scratch parameter lives in the Translator
# ----------------------------------------------------------------------------------------------
# MultiHeadAttention keeps the heads as an axis of their own (ports/keras/attention.py): W_q, W_k,
# W_v (D, D) are kernels (D, H, Dh), their biases (H, Dh), W_o is (H, Dh, D). Each is a reshape of
# scratch's matrix (head h owns columns h·Dh … (h+1)·Dh − 1), so converting only reshapes. A Dense
# kernel is (in, out), as in scratch; LayerNormalization's gamma and beta are γ and β.


def _keras_weights(model):
    """{scratch name: Keras variable} for every parameter of parameter_shapes(model.config)."""
    weights = {"src_embed": model.src_embed.embedding.embeddings, "tgt_embed": model.tgt_embed.embedding.embeddings}
    stacks = (("enc", model.encoder_layers, (("attn.", "attention"),), model.enc_norm),
              ("dec", model.decoder_layers, (("self_attn.", "self_attention"), ("cross_attn.", "cross_attention")),
               model.dec_norm))
    for stack, layers, attentions, final_norm in stacks:
        for i, layer in enumerate(layers):
            prefix = f"{stack}.{i}."
            for scratch_prefix, attribute in attentions:
                mha = getattr(layer, attribute)
                for which, dense in zip("qkvo", (mha.query_dense, mha.key_dense, mha.value_dense, mha.output_dense)):
                    weights[f"{prefix}{scratch_prefix}W_{which}"] = dense.kernel
                    weights[f"{prefix}{scratch_prefix}b_{which}"] = dense.bias
            for j, norm in enumerate(layer.norms, start=1):
                weights[f"{prefix}ln{j}.gamma"], weights[f"{prefix}ln{j}.beta"] = norm.gamma, norm.beta
            for j, dense in ((1, layer.ff1), (2, layer.ff2)):
                weights[f"{prefix}ff.W{j}"], weights[f"{prefix}ff.b{j}"] = dense.kernel, dense.bias
        if final_norm is not None:
            weights[f"{stack}.ln.gamma"], weights[f"{stack}.ln.beta"] = final_norm.gamma, final_norm.beta
    if model.out is None:
        weights["out.b"] = model.out_bias
    else:
        weights["out.W"], weights["out.b"] = model.out.kernel, model.out.bias
    return weights


def to_keras_translator(params, config, seed=None):
    """A `Translator` holding copies of a scratch parameter dict (its dtype is theirs)."""
    check_transformer_params(params, config)
    unexpected = sorted(set(params) - set(parameter_shapes(config)))
    if unexpected:
        raise ValueError(f"params has names {unexpected} that parameter_shapes(config) does not")
    model = Translator(config, dtype=np.asarray(params["out.b"]).dtype.name, seed=seed)
    for name, variable in _keras_weights(model).items():
        variable.assign(np.reshape(params[name], variable.shape))
    return model


def from_keras_translator(model):
    """The scratch parameter dict of a `Translator`, in parameter_shapes order (the inverse of the above)."""
    weights = _keras_weights(model)
    shapes = parameter_shapes(model.config)
    return {name: np.array(weights[name].numpy()).reshape(shape) for name, shape in shapes.items()}
