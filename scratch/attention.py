"""Attention (Vaswani et al. 2017, §3.2) in NumPy, with every gradient derived by hand.

Shape letters, used in the comment at the end of each array line:
    ...  any leading batch axes (batch, heads, or none)
    B    batch            Tq  queries (target positions)     Tk  keys (source positions)
    dk   query/key width  dv  value width
    D    model width      H   heads                           Dh  head width, D / H

Masks are boolean and True means "may attend". A query row whose mask is all False attends to
nothing: its output is 0 and every gradient through it is 0 (as PyTorch's
`scaled_dot_product_attention` does from 2.5; Keras returns the mean of V instead).
"""

import math
from typing import NamedTuple

import numpy as np

from scratch.layers import LinearCache, linear_backward
from scratch.threads import over_threads, thread_count
from scratch.validate import (
    MHA_PARAM_NAMES,
    as_float_array,
    as_mask,
    check_attention_inputs,
    check_multi_head_attention_inputs,
)



def transposed(x):
    """xᵀ over the last two axes, as a contiguous array: (..., m, n) → (..., n, m).

    Not math, speed: NumPy's stacked matmul hands a (..., m, n) operand to BLAS only when its last two
    axes are laid out as a plain matrix; the view x.swapaxes(-1, -2) is not, and falls back to a loop
    about 50 times slower (38 ms against 0.6 ms for q @ kᵀ at B = H = 8, T = 128, d_k = 32). The copy
    costs one pass over the (T, d) array, never over the (T, T) one.
    """
    return np.ascontiguousarray(x.swapaxes(-1, -2))


# ----------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------


class SoftmaxCache(NamedTuple):
    y: np.ndarray  # the output, all the backward needs
    axis: int


def softmax_forward(x, axis=-1, mask=None):
    """softmax(x)_i = exp(x_i) / Σ_j exp(x_j) along `axis`.

    With a boolean `mask` (broadcastable to x, True = keep) the masked entries get weight
    exactly 0, and a slice with nothing kept is all 0 instead of 0/0 = NaN.
    """
    x = as_float_array("x", x)
    if mask is not None:
        mask = as_mask(mask, x.shape)
    # BEGIN SOLUTION
    # HINT: subtract the row maximum before exponentiating; it cancels in the ratio.
    # softmax(x) = softmax(x − m) for any constant m; with m = max_j x_j every exponent is ≤ 0,
    # so exp never overflows, and the largest term is exp(0) = 1, so the sum is ≥ 1.
    # x belongs to the caller, so e is one new array and every later step works on it in place.
    # initial=−inf: an empty slice has max −inf instead of raising (NumPy also reduces faster with it).
    if mask is None:
        m = x.max(axis=axis, keepdims=True, initial=-np.inf)  # (..., 1)
        e = x - m  # (..., n)
    else:
        e = np.where(mask, x, -np.inf)  # (..., n), a masked entry becomes −inf: exp(−inf) = 0
        m = e.max(axis=axis, keepdims=True, initial=-np.inf)  # (..., 1)
        m[m == -np.inf] = 0.0  # a slice with nothing kept has max −inf, and −inf − (−inf) is NaN
        e -= m
    np.exp(e, out=e)  # (..., n)
    total = e.sum(axis=axis, keepdims=True)  # (..., 1)
    if mask is not None:
        total[total == 0] = 1.0  # nothing kept: 0 / 1 = 0 rather than 0 / 0
    e /= total  # (..., n)
    y = e
    # END SOLUTION
    return y, SoftmaxCache(y, axis)


def softmax_backward(dout, cache):
    """dx for y = softmax(x), from the saved output alone."""
    y, axis = cache
    # BEGIN SOLUTION
    # HINT: the Jacobian is diag(y) − y yᵀ; apply it to dout without building it.
    # ∂y_i/∂x_j = y_i (δ_ij − y_j)  ⇒  dx_j = Σ_i dout_i y_i (δ_ij − y_j) = y_j (dout_j − Σ_i dout_i y_i)
    dx = dout - np.vecdot(dout, y, axis=axis, keepdims=True)  # (..., n), vecdot: Σ_i dout_i y_i
    dx *= y  # (..., n), in place: dx is ours
    # END SOLUTION
    return dx


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def causal_mask(t):
    """(t, t) boolean mask, True on and below the diagonal: position i may attend to j ≤ i."""
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
        raise ValueError(f"t must be a non-negative int, got {t!r}")
    # BEGIN SOLUTION
    return np.tril(np.ones((t, t), dtype=bool))  # (t, t)
    # END SOLUTION


def padding_mask(lengths, t_k, t_q=1):
    """(B, t_q, t_k) boolean mask from key lengths: query rows may attend to keys j < lengths[b].

    Broadcasts against (B, Tq, Tk) scores, and against (B, H, Tq, Tk) after `mask[:, None]`.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be a 1-D integer array of shape (B,), got dtype {lengths.dtype} with shape {lengths.shape}")
    if np.any(lengths < 0) or np.any(lengths > t_k):
        raise ValueError(f"lengths must lie in [0, t_k={t_k}], got {lengths.tolist()}")
    # BEGIN SOLUTION
    keep = np.arange(t_k)[None, :] < lengths[:, None]  # (B, Tk)
    return np.broadcast_to(keep[:, None, :], (len(lengths), t_q, t_k)).copy()  # (B, Tq, Tk)
    # END SOLUTION


# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention
# ----------------------------------------------------------------------------------------------


class AttentionCache(NamedTuple):
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    weights: np.ndarray  # (..., Tq, Tk), the softmax output: rows sum to 1 (or 0 if fully masked)
    scale: float
    softmax: SoftmaxCache


def scaled_dot_product_attention_forward(q, k, v, mask=None, threads=None):
    """Attention(Q, K, V) = softmax(QKᵀ/√d_k) V for q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv).

    `mask`, boolean and broadcastable to (..., Tq, Tk), is True where query i may attend to key j.
    `threads` shares the (batch, head) pairs out over that many threads (scratch/threads.py; None: the
    CPUs, for large inputs); the result is the same to the bit.
    """
    q, k, v, mask = check_attention_inputs(q, k, v, mask)
    lead, tq, tk = q.shape[:-2], q.shape[-2], k.shape[-2]
    if (threads := thread_count(threads, lead, tq, tk)) > 1:
        def part(q, k, v, *mask):
            out, cache = scaled_dot_product_attention_forward(q, k, v, *mask, threads=1)
            return out, cache.weights
        masks = () if mask is None else (np.broadcast_to(mask, (*lead, tq, tk)),)  # a view: sliced, never copied
        out, weights = over_threads(part, (q, k, v, *masks), lead, threads)
        return out, AttentionCache(q, k, v, weights, 1.0 / math.sqrt(q.shape[-1]), SoftmaxCache(weights, -1))
    # BEGIN SOLUTION
    # HINT: three lines: scores, softmax over the keys (pass the mask), weighted sum of values.
    # √d_k keeps the scores' variance near 1 when q and k have unit-variance entries (§3.2.1).
    scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float, so float32 stays float32
    # Eq. (1), Vaswani et al. 2017: Attention(Q, K, V) = softmax(QKᵀ / √d_k) V
    scores = q @ transposed(k)  # (..., Tq, Tk)
    scores *= scale
    weights, softmax_cache = softmax_forward(scores, axis=-1, mask=mask)  # (..., Tq, Tk)
    out = weights @ v  # (..., Tq, dv)
    # END SOLUTION
    return out, AttentionCache(q, k, v, weights, scale, softmax_cache)


def scaled_dot_product_attention_backward(dout, cache, threads=None):
    """Return (dq, dk, dv) given dout (..., Tq, dv); `threads` as in the forward."""
    q, k, v, weights, scale, softmax_cache = cache
    if (threads := thread_count(threads, q.shape[:-2], q.shape[-2], k.shape[-2])) > 1 and softmax_cache.axis in (-1, weights.ndim - 1):
        def part(dout, q, k, v, weights):
            return scaled_dot_product_attention_backward(
                dout, AttentionCache(q, k, v, weights, scale, SoftmaxCache(weights, -1)), threads=1)
        return over_threads(part, (dout, q, k, v, weights), q.shape[:-2], threads)
    # BEGIN SOLUTION
    # HINT: go back through out = A V, then A = softmax(S), then S = scale · Q Kᵀ.
    # out = A V  ⇒  dA = dout Vᵀ  and  dV = Aᵀ dout
    dweights = dout @ transposed(v)  # (..., Tq, Tk)
    dv = weights.swapaxes(-1, -2) @ dout  # (..., Tk, dv)
    # A = softmax(S) along the keys
    dscores = softmax_backward(dweights, softmax_cache)  # (..., Tq, Tk)
    # S = scale · Q Kᵀ  ⇒  dQ = scale · dS K  and  dK = scale · dSᵀ Q
    # (the scale goes on the (T·, dk) products, smaller than the (Tq, Tk) dS)
    dq = dscores @ k  # (..., Tq, dk)
    dq *= scale
    dk = dscores.swapaxes(-1, -2) @ q  # (..., Tk, dk)
    dk *= scale
    # END SOLUTION
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Multi-head attention
# ----------------------------------------------------------------------------------------------


class MultiHeadAttentionCache(NamedTuple):
    x_q: np.ndarray
    x_kv: np.ndarray
    params: dict
    num_heads: int
    heads: np.ndarray  # (B, Tq, D), the heads' outputs concatenated, input of W_o
    attention: AttentionCache


def split_heads(x, num_heads):
    """(B, T, D) → (B, H, T, Dh): head h gets columns h·Dh … (h+1)·Dh − 1."""
    b, t, d = x.shape
    return np.ascontiguousarray(x.reshape(b, t, num_heads, d // num_heads).transpose(0, 2, 1, 3))


def merge_heads(x):
    """(B, H, T, Dh) → (B, T, D): the inverse of split_heads, i.e. Concat(head_1, …, head_H)."""
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


def multi_head_attention_forward(x_q, x_kv, params, num_heads, mask=None):
    """MultiHead(x_q, x_kv) for x_q (B, Tq, D), x_kv (B, Tk, D); self-attention when x_kv is x_q.

    `params` holds W_q W_k W_v W_o (D, D) and b_q b_k b_v b_o (D,). `mask`, boolean and
    broadcastable to (B, Tq, Tk), is shared by every head.
    """
    x_q, x_kv, params, mask = check_multi_head_attention_inputs(x_q, x_kv, params, num_heads, mask)
    # BEGIN SOLUTION
    # HINT: project, split_heads, call scaled_dot_product_attention_forward once for all heads, merge_heads, project.
    # head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V); W_i^Q is the i-th block of Dh columns of W_q,
    # so one (D, D) product computes every head's projection at once.
    q = split_heads(x_q @ params["W_q"] + params["b_q"], num_heads)  # (B, H, Tq, Dh)
    k = split_heads(x_kv @ params["W_k"] + params["b_k"], num_heads)  # (B, H, Tk, Dh)
    v = split_heads(x_kv @ params["W_v"] + params["b_v"], num_heads)  # (B, H, Tk, Dh)
    head_mask = None if mask is None else mask[..., None, :, :]  # (B or 1, 1, Tq or 1, Tk)
    attended, attention_cache = scaled_dot_product_attention_forward(q, k, v, head_mask)  # (B, H, Tq, Dh)
    # MultiHead(Q, K, V) = Concat(head_1, …, head_H) W^O
    heads = merge_heads(attended)  # (B, Tq, D)
    out = heads @ params["W_o"] + params["b_o"]  # (B, Tq, D)
    # END SOLUTION
    return out, MultiHeadAttentionCache(x_q, x_kv, params, num_heads, heads, attention_cache)


def multi_head_attention_backward(dout, cache):
    """Return (dx_q, dx_kv, grads) with grads keyed like params. For self-attention add dx_q + dx_kv."""
    x_q, x_kv, params, num_heads, heads, attention_cache = cache
    grads = {}
    # BEGIN SOLUTION
    # HINT: reverse the forward line by line; the query, key and value projections each send a gradient back.
    # out = heads W_o + b_o, a linear layer: dheads = dout W_oᵀ, dW_o = headsᵀ dout, db_o = Σ dout
    dheads, grads["W_o"], grads["b_o"] = linear_backward(dout, LinearCache(heads, params["W_o"]))  # (B, Tq, D)
    # heads = merge_heads(attended)  ⇒  split the gradient the same way
    dq, dk, dv = scaled_dot_product_attention_backward(split_heads(dheads, num_heads), attention_cache)  # (B, H, T·, Dh)
    dq, dk, dv = merge_heads(dq), merge_heads(dk), merge_heads(dv)  # (B, T·, D)
    # q = x_q W_q + b_q, k = x_kv W_k + b_k, v = x_kv W_v + b_v: three more linear layers
    dx_q, grads["W_q"], grads["b_q"] = linear_backward(dq, LinearCache(x_q, params["W_q"]))  # (B, Tq, D)
    dx_k, grads["W_k"], grads["b_k"] = linear_backward(dk, LinearCache(x_kv, params["W_k"]))  # (B, Tk, D)
    dx_v, grads["W_v"], grads["b_v"] = linear_backward(dv, LinearCache(x_kv, params["W_v"]))  # (B, Tk, D)
    # k and v both read x_kv, so their gradients add up
    dx_kv = dx_k + dx_v  # (B, Tk, D)
    # END SOLUTION
    return dx_q, dx_kv, {name: grads[name] for name in MHA_PARAM_NAMES}


def init_multi_head_attention(d_model, rng, dtype=np.float64):
    """Glorot-uniform (D, D) weights (Glorot and Bengio, 2010) and zero biases."""
    limit = math.sqrt(6.0 / (d_model + d_model))
    params = {}
    for name in MHA_PARAM_NAMES:
        if name.startswith("W"):
            params[name] = rng.uniform(-limit, limit, size=(d_model, d_model)).astype(dtype)
        else:
            params[name] = np.zeros(d_model, dtype=dtype)
    return params
