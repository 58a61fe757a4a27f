"""A convolutional VAE for 28×28 digits (the architecture of TensorFlow's CVAE tutorial), every gradient by hand.

Shape letters, used in the comment at the end of each array line:
    B  batch      Z  latent width      c  the width (c channels after the first convolution, 2c after the second)

The model and its bound are scratch/vae.py's: q(z|x) = N(μ(x), diag exp(log σ²(x))), p(z) = N(0, I),
a Bernoulli decoder p(x|z) with logits from the network, and the loss −mean_b ELBO(x_b) with
one reparameterised z = μ + σ ⊙ ε. Only the two networks change, convolutions in place of the
MLP's dense layers (TensorFlow's "Convolutional Variational Autoencoder" tutorial):

    encoder  x (B, 1, 28, 28) → 3×3 conv, stride 2, no padding → ReLU → (B, c, 13, 13)
             → 3×3 conv, stride 2, no padding → ReLU → (B, 2c, 6, 6) → flatten (B, 2c·36)
             → two linear heads → μ, log σ² (B, Z)
    decoder  z (B, Z) → linear → ReLU → (B, c, 7, 7)
             → 3×3 transposed conv, stride 2 → ReLU → (B, 2c, 14, 14)
             → 3×3 transposed conv, stride 2 → ReLU → (B, c, 28, 28)
             → 3×3 transposed conv, stride 1 → logits (B, 1, 28, 28)

Padding, exactly. The encoder's convolutions are Keras's "valid" (no padding): o = ⌊(i − 3) / 2⌋ + 1,
28 → 13 → 6. The decoder's transposed convolutions double the side with padding 1 and output
padding 1: o = 2(i − 1) − 2 + 3 + 1 = 2i, 7 → 14 → 28, and the last keeps it (stride 1, padding 1).
These are PyTorch's ConvTranspose2d(3, stride=2, padding=1, output_padding=1); Keras's "same"
gives the same sizes but crops the other side (one cell of shift), so a port pads explicitly.
The tutorial's one dense layer to 2Z outputs is written here as vae.py's two heads (enc.W_mu,
enc.W_lv): the same map, its columns split.
"""

import math
from typing import NamedTuple

import numpy as np

from scratch import vae as V
from scratch.conv import conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward
from scratch.layers import linear_backward, linear_forward, relu_backward, relu_forward, sigmoid
from scratch.validate import as_float_array, check_same_dtype

SIDE = 28


class ConvVAEConfig(NamedTuple):
    z_dim: int = 16  # Z
    width: int = 32  # c: the tutorial's 32 (encoder 32 → 64 channels, decoder 32 → 64 → 32 → 1)


def parameter_shapes(config):
    """The flat layout; conv weights (C_out, C_in, 3, 3), transposed-conv weights (C_in, C_out, 3, 3)."""
    z, c = config.z_dim, config.width
    return {
        "enc.W1": (c, 1, 3, 3), "enc.b1": (c,),
        "enc.W2": (2 * c, c, 3, 3), "enc.b2": (2 * c,),
        "enc.W_mu": (2 * c * 36, z), "enc.b_mu": (z,), "enc.W_lv": (2 * c * 36, z), "enc.b_lv": (z,),
        "dec.W1": (z, c * 49), "dec.b1": (c * 49,),
        "dec.W2": (c, 2 * c, 3, 3), "dec.b2": (2 * c,),
        "dec.W3": (2 * c, c, 3, 3), "dec.b3": (c,),
        "dec.W_out": (c, 1, 3, 3), "dec.b_out": (1,),
    }


def init_conv_vae(config, rng, dtype=np.float64):
    """Glorot-uniform weights (Keras's default, as in the tutorial), zero biases.

    fan_in and fan_out of a convolution count the kernel's cells: C_in·kh·kw and C_out·kh·kw.
    """
    params = {}
    for name, shape in parameter_shapes(config).items():
        if len(shape) == 1:
            params[name] = np.zeros(shape, dtype=dtype)
            continue
        if len(shape) == 2:
            fan_in, fan_out = shape
        else:
            cells = shape[2] * shape[3]
            transposed = name.startswith("dec.")  # (C_in, C_out, kh, kw)
            fan_in, fan_out = ((shape[0], shape[1]) if transposed else (shape[1], shape[0]))
            fan_in, fan_out = fan_in * cells, fan_out * cells
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        params[name] = rng.uniform(-limit, limit, size=shape).astype(dtype)
    return params


def check_inputs(x, params, eps, config):
    x, eps = as_float_array("x", x), as_float_array("eps", eps)
    if x.ndim != 4 or x.shape[1:] != (1, SIDE, SIDE):
        raise ValueError(f"x must have shape (B, 1, {SIDE}, {SIDE}), got shape {x.shape}")
    if eps.shape != (len(x), config.z_dim):
        raise ValueError(f"eps must have shape (B={len(x)}, Z={config.z_dim}), got shape {eps.shape}")
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have the keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got shape {np.shape(params[name])}")
    check_same_dtype(x=x, eps=eps, params=params["enc.W1"])
    return x, eps


def encode(x, params, config):
    """q(z|x): (μ, log σ²), each (B, Z), and the cache for encode_backward."""
    caches = {}
    h, caches["conv1"] = conv2d_forward(x, params["enc.W1"], params["enc.b1"], stride=2)  # (B, c, 13, 13)
    h, caches["relu1"] = relu_forward(h)
    h, caches["conv2"] = conv2d_forward(h, params["enc.W2"], params["enc.b2"], stride=2)  # (B, 2c, 6, 6)
    h, caches["relu2"] = relu_forward(h)
    h = h.reshape(len(h), -1)  # (B, 2c·36)
    mu, caches["mu"] = linear_forward(h, params["enc.W_mu"], params["enc.b_mu"])  # (B, Z)
    log_var, caches["lv"] = linear_forward(h, params["enc.W_lv"], params["enc.b_lv"])  # (B, Z)
    return mu, log_var, caches


def encode_backward(dmu, dlog_var, caches):
    grads = {}
    dh_mu, grads["enc.W_mu"], grads["enc.b_mu"] = linear_backward(dmu, caches["mu"])  # (B, 2c·36)
    dh_lv, grads["enc.W_lv"], grads["enc.b_lv"] = linear_backward(dlog_var, caches["lv"])
    dh = (dh_mu + dh_lv).reshape(caches["relu2"].shape)  # both heads read h: their gradients add; (B, 2c, 6, 6)
    dh = relu_backward(dh, caches["relu2"])
    dh, grads["enc.W2"], grads["enc.b2"] = conv2d_backward(dh, caches["conv2"])  # (B, c, 13, 13)
    dh = relu_backward(dh, caches["relu1"])
    _, grads["enc.W1"], grads["enc.b1"] = conv2d_backward(dh, caches["conv1"], needs_input_grad=False)  # x is data
    return grads


def decode(z, params, config):
    """p(x|z): Bernoulli logits (B, 1, 28, 28), and the cache for decode_backward."""
    caches, c = {}, config.width
    h, caches["lin1"] = linear_forward(z, params["dec.W1"], params["dec.b1"])  # (B, c·49)
    h, caches["relu1"] = relu_forward(h.reshape(len(z), c, 7, 7))  # (B, c, 7, 7)
    h, caches["conv2"] = conv_transpose2d_forward(h, params["dec.W2"], params["dec.b2"], 2, 1, 1)  # (B, 2c, 14, 14)
    h, caches["relu2"] = relu_forward(h)
    h, caches["conv3"] = conv_transpose2d_forward(h, params["dec.W3"], params["dec.b3"], 2, 1, 1)  # (B, c, 28, 28)
    h, caches["relu3"] = relu_forward(h)
    logits, caches["out"] = conv_transpose2d_forward(h, params["dec.W_out"], params["dec.b_out"], 1, 1)  # (B, 1, 28, 28)
    return logits, caches


def decode_backward(dlogits, caches):
    """Return (dz, grads of every "dec.*" parameter)."""
    grads = {}
    dh, grads["dec.W_out"], grads["dec.b_out"] = conv_transpose2d_backward(dlogits, caches["out"])  # (B, c, 28, 28)
    dh = relu_backward(dh, caches["relu3"])
    dh, grads["dec.W3"], grads["dec.b3"] = conv_transpose2d_backward(dh, caches["conv3"])  # (B, 2c, 14, 14)
    dh = relu_backward(dh, caches["relu2"])
    dh, grads["dec.W2"], grads["dec.b2"] = conv_transpose2d_backward(dh, caches["conv2"])  # (B, c, 7, 7)
    dh = relu_backward(dh, caches["relu1"])
    dz, grads["dec.W1"], grads["dec.b1"] = linear_backward(dh.reshape(len(dh), -1), caches["lin1"])  # (B, Z)
    return dz, grads


class ConvVAECache(NamedTuple):
    config: ConvVAEConfig
    batch: int
    encoder: dict
    reparameterize: V.ReparameterizeCache
    kl: V.GaussianKLCache
    decoder: dict
    likelihood: V.BernoulliCache


def conv_vae_forward(x, params, eps, config):
    """One reparameterised pass: x (B, 1, 28, 28) in [0, 1], eps (B, Z). Returns (vae.VAEOutput, cache).

    VAEOutput.decoded holds the logits flattened to (B, 784), as the likelihood reads them.
    """
    x, eps = check_inputs(x, params, eps, config)
    mu, log_var, encoder_cache = encode(x, params, config)  # (B, Z) each
    z, reparameterize_cache = V.reparameterize_forward(mu, log_var, eps)  # (B, Z)
    logits, decoder_cache = decode(z, params, config)  # (B, 1, 28, 28)
    decoded = logits.reshape(len(x), -1)  # (B, 784)
    # log p(x|z) summed over the 784 pixels, and KL(q(z|x) ‖ N(0, I)), each (B,)
    reconstruction, likelihood_cache = V.bernoulli_log_likelihood_forward(x.reshape(len(x), -1), decoded)
    kl, kl_cache = V.gaussian_kl_forward(mu, log_var)
    # Kingma and Welling (2014), Eq. (3): L = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))
    elbo = reconstruction - kl  # (B,)
    output = V.VAEOutput(-float(np.mean(elbo)), elbo, reconstruction, kl, mu, log_var, z, decoded)
    return output, ConvVAECache(config, len(x), encoder_cache, reparameterize_cache, kl_cache, decoder_cache,
                                likelihood_cache)


def conv_vae_backward(dloss, cache):
    """Gradients of dloss · loss with respect to every parameter, keyed (and ordered) like parameter_shapes."""
    dterm = np.full(cache.batch, dloss / cache.batch, dtype=cache.kl.mu.dtype)  # (B,): loss = mean(kl − reconstruction)
    ddecoded = V.bernoulli_log_likelihood_backward(-dterm, cache.likelihood)  # (B, 784)
    dz, grads = decode_backward(ddecoded.reshape(cache.batch, 1, SIDE, SIDE), cache.decoder)  # (B, Z)
    dmu, dlog_var = V.reparameterize_backward(dz, cache.reparameterize)  # (B, Z) each
    dmu_kl, dlog_var_kl = V.gaussian_kl_backward(dterm, cache.kl)
    # μ and log σ² reach the loss twice, through z and through the KL: the gradients add
    grads.update(encode_backward(dmu + dmu_kl, dlog_var + dlog_var_kl, cache.encoder))
    return {name: grads[name] for name in parameter_shapes(cache.config)}


def decoded_means(z, params, config):
    """The decoder's Bernoulli means σ(logits) of latent codes z (B, Z): images (B, 28, 28) in [0, 1]."""
    logits, _ = decode(z, params, config)  # (B, 1, 28, 28)
    return sigmoid(logits)[:, 0]  # (B, 28, 28)
