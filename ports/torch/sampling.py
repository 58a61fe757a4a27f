"""Choosing the next token in PyTorch: scratch/sampling.py with torch ops.

Read it beside scratch/sampling.py: the same names, arguments and NumPy-in/NumPy-out interface,
and the same checks (scratch's own). `filter_logits` sorts as scratch does (a stable sort, so that
among equal logits at the top-p boundary the lower index stays); `sample` draws its one uniform
number per row from the NumPy generator it is given, as scratch does, so the same generator state
gives the same tokens here and there. `_filter_logits` works on tensors (GPT.generate uses it).

Shape letters: `...` any leading axes, V vocabulary.
"""

import math

import numpy as np
import torch

from scratch.sampling import _check_logits, check_filters

__all__ = ["filter_logits", "sample"]


def _filter_logits(logits, top_k=None, top_p=None):
    """logits (..., V), a tensor, with the entries top-k and then top-p remove set to −inf."""
    v = logits.shape[-1]
    if top_k is not None and top_k < v:
        # keep every entry ≥ the k-th largest: entries tied with it all stay
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None:
        # ascending order, the higher index first among ties (so it is the one removed first)
        order = torch.sort(-logits, dim=-1, stable=True).indices.flip(-1)  # (..., V)
        probs = torch.softmax(logits.gather(-1, order), dim=-1)  # (..., V), ascending
        # a token goes when the tokens no more likely than it, itself included, hold ≤ 1 − p of the mass
        remove_sorted = probs.cumsum(dim=-1) <= 1.0 - top_p  # (..., V)
        remove_sorted[..., -1] = False  # the most likely token always stays
        remove = torch.empty_like(remove_sorted).scatter_(-1, order, remove_sorted)  # vocabulary order
        logits = logits.masked_fill(remove, -math.inf)
    return logits


def filter_logits(logits, top_k=None, top_p=None):
    """logits (..., V) with the tokens that top-k, then top-p, remove set to −inf; a new array."""
    logits = _check_logits(logits)
    check_filters(top_k, top_p)
    return _filter_logits(torch.from_numpy(np.array(logits)), top_k, top_p).numpy()


def sample(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Token ids (...) drawn from softmax(filter_logits(logits / temperature)); temperature 0 is the argmax
    (and draws nothing: rng may then be None)."""
    logits = _check_logits(logits)
    check_filters(top_k, top_p, temperature)
    z = torch.from_numpy(np.array(logits))  # (..., V)
    if temperature == 0:
        return z.argmax(dim=-1).numpy()  # (...)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (or None at temperature 0), got {type(rng).__name__}")
    # p_v ∝ exp(z_v / τ) over the tokens the filters keep
    probs = torch.softmax(_filter_logits(z / float(temperature), top_k, top_p), dim=-1)  # (..., V)
    # inverse-CDF draw: the first v with P(token ≤ v) > u, u ~ U[0, 1) from the NumPy generator
    # (compared in float64, as NumPy compares scratch's float32 cdf with its float64 uniform numbers)
    cdf = probs.cumsum(dim=-1).double()  # (..., V)
    u = torch.from_numpy(rng.random(tuple(cdf.shape[:-1])))[..., None] * cdf[..., -1:]  # (..., 1)
    tokens = (cdf <= u).sum(dim=-1)  # (...)
    last_kept = probs.shape[-1] - 1 - (probs.flip(-1) > 0).to(torch.int64).argmax(dim=-1)  # (...), u rounding up
    return torch.minimum(tokens, last_kept).numpy()
