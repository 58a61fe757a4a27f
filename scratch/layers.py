"""Building blocks: the linear map and the activations, each a forward/backward pair.

Shape letters: `...` any leading (batch) axes, `I` input width, `O` output width.
Every backward takes the upstream gradient `dout` (the gradient of the loss with respect to
the forward's output) and returns the gradient with respect to each array input.
"""

from typing import NamedTuple

import numpy as np

from scratch.validate import as_float_array, check_linear_inputs, check_ndim


class LinearCache(NamedTuple):
    x: np.ndarray
    W: np.ndarray


def linear_forward(x, W, b):
    """y = x W + b for row vectors x of shape (..., I), W (I, O), b (O,)."""
    x, W, b = check_linear_inputs(x, W, b)
    # BEGIN SOLUTION
    # one (N, I) @ (I, O) product over every row: NumPy would otherwise multiply the (T, I) slices one by one
    y = (x.reshape(-1, x.shape[-1]) @ W).reshape(x.shape[:-1] + (W.shape[1],))  # (..., O)
    y += b
    # END SOLUTION
    return y, LinearCache(x, W)


def linear_backward(dout, cache):
    """Return (dx, dW, db) for y = x W + b."""
    x, W = cache
    # BEGIN SOLUTION
    # HINT: flatten the leading axes of x and dout to rows; dW sums one outer product per row.
    # ∂y/∂x = Wᵀ  ⇒  dx = dout Wᵀ
    dx = (dout.reshape(-1, dout.shape[-1]) @ W.T).reshape(x.shape)  # (..., I)
    # ∂y_o/∂W_io = x_i, summed over every row of the batch  ⇒  dW = xᵀ dout
    dW = x.reshape(-1, x.shape[-1]).T @ dout.reshape(-1, dout.shape[-1])  # (I, O)
    # b is added to every row  ⇒  db = Σ_rows dout
    db = dout.reshape(-1, dout.shape[-1]).sum(axis=0)  # (O,)
    # END SOLUTION
    return dx, dW, db


def relu_forward(x):
    """relu(x) = max(x, 0)."""
    x = as_float_array("x", x)
    # BEGIN SOLUTION
    y = np.maximum(x, 0.0)  # (...)
    # END SOLUTION
    return y, x


def relu_backward(dout, cache):
    """d relu/dx = 1 where x > 0, else 0 (0 at x = 0, as PyTorch does)."""
    x = cache
    # BEGIN SOLUTION
    return dout * (x > 0)
    # END SOLUTION


def leaky_relu_forward(x, negative_slope=0.01):
    """leaky_relu(x) = x for x > 0, negative_slope · x otherwise."""
    x = as_float_array("x", x)
    # BEGIN SOLUTION
    y = np.where(x > 0, x, negative_slope * x)  # (...)
    # END SOLUTION
    return y, (x, negative_slope)


def leaky_relu_backward(dout, cache):
    """d leaky_relu/dx = 1 where x > 0, else negative_slope."""
    x, negative_slope = cache
    # BEGIN SOLUTION
    return np.where(x > 0, dout, negative_slope * dout)
    # END SOLUTION


def tanh_forward(x):
    """tanh(x) = (eˣ − e⁻ˣ) / (eˣ + e⁻ˣ)."""
    x = as_float_array("x", x)
    # BEGIN SOLUTION
    y = np.tanh(x)  # (...)
    # END SOLUTION
    return y, y


def tanh_backward(dout, cache):
    """d tanh/dx = 1 − tanh²(x), written with the saved output y."""
    y = cache
    # BEGIN SOLUTION
    return dout * (1.0 - y * y)
    # END SOLUTION


def softplus(t):
    """log(1 + eᵗ) without overflow: max(t, 0) + log1p(e^{−|t|}). A helper, not a pair."""
    return np.maximum(t, 0.0) + np.log1p(np.exp(-np.abs(t)))


def sigmoid(t):
    """σ(t) without overflow and without checks: the helper the losses use on their logits."""
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_forward(x):
    """σ(x) = 1 / (1 + e⁻ˣ), computed without overflow for any |x|."""
    x = as_float_array("x", x)
    # BEGIN SOLUTION
    # HINT: exp of a large positive number overflows; only ever exponentiate −|x|.
    # For x ≥ 0 use 1 / (1 + e⁻ˣ); for x < 0 the equal form eˣ / (1 + eˣ). Both exponentiate −|x| ≤ 0.
    e = np.exp(-np.abs(x))  # (...), in (0, 1]
    y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))  # (...)
    # END SOLUTION
    return y, y


def sigmoid_backward(dout, cache):
    """dσ/dx = σ(x) (1 − σ(x)), written with the saved output y."""
    y = cache
    # BEGIN SOLUTION
    return dout * y * (1.0 - y)
    # END SOLUTION


def embedding_forward(ids, table):
    """y = table[ids]: each token id picks its row of the (V, D) table. ids: integers of any shape (...)."""
    table = as_float_array("table", table)
    check_ndim("table", table, 2, "(V, D)")
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be an integer array, got dtype {ids.dtype} with shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"ids must lie in [0, V={table.shape[0]}) for table {table.shape}, got values in "
                         f"[{ids.min()}, {ids.max()}]")
    # BEGIN SOLUTION
    y = table[ids]  # (..., D)
    # END SOLUTION
    return y, (ids, table.shape)


def embedding_backward(dout, cache):
    """dtable: row v collects the gradient of every position whose id is v (a sum, not an average)."""
    ids, shape = cache
    # BEGIN SOLUTION
    # HINT: one id can occur many times in a batch; plain fancy-index assignment keeps only one of them.
    # y[p] = table[ids[p]]  ⇒  dtable[v] = Σ_{p: ids[p] = v} dout[p]
    dtable = np.zeros(shape, dtype=dout.dtype)  # (V, D)
    np.add.at(dtable, ids.reshape(-1), dout.reshape(-1, shape[1]))  # unbuffered: repeated ids add up
    # END SOLUTION
    return dtable


def dropout_forward(x, p, rng):
    """Inverted dropout: zero each entry with probability p and scale the rest by 1/(1 − p).

    The expectation is unchanged, so nothing needs rescaling at test time. `rng` (a
    np.random.Generator) draws the mask; p = 0 or rng = None is the identity (evaluation).
    """
    x = as_float_array("x", x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must lie in [0, 1), got {p!r}")
    if p == 0.0 or rng is None:
        return x, None
    keep = (rng.random(x.shape) >= p).astype(x.dtype)  # (...), 1 with probability 1 − p
    keep *= 1.0 / (1.0 - p)  # the surviving entries are scaled up
    return x * keep, keep


def dropout_backward(dout, cache):
    """The same mask, applied to the gradient; the identity when the forward was."""
    return dout if cache is None else dout * cache
