"""Choosing the next token in Keras 3: scratch/sampling.py with keras.ops.

Read it beside scratch/sampling.py: the same names, arguments and NumPy-in/NumPy-out interface,
and scratch's own checks. The top-p sort keeps scratch's order (ascending, the higher index first
among equal logits, so the lower index stays at the boundary); `sample` draws its one uniform
number per row from the NumPy generator it is given, so the same generator state gives scratch's
tokens. `_filter_logits` works on tensors (the GPT model's generate uses it).

Shape letters: `...` any leading axes, V vocabulary.
"""

import math

import numpy as np
from keras import ops

from scratch.sampling import _check_logits, check_filters

__all__ = ["filter_logits", "sample"]


def _first_argmax(x):
    """The index of the largest entry along the last axis, the first among ties."""
    v = x.shape[-1]
    at_max = ops.equal(x, ops.max(x, axis=-1, keepdims=True))  # (..., V)
    return ops.min(ops.where(at_max, ops.arange(v), v), axis=-1)  # (...)


def _filter_logits(logits, top_k=None, top_p=None):
    """logits (..., V), a tensor, with the entries top-k and then top-p remove set to −inf."""
    v = logits.shape[-1]
    if top_k is not None and top_k < v:
        # keep every entry ≥ the k-th largest: entries tied with it all stay
        kth = ops.top_k(logits, top_k, sorted=True)[0][..., -1:]  # (..., 1)
        logits = ops.where(logits < kth, -math.inf, logits)
    if top_p is not None:
        # Ascending order, the higher index first among ties (so it is the one removed first), as scratch
        # sorts. keras.ops.argsort promises no order among ties, so each entry's place is counted instead:
        # place(v) = #{u : z_u < z_v} + #{u > v : z_u = z_v}, a permutation of 0 … V − 1 (V² comparisons).
        a, b = logits[..., :, None], logits[..., None, :]  # (..., V, 1), (..., 1, V): entry v against entry u
        later = ops.arange(v)[None, :] > ops.arange(v)[:, None]  # (V, V), u > v
        place = ops.sum(ops.cast(ops.logical_or(b < a, ops.logical_and(b == a, later)), "int32"), axis=-1)  # (..., V)
        order = ops.argsort(place, axis=-1)  # (..., V): order[j] is the entry in place j (places are distinct)
        probs = ops.softmax(ops.take_along_axis(logits, order, axis=-1), axis=-1)  # (..., V), ascending
        # a token goes when the tokens no more likely than it, itself included, hold ≤ 1 − p of the mass
        remove_sorted = ops.cumsum(probs, axis=-1) <= 1.0 - top_p  # (..., V)
        remove_sorted = ops.logical_and(remove_sorted, ops.arange(v) < v - 1)  # the most likely token stays
        # back to vocabulary order: entry v is in place(v)
        remove = ops.take_along_axis(remove_sorted, place, axis=-1)
        logits = ops.where(remove, -math.inf, logits)
    return logits


def filter_logits(logits, top_k=None, top_p=None):
    """logits (..., V) with the tokens that top-k, then top-p, remove set to −inf; a new array."""
    logits = _check_logits(logits)
    check_filters(top_k, top_p)
    return ops.convert_to_numpy(_filter_logits(ops.convert_to_tensor(logits), top_k, top_p))


def sample(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Token ids (...) drawn from softmax(filter_logits(logits / temperature)); temperature 0 is the argmax
    (and draws nothing: rng may then be None)."""
    logits = _check_logits(logits)
    check_filters(top_k, top_p, temperature)
    z = ops.convert_to_tensor(logits)  # (..., V)
    if temperature == 0:
        return ops.convert_to_numpy(_first_argmax(z)).astype(np.int64)  # (...), the first index among ties
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (or None at temperature 0), got {type(rng).__name__}")
    # p_v ∝ exp(z_v / τ) over the tokens the filters keep
    probs = ops.softmax(_filter_logits(z / float(temperature), top_k, top_p), axis=-1)  # (..., V)
    # inverse-CDF draw: the first v with P(token ≤ v) > u, u ~ U[0, 1) from the NumPy generator
    # (compared in float64, as NumPy compares scratch's float32 cdf with its float64 uniform numbers)
    cdf = ops.cast(ops.cumsum(probs, axis=-1), "float64")  # (..., V)
    u = ops.convert_to_tensor(rng.random(tuple(cdf.shape[:-1])))[..., None] * cdf[..., -1:]  # (..., 1)
    tokens = ops.sum(ops.cast(cdf <= u, "int64"), axis=-1)  # (...)
    last_kept = probs.shape[-1] - 1 - _first_argmax(ops.cast(ops.flip(probs, axis=-1) > 0, "int32"))  # (...)
    return ops.convert_to_numpy(ops.minimum(tokens, ops.cast(last_kept, "int64")))
