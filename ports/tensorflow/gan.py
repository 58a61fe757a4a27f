"""The GAN in TensorFlow 2: scratch/gan.py with tf ops, the backward by tf.GradientTape.

Read it beside scratch/gan.py: the names, the arguments and the NumPy-in/NumPy-out interface
of every function are the same; each forward runs under a GradientTape, each backward asks the
tape for the vector-Jacobian product. After the functions comes the model as a `tf.Module`
(`GAN`, one `tf.Variable` per scratch parameter) with a compiled training step for each player.

Shape letters as in scratch: B batch, D data width, Z noise width, H hidden width, m pack.
"""

import math

import tensorflow as tf

from ports.tensorflow.attention import Cache, _gradients, _watched
from scratch.gan import (GENERATOR_LOSSES, GANConfig, _check_logits, check_densities, check_gan_config,
                         check_noise, check_samples, init_gan, parameter_shapes)
from scratch.validate import as_float_array, check_same_dtype

__all__ = [
    "discriminator_loss_forward", "discriminator_loss_backward", "generator_loss_forward",
    "generator_loss_backward", "value_function", "optimal_discriminator", "GANConfig", "parameter_shapes",
    "init_gan", "generator_forward", "generator_backward", "discriminator_forward", "discriminator_backward",
    "discriminator_step", "generator_step", "GAN", "to_tf_gan", "from_tf_gan",
]


def _softplus(t):
    """log(1 + eᵗ) = −log σ(−t), stable for any t (tf.nn.softplus is too, to the last bit)."""
    return tf.nn.softplus(t)


# ----------------------------------------------------------------------------------------------
# The losses on tensors, from logits: log D = −softplus(−l), log(1 − D) = −softplus(l)
# ----------------------------------------------------------------------------------------------


def _discriminator_loss(real_logits, fake_logits):
    # −V(D, G) = −E[log D(x)] − E[log(1 − D(G(z)))] = mean softplus(−l_real) + mean softplus(l_fake)
    return tf.reduce_mean(_softplus(-real_logits)) + tf.reduce_mean(_softplus(fake_logits))


def _generator_loss(fake_logits, kind):
    if kind == "minimax":
        return -tf.reduce_mean(_softplus(fake_logits))  # E[log(1 − D(G(z)))]
    return tf.reduce_mean(_softplus(-fake_logits))  # −E[log D(G(z))]


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
    p_data, p_g = tf.constant(p_data), tf.constant(p_g)
    total = p_data + p_g
    return tf.where(total > 0, tf.math.divide_no_nan(p_data, total), tf.constant(0.5, dtype=total.dtype)).numpy()


# ----------------------------------------------------------------------------------------------
# The networks as functions of a dict of named tensors or variables in the scratch layout
# ----------------------------------------------------------------------------------------------


def _mlp(x, params, net, hidden_activation, output_activation):
    count = sum(name.startswith(f"{net}.W") for name in params)
    for i in range(1, count + 1):
        x = tf.matmul(x, params[f"{net}.W{i}"]) + params[f"{net}.b{i}"]  # (B, width_i)
        activation = hidden_activation if i < count else output_activation
        if activation is not None:
            x = activation(x)
    return x


def _generate(z, params, config):
    output = tf.sigmoid if config.gen_output == "sigmoid" else None
    return _mlp(z, params, "gen", tf.nn.relu, output)  # (B, D)


def _discriminate(x, params, config):
    packed = tf.reshape(x, (-1, config.pack * config.x_dim))  # (B/m, m·D)
    return _mlp(packed, params, "disc", lambda t: tf.where(t > 0, t, config.slope * t), None)[:, 0]  # (B/m,)


def _net(params, net):
    return {name: value for name, value in params.items() if name.startswith(f"{net}.")}


def generator_forward(z, params, config):
    """G(z): z (B, Z) → samples (B, D)."""
    z = check_noise(z, config)
    gen = _net(params, "gen")
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, z), *(_watched(tape, value) for value in gen.values()))
        x = _generate(inputs[0], dict(zip(gen, inputs[1:])), config)
    return x.numpy(), (Cache(tape, inputs, x), list(gen))


def _named_gradients(dout, cache, names):
    grads = _gradients(dout, cache)
    return grads[0], dict(zip(names, grads[1:]))


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
    return logits.numpy(), (Cache(tape, inputs, logits), list(disc))


def discriminator_backward(dlogits, cache):
    """Return (dx, grads of every "disc.*" parameter)."""
    return _named_gradients(dlogits, *cache)


def _disc_loss_and_grads(x_real, z, params, config):
    disc = _net(params, "disc")
    x_fake = tf.stop_gradient(_generate(z, params, config))  # (B, D), G's samples are inputs here
    with tf.GradientTape() as tape:
        tape.watch(list(disc.values()))
        loss = _discriminator_loss(_discriminate(x_real, disc, config), _discriminate(x_fake, disc, config))
    return loss, dict(zip(disc, tape.gradient(loss, list(disc.values()))))


def _gen_loss_and_grads(z, params, config, kind):
    gen = _net(params, "gen")
    with tf.GradientTape() as tape:
        tape.watch(list(gen.values()))
        loss = _generator_loss(_discriminate(_generate(z, params, config), params, config), kind)
    return loss, dict(zip(gen, tape.gradient(loss, list(gen.values()))))


def discriminator_step(x_real, z, params, config):
    """Loss and gradients of every "disc.*" parameter; G's samples carry no gradient."""
    tensors = {name: tf.constant(value) for name, value in params.items()}
    loss, grads = _disc_loss_and_grads(tf.constant(as_float_array("x_real", x_real)), tf.constant(as_float_array("z", z)), tensors, config)
    return float(loss), {name: g.numpy() for name, g in grads.items()}


def generator_step(z, params, config, kind="non_saturating"):
    """Loss and gradients of every "gen.*" parameter, back through D (held fixed) into G."""
    tensors = {name: tf.constant(value) for name, value in params.items()}
    loss, grads = _gen_loss_and_grads(tf.constant(as_float_array("z", z)), tensors, config, kind)
    return float(loss), {name: g.numpy() for name, g in grads.items()}


# ----------------------------------------------------------------------------------------------
# The model as a tf.Module, with one compiled training step per player
# ----------------------------------------------------------------------------------------------


class GAN(tf.Module):
    """Generator and discriminator as one `tf.Module`: a `tf.Variable` per scratch parameter.

    Initialised as scratch's `init_gan` does (Kaiming-uniform weights, zero biases), with
    TensorFlow's stateless random numbers from `seed`.
    """

    def __init__(self, config, dtype=tf.float32, seed=0, name="gan"):
        super().__init__(name=name)
        self.config = check_gan_config(config)
        self.params = {}  # name → tf.Variable; tf.Module tracks the dict, so these are its variables
        for i, (key, shape) in enumerate(parameter_shapes(config).items()):
            if len(shape) == 2:
                limit = math.sqrt(6.0 / shape[0])
                initial = tf.random.stateless_uniform(shape, (seed, i), -limit, limit, dtype=dtype)
            else:
                initial = tf.zeros(shape, dtype=dtype)
            self.params[key] = tf.Variable(initial, name=key.replace(".", "_"))

    def generate(self, z):
        """z (B, Z) → samples (B, D)."""
        return _generate(z, self.params, self.config)

    def discriminate(self, x):
        """x (B, D) → logits (B / m,)."""
        return _discriminate(x, self.params, self.config)

    def discriminator_train_step(self, x_real, z, optimizer):
        """One update of D's variables by `optimizer` (apply(grads, variables), dicts by name)."""
        loss, grads = _disc_loss_and_grads(x_real, z, self.params, self.config)
        optimizer.apply(grads, _net(self.params, "disc"))
        return loss

    def generator_train_step(self, z, optimizer, kind="non_saturating"):
        """One update of G's variables by `optimizer`."""
        loss, grads = _gen_loss_and_grads(z, self.params, self.config, kind)
        optimizer.apply(grads, _net(self.params, "gen"))
        return loss


def to_tf_gan(params, config):
    """A `GAN` tf.Module holding copies of `params` (same names, shapes and dtype)."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have keys {sorted(expected)}, got {sorted(params)}")
    gan = GAN(config, dtype=tf.as_dtype(params["gen.W1"].dtype))
    for name, value in params.items():
        gan.params[name].assign(value)
    return gan


def from_tf_gan(gan):
    """The scratch parameter dict of a `GAN` tf.Module (the inverse of `to_tf_gan`)."""
    return {name: gan.params[name].numpy().copy() for name in parameter_shapes(gan.config)}
