"""The Transformer in TensorFlow 2: scratch/transformer.py and scratch/encoder_decoder.py with tf ops,
every backward by tf.GradientTape.

Read it beside the two scratch files: the names, the arguments and the NumPy-in/NumPy-out
interface are the same; each forward runs under a GradientTape, each backward asks the tape for
the vector-Jacobian product. Inputs are checked by scratch's own helpers, so a bad input raises
the same error here as there. Dropout draws scratch's masks from the same `rng`
(scratch/layers.py's `dropout_forward`); p = 0 or rng = None is the identity.

After the functions comes the model the TensorFlow way: `Transformer`, a `tf.Module` holding one
`tf.Variable` per scratch parameter (same names, same (in, out) layout: nothing is transposed),
called as `model(src, tgt_in)` → logits, with `to_tf_transformer` / `from_tf_transformer`, and
`dropout_masks`, which draws scratch's dropout masks ahead of a compiled step.
The tensor functions take the token ids as tensors and read every size they need at run time,
so that they also run inside a `tf.function`.

Shape letters as in scratch: B batch, S source positions, T target positions, V vocabulary,
D model width, F feed-forward width, H heads.
"""

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from ports.tensorflow.attention import _attention, _watched
from scratch.encoder_decoder import check_transformer_params
from scratch.validate import (check_cross_entropy_inputs, check_feed_forward_inputs, check_layer_norm_inputs,
                              check_positional_encoding_args)
from scratch.decoding import BOS_ID, EOS_ID
from scratch.encoder_decoder import TransformerConfig, check_tokens, init_transformer, parameter_shapes
from scratch.layers import dropout_forward
from scratch.transformer import (DECODER_LAYER_NAMES, ENCODER_LAYER_NAMES, FF_PARAM_NAMES,
                                 check_decoder_layer_inputs, check_encoder_layer_inputs, prefixed)
from scratch.validate import check_multi_head_attention_inputs

__all__ = [
    "positional_encoding", "layer_norm_forward", "layer_norm_backward", "feed_forward_forward", "feed_forward_backward",
    "encoder_layer_forward", "encoder_layer_backward", "decoder_layer_forward", "decoder_layer_backward",
    "cross_entropy_forward", "cross_entropy_backward", "TransformerConfig", "parameter_shapes", "init_transformer",
    "transformer_forward", "transformer_backward", "ENCODER_LAYER_NAMES", "DECODER_LAYER_NAMES",
    "Transformer", "to_tf_transformer", "from_tf_transformer", "dropout_masks",
]


class Cache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    inputs: tuple  # the tensors the gradients are taken with respect to
    out: tf.Tensor


def _gradients(dout, cache):
    """Vector-Jacobian product (∂out/∂input)ᵀ · dout for every input, as NumPy arrays.

    As ports/tensorflow/attention.py's, except that an embedding table's gradient, which
    tf.gather returns as IndexedSlices (one row per looked-up id), is summed into a dense array.
    """
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    grads = cache.tape.gradient(cache.out, cache.inputs, output_gradients=tf.constant(dout, dtype=cache.out.dtype))
    return [np.zeros(x.shape, dtype=x.dtype.as_numpy_dtype) if g is None else tf.convert_to_tensor(g).numpy()
            for x, g in zip(cache.inputs, grads)]


def _sinusoids(t, d_model, dtype):
    """PE (t, D) as a tensor; t may be a scalar tensor (a length known only at run time)."""
    # §3.5, Vaswani et al. 2017: column pair (2i, 2i+1) is a sinusoid of wavelength 2π·10000^(2i/d)
    pos = tf.cast(tf.range(t), tf.float64)[:, None]  # (t, 1)
    two_i = tf.range(0, d_model, 2, dtype=tf.float64)  # (⌈d/2⌉,)
    angle = pos / 10000.0 ** (two_i / d_model)  # (t, ⌈d/2⌉)
    sin, cos = tf.sin(angle), tf.cos(angle[:, : d_model // 2])  # an odd d has one fewer cos column
    if d_model % 2:
        cos = tf.concat([cos, tf.zeros_like(sin[:, :1])], axis=1)
    # interleave the columns: sin, cos, sin, cos, …
    pe = tf.reshape(tf.stack([sin, cos], axis=2), (tf.shape(sin)[0], 2 * sin.shape[1]))[:, :d_model]
    return tf.cast(pe, dtype)  # (t, D)


def positional_encoding(t, d_model, dtype=np.float64):
    """(t, d_model) sinusoids: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)."""
    check_positional_encoding_args(t, d_model)
    return _sinusoids(t, d_model, tf.float64).numpy().astype(dtype)


# ----------------------------------------------------------------------------------------------
# The building blocks on tensors: shared by the functions below and by the tf.Module at the end
# ----------------------------------------------------------------------------------------------


def _layer_norm(x, gamma, beta, eps=1e-5):
    # Ba et al. 2016: LayerNorm(x) = γ ⊙ (x − μ) / √(σ² + ε) + β, statistics over the last axis
    mu = tf.reduce_mean(x, axis=-1, keepdims=True)  # (..., 1)
    centred = x - mu  # (..., D)
    var = tf.reduce_mean(centred * centred, axis=-1, keepdims=True)  # (..., 1), biased: divides by D
    return gamma * (centred / tf.sqrt(var + eps)) + beta  # (..., D)


def _feed_forward(x, p):
    # Eq. (2): FFN(x) = max(0, x W1 + b1) W2 + b2; tensordot contracts x's last axis whatever its rank
    # (tf.matmul wants two or more axes, and x may be a single position (D,))
    h = tf.nn.relu(tf.tensordot(x, p["W1"], axes=1) + p["b1"])  # (..., F)
    return tf.tensordot(h, p["W2"], axes=1) + p["b2"]  # (..., D)


def _split_heads(x, num_heads):
    """(B, T, D) → (B, H, T, Dh); B and T read at run time."""
    b, t, d = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
    return tf.transpose(tf.reshape(x, (b, t, num_heads, d // num_heads)), (0, 2, 1, 3))


def _merge_heads(x):
    """(B, H, T, Dh) → (B, T, D), Concat(head_1, …, head_H)."""
    b, t, h, dh = tf.shape(x)[0], tf.shape(x)[2], x.shape[1], x.shape[3]
    return tf.reshape(tf.transpose(x, (0, 2, 1, 3)), (b, t, h * dh))


def _multi_head(x_q, x_kv, p, num_heads, mask):
    """MultiHead(x_q, x_kv), as ports/tensorflow/attention.py computes it; mask bool (B, Tq, Tk) or None."""
    q = _split_heads(x_q @ p["W_q"] + p["b_q"], num_heads)  # (B, H, Tq, Dh)
    k = _split_heads(x_kv @ p["W_k"] + p["b_k"], num_heads)  # (B, H, Tk, Dh)
    v = _split_heads(x_kv @ p["W_v"] + p["b_v"], num_heads)  # (B, H, Tk, Dh)
    heads = _merge_heads(_attention(q, k, v, None if mask is None else mask[..., None, :, :]))  # (B, Tq, D)
    return heads @ p["W_o"] + p["b_o"]  # (B, Tq, D)


def _dropout(x, p, rng):
    """Inverted dropout with scratch's masks. `rng` is a np.random.Generator, which draws the mask
    now as scratch/layers.py's dropout_forward does, or an iterator over masks drawn beforehand by
    `dropout_masks` (inside a tf.function, where NumPy cannot draw), taken in turn."""
    if p == 0.0 or rng is None:
        return x
    if isinstance(rng, np.random.Generator):
        _, keep = dropout_forward(np.ones(tuple(x.shape), x.dtype.as_numpy_dtype), p, rng)
        return x * keep
    return x * next(rng)


def dropout_masks(rng, config, b, s, t, dtype):
    """The keep-masks (0, or 1/(1 − p)) that scratch's transformer_forward draws from `rng` for B
    sources of S positions and targets of T, in its order: the source embedding, two per encoder
    layer, the target embedding, three per decoder layer. () when dropout is off."""
    if rng is None or config.dropout == 0.0:
        return ()
    d, n = config.d_model, config.num_layers
    shapes = [(b, s, d)] * (1 + 2 * n) + [(b, t, d)] * (1 + 3 * n)
    return tuple(dropout_forward(np.ones(shape, dtype), config.dropout, rng)[1] for shape in shapes)


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


def _watched_params(tape, params, names):
    return {name: _watched(tape, np.asarray(params[name])) for name in names}


def _bool_mask(mask):
    return None if mask is None else tf.constant(mask)


# ----------------------------------------------------------------------------------------------
# Layer normalisation and the feed-forward block
# ----------------------------------------------------------------------------------------------


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """LayerNorm(x) = γ ⊙ (x − μ) / √(σ² + ε) + β over the last axis (biased σ², as PyTorch)."""
    x, gamma, beta = check_layer_norm_inputs(x, gamma, beta)
    with tf.GradientTape() as tape:
        inputs = tuple(_watched(tape, a) for a in (x, gamma, beta))
        y = _layer_norm(*inputs, eps)
    return y.numpy(), Cache(tape, inputs, y)


def layer_norm_backward(dout, cache):
    """Return (dx, dgamma, dbeta)."""
    dx, dgamma, dbeta = _gradients(dout, cache)
    return dx, dgamma, dbeta


def feed_forward_forward(x, params):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, Eq. (2): the same two linear maps at every position."""
    x = check_feed_forward_inputs(x, params)
    with tf.GradientTape() as tape:
        xt, p = _watched(tape, x), _watched_params(tape, params, FF_PARAM_NAMES)
        y = _feed_forward(xt, p)
    return y.numpy(), Cache(tape, (xt, *p.values()), y)


def feed_forward_backward(dout, cache):
    """Return (dx, grads) with grads keyed W1 b1 W2 b2."""
    dx, *grads = _gradients(dout, cache)
    return dx, dict(zip(FF_PARAM_NAMES, grads))


# ----------------------------------------------------------------------------------------------
# The encoder and decoder layers
# ----------------------------------------------------------------------------------------------


def encoder_layer_forward(x, params, num_heads, mask=None, norm_first=False, dropout=0.0, rng=None):
    """One encoder layer, §3.1: self-attention, then the feed-forward block, each residual and normalised.

    x (B, S, D); `mask` broadcastable to (B, S, S), True where a position may attend (padding: False).
    """
    x = check_encoder_layer_inputs(x, params)
    _, _, _, mask = check_multi_head_attention_inputs(x, x, prefixed(params, "attn."), num_heads, mask)
    with tf.GradientTape() as tape:
        xt, p = _watched(tape, x), _watched_params(tape, params, ENCODER_LAYER_NAMES)
        y = _encoder_layer(xt, p, num_heads, _bool_mask(mask), norm_first, dropout, rng)  # (B, S, D)
    return y.numpy(), Cache(tape, (xt, *p.values()), y)


def encoder_layer_backward(dout, cache):
    """Return (dx, grads) with grads keyed like the layer's params."""
    dx, *grads = _gradients(dout, cache)
    return dx, dict(zip(ENCODER_LAYER_NAMES, grads))


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
    return out.numpy(), Cache(tape, (yt, mt, *p.values()), out)


def decoder_layer_backward(dout, cache):
    """Return (dy, dmemory, grads) with grads keyed like the layer's params."""
    dy, dmemory, *grads = _gradients(dout, cache)
    return dy, dmemory, dict(zip(DECODER_LAYER_NAMES, grads))


# ----------------------------------------------------------------------------------------------
# Label-smoothed cross-entropy
# ----------------------------------------------------------------------------------------------


def _cross_entropy(logits, targets, counted, label_smoothing):
    """logits (N, V), targets (N,) integer and counted (N,) bool tensors."""
    eps = float(label_smoothing)
    log_probs = tf.nn.log_softmax(logits, axis=-1)  # (N, V)
    t = tf.where(counted, targets, tf.zeros_like(targets))  # ignored positions point at any valid class
    # −Σ_v q_v log p_v = (1 − ε)(−log p_t) + ε · mean_v(−log p_v),  q = (1 − ε)·one-hot + ε/V
    per_position = -(1.0 - eps) * tf.gather(log_probs, t, batch_dims=1) - eps * tf.reduce_mean(log_probs, axis=-1)
    weight = tf.cast(counted, logits.dtype)  # (N,)
    # a mean over the counted positions; with none counted 0, not 0/0
    return tf.reduce_sum(per_position * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def cross_entropy_forward(logits, targets, label_smoothing=0.0, ignore_index=None):
    """Mean over the counted targets of −Σ_v q_v log p_v, q = (1 − ε)·one-hot(target) + ε/V.

    logits (..., V), targets integers (...); a target equal to `ignore_index` counts for nothing;
    with nothing counted the loss is 0 and so is its gradient.
    """
    logits, targets, counted = check_cross_entropy_inputs(logits, targets, label_smoothing, ignore_index)
    v = logits.shape[-1]
    with tf.GradientTape() as tape:
        z = _watched(tape, logits)
        loss = _cross_entropy(tf.reshape(z, (-1, v)), tf.constant(targets.reshape(-1), tf.int64),
                              tf.constant(counted.reshape(-1)), label_smoothing)
    return loss.numpy()[()], Cache(tape, (z,), loss)


def cross_entropy_backward(dout, cache):
    """Return dlogits (..., V)."""
    (dlogits,) = _gradients(dout, cache)
    return dlogits


# ----------------------------------------------------------------------------------------------
# The encoder-decoder model, on tensors: ids (B, T) integer tensors, p a dict of tensors/variables
# ----------------------------------------------------------------------------------------------


def _embed(ids, table, dropout, rng):
    # §3.4, §3.5: x = E[ids] · √D + PE, then dropout
    d = table.shape[1]
    return _dropout(tf.gather(table, ids) * math.sqrt(d) + _sinusoids(tf.shape(ids)[1], d, table.dtype), dropout, rng)


def _source_mask(src, pad_id):
    return tf.not_equal(src, pad_id)[:, None, :]  # (B, 1, S), True at real source tokens


def _encode(src, p, config, rng=None):
    dropout = config.dropout if rng is not None else 0.0
    mask = _source_mask(src, config.pad_id)  # (B, 1, S)
    x = _embed(src, p["src_embed"], dropout, rng)  # (B, S, D)
    for i in range(config.num_layers):
        x = _encoder_layer(x, prefixed(p, f"enc.{i}."), config.num_heads, mask, config.norm_first, dropout, rng)
    if config.norm_first:  # pre-norm leaves the stack's output unnormalised: one more LN
        x = _layer_norm(x, p["enc.ln.gamma"], p["enc.ln.beta"])
    return x  # (B, S, D)


def _decode(tgt_in, memory, src, p, config, rng=None):
    dropout = config.dropout if rng is not None else 0.0
    t = tf.shape(tgt_in)[1]
    self_mask = tf.cast(tf.linalg.band_part(tf.ones((t, t)), -1, 0), tf.bool)  # (T, T), i sees j ≤ i
    memory_mask = _source_mask(src, config.pad_id)  # (B, 1, S)
    y = _embed(tgt_in, p["tgt_embed"], dropout, rng)  # (B, T, D)
    for i in range(config.num_layers):
        y = _decoder_layer(y, memory, prefixed(p, f"dec.{i}."), config.num_heads, self_mask, memory_mask,
                           config.norm_first, dropout, rng)  # (B, T, D)
    if config.norm_first:
        y = _layer_norm(y, p["dec.ln.gamma"], p["dec.ln.beta"])
    w_out = tf.transpose(p["tgt_embed"]) if config.tie_output else p["out.W"]  # (D, V), §3.4 weight tying
    return y @ w_out + p["out.b"]  # (B, T, V)


def _logits(src, tgt_in, p, config, rng=None):
    return _decode(tgt_in, _encode(src, p, config, rng), src, p, config, rng)  # (B, T, V)


def transformer_forward(src, tgt_in, params, config, rng=None):
    """logits (B, T, V_tgt) for source ids (B, S) and target ids (B, T) shifted right (BOS first).

    `rng`, a np.random.Generator, turns dropout on (scratch's masks); None turns it off.
    """
    src = check_tokens("src", src, config, config.src_vocab)
    tgt_in = check_tokens("tgt_in", tgt_in, config, config.tgt_vocab)
    if src.shape[0] != tgt_in.shape[0]:
        raise ValueError(f"src {src.shape} and tgt_in {tgt_in.shape} must share the batch axis B")
    check_transformer_params(params, config)
    with tf.GradientTape() as tape:
        p = _watched_params(tape, params, parameter_shapes(config))
        logits = _logits(tf.constant(src, tf.int64), tf.constant(tgt_in, tf.int64), p, config, rng)  # (B, T, V)
    return logits.numpy(), (Cache(tape, tuple(p.values()), logits), list(p))


def transformer_backward(dlogits, cache):
    """grads keyed like params, from dlogits (B, T, V_tgt)."""
    cache, names = cache
    return dict(zip(names, _gradients(dlogits, cache)))


# ----------------------------------------------------------------------------------------------
# The model as a tf.Module
# ----------------------------------------------------------------------------------------------


class Transformer(tf.Module):
    """The encoder-decoder as a `tf.Module`: `params`, one `tf.Variable` per scratch parameter.

    Initialised by scratch's `init_transformer` with a NumPy generator seeded by `seed`, so a
    model built here starts from the weights scratch starts from. Calling it runs the tensor
    functions above: `model(src (B, S), tgt_in (B, T))` → logits (B, T, V_tgt), without dropout
    unless `masks`, from `dropout_masks`, are given (then it drops what scratch drops).
    """

    def __init__(self, config, dtype=tf.float32, seed=0, name="transformer"):
        super().__init__(name=name)
        self.config = config
        initial = init_transformer(config, np.random.default_rng(seed), tf.as_dtype(dtype).as_numpy_dtype)
        # name → tf.Variable; tf.Module tracks the dict, so these are its trainable_variables
        self.params = {key: tf.Variable(value, name=key.replace(".", "_")) for key, value in initial.items()}

    def __call__(self, src, tgt_in, masks=()):
        src, tgt_in = tf.convert_to_tensor(src, tf.int64), tf.convert_to_tensor(tgt_in, tf.int64)
        return _logits(src, tgt_in, self.params, self.config, iter(masks) if len(masks) else None)  # (B, T, V)

    def greedy_decode(self, src, max_len=None):
        """(B, L) target ids as scratch/decoding.py's greedy_decode returns them (BOS dropped, EOS kept,
        padding after it), the decoder re-run on the whole prefix at each step."""
        max_len = self.config.max_len if max_len is None else max_len
        src = tf.convert_to_tensor(src, tf.int64)
        memory = _encode(src, self.params, self.config)  # (B, S, D)
        tgt = tf.fill((tf.shape(src)[0], 1), tf.constant(BOS_ID, tf.int64))  # (B, 1)
        done = tf.zeros(tf.shape(src)[0], tf.bool)
        for _ in range(max_len):
            nxt = tf.argmax(_decode(tgt, memory, src, self.params, self.config)[:, -1], axis=-1)  # (B,)
            nxt = tf.where(done, tf.constant(self.config.pad_id, tf.int64), nxt)
            tgt = tf.concat([tgt, nxt[:, None]], axis=1)
            done = done | (nxt == EOS_ID)
            if bool(tf.reduce_all(done)):
                break
        return tgt[:, 1:]


def to_tf_transformer(params, config):
    """A `Transformer` tf.Module holding copies of a scratch parameter dict (same names, shapes, dtype)."""
    dtype = check_transformer_params(params, config)
    model = Transformer(config, dtype=tf.as_dtype(dtype))
    for name, value in model.params.items():
        value.assign(params[name])
    return model


def from_tf_transformer(model):
    """The scratch parameter dict of a `Transformer` (the inverse of `to_tf_transformer`)."""
    return {name: model.params[name].numpy().copy() for name in parameter_shapes(model.config)}
