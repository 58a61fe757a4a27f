"""The one place in ports/keras where a gradient is taken: `record` and `gradients`.

    out, cache = record(fn, *inputs)      # runs fn on the inputs as tensors, recording the graph
    d_inputs = gradients(dout, cache)     # (∂out/∂input)ᵀ · dout for each input, as NumPy arrays

A Keras port's `name_forward` is `record(<the math in keras.ops>, *arrays)`, its `name_backward`
is `gradients(dout, cache)`: the port says what it computes, and this file says how a backend
differentiates it. Today Keras runs on TensorFlow, so recording is a `tf.GradientTape`; the JAX
backend would keep `jax.vjp`'s function in the cache instead, and the PyTorch backend the graph
autograd builds. Only this file changes then.
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

__all__ = ["Recording", "record", "gradients"]

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"ports.keras records gradients with TensorFlow's GradientTape and needs KERAS_BACKEND=tensorflow, "
        f"got backend {keras.backend.backend()!r}"
    )

import tensorflow as tf  # noqa: E402  (after the backend check: the message above is the helpful one)


class Recording(NamedTuple):
    tape: object  # tf.GradientTape that watched the inputs while fn ran; one `gradients` call may read it
    inputs: tuple  # the input tensors, in the order given to record
    out: object  # fn's output tensor


def record(fn, *inputs):
    """(fn(*inputs) as a NumPy array, the recording) with every input watched.

    Each input is an array (or tensor) that the output is differentiated with respect to; anything
    that is not differentiated (token ids, masks, sizes) goes into fn through its closure.
    """
    with tf.GradientTape() as tape:
        tensors = tuple(ops.convert_to_tensor(x) for x in inputs)
        for t in tensors:
            tape.watch(t)
        out = fn(*tensors)
    return ops.convert_to_numpy(out), Recording(tape, tensors, out)


def gradients(dout, cache):
    """The vector-Jacobian product (∂out/∂input)ᵀ · dout for every recorded input, as NumPy arrays.

    An input that the output does not depend on gets zeros; an embedding table's gradient, which
    TensorFlow returns as IndexedSlices (one row per id looked up), is summed into a dense array.
    """
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    upstream = ops.convert_to_tensor(dout, dtype=cache.out.dtype)
    grads = cache.tape.gradient(cache.out, cache.inputs, output_gradients=upstream)
    return [np.zeros(tuple(x.shape), dtype=keras.backend.standardize_dtype(x.dtype)) if g is None
            else ops.convert_to_numpy(tf.convert_to_tensor(g)) for x, g in zip(cache.inputs, grads)]
