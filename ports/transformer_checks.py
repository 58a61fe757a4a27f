"""scratch's input checks for the Transformer, as functions every port calls.

scratch/transformer.py and scratch/encoder_decoder.py write some of their checks inline (the
positional encoding's arguments, the cross-entropy's targets, the linear maps inside the
feed-forward block); here they are as functions, word for word and in scratch's order, so that a
port raises exactly what scratch raises. The other checks (a layer's parameters, a sequence,
token ids, attention masks) are scratch's own helpers, imported by the ports directly.
checks/test_transformer_ports.py feeds bad inputs to scratch and to every port and compares
the errors. NumPy only: no framework is imported here.
"""

import numpy as np

from scratch.encoder_decoder import parameter_shapes
from scratch.validate import as_float_array, check_ndim, check_same_dtype, check_shape


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


def check_linear_inputs(x, W, b):
    """scratch/layers.py's linear_forward checks: x (..., I), W (I, O), b (O,), one dtype.

    Returns an (uninitialised) array of the map's output shape and dtype, to check the next map with.
    """
    x, W, b = as_float_array("x", x), as_float_array("W", W), as_float_array("b", b)
    check_ndim("W", W, 2, "(I, O)")
    check_ndim("x", x, 1, "(..., I)")
    if W.ndim != 2 or x.shape[-1] != W.shape[0]:
        raise ValueError(f"W must have shape ({x.shape[-1]}, O) to match x {x.shape}, got shape {W.shape}")
    check_shape("b", b, (W.shape[1],))
    check_same_dtype(x=x, W=W, b=b)
    return np.empty(x.shape[:-1] + (W.shape[1],), x.dtype)


def check_feed_forward_inputs(x, params):
    """x (..., D) and the two linear maps W1 b1, W2 b2, as scratch's feed_forward_forward meets them."""
    check_linear_inputs(check_linear_inputs(x, params["W1"], params["b1"]), params["W2"], params["b2"])
    return as_float_array("x", x)


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


def check_transformer_params(params, config):
    """Every name of parameter_shapes(config), floating, of its shape, all of one dtype; returns the dtype.

    (scratch meets the same parameters layer by layer as its forward reaches them, and a missing
    one is a KeyError there; the ports check them all up front, so that nothing is computed from
    a malformed dict.)
    """
    expected = parameter_shapes(config)
    missing = [name for name in expected if name not in params]
    if missing:
        raise ValueError(f"params is missing {missing}")
    for name, shape in expected.items():
        check_shape(f"params[{name!r}]", as_float_array(f"params[{name!r}]", params[name]), shape)
    check_same_dtype(**{name.replace(".", "_"): np.asarray(params[name]) for name in expected})
    return np.asarray(params["src_embed"]).dtype
