"""2-D convolution and transposed convolution in NumPy, with every gradient derived by hand.

Shape letters, used in the comment at the end of each array line:
    B    batch                 C_in, C_out  input and output channels   C  either
    H W  input height, width   Ho Wo        output height, width        Hp Wp  padded height, width
    kh kw  kernel height, width             K = kh·kw·C, the length of one patch
    L    positions of the grid the kernel slides over: Ho·Wo for conv2d, H·W for its transpose

Layouts are PyTorch's: images NCHW, conv2d weights (C_out, C_in, kh, kw), transposed-conv
weights (C_in, C_out, kh, kw). Stride s, padding p and dilation d are each an int or a
(height, width) pair. Like every deep-learning library we compute a cross-correlation (the
kernel is not flipped), as `torch.nn.functional.conv2d` does:

    out[b, o, i, j] = bias[o] + Σ_{c, u, v} w[o, c, u, v] · x_pad[b, c, s·i + d·u, s·j + d·v]

The forward is im2col: a strided window view of the padded input, copied once into one row per
output position, (B·L, K), then one matrix product with the (K, C_out) weights. The backward
adds rows back with col2im, one strided add per kernel offset (kh·kw adds), never pixel by pixel.
Three layout choices make it fast, and are why the code transposes where a naive one would not:
rows, not columns (one (B·L, K) product runs 5 to 10 times faster in NumPy than B products
(C_out, K) · (K, L) broadcast over the batch); channels last inside, (B, H, W, C) with patches
ordered (u, v, c), so that a patch's channels sit side by side in memory (copying patches out and
adding them back then moves contiguous runs, 3 to 5 times faster than from NCHW); and each
product written with the long B·L axis on the left (colsᵀ · dout, not doutᵀ · cols: OpenBLAS
ran the latter 2 to 3 times slower here).
The transposed convolution is the adjoint of conv2d with respect to its input: its forward is
conv2d's dx computation, and its gradient with respect to its input is conv2d's forward.
"""

from typing import NamedTuple

import numpy as np

from scratch.validate import check_conv2d_inputs, check_conv_transpose2d_inputs, check_flag

# ----------------------------------------------------------------------------------------------
# Patches: im2col and its adjoint col2im, on channels-last images
# ----------------------------------------------------------------------------------------------


def im2col(xp, kernel, stride, dilation, out_hw):
    """The patches of a padded channels-last image xp (B, Hp, Wp, C) as rows, a (B·Ho·Wo, kh·kw·C) array.

    Row (b·Ho + i)·Wo + j holds output position (i, j)'s cells xp[b, s·i + d·u, s·j + d·v, c], at
    column (u·kw + v)·C + c: the order of w.transpose(0, 2, 3, 1).reshape(C_out, -1).
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    # BEGIN SOLUTION
    # HINT: np.lib.stride_tricks.sliding_window_view over the dilated extent d·(k − 1) + 1, then step by s and by d.
    b, c = xp.shape[0], xp.shape[3]
    extent = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    windows = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=(1, 2))  # (B, Hp−eh+1, Wp−ew+1, C, eh, ew), a view
    windows = windows[:, :sh * (ho - 1) + 1:sh, :sw * (wo - 1) + 1:sw, :, ::dh, ::dw]  # (B, Ho, Wo, C, kh, kw), a view
    # the one copy of the forward: every cell lands in each patch that covers it
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(b * ho * wo, kh * kw * c)  # (B·L, K)
    # END SOLUTION


def col2im(cols, padded_shape, kernel, stride, dilation, out_hw):
    """The adjoint of im2col: add every entry of the rows cols (B·Ho·Wo, kh·kw·C) back into its cell.

    Returns the channels-last (B, Hp, Wp, C) = padded_shape; a cell in several patches sums them all.
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    # BEGIN SOLUTION
    # HINT: loop over the kh·kw kernel offsets (u, v), not over pixels: each offset is one strided slice of the output.
    b, _, _, c = padded_shape
    patches = cols.reshape(b, ho, wo, kh, kw, c)  # (B, Ho, Wo, kh, kw, C), a view
    xp = np.zeros(padded_shape, dtype=cols.dtype)  # (B, Hp, Wp, C)
    for u in range(kh):
        for v in range(kw):
            # offset (u, v) of output (i, j) is cell (s·i + d·u, s·j + d·v): a slice with step s, starting at d·u
            xp[:, dh * u:dh * u + sh * (ho - 1) + 1:sh, dw * v:dw * v + sw * (wo - 1) + 1:sw] += patches[:, :, :, u, v]
    return xp
    # END SOLUTION


# ----------------------------------------------------------------------------------------------
# conv2d
# ----------------------------------------------------------------------------------------------


class Conv2dCache(NamedTuple):
    cols: np.ndarray  # (B·L, K), the input's patches: dw is their product with dout
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
    # HINT: pad (channels last), im2col, one product with the weights as a (K, C_out) matrix, back to NCHW, add the bias.
    (bsz, _, h, wd), (c_out, _, kh, kw) = x.shape, w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    # Output size (Dumoulin & Visin 2016, §2–5): o = ⌊(i + 2p − d·(k − 1) − 1) / s⌋ + 1
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (ph, ph), (pw, pw), (0, 0)))  # (B, Hp, Wp, C_in), zeros on all 4 sides
    cols = im2col(xp, (kh, kw), stride, dilation, (ho, wo))  # (B·L, K)
    w_cols = w.transpose(2, 3, 1, 0).reshape(-1, c_out)  # (K, C_out), rows in the patches' order (u, v, c)
    # out[(b, i, j), o] = Σ_k cols[(b, i, j), k] · w[k, o]: one product for every image and position
    out = cols @ w_cols  # (B·L, C_out)
    out = np.ascontiguousarray(out.reshape(bsz, ho, wo, c_out).transpose(0, 3, 1, 2))  # (B, C_out, Ho, Wo)
    if b is not None:
        out += b[:, None, None]  # (B, C_out, Ho, Wo), one bias per output channel
    # END SOLUTION
    return out, Conv2dCache(cols, w, x.shape, stride, padding, dilation, b is not None)


def conv2d_backward(dout, cache, needs_input_grad=True):
    """Return (dx, dw, db) given dout (B, C_out, Ho, Wo); db is None when the forward had no bias.

    needs_input_grad False: dx is None and costs nothing, for an input no gradient flows into (data,
    or a generator's output while its discriminator trains): torch's autograd skips it the same way.
    """
    cols, w, x_shape, stride, padding, dilation, has_bias = cache
    needs_input_grad = check_flag("needs_input_grad", needs_input_grad)
    # BEGIN SOLUTION
    # HINT: the forward is out = cols · W; go back through the product, then col2im, then crop the padding;
    # HINT: with needs_input_grad False, return (None, dw, db) before any of dx's work.
    (bsz, c_in, h, wd), (c_out, _, kh, kw), (ph, pw) = x_shape, w.shape, padding
    ho, wo = dout.shape[2:]
    g = dout.transpose(0, 2, 3, 1).reshape(bsz * ho * wo, c_out)  # (B·L, C_out), the rows of out
    # out = cols W  ⇒  dW = colsᵀ dout  (one product, summed over every image and position)
    dw = (cols.T @ g).reshape(kh, kw, c_in, c_out)  # (kh, kw, C_in, C_out), the patches' order
    dw = np.ascontiguousarray(dw.transpose(3, 2, 0, 1))  # (C_out, C_in, kh, kw)
    # the bias is added at every image and position  ⇒  db = Σ_{b, i, j} dout
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None  # (C_out,)
    if not needs_input_grad:
        return None, dw, db
    # out = cols W  ⇒  dcols = dout Wᵀ, then each patch entry goes back to the cell it was copied from
    dcols = g @ w.transpose(0, 2, 3, 1).reshape(c_out, -1)  # (B·L, K)
    dxp = col2im(dcols, (bsz, h + 2 * ph, wd + 2 * pw, c_in), (kh, kw), stride, dilation, (ho, wo))  # (B, Hp, Wp, C_in)
    dx = np.ascontiguousarray(dxp[:, ph:ph + h, pw:pw + wd].transpose(0, 3, 1, 2))  # (B, C_in, H, W), padding dropped
    # END SOLUTION
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# Transposed conv2d: the adjoint of conv2d with respect to its input
# ----------------------------------------------------------------------------------------------


class ConvTranspose2dCache(NamedTuple):
    rows: np.ndarray  # (B·L, C_in), the input's cells as rows (channels last): dw is their product with dout's patches
    x_shape: tuple  # (B, C_in, H, W)
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
    # HINT: this is conv2d's dx computation with x in the place of dout: x's rows times W, then col2im, then crop;
    # HINT: name x's rows (B·L, C_in) `rows`: the cache keeps them for the backward.
    (bsz, c_in, h, wd), (_, c_out, kh, kw) = x.shape, w.shape
    (sh, sw), (ph, pw), (dh, dw), (oph, opw) = stride, padding, dilation, output_padding
    # Output size (PyTorch's ConvTranspose2d): o = (i − 1)·s − 2p + d·(k − 1) + output_padding + 1
    ho, wo = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1, (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    # ⟨conv2d(y, w), x⟩ = ⟨y, conv_transpose2d(x, w)⟩: the transpose of y ↦ conv2d(y, w) applied to x,
    # i.e. conv2d's backward dx = col2im(dout W) with x as dout and w as a (C_out_conv = C_in, C_in_conv = C_out) kernel
    rows = x.transpose(0, 2, 3, 1).reshape(bsz * h * wd, c_in)  # (B·L, C_in), one row per input cell, L = H·W
    cols = rows @ w.transpose(0, 2, 3, 1).reshape(c_in, -1)  # (B·L, K), K = kh·kw·C_out: each cell's weighted kernel
    outp = col2im(cols, (bsz, ho + 2 * ph, wo + 2 * pw, c_out), (kh, kw), stride, dilation, (h, wd))  # (B, Hp, Wp, C_out)
    out = np.ascontiguousarray(outp[:, ph:ph + ho, pw:pw + wo].transpose(0, 3, 1, 2))  # (B, C_out, Ho, Wo), cropped
    if b is not None:
        out += b[:, None, None]  # (B, C_out, Ho, Wo)
    # END SOLUTION
    return out, ConvTranspose2dCache(rows, x.shape, w, stride, padding, dilation, b is not None)


def conv_transpose2d_backward(dout, cache):
    """Return (dx, dw, db) given dout (B, C_out, Ho, Wo); db is None when the forward had no bias."""
    rows, x_shape, w, stride, padding, dilation, has_bias = cache
    # BEGIN SOLUTION
    # HINT: the adjoint's adjoint is conv2d: dx is conv2d's forward of dout with w; dw pairs x's cached rows with
    # HINT: dout's patches.
    (bsz, c_in, h, wd), (_, c_out, kh, kw), (ph, pw) = x_shape, w.shape, padding
    doutp = np.pad(dout.transpose(0, 2, 3, 1), ((0, 0), (ph, ph), (pw, pw), (0, 0)))  # (B, Hp, Wp, C_out)
    # the forward scattered x[b, c, i, j] · w[c, o, u, v] to cell (s·i + d·u, s·j + d·v): gather them back
    dcols = im2col(doutp, (kh, kw), stride, dilation, (h, wd))  # (B·L, K), K = kh·kw·C_out, L = H·W
    # cols = rows W  ⇒  drows = dcols Wᵀ (conv2d's forward, with w as its kernel) and dW = (dcolsᵀ rows)ᵀ
    drows = dcols @ w.transpose(2, 3, 1, 0).reshape(-1, c_in)  # (B·L, C_in); Wᵀ is (K, C_in)
    dx = np.ascontiguousarray(drows.reshape(bsz, h, wd, c_in).transpose(0, 3, 1, 2))  # (B, C_in, H, W)
    dw = (dcols.T @ rows).reshape(kh, kw, c_out, c_in)  # (kh, kw, C_out, C_in), the patches' order
    dw = np.ascontiguousarray(dw.transpose(3, 2, 0, 1))  # (C_in, C_out, kh, kw)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None  # (C_out,): Σ over images and positions
    # END SOLUTION
    return dx, dw, db
