"""Convolution in TensorFlow 2: scratch/conv.py with tf.nn.conv2d and tf.nn.conv2d_transpose, the
backward by tf.GradientTape.

Read it beside scratch/conv.py: the names, the arguments and the NumPy-in/NumPy-out interface
are the same, and so are the layouts on the outside (PyTorch's, as scratch's). TensorFlow's
convolutions want other layouts and other padding, so every call translates on the way in and
back on the way out. That translation is the lesson of this file, in four steps:

1. Images. TensorFlow's CPU convolution kernels take channels-last images only, NHWC
   (B, H, W, C); asked for NCHW they refuse ("The Conv2D op currently only supports the NHWC
   tensor format on the CPU"). transpose(0, 2, 3, 1) moves the channels last; (0, 3, 1, 2) back.
2. Weights. tf.nn.conv2d's filter is HWIO, (kh, kw, C_in, C_out): the window first, then the
   channels it sums over, then the channels it makes. PyTorch's (C_out, C_in, kh, kw) goes there
   with transpose(2, 3, 1, 0). tf.nn.conv2d_transpose's filter is (kh, kw, C_out, C_in), and
   PyTorch's transposed weight (C_in, C_out, kh, kw) goes there with the same transpose(2, 3, 1, 0):
   both frameworks store a transposed convolution's weight as the weight of the convolution it is
   the adjoint of (a map from C_out channels back to C_in), so the one permutation serves both.
3. Padding. TensorFlow's padding is "VALID" (none) or "SAME" (enough for ⌈H / s⌉ outputs, with any
   odd cell of padding at the bottom and right); neither is PyTorch's p zeros on every side. So
   conv2d pads explicitly with tf.pad and convolves "VALID". conv2d_transpose computes the full
   "VALID" output, (H − 1)·s + d·(kh − 1) + 1 rows, adds output_padding zero rows at the bottom (no
   input pixel reaches them; they get only the bias), then crops p rows from each side.
4. Dilation. tf.nn.conv2d takes `dilations`, but on the CPU its gradient kernel does not
   (Conv2DBackpropInput: "Current CPU implementations do not yet support dilation rates larger
   than 1"), and tf.nn.conv2d_transpose, which is that same kernel run forward, refuses it too: so
   deriving the transpose as conv2d's gradient with respect to its input does not get round it.
   A dilated kernel is the same kernel with d − 1 zeros between its taps, d·(k − 1) + 1 cells wide,
   convolved at dilation 1: this port builds it with tf ops (`_dilate_kernel`), so the tape
   differentiates through the zeros back to the taps. The arithmetic is the same; only the zeros
   cost extra multiplications. (checks/test_conv_frameworks.py pins both refusals.)

Shape letters as in scratch: B batch, C_in / C_out channels, H × W the input, Ho × Wo the output,
kh × kw the kernel, eh × ew the dilated kernel's extent d·(k − 1) + 1.
"""

from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from scratch.validate import check_conv2d_inputs, check_conv_transpose2d_inputs, check_flag

__all__ = ["conv2d_forward", "conv2d_backward", "conv_transpose2d_forward", "conv_transpose2d_backward"]


class ConvCache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    x: tf.Tensor  # the tensors the gradients are taken with respect to, in the NCHW layout
    w: tf.Tensor
    b: Optional[tf.Tensor]  # None: no bias, and no gradient for it
    out: tf.Tensor  # (B, C_out, Ho, Wo)


def _watched(tape, x):
    if x is None:
        return None
    t = tf.constant(x)
    tape.watch(t)
    return t


def _conv_gradients(dout, cache):
    """(dx, dw, db) as NumPy arrays: the tape's vector-Jacobian product; db None without a bias."""
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    inputs = [t for t in (cache.x, cache.w, cache.b) if t is not None]
    grads = iter(cache.tape.gradient(cache.out, inputs, output_gradients=tf.constant(dout, dtype=cache.out.dtype)))
    return tuple(None if t is None else next(grads).numpy() for t in (cache.x, cache.w, cache.b))


# ----------------------------------------------------------------------------------------------
# The translation: layouts and the dilated kernel
# ----------------------------------------------------------------------------------------------


def _to_nhwc(x):
    return tf.transpose(x, (0, 2, 3, 1))  # (B, C, H, W) → (B, H, W, C)


def _to_nchw(x):
    return tf.transpose(x, (0, 3, 1, 2))  # (B, H, W, C) → (B, C, H, W)


def _dilate_kernel(k, dilation):
    """A (kh, kw, I, O) kernel with d − 1 zeros between its taps: (d_h·(kh − 1) + 1, d_w·(kw − 1) + 1, I, O).

    Tap (u, v) lands at (d_h·u, d_w·v). Made of concat, reshape and slice, so its gradient is the
    strided slice that picks the taps back out.
    """
    dh, dw = dilation
    kh, kw, i, o = k.shape
    if dh > 1:  # after each row of taps, dh − 1 rows of zeros; the trailing ones are sliced off
        rows = tf.concat([k[:, None], tf.zeros((kh, dh - 1, kw, i, o), k.dtype)], axis=1)  # (kh, dh, kw, I, O)
        k = tf.reshape(rows, (kh * dh, kw, i, o))[: dh * (kh - 1) + 1]  # (eh, kw, I, O)
    if dw > 1:  # the same along the width
        eh = k.shape[0]
        cols = tf.concat([k[:, :, None], tf.zeros((eh, kw, dw - 1, i, o), k.dtype)], axis=2)  # (eh, kw, dw, I, O)
        k = tf.reshape(cols, (eh, kw * dw, i, o))[:, : dw * (kw - 1) + 1]  # (eh, ew, I, O)
    return k


# ----------------------------------------------------------------------------------------------
# conv2d
# ----------------------------------------------------------------------------------------------


def _conv2d(x, w, b, stride, padding, dilation):
    (sh, sw), (ph, pw) = stride, padding
    x = _to_nhwc(x)  # (B, H, W, C_in)
    k = _dilate_kernel(tf.transpose(w, (2, 3, 1, 0)), dilation)  # (C_out, C_in, kh, kw) → HWIO (eh, ew, C_in, C_out)
    x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])  # (B, H + 2p_h, W + 2p_w, C_in): PyTorch's zeros on every side
    # Ho = ⌊(H + 2p − d·(kh − 1) − 1) / s⌋ + 1: "VALID" on the padded input with the dilated kernel
    out = tf.nn.conv2d(x, k, strides=[1, sh, sw, 1], padding="VALID")  # (B, Ho, Wo, C_out)
    if b is not None:
        out = out + b  # (B, Ho, Wo, C_out): channels last, so b (C_out,) broadcasts as it is
    return _to_nchw(out)  # (B, C_out, Ho, Wo)


def conv2d_forward(x, w, b, stride=1, padding=0, dilation=1):
    """Cross-correlation of x (B, C_in, H, W) with w (C_out, C_in, kh, kw), plus b (C_out,) or None.

    stride, padding and dilation are an int or a (height, width) pair, as in torch.nn.functional.conv2d.
    """
    x, w, b, stride, padding, dilation = check_conv2d_inputs(x, w, b, stride, padding, dilation)
    with tf.GradientTape() as tape:
        xt, wt, bt = (_watched(tape, a) for a in (x, w, b))
        out = _conv2d(xt, wt, bt, stride, padding, dilation)  # (B, C_out, Ho, Wo)
    return out.numpy(), ConvCache(tape, xt, wt, bt, out)


def conv2d_backward(dout, cache, needs_input_grad=True):
    """Return (dx, dw, db); db is None when the forward had no bias.

    needs_input_grad False: dx is None, and the tape is not asked for it.
    """
    if not check_flag("needs_input_grad", needs_input_grad):
        cache = cache._replace(x=None)  # _conv_gradients asks only for the tensors that are not None
    dx, dw, db = _conv_gradients(dout, cache)
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# Transposed conv2d: the adjoint of conv2d with respect to its input
# ----------------------------------------------------------------------------------------------


def _conv_transpose2d(x, w, b, stride, padding, output_padding, dilation):
    (sh, sw), (ph, pw), (oph, opw) = stride, padding, output_padding
    bsz, _, h, wd = x.shape
    x = _to_nhwc(x)  # (B, H, W, C_in)
    k = _dilate_kernel(tf.transpose(w, (2, 3, 1, 0)), dilation)  # (C_in, C_out, kh, kw) → (eh, ew, C_out, C_in)
    eh, ew, c_out, _ = k.shape
    # The full output before cropping: (H − 1)·s + eh rows, every cell some input pixel reaches
    full_h, full_w = (h - 1) * sh + eh, (wd - 1) * sw + ew
    out = tf.nn.conv2d_transpose(x, k, output_shape=[bsz, full_h, full_w, c_out], strides=[1, sh, sw, 1],
                                 padding="VALID")  # (B, full_h, full_w, C_out)
    # output_padding: rows at the bottom and columns at the right that no input pixel reaches
    out = tf.pad(out, [[0, 0], [0, oph], [0, opw], [0, 0]])  # (B, full_h + op_h, full_w + op_w, C_out)
    # Ho = (H − 1)·s − 2p + d·(kh − 1) + output_padding + 1: p cropped from each side
    out = out[:, ph: full_h + oph - ph, pw: full_w + opw - pw, :]  # (B, Ho, Wo, C_out)
    if b is not None:
        out = out + b  # (B, Ho, Wo, C_out)
    return _to_nchw(out)  # (B, C_out, Ho, Wo)


def conv_transpose2d_forward(x, w, b, stride=1, padding=0, output_padding=0, dilation=1):
    """Transposed convolution of x (B, C_in, H, W) with w (C_in, C_out, kh, kw), plus b (C_out,) or None,
    as torch.nn.functional.conv_transpose2d."""
    x, w, b, stride, padding, output_padding, dilation = check_conv_transpose2d_inputs(
        x, w, b, stride, padding, output_padding, dilation)
    with tf.GradientTape() as tape:
        xt, wt, bt = (_watched(tape, a) for a in (x, w, b))
        out = _conv_transpose2d(xt, wt, bt, stride, padding, output_padding, dilation)  # (B, C_out, Ho, Wo)
    return out.numpy(), ConvCache(tape, xt, wt, bt, out)


def conv_transpose2d_backward(dout, cache):
    """Return (dx, dw, db); db is None when the forward had no bias."""
    dx, dw, db = _conv_gradients(dout, cache)
    return dx, dw, db
