"""Choosing the next token in TensorFlow 2: scratch/sampling.py with tf ops.

Read it beside scratch/sampling.py: the same names, arguments and NumPy-in/NumPy-out interface,
and scratch's own checks. The top-p sort is stable, as scratch's (among equal logits at the
boundary the lower index stays); `sample` draws its one uniform number per row from the NumPy
generator it is given, so the same generator state gives scratch's tokens. `_filter_logits` works
on tensors (the GPT tf.Module's generate uses it).

Shape letters: `...` any leading axes, V vocabulary.
"""

import math

import numpy as np
import tensorflow as tf

from scratch.sampling import _check_logits, check_filters

__all__ = ["filter_logits", "sample"]


def _filter_logits(logits, top_k=None, top_p=None):
    """logits (..., V), a tensor, with the entries top-k and then top-p remove set to −inf."""
    v = logits.shape[-1]
    neg_inf = tf.constant(-math.inf, logits.dtype)
    if top_k is not None and top_k < v:
        # keep every entry ≥ the k-th largest: entries tied with it all stay
        kth = tf.math.top_k(logits, top_k).values[..., -1:]  # (..., 1)
        logits = tf.where(logits < kth, neg_inf, logits)
    if top_p is not None:
        # ascending order, the higher index first among ties (so it is the one removed first)
        order = tf.reverse(tf.argsort(-logits, axis=-1, stable=True), axis=[-1])  # (..., V)
        probs = tf.nn.softmax(tf.gather(logits, order, batch_dims=len(logits.shape) - 1), axis=-1)  # ascending
        # a token goes when the tokens no more likely than it, itself included, hold ≤ 1 − p of the mass
        remove_sorted = tf.cumsum(probs, axis=-1) <= 1.0 - top_p  # (..., V)
        keep_top = tf.concat([tf.ones_like(remove_sorted[..., :-1]), tf.zeros_like(remove_sorted[..., -1:])], -1)
        remove_sorted = remove_sorted & keep_top  # the most likely token always stays
        # back to vocabulary order: position order[j] gets remove_sorted[j] (argsort of a permutation inverts it)
        remove = tf.gather(remove_sorted, tf.argsort(order, axis=-1), batch_dims=len(logits.shape) - 1)
        logits = tf.where(remove, neg_inf, logits)
    return logits


def _first_argmax(x):
    """The index of the largest entry along the last axis, the first among ties (tf.argmax leaves ties open)."""
    v = x.shape[-1]
    at_max = tf.equal(x, tf.reduce_max(x, axis=-1, keepdims=True))  # (..., V)
    return tf.reduce_min(tf.where(at_max, tf.range(v, dtype=tf.int64), tf.constant(v, tf.int64)), axis=-1)  # (...)


def filter_logits(logits, top_k=None, top_p=None):
    """logits (..., V) with the tokens that top-k, then top-p, remove set to −inf; a new array."""
    logits = _check_logits(logits)
    check_filters(top_k, top_p)
    return _filter_logits(tf.constant(logits), top_k, top_p).numpy()


def sample(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Token ids (...) drawn from softmax(filter_logits(logits / temperature)); temperature 0 is the argmax
    (and draws nothing: rng may then be None)."""
    logits = _check_logits(logits)
    check_filters(top_k, top_p, temperature)
    z = tf.constant(logits)  # (..., V)
    if temperature == 0:
        return _first_argmax(z).numpy()  # (...), the first index among ties
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (or None at temperature 0), got {type(rng).__name__}")
    # p_v ∝ exp(z_v / τ) over the tokens the filters keep
    probs = tf.nn.softmax(_filter_logits(z / float(temperature), top_k, top_p), axis=-1)  # (..., V)
    # inverse-CDF draw: the first v with P(token ≤ v) > u, u ~ U[0, 1) from the NumPy generator
    # (compared in float64, as NumPy compares scratch's float32 cdf with its float64 uniform numbers)
    cdf = tf.cast(tf.cumsum(probs, axis=-1), tf.float64)  # (..., V)
    u = tf.constant(rng.random(tuple(cdf.shape[:-1])))[..., None] * cdf[..., -1:]  # (..., 1)
    tokens = tf.reduce_sum(tf.cast(cdf <= u, tf.int64), axis=-1)  # (...)
    last_kept = probs.shape[-1] - 1 - _first_argmax(tf.cast(tf.reverse(probs, [-1]) > 0, tf.int8))  # (...)
    return tf.minimum(tokens, last_kept).numpy()
