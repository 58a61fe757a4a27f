"""Convolution in Keras 3: scratch/conv.py with keras.ops, and where each weight lives in
`keras.layers.Conv2D` and `keras.layers.Conv2DTranspose`.

Read it beside scratch/conv.py and ports/tensorflow/conv.py: the names, the arguments and the
NumPy-in/NumPy-out interface are the same, the layouts on the outside are PyTorch's (NCHW), and
the forward is backend-neutral `keras.ops`, differentiated by `record` / `gradients`
(ports/keras/autodiff.py). Keras's conventions are not PyTorch's, and each is translated here:

- Images are channels-last by default (`data_format="channels_last"`, NHWC). `ops.conv` would take
  `data_format="channels_first"`, but on TensorFlow's CPU kernels that fails ("The Conv2D op
  currently only supports the NHWC tensor format on the CPU"), so this port transposes.
- Kernels: `ops.conv` and `Conv2D` hold (kh, kw, C_in, C_out); `ops.conv_transpose` and
  `Conv2DTranspose` hold (kh, kw, C_out, C_in), for `Conv2DTranspose(filters=C_out)`. PyTorch's
  (C_out, C_in, kh, kw) and (C_in, C_out, kh, kw) both go there with transpose(2, 3, 1, 0).
- Padding is "valid" or "same" only. PyTorch's p zeros on every side: `ops.pad` before a "valid"
  convolution (`keras.layers.ZeroPadding2D` in front of the layer); for the transposed
  convolution, the full "valid" output is cropped by p on every side (`keras.layers.Cropping2D`).
  `output_padding` is passed explicitly even when it is 0: Keras's "valid" length without it is
  H·s + max(k − s, 0), which for a stride larger than the kernel is s − k cells longer than
  PyTorch's (H − 1)·s + k.
- Dilation: `Conv2D` refuses strides > 1 with dilation_rate > 1, and on TensorFlow's CPU a
  dilated `ops.conv_transpose` fails ("Current CPU implementations do not yet support dilation
  rates larger than 1"). So this port dilates the kernel itself, as ports/tensorflow/conv.py does:
  d − 1 zeros between the taps, then a convolution at dilation 1, all in keras.ops.

Shape letters as in scratch: B batch, C_in / C_out channels, H × W the input, Ho × Wo the output,
kh × kw the kernel, eh × ew the dilated kernel's extent d·(k − 1) + 1.
"""

import keras
import numpy as np
from keras import ops

from ports.keras.autodiff import gradients, record
from scratch.validate import as_float_array, as_pair, check_conv2d_inputs, check_conv_transpose2d_inputs, check_flag

__all__ = [
    "conv2d_forward", "conv2d_backward", "conv_transpose2d_forward", "conv_transpose2d_backward",
    "to_keras_conv2d", "from_keras_conv2d", "to_keras_conv_transpose2d", "from_keras_conv_transpose2d",
]


def _record_conv(fn, x, w, b):
    """record(fn, x, w[, b]): a missing bias is not recorded, and its gradient is None."""
    if b is None:
        return record(lambda xt, wt: fn(xt, wt, None), x, w)
    return record(fn, x, w, b)


def _conv_gradients(dout, cache):
    """(dx, dw, db), db None when the forward had no bias."""
    grads = gradients(dout, cache)
    return tuple(grads) if len(grads) == 3 else (*grads, None)


# ----------------------------------------------------------------------------------------------
# The translation: layouts and the dilated kernel
# ----------------------------------------------------------------------------------------------


def _to_channels_last(x):
    return ops.transpose(x, (0, 2, 3, 1))  # (B, C, H, W) → (B, H, W, C)


def _to_channels_first(x):
    return ops.transpose(x, (0, 3, 1, 2))  # (B, H, W, C) → (B, C, H, W)


def _dilate_kernel(k, dilation):
    """A (kh, kw, I, O) kernel with d − 1 zeros between its taps: (d_h·(kh − 1) + 1, d_w·(kw − 1) + 1, I, O)."""
    dh, dw = dilation
    kh, kw, i, o = k.shape
    if dh > 1:  # after each row of taps, dh − 1 rows of zeros; the trailing ones are sliced off
        rows = ops.concatenate([k[:, None], ops.zeros((kh, dh - 1, kw, i, o), k.dtype)], axis=1)  # (kh, dh, kw, I, O)
        k = ops.reshape(rows, (kh * dh, kw, i, o))[: dh * (kh - 1) + 1]  # (eh, kw, I, O)
    if dw > 1:  # the same along the width
        eh = k.shape[0]
        cols = ops.concatenate([k[:, :, None], ops.zeros((eh, kw, dw - 1, i, o), k.dtype)], axis=2)  # (eh, kw, dw, I, O)
        k = ops.reshape(cols, (eh, kw * dw, i, o))[:, : dw * (kw - 1) + 1]  # (eh, ew, I, O)
    return k


# ----------------------------------------------------------------------------------------------
# conv2d
# ----------------------------------------------------------------------------------------------


def _conv2d(x, w, b, stride, padding, dilation):
    (ph, pw) = padding
    x = _to_channels_last(x)  # (B, H, W, C_in)
    k = _dilate_kernel(ops.transpose(w, (2, 3, 1, 0)), dilation)  # (C_out, C_in, kh, kw) → (eh, ew, C_in, C_out)
    x = ops.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))  # (B, H + 2p_h, W + 2p_w, C_in): zeros on every side
    # Ho = ⌊(H + 2p − d·(kh − 1) − 1) / s⌋ + 1: "valid" on the padded input with the dilated kernel
    out = ops.conv(x, k, strides=stride, padding="valid", data_format="channels_last")  # (B, Ho, Wo, C_out)
    if b is not None:
        out = out + b  # (B, Ho, Wo, C_out): channels last, so b (C_out,) broadcasts as it is
    return _to_channels_first(out)  # (B, C_out, Ho, Wo)


def conv2d_forward(x, w, b, stride=1, padding=0, dilation=1):
    """Cross-correlation of x (B, C_in, H, W) with w (C_out, C_in, kh, kw), plus b (C_out,) or None.

    stride, padding and dilation are an int or a (height, width) pair, as in torch.nn.functional.conv2d.
    """
    x, w, b, stride, padding, dilation = check_conv2d_inputs(x, w, b, stride, padding, dilation)
    return _record_conv(lambda xt, wt, bt: _conv2d(xt, wt, bt, stride, padding, dilation), x, w, b)


def conv2d_backward(dout, cache, needs_input_grad=True):
    """Return (dx, dw, db); db is None when the forward had no bias.

    needs_input_grad False: dx is None, and the tape is not asked for it.
    """
    if not check_flag("needs_input_grad", needs_input_grad):
        dw, *db = gradients(dout, cache._replace(inputs=cache.inputs[1:]))  # x was recorded first: left out
        return None, dw, db[0] if db else None
    dx, dw, db = _conv_gradients(dout, cache)
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# Transposed conv2d: the adjoint of conv2d with respect to its input
# ----------------------------------------------------------------------------------------------


def _conv_transpose2d(x, w, b, stride, padding, output_padding, dilation):
    (ph, pw), (oph, opw) = padding, output_padding
    x = _to_channels_last(x)  # (B, H, W, C_in)
    k = _dilate_kernel(ops.transpose(w, (2, 3, 1, 0)), dilation)  # (C_in, C_out, kh, kw) → (eh, ew, C_out, C_in)
    # The full output, every cell some input pixel reaches: (H − 1)·s + eh rows ("valid", output_padding 0)
    out = ops.conv_transpose(x, k, strides=stride, padding="valid", output_padding=0,
                             data_format="channels_last")  # (B, (H − 1)·s + eh, (W − 1)·s + ew, C_out)
    full_h, full_w = out.shape[1], out.shape[2]
    # output_padding: rows at the bottom and columns at the right that no input pixel reaches
    out = ops.pad(out, ((0, 0), (0, oph), (0, opw), (0, 0)))  # (B, full_h + op_h, full_w + op_w, C_out)
    # Ho = (H − 1)·s − 2p + d·(kh − 1) + output_padding + 1: p cropped from each side
    out = out[:, ph: full_h + oph - ph, pw: full_w + opw - pw, :]  # (B, Ho, Wo, C_out)
    if b is not None:
        out = out + b  # (B, Ho, Wo, C_out)
    return _to_channels_first(out)  # (B, C_out, Ho, Wo)


def conv_transpose2d_forward(x, w, b, stride=1, padding=0, output_padding=0, dilation=1):
    """Transposed convolution of x (B, C_in, H, W) with w (C_in, C_out, kh, kw), plus b (C_out,) or None,
    as torch.nn.functional.conv_transpose2d."""
    x, w, b, stride, padding, output_padding, dilation = check_conv_transpose2d_inputs(
        x, w, b, stride, padding, output_padding, dilation)
    return _record_conv(lambda xt, wt, bt: _conv_transpose2d(xt, wt, bt, stride, padding, output_padding, dilation),
                        x, w, b)


def conv_transpose2d_backward(dout, cache):
    """Return (dx, dw, db); db is None when the forward had no bias."""
    dx, dw, db = _conv_gradients(dout, cache)
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# Where the scratch weights live in keras.layers.Conv2D and Conv2DTranspose
# ----------------------------------------------------------------------------------------------


def _conv_params(params, layout):
    """params["w"] as a 4-D float array and params.get("b") (C_out,) or None; `layout` names w's axes."""
    w = as_float_array("w", params["w"])
    if w.ndim != 4:
        raise ValueError(f"w must have shape {layout}, got shape {w.shape}")
    c_out = w.shape[0] if layout.startswith("(C_out") else w.shape[1]
    b = params.get("b")
    if b is not None:
        b = as_float_array("b", b)
        if b.shape != (c_out,):
            raise ValueError(f"b must have shape (C_out={c_out},) to match w {w.shape}, got shape {b.shape}")
    return w, b, c_out


def _the_layer(layer, kind):
    """`layer` itself, or the one `kind` layer inside a Sequential that the converters below build."""
    if isinstance(layer, kind):
        return layer
    inner = [sub for sub in getattr(layer, "layers", []) if isinstance(sub, kind)]
    if len(inner) != 1:
        raise ValueError(f"layer must be a keras.layers.{kind.__name__} or hold exactly one, got {layer!r}")
    return inner[0]


def _scratch_params(layer):
    """{"w": kernel.transpose(3, 2, 0, 1), "b": bias}: Keras (kh, kw, I, O) back to PyTorch's (O, I, kh, kw) order."""
    groups = getattr(layer, "groups", 1)  # Conv2DTranspose has no groups
    if layer.data_format != "channels_last" or groups != 1:
        raise ValueError(f"layer must be channels_last with groups=1, got data_format={layer.data_format!r}, "
                         f"groups={groups}")
    params = {"w": np.ascontiguousarray(layer.kernel.numpy().transpose(3, 2, 0, 1))}
    if layer.use_bias:
        params["b"] = layer.bias.numpy()
    return params


def _input(channels, dtype):
    """The Sequential's declared input, NHWC of `dtype`. Without it a Sequential casts its input to
    Keras's floatx, float32, before the first layer: float64 would silently lose its digits."""
    return keras.Input((None, None, channels), dtype=dtype.name)


def to_keras_conv2d(params, stride=1, padding=0, dilation=1):
    """A built `keras.layers.Conv2D` (channels last) computing scratch's conv2d with params {"w", "b"}.

    Call it on NHWC images: layer(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) is
    conv2d_forward(x, params["w"], params.get("b"), stride, padding, dilation)[0]. Its kernel is
    w.transpose(2, 3, 1, 0), (kh, kw, C_in, C_out). Keras has no explicit padding: for padding ≠ 0
    the result is `keras.Sequential([ZeroPadding2D(padding), Conv2D])`. Keras refuses strides > 1
    with dilation_rate > 1 (its ValueError is passed on).
    """
    w, b, c_out = _conv_params(params, "(C_out, C_in, kh, kw)")
    padding = as_pair("padding", padding, 0)
    layer = keras.layers.Conv2D(c_out, w.shape[2:], strides=as_pair("stride", stride, 1), padding="valid",
                                dilation_rate=as_pair("dilation", dilation, 1), use_bias=b is not None,
                                data_format="channels_last", dtype=w.dtype.name)
    layer.build((None, None, None, w.shape[1]))
    layer.kernel.assign(w.transpose(2, 3, 1, 0))  # (C_out, C_in, kh, kw) → (kh, kw, C_in, C_out)
    if b is not None:
        layer.bias.assign(b)
    if padding == (0, 0):
        return layer
    return keras.Sequential([_input(w.shape[1], w.dtype), keras.layers.ZeroPadding2D(padding, dtype=w.dtype.name), layer])


def from_keras_conv2d(layer):
    """The scratch parameter dict {"w", "b"} of a `keras.layers.Conv2D` (or of to_keras_conv2d's Sequential).

    The settings stay with the layer (strides, dilation_rate, and the ZeroPadding2D's padding).
    """
    return _scratch_params(_the_layer(layer, keras.layers.Conv2D))


def to_keras_conv_transpose2d(params, stride=1, padding=0, output_padding=0, dilation=1):
    """A built `keras.layers.Conv2DTranspose` (channels last) computing scratch's conv_transpose2d.

    Its kernel is w.transpose(2, 3, 1, 0), (kh, kw, C_out, C_in), with filters = C_out = w.shape[1].
    It runs "valid" with output_padding passed explicitly, so its output is PyTorch's before the
    crop; for padding ≠ 0 the result is `keras.Sequential([Conv2DTranspose, Cropping2D(padding)])`.
    Keras requires output_padding < stride (PyTorch: < max(stride, dilation)), and on TensorFlow's
    CPU the layer cannot run with dilation_rate > 1.
    """
    w, b, c_out = _conv_params(params, "(C_in, C_out, kh, kw)")
    padding = (ph, pw) = as_pair("padding", padding, 0)
    layer = keras.layers.Conv2DTranspose(c_out, w.shape[2:], strides=as_pair("stride", stride, 1), padding="valid",
                                         output_padding=as_pair("output_padding", output_padding, 0),
                                         dilation_rate=as_pair("dilation", dilation, 1), use_bias=b is not None,
                                         data_format="channels_last", dtype=w.dtype.name)
    layer.build((None, None, None, w.shape[0]))
    layer.kernel.assign(w.transpose(2, 3, 1, 0))  # (C_in, C_out, kh, kw) → (kh, kw, C_out, C_in)
    if b is not None:
        layer.bias.assign(b)
    if padding == (0, 0):
        return layer
    return keras.Sequential([_input(w.shape[0], w.dtype), layer, keras.layers.Cropping2D(((ph, ph), (pw, pw)), dtype=w.dtype.name)])


def from_keras_conv_transpose2d(layer):
    """The scratch parameter dict {"w", "b"} of a `keras.layers.Conv2DTranspose` (or of the Sequential above).

    Its kernel (kh, kw, C_out, C_in) goes back to (C_in, C_out, kh, kw) with transpose(3, 2, 0, 1).
    """
    return _scratch_params(_the_layer(layer, keras.layers.Conv2DTranspose))
