"""Denoising diffusion (Ho et al. 2020, DDPM; Song et al. 2021, DDIM) in NumPy, every gradient by hand.

Shape letters, used in the comment at the end of each array line:
    B  batch     T  diffusion steps (num_steps, 1,000 by default)     D  data width (2 for the mixtures)
    E  time-embedding width     H  hidden width     ...  the data's own axes, (D,) or (C, H, W)

Steps are 0-based, as in diffusers: t = 0 … T − 1, and step t adds noise of variance β_t. Write
α_t = 1 − β_t and ᾱ_t = Π_{s ≤ t} α_s. The forward process destroys data a little at a time,

    q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t I)          and in closed form   q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),

so x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε with ε ~ N(0, I) (`q_sample`). Given x_0, one step back is Gaussian too:
q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) (`q_posterior`, Eqs. 6–7). A network ε_θ(x_t, t) learns to
predict the noise (`eps_loss_forward`, Eq. 14); putting its guess of x_0 into μ̃ gives the reverse
step, either ancestral (`ddpm_step`, σ_t² = β̃_t) or DDIM's (`ddim_step`, any σ from 0 to β̃'s).

Why the simple loss is right: the ELBO of Ho et al. (Eq. 5) is
    −log p_θ(x_0) ≤ E_q[ L_T + Σ_{t>0} L_{t−1} + L_0 ],  L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),
a KL between two Gaussians of the same fixed variance σ_t², so L_{t−1} = ‖μ̃_t − μ_θ‖² / (2σ_t²) + const.
Written with the noise ε that made x_t, μ̃_t = (x_t − β_t/√(1 − ᾱ_t) ε) / √α_t; give μ_θ the same form
with ε_θ(x_t, t) in place of ε (Eq. 11). Then
    L_{t−1} = β_t² / (2σ_t² α_t (1 − ᾱ_t)) · ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖² + const      (Eq. 12)
Every term of the bound is a weighted ε-prediction error. Dropping the weights (Eq. 14) keeps a
bound's minimiser, the exact ε = E[ε | x_t] at every t (the weights only say which t matter
most), and puts more effort on the large t whose weights are small: samples improve, the
likelihood bound worsens a little. L_T has no parameter; L_0 is the decoder, here one more step.

The denoiser interface (the MLP below; scratch/unet.py for images writes the same three):
    init(config, rng, dtype) -> params                  a flat dict, "den.W1", …
    forward(params, x_t, t, config, cond=None) -> (eps_pred, cache)       x_t (B, ...), t (B,) int
    backward(d_eps, cache) -> grads                     the same keys as params
`cond` is the conditioning a guided model takes (None: unconditional). The samplers need only
`eps_fn(x_t, t) -> eps_pred`, e.g. lambda x, t: forward(params, x, t, config)[0].
"""

import functools
import math
from typing import NamedTuple

import numpy as np

from scratch.layers import linear_backward, linear_forward, silu_backward, silu_forward
from scratch.transformer import positional_encoding
from scratch.validate import as_float_array, check_same_dtype

SCHEDULES = ("linear", "cosine")


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {value!r}")
    return int(value)


def _check_schedule(name, values):
    """A 1-D float array of T values in (0, 1]: betas or ᾱ."""
    values = as_float_array(name, values)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"{name} must have shape (T,) with T ≥ 1, got shape {values.shape}")
    if not np.all((values > 0.0) & (values <= 1.0)):
        raise ValueError(f"{name} must lie in (0, 1], got values in [{values.min()!r}, {values.max()!r}]")
    return values


def _check_steps(name, t, batch, num_steps, low=0):
    """t as an int array (B,): an int is every example's step; each must lie in [low, T) (low None: below T)."""
    t = np.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an int or an integer array of shape ({batch},), got dtype {t.dtype} with "
                        f"shape {t.shape}")
    if t.ndim == 0:
        t = np.full(batch, int(t))
    if t.shape != (batch,):
        raise ValueError(f"{name} must be an int or have shape ({batch},) (one step per example), got shape {t.shape}")
    if t.size and ((low is not None and t.min() < low) or t.max() >= num_steps):
        where = f"[{low}, T={num_steps})" if low is not None else f"(−∞, T={num_steps})"
        raise ValueError(f"{name} must lie in {where}, got values in [{t.min()}, {t.max()}]")
    return t.astype(np.int64)


def _check_like(name, array, x_name, x):
    """`array` must be a float array of x's shape and dtype."""
    array = as_float_array(name, array)
    if array.shape != x.shape:
        raise ValueError(f"{name} must have the shape of {x_name} {x.shape}, got shape {array.shape}")
    check_same_dtype(**{x_name: x, name: array})
    return array


def _check_batch(name, x):
    x = as_float_array(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (B, ...) with at least one data axis, got shape {x.shape}")
    return x


def _per_example(values, x):
    """(B,) float64 coefficients → (B, 1, …, 1) in x's dtype, to broadcast against x (B, ...)."""
    return values.astype(x.dtype).reshape((len(values),) + (1,) * (x.ndim - 1))


# ----------------------------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------------------------


def beta_schedule(kind, num_steps):
    """β_0 … β_{T−1}, float64 (T,): "linear" or "cosine".

    "linear" (Ho et al. 2020, §4): from 10⁻⁴ to 0.02 in equal steps. With T = 1,000, ᾱ_{T−1} ≈ 4·10⁻⁵:
    x_{T−1} is almost pure noise. "cosine" (Nichol and Dhariwal 2021, Eq. 17): ᾱ follows
    f(u) = cos²((u + s)/(1 + s) · π/2) with s = 0.008, u = t / T, so the data fade slowly at both
    ends; β_t = 1 − f((t + 1)/T) / f(t/T), capped at 0.999 where f reaches 0 (diffusers' squaredcos_cap_v2).
    """
    num_steps = _check_int("num_steps", num_steps, 1)
    if kind == "linear":
        return np.linspace(1e-4, 0.02, num_steps)  # (T,)
    if kind == "cosine":
        # Eq. 17, Nichol and Dhariwal 2021: ᾱ(u) = f(u) / f(0), f(u) = cos²((u + s)/(1 + s) · π/2)
        u = np.arange(num_steps + 1) / num_steps  # (T + 1,), 0 … 1
        f = np.cos((u + 0.008) / 1.008 * (math.pi / 2.0)) ** 2  # (T + 1,)
        # β_t = 1 − ᾱ_{t+1} / ᾱ_t, capped: f(1) ≈ 0 would make the last β 1, an x_T that forgets the schedule
        return np.minimum(1.0 - f[1:] / f[:-1], 0.999)  # (T,)
    raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")


def alpha_bar(betas):
    """ᾱ_t = Π_{s=0}^{t} (1 − β_s), (T,): how much of x_0's signal survives in x_t (its variance is ᾱ_t)."""
    betas = _check_schedule("betas", betas)
    return np.cumprod(1.0 - betas)  # (T,)


# ----------------------------------------------------------------------------------------------
# The forward process and its posterior
# ----------------------------------------------------------------------------------------------


def q_sample(x0, t, eps, alphas_cumprod):
    """x_t ~ q(x_t | x_0) drawn with the given noise: x0 and eps (B, ...), t (B,) int → x_t (B, ...).

    Eq. 4, Ho et al. 2020: q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), t steps of noise in one draw
    (the sum of independent Gaussians is Gaussian; the variances add up to 1 − ᾱ_t). diffusers: add_noise.
    """
    x0 = _check_batch("x0", x0)
    eps = _check_like("eps", eps, "x0", x0)
    alphas_cumprod = _check_schedule("alphas_cumprod", alphas_cumprod)
    t = _check_steps("t", t, len(x0), len(alphas_cumprod))
    # BEGIN SOLUTION
    # HINT: gather ᾱ at each example's t, shape it to broadcast against x0, keep x0's dtype.
    a = alphas_cumprod[t]  # (B,)
    # x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    x_t = _per_example(np.sqrt(a), x0) * x0 + _per_example(np.sqrt(1.0 - a), x0) * eps  # (B, ...)
    # END SOLUTION
    return x_t


class Posterior(NamedTuple):
    coef_x0: np.ndarray  # (B,) the weight of x_0 in μ̃_t
    coef_xt: np.ndarray  # (B,) the weight of x_t in μ̃_t
    variance: np.ndarray  # (B,) β̃_t


def posterior_coefficients(betas, t):
    """μ̃_t = coef_x0 · x_0 + coef_xt · x_t and β̃_t of q(x_{t−1} | x_t, x_0), for t (B,) int, float64.

    Eq. 7, Ho et al. 2020, with ᾱ_{−1} = 1 (so that step 0 returns x_0 itself):
        μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
        β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t
    Bayes' rule on two Gaussians, q(x_t | x_{t−1}) q(x_{t−1} | x_0): the precisions add,
    1/β̃_t = α_t/β_t + 1/(1 − ᾱ_{t−1}), and the mean is the precision-weighted average of the two guesses.
    """
    betas = _check_schedule("betas", betas)
    t = np.asarray(t)
    t = _check_steps("t", t, t.size if t.ndim else 1, len(betas))
    a = np.cumprod(1.0 - betas)  # (T,) ᾱ
    a_prev = np.where(t > 0, a[np.maximum(t - 1, 0)], 1.0)  # (B,) ᾱ_{t−1}, 1 before the first step
    a_t, beta_t = a[t], betas[t]  # (B,) each
    coef_x0 = np.sqrt(a_prev) * beta_t / (1.0 - a_t)  # (B,)
    coef_xt = np.sqrt(1.0 - beta_t) * (1.0 - a_prev) / (1.0 - a_t)  # (B,)
    variance = (1.0 - a_prev) / (1.0 - a_t) * beta_t  # (B,), 0 at t = 0
    return Posterior(coef_x0, coef_xt, variance)


def q_posterior(x0, x_t, t, betas):
    """(μ̃_t (B, ...), β̃_t (B,)): the mean and variance of q(x_{t−1} | x_t, x_0)."""
    x0 = _check_batch("x0", x0)
    x_t = _check_like("x_t", x_t, "x0", x0)
    coef_x0, coef_xt, variance = posterior_coefficients(betas, _check_steps("t", t, len(x0), len(betas)))
    # Eq. 7: μ̃_t(x_t, x_0) = coef_x0 x_0 + coef_xt x_t
    mean = _per_example(coef_x0, x0) * x0 + _per_example(coef_xt, x0) * x_t  # (B, ...)
    return mean, variance


def predict_x0(eps_pred, x_t, a_t):
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t: q_sample solved for x_0 (Eq. 15), a_t the (B,) ᾱ_t, float64."""
    return (x_t - _per_example(np.sqrt(1.0 - a_t), x_t) * eps_pred) / _per_example(np.sqrt(a_t), x_t)  # (B, ...)


# ----------------------------------------------------------------------------------------------
# The ε-prediction loss
# ----------------------------------------------------------------------------------------------


def eps_loss_forward(eps_pred, eps):
    """Eq. 14, Ho et al. 2020: L_simple = E ‖ε − ε_θ(x_t, t)‖², here the mean over every entry.

    The mean over B · D entries (torch's mse_loss) is Eq. 14's sum over D divided by the constant
    D: the same minimiser, a learning rate that does not grow with the image size.
    """
    eps_pred = _check_batch("eps_pred", eps_pred)
    eps = _check_like("eps", eps, "eps_pred", eps_pred)
    # BEGIN SOLUTION
    diff = eps_pred - eps  # (B, ...)
    loss = float(np.mean(diff * diff))
    # END SOLUTION
    return loss, diff


def eps_loss_backward(dloss, cache):
    """d eps_pred = 2 (ε_θ − ε) / N · dloss, N = B · D entries."""
    diff = cache
    # BEGIN SOLUTION
    # ∂/∂ε_θ of (1/N) Σ (ε_θ − ε)² = 2 (ε_θ − ε) / N
    return diff * (2.0 * float(dloss) / diff.size)
    # END SOLUTION


def denoiser_step(x0, t, eps, params, alphas_cumprod, denoiser, config, cond=None):
    """(loss, grads) of one training step (Algorithm 1): x_t = q_sample(x0, t, ε), then ‖ε − ε_θ(x_t, t)‖².

    x0, eps (B, ...), t (B,) int drawn uniformly from 0 … T − 1; `denoiser` a Denoiser (below).
    """
    x_t = q_sample(x0, t, eps, alphas_cumprod)  # (B, ...)
    eps_pred, cache = denoiser.forward(params, x_t, t, config, cond)  # (B, ...)
    loss, loss_cache = eps_loss_forward(eps_pred, eps)
    return loss, denoiser.backward(eps_loss_backward(1.0, loss_cache), cache)


# ----------------------------------------------------------------------------------------------
# Reverse steps: DDPM (ancestral) and DDIM
# ----------------------------------------------------------------------------------------------


def ddpm_step(eps_pred, t, x_t, betas, noise):
    """x_{t−1} ~ p_θ(x_{t−1} | x_t) = N(μ̃_t(x_t, x̂_0), β̃_t I): eps_pred, x_t, noise (B, ...); t an int or (B,).

    Algorithm 2, Ho et al. 2020, with the posterior's variance β̃_t ("fixed_small" in diffusers) and
    x̂_0 left unclipped: x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t, x_{t−1} = μ̃_t(x_t, x̂_0) + √β̃_t z.
    No noise at t = 0: there x_{−1} is the output, x̂_0 itself; `noise` may be None when every t is 0.
    (μ̃_t(x_t, x̂_0) equals Algorithm 2's (x_t − β_t / √(1 − ᾱ_t) ε̂) / √α_t: two ways to write one number.)
    """
    x_t = _check_batch("x_t", x_t)
    eps_pred = _check_like("eps_pred", eps_pred, "x_t", x_t)
    betas = _check_schedule("betas", betas)
    t = _check_steps("t", t, len(x_t), len(betas))
    if noise is None and np.any(t > 0):
        raise ValueError(f"noise must be an array of x_t's shape {x_t.shape} where t > 0, got None")
    noise = None if noise is None else _check_like("noise", noise, "x_t", x_t)
    # BEGIN SOLUTION
    # HINT: x̂_0 from ε̂, then the posterior mean and variance at x̂_0; mask the noise where t = 0.
    coef_x0, coef_xt, variance = posterior_coefficients(betas, t)  # (B,) each
    # Eq. 15: x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t
    x0_pred = predict_x0(eps_pred, x_t, np.cumprod(1.0 - betas)[t])  # (B, ...)
    # Eq. 7: μ̃_t = coef_x0 · x̂_0 + coef_xt · x_t
    mean = _per_example(coef_x0, x_t) * x0_pred + _per_example(coef_xt, x_t) * x_t  # (B, ...)
    if noise is None:
        return mean
    # x_{t−1} = μ̃_t + σ_t z with σ_t = √β̃_t, and σ_0 = 0
    sigma = np.where(t > 0, np.sqrt(variance), 0.0)  # (B,)
    x_prev = mean + _per_example(sigma, x_t) * noise  # (B, ...)
    # END SOLUTION
    return x_prev


def check_ddim_inputs(eps_pred, t, t_prev, x_t, alphas_cumprod, eta, noise):
    """ddim_step's input checks, shared with the ports: (eps_pred, t, t_prev, x_t, alphas_cumprod, noise) as arrays."""
    x_t = _check_batch("x_t", x_t)
    eps_pred = _check_like("eps_pred", eps_pred, "x_t", x_t)
    alphas_cumprod = _check_schedule("alphas_cumprod", alphas_cumprod)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    t = _check_steps("t", t, len(x_t), len(alphas_cumprod))
    t_prev = _check_steps("t_prev", t_prev, len(x_t), len(alphas_cumprod), low=None)  # every t_prev < 0 is the end
    if eta > 0.0:
        if np.any(t_prev >= t):
            i = int(np.argmax(t_prev >= t))
            raise ValueError(f"t_prev must be < t when eta > 0 (a step towards the data), got t_prev {t_prev[i]} at "
                             f"t {t[i]} (example {i})")
        if noise is None:
            raise ValueError(f"noise must be an array of x_t's shape {x_t.shape} when eta > 0, got None")
        noise = _check_like("noise", noise, "x_t", x_t)
    return eps_pred, t, t_prev, x_t, alphas_cumprod, noise


def ddim_step(eps_pred, t, t_prev, x_t, alphas_cumprod, eta=0.0, noise=None):
    """x_{t_prev} from x_t, any t_prev < t (t_prev < 0 is the end, where ᾱ = 1): Eq. 12, Song et al. 2021.

        x_{t_prev} = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z,
        σ = η √((1 − ᾱ_prev) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_prev)          (Eq. 16)

    x̂_0 is re-noised to the level of t_prev along the noise the network saw. η = 1 with t_prev =
    t − 1 is the DDPM step (σ² = β̃_t); η = 0 is deterministic (`noise` unused), an ODE's Euler
    step, and then t_prev > t is allowed too: it runs the step backwards (`ddim_invert`).
    t, t_prev: ints or (B,) arrays. diffusers' DDIMScheduler.step with set_alpha_to_one, no clipping.
    """
    eps_pred, t, t_prev, x_t, alphas_cumprod, noise = check_ddim_inputs(eps_pred, t, t_prev, x_t, alphas_cumprod, eta, noise)
    # BEGIN SOLUTION
    # HINT: ᾱ_prev = 1 where t_prev < 0; η = 0 leaves no noise term at all.
    a_t = alphas_cumprod[t]  # (B,)
    a_prev = np.where(t_prev >= 0, alphas_cumprod[np.maximum(t_prev, 0)], 1.0)  # (B,)
    x0_pred = predict_x0(eps_pred, x_t, a_t)  # (B, ...), Eq. 12's "predicted x_0"
    # Eq. 16: σ_t(η)² = η² (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev); 0 at η = 0
    var = eta * eta * (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)  # (B,)
    # Eq. 12: x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z
    x_prev = _per_example(np.sqrt(a_prev), x_t) * x0_pred + _per_example(np.sqrt(1.0 - a_prev - var), x_t) * eps_pred
    if eta > 0.0:
        x_prev += _per_example(np.sqrt(var), x_t) * noise  # (B, ...)
    # END SOLUTION
    return x_prev


# ----------------------------------------------------------------------------------------------
# Samplers: a denoiser callable eps_fn(x_t, t) -> eps_pred, t a (B,) int array
# ----------------------------------------------------------------------------------------------


def ddpm_sample(eps_fn, x_T, betas, rng, step_fn=None):
    """Ancestral sampling (Algorithm 2): x_{T−1} = x_T given (B, ...), then every step T−1 … 0 → x_0.

    rng (a np.random.Generator) draws each step's z in x_T's dtype; x_T is usually N(0, I) too.
    step_fn: the step the loop calls (default ddpm_step; a port passes its own, the loop is the same).
    """
    step_fn = step_fn or ddpm_step
    x = _check_batch("x_T", x_T)
    betas = _check_schedule("betas", betas)
    for step in range(len(betas) - 1, -1, -1):
        t = np.full(len(x), step)  # (B,)
        noise = rng.standard_normal(x.shape).astype(x.dtype) if step > 0 else None  # (B, ...)
        x = step_fn(eps_fn(x, t), t, x, betas, noise)  # (B, ...)
    return x


def ddim_timesteps(num_train_steps, num_steps):
    """The steps DDIM visits, largest first: 0, k, 2k, … reversed with k = T // n (diffusers' "leading")."""
    num_train_steps, num_steps = _check_int("num_train_steps", num_train_steps, 1), _check_int("num_steps", num_steps, 1)
    if num_steps > num_train_steps:
        raise ValueError(f"num_steps must be ≤ num_train_steps = {num_train_steps}, got {num_steps}")
    return np.arange(num_steps)[::-1] * (num_train_steps // num_steps)  # (n,)


def ddim_sample(eps_fn, x_T, alphas_cumprod, num_steps, eta=0.0, rng=None, step_fn=None):
    """DDIM over n = num_steps of the T steps (ddim_timesteps), x_T (B, ...) → x_0; rng needed when eta > 0.
    step_fn: the step the loop calls (default ddim_step; a port passes its own)."""
    step_fn = step_fn or ddim_step
    x = _check_batch("x_T", x_T)
    alphas_cumprod = _check_schedule("alphas_cumprod", alphas_cumprod)
    if eta > 0.0 and rng is None:
        raise ValueError("rng must be a np.random.Generator when eta > 0 (the steps draw noise), got None")
    steps = ddim_timesteps(len(alphas_cumprod), num_steps)
    for step, prev in zip(steps, list(steps[1:]) + [-1]):
        t = np.full(len(x), step)  # (B,)
        noise = rng.standard_normal(x.shape).astype(x.dtype) if eta > 0.0 else None  # (B, ...)
        x = step_fn(eps_fn(x, t), t, np.full(len(x), prev), x, alphas_cumprod, eta, noise)  # (B, ...)
    return x


def ddim_invert(eps_fn, x0, alphas_cumprod, num_steps):
    """DDIM's η = 0 steps run from x_0 up to x at the largest of ddim_timesteps: the inverse of ddim_sample.

    Each step re-noises with the ε̂ of the point it starts from, where sampling uses the ε̂ of the
    point it ends at: the two maps are inverse up to an error that shrinks with the step size.
    """
    x = _check_batch("x0", x0)
    alphas_cumprod = _check_schedule("alphas_cumprod", alphas_cumprod)
    steps = ddim_timesteps(len(alphas_cumprod), num_steps)[::-1]  # (n,), smallest first
    for prev, step in zip([-1] + list(steps[:-1]), steps):
        # from the level of `prev` (−1: the data) up to `step`, with ε̂ taken at the level we start from
        t_from = np.full(len(x), max(prev, 0))  # (B,)
        eps = eps_fn(x, t_from)  # (B, ...)
        if prev < 0:  # at the data there is no noise level to read ε̂ at: x̂_0 is x itself
            x = q_sample(x, np.full(len(x), step), eps, alphas_cumprod)
        else:
            x = ddim_step(eps, t_from, np.full(len(x), step), x, alphas_cumprod)  # (B, ...)
    return x


# ----------------------------------------------------------------------------------------------
# The time embedding, and the MLP denoiser for 2-D data
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _time_table(num_steps, dim, dtype):
    table = positional_encoding(num_steps, dim, np.dtype(dtype))  # (T, E)
    table.flags.writeable = False  # shared between calls: nobody may change it
    return table


def time_embedding(t, dim, dtype=np.float64):
    """(B, E) sinusoids of the step t (B,) int: the Transformer's positional encoding (§3.5, Vaswani
    et al. 2017) with the step as the position, as DDPM's U-Net embeds t (Ho et al. 2020, App. B).

    Its sines and cosines of wavelengths 2π … 10⁴·2π give every step a distinct, smooth code, and
    nearby steps similar ones: the network can tell t = 10 from t = 900 without learning an embedding.
    """
    t = np.asarray(t)
    if t.dtype.kind not in "iu" or t.ndim != 1:
        raise ValueError(f"t must be an integer array of shape (B,), got dtype {t.dtype} with shape {t.shape}")
    if t.size and t.min() < 0:
        raise ValueError(f"t must be ≥ 0, got a minimum of {t.min()}")
    dim = _check_int("dim", dim, 1)
    rows = 1 << max(int(t.max()) if t.size else 0, 1).bit_length()  # a power of two ≥ t + 1: few distinct tables
    return _time_table(rows, dim, np.dtype(dtype).name)[t]  # (B, E), a copy


class MLPDenoiserConfig(NamedTuple):
    x_dim: int = 2  # D
    hidden: tuple = (256, 256, 256)  # widths of the SiLU layers
    time_dim: int = 64  # E


def check_mlp_denoiser_config(config):
    if not isinstance(config, MLPDenoiserConfig):
        raise TypeError(f"config must be an MLPDenoiserConfig, got {type(config).__name__}")
    for name in ("x_dim", "time_dim"):
        _check_int(f"config.{name}", getattr(config, name), 1)
    if not isinstance(config.hidden, tuple) or not config.hidden or not all(
            isinstance(w, int) and w >= 1 for w in config.hidden):
        raise ValueError(f"config.hidden must be a non-empty tuple of positive ints, got {config.hidden!r}")
    return config


def mlp_denoiser_shapes(config):
    """{"den.W1": (D + E, H1), "den.b1": (H1,), …, "den.WL": (H_last, D), "den.bL": (D,)}."""
    config = check_mlp_denoiser_config(config)
    widths = (config.x_dim + config.time_dim, *config.hidden, config.x_dim)
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        shapes[f"den.W{i}"], shapes[f"den.b{i}"] = (fan_in, fan_out), (fan_out,)
    return shapes


def init_mlp_denoiser(config, rng, dtype=np.float64):
    """Weights and biases U(−1/√fan_in, 1/√fan_in), as torch.nn.Linear initialises them."""
    shapes = mlp_denoiser_shapes(config)
    params = {}
    for name, shape in shapes.items():
        fan_in = shapes[name.replace(".b", ".W")][0]  # a bias takes its layer's fan-in
        limit = 1.0 / math.sqrt(fan_in)
        params[name] = rng.uniform(-limit, limit, size=shape).astype(dtype)
    return params


class MLPDenoiserCache(NamedTuple):
    layers: list  # per layer (linear cache, SiLU cache or None after the last)
    x_dim: int


def mlp_denoiser_forward(params, x_t, t, config, cond=None):
    """ε_θ(x_t, t): [x_t, emb(t)] → (Linear → SiLU) per hidden width → Linear. x_t (B, D), t (B,) → (B, D)."""
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
    # BEGIN SOLUTION
    # HINT: the step enters as its sinusoidal code, concatenated to x_t; SiLU after every layer but the last.
    h = np.concatenate([x_t, time_embedding(t, config.time_dim, x_t.dtype)], axis=1)  # (B, D + E)
    layers = []
    count = len(config.hidden) + 1
    for i in range(1, count + 1):
        h, linear_cache = linear_forward(h, params[f"den.W{i}"], params[f"den.b{i}"])  # (B, H_i), (B, D) at the end
        silu_cache = None
        if i < count:
            h, silu_cache = silu_forward(h)  # (B, H_i)
        layers.append((linear_cache, silu_cache))
    # END SOLUTION
    return h, MLPDenoiserCache(layers, config.x_dim)


def mlp_denoiser_backward(d_eps, cache):
    """Gradients of every "den.*" parameter from d eps_pred (B, D)."""
    grads = {}
    dh = d_eps
    # BEGIN SOLUTION
    # chain rule, last layer first: SiLU's backward (none after the last linear), then linear_backward
    for i in range(len(cache.layers), 0, -1):
        linear_cache, silu_cache = cache.layers[i - 1]
        if silu_cache is not None:
            dh = silu_backward(dh, silu_cache)
        dh, grads[f"den.W{i}"], grads[f"den.b{i}"] = linear_backward(dh, linear_cache)
    # dh[:, :D] is dL/dx_t; the time embedding's columns are constants, so their gradient stops here
    # END SOLUTION
    return {name: grads[name] for i in range(1, len(cache.layers) + 1) for name in (f"den.W{i}", f"den.b{i}")}


class Denoiser(NamedTuple):
    """A denoiser's three functions, as scratch/train_diffusion.py and the samplers call them."""

    init: object  # init(config, rng, dtype) -> params
    forward: object  # forward(params, x_t, t, config, cond=None) -> (eps_pred, cache)
    backward: object  # backward(d_eps, cache) -> grads
    shapes: object  # shapes(config) -> {name: shape}


MLP_DENOISER = Denoiser(init_mlp_denoiser, mlp_denoiser_forward, mlp_denoiser_backward, mlp_denoiser_shapes)
