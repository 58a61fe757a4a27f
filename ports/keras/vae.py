"""The variational autoencoder in Keras 3: scratch/vae.py with keras.ops, and the same model as a
`keras.Model` that `model.fit(x)` trains.

Read it beside scratch/vae.py: the names, the arguments and the NumPy-in/NumPy-out interface
of every forward/backward pair are the same. The forward is written with backend-neutral
`keras.ops`; the backward asks the TensorFlow backend's GradientTape for the vector-Jacobian
product instead of the hand-derived lines. After the functions comes the model the Keras way:
a `Sampling` layer, `keras.layers.Dense` encoder and decoder, and a custom `train_step`, with
`to_keras_vae` / `from_keras_vae` to move weights between it and a scratch parameter dict. A
Dense kernel has shape (in, out), y = x W + b, as in scratch, so nothing is transposed.

Shape letters as in scratch: B batch, D data width, H hidden width, Z latent width.
"""

import functools
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ports.keras.attention import Cache, _gradients, _watched
from scratch.vae import (
    LOG_2PI,
    VAEConfig,
    VAEOutput,
    _check_pair,
    check_likelihood_inputs,
    check_vae_inputs,
    check_vae_params,
    linear_gaussian_config,
    parameter_shapes,
)

__all__ = [
    "reparameterize_forward", "reparameterize_backward", "gaussian_kl_forward", "gaussian_kl_backward",
    "bernoulli_log_likelihood_forward", "bernoulli_log_likelihood_backward",
    "gaussian_log_likelihood_forward", "gaussian_log_likelihood_backward",
    "VAEConfig", "VAEOutput", "linear_gaussian_config", "parameter_shapes", "encode", "decode",
    "vae_forward", "vae_backward", "Sampling", "VAE", "to_keras_vae", "from_keras_vae",
]


# ----------------------------------------------------------------------------------------------
# The math on tensors: shared by the functions below and by the keras.Model at the end
# ----------------------------------------------------------------------------------------------


def _reparameterize(mu, log_var, eps):
    std = ops.exp(0.5 * log_var)  # (B, Z), σ = exp(½ log σ²): the variance is exp(log σ²)
    # Kingma and Welling (2014), Eq. (10): z = μ + σ ⊙ ε, ε ~ N(0, I)
    return mu + std * eps  # (B, Z)


def _gaussian_kl(mu, log_var):
    # Kingma and Welling (2014), Appendix B: −KL = ½ Σ_j (1 + log σ_j² − μ_j² − σ_j²)
    return 0.5 * ops.sum(ops.exp(log_var) + mu * mu - 1.0 - log_var, axis=-1)  # (B,)


def _bernoulli_log_likelihood(x, logits):
    # log σ(l) = −softplus(−l), log(1 − σ(l)) = −softplus(l)  ⇒  x·l − softplus(l), stable for any l
    return ops.sum(x * logits - ops.softplus(logits), axis=-1)  # (B,)


def _gaussian_log_likelihood(x, mean, log_var):
    residual = x - mean  # (B, D)
    # log N(x; m, s²) = −½ [log 2π + log s² + (x − m)² / s²], summed over the D pixels
    per_pixel = LOG_2PI + log_var + residual * residual * ops.exp(-log_var)  # (B, D), log_var broadcast
    return -0.5 * ops.sum(per_pixel, axis=-1)  # (B,)


def _elbo(x, encoder, sample, decoder, config, dec_log_var=None):
    """Encode, sample z, decode, then the two terms of the ELBO: a VAEOutput of tensors."""
    mu, log_var = encoder(x)  # (B, Z) each
    z = sample(mu, log_var)  # (B, Z), z = μ + σ ⊙ ε
    decoded = decoder(z)  # (B, D)
    if config.likelihood == "bernoulli":
        reconstruction = _bernoulli_log_likelihood(x, decoded)  # (B,)
    else:
        reconstruction = _gaussian_log_likelihood(x, decoded, dec_log_var)  # (B,)
    kl = _gaussian_kl(mu, log_var)  # (B,)
    # Kingma and Welling (2014), Eq. (3): L(θ, φ; x) = E_q[log p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z))
    elbo = reconstruction - kl  # (B,)
    return VAEOutput(-ops.mean(elbo), elbo, reconstruction, kl, mu, log_var, z, decoded)


# ----------------------------------------------------------------------------------------------
# Input checks: the same checks and messages as scratch/vae.py
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The contract ops: NumPy in, NumPy out, the backward by the TensorFlow backend's GradientTape
# ----------------------------------------------------------------------------------------------


def reparameterize_forward(mu, log_var, eps):
    """z = μ + σ ⊙ ε with σ = exp(½ log σ²); μ, log σ², ε of shape (B, Z)."""
    mu, log_var = _check_pair("mu", mu, "log_var", log_var)
    _, eps = _check_pair("mu", mu, "eps", eps)
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, mu), _watched(tape, log_var))  # ε is noise, not differentiated
        z = _reparameterize(*inputs, ops.convert_to_tensor(eps))
    return ops.convert_to_numpy(z), Cache(tape, inputs, z)


def reparameterize_backward(dz, cache):
    """Return (dmu, dlog_var)."""
    dmu, dlog_var = _gradients(dz, cache)
    return dmu, dlog_var


def gaussian_kl_forward(mu, log_var):
    """KL(N(μ, diag σ²) ‖ N(0, I)) per example, shape (B,), in closed form."""
    mu, log_var = _check_pair("mu", mu, "log_var", log_var)
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, mu), _watched(tape, log_var))
        kl = _gaussian_kl(*inputs)
    return ops.convert_to_numpy(kl), Cache(tape, inputs, kl)


def gaussian_kl_backward(dkl, cache):
    """Return (dmu, dlog_var) given dkl of shape (B,)."""
    dmu, dlog_var = _gradients(dkl, cache)
    return dmu, dlog_var


def bernoulli_log_likelihood_forward(x, logits):
    """log p(x | logits) = Σ_d x_d log p_d + (1 − x_d) log(1 − p_d), p = sigmoid(logits); shape (B,)."""
    x, logits = check_likelihood_inputs(x, logits)
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, logits),)  # x is data, not differentiated
        log_likelihood = _bernoulli_log_likelihood(ops.convert_to_tensor(x), *inputs)
    return ops.convert_to_numpy(log_likelihood), Cache(tape, inputs, log_likelihood)


def bernoulli_log_likelihood_backward(dll, cache):
    """Return dlogits."""
    (dlogits,) = _gradients(dll, cache)
    return dlogits


def gaussian_log_likelihood_forward(x, mean, log_var):
    """log N(x; mean, diag exp(log_var)) per example, shape (B,); log_var of shape (B, D), (D,) or ()."""
    x, mean, log_var = check_likelihood_inputs(x, mean, log_var)
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, mean), _watched(tape, log_var))
        log_likelihood = _gaussian_log_likelihood(ops.convert_to_tensor(x), *inputs)
    return ops.convert_to_numpy(log_likelihood), Cache(tape, inputs, log_likelihood)


def gaussian_log_likelihood_backward(dll, cache):
    """Return (dmean, dlog_var); the tape sums a broadcast log_var's gradient back to its shape."""
    dmean, dlog_var = _gradients(dll, cache)
    return dmean, dlog_var


# ----------------------------------------------------------------------------------------------
# The model, on a dict of tensors in the scratch layout: y = x W + b
# ----------------------------------------------------------------------------------------------


class VAECache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    names: tuple  # the parameter names, in the order of `inputs`
    inputs: tuple  # the parameter tensors the gradients are taken with respect to
    out: object  # the loss tensor


def encode(x, params, config):
    """q(z|x): (μ, log σ²) of shape (B, Z) from a tensor x (B, D) and a dict of tensors."""
    h = x
    if config.hidden:
        h = ops.tanh(ops.matmul(x, params["enc.W1"]) + params["enc.b1"])  # (B, H)
    mu = ops.matmul(h, params["enc.W_mu"]) + params["enc.b_mu"]  # (B, Z)
    log_var = ops.matmul(h, params["enc.W_lv"]) + params["enc.b_lv"]  # (B, Z)
    return mu, log_var


def decode(z, params, config):
    """p(x|z): Bernoulli logits or Gaussian means of shape (B, D)."""
    h = z
    if config.hidden:
        h = ops.tanh(ops.matmul(z, params["dec.W1"]) + params["dec.b1"])  # (B, H)
    return ops.matmul(h, params["dec.W_out"]) + params["dec.b_out"]  # (B, D)


def vae_forward(x, params, eps, config):
    """One reparameterised pass: x (B, D) data, eps (B, Z) the noise. Returns (VAEOutput, cache)."""
    x, params, eps = check_vae_inputs(x, params, eps, config)
    with tf.GradientTape() as tape:
        p = {name: _watched(tape, value) for name, value in params.items()}
        x, eps = ops.convert_to_tensor(x), ops.convert_to_tensor(eps)
        out = _elbo(
            x, lambda x: encode(x, p, config), lambda mu, log_var: _reparameterize(mu, log_var, eps),
            lambda z: decode(z, p, config), config, p.get("dec.log_var"),
        )
    arrays = VAEOutput(float(out.loss), *(ops.convert_to_numpy(t) for t in out[1:]))
    return arrays, VAECache(tape, tuple(p), tuple(p.values()), out.loss)


def vae_backward(dloss, cache):
    """Gradients of dloss · loss with respect to every parameter, keyed like params."""
    return dict(zip(cache.names, _gradients(dloss, cache)))




# ----------------------------------------------------------------------------------------------
# The same model as a keras.Model: a Sampling layer, Dense layers, and a custom train_step
# ----------------------------------------------------------------------------------------------


class Sampling(keras.layers.Layer):
    """z = μ + σ ⊙ ε from (μ, log σ²); draws ε ~ N(0, I) with keras.random unless `eps` is given."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, eps=None):
        mu, log_var = inputs  # (B, Z) each
        if eps is None:
            eps = keras.random.normal(ops.shape(mu), dtype=mu.dtype, seed=self.seed_generator)  # (B, Z)
        return _reparameterize(mu, log_var, eps)  # (B, Z)


def _dense_layers(config):
    """(scratch kernel name, scratch bias name, model attribute) for every Dense layer."""
    layers = [("enc.W1", "enc.b1", "enc_hidden")] if config.hidden else []
    layers += [("enc.W_mu", "enc.b_mu", "enc_mu"), ("enc.W_lv", "enc.b_lv", "enc_log_var")]
    layers += [("dec.W1", "dec.b1", "dec_hidden")] if config.hidden else []
    return layers + [("dec.W_out", "dec.b_out", "dec_out")]


class VAE(keras.Model):
    """The VAE as a Keras model: `model(x)` samples ε itself, `model(x, eps=eps)` uses the given
    noise; either returns a VAEOutput of tensors. `model.compile(optimizer)` then
    `model.fit(x, epochs=…)` minimises −mean ELBO and reports loss, reconstruction and kl
    (the batch means of −ELBO, log p(x|z) and KL).

    Dense layers start as scratch's `init_vae` does: Glorot-uniform kernels, zero biases.
    """

    def __init__(self, config, dtype="float32", seed=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        parameter_shapes(config)  # rejects an unknown likelihood
        self.config = config
        d, z, h = config.x_dim, config.z_dim, config.hidden
        dense = functools.partial(keras.layers.Dense, dtype=dtype)
        self.enc_hidden = dense(h, activation="tanh", name="enc_hidden") if h else None
        self.enc_mu = dense(z, name="enc_mu")
        self.enc_log_var = dense(z, name="enc_log_var")
        self.sampling = Sampling(seed, dtype=dtype, name="sampling")
        self.dec_hidden = dense(h, activation="tanh", name="dec_hidden") if h else None
        self.dec_out = dense(d, name="dec_out")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    def build(self, input_shape=None):
        d, z, h = self.config.x_dim, self.config.z_dim, self.config.hidden
        for attribute, width in (("enc_hidden", d), ("enc_mu", h or d), ("enc_log_var", h or d),
                                 ("dec_hidden", z), ("dec_out", h or z)):
            if getattr(self, attribute) is not None:
                getattr(self, attribute).build((None, width))
        if self.config.likelihood == "gaussian":
            # p(x|z) = N(mean, s² I): one learned log-variance shared by every pixel
            self.dec_log_var = self.add_weight(shape=(), initializer="zeros", name="dec_log_var")
        self.built = True

    def encode(self, x):
        h = self.enc_hidden(x) if self.config.hidden else x  # (B, H)
        return self.enc_mu(h), self.enc_log_var(h)  # (B, Z) each

    def decode(self, z):
        h = self.dec_hidden(z) if self.config.hidden else z  # (B, H)
        return self.dec_out(h)  # (B, D)

    def call(self, x, eps=None):
        sample = lambda mu, log_var: self.sampling((mu, log_var), eps=eps)  # noqa: E731
        dec_log_var = self.dec_log_var if self.config.likelihood == "gaussian" else None
        return _elbo(x, self.encode, sample, self.decode, self.config, dec_log_var)

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data  # fit(x): no targets
        with tf.GradientTape() as tape:
            out = self(x, training=True)  # ε drawn by the Sampling layer
        grads = tape.gradient(out.loss, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        self.loss_tracker.update_state(out.loss)
        self.reconstruction_tracker.update_state(ops.mean(out.reconstruction))
        self.kl_tracker.update_state(ops.mean(out.kl))
        return {metric.name: metric.result() for metric in self.metrics}


def to_keras_vae(params, config, seed=None):
    """A built `VAE` model holding copies of `params` (its dtype is theirs)."""
    params = check_vae_params(params, config)
    model = VAE(config, dtype=params["dec.b_out"].dtype.name, seed=seed)
    model.build((None, config.x_dim))
    for w, b, attribute in _dense_layers(config):
        getattr(model, attribute).kernel.assign(params[w])  # (in, out), as in scratch
        getattr(model, attribute).bias.assign(params[b])
    if config.likelihood == "gaussian":
        model.dec_log_var.assign(params["dec.log_var"])
    return model


def from_keras_vae(model):
    """The scratch parameter dict of a built `VAE` model (the inverse of `to_keras_vae`)."""
    arrays = {}
    for w, b, attribute in _dense_layers(model.config):
        layer = getattr(model, attribute)
        arrays[w], arrays[b] = layer.kernel.numpy(), layer.bias.numpy()  # (in, out), (out,)
    if model.config.likelihood == "gaussian":
        arrays["dec.log_var"] = model.dec_log_var.numpy()
    return {name: np.array(arrays[name]) for name in parameter_shapes(model.config)}
