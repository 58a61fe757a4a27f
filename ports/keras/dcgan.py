"""The DCGAN (Radford, Metz and Chintala, 2016) in Keras 3: scratch/dcgan.py with keras.ops, and the model
as a `keras.Model` whose own `train_step` plays one round of the game (as keras-io's DCGAN example), so
that `model.fit(x)` trains it.

Read it beside scratch/dcgan.py: the names, the arguments and the NumPy-in/NumPy-out interface of every
function are the same; each forward is `record(<the math in keras.ops>, …)` and each backward is
`gradients(dout, cache)` (ports/keras/autodiff.py). The convolutions are ports/keras/conv.py's.

The model is built from Keras's own layers, channels last (NHWC) as Keras wants its images, and the
translation from scratch's layout is written into the networks as layers:

    generator      Dense(2g·49, use_bias=False) → Reshape((2g, 7, 7)) → Permute((2, 3, 1))  [NCHW order → NHWC]
                   → BatchNormalization → ReLU → Conv2DTranspose(g, 4, 2, "valid") → Cropping2D(1)
                   → BatchNormalization → ReLU → Conv2DTranspose(1, 4, 2, "valid") → Cropping2D(1) → tanh
    discriminator  Permute((2, 3, 1)) → ZeroPadding2D(1) → Conv2D(d, 4, 2, "valid") → leaky ReLU
                   → ZeroPadding2D(1) → Conv2D(2d, 4, 2, "valid", use_bias=False) → BatchNormalization
                   → leaky ReLU → Permute((3, 1, 2)) → Flatten → Dense(1)

Reshape and the last Permute keep scratch's NCHW order of the dense layers' columns, so those kernels
move unchanged; a convolution's kernel moves with transpose(2, 3, 1, 0) (ports/keras/conv.py). PyTorch's
padding 1 is ZeroPadding2D in front of a "valid" Conv2D and Cropping2D after a "valid" Conv2DTranspose.

Batch norm, Keras's way (ports/keras/layers.py): momentum the other way round (Keras's 0.9 is PyTorch's
and scratch's 0.1: the model passes 1 − momentum), ε passed as scratch's 1e-5 (Keras's default is 1e-3),
and the moving variance averages the biased batch variance σ², where scratch's (PyTorch's) averages
σ² · N / (N − 1). The batch-statistics forward of training is the same; only the moving variance, and so
evaluation mode after training, differs, by a factor 1 − 1/N on each batch's share (N = B·H·W ≥ 49·B).

Shape letters as in scratch: B batch, Z noise width, g the generator's width, d the discriminator's.
"""

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ports.keras.autodiff import gradients, record
from ports.keras.conv import _conv2d, _conv_transpose2d
from ports.keras.gan import _discriminator_loss, _generator_loss, _leaky_relu
from scratch.dcgan import (DISC_NAMES, GEN_NAMES, SIDE, DCGANConfig, _check_input, from_pixels, init_dcgan,
                           init_stats, parameter_shapes, to_pixels)
from scratch.gan import GENERATOR_LOSSES
from scratch.validate import check_flag, check_same_dtype

__all__ = [
    "DCGANConfig", "parameter_shapes", "init_dcgan", "init_stats", "generator_forward", "generator_backward",
    "discriminator_forward", "discriminator_backward", "update_stats", "discriminator_step", "generator_step",
    "to_pixels", "from_pixels", "DCGAN", "to_keras_dcgan", "from_keras_dcgan", "assign_dcgan",
]

Q = SIDE // 4  # 7: the side of the smallest maps
EPS = 1e-5  # batch norm's ε, PyTorch's (and scratch's)
ONE, TWO, NONE = (1, 1), (2, 2), (0, 0)  # (height, width) pairs for ports/keras/conv.py


# ----------------------------------------------------------------------------------------------
# The networks on a dict of tensors in the scratch layout, in keras.ops
# ----------------------------------------------------------------------------------------------


def _batch_norm(h, p, bn, stats, seen):
    """Training mode (stats None): the batch's statistics, recorded in `seen`; else the running ones in `stats`."""
    shape = (1, -1, 1, 1)  # (1, C, 1, 1): per channel on axis 1
    if stats is None:
        # Alg. 1, Ioffe & Szegedy 2015: μ = (1/N) Σ x, σ² = (1/N) Σ (x − μ)², over B·H·W values per channel
        mean, var = ops.moments(h, axes=[0, 2, 3])  # (C,) each, σ² biased
        seen[bn] = (mean, var, h.shape[0] * h.shape[2] * h.shape[3])
    else:
        mean, var = stats[f"{bn}.running_mean"], stats[f"{bn}.running_var"]
    # x̂ = (x − μ) / √(σ² + ε), y = γ x̂ + β
    x_hat = (h - ops.reshape(mean, shape)) * ops.rsqrt(ops.reshape(var, shape) + EPS)
    return x_hat * ops.reshape(p[f"{bn}.gamma"], shape) + ops.reshape(p[f"{bn}.beta"], shape)


def _generate(z, p, config, stats=None, seen=None):
    c = 2 * config.gen_width
    # the "project and reshape" of the paper's Fig. 1: a linear map of the noise, as 2g maps of 7×7
    h = ops.reshape(ops.matmul(z, p["gen.W1"]), (-1, c, Q, Q))  # (B, 2g, 7, 7), no bias: β takes its place
    h = ops.relu(_batch_norm(h, p, "gen.bn1", stats, seen))  # (B, 2g, 7, 7)
    # 4×4 transposed convolution, stride 2, padding 1: o = 2(i − 1) − 2 + 4 = 2i
    h = _conv_transpose2d(h, p["gen.W2"], None, TWO, ONE, NONE, ONE)  # (B, g, 14, 14)
    h = ops.relu(_batch_norm(h, p, "gen.bn2", stats, seen))  # (B, g, 14, 14)
    h = _conv_transpose2d(h, p["gen.W3"], p["gen.b3"], TWO, ONE, NONE, ONE)  # (B, 1, 28, 28)
    return ops.tanh(h)  # (B, 1, 28, 28) in [−1, 1], no batch norm on G's output


def _discriminate(x, p, config, stats=None, seen=None):
    # no batch norm on D's input layer (§3); o = ⌊(i + 2·1 − 4) / 2⌋ + 1 = i / 2
    h = _leaky_relu(_conv2d(x, p["disc.W1"], p["disc.b1"], TWO, ONE, ONE), config.slope)  # (B, d, 14, 14)
    h = _conv2d(h, p["disc.W2"], None, TWO, ONE, ONE)  # (B, 2d, 7, 7)
    h = _leaky_relu(_batch_norm(h, p, "disc.bn2", stats, seen), config.slope)  # (B, 2d, 7, 7)
    flat = ops.reshape(h, (-1, h.shape[1] * Q * Q))  # (B, 2d·49), in NCHW order, as scratch flattens
    return (ops.matmul(flat, p["disc.W3"]) + p["disc.b3"])[:, 0]  # (B,)


def _update(stats, seen, momentum):
    """PyTorch's rule, which scratch follows (not Keras's): r ← (1 − m) r + m · batch statistic, σ² unbiased."""
    new = dict(stats)
    for bn, (mean, var, count) in seen.items():
        mean, var = ops.convert_to_numpy(mean), ops.convert_to_numpy(var)
        unbiased = var * (count / (count - 1.0))  # (C,), Bessel's correction
        new[f"{bn}.running_mean"] = (1.0 - momentum) * stats[f"{bn}.running_mean"] + momentum * mean
        new[f"{bn}.running_var"] = (1.0 - momentum) * stats[f"{bn}.running_var"] + momentum * unbiased
    return new


# ----------------------------------------------------------------------------------------------
# The contract: NumPy in, NumPy out, the backward by `gradients`
# ----------------------------------------------------------------------------------------------


class NetworkCache(NamedTuple):
    recording: object  # what `gradients` needs: the input, then the parameters in scratch's order
    names: tuple  # the parameters' names
    batch_norms: dict  # "gen.bn1" → (batch mean, biased batch variance, N), for update_stats


def _forward(network, data, params, config, stats, names):
    if stats is not None:
        t = ops.convert_to_tensor
        out = network(t(data), {n: t(params[n]) for n in names}, config, {k: t(v) for k, v in stats.items()})
        return ops.convert_to_numpy(out), None
    seen = {}
    out, recording = record(lambda x, *ps: network(x, dict(zip(names, ps)), config, None, seen),
                            data, *(params[name] for name in names))
    return out, NetworkCache(recording, tuple(names), seen)


def _backward(dout, cache, what, needs_input_grad=True):
    if cache is None:
        raise ValueError(f"{what}_backward needs a training-mode forward's cache (stats=None); evaluation mode keeps none")
    if not needs_input_grad:  # the network's input was recorded first, then its parameters
        return None, dict(zip(cache.names, gradients(dout, cache.recording._replace(inputs=cache.recording.inputs[1:]))))
    grads = gradients(dout, cache.recording)
    return grads[0], dict(zip(cache.names, grads[1:]))


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


def discriminator_step(x_real, z, params, stats, config):
    """(loss, grads of every "disc.*" parameter, new stats): G(z), D(x_real), D(G(z)), each moving its statistics."""
    x_real, z = _check_input("x_real", x_real, (None, 1, SIDE, SIDE)), _check_input("z", z, (None, config.z_dim))
    t = ops.convert_to_tensor
    seen = [{}, {}, {}]
    x_fake = ops.stop_gradient(_generate(t(z), {n: t(params[n]) for n in GEN_NAMES}, config, seen=seen[0]))

    def loss(*disc):  # real and fake batches through D separately, so batch norm never mixes them
        p = dict(zip(DISC_NAMES, disc))
        return _discriminator_loss(_discriminate(t(x_real), p, config, seen=seen[1]),
                                   _discriminate(x_fake, p, config, seen=seen[2]))

    value, recording = record(loss, *(params[n] for n in DISC_NAMES))
    grads = gradients(np.ones((), value.dtype), recording)  # the same weights judged both batches: their gradients add
    for s in seen:
        stats = _update(stats, s, config.momentum)
    return float(value), dict(zip(DISC_NAMES, grads)), stats


def generator_step(z, params, stats, config, kind="non_saturating"):
    """(loss, grads of every "gen.*" parameter, new stats): back through D, held fixed, into G."""
    if kind not in GENERATOR_LOSSES:
        raise ValueError(f"kind must be one of {GENERATOR_LOSSES}, got {kind!r}")
    z = _check_input("z", z, (None, config.z_dim))
    t = ops.convert_to_tensor
    disc = {n: t(params[n]) for n in DISC_NAMES}  # D held fixed: constants, not recorded inputs
    seen = [{}, {}]

    def loss(*gen):
        fake = _generate(t(z), dict(zip(GEN_NAMES, gen)), config, seen=seen[0])
        return _generator_loss(_discriminate(fake, disc, config, seen=seen[1]), kind)

    value, recording = record(loss, *(params[n] for n in GEN_NAMES))
    grads = gradients(np.ones((), value.dtype), recording)
    for s in seen:
        stats = _update(stats, s, config.momentum)
    return float(value), dict(zip(GEN_NAMES, grads)), stats


# ----------------------------------------------------------------------------------------------
# The model the Keras way: two Sequential networks of Keras layers and a train_step that plays one round
# ----------------------------------------------------------------------------------------------


def _leaky(slope, dtype):
    # keras.layers.LeakyReLU passes its slope as a float32, a 3e-9 relative error in float64 (ports/keras/gan.py)
    return keras.layers.Activation(lambda t: _leaky_relu(t, slope), dtype=dtype)


def _networks(config, dtype):
    g, d, m = config.gen_width, config.disc_width, config.momentum
    kw = dict(dtype=dtype)
    init = keras.initializers.RandomNormal(stddev=0.02)  # the paper's N(0, 0.02²), §4
    bn = lambda: keras.layers.BatchNormalization(momentum=1.0 - m, epsilon=EPS, **kw)  # noqa: E731  Keras's momentum
    L = keras.layers
    generator = keras.Sequential([
        keras.Input((config.z_dim,), dtype=dtype),  # declared, or the Sequential casts its input to float32
        L.Dense(2 * g * Q * Q, use_bias=False, kernel_initializer=init, **kw),  # (B, 2g·49)
        L.Reshape((2 * g, Q, Q), **kw), L.Permute((2, 3, 1), **kw),  # scratch's (2g, 7, 7) → NHWC (7, 7, 2g)
        bn(), L.ReLU(**kw),
        L.Conv2DTranspose(g, 4, strides=2, padding="valid", output_padding=0, use_bias=False, kernel_initializer=init, **kw),
        L.Cropping2D(1, **kw),  # (B, 16, 16, g) → (B, 14, 14, g): PyTorch's padding 1
        bn(), L.ReLU(**kw),
        L.Conv2DTranspose(1, 4, strides=2, padding="valid", output_padding=0, kernel_initializer=init, **kw),
        L.Cropping2D(1, **kw), L.Activation("tanh", **kw),  # (B, 28, 28, 1) in [−1, 1]
    ], name="generator")
    discriminator = keras.Sequential([
        keras.Input((1, SIDE, SIDE), dtype=dtype),  # scratch's NCHW images
        L.Permute((2, 3, 1), **kw),  # (B, 28, 28, 1)
        L.ZeroPadding2D(1, **kw), L.Conv2D(d, 4, strides=2, padding="valid", kernel_initializer=init, **kw),  # (B, 14, 14, d)
        _leaky(config.slope, dtype),
        L.ZeroPadding2D(1, **kw), L.Conv2D(2 * d, 4, strides=2, padding="valid", use_bias=False, kernel_initializer=init, **kw),
        bn(), _leaky(config.slope, dtype),  # (B, 7, 7, 2d)
        L.Permute((3, 1, 2), **kw), L.Flatten(**kw),  # back to NCHW before flattening: scratch's column order
        L.Dense(1, kernel_initializer=init, **kw),  # (B, 1)
    ], name="discriminator")
    return generator, discriminator


class DCGAN(keras.Model):
    """Generator and discriminator (logits) trained by `fit(x)`: each batch of real images x (B, 1, 28, 28) in
    [−1, 1] gets one update of D on fresh noise, then one of G, as keras-io's DCGAN.

    `compile(d_optimizer=…, g_optimizer=…)` first. The noise comes from keras.random with the model's
    seed; a batch given as a tuple (x_real, z_disc, z_gen) brings its own noise instead (what the
    checks and ports/keras/train_conv.py feed: scratch's). The batch norms run in training mode, so
    each forward moves its moving statistics (Keras's rule). Real and fake images go through D
    separately (keras-io concatenates them, which mixes their batch statistics; scratch does not).
    """

    def __init__(self, config=DCGANConfig(), dtype="float32", seed=None, kind="non_saturating", **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        if kind not in GENERATOR_LOSSES:
            raise ValueError(f"kind must be one of {GENERATOR_LOSSES}, got {kind!r}")
        self.config, self.kind = config, kind
        self.generator, self.discriminator = _networks(config, dtype)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    def generate(self, z, training=False):
        """z (B, Z) → images (B, 1, 28, 28) in [−1, 1], scratch's NCHW."""
        return ops.transpose(self.generator(z, training=training), (0, 3, 1, 2))

    def discriminate(self, x, training=False):
        """x (B, 1, 28, 28) → logits (B,)."""
        return self.discriminator(x, training=training)[:, 0]

    def call(self, z):
        return self.generate(z)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def _noise(self, n):
        return keras.random.normal((n, self.config.z_dim), dtype=self.dtype, seed=self.seed_generator)

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, (tuple, list)):
            x_real, z_disc, z_gen = (ops.cast(t, self.dtype) for t in x)
        else:
            x_real = ops.cast(x, self.dtype)  # fit's data adapter may hand float64 data over as float32
            z_disc, z_gen = self._noise(ops.shape(x_real)[0]), self._noise(ops.shape(x_real)[0])
        # D's update: G's samples are inputs, in training mode as scratch's discriminator_step
        x_fake = ops.stop_gradient(self.generate(z_disc, training=True))
        with tf.GradientTape() as tape:  # the TensorFlow backend's autograd, as keras-io's example
            d_loss = _discriminator_loss(self.discriminate(x_real, training=True), self.discriminate(x_fake, training=True))
        weights = self.discriminator.trainable_weights
        self.d_optimizer.apply(tape.gradient(d_loss, weights), weights)
        # G's update, back through D (its weights are not updated here)
        with tf.GradientTape() as tape:
            g_loss = _generator_loss(self.discriminate(self.generate(z_gen, training=True), training=True), self.kind)
        weights = self.generator.trainable_weights
        self.g_optimizer.apply(tape.gradient(g_loss, weights), weights)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {metric.name: metric.result() for metric in self.metrics}


def _layers(model):
    """scratch name → (Keras variable, how scratch's array becomes it): 'as is' or a transpose."""
    g = [layer for layer in model.generator.layers if layer.weights]
    d = [layer for layer in model.discriminator.layers if layer.weights]
    kernel = (2, 3, 1, 0)  # both conv kinds: PyTorch's layout → Keras's (ports/keras/conv.py)
    named = {"gen.W1": (g[0].kernel, None), "gen.W2": (g[2].kernel, kernel), "gen.W3": (g[4].kernel, kernel),
             "gen.b3": (g[4].bias, None), "disc.W1": (d[0].kernel, kernel), "disc.b1": (d[0].bias, None),
             "disc.W2": (d[1].kernel, kernel), "disc.W3": (d[3].kernel, None), "disc.b3": (d[3].bias, None)}
    for bn, layer in (("gen.bn1", g[1]), ("gen.bn2", g[3]), ("disc.bn2", d[2])):
        named.update({f"{bn}.gamma": (layer.gamma, None), f"{bn}.beta": (layer.beta, None),
                      f"{bn}.running_mean": (layer.moving_mean, None), f"{bn}.running_var": (layer.moving_variance, None)})
    return named


def to_keras_dcgan(params, config, stats=None, **kwargs):
    """A built `DCGAN` holding copies of `params` and, if given, the running statistics (its dtype is theirs)."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have the keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got shape {np.shape(params[name])}")
    model = DCGAN(config, dtype=np.asarray(params["gen.W1"]).dtype.name, **kwargs)
    assign_dcgan(model, params, stats)
    return model


def assign_dcgan(model, params, stats=None):
    """Copy a scratch parameter dict (and running statistics) into a built `DCGAN`'s variables, in place."""
    arrays = {**params, **(stats or {})}
    for name, (variable, axes) in _layers(model).items():
        if name in arrays:
            value = np.asarray(arrays[name])
            variable.assign(value if axes is None else value.transpose(axes))


def from_keras_dcgan(model):
    """(params, stats) in the scratch layout of a `DCGAN` (the inverse of `to_keras_dcgan`). The running
    variance is Keras's moving variance as it is: after Keras trained it, an average of biased variances."""
    arrays = {}
    for name, (variable, axes) in _layers(model).items():
        value = np.array(variable.numpy())
        arrays[name] = value if axes is None else np.ascontiguousarray(value.transpose(np.argsort(axes)))
    return ({name: arrays[name] for name in parameter_shapes(model.config)},
            {name: arrays[name] for name in init_stats(model.config)})
