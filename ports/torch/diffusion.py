"""Denoising diffusion in PyTorch: scratch/diffusion.py with torch ops, the backward by autograd.

Read it beside scratch/diffusion.py: the names, the arguments and the NumPy-in/NumPy-out interface
of every function are the same, and so are the equations (the module docstring of scratch/diffusion.py
derives them; here each is named above its line). The schedules and the per-example coefficients
are computed in float64 and cast to the data's dtype, as scratch does, so that float32 data stays
float32 and both implementations round the same numbers. The loss and the denoiser record the graph
in the forward and replay it with `torch.autograd.grad` in the backward. After the functions comes
the MLP denoiser as a `torch.nn.Module` (`MLPDenoiser`), with `to_torch_mlp_denoiser` /
`from_torch_mlp_denoiser` to move weights between the scratch layout (W of shape (in, out)) and
torch's (weight of shape (out, in)).

Shape letters as in scratch: B batch, T diffusion steps, D data width, E time-embedding width,
H hidden width; `...` the data's own axes.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ports.torch.attention import Cache, _gradients, _leaf
from scratch import diffusion as D
from scratch.diffusion import (SCHEDULES, check_ddim_inputs, Denoiser, MLPDenoiserConfig, Posterior, _check_batch, _check_int,
                               _check_like, _check_schedule, _check_steps, check_mlp_denoiser_config, ddim_timesteps,
                               init_mlp_denoiser, mlp_denoiser_shapes)
from scratch.validate import as_float_array

__all__ = [
    "beta_schedule", "alpha_bar", "q_sample", "posterior_coefficients", "q_posterior", "predict_x0",
    "eps_loss_forward", "eps_loss_backward", "denoiser_step", "ddpm_step", "ddim_step", "ddpm_sample",
    "ddim_timesteps", "ddim_sample", "time_embedding", "MLPDenoiserConfig", "mlp_denoiser_shapes",
    "init_mlp_denoiser", "mlp_denoiser_forward", "mlp_denoiser_backward", "MLP_DENOISER", "MLPDenoiser",
    "to_torch_mlp_denoiser", "from_torch_mlp_denoiser",
]


# ----------------------------------------------------------------------------------------------
# The math on tensors: shared by the functions below, by the nn.Module and by the trainer
# ----------------------------------------------------------------------------------------------


def _per_example(values, x):
    """(B,) float64 coefficients → (B, 1, …, 1) in x's dtype, to broadcast against x (B, ...)."""
    return values.to(x.dtype).reshape((len(values),) + (1,) * (x.dim() - 1))


def _q_sample(x0, t, eps, alphas_cumprod):
    a = alphas_cumprod[t]  # (B,) float64
    # Eq. 4, Ho et al. 2020: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    return _per_example(torch.sqrt(a), x0) * x0 + _per_example(torch.sqrt(1.0 - a), x0) * eps  # (B, ...)


def _eps_loss(eps_pred, eps):
    # Eq. 14, Ho et al. 2020: L_simple = ‖ε − ε_θ(x_t, t)‖², the mean over every entry (F.mse_loss)
    diff = eps_pred - eps  # (B, ...)
    return torch.mean(diff * diff)


def _time_embedding(t, dim, dtype):
    """(B, E) sinusoids of t (B,) int: PE(t, 2i) = sin(t / 10000^(2i/E)), PE(t, 2i + 1) = cos(same)."""
    # §3.5, Vaswani et al. 2017, with the step as the position; computed in float64, then cast
    two_i = torch.arange(0, dim, 2, dtype=torch.float64, device=t.device)  # (⌈E/2⌉,)
    angle = t.to(torch.float64)[:, None] / 10000.0 ** (two_i / dim)  # (B, ⌈E/2⌉)
    pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(len(t), -1)  # (B, 2⌈E/2⌉): sin, cos, …
    return pe[:, :dim].to(dtype)  # (B, E); an odd E drops the last cos column


def _mlp_denoise(x_t, t, weights, time_dim):
    """weights: [(W (in, out), b (out,)), …]; [x_t, emb(t)] → (Linear → SiLU) … → Linear."""
    h = torch.cat([x_t, _time_embedding(t, time_dim, x_t.dtype)], dim=1)  # (B, D + E)
    for i, (W, b) in enumerate(weights, start=1):
        h = h @ W + b  # (B, H_i), (B, D) after the last
        if i < len(weights):
            h = F.silu(h)  # silu(h) = h σ(h)
    return h


def _tensor(x):
    return torch.from_numpy(np.asarray(x))


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


# ----------------------------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------------------------


def beta_schedule(kind, num_steps):
    """β_0 … β_{T−1}, float64 (T,): "linear" (Ho et al. 2020) or "cosine" (Nichol and Dhariwal 2021)."""
    num_steps = _check_int("num_steps", num_steps, 1)
    if kind == "linear":
        return torch.linspace(1e-4, 0.02, num_steps, dtype=torch.float64).numpy()  # (T,)
    if kind == "cosine":
        # Eq. 17, Nichol and Dhariwal 2021: ᾱ(u) = f(u) / f(0), f(u) = cos²((u + s)/(1 + s) · π/2), s = 0.008
        u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps  # (T + 1,)
        f = torch.cos((u + 0.008) / 1.008 * (math.pi / 2.0)) ** 2  # (T + 1,)
        # β_t = 1 − ᾱ_{t+1} / ᾱ_t, capped at 0.999
        return torch.clamp(1.0 - f[1:] / f[:-1], max=0.999).numpy()  # (T,)
    raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")


def alpha_bar(betas):
    """ᾱ_t = Π_{s=0}^{t} (1 − β_s), (T,)."""
    return torch.cumprod(1.0 - _tensor(_check_schedule("betas", betas)), dim=0).numpy()  # (T,)


# ----------------------------------------------------------------------------------------------
# The forward process and its posterior
# ----------------------------------------------------------------------------------------------


def q_sample(x0, t, eps, alphas_cumprod):
    """x_t ~ q(x_t | x_0) drawn with the given noise: x0 and eps (B, ...), t (B,) int → x_t (B, ...)."""
    x0 = _check_batch("x0", x0)
    eps = _check_like("eps", eps, "x0", x0)
    alphas_cumprod = _check_schedule("alphas_cumprod", alphas_cumprod)
    t = _check_steps("t", t, len(x0), len(alphas_cumprod))
    return _q_sample(_tensor(x0), _tensor(t), _tensor(eps), _tensor(alphas_cumprod)).numpy()


def _posterior(betas, t):
    """The tensors (coef_x0, coef_xt, variance), each (B,) float64, of Eq. 7 with ᾱ_{−1} = 1."""
    a = torch.cumprod(1.0 - betas, dim=0)  # (T,) ᾱ
    a_prev = torch.where(t > 0, a[torch.clamp(t - 1, min=0)], torch.ones((), dtype=a.dtype))  # (B,) ᾱ_{t−1}
    a_t, beta_t = a[t], betas[t]  # (B,) each
    coef_x0 = torch.sqrt(a_prev) * beta_t / (1.0 - a_t)  # √ᾱ_{t−1} β_t / (1 − ᾱ_t)
    coef_xt = torch.sqrt(1.0 - beta_t) * (1.0 - a_prev) / (1.0 - a_t)  # √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    variance = (1.0 - a_prev) / (1.0 - a_t) * beta_t  # β̃_t, 0 at t = 0
    return coef_x0, coef_xt, variance


def posterior_coefficients(betas, t):
    """μ̃_t = coef_x0 · x_0 + coef_xt · x_t and β̃_t of q(x_{t−1} | x_t, x_0), for t (B,) int, float64."""
    betas = _check_schedule("betas", betas)
    t = np.asarray(t)
    t = _check_steps("t", t, t.size if t.ndim else 1, len(betas))
    return Posterior(*(c.numpy() for c in _posterior(_tensor(betas), _tensor(t))))


def q_posterior(x0, x_t, t, betas):
    """(μ̃_t (B, ...), β̃_t (B,)): the mean and variance of q(x_{t−1} | x_t, x_0)."""
    x0 = _check_batch("x0", x0)
    x_t = _check_like("x_t", x_t, "x0", x0)
    betas = _check_schedule("betas", betas)
    coef_x0, coef_xt, variance = _posterior(_tensor(betas), _tensor(_check_steps("t", t, len(x0), len(betas))))
    x0, x_t = _tensor(x0), _tensor(x_t)
    # Eq. 7: μ̃_t(x_t, x_0) = coef_x0 x_0 + coef_xt x_t
    return (_per_example(coef_x0, x0) * x0 + _per_example(coef_xt, x0) * x_t).numpy(), variance.numpy()


def _predict_x0(eps_pred, x_t, a_t):
    # Eq. 15: x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t
    return (x_t - _per_example(torch.sqrt(1.0 - a_t), x_t) * eps_pred) / _per_example(torch.sqrt(a_t), x_t)


def predict_x0(eps_pred, x_t, a_t):
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t: q_sample solved for x_0, a_t the (B,) ᾱ_t, float64."""
    return _predict_x0(_tensor(eps_pred), _tensor(x_t), _tensor(np.asarray(a_t, np.float64))).numpy()


# ----------------------------------------------------------------------------------------------
# The ε-prediction loss
# ----------------------------------------------------------------------------------------------


def eps_loss_forward(eps_pred, eps):
    """Eq. 14, Ho et al. 2020: L_simple = E ‖ε − ε_θ(x_t, t)‖², here the mean over every entry."""
    eps_pred = _check_batch("eps_pred", eps_pred)
    eps = _check_like("eps", eps, "eps_pred", eps_pred)
    inputs = (_leaf(eps_pred),)
    loss = _eps_loss(inputs[0], _tensor(eps))
    return float(loss.detach()), Cache(inputs, loss)


def eps_loss_backward(dloss, cache):
    """Return d eps_pred (= 2 (ε_θ − ε) / N · dloss, by autograd)."""
    (d_eps_pred,) = _gradients(dloss, cache)
    return d_eps_pred


def denoiser_step(x0, t, eps, params, alphas_cumprod, denoiser, config, cond=None):
    """(loss, grads) of one training step (Algorithm 1): x_t = q_sample(x0, t, ε), then ‖ε − ε_θ(x_t, t)‖².

    `denoiser` a Denoiser of this port (MLP_DENOISER below): autograd from the loss to every parameter.
    """
    x_t = q_sample(x0, t, eps, alphas_cumprod)  # (B, ...)
    eps_pred, cache = denoiser.forward(params, x_t, t, config, cond)  # (B, ...)
    loss, loss_cache = eps_loss_forward(eps_pred, eps)
    return loss, denoiser.backward(eps_loss_backward(1.0, loss_cache), cache)


# ----------------------------------------------------------------------------------------------
# Reverse steps: DDPM (ancestral) and DDIM
# ----------------------------------------------------------------------------------------------


def _ddpm_step(eps_pred, t, x_t, betas, noise):
    coef_x0, coef_xt, variance = _posterior(betas, t)  # (B,) each
    x0_pred = _predict_x0(eps_pred, x_t, torch.cumprod(1.0 - betas, dim=0)[t])  # (B, ...), Eq. 15
    # Eq. 7: μ̃_t = coef_x0 · x̂_0 + coef_xt · x_t
    mean = _per_example(coef_x0, x_t) * x0_pred + _per_example(coef_xt, x_t) * x_t  # (B, ...)
    if noise is None:
        return mean
    # x_{t−1} = μ̃_t + σ_t z with σ_t = √β̃_t, and σ_0 = 0
    sigma = torch.where(t > 0, torch.sqrt(variance), torch.zeros((), dtype=variance.dtype))  # (B,)
    return mean + _per_example(sigma, x_t) * noise  # (B, ...)


def ddpm_step(eps_pred, t, x_t, betas, noise):
    """x_{t−1} ~ N(μ̃_t(x_t, x̂_0), β̃_t I): Algorithm 2, Ho et al. 2020, no noise at t = 0 (noise may be None there)."""
    x_t = _check_batch("x_t", x_t)
    eps_pred = _check_like("eps_pred", eps_pred, "x_t", x_t)
    betas = _check_schedule("betas", betas)
    t = _check_steps("t", t, len(x_t), len(betas))
    if noise is None and np.any(t > 0):
        raise ValueError(f"noise must be an array of x_t's shape {x_t.shape} where t > 0, got None")
    noise = None if noise is None else _tensor(_check_like("noise", noise, "x_t", x_t))
    return _ddpm_step(_tensor(eps_pred), _tensor(t), _tensor(x_t), _tensor(betas), noise).numpy()


def _ddim_step(eps_pred, t, t_prev, x_t, alphas_cumprod, eta, noise):
    a_t = alphas_cumprod[t]  # (B,)
    a_prev = torch.where(t_prev >= 0, alphas_cumprod[torch.clamp(t_prev, min=0)],
                         torch.ones((), dtype=alphas_cumprod.dtype))  # (B,), ᾱ = 1 before the first step
    x0_pred = _predict_x0(eps_pred, x_t, a_t)  # (B, ...)
    # Eq. 16, Song et al. 2021: σ_t(η)² = η² (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)
    var = eta * eta * (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)  # (B,)
    # Eq. 12: x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z
    x_prev = _per_example(torch.sqrt(a_prev), x_t) * x0_pred + _per_example(torch.sqrt(1.0 - a_prev - var), x_t) * eps_pred
    if eta > 0.0:
        x_prev = x_prev + _per_example(torch.sqrt(var), x_t) * noise  # (B, ...)
    return x_prev


def ddim_step(eps_pred, t, t_prev, x_t, alphas_cumprod, eta=0.0, noise=None):
    """x_{t_prev} from x_t (t_prev < 0 is the end, where ᾱ = 1): Eq. 12, Song et al. 2021; η = 0 is deterministic."""
    eps_pred, t, t_prev, x_t, alphas_cumprod, noise = check_ddim_inputs(eps_pred, t, t_prev, x_t, alphas_cumprod, eta, noise)
    noise = None if noise is None else _tensor(noise)
    return _ddim_step(_tensor(eps_pred), _tensor(t), _tensor(t_prev), _tensor(x_t), _tensor(alphas_cumprod),
                      float(eta), noise).numpy()


def ddpm_sample(eps_fn, x_T, betas, rng):
    """Ancestral sampling (Algorithm 2) from x_T (B, ...) over every step; rng draws each z as scratch's does.
    The loop is scratch's (scratch/diffusion.py), calling this port's ddpm_step."""
    return D.ddpm_sample(eps_fn, x_T, betas, rng, step_fn=ddpm_step)


def ddim_sample(eps_fn, x_T, alphas_cumprod, num_steps, eta=0.0, rng=None):
    """DDIM over n = num_steps of the T steps (ddim_timesteps), x_T (B, ...) → x_0; rng needed when eta > 0.
    The loop is scratch's, calling this port's ddim_step."""
    return D.ddim_sample(eps_fn, x_T, alphas_cumprod, num_steps, eta, rng, step_fn=ddim_step)


# ----------------------------------------------------------------------------------------------
# The time embedding, and the MLP denoiser for 2-D data as functions of a scratch-layout dict
# ----------------------------------------------------------------------------------------------


def time_embedding(t, dim, dtype=np.float64):
    """(B, E) sinusoids of the step t (B,) int: the Transformer's positional encoding with the step as position."""
    t = np.asarray(t)
    if t.dtype.kind not in "iu" or t.ndim != 1:
        raise ValueError(f"t must be an integer array of shape (B,), got dtype {t.dtype} with shape {t.shape}")
    if t.size and t.min() < 0:
        raise ValueError(f"t must be ≥ 0, got a minimum of {t.min()}")
    dim = _check_int("dim", dim, 1)
    return _time_embedding(_tensor(t.astype(np.int64)), dim, _TORCH_DTYPES[np.dtype(dtype)]).numpy()


def _check_mlp_inputs(params, x_t, t, config, cond):
    config = check_mlp_denoiser_config(config)
    x_t = as_float_array("x_t", x_t)
    if x_t.ndim != 2 or x_t.shape[1] != config.x_dim:
        raise ValueError(f"x_t must have shape (B, {config.x_dim}), got shape {x_t.shape}")
    if cond is not None:
        raise ValueError(f"the MLP denoiser is unconditional: cond must be None, got {type(cond).__name__}")
    t = np.asarray(t)
    if t.shape != (len(x_t),):
        raise ValueError(f"t must have shape ({len(x_t)},) (one step per row of x_t {x_t.shape}), got shape {t.shape}")
    for name, shape in mlp_denoiser_shapes(config).items():
        if name not in params or np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got "
                             f"{np.shape(params[name]) if name in params else 'nothing'}")
    return config, x_t, t


def mlp_denoiser_forward(params, x_t, t, config, cond=None):
    """ε_θ(x_t, t): [x_t, emb(t)] → (Linear → SiLU) per hidden width → Linear. x_t (B, D), t (B,) → (B, D)."""
    config, x_t, t = _check_mlp_inputs(params, x_t, t, config, cond)
    names = list(mlp_denoiser_shapes(config))  # den.W1, den.b1, …
    leaves = [_leaf(params[name]) for name in names]
    weights = list(zip(leaves[0::2], leaves[1::2]))
    eps_pred = _mlp_denoise(_tensor(x_t), _tensor(t.astype(np.int64)), weights, config.time_dim)  # (B, D)
    return eps_pred.detach().numpy(), (Cache(tuple(leaves), eps_pred), names)


def mlp_denoiser_backward(d_eps, cache):
    """Gradients of every "den.*" parameter from d eps_pred (B, D), by autograd."""
    recorded, names = cache
    return dict(zip(names, _gradients(d_eps, recorded)))


MLP_DENOISER = Denoiser(init_mlp_denoiser, mlp_denoiser_forward, mlp_denoiser_backward, mlp_denoiser_shapes)


# ----------------------------------------------------------------------------------------------
# The MLP denoiser as a torch.nn.Module, and the converters to and from the scratch layout
# ----------------------------------------------------------------------------------------------


class MLPDenoiser(nn.Module):
    """ε_θ(x_t, t) for 2-D data: [x_t, emb(t)] (B, D + E) → Linear + SiLU per hidden width → Linear (B, D)."""

    def __init__(self, config):
        super().__init__()
        self.config = check_mlp_denoiser_config(config)
        widths = (config.x_dim + config.time_dim, *config.hidden, config.x_dim)
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(widths) - 1:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x_t, t, cond=None):
        """x_t (B, D), t (B,) int64 → ε̂ (B, D); cond must be None (the MLP is unconditional)."""
        if cond is not None:
            raise ValueError(f"the MLP denoiser is unconditional: cond must be None, got {type(cond).__name__}")
        emb = _time_embedding(t, self.config.time_dim, x_t.dtype)  # (B, E)
        return self.net(torch.cat([x_t, emb], dim=1))  # (B, D)


def _linears(module):
    return [layer for layer in module.net if isinstance(layer, nn.Linear)]


def parameter_map(module):
    """scratch name → (torch parameter, stored transposed?), for the converters and the optimizer's state."""
    named = {}
    for i, layer in enumerate(_linears(module), start=1):
        named[f"den.W{i}"], named[f"den.b{i}"] = (layer.weight, True), (layer.bias, False)
    return named


def to_torch_mlp_denoiser(params, config):
    """An MLPDenoiser holding a scratch parameter dict's weights (copied; W transposed to torch's (out, in))."""
    expected = mlp_denoiser_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got {np.shape(params[name])}")
    module = MLPDenoiser(config).to(_tensor(params["den.W1"]).dtype)
    with torch.no_grad():
        for name, (p, transposed) in parameter_map(module).items():
            value = _tensor(params[name])
            p.copy_(value.T if transposed else value)
    return module


def from_torch_mlp_denoiser(module):
    """The scratch parameter dict of an MLPDenoiser (the inverse of to_torch_mlp_denoiser)."""
    return {name: (p.detach().T if transposed else p.detach()).contiguous().cpu().numpy().copy()
            for name, (p, transposed) in parameter_map(module).items()}
