"""The convolutional VAE in TensorFlow 2, the seed's §5.2: scratch/conv_vae.py with tf ops, the backward
by tf.GradientTape, and the model as a `tf.Module` trained with a GradientTape.

Read it beside scratch/conv_vae.py: the names, the arguments and the NumPy-in/NumPy-out interface
are the same (`encode` / `encode_backward`, `decode` / `decode_backward`, `conv_vae_forward` /
`conv_vae_backward`, `decoded_means`). The convolutions are ports/tensorflow/conv.py's, which
translate scratch's NCHW layout and PyTorch's explicit padding into TensorFlow's NHWC kernels
(TensorFlow's CVAE tutorial writes "same" padding for the transposed convolutions, which pads the
other side: one cell of shift against PyTorch's padding 1, output_padding 1; see scratch/conv_vae.py).

After the functions: `ConvVAE`, a `tf.Module` with one `tf.Variable` per scratch parameter and an
`elbo(x, eps)` method; `train_step(vae, x, eps, optimizer)`, the tutorial's step; and
`to_tf_conv_vae` / `from_tf_conv_vae`. The variables keep the scratch layout, so nothing is
transposed on the way in or out.

Shape letters as in scratch: B batch, Z latent width, c the width.
"""

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from ports.tensorflow.conv import _conv2d, _conv_transpose2d
from ports.tensorflow.vae import _bernoulli_log_likelihood, _gaussian_kl, _reparameterize
from scratch.conv_vae import ConvVAEConfig, check_inputs, init_conv_vae, parameter_shapes
from scratch.validate import as_float_array
from scratch.vae import VAEOutput

__all__ = [
    "ConvVAEConfig", "parameter_shapes", "init_conv_vae", "encode", "encode_backward", "decode", "decode_backward",
    "conv_vae_forward", "conv_vae_backward", "decoded_means", "ConvVAE", "train_step", "to_tf_conv_vae",
    "from_tf_conv_vae",
]

ENCODER = ("enc.W1", "enc.b1", "enc.W2", "enc.b2", "enc.W_mu", "enc.b_mu", "enc.W_lv", "enc.b_lv")
DECODER = ("dec.W1", "dec.b1", "dec.W2", "dec.b2", "dec.W3", "dec.b3", "dec.W_out", "dec.b_out")
ONE, TWO, NONE = (1, 1), (2, 2), (0, 0)  # (height, width) pairs for ports/tensorflow/conv.py


# ----------------------------------------------------------------------------------------------
# The networks and the bound on a dict of tensors (or tf.Variables) in the scratch layout
# ----------------------------------------------------------------------------------------------


def _encode(x, p):
    # Keras's "valid": no padding, o = ⌊(i − 3) / 2⌋ + 1, 28 → 13 → 6
    h = tf.nn.relu(_conv2d(x, p["enc.W1"], p["enc.b1"], TWO, NONE, ONE))  # (B, c, 13, 13)
    h = tf.nn.relu(_conv2d(h, p["enc.W2"], p["enc.b2"], TWO, NONE, ONE))  # (B, 2c, 6, 6)
    h = tf.reshape(h, (-1, h.shape[1] * 36))  # (B, 2c·36), in NCHW order, as scratch flattens
    return tf.matmul(h, p["enc.W_mu"]) + p["enc.b_mu"], tf.matmul(h, p["enc.W_lv"]) + p["enc.b_lv"]  # (B, Z) each


def _decode(z, p, config):
    h = tf.reshape(tf.nn.relu(tf.matmul(z, p["dec.W1"]) + p["dec.b1"]), (-1, config.width, 7, 7))  # (B, c, 7, 7)
    # o = 2(i − 1) − 2 + 3 + 1 = 2i: 7 → 14 → 28, and the last keeps the side
    h = tf.nn.relu(_conv_transpose2d(h, p["dec.W2"], p["dec.b2"], TWO, ONE, ONE, ONE))  # (B, 2c, 14, 14)
    h = tf.nn.relu(_conv_transpose2d(h, p["dec.W3"], p["dec.b3"], TWO, ONE, ONE, ONE))  # (B, c, 28, 28)
    return _conv_transpose2d(h, p["dec.W_out"], p["dec.b_out"], ONE, ONE, NONE, ONE)  # (B, 1, 28, 28): logits


def _elbo(x, eps, p, config):
    """A VAEOutput of tensors: x (B, 1, 28, 28), eps (B, Z); `decoded` holds the logits flattened to (B, 784)."""
    mu, log_var = _encode(x, p)  # (B, Z) each
    z = _reparameterize(mu, log_var, eps)  # (B, Z)
    decoded = tf.reshape(_decode(z, p, config), (-1, 784))  # (B, 784)
    # log p(x|z) summed over the 784 pixels, and KL(q(z|x) ‖ N(0, I)), each (B,)
    reconstruction = _bernoulli_log_likelihood(tf.reshape(x, (-1, 784)), decoded)
    kl = _gaussian_kl(mu, log_var)
    # Kingma and Welling (2014), Eq. (3): L = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))
    elbo = reconstruction - kl  # (B,)
    return VAEOutput(-tf.reduce_mean(elbo), elbo, reconstruction, kl, mu, log_var, z, decoded)


# ----------------------------------------------------------------------------------------------
# The contract: NumPy in, NumPy out, the backward by the GradientTape
# ----------------------------------------------------------------------------------------------


class NetCache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    inputs: tuple  # the network's input, then its parameters
    names: tuple  # the parameters' names
    outs: tuple  # the outputs


def _recorded(data, params, names, network):
    with tf.GradientTape() as tape:
        inputs = tuple(tf.constant(a) for a in (data, *(np.asarray(params[name]) for name in names)))
        tape.watch(inputs)
        outs = network(inputs[0], dict(zip(names, inputs[1:])))
    outs = outs if isinstance(outs, tuple) else (outs,)
    return outs, NetCache(tape, inputs, tuple(names), outs)


def _named_gradients(douts, cache):
    for name, d, out in zip(("dmu", "dlog_var", "dout"), douts, cache.outs):
        if np.shape(d) != tuple(out.shape):
            raise ValueError(f"{name} must have shape {tuple(out.shape)}, got shape {np.shape(d)}")
    upstream = [tf.constant(np.asarray(d), dtype=o.dtype) for d, o in zip(douts, cache.outs)]
    grads = cache.tape.gradient(list(cache.outs), cache.inputs, output_gradients=upstream)
    return grads[0].numpy(), {name: g.numpy() for name, g in zip(cache.names, grads[1:])}


def encode(x, params, config):
    """q(z|x): (μ, log σ²), each (B, Z), and the cache for encode_backward."""
    (mu, log_var), cache = _recorded(as_float_array("x", x), params, ENCODER, _encode)
    return mu.numpy(), log_var.numpy(), cache


def encode_backward(dmu, dlog_var, caches):
    """Grads of every "enc.*" parameter; x is data, its gradient is dropped."""
    return _named_gradients((dmu, dlog_var), caches)[1]


def decode(z, params, config):
    """p(x|z): Bernoulli logits (B, 1, 28, 28), and the cache for decode_backward."""
    (logits,), cache = _recorded(as_float_array("z", z), params, DECODER, lambda t, p: _decode(t, p, config))
    return logits.numpy(), cache


def decode_backward(dlogits, caches):
    """Return (dz, grads of every "dec.*" parameter)."""
    return _named_gradients((dlogits,), caches)


class ConvVAECache(NamedTuple):
    tape: tf.GradientTape
    names: tuple  # the parameter names, in the order of `inputs`
    inputs: tuple  # the parameter tensors
    out: tf.Tensor  # the loss


def conv_vae_forward(x, params, eps, config):
    """One reparameterised pass: x (B, 1, 28, 28) in [0, 1], eps (B, Z). Returns (vae.VAEOutput, cache)."""
    x, eps = check_inputs(x, params, eps, config)
    names = tuple(parameter_shapes(config))
    with tf.GradientTape() as tape:
        inputs = tuple(tf.constant(np.asarray(params[name])) for name in names)
        tape.watch(inputs)
        out = _elbo(tf.constant(x), tf.constant(eps), dict(zip(names, inputs)), config)
    arrays = VAEOutput(float(out.loss), *(t.numpy() for t in out[1:]))
    return arrays, ConvVAECache(tape, names, inputs, out.loss)


def conv_vae_backward(dloss, cache):
    """Gradients of dloss · loss with respect to every parameter, keyed (and ordered) like parameter_shapes."""
    grads = cache.tape.gradient(cache.out, cache.inputs, output_gradients=tf.constant(dloss, dtype=cache.out.dtype))
    return {name: g.numpy() for name, g in zip(cache.names, grads)}


def decoded_means(z, params, config):
    """The decoder's Bernoulli means σ(logits) of latent codes z (B, Z): images (B, 28, 28) in [0, 1]."""
    p = {name: tf.constant(np.asarray(params[name])) for name in DECODER}
    return tf.sigmoid(_decode(tf.constant(as_float_array("z", z)), p, config))[:, 0].numpy()  # (B, 28, 28)


# ----------------------------------------------------------------------------------------------
# The seed's §5.2: the model as a tf.Module, trained with a GradientTape
# ----------------------------------------------------------------------------------------------


class ConvVAE(tf.Module):
    """The conv VAE as a `tf.Module`: one `tf.Variable` per scratch parameter, named like it.

    Initialised as scratch's `init_conv_vae` (Glorot-uniform, counting a kernel's cells in fan-in
    and fan-out; zero biases), with TensorFlow's stateless random numbers from `seed`.
    """

    def __init__(self, config=ConvVAEConfig(), dtype=tf.float32, seed=0, name="conv_vae"):
        super().__init__(name=name)
        self.config = config
        self.params = {}  # name → tf.Variable; tf.Module tracks the dict, so these are its variables
        for i, (key, shape) in enumerate(parameter_shapes(config).items()):
            if len(shape) == 1:
                initial = tf.zeros(shape, dtype=dtype)
            else:
                if len(shape) == 2:
                    fan_in, fan_out = shape
                else:  # conv (C_out, C_in, kh, kw), transposed conv (C_in, C_out, kh, kw)
                    c_in, c_out = (shape[0], shape[1]) if key.startswith("dec.") else (shape[1], shape[0])
                    fan_in, fan_out = c_in * shape[2] * shape[3], c_out * shape[2] * shape[3]
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                initial = tf.random.stateless_uniform(shape, (seed, i), -limit, limit, dtype=dtype)
            self.params[key] = tf.Variable(initial, name=key.replace(".", "_"))

    def elbo(self, x, eps):
        """x (B, 1, 28, 28), eps (B, Z) → VAEOutput of tensors: loss, and the (B,) terms elbo, reconstruction, kl."""
        return _elbo(x, eps, self.params, self.config)

    def decoded_means(self, z):
        """Bernoulli means σ(logits) (B, 28, 28) of latent codes z (B, Z)."""
        return tf.sigmoid(_decode(z, self.params, self.config))[:, 0]


def train_step(vae, x, eps, optimizer):
    """One step of `optimizer` (e.g. tf.keras.optimizers.Adam, or ports/tensorflow/optim.py's Adam with
    `apply(grads, variables)` by name) on −mean ELBO; returns that loss. Wrap in `tf.function` for speed.

    The noise eps (B, Z) is an argument, as everywhere in this project: `tf.random.normal(...)` for a
    sampler of your own, or the very array scratch gets.
    """
    with tf.GradientTape() as tape:
        loss = vae.elbo(x, eps).loss
    names = list(vae.params)
    grads = tape.gradient(loss, [vae.params[name] for name in names])
    if hasattr(optimizer, "apply_gradients"):
        optimizer.apply_gradients(zip(grads, [vae.params[name] for name in names]))
    else:
        optimizer.apply(dict(zip(names, grads)), vae.params)
    return loss


def to_tf_conv_vae(params, config):
    """A `ConvVAE` tf.Module holding copies of `params` (same names, shapes and dtype)."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have the keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got shape {np.shape(params[name])}")
    vae = ConvVAE(config, dtype=tf.as_dtype(np.asarray(params["enc.W1"]).dtype))
    for name, value in params.items():
        vae.params[name].assign(value)
    return vae


def from_tf_conv_vae(vae):
    """The scratch parameter dict of a `ConvVAE` tf.Module (the inverse of `to_tf_conv_vae`)."""
    return {name: vae.params[name].numpy().copy() for name in parameter_shapes(vae.config)}
