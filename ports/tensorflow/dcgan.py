"""The DCGAN (Radford, Metz and Chintala, 2016) in TensorFlow 2: scratch/dcgan.py with tf ops, the
backward by tf.GradientTape.

Read it beside scratch/dcgan.py: the names, the arguments and the NumPy-in/NumPy-out interface of
every function are the same (`generator_forward`, `discriminator_step`, `update_stats`, …); each
forward runs under a GradientTape and each backward asks the tape for the vector-Jacobian product.
The convolutions are ports/tensorflow/conv.py's, which translate scratch's NCHW layout and
PyTorch's padding into TensorFlow's NHWC kernels; batch norm is written out as
ports/tensorflow/layers.py writes it (Alg. 1, not tf.nn.batch_normalization's rearranged form).

After the functions comes the model the TensorFlow way: a `tf.Module` (`DCGAN`) holding one
`tf.Variable` per scratch parameter and one non-trainable `tf.Variable` per running statistic,
with `generate` / `discriminate` (training=True moves the running statistics, as a Keras or torch
batch norm does in training) and one training step per player for `tf.function` to compile;
`to_tf_dcgan` / `from_tf_dcgan` move weights and statistics to and from the scratch layout.

Batch norm's running variance: PyTorch's rule, which scratch follows, averages the unbiased batch
variance σ² · N / (N − 1); TensorFlow has no rule of its own outside Keras, so this file applies it.

Shape letters as in scratch: B batch, Z noise width, g the generator's width, d the discriminator's.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from ports.tensorflow.conv import _conv2d, _conv_transpose2d
from ports.tensorflow.gan import _discriminator_loss, _generator_loss
from scratch.dcgan import (DISC_NAMES, GEN_NAMES, SIDE, DCGANConfig, _check_input, from_pixels,
                           init_dcgan, init_stats, parameter_shapes, to_pixels)
from scratch.gan import GENERATOR_LOSSES
from scratch.validate import check_flag, check_same_dtype

__all__ = [
    "DCGANConfig", "parameter_shapes", "init_dcgan", "init_stats", "generator_forward", "generator_backward",
    "discriminator_forward", "discriminator_backward", "update_stats", "discriminator_step", "generator_step",
    "to_pixels", "from_pixels", "DCGAN", "to_tf_dcgan", "from_tf_dcgan",
]

Q = SIDE // 4  # 7: the side of the smallest maps
EPS = 1e-5  # batch norm's ε, PyTorch's (and scratch's)
ONE, TWO = (1, 1), (2, 2)  # (height, width) pairs for ports/tensorflow/conv.py


# ----------------------------------------------------------------------------------------------
# The networks on a dict of tensors (or tf.Variables) in the scratch layout
# ----------------------------------------------------------------------------------------------


def _batch_norm(h, p, bn, stats, seen):
    """Training mode (stats None): the batch's statistics, recorded in `seen`; else the running ones in `stats`."""
    shape = (1, -1, 1, 1)  # (1, C, 1, 1): per channel on axis 1
    gamma, beta = tf.reshape(p[f"{bn}.gamma"], shape), tf.reshape(p[f"{bn}.beta"], shape)
    if stats is None:
        # Alg. 1, Ioffe & Szegedy 2015: μ = (1/N) Σ x, σ² = (1/N) Σ (x − μ)², over B·H·W values per channel
        mean, var = tf.nn.moments(h, axes=[0, 2, 3], keepdims=True)  # (1, C, 1, 1) each, σ² biased
        seen[bn] = (tf.reshape(mean, [-1]), tf.reshape(var, [-1]), h.shape[0] * h.shape[2] * h.shape[3])
    else:
        mean, var = (tf.reshape(stats[f"{bn}.{k}"], shape) for k in ("running_mean", "running_var"))
    # x̂ = (x − μ) / √(σ² + ε), y = γ x̂ + β
    return (h - mean) * tf.math.rsqrt(var + EPS) * gamma + beta


def _generate(z, p, config, stats=None, seen=None):
    c = 2 * config.gen_width
    # the "project and reshape" of the paper's Fig. 1: a linear map of the noise, as 2g maps of 7×7
    h = tf.reshape(tf.matmul(z, p["gen.W1"]), (-1, c, Q, Q))  # (B, 2g, 7, 7), no bias: β takes its place
    h = tf.nn.relu(_batch_norm(h, p, "gen.bn1", stats, seen))  # (B, 2g, 7, 7)
    # 4×4 transposed convolution, stride 2, padding 1: o = 2(i − 1) − 2 + 4 = 2i
    h = _conv_transpose2d(h, p["gen.W2"], None, TWO, ONE, (0, 0), ONE)  # (B, g, 14, 14)
    h = tf.nn.relu(_batch_norm(h, p, "gen.bn2", stats, seen))  # (B, g, 14, 14)
    h = _conv_transpose2d(h, p["gen.W3"], p["gen.b3"], TWO, ONE, (0, 0), ONE)  # (B, 1, 28, 28)
    return tf.tanh(h)  # (B, 1, 28, 28) in [−1, 1], no batch norm on G's output


def _leaky_relu(t, slope):
    return tf.where(t > 0, t, slope * t)


def _discriminate(x, p, config, stats=None, seen=None):
    # no batch norm on D's input layer (§3); o = ⌊(i + 2·1 − 4) / 2⌋ + 1 = i / 2
    h = _leaky_relu(_conv2d(x, p["disc.W1"], p["disc.b1"], TWO, ONE, ONE), config.slope)  # (B, d, 14, 14)
    h = _conv2d(h, p["disc.W2"], None, TWO, ONE, ONE)  # (B, 2d, 7, 7)
    h = _leaky_relu(_batch_norm(h, p, "disc.bn2", stats, seen), config.slope)  # (B, 2d, 7, 7)
    flat = tf.reshape(h, (-1, h.shape[1] * Q * Q))  # (B, 2d·49), in NCHW order, as scratch flattens
    return (tf.matmul(flat, p["disc.W3"]) + p["disc.b3"])[:, 0]  # (B,)


def _moved(running_mean, running_var, mean, var, count, momentum):
    """PyTorch's rule: r ← (1 − momentum) r + momentum · batch statistic, the variance unbiased, σ² · N / (N − 1)."""
    unbiased = var * (count / (count - 1.0))  # (C,), Bessel's correction
    return ((1.0 - momentum) * running_mean + momentum * mean,
            (1.0 - momentum) * running_var + momentum * unbiased)


def _update(stats, seen, momentum):
    """A new dict of NumPy running statistics after the batch norms recorded in `seen`."""
    new = dict(stats)
    for bn, (mean, var, count) in seen.items():
        m, v = _moved(tf.constant(stats[f"{bn}.running_mean"]), tf.constant(stats[f"{bn}.running_var"]),
                      mean, var, count, momentum)
        new[f"{bn}.running_mean"], new[f"{bn}.running_var"] = m.numpy(), v.numpy()
    return new


# ----------------------------------------------------------------------------------------------
# The contract: NumPy in, NumPy out, the backward by the GradientTape
# ----------------------------------------------------------------------------------------------


class NetworkCache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    inputs: tuple  # the network's input, then its parameters in scratch's order
    names: tuple  # the parameters' names
    out: tf.Tensor
    batch_norms: dict  # "gen.bn1" → (batch mean, biased batch variance, N), for update_stats


def _forward(network, data, params, config, stats, names):
    if stats is not None:
        p = {name: tf.constant(params[name]) for name in names}
        out = network(tf.constant(data), p, config, {k: tf.constant(v) for k, v in stats.items()})
        return out.numpy(), None
    seen = {}
    with tf.GradientTape() as tape:
        inputs = tuple(tf.constant(a) for a in (data, *(params[name] for name in names)))
        tape.watch(inputs)
        out = network(inputs[0], dict(zip(names, inputs[1:])), config, None, seen)
    return out.numpy(), NetworkCache(tape, inputs, tuple(names), out, seen)


def _backward(dout, cache, what, needs_input_grad=True):
    if cache is None:
        raise ValueError(f"{what}_backward needs a training-mode forward's cache (stats=None); evaluation mode keeps none")
    dout = np.asarray(dout)
    if dout.shape != tuple(cache.out.shape):
        raise ValueError(f"dout must have shape {tuple(cache.out.shape)}, got shape {dout.shape}")
    inputs = cache.inputs if needs_input_grad else cache.inputs[1:]  # the network's input first, then its parameters
    grads = list(cache.tape.gradient(cache.out, inputs, output_gradients=tf.constant(dout, dtype=cache.out.dtype)))
    dx = grads.pop(0).numpy() if needs_input_grad else None
    return dx, {name: g.numpy() for name, g in zip(cache.names, grads)}


def generator_forward(z, params, config, stats=None):
    """G(z): noise z (B, Z) → images (B, 1, 28, 28) in [−1, 1]; stats None: training mode, else evaluation mode."""
    z = _check_input("z", z, (None, config.z_dim))
    check_same_dtype(z=z, params=params["gen.W1"])
    return _forward(_generate, z, params, config, stats, GEN_NAMES)


def generator_backward(dx, cache):
    """Return (dz, grads of every "gen.*" parameter) for a training-mode forward."""
    return _backward(dx, cache, "generator")


def discriminator_forward(x, params, config, stats=None):
    """Logits l(x) of D(x) = σ(l): images x (B, 1, 28, 28) → (B,). stats: as generator_forward."""
    x = _check_input("x", x, (None, 1, SIDE, SIDE))
    check_same_dtype(x=x, params=params["disc.W1"])
    return _forward(_discriminate, x, params, config, stats, DISC_NAMES)


def discriminator_backward(dlogits, cache, needs_input_grad=True):
    """Return (dx, grads of every "disc.*" parameter) for a training-mode forward; needs_input_grad False: dx is None."""
    return _backward(dlogits, cache, "discriminator", check_flag("needs_input_grad", needs_input_grad))


def update_stats(stats, cache, momentum=0.1):
    """The running statistics after one training-mode forward: a new dict, `stats` left unchanged."""
    return _update(stats, cache.batch_norms, momentum)


def _disc_loss_and_grads(x_real, z, p, config, seen):
    """D's loss and gradients; seen: three dicts, for G(z), D(x_real), D(G(z)) in that order."""
    disc = {name: p[name] for name in DISC_NAMES}
    x_fake = tf.stop_gradient(_generate(z, p, config, seen=seen[0]))  # (B, 1, 28, 28): G's samples are inputs here
    with tf.GradientTape() as tape:
        tape.watch(list(disc.values()))
        # real and fake batches through D separately, so batch norm never mixes them
        loss = _discriminator_loss(_discriminate(x_real, p, config, seen=seen[1]),
                                   _discriminate(x_fake, p, config, seen=seen[2]))
    # the same weights judged both batches: the tape adds their gradients
    return loss, dict(zip(disc, tape.gradient(loss, list(disc.values()))))


def _gen_loss_and_grads(z, p, config, kind, seen):
    """G's loss and gradients back through D, held fixed; seen: two dicts, for G(z) and D(G(z))."""
    gen = {name: p[name] for name in GEN_NAMES}
    with tf.GradientTape() as tape:
        tape.watch(list(gen.values()))
        loss = _generator_loss(_discriminate(_generate(z, p, config, seen=seen[0]), p, config, seen=seen[1]), kind)
    return loss, dict(zip(gen, tape.gradient(loss, list(gen.values()))))


def discriminator_step(x_real, z, params, stats, config):
    """(loss, grads of every "disc.*" parameter, new stats): G(z), D(x_real), D(G(z)), each moving its statistics."""
    x_real, z = _check_input("x_real", x_real, (None, 1, SIDE, SIDE)), _check_input("z", z, (None, config.z_dim))
    seen = [{}, {}, {}]
    loss, grads = _disc_loss_and_grads(tf.constant(x_real), tf.constant(z),
                                       {k: tf.constant(v) for k, v in params.items()}, config, seen)
    for s in seen:
        stats = _update(stats, s, config.momentum)
    return float(loss), {name: g.numpy() for name, g in grads.items()}, stats


def generator_step(z, params, stats, config, kind="non_saturating"):
    """(loss, grads of every "gen.*" parameter, new stats): back through D, held fixed, into G."""
    if kind not in GENERATOR_LOSSES:
        raise ValueError(f"kind must be one of {GENERATOR_LOSSES}, got {kind!r}")
    z = _check_input("z", z, (None, config.z_dim))
    seen = [{}, {}]
    loss, grads = _gen_loss_and_grads(tf.constant(z), {k: tf.constant(v) for k, v in params.items()}, config, kind, seen)
    for s in seen:
        stats = _update(stats, s, config.momentum)
    return float(loss), {name: g.numpy() for name, g in grads.items()}, stats


# ----------------------------------------------------------------------------------------------
# The model as a tf.Module, with one training step per player for tf.function to compile
# ----------------------------------------------------------------------------------------------


class DCGAN(tf.Module):
    """Generator and discriminator as one `tf.Module`: a trainable `tf.Variable` per scratch parameter and a
    non-trainable one per running statistic, initialised as scratch's `init_dcgan` and `init_stats`
    (N(0, 0.02²) weights from TensorFlow's stateless random numbers with `seed`)."""

    def __init__(self, config=DCGANConfig(), dtype=tf.float32, seed=0, name="dcgan"):
        super().__init__(name=name)
        self.config = config
        self.params = {}  # name → tf.Variable; tf.Module tracks the dict, so these are its variables
        for i, (key, shape) in enumerate(parameter_shapes(config).items()):
            if key.endswith("gamma"):
                initial = tf.ones(shape, dtype=dtype)
            elif len(shape) == 1:
                initial = tf.zeros(shape, dtype=dtype)
            else:
                initial = 0.02 * tf.random.stateless_normal(shape, (seed, i), dtype=dtype)
            self.params[key] = tf.Variable(initial, name=key.replace(".", "_"))
        self.stats = {key: tf.Variable(value, trainable=False, name=key.replace(".", "_"))
                      for key, value in init_stats(config, dtype.as_numpy_dtype).items()}

    def _move(self, seen):
        """Assign the running statistics after the batch norms recorded in `seen` (training mode)."""
        for bn, (mean, var, count) in seen.items():
            m, v = self.stats[f"{bn}.running_mean"], self.stats[f"{bn}.running_var"]
            new_mean, new_var = _moved(m, v, mean, var, count, self.config.momentum)
            m.assign(new_mean)
            v.assign(new_var)

    def generate(self, z, training=False):
        """z (B, Z) → images (B, 1, 28, 28) in [−1, 1]; training=True: batch statistics, and the running ones move."""
        if not training:
            return _generate(z, self.params, self.config, self.stats)
        seen = {}
        x = _generate(z, self.params, self.config, seen=seen)
        self._move(seen)
        return x

    def discriminate(self, x, training=False):
        """x (B, 1, 28, 28) in [−1, 1] → logits (B,)."""
        if not training:
            return _discriminate(x, self.params, self.config, self.stats)
        seen = {}
        logits = _discriminate(x, self.params, self.config, seen=seen)
        self._move(seen)
        return logits

    def _players(self, net):
        return {name: self.params[name] for name in (GEN_NAMES if net == "gen" else DISC_NAMES)}

    def discriminator_train_step(self, x_real, z, optimizer):
        """One update of D's variables by `optimizer` (apply(grads, variables), dicts by name); returns D's loss."""
        seen = [{}, {}, {}]
        loss, grads = _disc_loss_and_grads(x_real, z, self.params, self.config, seen)
        for s in seen:  # in scratch's order: G(z), D(x_real), D(G(z))
            self._move(s)
        optimizer.apply(grads, self._players("disc"))
        return loss

    def generator_train_step(self, z, optimizer, kind="non_saturating"):
        """One update of G's variables by `optimizer`; returns G's loss."""
        seen = [{}, {}]
        loss, grads = _gen_loss_and_grads(z, self.params, self.config, kind, seen)
        for s in seen:
            self._move(s)
        optimizer.apply(grads, self._players("gen"))
        return loss


def to_tf_dcgan(params, config, stats=None):
    """A `DCGAN` tf.Module holding copies of `params` and, if given, of the running statistics `stats`."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have the keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got shape {np.shape(params[name])}")
    gan = DCGAN(config, dtype=tf.as_dtype(np.asarray(params["gen.W1"]).dtype))
    for name, value in params.items():
        gan.params[name].assign(value)
    for name, value in (stats or {}).items():
        gan.stats[name].assign(value)
    return gan


def from_tf_dcgan(gan):
    """(params, stats) in the scratch layout of a `DCGAN` tf.Module (the inverse of `to_tf_dcgan`)."""
    params = {name: gan.params[name].numpy().copy() for name in parameter_shapes(gan.config)}
    stats = {name: gan.stats[name].numpy().copy() for name in init_stats(gan.config)}
    return params, stats

