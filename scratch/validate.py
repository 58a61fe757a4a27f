"""Input checks shared by every implementation: clear errors instead of silent broadcasts.

Not math: these helpers only look at dtypes and shapes. Each error names the argument, the
shape it expected and the shape it received, so that a student sees at once what went wrong.
"""

import numpy as np


def as_float_array(name, x):
    """Return `x` as an ndarray of a floating dtype, or raise TypeError naming `name`."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(
            f"{name} must be a floating-point array (float32 or float64), "
            f"got dtype {x.dtype} with shape {x.shape}"
        )
    return x


def check_ndim(name, x, ndim, layout):
    """Raise ValueError unless `x` has at least `ndim` axes; `layout` reads like '(..., T, D)'."""
    if x.ndim < ndim:
        raise ValueError(f"{name} must have shape {layout}, got shape {x.shape}")


def check_same_dtype(**arrays):
    """Raise TypeError unless every array shares one dtype (no silent promotion to float64)."""
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"arrays must share one dtype, got {listed}")


def check_shape(name, x, expected):
    """Raise ValueError unless `x.shape == expected`."""
    if x.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got shape {x.shape}")


def as_mask(mask, target_shape):
    """Return `mask` as a boolean ndarray broadcastable to `target_shape`, or raise.

    Masks are boolean with True = may attend; a float or integer mask is rejected rather than
    guessed at, because frameworks disagree on what 1 means (PyTorch's `attn_mask` uses True
    for *blocked* positions in `nn.MultiheadAttention`).
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(
            f"mask must be a boolean array (True = may attend), got dtype {mask.dtype} "
            f"with shape {mask.shape}"
        )
    try:
        broadcast = np.broadcast_shapes(mask.shape, target_shape)
    except ValueError:
        broadcast = None
    if broadcast != tuple(target_shape):
        raise ValueError(
            f"mask must be broadcastable to {tuple(target_shape)}, got shape {mask.shape}"
        )
    return mask


# ----------------------------------------------------------------------------------------------
# Attention inputs: shared by scratch/attention.py and every port, so all raise the same errors.
# ----------------------------------------------------------------------------------------------

MHA_PARAM_NAMES = ("W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o")


def check_attention_inputs(q, k, v, mask):
    """Validate q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv) and a mask for (..., Tq, Tk)."""
    q, k, v = as_float_array("q", q), as_float_array("k", k), as_float_array("v", v)
    check_ndim("q", q, 2, "(..., Tq, dk)")
    check_ndim("k", k, 2, "(..., Tk, dk)")
    check_ndim("v", v, 2, "(..., Tk, dv)")
    check_same_dtype(q=q, k=k, v=v)
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k must have shape (..., Tk, dk={q.shape[-1]}) to match q {q.shape}, got shape {k.shape}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v must have shape (..., Tk={k.shape[-2]}, dv) to match k {k.shape}, got shape {v.shape}")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(f"q, k and v must share their leading axes, got q {q.shape}, k {k.shape}, v {v.shape}")
    if mask is not None:
        mask = as_mask(mask, q.shape[:-1] + (k.shape[-2],))
    return q, k, v, mask


def check_multi_head_attention_inputs(x_q, x_kv, params, num_heads, mask):
    """Validate x_q (B, Tq, D), x_kv (B, Tk, D), the (D, D) and (D,) params, heads and mask."""
    x_q, x_kv = as_float_array("x_q", x_q), as_float_array("x_kv", x_kv)
    if x_q.ndim != 3:
        raise ValueError(f"x_q must have shape (B, Tq, D), got shape {x_q.shape}")
    b, _, d = x_q.shape
    if x_kv.ndim != 3 or x_kv.shape[0] != b or x_kv.shape[2] != d:
        raise ValueError(f"x_kv must have shape (B={b}, Tk, D={d}) to match x_q {x_q.shape}, got shape {x_kv.shape}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if d % num_heads != 0:
        raise ValueError(f"d_model = {d} (last axis of x_q {x_q.shape}) must be divisible by num_heads = {num_heads}")
    missing = [name for name in MHA_PARAM_NAMES if name not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; multi-head attention needs {list(MHA_PARAM_NAMES)}")
    checked = {}
    for name in MHA_PARAM_NAMES:
        p = as_float_array(f"params[{name!r}]", params[name])
        expected = (d, d) if name.startswith("W") else (d,)
        if p.shape != expected:
            raise ValueError(f"params[{name!r}] must have shape {expected} for d_model = {d}, got shape {p.shape}")
        checked[name] = p
    check_same_dtype(x_q=x_q, x_kv=x_kv, **{f"params[{n!r}]": p for n, p in checked.items()})
    if mask is not None:
        mask = as_mask(mask, (b, x_q.shape[1], x_kv.shape[1]))
    return x_q, x_kv, checked, mask


# ----------------------------------------------------------------------------------------------
# Linear maps and the Transformer's inputs: shared by scratch/layers.py, scratch/transformer.py
# and every port, so all raise the same errors.
# ----------------------------------------------------------------------------------------------


def check_negative_slope(negative_slope):
    """A leaky ReLU's slope: a real number in (0, 1] (0 is relu itself, relu_forward), returned as a Python float
    so that float32 inputs stay float32."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float, np.integer, np.floating)) \
            or not 0.0 < negative_slope <= 1.0:
        raise ValueError(f"negative_slope must be a number in (0, 1], got {negative_slope!r}")
    return float(negative_slope)


def check_flag(name, value):
    """A switch such as needs_input_grad: True or False (NumPy's bool too), returned as a Python bool; anything
    else, 0 and 1 included, is refused rather than read by its truth value."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_linear_inputs(x, W, b):
    """x (..., I), W (I, O), b (O,), one floating dtype."""
    x, W, b = as_float_array("x", x), as_float_array("W", W), as_float_array("b", b)
    check_ndim("W", W, 2, "(I, O)")
    check_ndim("x", x, 1, "(..., I)")
    if W.ndim != 2 or x.shape[-1] != W.shape[0]:
        raise ValueError(f"W must have shape ({x.shape[-1]}, O) to match x {x.shape}, got shape {W.shape}")
    check_shape("b", b, (W.shape[1],))
    check_same_dtype(x=x, W=W, b=b)
    return x, W, b


def check_feed_forward_inputs(x, params):
    """x (..., D) and the two linear maps W1 b1 (D → F), W2 b2 (F → D), checked as the forward meets them."""
    x, W1, _ = check_linear_inputs(x, params["W1"], params["b1"])
    check_linear_inputs(np.empty(x.shape[:-1] + (W1.shape[1],), x.dtype), params["W2"], params["b2"])
    return x


def check_positional_encoding_args(t, d_model):
    for name, value in (("t", t), ("d_model", d_model)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def check_layer_norm_inputs(x, gamma, beta):
    """x (..., D), gamma and beta (D,), one floating dtype."""
    x, gamma, beta = as_float_array("x", x), as_float_array("gamma", gamma), as_float_array("beta", beta)
    check_ndim("x", x, 1, "(..., D)")
    check_shape("gamma", gamma, x.shape[-1:])
    check_shape("beta", beta, x.shape[-1:])
    check_same_dtype(x=x, gamma=gamma, beta=beta)
    return x, gamma, beta


def check_cross_entropy_inputs(logits, targets, label_smoothing, ignore_index):
    """logits (..., V), integer targets (...) in [0, V) unless ignored, ε in [0, 1].

    Returns (logits, targets, counted), counted (...) bool: False where the target is ignored.
    """
    logits = as_float_array("logits", logits)
    check_ndim("logits", logits, 1, "(..., V)")
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be an integer array, got dtype {targets.dtype} with shape {targets.shape}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have shape {logits.shape[:-1]} to match logits {logits.shape}, "
                         f"got shape {targets.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}")
    v = logits.shape[-1]
    counted = np.ones(targets.shape, bool) if ignore_index is None else targets != ignore_index
    bad = targets[counted & ((targets < 0) | (targets >= v))]
    if bad.size:
        raise ValueError(f"targets must lie in [0, V={v}) (or equal ignore_index={ignore_index}), got {np.unique(bad).tolist()}")
    return logits, targets, counted


# ----------------------------------------------------------------------------------------------
# Convolutions and batch norm: shared by scratch/conv.py, scratch/layers.py and every port, so
# all raise the same errors.
# ----------------------------------------------------------------------------------------------


def as_pair(name, value, minimum):
    """(int, int) from an int or a pair of ints, each ≥ `minimum` (1: stride, dilation; 0: padding)."""
    kind = "positive" if minimum == 1 else "non-negative"
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum for v in pair):
        raise ValueError(f"{name} must be a {kind} int or a pair of {kind} ints (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_conv_arrays(x, w, b, w_layout, channel_axis):
    """x (B, C, H, W) and w 4-D of one floating dtype, w's `channel_axis` matching x's C; b (w_out,) or None."""
    x, w = as_float_array("x", x), as_float_array("w", w)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C_in, H, W), got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"w must have shape {w_layout}, got shape {w.shape}")
    c_in = x.shape[1]
    if w.shape[channel_axis] != c_in:
        layout = w_layout.replace("C_in", f"C_in={c_in}")
        raise ValueError(f"w must have shape {layout} to match x {x.shape} (C_in = {c_in}), got shape {w.shape}")
    c_out = w.shape[1 - channel_axis]
    if b is not None:
        b = as_float_array("b", b)
        if b.shape != (c_out,):
            raise ValueError(f"b must have shape (C_out={c_out},) to match w {w.shape}, got shape {b.shape}")
        check_same_dtype(x=x, w=w, b=b)
    else:
        check_same_dtype(x=x, w=w)
    return x, w, b


def check_conv2d_inputs(x, w, b, stride, padding, dilation):
    """x (B, C_in, H, W), w (C_out, C_in, kh, kw), b (C_out,) or None; stride, padding, dilation as pairs.

    Returns (x, w, b, stride, padding, dilation) with the three settings as (height, width) pairs.
    """
    x, w, b = _check_conv_arrays(x, w, b, "(C_out, C_in, kh, kw)", channel_axis=1)
    stride, padding, dilation = as_pair("stride", stride, 1), as_pair("padding", padding, 0), as_pair("dilation", dilation, 1)
    size = tuple(n + 2 * p for n, p in zip(x.shape[2:], padding))  # the padded input's H, W
    extent = tuple(d * (k - 1) + 1 for d, k in zip(dilation, w.shape[2:]))  # the dilated kernel's span
    if extent[0] > size[0] or extent[1] > size[1]:
        raise ValueError(
            f"w's kernel {w.shape[2]}×{w.shape[3]} (w shape {w.shape}) with dilation {dilation} spans {extent[0]}×{extent[1]} "
            f"cells, larger than the padded input {size[0]}×{size[1]} (x shape {x.shape}, padding {padding})"
        )
    return x, w, b, stride, padding, dilation


def check_conv_transpose2d_inputs(x, w, b, stride, padding, output_padding, dilation):
    """x (B, C_in, H, W), w (C_in, C_out, kh, kw), b (C_out,) or None; the settings as pairs.

    output_padding, added to one side of the output, must be smaller than the stride or the
    dilation (as in PyTorch); the output must have at least one row and one column.
    Returns (x, w, b, stride, padding, output_padding, dilation).
    """
    x, w, b = _check_conv_arrays(x, w, b, "(C_in, C_out, kh, kw)", channel_axis=0)
    stride, padding, dilation = as_pair("stride", stride, 1), as_pair("padding", padding, 0), as_pair("dilation", dilation, 1)
    output_padding = as_pair("output_padding", output_padding, 0)
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"output_padding {output_padding} must be smaller than the stride {stride} or the dilation "
                         f"{dilation}, in each of height and width")
    size = tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1
                 for n, s, p, d, k, op in zip(x.shape[2:], stride, padding, dilation, w.shape[2:], output_padding))
    if x.shape[2] < 1 or x.shape[3] < 1 or size[0] < 1 or size[1] < 1:
        raise ValueError(f"padding {padding} is too large for x {x.shape} and w {w.shape} with stride {stride}, "
                         f"dilation {dilation} and output_padding {output_padding}: the output would be {size[0]}×{size[1]}")
    return x, w, b, stride, padding, output_padding, dilation


def check_batch_norm_inputs(x, gamma, beta):
    """x (B, C) or (B, C, H, W) with at least one value per channel, gamma and beta (C,), one floating dtype."""
    x, gamma, beta = as_float_array("x", x), as_float_array("gamma", gamma), as_float_array("beta", beta)
    if x.ndim not in (2, 4):
        raise ValueError(f"x must have shape (B, C) or (B, C, H, W), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"x must hold at least one value per channel, got shape {x.shape}")
    c = x.shape[1]
    if gamma.shape != (c,):
        raise ValueError(f"gamma must have shape (C={c},) to match x {x.shape}, got shape {gamma.shape}")
    if beta.shape != (c,):
        raise ValueError(f"beta must have shape (C={c},) to match x {x.shape}, got shape {beta.shape}")
    check_same_dtype(x=x, gamma=gamma, beta=beta)
    return x, gamma, beta


def check_running_stats(running_mean, running_var, channels, dtype):
    """running_mean and running_var (C,) of the layer's dtype; the variances must be ≥ 0."""
    running_mean, running_var = as_float_array("running_mean", running_mean), as_float_array("running_var", running_var)
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if r.shape != (channels,):
            raise ValueError(f"{name} must have shape (C={channels},), got shape {r.shape}")
        if r.dtype != dtype:
            raise TypeError(f"{name} must have the layer's dtype {dtype}, got {r.dtype}")
    if np.any(running_var < 0):
        raise ValueError(f"running_var must be ≥ 0, got a minimum of {running_var.min()!r}")
    return running_mean, running_var
