"""Convolution in PyTorch: scratch/conv.py with F.conv2d and F.conv_transpose2d, the backward by autograd.

Read it beside scratch/conv.py: the names, the arguments and the NumPy-in/NumPy-out interface
are the same, and so are the layouts, because scratch took PyTorch's: activations NCHW, a
convolution's weight (C_out, C_in, kh, kw), a transposed convolution's (C_in, C_out, kh, kw).
Where scratch builds the im2col matrix and its adjoint by hand, this file calls torch's kernels
and lets autograd replay them. After the functions come `to_torch_conv2d` / `from_torch_conv2d`
and `to_torch_conv_transpose2d` / `from_torch_conv_transpose2d`, which move a scratch parameter
dict {"w", "b"} into `nn.Conv2d` / `nn.ConvTranspose2d` and back (the weight needs no change).

Shape letters as in scratch: B batch, C_in / C_out channels, H × W the input's height and width,
H_out × W_out the output's, kh × kw the kernel.
"""

from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ports.torch.attention import Cache, _gradients, _leaf
from scratch.validate import as_float_array, check_conv2d_inputs, check_conv_transpose2d_inputs, check_flag

__all__ = [
    "conv2d_forward", "conv2d_backward", "conv_transpose2d_forward", "conv_transpose2d_backward",
    "to_torch_conv2d", "from_torch_conv2d", "to_torch_conv_transpose2d", "from_torch_conv_transpose2d",
]


class ConvCache(NamedTuple):
    x: torch.Tensor  # the leaves the gradients are taken with respect to
    w: torch.Tensor
    b: Optional[torch.Tensor]  # None: no bias, and no gradient for it
    out: torch.Tensor  # the output, still attached to its graph


def _leaves(*arrays):
    """Leaf tensors for the arrays that are given; None (no bias) stays None."""
    return tuple(None if a is None else _leaf(a) for a in arrays)


def _conv_gradients(dout, cache):
    """(dx, dw, db): autograd's vector-Jacobian product, with db None where there is no bias."""
    inputs = (cache.x, cache.w, cache.b)
    grads = iter(_gradients(dout, Cache(tuple(t for t in inputs if t is not None), cache.out)))
    return tuple(None if t is None else next(grads) for t in inputs)


# ----------------------------------------------------------------------------------------------
# conv2d: out[b, o, i, j] = bias[o] + Σ_{c, u, v} w[o, c, u, v] · x_pad[b, c, s·i + d·u, s·j + d·v]
# ----------------------------------------------------------------------------------------------


def conv2d_forward(x, w, b, stride=1, padding=0, dilation=1):
    """Cross-correlation of x (B, C_in, H, W) with w (C_out, C_in, kh, kw), plus b (C_out,) or None.

    stride, padding and dilation are an int or a (height, width) pair, as in F.conv2d.
    """
    x, w, b, stride, padding, dilation = check_conv2d_inputs(x, w, b, stride, padding, dilation)
    xt, wt, bt = _leaves(x, w, b)
    # H_out = ⌊(H + 2p − d·(kh − 1) − 1) / s⌋ + 1, and the same for W_out
    out = F.conv2d(xt, wt, bt, stride=stride, padding=padding, dilation=dilation)  # (B, C_out, H_out, W_out)
    return out.detach().numpy(), ConvCache(xt, wt, bt, out)


def conv2d_backward(dout, cache, needs_input_grad=True):
    """Return (dx, dw, db); db is None when the forward had no bias.

    needs_input_grad False: dx is None, and autograd is not asked for it.
    """
    if not check_flag("needs_input_grad", needs_input_grad):
        cache = cache._replace(x=None)  # _conv_gradients asks only for the leaves that are not None
    dx, dw, db = _conv_gradients(dout, cache)
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# conv_transpose2d: the adjoint of conv2d with respect to its input
# ----------------------------------------------------------------------------------------------


def conv_transpose2d_forward(x, w, b, stride=1, padding=0, output_padding=0, dilation=1):
    """Transposed convolution of x (B, C_in, H, W) with w (C_in, C_out, kh, kw), plus b (C_out,) or None.

    Each input pixel scatters w[c] · x[b, c, y, x] onto the output at stride s; padding p crops p
    rows and columns from each side of the result, and output_padding adds rows and columns at the
    bottom and right that no input pixel reaches (they hold only the bias), as F.conv_transpose2d.
    """
    x, w, b, stride, padding, output_padding, dilation = check_conv_transpose2d_inputs(
        x, w, b, stride, padding, output_padding, dilation)
    xt, wt, bt = _leaves(x, w, b)
    # H_out = (H − 1)·s − 2p + d·(kh − 1) + output_padding + 1, and the same for W_out
    out = F.conv_transpose2d(xt, wt, bt, stride=stride, padding=padding, output_padding=output_padding,
                             dilation=dilation)  # (B, C_out, H_out, W_out)
    return out.detach().numpy(), ConvCache(xt, wt, bt, out)


def conv_transpose2d_backward(dout, cache):
    """Return (dx, dw, db); db is None when the forward had no bias."""
    dx, dw, db = _conv_gradients(dout, cache)
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# Where the scratch weights live in nn.Conv2d and nn.ConvTranspose2d
# ----------------------------------------------------------------------------------------------


def _conv_params(params, layout):
    """params["w"] as a 4-D float array and params.get("b") (C,) or None; `layout` names w's axes."""
    w = np.ascontiguousarray(as_float_array("w", params["w"]))
    if w.ndim != 4:
        raise ValueError(f"w must have shape {layout}, got shape {w.shape}")
    b = params.get("b")
    if b is not None:
        channels = w.shape[0] if layout.startswith("(C_out") else w.shape[1]
        b = np.ascontiguousarray(as_float_array("b", b))
        if b.shape != (channels,):
            raise ValueError(f"b must have shape (C_out={channels},), got shape {b.shape}")
    return w, b


def _copy_into(layer, w, b):
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
        if b is not None:
            layer.bias.copy_(torch.from_numpy(b))
    return layer


def _params_of(layer):
    """{"w": weight, "b": bias} of an nn.Conv2d or nn.ConvTranspose2d ("b" only if it has a bias)."""
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError(
            f"layer must have groups=1, padding_mode='zeros' and a numeric padding to match scratch, got "
            f"groups={layer.groups}, padding_mode={layer.padding_mode!r}, padding={layer.padding!r}"
        )
    params = {"w": layer.weight.detach().numpy().copy()}
    if layer.bias is not None:
        params["b"] = layer.bias.detach().numpy().copy()
    return params


def to_torch_conv2d(params, stride=1, padding=0, dilation=1):
    """An `nn.Conv2d` computing conv2d_forward(x, params["w"], params.get("b"), stride, padding, dilation).

    The weight is copied as it is: scratch's (C_out, C_in, kh, kw) is torch's own layout. Without
    a "b" key the layer has bias=False. The layer takes the dtype of params["w"].
    """
    w, b = _conv_params(params, "(C_out, C_in, kh, kw)")
    c_out, c_in, kh, kw = w.shape
    layer = torch.nn.Conv2d(c_in, c_out, (kh, kw), stride=stride, padding=padding, dilation=dilation,
                            bias=b is not None, dtype=getattr(torch, w.dtype.name))
    return _copy_into(layer, w, b)


def from_torch_conv2d(layer):
    """The scratch parameter dict {"w", "b"} of an `nn.Conv2d` (the inverse of `to_torch_conv2d`).

    The settings stay with the layer: pass layer.stride, layer.padding and layer.dilation to
    conv2d_forward.
    """
    return _params_of(layer)


def to_torch_conv_transpose2d(params, stride=1, padding=0, output_padding=0, dilation=1):
    """An `nn.ConvTranspose2d` computing conv_transpose2d_forward(x, params["w"], params.get("b"), …).

    Again no change of layout: scratch's (C_in, C_out, kh, kw) is torch's. Note the channel
    order: nn.ConvTranspose2d(in_channels, out_channels) with in_channels = w.shape[0].
    """
    w, b = _conv_params(params, "(C_in, C_out, kh, kw)")
    c_in, c_out, kh, kw = w.shape
    layer = torch.nn.ConvTranspose2d(c_in, c_out, (kh, kw), stride=stride, padding=padding,
                                     output_padding=output_padding, dilation=dilation, bias=b is not None,
                                     dtype=getattr(torch, w.dtype.name))
    return _copy_into(layer, w, b)


def from_torch_conv_transpose2d(layer):
    """The scratch parameter dict {"w", "b"} of an `nn.ConvTranspose2d` (the inverse of the above).

    The settings stay with the layer: layer.stride, layer.padding, layer.output_padding, layer.dilation.
    """
    return _params_of(layer)
