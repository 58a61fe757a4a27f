"""FlashAttention in TensorFlow 2: scratch/flash_attention.py's tiled forward with tf ops, the backward by tf.GradientTape.

TensorFlow has no fused attention kernel on the CPU (its XLA and cuDNN paths are for GPUs), so this
port is scratch's Algorithm 1 line for line: each query block streams the key blocks, keeping the
running row maximum m, the row sum ℓ and the unnormalised output Õ, rescaled by α = exp(m − m')
whenever the maximum grows. The backward asks the tape, which differentiates through the loop: it
keeps every block's intermediate tensors, so its memory is that of the plain attention. That is
exactly why FlashAttention writes its backward by hand (scratch's Algorithm 2 recomputes the blocks).

The running maximum is only a shift that cancels in Õ / ℓ, so it carries no gradient (stop_gradient),
as in ports/tensorflow/attention.py's softmax. Shape letters as in scratch.
"""

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from scratch.flash_attention import causal_block_mask, check_flash_arguments, key_blocks_seen

__all__ = ["flash_attention_forward", "flash_attention_backward"]


class Cache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    inputs: tuple  # the tensors (q, k, v) the gradients are taken with respect to
    out: tf.Tensor  # (..., Tq, dv)


def _watched(tape, x):
    t = tf.constant(x)
    tape.watch(t)
    return t


def _flash(q, k, v, causal, block_q, block_k):
    """The tiled forward on tensors q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv)."""
    tq, tk = q.shape[-2], k.shape[-2]
    lead = tuple(q.shape[:-2])
    q_scaled = q * (1.0 / math.sqrt(q.shape[-1]))  # (..., Tq, dk)
    rows = []
    for r0 in range(0, tq, block_q):
        r1 = min(r0 + block_q, tq)
        q_i = q_scaled[..., r0:r1, :]  # (..., Br, dk)
        m_i = tf.fill((*lead, r1 - r0), tf.constant(-math.inf, q.dtype))  # (..., Br)
        l_i = tf.zeros((*lead, r1 - r0), q.dtype)  # (..., Br)
        o_i = tf.zeros((*lead, r1 - r0, v.shape[-1]), q.dtype)  # (..., Br, dv)
        for j in range(key_blocks_seen(r1, tk, block_k, causal)):
            c0, c1 = j * block_k, min((j + 1) * block_k, tk)
            # S_ij = Q_i K_jᵀ / √d_k
            s = tf.matmul(q_i, k[..., c0:c1, :], transpose_b=True)  # (..., Br, Bc)
            if causal and c1 - 1 > r0:
                s = tf.where(causal_block_mask(r0, r1, c0, c1), s, tf.constant(-math.inf, q.dtype))
            # m_i⁽ʲ⁾ = max(m_i⁽ʲ⁻¹⁾, rowmax(S_ij))
            m_new = tf.stop_gradient(tf.maximum(m_i, tf.reduce_max(s, axis=-1)))  # (..., Br)
            # P̃_ij = exp(S_ij − m_i⁽ʲ⁾),  α = exp(m_i⁽ʲ⁻¹⁾ − m_i⁽ʲ⁾)
            p = tf.exp(s - m_new[..., None])  # (..., Br, Bc)
            alpha = tf.exp(m_i - m_new)  # (..., Br)
            # ℓ_i⁽ʲ⁾ = α ℓ_i⁽ʲ⁻¹⁾ + rowsum(P̃_ij),  Õ_i⁽ʲ⁾ = diag(α) Õ_i⁽ʲ⁻¹⁾ + P̃_ij V_j
            l_i = alpha * l_i + tf.reduce_sum(p, axis=-1)  # (..., Br)
            o_i = alpha[..., None] * o_i + tf.matmul(p, v[..., c0:c1, :])  # (..., Br, dv)
            m_i = m_new
        # O_i = diag(ℓ_i)⁻¹ Õ_i
        rows.append(o_i / l_i[..., None])  # (..., Br, dv)
    return tf.concat(rows, axis=-2)  # (..., Tq, dv)


def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    """softmax(QKᵀ/√d_k) V for q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv), block by block."""
    q, k, v = check_flash_arguments(q, k, v, causal, block_q, block_k)
    with tf.GradientTape() as tape:
        inputs = tuple(_watched(tape, x) for x in (q, k, v))
        if q.shape[-2] == 0 or k.shape[-2] == 0:  # no query, or no key to attend to: the output is 0
            out = tf.zeros((*q.shape[:-1], v.shape[-1]), q.dtype)
        else:
            out = _flash(*inputs, bool(causal), int(block_q), int(block_k))
    return out.numpy(), Cache(tape, inputs, out)


def flash_attention_backward(dout, cache):
    """Return (dq, dk, dv) from the tape."""
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    grads = cache.tape.gradient(cache.out, cache.inputs, output_gradients=tf.constant(dout, dtype=cache.out.dtype))
    dq, dk, dv = (np.zeros(x.shape, dtype=dout.dtype) if g is None else g.numpy() for x, g in zip(cache.inputs, grads))
    return dq, dk, dv
