"""The convolutional VAE in PyTorch: scratch/conv_vae.py with torch ops, the backward by autograd.

Read it beside scratch/conv_vae.py: the names, the arguments and the NumPy-in/NumPy-out interface
are the same (`encode` / `encode_backward`, `decode` / `decode_backward`, `conv_vae_forward` /
`conv_vae_backward`, `decoded_means`); each forward records the graph and each backward replays it
with `torch.autograd.grad`. After the functions comes the same model as an `nn.Module`
(`ConvVAE`), the architecture of TensorFlow's CVAE tutorial in PyTorch's layers:

    encoder  nn.Conv2d(1, c, 3, stride=2) → ReLU → nn.Conv2d(c, 2c, 3, stride=2) → ReLU → nn.Flatten
             → nn.Linear(2c·36, Z) twice: μ and log σ²
    decoder  nn.Linear(Z, c·49) → ReLU → view (c, 7, 7)
             → nn.ConvTranspose2d(c, 2c, 3, stride=2, padding=1, output_padding=1) → ReLU
             → nn.ConvTranspose2d(2c, c, 3, stride=2, padding=1, output_padding=1) → ReLU
             → nn.ConvTranspose2d(c, 1, 3, stride=1, padding=1): Bernoulli logits

with `to_torch_conv_vae` / `from_torch_conv_vae` for the weights. The convolutions' layouts are
scratch's; only nn.Linear keeps its weight transposed, (out, in). nn.Flatten and view read NCHW in
the order scratch's reshape does, so the linear layers' columns need no reordering.

Shape letters as in scratch: B batch, Z latent width, c the width.
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ports.torch.attention import _leaf
from ports.torch.vae import _bernoulli_log_likelihood, _gaussian_kl, _reparameterize
from scratch.conv_vae import ConvVAEConfig, check_inputs, init_conv_vae, parameter_shapes
from scratch.validate import as_float_array
from scratch.vae import VAEOutput

__all__ = [
    "ConvVAEConfig", "parameter_shapes", "init_conv_vae", "encode", "encode_backward", "decode", "decode_backward",
    "conv_vae_forward", "conv_vae_backward", "decoded_means", "ConvVAE", "to_torch_conv_vae", "from_torch_conv_vae",
]

ENCODER = ("enc.W1", "enc.b1", "enc.W2", "enc.b2", "enc.W_mu", "enc.b_mu", "enc.W_lv", "enc.b_lv")
DECODER = ("dec.W1", "dec.b1", "dec.W2", "dec.b2", "dec.W3", "dec.b3", "dec.W_out", "dec.b_out")


# ----------------------------------------------------------------------------------------------
# The networks and the bound on a dict of tensors in the scratch layout
# ----------------------------------------------------------------------------------------------


def _encode(x, p):
    # Keras's "valid": no padding, o = ⌊(i − 3) / 2⌋ + 1, 28 → 13 → 6
    h = torch.relu(F.conv2d(x, p["enc.W1"], p["enc.b1"], stride=2))  # (B, c, 13, 13)
    h = torch.relu(F.conv2d(h, p["enc.W2"], p["enc.b2"], stride=2)).reshape(len(x), -1)  # (B, 2c·36)
    return h @ p["enc.W_mu"] + p["enc.b_mu"], h @ p["enc.W_lv"] + p["enc.b_lv"]  # (B, Z) each


def _decode(z, p, config):
    h = torch.relu(z @ p["dec.W1"] + p["dec.b1"]).view(len(z), config.width, 7, 7)  # (B, c, 7, 7)
    # o = 2(i − 1) − 2 + 3 + 1 = 2i: 7 → 14 → 28, and the last keeps the side
    h = torch.relu(F.conv_transpose2d(h, p["dec.W2"], p["dec.b2"], stride=2, padding=1, output_padding=1))  # (B, 2c, 14, 14)
    h = torch.relu(F.conv_transpose2d(h, p["dec.W3"], p["dec.b3"], stride=2, padding=1, output_padding=1))  # (B, c, 28, 28)
    return F.conv_transpose2d(h, p["dec.W_out"], p["dec.b_out"], stride=1, padding=1)  # (B, 1, 28, 28)


def _elbo(x, eps, encoder, decoder):
    """A VAEOutput of tensors: x (B, 1, 28, 28), eps (B, Z); `decoded` holds the logits flattened to (B, 784)."""
    mu, log_var = encoder(x)  # (B, Z) each
    z = _reparameterize(mu, log_var, eps)  # (B, Z)
    decoded = decoder(z).reshape(len(x), -1)  # (B, 784)
    # log p(x|z) summed over the 784 pixels, and KL(q(z|x) ‖ N(0, I)), each (B,)
    reconstruction = _bernoulli_log_likelihood(x.reshape(len(x), -1), decoded)
    kl = _gaussian_kl(mu, log_var)
    # Kingma and Welling (2014), Eq. (3): L = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))
    elbo = reconstruction - kl  # (B,)
    return VAEOutput(-torch.mean(elbo), elbo, reconstruction, kl, mu, log_var, z, decoded)


# ----------------------------------------------------------------------------------------------
# The contract: NumPy in, NumPy out, the backward by autograd
# ----------------------------------------------------------------------------------------------


class NetCache(NamedTuple):
    inputs: tuple  # the leaves: the network's input, then its parameters
    names: tuple  # the parameters' names
    outs: tuple  # the outputs, still attached to their graph


def _leaves(params, names):
    return {name: _leaf(np.asarray(params[name])) for name in names}


def _named_gradients(outs, douts, cache):
    for name, d, out in zip(("dmu", "dlog_var", "dout"), douts, outs):
        if np.shape(d) != tuple(out.shape):
            raise ValueError(f"{name} must have shape {tuple(out.shape)}, got shape {np.shape(d)}")
    grads = torch.autograd.grad(outs, cache.inputs, [torch.as_tensor(np.asarray(d), dtype=o.dtype) for d, o in zip(douts, outs)])
    return grads[0].numpy(), {name: g.numpy() for name, g in zip(cache.names, grads[1:])}


def encode(x, params, config):
    """q(z|x): (μ, log σ²), each (B, Z), and the cache for encode_backward."""
    p = _leaves(params, ENCODER)
    xt = _leaf(as_float_array("x", x))
    mu, log_var = _encode(xt, p)
    return mu.detach().numpy(), log_var.detach().numpy(), NetCache((xt, *p.values()), tuple(p), (mu, log_var))


def encode_backward(dmu, dlog_var, caches):
    """Grads of every "enc.*" parameter; x is data, its gradient is dropped."""
    return _named_gradients(caches.outs, (dmu, dlog_var), caches)[1]


def decode(z, params, config):
    """p(x|z): Bernoulli logits (B, 1, 28, 28), and the cache for decode_backward."""
    p = _leaves(params, DECODER)
    zt = _leaf(as_float_array("z", z))
    logits = _decode(zt, p, config)
    return logits.detach().numpy(), NetCache((zt, *p.values()), tuple(p), (logits,))


def decode_backward(dlogits, caches):
    """Return (dz, grads of every "dec.*" parameter)."""
    return _named_gradients(caches.outs, (dlogits,), caches)


class ConvVAECache(NamedTuple):
    names: tuple  # the parameter names, in the order of `inputs`
    inputs: tuple  # the parameter leaves
    out: torch.Tensor  # the loss, still attached to its graph


def conv_vae_forward(x, params, eps, config):
    """One reparameterised pass: x (B, 1, 28, 28) in [0, 1], eps (B, Z). Returns (vae.VAEOutput, cache)."""
    x, eps = check_inputs(x, params, eps, config)
    p = _leaves(params, parameter_shapes(config))
    out = _elbo(torch.from_numpy(x), torch.from_numpy(eps), lambda t: _encode(t, p), lambda t: _decode(t, p, config))
    arrays = VAEOutput(float(out.loss.detach()), *(t.detach().numpy() for t in out[1:]))
    return arrays, ConvVAECache(tuple(p), tuple(p.values()), out.loss)


def conv_vae_backward(dloss, cache):
    """Gradients of dloss · loss with respect to every parameter, keyed (and ordered) like parameter_shapes."""
    grads = torch.autograd.grad(cache.out, cache.inputs, torch.as_tensor(dloss, dtype=cache.out.dtype))
    return {name: g.numpy() for name, g in zip(cache.names, grads)}


def decoded_means(z, params, config):
    """The decoder's Bernoulli means σ(logits) of latent codes z (B, Z): images (B, 28, 28) in [0, 1]."""
    p = {name: torch.from_numpy(np.asarray(params[name])) for name in DECODER}
    with torch.no_grad():
        return torch.sigmoid(_decode(torch.from_numpy(as_float_array("z", z)), p, config))[:, 0].numpy()  # (B, 28, 28)


# ----------------------------------------------------------------------------------------------
# The same model as a torch.nn.Module, and where each scratch weight lives in it
# ----------------------------------------------------------------------------------------------


class ConvVAE(nn.Module):
    """The conv VAE with nn.Conv2d, nn.ConvTranspose2d and nn.Linear; `forward(x, eps)` → VAEOutput of tensors.

    x (B, 1, 28, 28) in [0, 1], eps (B, Z) the noise: as everywhere in this project the noise is an
    argument (draw it with torch.randn_like(mu) for a sampler of your own). PyTorch's default
    initialisation (Kaiming-uniform) differs from scratch's Glorot: start from `to_torch_conv_vae`.
    """

    def __init__(self, config=ConvVAEConfig()):
        super().__init__()
        self.config = config
        z, c = config.z_dim, config.width
        self.encoder = nn.Sequential(nn.Conv2d(1, c, 3, stride=2), nn.ReLU(),  # (B, c, 13, 13)
                                     nn.Conv2d(c, 2 * c, 3, stride=2), nn.ReLU(), nn.Flatten())  # (B, 2c·36)
        self.enc_mu, self.enc_log_var = nn.Linear(2 * c * 36, z), nn.Linear(2 * c * 36, z)
        self.dec_linear = nn.Linear(z, c * 49)
        self.decoder = nn.Sequential(
            nn.ReLU(), nn.Unflatten(1, (c, 7, 7)),
            nn.ConvTranspose2d(c, 2 * c, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),  # (B, 2c, 14, 14)
            nn.ConvTranspose2d(2 * c, c, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),  # (B, c, 28, 28)
            nn.ConvTranspose2d(c, 1, 3, stride=1, padding=1),  # (B, 1, 28, 28): logits
        )

    def encode(self, x):
        h = self.encoder(x)  # (B, 2c·36)
        return self.enc_mu(h), self.enc_log_var(h)  # (B, Z) each

    def decode(self, z):
        return self.decoder(self.dec_linear(z))  # (B, 1, 28, 28) logits

    def forward(self, x, eps):
        return _elbo(x, eps, self.encode, self.decode)


def _layers(module):
    """scratch weight name → (layer, stored transposed?); each bias is the weight's name with .W → .b."""
    return {"enc.W1": (module.encoder[0], False), "enc.W2": (module.encoder[2], False),
            "enc.W_mu": (module.enc_mu, True), "enc.W_lv": (module.enc_log_var, True),
            "dec.W1": (module.dec_linear, True), "dec.W2": (module.decoder[2], False),
            "dec.W3": (module.decoder[4], False), "dec.W_out": (module.decoder[6], False)}


def parameter_map(module):
    """scratch parameter name → (torch parameter, stored transposed?), in scratch's order: for optimizer state."""
    named = {}
    for w, (layer, transposed) in _layers(module).items():
        named[w], named[w.replace(".W", ".b")] = (layer.weight, transposed), (layer.bias, False)
    return {name: named[name] for name in parameter_shapes(module.config)}


def to_torch_conv_vae(params, config):
    """A `ConvVAE` computing what scratch computes with `params` (copied; its dtype is theirs)."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have the keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got shape {np.shape(params[name])}")
    module = ConvVAE(config).to(torch.from_numpy(np.asarray(params["enc.W1"])).dtype)
    with torch.no_grad():
        for name, (p, transposed) in parameter_map(module).items():
            value = torch.from_numpy(np.asarray(params[name]))
            p.copy_(value.T if transposed else value)
    return module


def from_torch_conv_vae(module):
    """The scratch parameter dict of a `ConvVAE` (the inverse of `to_torch_conv_vae`)."""
    return {name: (p.detach().T if transposed else p.detach()).contiguous().numpy().copy()
            for name, (p, transposed) in parameter_map(module).items()}

