"""FlashAttention (Dao et al. 2022; FlashAttention-2, Dao 2023) in NumPy: attention computed block by
block, equal to scaled_dot_product_attention, with memory linear in the sequence length.

Shape letters, as in scratch/attention.py:
    ...  any leading batch axes (batch, heads, or none)
    Tq   queries    Tk  keys    dk  query/key width    dv  value width
    Br   rows of a query block (block_q)    Bc  columns of a key block (block_k)

The plain attention keeps the (..., Tq, Tk) weights A = softmax(S), S = QKᵀ/√d_k, for its
backward: memory grows with T². Here the keys are streamed in blocks of Bc columns past each block
of Br queries, and only (Br, Bc) scores exist at a time. The softmax over a whole row is assembled
from its blocks by the online softmax (Milakov and Gimelshein 2018): keep, for each row, the
largest score seen so far m, the sum of exponentials ℓ = Σ exp(s − m) and the unnormalised output
Õ = Σ exp(s − m) v. When a new block raises the maximum from m to m', every term already summed was
taken relative to the old m, and exp(s − m') = exp(m − m') · exp(s − m): multiplying ℓ and Õ by
α = exp(m − m') turns them into exactly the sums relative to m'. This is an identity, not an
approximation, so after the last block Õ / ℓ is the softmax-weighted sum of the values, as exact as
the plain attention (only the order of the additions differs, so rounding differs in the last bits).

What is saved for the backward is the output O and, per row, the log-sum-exp L = m + log ℓ, from
which any block of weights is recomputed exactly: A_ij = exp(S_ij − L_i). The backward (FlashAttention-2,
Algorithm 2) recomputes each block instead of storing it: twice the products of the forward for
memory O(T·d) instead of O(T²).

Causal attention (`causal=True`, as `causal_mask`: query i sees keys j ≤ i) needs Tq = Tk. A key
block whose first column lies after a query block's last row is entirely masked: it is skipped,
about half of the work. Every row sees at least its own key, so no row is ever fully masked.
Blocks need not divide Tq or Tk: the last block of each is shorter.

Two cores: the (batch, head) pairs are shared out over threads (scratch/threads.py), outside the
math; the result does not change by one bit.
"""

from typing import NamedTuple

import numpy as np

from scratch.attention import MultiHeadAttentionCache, merge_heads, split_heads, transposed
from scratch.layers import LinearCache, linear_backward
from scratch.threads import over_threads, thread_count
from scratch.validate import MHA_PARAM_NAMES, check_attention_inputs, check_multi_head_attention_inputs


class FlashAttentionCache(NamedTuple):
    q: np.ndarray  # (..., Tq, dk)
    k: np.ndarray  # (..., Tk, dk)
    v: np.ndarray  # (..., Tk, dv)
    out: np.ndarray  # (..., Tq, dv)
    lse: np.ndarray  # (..., Tq), the row log-sum-exp L_i = log Σ_j exp(S_ij): nothing of size Tq × Tk
    scale: float
    causal: bool
    block_q: int
    block_k: int


def check_flash_arguments(q, k, v, causal, block_q, block_k):
    """The plain attention's input checks (the same messages), then causal and the two block sizes."""
    q, k, v, _ = check_attention_inputs(q, k, v, None)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs Tq = Tk (query i sees keys j ≤ i, as causal_mask), "
                         f"got q {q.shape} and k {k.shape}")
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}")
    return q, k, v


def causal_block_mask(r0, r1, c0, c1):
    """(r1 − r0, c1 − c0) bool, True where query row r may see key column c (c ≤ r): one block of causal_mask."""
    return np.arange(c0, c1)[None, :] <= np.arange(r0, r1)[:, None]  # (Br, Bc)


def contiguous_blocks(x, size):
    """x (..., T, d) cut along T into blocks of `size` rows (the last shorter), each copied contiguous."""
    return [np.ascontiguousarray(x[..., i:i + size, :]) for i in range(0, x.shape[-2], size)]


def key_blocks_seen(r1, tk, block_k, causal):
    """How many key blocks a query block ending before row r1 visits: all of them, or, causal, those
    starting at a column ≤ its last row r1 − 1 (the later ones lie wholly above the diagonal)."""
    if not causal:
        return -(-tk // block_k)  # ⌈Tk / Bc⌉
    return -(-min(tk, r1) // block_k)  # ⌈r1 / Bc⌉: the block holding column r1 − 1 is the last


def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64, threads=None):
    """softmax(QKᵀ/√d_k) V for q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv), block by block.

    Returns (out (..., Tq, dv), cache); equal to scaled_dot_product_attention_forward(q, k, v, mask)
    with mask = causal_mask(T) when `causal`, else None. FlashAttention-2, Algorithm 1.
    `threads` splits the leading axes over that many threads (None: the CPUs, for large inputs).
    """
    q, k, v = check_flash_arguments(q, k, v, causal, block_q, block_k)
    *lead, tq, dk = q.shape
    tk, dv = v.shape[-2:]
    scale = 1.0 / float(np.sqrt(dk))  # a Python float, so float32 stays float32
    # the same call on parts of (batch, heads), side by side, where each part's blocks are large enough to pay for it
    if (threads := thread_count(threads, lead, tq, tk, (block_q, block_k))) > 1:
        def part(q, k, v):
            out, cache = flash_attention_forward(q, k, v, causal, block_q, block_k, threads=1)
            return out, cache.lse
        out, lse = over_threads(part, (q, k, v), tuple(lead), threads)
        return out, FlashAttentionCache(q, k, v, out, lse, scale, bool(causal), int(block_q), int(block_k))
    out = np.empty((*lead, tq, dv), dtype=q.dtype)  # (..., Tq, dv)
    lse = np.empty((*lead, tq), dtype=q.dtype)  # (..., Tq)
    if tk == 0:  # no key at all: every row attends to nothing and gives 0, as scaled_dot_product_attention does
        out[...], lse[...] = 0.0, -np.inf
        return out, FlashAttentionCache(q, k, v, out, lse, scale, bool(causal), int(block_q), int(block_k))
    # BEGIN SOLUTION
    # HINT: for each query block keep m (running row maximum), l (running Σ exp) and o (running Σ exp·v); when a key
    # HINT: block raises m to m_new, multiply l and o by exp(m − m_new) before adding the block; divide o by l at the end.
    # The scores are held keys × queries, S_ijᵀ (..., Bc, Br): one column per query. Each query's maximum and sum over
    # its keys then run down a column, which NumPy computes as a few operations on whole rows of Br values, several
    # times faster than reducing each short row of Bc values on its own (the same numbers: a maximum does not
    # depend on the layout, and a sum only in its last bits).
    q_t = transposed(q * scale)  # (..., dk, Tq): Sᵀ = K (Q/√d_k)ᵀ, the scale applied once, not once per block
    # Each block copied once into its own contiguous array: a block sliced out of (..., T, d) steps over T·d values
    # between its (batch, head) pairs, and a matrix product over such views is slower than over the copies.
    k_blocks = contiguous_blocks(k, block_k)  # [(..., Bc, dk)], ⌈Tk / Bc⌉ of them
    v_blocks = contiguous_blocks(v, block_k)  # [(..., Bc, dv)]
    for r0 in range(0, tq, block_q):
        r1 = min(r0 + block_q, tq)
        q_i = np.ascontiguousarray(q_t[..., r0:r1])  # (..., dk, Br)
        m_i = np.full((*lead, r1 - r0), -np.inf, dtype=q.dtype)  # (..., Br), m⁽⁰⁾ = −∞
        l_i = np.zeros((*lead, r1 - r0), dtype=q.dtype)  # (..., Br), ℓ⁽⁰⁾ = 0
        o_i = np.zeros((*lead, r1 - r0, dv), dtype=q.dtype)  # (..., Br, dv), Õ⁽⁰⁾ = 0
        for j in range(key_blocks_seen(r1, tk, block_k, causal)):
            c0, c1 = j * block_k, min((j + 1) * block_k, tk)
            # S_ijᵀ = K_j (Q_i/√d_k)ᵀ
            s_t = k_blocks[j] @ q_i  # (..., Bc, Br)
            if causal and c1 - 1 > r0:  # the block crosses the diagonal: mask the keys after each query
                np.copyto(s_t, -np.inf, where=~causal_block_mask(r0, r1, c0, c1).T)
            # m_i⁽ʲ⁾ = max(m_i⁽ʲ⁻¹⁾, rowmax(S_ij)); finite, since key block 0 gives every row a key
            m_new = np.maximum(m_i, s_t.max(axis=-2))  # (..., Br)
            # P̃_ij = exp(S_ij − m_i⁽ʲ⁾), entries in [0, 1]: no overflow
            s_t -= m_new[..., None, :]
            p_t = np.exp(s_t, out=s_t)  # (..., Bc, Br)
            # α = exp(m_i⁽ʲ⁻¹⁾ − m_i⁽ʲ⁾) ≤ 1 rescales what was summed against the old maximum (exp(−∞) = 0 at j = 0)
            alpha = np.exp(m_i - m_new)  # (..., Br)
            # ℓ_i⁽ʲ⁾ = α ℓ_i⁽ʲ⁻¹⁾ + rowsum(P̃_ij)
            l_i = alpha * l_i + p_t.sum(axis=-2)  # (..., Br)
            # Õ_i⁽ʲ⁾ = diag(α) Õ_i⁽ʲ⁻¹⁾ + P̃_ij V_j
            o_i *= alpha[..., None]
            o_i += p_t.swapaxes(-1, -2) @ v_blocks[j]  # (..., Br, dv)
            m_i = m_new
        # O_i = diag(ℓ_i)⁻¹ Õ_i: the softmax's denominator, applied once at the end
        out[..., r0:r1, :] = o_i / l_i[..., None]  # (..., Br, dv)
        # L_i = m_i + log ℓ_i = log Σ_j exp(S_ij), all the backward needs to rebuild any block of A
        lse[..., r0:r1] = m_i + np.log(l_i)  # (..., Br)
    # END SOLUTION
    return out, FlashAttentionCache(q, k, v, out, lse, scale, bool(causal), int(block_q), int(block_k))


def flash_attention_backward(dout, cache, threads=None):
    """Return (dq, dk, dv) given dout (..., Tq, dv), recomputing each block of weights. FlashAttention-2, Algorithm 2."""
    q, k, v, out, lse, scale, causal, block_q, block_k = cache
    tq, tk = q.shape[-2], k.shape[-2]
    if (threads := thread_count(threads, q.shape[:-2], tq, tk, (block_q, block_k))) > 1:
        def part(dout, q, k, v, out, lse):
            return flash_attention_backward(dout, cache._replace(q=q, k=k, v=v, out=out, lse=lse), threads=1)
        return over_threads(part, (dout, q, k, v, out, lse), q.shape[:-2], threads)
    dq = np.zeros_like(q)  # (..., Tq, dk), summed over the key blocks
    dk = np.empty_like(k)  # (..., Tk, dk)
    dv = np.empty_like(v)  # (..., Tk, dv)
    # BEGIN SOLUTION
    # HINT: D = rowsum(dO ∘ O) first; then per key block j, per query block i that sees it: P = exp(S − L),
    # HINT: dV_j += Pᵀ dO_i, dP = dO_i V_jᵀ, dS = P ∘ (dP − D_i), dQ_i += dS K_j / √d_k, dK_j += dSᵀ Q_i / √d_k.
    # D_i = rowsum(dO_i ∘ O_i) = Σ_j A_ij (dO_i · v_j) = Σ_j A_ij dP_ij: the softmax backward's Σ term,
    # computed once from O instead of from every block of A
    d = np.vecdot(dout, out)  # (..., Tq)
    # every block in its own contiguous array, as in the forward
    q_blocks = contiguous_blocks(q * scale, block_q)  # [(..., Br, dk)]
    do_blocks = contiguous_blocks(dout, block_q)  # [(..., Br, dv)]
    for j, (k_j, v_j) in enumerate(zip(contiguous_blocks(k, block_k), contiguous_blocks(v, block_k))):
        c0, c1 = j * block_k, min((j + 1) * block_k, tk)  # k_j (..., Bc, dk), v_j (..., Bc, dv)
        k_jt, v_jt = transposed(k_j), transposed(v_j)  # (..., dk, Bc), (..., dv, Bc)
        dk_j = np.zeros_like(k_j)  # (..., Bc, dk)
        dv_j = np.zeros_like(v_j)  # (..., Bc, dv)
        # causal: the query blocks wholly before column c0 see none of this block; the first to see it holds row c0
        first = c0 // block_q if causal else 0
        for i in range(first, len(q_blocks)):
            r0, r1 = i * block_q, min((i + 1) * block_q, tq)
            q_i, do_i = q_blocks[i], do_blocks[i]  # (..., Br, dk), (..., Br, dv)
            # S_ij = Q_i K_jᵀ / √d_k, then P_ij = exp(S_ij − L_i): the forward's weights, recomputed exactly
            s = q_i @ k_jt  # (..., Br, Bc)
            if causal and c1 - 1 > r0:
                np.copyto(s, -np.inf, where=~causal_block_mask(r0, r1, c0, c1))  # exp(−∞) = 0: masked weights stay 0
            s -= lse[..., r0:r1, None]
            p = np.exp(s, out=s)  # (..., Br, Bc)
            # O = P V  ⇒  dV_j += P_ijᵀ dO_i  and  dP_ij = dO_i V_jᵀ
            dv_j += p.swapaxes(-1, -2) @ do_i  # (..., Bc, dv)
            dp = do_i @ v_jt  # (..., Br, Bc)
            # P = softmax(S) row by row  ⇒  dS_ij = P_ij ∘ (dP_ij − D_i)
            dp -= d[..., r0:r1, None]
            ds = np.multiply(p, dp, out=dp)  # (..., Br, Bc)
            # S = Q Kᵀ / √d_k  ⇒  dQ_i += dS_ij K_j / √d_k  and  dK_j += dS_ijᵀ Q_i / √d_k
            dq[..., r0:r1, :] += ds @ k_j  # (..., Br, dk), scaled once below
            dk_j += ds.swapaxes(-1, -2) @ q_i  # (..., Bc, dk), q_i already carries 1/√d_k
        dk[..., c0:c1, :] = dk_j
        dv[..., c0:c1, :] = dv_j
    dq *= scale
    # END SOLUTION
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Multi-head attention with the flash kernel: what a model calls when its config says attention="flash"
# ----------------------------------------------------------------------------------------------


def flash_multi_head_attention_forward(x_q, x_kv, params, num_heads, causal=False, block_q=64, block_k=64):
    """multi_head_attention_forward with no mask, or the causal one, each head attending with
    flash_attention_forward. Same params, same checks, same (out, cache) and backward's results."""
    x_q, x_kv, params, _ = check_multi_head_attention_inputs(x_q, x_kv, params, num_heads, None)
    q = split_heads(x_q @ params["W_q"] + params["b_q"], num_heads)  # (B, H, Tq, Dh)
    k = split_heads(x_kv @ params["W_k"] + params["b_k"], num_heads)  # (B, H, Tk, Dh)
    v = split_heads(x_kv @ params["W_v"] + params["b_v"], num_heads)  # (B, H, Tk, Dh)
    attended, attention_cache = flash_attention_forward(q, k, v, causal, block_q, block_k)  # (B, H, Tq, Dh)
    heads = merge_heads(attended)  # (B, Tq, D)
    out = heads @ params["W_o"] + params["b_o"]  # (B, Tq, D)
    return out, MultiHeadAttentionCache(x_q, x_kv, params, num_heads, heads, attention_cache)


def flash_multi_head_attention_backward(dout, cache):
    """Return (dx_q, dx_kv, grads) with grads keyed like params, as multi_head_attention_backward."""
    x_q, x_kv, params, num_heads, heads, attention_cache = cache
    grads = {}
    dheads, grads["W_o"], grads["b_o"] = linear_backward(dout, LinearCache(heads, params["W_o"]))  # (B, Tq, D)
    dq, dk, dv = flash_attention_backward(split_heads(dheads, num_heads), attention_cache)  # (B, H, T·, Dh)
    dq, dk, dv = merge_heads(dq), merge_heads(dk), merge_heads(dv)  # (B, T·, D)
    dx_q, grads["W_q"], grads["b_q"] = linear_backward(dq, LinearCache(x_q, params["W_q"]))  # (B, Tq, D)
    dx_k, grads["W_k"], grads["b_k"] = linear_backward(dk, LinearCache(x_kv, params["W_k"]))  # (B, Tk, D)
    dx_v, grads["W_v"], grads["b_v"] = linear_backward(dv, LinearCache(x_kv, params["W_v"]))  # (B, Tk, D)
    return dx_q, dx_k + dx_v, {name: grads[name] for name in MHA_PARAM_NAMES}
