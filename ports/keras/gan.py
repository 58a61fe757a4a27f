"""The GAN in Keras 3: scratch/gan.py with keras.ops, and the same model as a `keras.Model`
whose custom `train_step` plays one round of the game, so that `model.fit(x)` trains it.

Read it beside scratch/gan.py: the names, the arguments and the NumPy-in/NumPy-out interface
of every function are the same. The forward is written with backend-neutral `keras.ops`; the
backward asks the TensorFlow backend's GradientTape for the vector-Jacobian product. A Dense
kernel has shape (in, out), y = x W + b, as in scratch, so converting weights transposes nothing.

Shape letters as in scratch: B batch, D data width, Z noise width, H hidden width, m pack.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ports.keras.attention import Cache, _gradients, _watched
from scratch.gan import (GENERATOR_LOSSES, GANConfig, _check_logits, check_densities, check_gan_config,
                         check_noise, check_samples, init_gan, parameter_shapes)
from scratch.validate import as_float_array, check_same_dtype

__all__ = [
    "discriminator_loss_forward", "discriminator_loss_backward", "generator_loss_forward",
    "generator_loss_backward", "value_function", "optimal_discriminator", "GANConfig", "parameter_shapes",
    "init_gan", "generator_forward", "generator_backward", "discriminator_forward", "discriminator_backward",
    "discriminator_step", "generator_step", "GAN", "to_keras_gan", "from_keras_gan",
]


# ----------------------------------------------------------------------------------------------
# The losses on tensors, from logits: log D = −softplus(−l), log(1 − D) = −softplus(l)
# ----------------------------------------------------------------------------------------------


def _discriminator_loss(real_logits, fake_logits):
    # −V(D, G) = −E[log D(x)] − E[log(1 − D(G(z)))] = mean softplus(−l_real) + mean softplus(l_fake)
    return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))


def _generator_loss(fake_logits, kind):
    if kind == "minimax":
        return -ops.mean(ops.softplus(fake_logits))  # E[log(1 − D(G(z)))]
    return ops.mean(ops.softplus(-fake_logits))  # −E[log D(G(z))]


def discriminator_loss_forward(real_logits, fake_logits):
    """−mean log D(x) − mean log(1 − D(G(z))), minimised; logits of any shape."""
    real_logits, fake_logits = _check_logits("real_logits", real_logits), _check_logits("fake_logits", fake_logits)
    check_same_dtype(real_logits=real_logits, fake_logits=fake_logits)
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, real_logits), _watched(tape, fake_logits))
        loss = _discriminator_loss(*inputs)
    return float(loss), Cache(tape, inputs, loss)


def discriminator_loss_backward(dloss, cache):
    """Return (d_real_logits, d_fake_logits)."""
    d_real, d_fake = _gradients(dloss, cache)
    return d_real, d_fake


def generator_loss_forward(fake_logits, kind):
    """kind "minimax": mean log(1 − D(G(z))); kind "non_saturating": −mean log D(G(z))."""
    fake_logits = _check_logits("fake_logits", fake_logits)
    if kind not in GENERATOR_LOSSES:
        raise ValueError(f"kind must be one of {GENERATOR_LOSSES}, got {kind!r}")
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, fake_logits),)
        loss = _generator_loss(inputs[0], kind)
    return float(loss), Cache(tape, inputs, loss)


def generator_loss_backward(dloss, cache):
    """Return d_fake_logits."""
    (d_fake,) = _gradients(dloss, cache)
    return d_fake


def value_function(real_logits, fake_logits):
    """V(D, G) of Eq. 1 on samples: mean log D(x) + mean log(1 − D(G(z)))."""
    return -discriminator_loss_forward(real_logits, fake_logits)[0]


def optimal_discriminator(p_data, p_g):
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)); 1/2 where both densities are 0."""
    p_data, p_g = check_densities(p_data, p_g)
    p_data, p_g = ops.convert_to_tensor(p_data), ops.convert_to_tensor(p_g)
    total = p_data + p_g
    return ops.convert_to_numpy(ops.where(total > 0, ops.divide_no_nan(p_data, total), 0.5))


# ----------------------------------------------------------------------------------------------
# The networks as functions of a dict of tensors in the scratch layout
# ----------------------------------------------------------------------------------------------


def _leaky_relu(t, slope):
    """x for x > 0, slope·x otherwise. (ops.leaky_relu passes the slope as a float32, which
    puts a 3e-9 relative error into float64 results.)"""
    return ops.where(t > 0, t, slope * t)


def _mlp(x, params, net, hidden_activation, output_activation):
    count = sum(name.startswith(f"{net}.W") for name in params)
    for i in range(1, count + 1):
        x = ops.matmul(x, params[f"{net}.W{i}"]) + params[f"{net}.b{i}"]  # (B, width_i)
        activation = hidden_activation if i < count else output_activation
        if activation is not None:
            x = activation(x)
    return x


def _generate(z, params, config):
    output = ops.sigmoid if config.gen_output == "sigmoid" else None
    return _mlp(z, params, "gen", ops.relu, output)  # (B, D)


def _discriminate(x, params, config):
    packed = ops.reshape(x, (-1, config.pack * config.x_dim))  # (B/m, m·D)
    return _mlp(packed, params, "disc", lambda t: _leaky_relu(t, config.slope), None)[:, 0]  # (B/m,)


def _net(params, net):
    return {name: value for name, value in params.items() if name.startswith(f"{net}.")}


def _named_gradients(dout, cache, names):
    grads = _gradients(dout, cache)
    return grads[0], dict(zip(names, grads[1:]))


def generator_forward(z, params, config):
    """G(z): z (B, Z) → samples (B, D)."""
    z = check_noise(z, config)
    gen = _net(params, "gen")
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, z), *(_watched(tape, value) for value in gen.values()))
        x = _generate(inputs[0], dict(zip(gen, inputs[1:])), config)
    return ops.convert_to_numpy(x), (Cache(tape, inputs, x), list(gen))


def generator_backward(dx, cache):
    """Return (dz, grads of every "gen.*" parameter)."""
    return _named_gradients(dx, *cache)


def discriminator_forward(x, params, config):
    """Logits: x (B, D) → (B / m,), one per pack of m samples."""
    x = check_samples(x, config)
    disc = _net(params, "disc")
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, x), *(_watched(tape, value) for value in disc.values()))
        logits = _discriminate(inputs[0], dict(zip(disc, inputs[1:])), config)
    return ops.convert_to_numpy(logits), (Cache(tape, inputs, logits), list(disc))


def discriminator_backward(dlogits, cache):
    """Return (dx, grads of every "disc.*" parameter)."""
    return _named_gradients(dlogits, *cache)


def discriminator_step(x_real, z, params, config):
    """Loss and gradients of every "disc.*" parameter; G's samples carry no gradient."""
    p = {name: ops.convert_to_tensor(value) for name, value in params.items()}
    x_fake = ops.stop_gradient(_generate(ops.convert_to_tensor(as_float_array("z", z)), p, config))  # (B, D)
    disc = _net(p, "disc")
    with tf.GradientTape() as tape:
        tape.watch(list(disc.values()))
        real = _discriminate(ops.convert_to_tensor(as_float_array("x_real", x_real)), disc, config)
        loss = _discriminator_loss(real, _discriminate(x_fake, disc, config))
    grads = tape.gradient(loss, list(disc.values()))
    return float(loss), {name: ops.convert_to_numpy(g) for name, g in zip(disc, grads)}


def generator_step(z, params, config, kind="non_saturating"):
    """Loss and gradients of every "gen.*" parameter, back through D (held fixed) into G."""
    p = {name: ops.convert_to_tensor(value) for name, value in params.items()}
    gen = _net(p, "gen")
    with tf.GradientTape() as tape:
        tape.watch(list(gen.values()))
        fake = _generate(ops.convert_to_tensor(as_float_array("z", z)), p, config)
        loss = _generator_loss(_discriminate(fake, p, config), kind)
    grads = tape.gradient(loss, list(gen.values()))
    return float(loss), {name: ops.convert_to_numpy(g) for name, g in zip(gen, grads)}


# ----------------------------------------------------------------------------------------------
# The model the Keras way: two Sequential networks and a train_step that plays one round
# ----------------------------------------------------------------------------------------------


def _dense_stack(widths, hidden_activation, output_activation, dtype, name):
    layers = []
    for i, width in enumerate(widths[1:], start=1):
        last = i == len(widths) - 1
        layers.append(keras.layers.Dense(width, activation=output_activation if last else hidden_activation,
                                         kernel_initializer="he_uniform", dtype=dtype, name=f"{name}_dense{i}"))
    network = keras.Sequential(layers, name=name)
    network.build((None, widths[0]))
    return network


class GAN(keras.Model):
    """A generator and a discriminator (logits) trained by `fit(x)`, one round per batch.

    `compile(d_optimizer=…, g_optimizer=…)`; then every batch of real data gets `disc_steps`
    updates of D on fresh noise and one update of G, with the generator loss `kind`. Noise
    comes from keras.random with the model's seed.
    """

    def __init__(self, config, dtype="float32", seed=None, kind="non_saturating", disc_steps=1, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.config = check_gan_config(config)
        if kind not in GENERATOR_LOSSES:
            raise ValueError(f"kind must be one of {GENERATOR_LOSSES}, got {kind!r}")
        self.kind, self.disc_steps = kind, disc_steps
        output = "sigmoid" if config.gen_output == "sigmoid" else None
        self.generator = _dense_stack((config.z_dim, *config.gen_hidden, config.x_dim), "relu", output, dtype, "generator")
        leaky = lambda t: _leaky_relu(t, config.slope)  # noqa: E731
        self.discriminator = _dense_stack((config.pack * config.x_dim, *config.disc_hidden, 1), leaky, None, dtype,
                                          "discriminator")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    def generate(self, z):
        """z (B, Z) → samples (B, D)."""
        return self.generator(z)

    def discriminate(self, x):
        """x (B, D) → logits (B / m,)."""
        packed = ops.reshape(x, (-1, self.config.pack * self.config.x_dim))  # (B/m, m·D)
        return self.discriminator(packed)[:, 0]

    def call(self, z):
        return self.generate(z)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def _noise(self, n):
        return keras.random.normal((n, self.config.z_dim), dtype=self.dtype, seed=self.seed_generator)

    def train_step(self, data):
        x_real = data[0] if isinstance(data, tuple) else data  # fit(x): no targets
        n = ops.shape(x_real)[0]
        for _ in range(self.disc_steps):
            x_fake = ops.stop_gradient(self.generate(self._noise(n)))
            with tf.GradientTape() as tape:
                d_loss = _discriminator_loss(self.discriminate(x_real), self.discriminate(x_fake))
            weights = self.discriminator.trainable_weights
            self.d_optimizer.apply(tape.gradient(d_loss, weights), weights)
        with tf.GradientTape() as tape:
            g_loss = _generator_loss(self.discriminate(self.generate(self._noise(n))), self.kind)
        weights = self.generator.trainable_weights
        self.g_optimizer.apply(tape.gradient(g_loss, weights), weights)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {metric.name: metric.result() for metric in self.metrics}


def _dense_layers(model):
    for net, network in (("gen", model.generator), ("disc", model.discriminator)):
        for i, layer in enumerate(network.layers, start=1):
            yield f"{net}.W{i}", f"{net}.b{i}", layer


def to_keras_gan(params, config, seed=None, **kwargs):
    """A built `GAN` model holding copies of `params` (its dtype is theirs)."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have keys {sorted(expected)}, got {sorted(params)}")
    model = GAN(config, dtype=params["gen.W1"].dtype.name, seed=seed, **kwargs)
    for w, b, layer in _dense_layers(model):
        layer.kernel.assign(params[w])  # (in, out), as in scratch
        layer.bias.assign(params[b])
    return model


def from_keras_gan(model):
    """The scratch parameter dict of a `GAN` model (the inverse of `to_keras_gan`)."""
    arrays = {}
    for w, b, layer in _dense_layers(model):
        arrays[w], arrays[b] = np.array(layer.kernel.numpy()), np.array(layer.bias.numpy())
    return arrays
