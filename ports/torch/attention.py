"""Attention in PyTorch: scratch/attention.py with torch ops, the backward by autograd.

Read it beside scratch/attention.py: the names, the arguments and the NumPy-in/NumPy-out
interface are the same; each forward records the graph, and each backward replays it with
`torch.autograd.grad` instead of the hand-derived lines. Shape letters as in scratch.
"""

import math
from typing import NamedTuple

import numpy as np
import torch

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
    "to_torch_multi_head_attention", "from_torch_multi_head_attention",
]


class Cache(NamedTuple):
    inputs: tuple  # the leaf tensors the gradients are taken with respect to
    out: torch.Tensor  # the output, still attached to its graph


def _leaf(x):
    """A tensor that owns a copy of x and records the operations applied to it."""
    return torch.tensor(x).requires_grad_(True)


def _gradients(dout, cache):
    """Vector-Jacobian product: (∂out/∂input)ᵀ · dout for every input, as NumPy arrays."""
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    grads = torch.autograd.grad(
        cache.out, cache.inputs, grad_outputs=torch.as_tensor(dout, dtype=cache.out.dtype), allow_unused=True
    )
    return [np.zeros(x.shape, dtype=dout.dtype) if g is None else g.numpy() for x, g in zip(cache.inputs, grads)]


# ----------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------


def _softmax(x, axis, mask):
    if mask is None:
        return torch.softmax(x, dim=axis)
    # The max is only a shift that cancels (softmax(x) = softmax(x − m)), so it carries no gradient.
    m = x.masked_fill(~mask, -math.inf).amax(dim=axis, keepdim=True).detach()  # (..., 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # a slice with nothing kept
    e = torch.exp(x.masked_fill(~mask, -math.inf) - m)  # (..., n), exactly 0 where masked
    total = e.sum(dim=axis, keepdim=True)  # (..., 1)
    return e / torch.where(total == 0, torch.ones_like(total), total)  # 0 / 1 = 0 where nothing kept


def softmax_forward(x, axis=-1, mask=None):
    """softmax(x)_i = exp(x_i) / Σ_j exp(x_j) along `axis`; masked entries get exactly 0."""
    x = as_float_array("x", x)
    if mask is not None:
        mask = torch.from_numpy(np.ascontiguousarray(as_mask(mask, x.shape)))
    xt = _leaf(x)
    y = _softmax(xt, axis, mask)
    return y.detach().numpy(), Cache((xt,), y)


def softmax_backward(dout, cache):
    (dx,) = _gradients(dout, cache)
    return dx


# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention
# ----------------------------------------------------------------------------------------------


def _attention(q, k, v, mask):
    # Eq. (1), Vaswani et al. 2017: Attention(Q, K, V) = softmax(QKᵀ / √d_k) V
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-1, -2) * scale  # (..., Tq, Tk)
    weights = _softmax(scores, -1, mask)  # (..., Tq, Tk)
    return weights @ v  # (..., Tq, dv)


def scaled_dot_product_attention_forward(q, k, v, mask=None):
    """softmax(QKᵀ/√d_k) V for q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv); mask True = attend."""
    q, k, v, mask = check_attention_inputs(q, k, v, mask)
    inputs = (_leaf(q), _leaf(k), _leaf(v))
    out = _attention(*inputs, None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)))
    return out.detach().numpy(), Cache(inputs, out)


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
    return x.reshape(b, t, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x):
    """(B, H, T, Dh) → (B, T, D), i.e. Concat(head_1, …, head_H)."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def multi_head_attention_forward(x_q, x_kv, params, num_heads, mask=None):
    """MultiHead(x_q, x_kv) for x_q (B, Tq, D), x_kv (B, Tk, D); mask broadcastable to (B, Tq, Tk)."""
    x_q, x_kv, params, mask = check_multi_head_attention_inputs(x_q, x_kv, params, num_heads, mask)
    xq, xkv = _leaf(x_q), _leaf(x_kv)
    p = {name: _leaf(params[name]) for name in MHA_PARAM_NAMES}
    # head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)
    q = split_heads(xq @ p["W_q"] + p["b_q"], num_heads)  # (B, H, Tq, Dh)
    k = split_heads(xkv @ p["W_k"] + p["b_k"], num_heads)  # (B, H, Tk, Dh)
    v = split_heads(xkv @ p["W_v"] + p["b_v"], num_heads)  # (B, H, Tk, Dh)
    head_mask = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))[..., None, :, :]
    # MultiHead(Q, K, V) = Concat(head_1, …, head_H) W^O
    heads = merge_heads(_attention(q, k, v, head_mask))  # (B, Tq, D)
    out = heads @ p["W_o"] + p["b_o"]  # (B, Tq, D)
    return out.detach().numpy(), Cache((xq, xkv) + tuple(p[name] for name in MHA_PARAM_NAMES), out)


def multi_head_attention_backward(dout, cache):
    """Return (dx_q, dx_kv, grads) with grads keyed like params."""
    dx_q, dx_kv, *dparams = _gradients(dout, cache)
    return dx_q, dx_kv, dict(zip(MHA_PARAM_NAMES, dparams))


# ----------------------------------------------------------------------------------------------
# Where the scratch weights live in torch.nn.MultiheadAttention
# ----------------------------------------------------------------------------------------------


def to_torch_multi_head_attention(params, num_heads):
    """A `torch.nn.MultiheadAttention(batch_first=True)` computing what scratch computes with `params`.

    torch stores y = x Wᵀ + b with W of shape (out, in), so every scratch (in, out) matrix is
    transposed; the three input projections are stacked in one `in_proj_weight` of shape (3D, D),
    rows [0, D) for queries, [D, 2D) for keys, [2D, 3D) for values. Within each block, head h
    owns rows h·Dh … (h+1)·Dh − 1: the same split as scratch's columns.
    Note torch's boolean `attn_mask` means True = *blocked*: pass `~mask`.
    """
    d = params["W_q"].shape[0]
    dtype = torch.from_numpy(np.asarray(params["W_q"])).dtype
    layer = torch.nn.MultiheadAttention(d, num_heads, dropout=0.0, bias=True, batch_first=True, dtype=dtype)
    t = lambda name: torch.from_numpy(np.asarray(params[name]))  # noqa: E731
    with torch.no_grad():
        layer.in_proj_weight.copy_(torch.cat([t("W_q").T, t("W_k").T, t("W_v").T], dim=0))  # (3D, D)
        layer.in_proj_bias.copy_(torch.cat([t("b_q"), t("b_k"), t("b_v")]))  # (3D,)
        layer.out_proj.weight.copy_(t("W_o").T)  # (D, D)
        layer.out_proj.bias.copy_(t("b_o"))  # (D,)
    return layer


def from_torch_multi_head_attention(layer):
    """The scratch parameter dict of a `torch.nn.MultiheadAttention` (the inverse of the above)."""
    if layer.in_proj_weight is None or layer.in_proj_bias is None:
        raise ValueError("layer must have packed input projections with biases (kdim = vdim = embed_dim, bias=True)")
    w_q, w_k, w_v = layer.in_proj_weight.detach().chunk(3, dim=0)  # (D, D) each
    b_q, b_k, b_v = layer.in_proj_bias.detach().chunk(3)  # (D,) each
    tensors = {
        "W_q": w_q.T, "W_k": w_k.T, "W_v": w_v.T, "W_o": layer.out_proj.weight.detach().T,
        "b_q": b_q, "b_k": b_k, "b_v": b_v, "b_o": layer.out_proj.bias.detach(),
    }
    return {name: tensors[name].contiguous().numpy().copy() for name in MHA_PARAM_NAMES}
