"""Attention in Keras 3: scratch/attention.py with keras.ops, and where each weight lives in
`keras.layers.MultiHeadAttention`.

Read it beside scratch/attention.py: the names, the arguments and the NumPy-in/NumPy-out
interface are the same. The forward is written with backend-neutral `keras.ops`; the backward
asks the TensorFlow backend's GradientTape for the vector-Jacobian product.

One behaviour differs in Keras's own layer, and this port does not copy it: Keras masks by
adding a large negative number to blocked scores, so a query row with every key blocked gets
uniform weights and returns the mean of V. Here (as in scratch and PyTorch ≥ 2.5) it returns 0.
"""

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

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
    "to_keras_multi_head_attention", "from_keras_multi_head_attention",
]

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"ports.keras takes gradients with TensorFlow's GradientTape and needs KERAS_BACKEND=tensorflow, "
        f"got backend {keras.backend.backend()!r}"
    )


class Cache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    inputs: tuple  # the tensors the gradients are taken with respect to
    out: object  # the output tensor


def _watched(tape, x):
    t = ops.convert_to_tensor(x)
    tape.watch(t)
    return t


def _gradients(dout, cache):
    """Vector-Jacobian product: (∂out/∂input)ᵀ · dout for every input, as NumPy arrays."""
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    upstream = ops.convert_to_tensor(dout, dtype=cache.out.dtype)
    grads = cache.tape.gradient(cache.out, cache.inputs, output_gradients=upstream)
    return [np.zeros(x.shape, dtype=dout.dtype) if g is None else ops.convert_to_numpy(g) for x, g in zip(cache.inputs, grads)]


# ----------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------


def _softmax(x, axis, mask):
    if mask is None:
        return ops.softmax(x, axis=axis)
    masked = ops.where(mask, x, -math.inf)  # (..., n)
    # The max is only a shift that cancels (softmax(x) = softmax(x − m)), so it carries no gradient.
    m = ops.stop_gradient(ops.max(masked, axis=axis, keepdims=True))  # (..., 1)
    m = ops.where(ops.isfinite(m), m, 0.0)  # a slice with nothing kept
    e = ops.exp(masked - m)  # (..., n), exactly 0 where masked
    total = ops.sum(e, axis=axis, keepdims=True)  # (..., 1)
    return e / ops.where(total == 0, 1.0, total)  # 0 / 1 = 0 where nothing kept


def softmax_forward(x, axis=-1, mask=None):
    """softmax(x)_i = exp(x_i) / Σ_j exp(x_j) along `axis`; masked entries get exactly 0."""
    x = as_float_array("x", x)
    if mask is not None:
        mask = ops.convert_to_tensor(np.broadcast_to(as_mask(mask, x.shape), x.shape))
    with tf.GradientTape() as tape:
        xt = _watched(tape, x)
        y = _softmax(xt, axis, mask)
    return ops.convert_to_numpy(y), Cache(tape, (xt,), y)


def softmax_backward(dout, cache):
    (dx,) = _gradients(dout, cache)
    return dx


# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention
# ----------------------------------------------------------------------------------------------


def _attention(q, k, v, mask):
    # Eq. (1), Vaswani et al. 2017: Attention(Q, K, V) = softmax(QKᵀ / √d_k) V
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = ops.matmul(q, ops.swapaxes(k, -1, -2)) * scale  # (..., Tq, Tk)
    if mask is not None:
        mask = ops.broadcast_to(mask, ops.shape(scores))
    weights = _softmax(scores, -1, mask)  # (..., Tq, Tk)
    return ops.matmul(weights, v)  # (..., Tq, dv)


def scaled_dot_product_attention_forward(q, k, v, mask=None):
    """softmax(QKᵀ/√d_k) V for q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv); mask True = attend."""
    q, k, v, mask = check_attention_inputs(q, k, v, mask)
    with tf.GradientTape() as tape:
        inputs = tuple(_watched(tape, x) for x in (q, k, v))
        out = _attention(*inputs, None if mask is None else ops.convert_to_tensor(mask))
    return ops.convert_to_numpy(out), Cache(tape, inputs, out)


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
    return ops.transpose(ops.reshape(x, (b, t, num_heads, d // num_heads)), (0, 2, 1, 3))


def merge_heads(x):
    """(B, H, T, Dh) → (B, T, D), i.e. Concat(head_1, …, head_H)."""
    b, h, t, dh = x.shape
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (b, t, h * dh))


def multi_head_attention_forward(x_q, x_kv, params, num_heads, mask=None):
    """MultiHead(x_q, x_kv) for x_q (B, Tq, D), x_kv (B, Tk, D); mask broadcastable to (B, Tq, Tk)."""
    x_q, x_kv, params, mask = check_multi_head_attention_inputs(x_q, x_kv, params, num_heads, mask)
    with tf.GradientTape() as tape:
        xq, xkv = _watched(tape, x_q), _watched(tape, x_kv)
        p = {name: _watched(tape, params[name]) for name in MHA_PARAM_NAMES}
        # head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)
        q = split_heads(ops.matmul(xq, p["W_q"]) + p["b_q"], num_heads)  # (B, H, Tq, Dh)
        k = split_heads(ops.matmul(xkv, p["W_k"]) + p["b_k"], num_heads)  # (B, H, Tk, Dh)
        v = split_heads(ops.matmul(xkv, p["W_v"]) + p["b_v"], num_heads)  # (B, H, Tk, Dh)
        head_mask = None if mask is None else ops.convert_to_tensor(mask)[..., None, :, :]
        # MultiHead(Q, K, V) = Concat(head_1, …, head_H) W^O
        heads = merge_heads(_attention(q, k, v, head_mask))  # (B, Tq, D)
        out = ops.matmul(heads, p["W_o"]) + p["b_o"]  # (B, Tq, D)
    return ops.convert_to_numpy(out), Cache(tape, (xq, xkv) + tuple(p[name] for name in MHA_PARAM_NAMES), out)


def multi_head_attention_backward(dout, cache):
    """Return (dx_q, dx_kv, grads) with grads keyed like params."""
    dx_q, dx_kv, *dparams = _gradients(dout, cache)
    return dx_q, dx_kv, dict(zip(MHA_PARAM_NAMES, dparams))


# ----------------------------------------------------------------------------------------------
# Where the scratch weights live in keras.layers.MultiHeadAttention
# ----------------------------------------------------------------------------------------------


def to_keras_multi_head_attention(params, num_heads):
    """A `keras.layers.MultiHeadAttention` computing what scratch computes with `params`.

    Keras keeps the heads as an axis of their own (EinsumDense layers): the query, key and
    value kernels have shape (D, H, Dh) and their biases (H, Dh), so scratch's W_q (D, D)
    reshapes to (D, H, Dh) — column h·Dh + j becomes [:, h, j], head h's block — and the output
    kernel has shape (H, Dh, D), W_o's row h·Dh + j becomes [h, j, :]. Call the layer as
    `layer(x_q, x_kv, attention_mask=mask)`: Keras's mask also means True = may attend.
    """
    d = params["W_q"].shape[0]
    dh = d // num_heads
    dtype = np.asarray(params["W_q"]).dtype.name
    layer = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=dh, dropout=0.0, dtype=dtype)
    layer.build((None, None, d), (None, None, d))
    for dense, name in ((layer.query_dense, "q"), (layer.key_dense, "k"), (layer.value_dense, "v")):
        dense.kernel.assign(np.reshape(params[f"W_{name}"], (d, num_heads, dh)))  # (D, H, Dh)
        dense.bias.assign(np.reshape(params[f"b_{name}"], (num_heads, dh)))  # (H, Dh)
    layer.output_dense.kernel.assign(np.reshape(params["W_o"], (num_heads, dh, d)))  # (H, Dh, D)
    layer.output_dense.bias.assign(np.asarray(params["b_o"]))  # (D,)
    return layer


def from_keras_multi_head_attention(layer):
    """The scratch parameter dict of a built `keras.layers.MultiHeadAttention` (self-attention width D)."""
    kernel = layer.query_dense.kernel.numpy()
    d = kernel.shape[0]
    params = {}
    for dense, name in ((layer.query_dense, "q"), (layer.key_dense, "k"), (layer.value_dense, "v")):
        params[f"W_{name}"] = dense.kernel.numpy().reshape(d, d)  # (D, H, Dh) → (D, D)
        params[f"b_{name}"] = dense.bias.numpy().reshape(d)  # (H, Dh) → (D,)
    params["W_o"] = layer.output_dense.kernel.numpy().reshape(d, d)  # (H, Dh, D) → (D, D)
    params["b_o"] = layer.output_dense.bias.numpy()
    return {name: params[name] for name in MHA_PARAM_NAMES}
