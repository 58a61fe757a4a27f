"""The variational autoencoder in TensorFlow 2: scratch/vae.py with tf ops, the backward by GradientTape.

Read it beside scratch/vae.py: the names, the arguments and the NumPy-in/NumPy-out interface
of every forward/backward pair are the same; each forward runs under a tf.GradientTape and each
backward asks the tape for the vector-Jacobian product instead of the hand-derived lines. After
the functions comes the same model the TensorFlow way: a `tf.Module` holding `tf.Variable`s
(`VAE`, with an `elbo(x, eps)` method), a `train_step` with a GradientTape and an optimizer, and
`to_tf_vae` / `from_tf_vae` to move weights between it and a scratch parameter dict. TensorFlow
keeps W of shape (in, out), y = x W + b, as scratch does, so nothing is transposed.

Shape letters as in scratch: B batch, D data width, H hidden width, Z latent width.
"""

import math
from typing import NamedTuple

import tensorflow as tf

from ports.tensorflow.attention import Cache, _gradients, _watched
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
    "vae_forward", "vae_backward", "VAE", "train_step", "to_tf_vae", "from_tf_vae",
]


# ----------------------------------------------------------------------------------------------
# The math on tensors: shared by the functions below and by the tf.Module at the end
# ----------------------------------------------------------------------------------------------


def _reparameterize(mu, log_var, eps):
    std = tf.exp(0.5 * log_var)  # (B, Z), σ = exp(½ log σ²): the variance is exp(log σ²)
    # Kingma and Welling (2014), Eq. (10): z = μ + σ ⊙ ε, ε ~ N(0, I)
    return mu + std * eps  # (B, Z)


def _gaussian_kl(mu, log_var):
    # Kingma and Welling (2014), Appendix B: −KL = ½ Σ_j (1 + log σ_j² − μ_j² − σ_j²)
    return 0.5 * tf.reduce_sum(tf.exp(log_var) + mu * mu - 1.0 - log_var, axis=-1)  # (B,)


def _bernoulli_log_likelihood(x, logits):
    # log σ(l) = −softplus(−l), log(1 − σ(l)) = −softplus(l)  ⇒  x·l − softplus(l), stable for any l
    return tf.reduce_sum(x * logits - tf.math.softplus(logits), axis=-1)  # (B,)


def _gaussian_log_likelihood(x, mean, log_var):
    residual = x - mean  # (B, D)
    # log N(x; m, s²) = −½ [log 2π + log s² + (x − m)² / s²], summed over the D pixels
    per_pixel = LOG_2PI + log_var + residual * residual * tf.exp(-log_var)  # (B, D), log_var broadcast
    return -0.5 * tf.reduce_sum(per_pixel, axis=-1)  # (B,)


def _elbo(x, eps, encoder, decoder, config, dec_log_var=None):
    """Encode, reparameterize, decode, then the two terms of the ELBO: a VAEOutput of tensors."""
    mu, log_var = encoder(x)  # (B, Z) each
    z = _reparameterize(mu, log_var, eps)  # (B, Z)
    decoded = decoder(z)  # (B, D)
    if config.likelihood == "bernoulli":
        reconstruction = _bernoulli_log_likelihood(x, decoded)  # (B,)
    else:
        reconstruction = _gaussian_log_likelihood(x, decoded, dec_log_var)  # (B,)
    kl = _gaussian_kl(mu, log_var)  # (B,)
    # Kingma and Welling (2014), Eq. (3): L(θ, φ; x) = E_q[log p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z))
    elbo = reconstruction - kl  # (B,)
    return VAEOutput(-tf.reduce_mean(elbo), elbo, reconstruction, kl, mu, log_var, z, decoded)


# ----------------------------------------------------------------------------------------------
# Input checks: the same checks and messages as scratch/vae.py
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The contract ops: NumPy in, NumPy out, the backward by the GradientTape
# ----------------------------------------------------------------------------------------------


def reparameterize_forward(mu, log_var, eps):
    """z = μ + σ ⊙ ε with σ = exp(½ log σ²); μ, log σ², ε of shape (B, Z)."""
    mu, log_var = _check_pair("mu", mu, "log_var", log_var)
    _, eps = _check_pair("mu", mu, "eps", eps)
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, mu), _watched(tape, log_var))  # ε is noise, not differentiated
        z = _reparameterize(*inputs, tf.constant(eps))
    return z.numpy(), Cache(tape, inputs, z)


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
    return kl.numpy(), Cache(tape, inputs, kl)


def gaussian_kl_backward(dkl, cache):
    """Return (dmu, dlog_var) given dkl of shape (B,)."""
    dmu, dlog_var = _gradients(dkl, cache)
    return dmu, dlog_var


def bernoulli_log_likelihood_forward(x, logits):
    """log p(x | logits) = Σ_d x_d log p_d + (1 − x_d) log(1 − p_d), p = sigmoid(logits); shape (B,)."""
    x, logits = check_likelihood_inputs(x, logits)
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, logits),)  # x is data, not differentiated
        log_likelihood = _bernoulli_log_likelihood(tf.constant(x), *inputs)
    return log_likelihood.numpy(), Cache(tape, inputs, log_likelihood)


def bernoulli_log_likelihood_backward(dll, cache):
    """Return dlogits."""
    (dlogits,) = _gradients(dll, cache)
    return dlogits


def gaussian_log_likelihood_forward(x, mean, log_var):
    """log N(x; mean, diag exp(log_var)) per example, shape (B,); log_var of shape (B, D), (D,) or ()."""
    x, mean, log_var = check_likelihood_inputs(x, mean, log_var)
    with tf.GradientTape() as tape:
        inputs = (_watched(tape, mean), _watched(tape, log_var))
        log_likelihood = _gaussian_log_likelihood(tf.constant(x), *inputs)
    return log_likelihood.numpy(), Cache(tape, inputs, log_likelihood)


def gaussian_log_likelihood_backward(dll, cache):
    """Return (dmean, dlog_var); the tape sums a broadcast log_var's gradient back to its shape."""
    dmean, dlog_var = _gradients(dll, cache)
    return dmean, dlog_var


# ----------------------------------------------------------------------------------------------
# The model, on a dict of tensors (or tf.Variables) in the scratch layout: y = x W + b
# ----------------------------------------------------------------------------------------------


class VAECache(NamedTuple):
    tape: tf.GradientTape  # recorded the forward; one backward may read it
    names: tuple  # the parameter names, in the order of `inputs`
    inputs: tuple  # the parameter tensors the gradients are taken with respect to
    out: tf.Tensor  # the loss


def encode(x, params, config):
    """q(z|x): (μ, log σ²) of shape (B, Z) from a tensor x (B, D) and a dict of tensors."""
    h = x
    if config.hidden:
        h = tf.tanh(x @ params["enc.W1"] + params["enc.b1"])  # (B, H)
    mu = h @ params["enc.W_mu"] + params["enc.b_mu"]  # (B, Z)
    log_var = h @ params["enc.W_lv"] + params["enc.b_lv"]  # (B, Z)
    return mu, log_var


def decode(z, params, config):
    """p(x|z): Bernoulli logits or Gaussian means of shape (B, D)."""
    h = z
    if config.hidden:
        h = tf.tanh(z @ params["dec.W1"] + params["dec.b1"])  # (B, H)
    return h @ params["dec.W_out"] + params["dec.b_out"]  # (B, D)


def vae_forward(x, params, eps, config):
    """One reparameterised pass: x (B, D) data, eps (B, Z) the noise. Returns (VAEOutput, cache)."""
    x, params, eps = check_vae_inputs(x, params, eps, config)
    with tf.GradientTape() as tape:
        p = {name: _watched(tape, value) for name, value in params.items()}
        out = _elbo(
            tf.constant(x), tf.constant(eps),
            lambda x: encode(x, p, config), lambda z: decode(z, p, config), config, p.get("dec.log_var"),
        )
    arrays = VAEOutput(float(out.loss), *(t.numpy() for t in out[1:]))
    return arrays, VAECache(tape, tuple(p), tuple(p.values()), out.loss)


def vae_backward(dloss, cache):
    """Gradients of dloss · loss with respect to every parameter, keyed like params."""
    return dict(zip(cache.names, _gradients(dloss, cache)))


# ----------------------------------------------------------------------------------------------
# The same model as a tf.Module, trained with a GradientTape and an optimizer
# ----------------------------------------------------------------------------------------------


class VAE(tf.Module):
    """The VAE as a `tf.Module`: one `tf.Variable` per scratch parameter, named like it.

    Initialised as scratch's `init_vae` does (Glorot-uniform weights, zero biases, a decoder
    log-variance of 0), with TensorFlow's stateless random numbers from `seed`.
    """

    def __init__(self, config, dtype=tf.float64, seed=0, name="vae"):
        super().__init__(name=name)
        self.config = config
        self.params = {}  # name → tf.Variable; tf.Module tracks the dict, so these are its variables
        for i, (key, shape) in enumerate(parameter_shapes(config).items()):
            if len(shape) == 2:
                limit = math.sqrt(6.0 / (shape[0] + shape[1]))
                initial = tf.random.stateless_uniform(shape, (seed, i), -limit, limit, dtype=dtype)
            else:
                initial = tf.zeros(shape, dtype=dtype)
            self.params[key] = tf.Variable(initial, name=key.replace(".", "_"))

    def elbo(self, x, eps):
        """x (B, D), eps (B, Z) → VAEOutput of tensors: loss, and the (B,) terms elbo, reconstruction, kl."""
        p, config = self.params, self.config
        return _elbo(
            x, eps, lambda x: encode(x, p, config), lambda z: decode(z, p, config), config, p.get("dec.log_var")
        )


def train_step(vae, x, eps, optimizer):
    """One step of `optimizer` (e.g. tf.keras.optimizers.Adam) on the loss −mean ELBO; returns that loss.

    The noise eps (B, Z) is an argument, as everywhere in this project: draw it with
    `tf.random.normal(...)` or pass the same array scratch gets. Wrap in `tf.function` for speed.
    """
    with tf.GradientTape() as tape:
        loss = vae.elbo(x, eps).loss
    variables = list(vae.params.values())
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables))
    return loss


def to_tf_vae(params, config):
    """A `VAE` tf.Module holding copies of `params` (same names, shapes and dtype)."""
    params = check_vae_params(params, config)
    vae = VAE(config, dtype=tf.as_dtype(params["dec.b_out"].dtype))
    for name, value in params.items():
        vae.params[name].assign(value)
    return vae


def from_tf_vae(vae):
    """The scratch parameter dict of a `VAE` tf.Module (the inverse of `to_tf_vae`)."""
    return {name: vae.params[name].numpy().copy() for name in parameter_shapes(vae.config)}
