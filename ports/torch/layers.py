"""Batch norm in PyTorch: the batch-norm part of scratch/layers.py with F.batch_norm, the backward by autograd.

Read it beside scratch/layers.py: the names, the arguments and the NumPy-in/NumPy-out interface
are the same. (The linear map and the activations of scratch/layers.py are one torch call each,
`x @ W + b`, `torch.relu`, …, written inline by the other torch ports.) F.batch_norm does all
three jobs here: the training-mode forward (training=True, no running buffers), the update of the
running statistics (training=True with buffers, which torch updates in place with the unbiased
variance), and the evaluation path (training=False). After them come `to_torch_batch_norm` /
`from_torch_batch_norm` for `nn.BatchNorm2d`.

Shape letters as in scratch: B batch, C channels, H × W an image; N = B·H·W values per channel.
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ports.torch.attention import Cache, _gradients, _leaf
from scratch.validate import as_float_array, check_batch_norm_inputs, check_running_stats

__all__ = [
    "batch_norm_forward", "batch_norm_backward", "batch_norm_update_running", "batch_norm_eval",
    "to_torch_batch_norm", "from_torch_batch_norm",
]


class BatchNormCache(NamedTuple):
    inputs: tuple  # the leaves x, γ, β
    out: torch.Tensor  # y, still attached to its graph
    count: int  # N, the values per channel the statistics were taken over
    dtype: np.dtype  # the input's, which the running statistics must share


def _channel_axes(x):
    """The axes a channel's statistics run over, and the shape that broadcasts a (C,) tensor against x."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    return axes, (1, x.shape[1]) + (1,) * (x.ndim - 2)


def batch_norm_forward(x, gamma, beta, eps=1e-5):
    """Training-mode batch norm of x (B, C) or (B, C, H, W): each channel normalised over every other axis.

    y = γ · (x − μ) / √(σ² + ε) + β with the batch's mean μ and biased variance σ² per channel.
    """
    x, gamma, beta = check_batch_norm_inputs(x, gamma, beta)
    xt, gt, bt = _leaf(x), _leaf(gamma), _leaf(beta)
    count = x.size // x.shape[1]
    if count > 1:
        # Alg. 1, Ioffe & Szegedy 2015: x̂ = (x − μ) / √(σ² + ε), y = γ x̂ + β
        y = F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)  # (B, C[, H, W])
    else:
        # F.batch_norm refuses one value per channel ("Expected more than 1 value per channel when
        # training"); scratch does not, so the same lines are written out: there x − μ = 0 and y = β.
        axes, shape = _channel_axes(xt)
        centred = xt - xt.mean(dim=axes, keepdim=True)  # (B, C[, H, W]), all 0
        var = (centred * centred).mean(dim=axes, keepdim=True)  # (1, C[, 1, 1]), 0
        y = centred / torch.sqrt(var + eps) * gt.reshape(shape) + bt.reshape(shape)  # (B, C[, H, W])
    return y.detach().numpy(), BatchNormCache((xt, gt, bt), y, count, x.dtype)


def batch_norm_backward(dout, cache):
    """Return (dx, dgamma, dbeta)."""
    dx, dgamma, dbeta = _gradients(dout, Cache(cache.inputs, cache.out))
    return dx, dgamma, dbeta


def batch_norm_update_running(running_mean, running_var, cache, momentum=0.1):
    """(new running_mean, new running_var), each (C,), from a batch_norm_forward cache; PyTorch's rule.

    r ← (1 − momentum) · r + momentum · batch statistic, the variance fed in unbiased (σ² · N / (N − 1)).
    Here torch applies its own rule: F.batch_norm(training=True) updates the buffers it is given,
    in place, so it gets copies and the inputs are left unchanged.
    """
    x = cache.inputs[0].detach()
    running_mean, running_var = check_running_stats(running_mean, running_var, x.shape[1], cache.dtype)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum!r}")
    if cache.count < 2:
        raise ValueError(f"the running variance needs at least 2 values per channel (B·H·W ≥ 2), got {cache.count}")
    new_mean, new_var = torch.tensor(running_mean), torch.tensor(running_var)  # copies
    with torch.no_grad():
        F.batch_norm(x, new_mean, new_var, training=True, momentum=momentum)  # updates new_mean, new_var
    return new_mean.numpy(), new_var.numpy()


def batch_norm_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Evaluation-mode batch norm: y = γ · (x − running_mean) / √(running_var + ε) + β, per channel."""
    x, gamma, beta = check_batch_norm_inputs(x, gamma, beta)
    running_mean, running_var = check_running_stats(running_mean, running_var, x.shape[1], x.dtype)
    t = torch.from_numpy
    y = F.batch_norm(t(np.ascontiguousarray(x)), t(running_mean), t(running_var), t(gamma), t(beta),
                     training=False, eps=eps)  # (B, C[, H, W])
    return y.numpy()


# ----------------------------------------------------------------------------------------------
# Where the scratch parameters live in nn.BatchNorm2d
# ----------------------------------------------------------------------------------------------


def to_torch_batch_norm(params, momentum=0.1, eps=1e-5):
    """An `nn.BatchNorm2d` holding params {"gamma", "beta"} and, if given, "running_mean" and "running_var".

    weight is γ, bias is β; its buffers start at the given running statistics (torch's own
    defaults 0 and 1 otherwise). Same momentum convention as scratch: r ← (1 − m)·r + m·batch.
    For (B, C) inputs nn.BatchNorm1d holds the same four arrays under the same names.
    """
    gamma, beta = as_float_array("gamma", params["gamma"]), as_float_array("beta", params["beta"])
    if gamma.ndim != 1 or beta.shape != gamma.shape:
        raise ValueError(f"gamma and beta must have shape (C,), got shapes {gamma.shape} and {beta.shape}")
    layer = torch.nn.BatchNorm2d(gamma.shape[0], eps=eps, momentum=momentum, dtype=getattr(torch, gamma.dtype.name))
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(gamma))
        layer.bias.copy_(torch.from_numpy(beta))
        if "running_mean" in params:
            layer.running_mean.copy_(torch.from_numpy(np.asarray(params["running_mean"])))
        if "running_var" in params:
            layer.running_var.copy_(torch.from_numpy(np.asarray(params["running_var"])))
    return layer


def from_torch_batch_norm(layer):
    """{"gamma", "beta", "running_mean", "running_var"} of an `nn.BatchNorm2d` (the inverse of the above)."""
    if layer.weight is None or layer.running_mean is None:
        raise ValueError("layer must have affine=True and track_running_stats=True to match scratch")
    arrays = {"gamma": layer.weight, "beta": layer.bias, "running_mean": layer.running_mean,
              "running_var": layer.running_var}
    return {name: t.detach().numpy().copy() for name, t in arrays.items()}
