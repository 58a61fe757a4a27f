"""The convolutional VAE in Keras 3: scratch/conv_vae.py with keras.ops, and the model as a `keras.Model`
with a `Sampling` layer that `model.fit(x)` trains (the Keras way of TensorFlow's CVAE tutorial).

Read it beside scratch/conv_vae.py: the names, the arguments and the NumPy-in/NumPy-out interface
are the same (`encode` / `encode_backward`, `decode` / `decode_backward`, `conv_vae_forward` /
`conv_vae_backward`, `decoded_means`); each forward is `record(<the math in keras.ops>, …)` and each
backward `gradients(dout, cache)` (ports/keras/autodiff.py). The convolutions are ports/keras/conv.py's.

The model is built from Keras's layers, channels last, with the translation from scratch's NCHW
layout written in as layers:

    encoder  Permute((2, 3, 1)) → Conv2D(c, 3, 2, "valid", relu) → Conv2D(2c, 3, 2, "valid", relu)
             → Permute((3, 1, 2)) → Flatten → Dense(Z) twice: μ, log σ²   → Sampling: z = μ + σ ⊙ ε
    decoder  Dense(c·49, relu) → Reshape((c, 7, 7)) → Permute((2, 3, 1))
             → Conv2DTranspose(2c, 3, 2, "valid", output_padding=1, relu) → Cropping2D(1)
             → Conv2DTranspose(c, 3, 2, "valid", output_padding=1, relu) → Cropping2D(1)
             → Conv2DTranspose(1, 3, 1, "valid") → Cropping2D(1) → Permute((3, 1, 2)): logits (B, 1, 28, 28)

The tutorial writes the transposed convolutions with padding="same", which gives the same sizes but
crops the other side (scratch/conv_vae.py): the "valid" output cropped by one cell on every side is
PyTorch's padding 1, output_padding 1, which scratch computes. (Cropping after the ReLU is the same as
before it: both act cell by cell.) The Permutes keep scratch's NCHW order of the dense layers' columns,
so Dense kernels move unchanged and a convolution's kernel with transpose(2, 3, 1, 0).

Shape letters as in scratch: B batch, Z latent width, c the width.
"""

import functools
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ports.keras.autodiff import gradients, record
from ports.keras.conv import _conv2d, _conv_transpose2d
from ports.keras.vae import Sampling, _bernoulli_log_likelihood, _gaussian_kl, _reparameterize
from scratch.conv_vae import SIDE, ConvVAEConfig, check_inputs, init_conv_vae, parameter_shapes
from scratch.validate import as_float_array
from scratch.vae import VAEOutput

__all__ = [
    "ConvVAEConfig", "parameter_shapes", "init_conv_vae", "encode", "encode_backward", "decode", "decode_backward",
    "conv_vae_forward", "conv_vae_backward", "decoded_means", "Sampling", "ConvVAE", "to_keras_conv_vae",
    "from_keras_conv_vae", "assign_conv_vae",
]

ENCODER = ("enc.W1", "enc.b1", "enc.W2", "enc.b2", "enc.W_mu", "enc.b_mu", "enc.W_lv", "enc.b_lv")
DECODER = ("dec.W1", "dec.b1", "dec.W2", "dec.b2", "dec.W3", "dec.b3", "dec.W_out", "dec.b_out")
ONE, TWO, NONE = (1, 1), (2, 2), (0, 0)  # (height, width) pairs for ports/keras/conv.py
PIXELS = SIDE * SIDE


# ----------------------------------------------------------------------------------------------
# The networks and the bound on a dict of tensors in the scratch layout, in keras.ops
# ----------------------------------------------------------------------------------------------


def _encode(x, p):
    # Keras's "valid": no padding, o = ⌊(i − 3) / 2⌋ + 1, 28 → 13 → 6
    h = ops.relu(_conv2d(x, p["enc.W1"], p["enc.b1"], TWO, NONE, ONE))  # (B, c, 13, 13)
    h = ops.relu(_conv2d(h, p["enc.W2"], p["enc.b2"], TWO, NONE, ONE))  # (B, 2c, 6, 6)
    h = ops.reshape(h, (-1, h.shape[1] * 36))  # (B, 2c·36), in NCHW order, as scratch flattens
    return ops.matmul(h, p["enc.W_mu"]) + p["enc.b_mu"], ops.matmul(h, p["enc.W_lv"]) + p["enc.b_lv"]  # (B, Z) each


def _decode(z, p, config):
    h = ops.reshape(ops.relu(ops.matmul(z, p["dec.W1"]) + p["dec.b1"]), (-1, config.width, 7, 7))  # (B, c, 7, 7)
    # o = 2(i − 1) − 2 + 3 + 1 = 2i: 7 → 14 → 28, and the last keeps the side
    h = ops.relu(_conv_transpose2d(h, p["dec.W2"], p["dec.b2"], TWO, ONE, ONE, ONE))  # (B, 2c, 14, 14)
    h = ops.relu(_conv_transpose2d(h, p["dec.W3"], p["dec.b3"], TWO, ONE, ONE, ONE))  # (B, c, 28, 28)
    return _conv_transpose2d(h, p["dec.W_out"], p["dec.b_out"], ONE, ONE, NONE, ONE)  # (B, 1, 28, 28): logits


def _elbo(x, encoder, sample, decoder):
    """A VAEOutput of tensors from x (B, 1, 28, 28); `decoded` holds the logits flattened to (B, 784)."""
    mu, log_var = encoder(x)  # (B, Z) each
    z = sample(mu, log_var)  # (B, Z), z = μ + σ ⊙ ε
    decoded = ops.reshape(decoder(z), (-1, PIXELS))  # (B, 784)
    # log p(x|z) summed over the 784 pixels, and KL(q(z|x) ‖ N(0, I)), each (B,)
    reconstruction = _bernoulli_log_likelihood(ops.reshape(x, (-1, PIXELS)), decoded)
    kl = _gaussian_kl(mu, log_var)
    # Kingma and Welling (2014), Eq. (3): L = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))
    elbo = reconstruction - kl  # (B,)
    return VAEOutput(-ops.mean(elbo), elbo, reconstruction, kl, mu, log_var, z, decoded)


# ----------------------------------------------------------------------------------------------
# The contract: NumPy in, NumPy out, the backward by `gradients`
# ----------------------------------------------------------------------------------------------


def encode(x, params, config):
    """q(z|x): (μ, log σ²), each (B, Z), and the caches for encode_backward (one recording per head)."""
    x = as_float_array("x", x)
    values = [params[n] for n in ENCODER]
    mu, mu_rec = record(lambda *ps: _encode(ops.convert_to_tensor(x), dict(zip(ENCODER, ps)))[0], *values)
    log_var, lv_rec = record(lambda *ps: _encode(ops.convert_to_tensor(x), dict(zip(ENCODER, ps)))[1], *values)
    return mu, log_var, (mu_rec, lv_rec)


def encode_backward(dmu, dlog_var, caches):
    """Grads of every "enc.*" parameter: the two heads read the same features, so their gradients add."""
    from_mu, from_lv = gradients(dmu, caches[0]), gradients(dlog_var, caches[1])
    return {name: a + b for name, a, b in zip(ENCODER, from_mu, from_lv)}


def decode(z, params, config):
    """p(x|z): Bernoulli logits (B, 1, 28, 28), and the cache for decode_backward."""
    return record(lambda zt, *ps: _decode(zt, dict(zip(DECODER, ps)), config), as_float_array("z", z),
                  *(params[n] for n in DECODER))


def decode_backward(dlogits, caches):
    """Return (dz, grads of every "dec.*" parameter)."""
    grads = gradients(dlogits, caches)
    return grads[0], dict(zip(DECODER, grads[1:]))


class ConvVAECache(NamedTuple):
    names: tuple  # the parameter names, in the order recorded
    recording: object  # what `gradients` needs: the loss against every parameter


def conv_vae_forward(x, params, eps, config):
    """One reparameterised pass: x (B, 1, 28, 28) in [0, 1], eps (B, Z). Returns (vae.VAEOutput, cache)."""
    x, eps = check_inputs(x, params, eps, config)
    names = tuple(parameter_shapes(config))
    terms = {}

    def loss(*ps):
        p = dict(zip(names, ps))
        out = _elbo(ops.convert_to_tensor(x), lambda t: _encode(t, p),
                    lambda mu, log_var: _reparameterize(mu, log_var, ops.convert_to_tensor(eps)),
                    lambda t: _decode(t, p, config))
        terms["out"] = out
        return out.loss

    value, recording = record(loss, *(params[n] for n in names))
    arrays = VAEOutput(float(value), *(ops.convert_to_numpy(t) for t in terms["out"][1:]))
    return arrays, ConvVAECache(names, recording)


def conv_vae_backward(dloss, cache):
    """Gradients of dloss · loss with respect to every parameter, keyed (and ordered) like parameter_shapes."""
    dtype = keras.backend.standardize_dtype(cache.recording.out.dtype)
    return dict(zip(cache.names, gradients(np.asarray(dloss, dtype=dtype), cache.recording)))


def decoded_means(z, params, config):
    """The decoder's Bernoulli means σ(logits) of latent codes z (B, Z): images (B, 28, 28) in [0, 1]."""
    p = {name: ops.convert_to_tensor(params[name]) for name in DECODER}
    return ops.convert_to_numpy(ops.sigmoid(_decode(ops.convert_to_tensor(as_float_array("z", z)), p, config))[:, 0])


# ----------------------------------------------------------------------------------------------
# The model the Keras way: Keras's convolution layers, a Sampling layer, and a custom train_step
# ----------------------------------------------------------------------------------------------


class ConvVAE(keras.Model):
    """The conv VAE as a Keras model: `model(x)` samples ε with its `Sampling` layer, `model(x, eps=eps)` uses
    the given noise; either returns a VAEOutput of tensors. x is (B, 1, 28, 28) (scratch's NCHW) or (B, 784).
    `compile(optimizer)` then `fit(x)` minimises −mean ELBO and reports loss, reconstruction and kl.

    Layers start as Keras initialises them (Glorot-uniform kernels, zero biases): the distribution of
    scratch's `init_conv_vae`, other draws; `to_keras_conv_vae` starts from scratch's very weights.
    """

    def __init__(self, config=ConvVAEConfig(), dtype="float32", seed=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.config = config
        z, c = config.z_dim, config.width
        L, kw = keras.layers, dict(dtype=dtype)
        conv = functools.partial(L.Conv2D, strides=2, padding="valid", activation="relu", **kw)
        up = functools.partial(L.Conv2DTranspose, padding="valid", **kw)
        self.encoder = keras.Sequential([
            keras.Input((1, SIDE, SIDE), dtype=dtype), L.Permute((2, 3, 1), **kw),  # NCHW → NHWC (B, 28, 28, 1)
            conv(c, 3), conv(2 * c, 3),  # (B, 13, 13, c), (B, 6, 6, 2c)
            L.Permute((3, 1, 2), **kw), L.Flatten(**kw),  # (B, 2c·36) in scratch's NCHW order
        ], name="encoder")
        self.enc_mu, self.enc_log_var = L.Dense(z, name="enc_mu", **kw), L.Dense(z, name="enc_log_var", **kw)
        self.sampling = Sampling(seed, name="sampling", **kw)
        self.decoder = keras.Sequential([
            keras.Input((z,), dtype=dtype), L.Dense(c * 49, activation="relu", **kw),
            L.Reshape((c, 7, 7), **kw), L.Permute((2, 3, 1), **kw),  # scratch's (c, 7, 7) → NHWC
            up(2 * c, 3, strides=2, output_padding=1, activation="relu"), L.Cropping2D(1, **kw),  # (B, 14, 14, 2c)
            up(c, 3, strides=2, output_padding=1, activation="relu"), L.Cropping2D(1, **kw),  # (B, 28, 28, c)
            up(1, 3, strides=1, output_padding=0), L.Cropping2D(1, **kw),  # (B, 28, 28, 1)
            L.Permute((3, 1, 2), **kw),  # (B, 1, 28, 28): logits
        ], name="decoder")
        self.enc_mu.build((None, 2 * c * 36))
        self.enc_log_var.build((None, 2 * c * 36))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    def encode(self, x):
        h = self.encoder(ops.reshape(x, (-1, 1, SIDE, SIDE)))  # (B, 2c·36)
        return self.enc_mu(h), self.enc_log_var(h)  # (B, Z) each

    def decode(self, z):
        return self.decoder(z)  # (B, 1, 28, 28) logits

    def decoded_means(self, z):
        return ops.sigmoid(self.decode(z))[:, 0]  # (B, 28, 28)

    def call(self, x, eps=None):
        x = ops.reshape(x, (-1, 1, SIDE, SIDE))
        return _elbo(x, self.encode, lambda mu, log_var: self.sampling((mu, log_var), eps=eps), self.decode)

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)  # fit(x): no targets
        x = ops.cast(x, self.dtype)  # fit's data adapter may hand float64 data over as float32
        with tf.GradientTape() as tape:  # the TensorFlow backend's autograd, as ports/keras/vae.py's VAE
            out = self(x, training=True)  # ε drawn by the Sampling layer
        grads = tape.gradient(out.loss, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        self.loss_tracker.update_state(out.loss)
        self.reconstruction_tracker.update_state(ops.mean(out.reconstruction))
        self.kl_tracker.update_state(ops.mean(out.kl))
        return {metric.name: metric.result() for metric in self.metrics}


def _layers(model):
    """scratch weight name → (Keras layer, is it a convolution?); each bias is the name with .W → .b."""
    enc = [layer for layer in model.encoder.layers if layer.weights]
    dec = [layer for layer in model.decoder.layers if layer.weights]
    return {"enc.W1": (enc[0], True), "enc.W2": (enc[1], True), "enc.W_mu": (model.enc_mu, False),
            "enc.W_lv": (model.enc_log_var, False), "dec.W1": (dec[0], False), "dec.W2": (dec[1], True),
            "dec.W3": (dec[2], True), "dec.W_out": (dec[3], True)}


def to_keras_conv_vae(params, config, seed=None):
    """A built `ConvVAE` holding copies of `params` (its dtype is theirs); convolution kernels transpose(2, 3, 1, 0)."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have the keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got shape {np.shape(params[name])}")
    model = ConvVAE(config, dtype=np.asarray(params["enc.W1"]).dtype.name, seed=seed)
    assign_conv_vae(model, params)
    return model


def assign_conv_vae(model, params):
    """Copy a scratch parameter dict into a `ConvVAE`'s variables, in place."""
    for w, (layer, conv) in _layers(model).items():
        value = np.asarray(params[w])
        layer.kernel.assign(value.transpose(2, 3, 1, 0) if conv else value)  # PyTorch's layout → Keras's
        layer.bias.assign(params[w.replace(".W", ".b")])


def from_keras_conv_vae(model):
    """The scratch parameter dict of a `ConvVAE` (the inverse of `to_keras_conv_vae`)."""
    arrays = {}
    for w, (layer, conv) in _layers(model).items():
        kernel = np.array(layer.kernel.numpy())
        arrays[w] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)) if conv else kernel
        arrays[w.replace(".W", ".b")] = np.array(layer.bias.numpy())
    return {name: arrays[name] for name in parameter_shapes(model.config)}
