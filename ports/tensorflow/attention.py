"""Attention in TensorFlow 2: scratch/attention.py with tf ops, the backward by tf.GradientTape.

Read it beside scratch/attention.py: the names, the arguments and the NumPy-in/NumPy-out
interface are the same; each forward runs under a GradientTape, and each backward asks the
tape for the vector-Jacobian product instead of the hand-derived lines. Shape letters as in scratch.
"""

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from scratch.attention import causal_mask, padding_mask
from scratch.validate import (
    MHA_PARAM_NAMES,
    as_float_array,
    as_mask,
    check_attention_inputs,
    check_multi_head_attention_inputs,
)

__all__ = [
    "softmax_forward", "softmax_backward", "causal_mask", "padding_mask",
    "scaled_dot_product_attention_forward", "scaled_dot_product_attention_backward",
    "multi_head_attention_forward", "multi_head_attention_backward",
]


class Cache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    inputs: tuple  # the tensors the gradients are taken with respect to
    out: tf.Tensor


def _watched(tape, x):
    t = tf.constant(x)
    tape.watch(t)
    return t


def _gradients(dout, cache):
    """Vector-Jacobian product: (∂out/∂input)ᵀ · dout for every input, as NumPy arrays."""
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    grads = cache.tape.gradient(cache.out, cache.inputs, output_gradients=tf.constant(dout, dtype=cache.out.dtype))
    return [np.zeros(x.shape, dtype=dout.dtype) if g is None else g.numpy() for x, g in zip(cache.inputs, grads)]


# ----------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------


def _softmax(x, axis, mask):
    if mask is None:
        return tf.nn.softmax(x, axis=axis)
    neg_inf = tf.constant(-math.inf, dtype=x.dtype)
    masked = tf.where(mask, x, neg_inf)  # (..., n)
    # The max is only a shift that cancels (softmax(x) = softmax(x − m)), so it carries no gradient.
    m = tf.stop_gradient(tf.reduce_max(masked, axis=axis, keepdims=True))  # (..., 1)
    m = tf.where(tf.math.is_finite(m), m, tf.zeros_like(m))  # a slice with nothing kept
    e = tf.exp(masked - m)  # (..., n), exactly 0 where masked
    total = tf.reduce_sum(e, axis=axis, keepdims=True)  # (..., 1)
    return e / tf.where(total == 0, tf.ones_like(total), total)  # 0 / 1 = 0 where nothing kept


def softmax_forward(x, axis=-1, mask=None):
    """softmax(x)_i = exp(x_i) / Σ_j exp(x_j) along `axis`; masked entries get exactly 0."""
    x = as_float_array("x", x)
    if mask is not None:
        mask = tf.constant(np.broadcast_to(as_mask(mask, x.shape), x.shape))
    with tf.GradientTape() as tape:
        xt = _watched(tape, x)
        y = _softmax(xt, axis, mask)
    return y.numpy(), Cache(tape, (xt,), y)


def softmax_backward(dout, cache):
    (dx,) = _gradients(dout, cache)
    return dx


# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention
# ----------------------------------------------------------------------------------------------


def _attention(q, k, v, mask):
    # Eq. (1), Vaswani et al. 2017: Attention(Q, K, V) = softmax(QKᵀ / √d_k) V
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = tf.matmul(q, k, transpose_b=True) * scale  # (..., Tq, Tk)
    if mask is not None:
        mask = tf.broadcast_to(mask, tf.shape(scores))
    weights = _softmax(scores, -1, mask)  # (..., Tq, Tk)
    return tf.matmul(weights, v)  # (..., Tq, dv)


def scaled_dot_product_attention_forward(q, k, v, mask=None):
    """softmax(QKᵀ/√d_k) V for q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv); mask True = attend."""
    q, k, v, mask = check_attention_inputs(q, k, v, mask)
    with tf.GradientTape() as tape:
        inputs = tuple(_watched(tape, x) for x in (q, k, v))
        out = _attention(*inputs, None if mask is None else tf.constant(mask))
    return out.numpy(), Cache(tape, inputs, out)


def scaled_dot_product_attention_backward(dout, cache):
    """Return (dq, dk, dv)."""
    dq, dk, dv = _gradients(dout, cache)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Multi-head attention
# ----------------------------------------------------------------------------------------------


def split_heads(x, num_heads):
    """(B, T, D) → (B, H, T, Dh): head h gets columns h·Dh … (h+1)·Dh − 1."""
    b, t, d = x.shape
    return tf.transpose(tf.reshape(x, (b, t, num_heads, d // num_heads)), (0, 2, 1, 3))


def merge_heads(x):
    """(B, H, T, Dh) → (B, T, D), i.e. Concat(head_1, …, head_H)."""
    b, h, t, dh = x.shape
    return tf.reshape(tf.transpose(x, (0, 2, 1, 3)), (b, t, h * dh))


def multi_head_attention_forward(x_q, x_kv, params, num_heads, mask=None):
    """MultiHead(x_q, x_kv) for x_q (B, Tq, D), x_kv (B, Tk, D); mask broadcastable to (B, Tq, Tk)."""
    x_q, x_kv, params, mask = check_multi_head_attention_inputs(x_q, x_kv, params, num_heads, mask)
    with tf.GradientTape() as tape:
        xq, xkv = _watched(tape, x_q), _watched(tape, x_kv)
        p = {name: _watched(tape, params[name]) for name in MHA_PARAM_NAMES}
        # head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)
        q = split_heads(xq @ p["W_q"] + p["b_q"], num_heads)  # (B, H, Tq, Dh)
        k = split_heads(xkv @ p["W_k"] + p["b_k"], num_heads)  # (B, H, Tk, Dh)
        v = split_heads(xkv @ p["W_v"] + p["b_v"], num_heads)  # (B, H, Tk, Dh)
        head_mask = None if mask is None else tf.constant(mask)[..., None, :, :]
        # MultiHead(Q, K, V) = Concat(head_1, …, head_H) W^O
        heads = merge_heads(_attention(q, k, v, head_mask))  # (B, Tq, D)
        out = heads @ p["W_o"] + p["b_o"]  # (B, Tq, D)
    return out.numpy(), Cache(tape, (xq, xkv) + tuple(p[name] for name in MHA_PARAM_NAMES), out)


def multi_head_attention_backward(dout, cache):
    """Return (dx_q, dx_kv, grads) with grads keyed like params."""
    dx_q, dx_kv, *dparams = _gradients(dout, cache)
    return dx_q, dx_kv, dict(zip(MHA_PARAM_NAMES, dparams))
