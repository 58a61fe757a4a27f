"""2-D convolution and transposed convolution in NumPy, with every gradient derived by hand.

Shape letters, used in the comment at the end of each array line:
    B    batch                 C_in, C_out  input and output channels
    H W  input height, width   Ho Wo        output height, width     Hp Wp  padded height, width
    kh kw  kernel height, width             K = C·kh·kw, the length of one patch
    L    output positions, Ho·Wo

Layouts are PyTorch's: images NCHW, conv2d weights (C_out, C_in, kh, kw), transposed-conv
weights (C_in, C_out, kh, kw). Stride s, padding p and dilation d are each an int or a
(height, width) pair. Like every deep-learning library we compute a cross-correlation (the
kernel is not flipped), as `torch.nn.functional.conv2d` does:

    out[b, o, i, j] = bias[o] + Σ_{c, u, v} w[o, c, u, v] · x_pad[b, c, s·i + d·u, s·j + d·v]

The forward is im2col: a strided window view of the padded input, copied once into patches
(B, K, L), then one matrix product with the (C_out, K) weights. The backward scatters patches
back with col2im, one strided add per kernel offset (kh·kw adds), never element by element.
The transposed convolution is the adjoint of conv2d with respect to its input: its forward is
conv2d's dx computation, and its gradient with respect to its input is conv2d's forward.
"""

from typing import NamedTuple

import numpy as np

from scratch.validate import check_conv2d_inputs, check_conv_transpose2d_inputs

# ----------------------------------------------------------------------------------------------
# Patches: im2col and its adjoint col2im
# ----------------------------------------------------------------------------------------------


def im2col(xp, kernel, stride, dilation, out_hw):
    """The patches of the padded input xp (B, C, Hp, Wp) as a (B, C·kh·kw, Ho·Wo) array.

    Column l = i·Wo + j holds the cells xp[b, c, s·i + d·u, s·j + d·v] of output position (i, j),
    row k = (c·kh + u)·kw + v, the order of w.reshape(C_out, -1), so the product is one matmul.
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    # BEGIN SOLUTION
    # HINT: np.lib.stride_tricks.sliding_window_view over the dilated extent d·(k − 1) + 1, then step by s and by d.
    b, c = xp.shape[:2]
    extent = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    windows = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=(2, 3))  # (B, C, Hp−eh+1, Wp−ew+1, eh, ew), a view
    windows = windows[:, :, :sh * (ho - 1) + 1:sh, :sw * (wo - 1) + 1:sw, ::dh, ::dw]  # (B, C, Ho, Wo, kh, kw), a view
    # the one copy of the forward: every cell lands in each patch that covers it
    return windows.transpose(0, 1, 4, 5, 2, 3).reshape(b, c * kh * kw, ho * wo)  # (B, K, L)
    # END SOLUTION


def col2im(cols, padded_shape, kernel, stride, dilation, out_hw):
    """The adjoint of im2col: add every patch entry of cols (B, C·kh·kw, Ho·Wo) back into its cell.

    Returns (B, C, Hp, Wp) with padded_shape; a cell that sits in several patches sums them all.
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    # BEGIN SOLUTION
    # HINT: loop over the kh·kw kernel offsets (u, v), not over pixels: each offset is one strided slice of the output.
    b, c = padded_shape[:2]
    patches = cols.reshape(b, c, kh, kw, ho, wo)  # (B, C, kh, kw, Ho, Wo)
    xp = np.zeros(padded_shape, dtype=cols.dtype)  # (B, C, Hp, Wp)
    for u in range(kh):
        for v in range(kw):
            # offset (u, v) of output (i, j) reads cell (s·i + d·u, s·j + d·v): a slice with step s
            xp[:, :, dh * u:dh * u + sh * (ho - 1) + 1:sh, dw * v:dw * v + sw * (wo - 1) + 1:sw] += patches[:, :, u, v]
    return xp
    # END SOLUTION


# ----------------------------------------------------------------------------------------------
# conv2d
# ----------------------------------------------------------------------------------------------


class Conv2dCache(NamedTuple):
    cols: np.ndarray  # (B, K, L), the input's patches: dw is their product with dout
    w: np.ndarray  # (C_out, C_in, kh, kw)
    x_shape: tuple  # (B, C_in, H, W)
    stride: tuple
    padding: tuple
    dilation: tuple
    has_bias: bool


def conv2d_forward(x, w, b, stride=1, padding=0, dilation=1):
    """Cross-correlation of x (B, C_in, H, W) with w (C_out, C_in, kh, kw), plus b (C_out,) or None.

    Returns (out (B, C_out, Ho, Wo), cache), as torch.nn.functional.conv2d.
    """
    x, w, b, stride, padding, dilation = check_conv2d_inputs(x, w, b, stride, padding, dilation)
    # BEGIN SOLUTION
    # HINT: pad, im2col, one product with w.reshape(C_out, -1), reshape, add the bias per channel.
    (bsz, _, h, wd), (c_out, _, kh, kw) = x.shape, w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    # Output size (Dumoulin & Visin 2016, §2–5): o = ⌊(i + 2p − d·(k − 1) − 1) / s⌋ + 1
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (B, C_in, Hp, Wp), zeros on all four sides
    cols = im2col(xp, (kh, kw), stride, dilation, (ho, wo))  # (B, K, L)
    # out[b, o, l] = Σ_k w[o, k] · cols[b, k, l]: one product, broadcast over the batch
    out = (w.reshape(c_out, -1) @ cols).reshape(bsz, c_out, ho, wo)  # (B, C_out, Ho, Wo)
    if b is not None:
        out += b[:, None, None]  # (B, C_out, Ho, Wo), one bias per output channel
    # END SOLUTION
    return out, Conv2dCache(cols, w, x.shape, stride, padding, dilation, b is not None)


def conv2d_backward(dout, cache):
    """Return (dx, dw, db) given dout (B, C_out, Ho, Wo); db is None when the forward had no bias."""
    cols, w, x_shape, stride, padding, dilation, has_bias = cache
    # BEGIN SOLUTION
    # HINT: the forward is out = W · cols per image; go back through the product, then col2im, then crop the padding.
    (bsz, c_in, h, wd), (c_out, _, kh, kw), (ph, pw) = x_shape, w.shape, padding
    ho, wo = dout.shape[2:]
    g = dout.reshape(bsz, c_out, ho * wo)  # (B, C_out, L)
    # out = W cols  ⇒  dW = Σ_b dout_b colsᵀ_b  (one contraction over the batch and the positions)
    dw = np.tensordot(g, cols, axes=([0, 2], [0, 2])).reshape(w.shape)  # (C_out, C_in, kh, kw)
    # out = W cols  ⇒  dcols = Wᵀ dout, then each patch entry goes back to the cell it was copied from
    dcols = w.reshape(c_out, -1).T @ g  # (B, K, L)
    dxp = col2im(dcols, (bsz, c_in, h + 2 * ph, wd + 2 * pw), (kh, kw), stride, dilation, (ho, wo))  # (B, C_in, Hp, Wp)
    dx = dxp[:, :, ph:ph + h, pw:pw + wd]  # (B, C_in, H, W): the padding's gradient is dropped
    # the bias is added at every image and position  ⇒  db = Σ_{b, i, j} dout
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None  # (C_out,)
    # END SOLUTION
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# Transposed conv2d: the adjoint of conv2d with respect to its input
# ----------------------------------------------------------------------------------------------


class ConvTranspose2dCache(NamedTuple):
    x: np.ndarray  # (B, C_in, H, W)
    w: np.ndarray  # (C_in, C_out, kh, kw)
    stride: tuple
    padding: tuple
    dilation: tuple
    has_bias: bool


def conv_transpose2d_forward(x, w, b, stride=1, padding=0, output_padding=0, dilation=1):
    """Transposed convolution of x (B, C_in, H, W) with w (C_in, C_out, kh, kw), plus b (C_out,) or None.

    Each input cell scatters its kernel-weighted copy into the output, s cells apart; padding p
    crops p cells from each side of the result, output_padding adds cells at the bottom and right.
    Returns (out (B, C_out, Ho, Wo), cache), as torch.nn.functional.conv_transpose2d.
    """
    x, w, b, stride, padding, output_padding, dilation = check_conv_transpose2d_inputs(
        x, w, b, stride, padding, output_padding, dilation)
    # BEGIN SOLUTION
    # HINT: this is conv2d's dx computation with x in the place of dout: Wᵀ x per image, then col2im, then crop.
    (bsz, c_in, h, wd), (_, c_out, kh, kw) = x.shape, w.shape
    (sh, sw), (ph, pw), (dh, dw), (oph, opw) = stride, padding, dilation, output_padding
    # Output size (PyTorch's ConvTranspose2d): o = (i − 1)·s − 2p + d·(k − 1) + output_padding + 1
    ho, wo = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1, (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    # ⟨conv2d(y, w), x⟩ = ⟨y, conv_transpose2d(x, w)⟩: the transpose of y ↦ conv2d(y, w) applied to x,
    # i.e. conv2d's backward dx = col2im(Wᵀ dout) with x as dout and w as a (C_out_conv = C_in, C_in_conv = C_out) kernel
    cols = w.reshape(c_in, -1).T @ x.reshape(bsz, c_in, h * wd)  # (B, K, L), K = C_out·kh·kw, L = H·W
    outp = col2im(cols, (bsz, c_out, ho + 2 * ph, wo + 2 * pw), (kh, kw), stride, dilation, (h, wd))  # (B, C_out, Hp, Wp)
    out = outp[:, :, ph:ph + ho, pw:pw + wo]  # (B, C_out, Ho, Wo): the padding is cropped
    if b is not None:
        out = out + b[:, None, None]  # (B, C_out, Ho, Wo)
    # END SOLUTION
    return out, ConvTranspose2dCache(x, w, stride, padding, dilation, b is not None)


def conv_transpose2d_backward(dout, cache):
    """Return (dx, dw, db) given dout (B, C_out, Ho, Wo); db is None when the forward had no bias."""
    x, w, stride, padding, dilation, has_bias = cache
    # BEGIN SOLUTION
    # HINT: the adjoint's adjoint is conv2d: dx is conv2d's forward of dout with w; dw pairs x with dout's patches.
    (bsz, c_in, h, wd), (_, c_out, kh, kw), (ph, pw) = x.shape, w.shape, padding
    doutp = np.pad(dout, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (B, C_out, Hp, Wp)
    # the forward scattered x[b, c, i, j] · w[c, o, u, v] to cell (s·i + d·u, s·j + d·v): gather them back
    dcols = im2col(doutp, (kh, kw), stride, dilation, (h, wd))  # (B, K, L), K = C_out·kh·kw, L = H·W
    # cols = Wᵀ x  ⇒  dx = W dcols (conv2d's forward) and dW = Σ_b x_b dcolsᵀ_b
    dx = (w.reshape(c_in, -1) @ dcols).reshape(x.shape)  # (B, C_in, H, W)
    dw = np.tensordot(x.reshape(bsz, c_in, h * wd), dcols, axes=([0, 2], [0, 2])).reshape(w.shape)  # (C_in, C_out, kh, kw)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None  # (C_out,): Σ over images and positions
    # END SOLUTION
    return dx, dw, db
