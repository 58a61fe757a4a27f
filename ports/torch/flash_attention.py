"""FlashAttention in PyTorch: scratch/flash_attention.py's names on `torch.nn.functional.scaled_dot_product_attention`.

On the CPU, PyTorch dispatches F.scaled_dot_product_attention to its fused FlashAttention kernel
(`aten::_scaled_dot_product_flash_attention_for_cpu`, the same tiled online softmax as scratch's
forward, written in C++ with its backward `_scaled_dot_product_flash_attention_for_cpu_backward`)
whenever the inputs allow it: 4-D (B, H, T, d), no mask tensor, no dropout, and d_k = d_v. Other
shapes take PyTorch's math path, which is plain attention: the result is the same, the memory is
not. The leading axes are folded into (B', 1) here so that any batch shape reaches the fused kernel.

The kernel picks its own block sizes (from T and d, not from the caller): `block_q` and `block_k`
are accepted for scratch's signature and checked, but change nothing. `is_causal=True` is
PyTorch's top-left aligned lower triangle, scratch's causal_mask for Tq = Tk. The backward is autograd.
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from scratch.flash_attention import check_flash_arguments

__all__ = ["flash_attention_forward", "flash_attention_backward"]


class Cache(NamedTuple):
    inputs: tuple  # the leaf tensors (q, k, v) the gradients are taken with respect to
    out: torch.Tensor  # the output, still attached to its graph, shape (..., Tq, dv)


def _leaf(x):
    return torch.tensor(x).requires_grad_(True)


def _four_d(x):
    """(..., T, d) → (B', 1, T, d): the layout the fused kernel takes."""
    return x.reshape(-1, 1, *x.shape[-2:])


def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    """softmax(QKᵀ/√d_k) V for q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv), causal as causal_mask."""
    q, k, v = check_flash_arguments(q, k, v, causal, block_q, block_k)
    inputs = (_leaf(q), _leaf(k), _leaf(v))
    if k.shape[-2] == 0:  # no key: every row attends to nothing and gives 0 (PyTorch's kernels refuse Tk = 0)
        out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=inputs[0].dtype)  # (..., Tq, dv), no graph
    else:
        tq, dv = q.shape[-2], v.shape[-1]
        # Eq. (1), Vaswani et al. 2017, by the fused kernel: softmax(QKᵀ / √d_k) V
        out = F.scaled_dot_product_attention(*(_four_d(t) for t in inputs), is_causal=bool(causal))  # (B', 1, Tq, dv)
        out = out.reshape(*q.shape[:-2], tq, dv)  # (..., Tq, dv)
    return out.detach().numpy().copy(), Cache(inputs, out)


def flash_attention_backward(dout, cache):
    """Return (dq, dk, dv) by autograd through the kernel's own backward."""
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    if not cache.out.requires_grad:  # Tk = 0: the output depends on nothing
        return tuple(np.zeros(x.shape, dtype=dout.dtype) for x in cache.inputs)
    grads = torch.autograd.grad(cache.out, cache.inputs, grad_outputs=torch.as_tensor(dout, dtype=cache.out.dtype),
                                allow_unused=True)
    dq, dk, dv = (np.zeros(x.shape, dtype=dout.dtype) if g is None else g.numpy() for x, g in zip(cache.inputs, grads))
    return dq, dk, dv
