"""Batch norm in Keras 3: the batch-norm part of scratch/layers.py with keras.ops, and where each
array lives in `keras.layers.BatchNormalization`.

Read it beside scratch/layers.py: the names, the arguments and the NumPy-in/NumPy-out interface
are the same, and the layout is scratch's (channels on axis 1); the forward is `ops.moments` and
`ops.batch_normalization`, differentiated by `record` / `gradients` (ports/keras/autodiff.py).
The functions keep PyTorch's conventions, as scratch does. Keras's own layer has three others,
and the converters translate them:

- Channels last: `BatchNormalization(axis=-1)` is the default, for NHWC images.
- Momentum the other way round: Keras keeps moving ← momentum · moving + (1 − momentum) · batch,
  PyTorch r ← (1 − momentum) · r + momentum · batch; Keras's default 0.99 is PyTorch's 0.01, and
  PyTorch's default 0.1 is Keras's 0.9. `to_keras_batch_norm` takes PyTorch's and passes 1 − momentum.
- The biased variance in the moving average: Keras feeds its moving_variance the batch's σ²
  divided by N, PyTorch (and scratch's batch_norm_update_running) the unbiased σ² · N / (N − 1).
  No momentum makes the two agree; after a step on N values per channel Keras's moving variance
  falls short of PyTorch's by momentum · σ² / (N − 1). The converters move the arrays as they are
  and cannot fix that: a Keras layer trained by `fit` has Keras's moving variance.

Also: Keras's default epsilon is 1e-3, PyTorch's 1e-5; the converter passes scratch's. And on
TensorFlow `ops.batch_normalization` is tf.nn.batch_normalization, the same map rearranged as
x·s + (β − μ·s), s = γ / √(σ² + ε): batch_norm_eval uses it, but differentiated in training it
loses digits (up to 1e-4 of the scale in float32 on the checks' cases, see ports/tensorflow/layers.py),
so the training forward writes Alg. 1 out as scratch does.

Shape letters as in scratch: B batch, C channels, H × W an image; N = B·H·W values per channel.
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from ports.keras.autodiff import gradients, record
from scratch.validate import as_float_array, check_batch_norm_inputs, check_running_stats

__all__ = [
    "batch_norm_forward", "batch_norm_backward", "batch_norm_update_running", "batch_norm_eval",
    "to_keras_batch_norm", "from_keras_batch_norm",
]


class BatchNormCache(NamedTuple):
    recording: object  # what `gradients` needs
    mean: np.ndarray  # (C,), the batch mean μ
    var: np.ndarray  # (C,), the batch's biased variance σ²
    count: int  # N, the values per channel the statistics were taken over


def _channel_axes(x):
    """The axes a channel's statistics run over."""
    return [0] if len(x.shape) == 2 else [0, 2, 3]


def batch_norm_forward(x, gamma, beta, eps=1e-5):
    """Training-mode batch norm of x (B, C) or (B, C, H, W): each channel normalised over every other axis.

    y = γ · (x − μ) / √(σ² + ε) + β with the batch's mean μ and biased variance σ² per channel.
    """
    x, gamma, beta = check_batch_norm_inputs(x, gamma, beta)
    stats = {}

    def normalise(xt, gt, bt):
        # Alg. 1, Ioffe & Szegedy 2015: μ = (1/N) Σ x, σ² = (1/N) Σ (x − μ)²
        mean, var = ops.moments(xt, axes=_channel_axes(xt))  # (C,) each, σ² biased
        stats["mean"], stats["var"] = mean, var
        # x̂ = (x − μ) / √(σ² + ε), y = γ x̂ + β: written out, not ops.batch_normalization (module docstring)
        shape = (1, -1) + (1,) * (len(xt.shape) - 2)  # (1, C[, 1, 1]): per channel on axis 1
        x_hat = (xt - ops.reshape(mean, shape)) * ops.rsqrt(ops.reshape(var, shape) + eps)  # (B, C[, H, W])
        return x_hat * ops.reshape(gt, shape) + ops.reshape(bt, shape)  # (B, C[, H, W])

    y, recording = record(normalise, x, gamma, beta)
    mean, var = (ops.convert_to_numpy(stats[k]) for k in ("mean", "var"))
    return y, BatchNormCache(recording, mean, var, x.size // x.shape[1])


def batch_norm_backward(dout, cache):
    """Return (dx, dgamma, dbeta)."""
    dx, dgamma, dbeta = gradients(dout, cache.recording)
    return dx, dgamma, dbeta


def batch_norm_update_running(running_mean, running_var, cache, momentum=0.1):
    """(new running_mean, new running_var), each (C,), from a batch_norm_forward cache; PyTorch's rule
    (not Keras's: see the module docstring): r ← (1 − momentum) · r + momentum · batch statistic,
    the variance fed in unbiased, σ² · N / (N − 1)."""
    running_mean, running_var = check_running_stats(running_mean, running_var, cache.mean.shape[0], cache.mean.dtype)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum!r}")
    if cache.count < 2:
        raise ValueError(f"the running variance needs at least 2 values per channel (B·H·W ≥ 2), got {cache.count}")
    t = ops.convert_to_tensor
    unbiased = t(cache.var) * (cache.count / (cache.count - 1.0))  # (C,), Bessel's correction
    new_mean = (1.0 - momentum) * t(running_mean) + momentum * t(cache.mean)  # (C,)
    new_var = (1.0 - momentum) * t(running_var) + momentum * unbiased  # (C,)
    return ops.convert_to_numpy(new_mean), ops.convert_to_numpy(new_var)


def batch_norm_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Evaluation-mode batch norm: y = γ · (x − running_mean) / √(running_var + ε) + β, per channel."""
    x, gamma, beta = check_batch_norm_inputs(x, gamma, beta)
    running_mean, running_var = check_running_stats(running_mean, running_var, x.shape[1], x.dtype)
    y = ops.batch_normalization(x, running_mean, running_var, axis=1, offset=beta, scale=gamma, epsilon=eps)
    return ops.convert_to_numpy(y)  # (B, C[, H, W])


# ----------------------------------------------------------------------------------------------
# Where the scratch arrays live in keras.layers.BatchNormalization
# ----------------------------------------------------------------------------------------------


def to_keras_batch_norm(params, momentum=0.1, eps=1e-5, ndim=4):
    """A built, channels-last `keras.layers.BatchNormalization` holding params {"gamma", "beta"} and, if
    given, "running_mean" and "running_var" (as moving_mean and moving_variance; Keras's defaults 0, 1).

    `momentum` is PyTorch's (and scratch's); the layer gets Keras's 1 − momentum. `ndim` is the rank
    of the inputs it will see: 4 for NHWC images (B, H, W, C), 2 for (B, C). Trained by Keras, its
    moving variance averages the biased batch variance, not scratch's unbiased one.
    """
    gamma, beta = as_float_array("gamma", params["gamma"]), as_float_array("beta", params["beta"])
    if gamma.ndim != 1 or beta.shape != gamma.shape:
        raise ValueError(f"gamma and beta must have shape (C,), got shapes {gamma.shape} and {beta.shape}")
    layer = keras.layers.BatchNormalization(axis=-1, momentum=1.0 - momentum, epsilon=eps, dtype=gamma.dtype.name)
    layer.build((None,) * (ndim - 1) + (gamma.shape[0],))
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    if "running_mean" in params:
        layer.moving_mean.assign(np.asarray(params["running_mean"]))
    if "running_var" in params:
        layer.moving_variance.assign(np.asarray(params["running_var"]))
    return layer


def from_keras_batch_norm(layer):
    """{"gamma", "beta", "running_mean", "running_var"} of a `keras.layers.BatchNormalization`.

    running_var is Keras's moving_variance as it is: the average of biased batch variances if
    Keras trained the layer.
    """
    if not (layer.center and layer.scale):
        raise ValueError("layer must have center=True and scale=True (β and γ) to match scratch")
    arrays = {"gamma": layer.gamma, "beta": layer.beta, "running_mean": layer.moving_mean,
              "running_var": layer.moving_variance}
    return {name: v.numpy() for name, v in arrays.items()}
