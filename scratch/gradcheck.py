"""Gradient checking: is a hand-written backward the derivative of its forward?

Two tools, both in float64 (central differences in float32 drown in rounding error):

* `numerical_gradient(f, x)`: the full gradient of a scalar function by central differences,
  one coordinate at a time. Exact but slow: 2·x.size evaluations.
* `check_vjp(forward, backward, inputs, rng)`: one random upstream gradient g and one random
  direction v for every input. The backward gives the vector-Jacobian product gᵀJ; its dot
  product with v must equal the directional derivative of ⟨g, f(x)⟩ along v, which central
  differences give from two evaluations. A random g matters: with a `.sum()` loss (g = 1) the
  gradient of sum(softmax(x)) is zero whatever the backward computes, and a broken backward
  passes. A random v matters too: it weighs every coordinate at once, so no wrong entry hides.
"""

from typing import NamedTuple

import numpy as np


def relative_error(a, b, floor=1e-12):
    """max |a − b| / max(|a| + |b|, floor): scale-free, 0 when equal, ≤ 1 always."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = np.maximum(np.abs(a) + np.abs(b), floor)
    return float(np.max(np.abs(a - b) / denominator)) if a.size else 0.0


def numerical_gradient(f, x, eps=1e-6):
    """∂f/∂x by central differences: (f(x + ε e_i) − f(x − ε e_i)) / 2ε for every coordinate i.

    `f` maps a float64 array shaped like `x` to a scalar. Error O(ε²) from truncation plus
    O(machine-ε / ε) from rounding, about 1e-10 relative at ε = 1e-6 in float64.
    """
    x = np.array(x, dtype=np.float64)  # a copy we may perturb
    grad = np.zeros_like(x)
    flat, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        f_plus = float(f(x))
        flat[i] = saved - eps
        f_minus = float(f(x))
        flat[i] = saved
        flat_grad[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


class VJPCheck(NamedTuple):
    analytic: float  # Σ_inputs ⟨backward(g), v⟩
    numeric: float  # (⟨g, f(x + εv)⟩ − ⟨g, f(x − εv)⟩) / 2ε
    error: float  # relative_error(analytic, numeric)


def check_vjp(forward, backward, inputs, rng, eps=1e-6):
    """Compare a backward with central differences along one random direction.

    forward(inputs) -> (out, cache), with `inputs` a dict of float64 arrays;
    backward(dout, cache) -> dict of gradients with the same keys as `inputs`.
    Returns a VJPCheck; a correct backward gives an error near 1e-9 or below.
    """
    inputs = {name: np.asarray(x, dtype=np.float64) for name, x in inputs.items()}
    out, cache = forward(inputs)
    g = rng.standard_normal(np.shape(out))  # random upstream gradient
    directions = {name: rng.standard_normal(x.shape) for name, x in inputs.items()}
    grads = backward(g, cache)
    if set(grads) != set(inputs):
        raise ValueError(f"backward returned gradients for {sorted(grads)}, expected {sorted(inputs)}")
    for name, x in inputs.items():
        if np.shape(grads[name]) != x.shape:
            raise ValueError(f"gradient for {name} must have shape {x.shape}, got shape {np.shape(grads[name])}")
    analytic = sum(float(np.sum(grads[name] * directions[name])) for name in inputs)

    def along(t):  # ⟨g, f(x + t v)⟩
        moved = {name: x + t * directions[name] for name, x in inputs.items()}
        return float(np.sum(g * forward(moved)[0]))

    numeric = (along(eps) - along(-eps)) / (2.0 * eps)
    return VJPCheck(analytic, numeric, relative_error(analytic, numeric))
