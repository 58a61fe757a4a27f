"""conv_arithmetic.png: which input cells feed one output cell, for conv2d and its transpose.

In the manner of Dumoulin and Visin's "A guide to convolution arithmetic for deep learning"
(2016): one row per setting of kernel k, stride s, padding p and dilation d. Left pair: conv2d's
padded input with the cells that feed one output cell, each labelled with the kernel entry w_uv
that multiplies it, and the output. Right pair: the transposed convolution with the same kernel
and settings, from conv2d's output size back to its input size (with the output_padding that
needs), one of its output cells, and the input cells that feed it.

Nothing is drawn from hand-written index math: every highlighted cell is a nonzero gradient
from scratch/conv.py. With the kernel w_uv = u·k + v + 1 (all different), conv2d_backward of a
one-hot dout at the chosen output cell gives ∂out/∂x, which is w_uv exactly at the cell that w_uv
multiplies and 0 elsewhere; conv_transpose2d_backward does the same for the transpose. The
padding cells are shown by running conv2d with padding 0 on the zero-padded input, which is
what padding means; the figure checks that this agrees with the padded call on the real cells.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from figures import save
from scratch.conv import conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward

NAME = "conv_arithmetic"

# (input side, kernel, stride, padding, dilation, what the row shows)
SETTINGS = [
    (5, 3, 1, 0, 1, "no padding, unit strides"),
    (5, 3, 2, 1, 1, "padding and strides"),
    (6, 3, 2, 1, 1, "strides that leave a row over: the transpose needs output_padding"),
    (7, 3, 1, 0, 2, "dilation 2: the kernel's taps 2 cells apart"),
    (6, 4, 2, 1, 1, "DCGAN's layer: kernel 4, stride 2, padding 1 halves the side"),
]
FEED, CHOSEN, PAD = "#4C9BE8", "#F28E2B", "#E6E6E6"


def kernel(k):
    """w (1, 1, k, k) with entries 1 … k², all different, so a gradient value names its tap (u, v)."""
    return np.arange(1.0, k * k + 1.0).reshape(1, 1, k, k)


def one_hot(shape, cell):
    g = np.zeros((1, 1) + shape)
    g[(0, 0) + cell] = 1.0
    return g


def conv_feeds(n, k, s, p, d, cell):
    """∂out[cell]/∂x_padded (n + 2p, n + 2p) for conv2d, and the output side."""
    w = kernel(k)
    out, cache = conv2d_forward(np.zeros((1, 1, n, n)), w, None, s, p, d)
    dx, _, _ = conv2d_backward(one_hot(out.shape[2:], cell), cache)  # (1, 1, n, n), real cells only
    padded, cache_p = conv2d_forward(np.zeros((1, 1, n + 2 * p, n + 2 * p)), w, None, s, 0, d)
    dx_padded, _, _ = conv2d_backward(one_hot(padded.shape[2:], cell), cache_p)
    assert padded.shape == out.shape and np.array_equal(dx_padded[0, 0, p:p + n, p:p + n], dx[0, 0])
    return dx_padded[0, 0], out.shape[2]


def transpose_feeds(m, n, k, s, p, d, output_padding):
    """For conv_transpose2d (m × m → n × n): its output cell fed by the most inputs, and ∂out[cell]/∂x (m, m)."""
    w = kernel(k)
    out, cache = conv_transpose2d_forward(np.zeros((1, 1, m, m)), w, None, s, p, output_padding, d)
    assert out.shape[2:] == (n, n), f"the transpose gives {out.shape[2:]}, not conv2d's input {(n, n)}"
    best, best_count = None, -1
    for cell in np.ndindex(n, n):  # count the feeding inputs of every output cell, from the backward
        dx, _, _ = conv_transpose2d_backward(one_hot((n, n), cell), cache)
        count = int(np.count_nonzero(dx))
        if count > best_count:
            best, best_count, best_dx = cell, count, dx[0, 0]
    return best, best_dx


def draw_grid(ax, origin, size, values=None, chosen=None, pad=0, k=None):
    """Cells of a size × size grid at origin (x, y of its top-left corner), y growing downwards.

    values (size, size): nonzero cells are filled and labelled with their kernel tap; `chosen` is
    one cell to fill in the highlight colour; the outer `pad` rings are padding (grey, dashed)."""
    x0, y0 = origin
    for i in range(size):
        for j in range(size):
            is_pad = i < pad or j < pad or i >= size - pad or j >= size - pad
            face = PAD if is_pad else "white"
            if values is not None and values[i, j] != 0:
                face = FEED
            if chosen == (i, j):
                face = CHOSEN
            ax.add_patch(Rectangle((x0 + j, y0 + i), 1, 1, facecolor=face, edgecolor="0.55" if is_pad else "0.2",
                                   linestyle="--" if is_pad else "-", linewidth=0.8))
            if values is not None and values[i, j] != 0:
                u, v = divmod(int(round(values[i, j])) - 1, k)
                ax.text(x0 + j + 0.5, y0 + i + 0.5, f"w{u}{v}", ha="center", va="center", fontsize=6.5, color="white")


def render(out_dir, full=False):
    # One axes, one unit per cell, so every grid of every row is drawn at the same scale.
    heights = [max(n + 2 * p, n) + 2.6 for n, k, s, p, d, _ in SETTINGS]  # grid, title above, caption below
    left, right, width = -3.4, 17.5, 30.4  # x range of the drawing; the transposed pair starts at x = right
    scale = 0.3  # inches per cell
    fig = plt.figure(figsize=((width - left) * scale, (sum(heights) + 0.2) * scale))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    numbers = {"file": "conv_arithmetic.png"}
    y = 0.0
    for (n, k, s, p, d, what), height in zip(SETTINGS, heights):
        m = (n + 2 * p - d * (k - 1) - 1) // s + 1  # only for the titles; the grids come from the calls
        cell = (0, min(1, m - 1))  # conv2d: the top row's second output, so padding shows when there is some
        feeds, m_out = conv_feeds(n, k, s, p, d, cell)
        assert m_out == m
        # conv2d drops the last (n + 2p − d(k − 1) − 1) mod s rows: the transpose adds them back as output_padding
        output_padding = (n + 2 * p - d * (k - 1) - 1) % s
        t_cell, t_feeds = transpose_feeds(m, n, k, s, p, d, output_padding)
        side = n + 2 * p
        top, middle = y + 1.2, y + 1.2 + side / 2  # grids start below a title line, centred on the padded input
        ax.text(-0.6, middle, f"k = {k}\ns = {s}\np = {p}\nd = {d}", ha="right", va="center", fontsize=9)
        # conv2d: padded input → output
        draw_grid(ax, (0, top), side, feeds, pad=p, k=k)
        draw_grid(ax, (side + 2.4, middle - m / 2), m, chosen=cell)
        ax.annotate("", xy=(side + 2.2, middle), xytext=(side + 0.2, middle), arrowprops=dict(arrowstyle="->", color="0.3"))
        ax.text(0, y + 0.8, f"conv2d: {n}×{n}" + (f" padded by {p}" if p else "") + f" → {m}×{m}", fontsize=9, va="bottom")
        ax.text(0, top + side + 0.35, what, fontsize=8, color="0.25", style="italic", va="top")
        # the transpose: conv2d's output size → its input size
        draw_grid(ax, (right, middle - m / 2), m, t_feeds, k=k)
        draw_grid(ax, (right + m + 2.4, middle - n / 2), n, chosen=t_cell)
        ax.annotate("", xy=(right + m + 2.2, middle), xytext=(right + m + 0.2, middle),
                    arrowprops=dict(arrowstyle="->", color="0.3"))
        ax.text(right, y + 0.8, f"conv_transpose2d: {m}×{m} → {n}×{n}" + (f", output_padding = {output_padding}"
                                                                            if output_padding else ""), fontsize=9, va="bottom")
        numbers[f"k{k} s{s} p{p} d{d} on {n}"] = f"{m}×{m}; the transpose's fullest output cell has {int(np.count_nonzero(t_feeds))} inputs"
        y += height
    ax.axvline(right - 1.4, color="0.8", linewidth=0.8)
    ax.set_xlim(left, width)
    ax.set_ylim(y, -0.2)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.suptitle("Convolution arithmetic, computed by scratch/conv.py\n"
                 "blue: the input cells that feed the orange output cell, each with the kernel tap w_uv that multiplies it; "
                 "grey, dashed: padding\nleft: conv2d; right: conv_transpose2d (conv2d's adjoint) with the same kernel and "
                 "settings, from conv2d's output size back to its input size", fontsize=9.5, y=1.0, va="bottom")
    save(fig, out_dir, "conv_arithmetic.png")
    return numbers
