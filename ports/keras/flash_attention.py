"""FlashAttention in Keras 3: scratch/flash_attention.py's tiled forward in keras.ops, recorded by `record`.

Keras has `keras.ops.dot_product_attention(..., flash_attention=True)`, but it reaches a fused
kernel only on the JAX backend on a GPU (cuDNN) and the PyTorch backend; on the TensorFlow backend,
the one this project runs, it computes the plain softmax(QKᵀ/√d_k) V. So this port is scratch's
Algorithm 1 in backend-neutral keras.ops: the running row maximum m, the row sum ℓ and the
unnormalised output Õ, rescaled by α = exp(m − m') when the maximum grows. The backward is
`gradients` (ports/keras/autodiff.py), autograd through the loop, which keeps every block, unlike
scratch's recomputing Algorithm 2. The running maximum is a shift that cancels, so it carries no
gradient. Shape letters as in scratch.
"""

import math

from keras import ops

from ports.keras.autodiff import gradients, record
from scratch.flash_attention import causal_block_mask, check_flash_arguments, key_blocks_seen

__all__ = ["flash_attention_forward", "flash_attention_backward"]


def _flash(q, k, v, causal, block_q, block_k):
    """The tiled forward on tensors q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv)."""
    tq, tk = q.shape[-2], k.shape[-2]
    lead = tuple(q.shape[:-2])
    q_scaled = q * (1.0 / math.sqrt(q.shape[-1]))  # (..., Tq, dk)
    rows = []
    for r0 in range(0, tq, block_q):
        r1 = min(r0 + block_q, tq)
        q_i = q_scaled[..., r0:r1, :]  # (..., Br, dk)
        m_i = ops.full((*lead, r1 - r0), -math.inf, dtype=q.dtype)  # (..., Br)
        l_i = ops.zeros((*lead, r1 - r0), dtype=q.dtype)  # (..., Br)
        o_i = ops.zeros((*lead, r1 - r0, v.shape[-1]), dtype=q.dtype)  # (..., Br, dv)
        for j in range(key_blocks_seen(r1, tk, block_k, causal)):
            c0, c1 = j * block_k, min((j + 1) * block_k, tk)
            # S_ij = Q_i K_jᵀ / √d_k
            s = ops.matmul(q_i, ops.swapaxes(k[..., c0:c1, :], -1, -2))  # (..., Br, Bc)
            if causal and c1 - 1 > r0:
                s = ops.where(causal_block_mask(r0, r1, c0, c1), s, -math.inf)
            # m_i⁽ʲ⁾ = max(m_i⁽ʲ⁻¹⁾, rowmax(S_ij))
            m_new = ops.stop_gradient(ops.maximum(m_i, ops.max(s, axis=-1)))  # (..., Br)
            # P̃_ij = exp(S_ij − m_i⁽ʲ⁾),  α = exp(m_i⁽ʲ⁻¹⁾ − m_i⁽ʲ⁾)
            p = ops.exp(s - m_new[..., None])  # (..., Br, Bc)
            alpha = ops.exp(m_i - m_new)  # (..., Br)
            # ℓ_i⁽ʲ⁾ = α ℓ_i⁽ʲ⁻¹⁾ + rowsum(P̃_ij),  Õ_i⁽ʲ⁾ = diag(α) Õ_i⁽ʲ⁻¹⁾ + P̃_ij V_j
            l_i = alpha * l_i + ops.sum(p, axis=-1)  # (..., Br)
            o_i = alpha[..., None] * o_i + ops.matmul(p, v[..., c0:c1, :])  # (..., Br, dv)
            m_i = m_new
        # O_i = diag(ℓ_i)⁻¹ Õ_i
        rows.append(o_i / l_i[..., None])  # (..., Br, dv)
    return ops.concatenate(rows, axis=-2)  # (..., Tq, dv)


def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    """softmax(QKᵀ/√d_k) V for q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv), block by block."""
    q, k, v = check_flash_arguments(q, k, v, causal, block_q, block_k)
    if q.shape[-2] == 0 or k.shape[-2] == 0:  # no query, or no key to attend to: the output is 0
        return record(lambda q, k, v: ops.zeros((*q.shape[:-1], v.shape[-1]), dtype=q.dtype), q, k, v)
    return record(lambda q, k, v: _flash(q, k, v, bool(causal), int(block_q), int(block_k)), q, k, v)


def flash_attention_backward(dout, cache):
    """Return (dq, dk, dv) from the recording."""
    dq, dk, dv = gradients(dout, cache)
    return dq, dk, dv
