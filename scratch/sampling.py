"""Choosing the next token from a model's logits: temperature, top-k, top-p (nucleus), and the draw.

Shape letters: `...` any leading axes (one row per sequence being generated), V vocabulary.

    sample(logits) = a draw from softmax(filter_logits(logits / temperature, top_k, top_p))

Temperature rescales the logits before anything else, as Hugging Face's generate does: below 1 it
sharpens the distribution (towards the argmax at 0), above 1 it flattens it. Top-k (Fan et al.
2018) keeps the k most likely tokens; top-p (Holtzman et al. 2020) keeps the most likely tokens
whose probabilities add up to at least p, so the number kept follows the model's confidence.
Both remove a token by setting its logit to −inf, which the softmax turns into probability 0.
They equal transformers' TopKLogitsWarper and TopPLogitsWarper (checks/test_gpt_math.py).
"""

import numbers

import numpy as np

from scratch.attention import softmax_forward
from scratch.validate import as_float_array


def _check_logits(logits):
    logits = as_float_array("logits", logits)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape (..., V) with V ≥ 1, got shape {logits.shape}")
    if np.isnan(logits).any() or np.isposinf(logits).any():
        raise ValueError(f"logits of shape {logits.shape} must be finite or −inf (a removed token), got NaN or +inf")
    if (np.isneginf(logits).all(axis=-1)).any():
        raise ValueError(f"logits of shape {logits.shape} have a row that is all −inf: no token is left to draw")
    return logits


def check_filters(top_k=None, top_p=None, temperature=1.0):
    """top_k an int ≥ 1 (or None), 0 < top_p ≤ 1 (or None), temperature a number ≥ 0; raise ValueError otherwise."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an int ≥ 1 (or None for no top-k), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be a number in (0, 1] (or None for no top-p), got {top_p!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0.0 \
            or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number ≥ 0 (0 = argmax), got {temperature!r}")


def filter_logits(logits, top_k=None, top_p=None):
    """logits (..., V) with the tokens that top-k, then top-p, remove set to −inf; a new array.

    top-k keeps every entry ≥ the k-th largest, so a tie at the boundary keeps all its members
    (more than k tokens). top-p then keeps the smallest set of most likely tokens whose softmax mass
    (over what top-k left) reaches top_p, and always at least the most likely one. Among equal
    logits at the top-p boundary the lower index is kept (any choice keeps the same mass).
    """
    logits = _check_logits(logits)
    check_filters(top_k, top_p)
    out = logits.copy()  # (..., V)
    v = out.shape[-1]
    # BEGIN SOLUTION
    if top_k is not None and top_k < v:
        # HINT: find the k-th largest value of each row (np.partition), then remove what lies strictly below it.
        kth = np.partition(out, v - top_k, axis=-1)[..., v - top_k, None]  # (..., 1), the k-th largest
        out[out < kth] = -np.inf  # "<", not "≤": ties with the k-th largest stay
    if top_p is not None:
        # HINT: sort from least to most likely, add up the probabilities, and remove while the sum ≤ 1 − p.
        # Ascending order; among ties the higher index comes first, so it is the one removed first.
        order = np.argsort(-out, axis=-1, kind="stable")[..., ::-1]  # (..., V)
        probs, _ = softmax_forward(np.take_along_axis(out, order, axis=-1))  # (..., V), ascending
        # A token may go when the tokens less likely than it, itself included, hold ≤ 1 − p of the mass:
        # what stays above it then still holds ≥ p. Written from the bottom, as transformers does, so
        # that the two round alike.
        remove_sorted = np.cumsum(probs, axis=-1) <= 1.0 - top_p  # (..., V)
        remove_sorted[..., -1] = False  # the most likely token always stays: never an empty set
        remove = np.empty_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)  # back to vocabulary order
        out[remove] = -np.inf
    # END SOLUTION
    return out


def sample(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Token ids (...) drawn from softmax(filter_logits(logits / temperature)) for logits (..., V).

    temperature 0 is the argmax (greedy decoding; the first index among ties), drawing nothing
    from `rng` (which may then be None); otherwise one uniform number per row is drawn from `rng`
    (a np.random.Generator), so the same generator state gives the same tokens.
    """
    logits = _check_logits(logits)
    check_filters(top_k, top_p, temperature)
    if temperature == 0:
        return logits.argmax(axis=-1)  # (...)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (or None at temperature 0), got {type(rng).__name__}")
    # BEGIN SOLUTION
    # HINT: temperature first (on the logits, not on the probabilities), then filter, softmax, and
    # HINT: invert the cumulative distribution at one uniform number per row (rng.random).
    # p_v ∝ exp(z_v / τ) over the tokens the filters keep
    z = filter_logits(logits / float(temperature), top_k, top_p)  # (..., V)
    probs, _ = softmax_forward(z)  # (..., V), 0 where removed
    # inverse-CDF draw: the first v with P(token ≤ v) > u, u ~ U[0, 1)
    cdf = np.cumsum(probs, axis=-1)  # (..., V)
    u = rng.random(cdf.shape[:-1])[..., None] * cdf[..., -1:]  # (..., 1), scaled: cdf[-1] may be 1 − 1e-16
    tokens = (cdf <= u).sum(axis=-1)  # (...); a removed token adds 0 to the cdf, so it is never the first above u
    last_kept = probs.shape[-1] - 1 - np.argmax(probs[..., ::-1] > 0, axis=-1)  # (...), guards u rounding up to cdf[-1]
    tokens = np.minimum(tokens, last_kept)
    # END SOLUTION
    return tokens
