"""Batch norm in TensorFlow 2: the batch-norm part of scratch/layers.py with tf.nn.moments and
tf.nn.batch_normalization, the backward by tf.GradientTape.

Read it beside scratch/layers.py: the names, the arguments and the NumPy-in/NumPy-out interface
are the same, and the layout is scratch's (channels on axis 1). (The linear map and the
activations of scratch/layers.py are one tf call each, written inline by the other TF ports.)
tf.nn.moments gives the batch mean and the biased variance (divided by N), which is what the
normalisation uses; PyTorch's running variance takes the unbiased one, so
batch_norm_update_running applies Bessel's correction N / (N − 1) itself: TensorFlow has no
running-statistics rule of its own outside Keras (whose BatchNormalization keeps the biased one;
see ports/keras/layers.py).

tf.nn.batch_normalization computes the same map rearranged, x·s + (β − μ·s) with s = γ / √(σ² + ε).
That is a fine way to apply fixed statistics (batch_norm_eval uses it), but in training the tape
differentiates the rearranged form, whose terms x·s and μ·s are each |μ|/σ times larger than their
difference: on the checks' float32 cases its dγ and dx differed from scratch's by up to 1e-4 of
their scale (the float32 tolerance), against 1e-6 for Alg. 1 written out as scratch writes it,
(x − μ) / √(σ² + ε). So the training forward writes it out.

Shape letters as in scratch: B batch, C channels, H × W an image; N = B·H·W values per channel.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from scratch.validate import check_batch_norm_inputs, check_running_stats

__all__ = ["batch_norm_forward", "batch_norm_backward", "batch_norm_update_running", "batch_norm_eval"]


class BatchNormCache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    inputs: tuple  # x, γ, β
    out: tf.Tensor
    mean: np.ndarray  # (C,), the batch mean μ
    var: np.ndarray  # (C,), the batch's biased variance σ²
    count: int  # N, the values per channel the statistics were taken over


def _channel_axes(x):
    """The axes a channel's statistics run over, and the shape that broadcasts a (C,) tensor against x."""
    axes = [0] if len(x.shape) == 2 else [0, 2, 3]
    return axes, (1, x.shape[1]) + (1,) * (len(x.shape) - 2)


def batch_norm_forward(x, gamma, beta, eps=1e-5):
    """Training-mode batch norm of x (B, C) or (B, C, H, W): each channel normalised over every other axis.

    y = γ · (x − μ) / √(σ² + ε) + β with the batch's mean μ and biased variance σ² per channel.
    """
    x, gamma, beta = check_batch_norm_inputs(x, gamma, beta)
    axes, shape = _channel_axes(x)
    with tf.GradientTape() as tape:
        inputs = tuple(tf.constant(a) for a in (x, gamma, beta))
        tape.watch(inputs)
        xt, gt, bt = inputs
        # Alg. 1, Ioffe & Szegedy 2015: μ = (1/N) Σ x, σ² = (1/N) Σ (x − μ)²
        mean, var = tf.nn.moments(xt, axes=axes, keepdims=True)  # (1, C[, 1, 1]) each, σ² biased
        # x̂ = (x − μ) / √(σ² + ε), y = γ x̂ + β: written out, not tf.nn.batch_normalization (module docstring)
        x_hat = (xt - mean) * tf.math.rsqrt(var + eps)  # (B, C[, H, W])
        y = x_hat * tf.reshape(gt, shape) + tf.reshape(bt, shape)  # (B, C[, H, W])
    stats = (tf.reshape(mean, [-1]).numpy(), tf.reshape(var, [-1]).numpy())
    return y.numpy(), BatchNormCache(tape, inputs, y, *stats, x.size // x.shape[1])


def batch_norm_backward(dout, cache):
    """Return (dx, dgamma, dbeta)."""
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    grads = cache.tape.gradient(cache.out, cache.inputs, output_gradients=tf.constant(dout, dtype=cache.out.dtype))
    dx, dgamma, dbeta = (g.numpy() for g in grads)
    return dx, dgamma, dbeta


def batch_norm_update_running(running_mean, running_var, cache, momentum=0.1):
    """(new running_mean, new running_var), each (C,), from a batch_norm_forward cache; PyTorch's rule:
    r ← (1 − momentum) · r + momentum · batch statistic, the variance fed in unbiased, σ² · N / (N − 1)."""
    running_mean, running_var = check_running_stats(running_mean, running_var, cache.mean.shape[0], cache.mean.dtype)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum!r}")
    if cache.count < 2:
        raise ValueError(f"the running variance needs at least 2 values per channel (B·H·W ≥ 2), got {cache.count}")
    unbiased = tf.constant(cache.var) * (cache.count / (cache.count - 1.0))  # (C,), Bessel's correction
    new_mean = (1.0 - momentum) * tf.constant(running_mean) + momentum * tf.constant(cache.mean)  # (C,)
    new_var = (1.0 - momentum) * tf.constant(running_var) + momentum * unbiased  # (C,)
    return new_mean.numpy(), new_var.numpy()


def batch_norm_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Evaluation-mode batch norm: y = γ · (x − running_mean) / √(running_var + ε) + β, per channel."""
    x, gamma, beta = check_batch_norm_inputs(x, gamma, beta)
    running_mean, running_var = check_running_stats(running_mean, running_var, x.shape[1], x.dtype)
    _, shape = _channel_axes(x)
    r = lambda a: tf.reshape(tf.constant(a), shape)  # noqa: E731  (C,) → (1, C[, 1, 1])
    y = tf.nn.batch_normalization(tf.constant(x), r(running_mean), r(running_var), offset=r(beta), scale=r(gamma),
                                  variance_epsilon=eps)  # (B, C[, H, W])
    return y.numpy()
