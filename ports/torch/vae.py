"""The variational autoencoder in PyTorch: scratch/vae.py with torch ops, the backward by autograd.

Read it beside scratch/vae.py: the names, the arguments and the NumPy-in/NumPy-out interface
of every forward/backward pair are the same; each forward records the graph and each backward
replays it with `torch.autograd.grad` instead of the hand-derived lines. After the functions
comes the same model as a `torch.nn.Module` (`VAE`), with `to_torch_vae` / `from_torch_vae` to
move weights between the scratch layout and torch's.

Shape letters as in scratch: B batch, D data width, H hidden width, Z latent width.
"""

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ports.torch.attention import Cache, _gradients, _leaf
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
    "vae_forward", "vae_backward", "VAE", "to_torch_vae", "from_torch_vae",
]


# ----------------------------------------------------------------------------------------------
# The math on tensors: shared by the functions below and by the nn.Module at the end
# ----------------------------------------------------------------------------------------------


def _reparameterize(mu, log_var, eps):
    std = torch.exp(0.5 * log_var)  # (B, Z), σ = exp(½ log σ²): the variance is exp(log σ²)
    # Kingma and Welling (2014), Eq. (10): z = μ + σ ⊙ ε, ε ~ N(0, I)
    return mu + std * eps  # (B, Z)


def _gaussian_kl(mu, log_var):
    # Kingma and Welling (2014), Appendix B: −KL = ½ Σ_j (1 + log σ_j² − μ_j² − σ_j²)
    return 0.5 * torch.sum(torch.exp(log_var) + mu * mu - 1.0 - log_var, dim=-1)  # (B,)


def _softplus(t):
    """log(1 + eᵗ) = −log σ(−t), stable for any t and with the exact gradient σ(t).

    (F.softplus returns t itself above its threshold t = 20, off by up to e⁻²⁰ ≈ 2e-9.)
    """
    return -F.logsigmoid(-t)


def _bernoulli_log_likelihood(x, logits):
    # log σ(l) = −softplus(−l), log(1 − σ(l)) = −softplus(l)  ⇒  x·l − softplus(l), stable for any l
    return torch.sum(x * logits - _softplus(logits), dim=-1)  # (B,)


def _gaussian_log_likelihood(x, mean, log_var):
    residual = x - mean  # (B, D)
    # log N(x; m, s²) = −½ [log 2π + log s² + (x − m)² / s²], summed over the D pixels
    per_pixel = LOG_2PI + log_var + residual * residual * torch.exp(-log_var)  # (B, D), log_var broadcast
    return -0.5 * torch.sum(per_pixel, dim=-1)  # (B,)


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
    return VAEOutput(-torch.mean(elbo), elbo, reconstruction, kl, mu, log_var, z, decoded)


# ----------------------------------------------------------------------------------------------
# Input checks: the same checks and messages as scratch/vae.py
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The contract ops: NumPy in, NumPy out, the backward by autograd
# ----------------------------------------------------------------------------------------------


def reparameterize_forward(mu, log_var, eps):
    """z = μ + σ ⊙ ε with σ = exp(½ log σ²); μ, log σ², ε of shape (B, Z)."""
    mu, log_var = _check_pair("mu", mu, "log_var", log_var)
    _, eps = _check_pair("mu", mu, "eps", eps)
    inputs = (_leaf(mu), _leaf(log_var))  # ε is noise, not differentiated
    z = _reparameterize(*inputs, torch.tensor(eps))
    return z.detach().numpy(), Cache(inputs, z)


def reparameterize_backward(dz, cache):
    """Return (dmu, dlog_var)."""
    dmu, dlog_var = _gradients(dz, cache)
    return dmu, dlog_var


def gaussian_kl_forward(mu, log_var):
    """KL(N(μ, diag σ²) ‖ N(0, I)) per example, shape (B,), in closed form."""
    mu, log_var = _check_pair("mu", mu, "log_var", log_var)
    inputs = (_leaf(mu), _leaf(log_var))
    kl = _gaussian_kl(*inputs)
    return kl.detach().numpy(), Cache(inputs, kl)


def gaussian_kl_backward(dkl, cache):
    """Return (dmu, dlog_var) given dkl of shape (B,)."""
    dmu, dlog_var = _gradients(dkl, cache)
    return dmu, dlog_var


def bernoulli_log_likelihood_forward(x, logits):
    """log p(x | logits) = Σ_d x_d log p_d + (1 − x_d) log(1 − p_d), p = sigmoid(logits); shape (B,)."""
    x, logits = check_likelihood_inputs(x, logits)
    inputs = (_leaf(logits),)  # x is data, not differentiated
    log_likelihood = _bernoulli_log_likelihood(torch.tensor(x), *inputs)
    return log_likelihood.detach().numpy(), Cache(inputs, log_likelihood)


def bernoulli_log_likelihood_backward(dll, cache):
    """Return dlogits."""
    (dlogits,) = _gradients(dll, cache)
    return dlogits


def gaussian_log_likelihood_forward(x, mean, log_var):
    """log N(x; mean, diag exp(log_var)) per example, shape (B,); log_var of shape (B, D), (D,) or ()."""
    x, mean, log_var = check_likelihood_inputs(x, mean, log_var)
    inputs = (_leaf(mean), _leaf(log_var))
    log_likelihood = _gaussian_log_likelihood(torch.tensor(x), *inputs)
    return log_likelihood.detach().numpy(), Cache(inputs, log_likelihood)


def gaussian_log_likelihood_backward(dll, cache):
    """Return (dmean, dlog_var); autograd sums a broadcast log_var's gradient back to its shape."""
    dmean, dlog_var = _gradients(dll, cache)
    return dmean, dlog_var


# ----------------------------------------------------------------------------------------------
# The model, on a dict of tensors in the scratch layout (W of shape (in, out): y = x W + b)
# ----------------------------------------------------------------------------------------------


class VAECache(NamedTuple):
    names: tuple  # the parameter names, in the order of `inputs`
    inputs: tuple  # the parameter leaves the gradients are taken with respect to
    out: torch.Tensor  # the loss, still attached to its graph


def encode(x, params, config):
    """q(z|x): (μ, log σ²) of shape (B, Z) from a tensor x (B, D) and a dict of tensors."""
    h = x
    if config.hidden:
        h = torch.tanh(x @ params["enc.W1"] + params["enc.b1"])  # (B, H)
    mu = h @ params["enc.W_mu"] + params["enc.b_mu"]  # (B, Z)
    log_var = h @ params["enc.W_lv"] + params["enc.b_lv"]  # (B, Z)
    return mu, log_var


def decode(z, params, config):
    """p(x|z): Bernoulli logits or Gaussian means of shape (B, D)."""
    h = z
    if config.hidden:
        h = torch.tanh(z @ params["dec.W1"] + params["dec.b1"])  # (B, H)
    return h @ params["dec.W_out"] + params["dec.b_out"]  # (B, D)


def vae_forward(x, params, eps, config):
    """One reparameterised pass: x (B, D) data, eps (B, Z) the noise. Returns (VAEOutput, cache)."""
    x, params, eps = check_vae_inputs(x, params, eps, config)
    p = {name: _leaf(value) for name, value in params.items()}
    out = _elbo(
        torch.tensor(x), torch.tensor(eps),
        lambda x: encode(x, p, config), lambda z: decode(z, p, config), config, p.get("dec.log_var"),
    )
    arrays = VAEOutput(float(out.loss.detach()), *(t.detach().numpy() for t in out[1:]))
    return arrays, VAECache(tuple(p), tuple(p.values()), out.loss)


def vae_backward(dloss, cache):
    """Gradients of dloss · loss with respect to every parameter, keyed like params."""
    return dict(zip(cache.names, _gradients(dloss, cache)))


# ----------------------------------------------------------------------------------------------
# The same model as a torch.nn.Module, and where each scratch weight lives in it
# ----------------------------------------------------------------------------------------------


def _linear_layers(config):
    """(scratch weight name, scratch bias name, module attribute) for every linear layer."""
    layers = [("enc.W1", "enc.b1", "enc_hidden")] if config.hidden else []
    layers += [("enc.W_mu", "enc.b_mu", "enc_mu"), ("enc.W_lv", "enc.b_lv", "enc_log_var")]
    layers += [("dec.W1", "dec.b1", "dec_hidden")] if config.hidden else []
    return layers + [("dec.W_out", "dec.b_out", "dec_out")]


class VAE(torch.nn.Module):
    """The VAE with `nn.Linear` layers; `forward(x, eps)` returns the ELBO terms as tensors.

    nn.Linear computes y = x Wᵀ + b with W of shape (out, in): the transpose of scratch's W.
    Its default initialisation (Kaiming-uniform) differs from scratch's `init_vae` (Glorot).
    """

    def __init__(self, config, dtype=torch.float64):
        super().__init__()
        parameter_shapes(config)  # rejects an unknown likelihood
        self.config = config
        d, z, h = config.x_dim, config.z_dim, config.hidden
        linear = functools.partial(torch.nn.Linear, dtype=dtype)
        self.enc_hidden = linear(d, h) if h else None  # (H, D)
        self.enc_mu = linear(h or d, z)  # (Z, H)
        self.enc_log_var = linear(h or d, z)  # (Z, H)
        self.dec_hidden = linear(z, h) if h else None  # (H, Z)
        self.dec_out = linear(h or z, d)  # (D, H)
        # p(x|z) = N(mean, s² I): one learned log-variance shared by every pixel
        gaussian = config.likelihood == "gaussian"
        self.dec_log_var = torch.nn.Parameter(torch.zeros((), dtype=dtype)) if gaussian else None

    def encode(self, x):
        h = torch.tanh(self.enc_hidden(x)) if self.config.hidden else x  # (B, H)
        return self.enc_mu(h), self.enc_log_var(h)  # (B, Z) each

    def decode(self, z):
        h = torch.tanh(self.dec_hidden(z)) if self.config.hidden else z  # (B, H)
        return self.dec_out(h)  # (B, D)

    def forward(self, x, eps):
        """x (B, D), eps (B, Z) tensors → VAEOutput of tensors: loss, and the (B,) terms elbo, reconstruction, kl."""
        return _elbo(x, eps, self.encode, self.decode, self.config, self.dec_log_var)


def to_torch_vae(params, config):
    """A `VAE` module computing what scratch computes with `params` (its dtype is theirs)."""
    params = check_vae_params(params, config)
    module = VAE(config, dtype=getattr(torch, params["dec.b_out"].dtype.name))
    with torch.no_grad():
        for w, b, attribute in _linear_layers(config):
            layer = getattr(module, attribute)
            layer.weight.copy_(torch.tensor(params[w]).T)  # (in, out) → (out, in)
            layer.bias.copy_(torch.tensor(params[b]))
        if config.likelihood == "gaussian":
            module.dec_log_var.copy_(torch.tensor(params["dec.log_var"]))
    return module


def from_torch_vae(module):
    """The scratch parameter dict of a `VAE` module (the inverse of `to_torch_vae`)."""
    tensors = {}
    for w, b, attribute in _linear_layers(module.config):
        layer = getattr(module, attribute)
        tensors[w], tensors[b] = layer.weight.detach().T, layer.bias.detach()  # (out, in) → (in, out)
    if module.config.likelihood == "gaussian":
        tensors["dec.log_var"] = module.dec_log_var.detach()
    return {name: tensors[name].contiguous().numpy().copy() for name in parameter_shapes(module.config)}
