"""Denoising diffusion in Keras 3: scratch/diffusion.py with keras.ops, and the denoiser as a `keras.Model`
inside a model whose `fit` (its built-in train_step) takes Algorithm 1's steps.

Read it beside scratch/diffusion.py: the names, the arguments and the NumPy-in/NumPy-out interface
of every function are the same, and so are the equations (scratch/diffusion.py's docstring derives
them). The schedules and the per-example coefficients are computed in float64 and cast to the data's
dtype, as scratch does. The loss and the denoiser are `record(<the math in keras.ops>, …)` and their
backward `gradients(dout, cache)` (ports/keras/autodiff.py). A Dense kernel has shape (in, out),
y = x W + b, as in scratch, so converting weights transposes nothing.

The Keras way to train: `DenoisingDiffusion` wraps the denoiser; called on (x_0, t, ε) it noises
x_0 to x_t and predicts ε, and its `compute_loss` is the ε loss, so Keras's own train_step (what
`fit` and `train_on_batch` run) differentiates and applies the optimizer. Nothing random happens
inside it: t and ε are data, so every implementation can be fed the same ones.

Shape letters as in scratch: B batch, T diffusion steps, D data width, E time-embedding width,
H hidden width; `...` the data's own axes.
"""

import math

import keras
import numpy as np
from keras import ops

from ports.keras.autodiff import gradients, record
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
    "DenoisingDiffusion", "to_keras_mlp_denoiser", "from_keras_mlp_denoiser",
]


# ----------------------------------------------------------------------------------------------
# The math on tensors: shared by the functions below and by the models
# ----------------------------------------------------------------------------------------------


def _f64(x):
    return ops.convert_to_tensor(x, dtype="float64")


def _per_example(values, x):
    """(B,) float64 coefficients → (B, 1, …, 1) in x's dtype, to broadcast against x (B, ...)."""
    return ops.reshape(ops.cast(values, x.dtype), [-1] + [1] * (len(x.shape) - 1))


def _q_sample(x0, t, eps, alphas_cumprod):
    a = ops.take(alphas_cumprod, t)  # (B,) float64
    # Eq. 4, Ho et al. 2020: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    return _per_example(ops.sqrt(a), x0) * x0 + _per_example(ops.sqrt(1.0 - a), x0) * eps  # (B, ...)


def _eps_loss(eps_pred, eps):
    # Eq. 14, Ho et al. 2020: L_simple = ‖ε − ε_θ(x_t, t)‖², the mean over every entry
    diff = eps_pred - eps  # (B, ...)
    return ops.mean(diff * diff)


def _time_embedding(t, dim, dtype):
    """(B, E) sinusoids of t (B,) int: PE(t, 2i) = sin(t / 10000^(2i/E)), PE(t, 2i + 1) = cos(same)."""
    # §3.5, Vaswani et al. 2017, with the step as the position; computed in float64, then cast
    two_i = ops.arange(0, dim, 2, dtype="float64")  # (⌈E/2⌉,)
    angle = ops.cast(t, "float64")[:, None] / ops.power(_f64(10000.0), two_i / dim)  # (B, ⌈E/2⌉)
    pe = ops.reshape(ops.stack([ops.sin(angle), ops.cos(angle)], axis=-1), (-1, 2 * ((dim + 1) // 2)))  # sin, cos, …
    return ops.cast(pe[:, :dim], dtype)  # (B, E); an odd E drops the last cos column


def _silu(h):
    # silu(h) = h σ(h)
    return h * ops.sigmoid(h)


def _mlp_denoise(x_t, t, params, time_dim):
    """params: {"den.W1": W (in, out), "den.b1": b, …}; [x_t, emb(t)] → (Linear → SiLU) … → Linear."""
    h = ops.concatenate([x_t, _time_embedding(t, time_dim, x_t.dtype)], axis=1)  # (B, D + E)
    count = sum(name.startswith("den.W") for name in params)
    for i in range(1, count + 1):
        h = ops.matmul(h, params[f"den.W{i}"]) + params[f"den.b{i}"]  # (B, H_i), (B, D) after the last
        if i < count:
            h = _silu(h)
    return h


def _numpy(x):
    return ops.convert_to_numpy(x)


# ----------------------------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------------------------


def beta_schedule(kind, num_steps):
    """β_0 … β_{T−1}, float64 (T,): "linear" (Ho et al. 2020) or "cosine" (Nichol and Dhariwal 2021)."""
    num_steps = _check_int("num_steps", num_steps, 1)
    if kind == "linear":
        return _numpy(ops.linspace(1e-4, 0.02, num_steps, dtype="float64"))  # (T,)
    if kind == "cosine":
        # Eq. 17, Nichol and Dhariwal 2021: ᾱ(u) = f(u) / f(0), f(u) = cos²((u + s)/(1 + s) · π/2), s = 0.008
        u = ops.arange(num_steps + 1, dtype="float64") / num_steps  # (T + 1,)
        f = ops.cos((u + 0.008) / 1.008 * (math.pi / 2.0)) ** 2  # (T + 1,)
        # β_t = 1 − ᾱ_{t+1} / ᾱ_t, capped at 0.999
        return _numpy(ops.minimum(1.0 - f[1:] / f[:-1], 0.999))  # (T,)
    raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")


def alpha_bar(betas):
    """ᾱ_t = Π_{s=0}^{t} (1 − β_s), (T,)."""
    return _numpy(ops.cumprod(1.0 - _f64(_check_schedule("betas", betas))))  # (T,)


# ----------------------------------------------------------------------------------------------
# The forward process and its posterior
# ----------------------------------------------------------------------------------------------


def q_sample(x0, t, eps, alphas_cumprod):
    """x_t ~ q(x_t | x_0) drawn with the given noise: x0 and eps (B, ...), t (B,) int → x_t (B, ...)."""
    x0 = _check_batch("x0", x0)
    eps = _check_like("eps", eps, "x0", x0)
    alphas_cumprod = _check_schedule("alphas_cumprod", alphas_cumprod)
    t = _check_steps("t", t, len(x0), len(alphas_cumprod))
    return _numpy(_q_sample(ops.convert_to_tensor(x0), ops.convert_to_tensor(t), ops.convert_to_tensor(eps),
                            _f64(alphas_cumprod)))


def _posterior(betas, t):
    """The tensors (coef_x0, coef_xt, variance), each (B,) float64, of Eq. 7 with ᾱ_{−1} = 1."""
    a = ops.cumprod(1.0 - betas)  # (T,) ᾱ
    a_prev = ops.where(t > 0, ops.take(a, ops.maximum(t - 1, 0)), _f64(1.0))  # (B,) ᾱ_{t−1}
    a_t, beta_t = ops.take(a, t), ops.take(betas, t)  # (B,) each
    coef_x0 = ops.sqrt(a_prev) * beta_t / (1.0 - a_t)  # √ᾱ_{t−1} β_t / (1 − ᾱ_t)
    coef_xt = ops.sqrt(1.0 - beta_t) * (1.0 - a_prev) / (1.0 - a_t)  # √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    variance = (1.0 - a_prev) / (1.0 - a_t) * beta_t  # β̃_t, 0 at t = 0
    return coef_x0, coef_xt, variance


def posterior_coefficients(betas, t):
    """μ̃_t = coef_x0 · x_0 + coef_xt · x_t and β̃_t of q(x_{t−1} | x_t, x_0), for t (B,) int, float64."""
    betas = _check_schedule("betas", betas)
    t = np.asarray(t)
    t = _check_steps("t", t, t.size if t.ndim else 1, len(betas))
    return Posterior(*(_numpy(c) for c in _posterior(_f64(betas), ops.convert_to_tensor(t))))


def q_posterior(x0, x_t, t, betas):
    """(μ̃_t (B, ...), β̃_t (B,)): the mean and variance of q(x_{t−1} | x_t, x_0)."""
    x0 = _check_batch("x0", x0)
    x_t = _check_like("x_t", x_t, "x0", x0)
    betas = _check_schedule("betas", betas)
    t = _check_steps("t", t, len(x0), len(betas))
    coef_x0, coef_xt, variance = _posterior(_f64(betas), ops.convert_to_tensor(t))
    x0, x_t = ops.convert_to_tensor(x0), ops.convert_to_tensor(x_t)
    # Eq. 7: μ̃_t(x_t, x_0) = coef_x0 x_0 + coef_xt x_t
    return _numpy(_per_example(coef_x0, x0) * x0 + _per_example(coef_xt, x0) * x_t), _numpy(variance)


def _predict_x0(eps_pred, x_t, a_t):
    # Eq. 15: x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t
    return (x_t - _per_example(ops.sqrt(1.0 - a_t), x_t) * eps_pred) / _per_example(ops.sqrt(a_t), x_t)


def predict_x0(eps_pred, x_t, a_t):
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t: q_sample solved for x_0, a_t the (B,) ᾱ_t, float64."""
    return _numpy(_predict_x0(ops.convert_to_tensor(eps_pred), ops.convert_to_tensor(x_t), _f64(a_t)))


# ----------------------------------------------------------------------------------------------
# The ε-prediction loss
# ----------------------------------------------------------------------------------------------


def eps_loss_forward(eps_pred, eps):
    """Eq. 14, Ho et al. 2020: L_simple = E ‖ε − ε_θ(x_t, t)‖², here the mean over every entry."""
    eps_pred = _check_batch("eps_pred", eps_pred)
    eps = _check_like("eps", eps, "eps_pred", eps_pred)
    loss, recording = record(lambda e: _eps_loss(e, ops.convert_to_tensor(eps)), eps_pred)
    return float(loss), recording


def eps_loss_backward(dloss, cache):
    """Return d eps_pred (= 2 (ε_θ − ε) / N · dloss, by autodiff)."""
    (d_eps_pred,) = gradients(np.asarray(dloss, dtype=keras.backend.standardize_dtype(cache.out.dtype)), cache)
    return d_eps_pred


def denoiser_step(x0, t, eps, params, alphas_cumprod, denoiser, config, cond=None):
    """(loss, grads) of one training step (Algorithm 1): x_t = q_sample(x0, t, ε), then ‖ε − ε_θ(x_t, t)‖²."""
    x_t = q_sample(x0, t, eps, alphas_cumprod)  # (B, ...)
    eps_pred, cache = denoiser.forward(params, x_t, t, config, cond)  # (B, ...)
    loss, loss_cache = eps_loss_forward(eps_pred, eps)
    return loss, denoiser.backward(eps_loss_backward(1.0, loss_cache), cache)


# ----------------------------------------------------------------------------------------------
# Reverse steps: DDPM (ancestral) and DDIM
# ----------------------------------------------------------------------------------------------


def _ddpm_step(eps_pred, t, x_t, betas, noise):
    coef_x0, coef_xt, variance = _posterior(betas, t)  # (B,) each
    x0_pred = _predict_x0(eps_pred, x_t, ops.take(ops.cumprod(1.0 - betas), t))  # (B, ...), Eq. 15
    # Eq. 7: μ̃_t = coef_x0 · x̂_0 + coef_xt · x_t
    mean = _per_example(coef_x0, x_t) * x0_pred + _per_example(coef_xt, x_t) * x_t  # (B, ...)
    if noise is None:
        return mean
    # x_{t−1} = μ̃_t + σ_t z with σ_t = √β̃_t, and σ_0 = 0
    sigma = ops.where(t > 0, ops.sqrt(variance), _f64(0.0))  # (B,)
    return mean + _per_example(sigma, x_t) * noise  # (B, ...)


def ddpm_step(eps_pred, t, x_t, betas, noise):
    """x_{t−1} ~ N(μ̃_t(x_t, x̂_0), β̃_t I): Algorithm 2, Ho et al. 2020, no noise at t = 0 (noise may be None there)."""
    x_t = _check_batch("x_t", x_t)
    eps_pred = _check_like("eps_pred", eps_pred, "x_t", x_t)
    betas = _check_schedule("betas", betas)
    t = _check_steps("t", t, len(x_t), len(betas))
    if noise is None and np.any(t > 0):
        raise ValueError(f"noise must be an array of x_t's shape {x_t.shape} where t > 0, got None")
    noise = None if noise is None else ops.convert_to_tensor(_check_like("noise", noise, "x_t", x_t))
    return _numpy(_ddpm_step(ops.convert_to_tensor(eps_pred), ops.convert_to_tensor(t), ops.convert_to_tensor(x_t),
                             _f64(betas), noise))


def _ddim_step(eps_pred, t, t_prev, x_t, alphas_cumprod, eta, noise):
    a_t = ops.take(alphas_cumprod, t)  # (B,)
    a_prev = ops.where(t_prev >= 0, ops.take(alphas_cumprod, ops.maximum(t_prev, 0)), _f64(1.0))  # (B,), 1 at the end
    x0_pred = _predict_x0(eps_pred, x_t, a_t)  # (B, ...)
    # Eq. 16, Song et al. 2021: σ_t(η)² = η² (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)
    var = eta * eta * (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)  # (B,)
    # Eq. 12: x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z
    x_prev = _per_example(ops.sqrt(a_prev), x_t) * x0_pred + _per_example(ops.sqrt(1.0 - a_prev - var), x_t) * eps_pred
    if eta > 0.0:
        x_prev = x_prev + _per_example(ops.sqrt(var), x_t) * noise  # (B, ...)
    return x_prev


def ddim_step(eps_pred, t, t_prev, x_t, alphas_cumprod, eta=0.0, noise=None):
    """x_{t_prev} from x_t (t_prev < 0 is the end, where ᾱ = 1): Eq. 12, Song et al. 2021; η = 0 is deterministic."""
    eps_pred, t, t_prev, x_t, alphas_cumprod, noise = check_ddim_inputs(eps_pred, t, t_prev, x_t, alphas_cumprod, eta, noise)
    noise = None if noise is None else ops.convert_to_tensor(noise)
    return _numpy(_ddim_step(ops.convert_to_tensor(eps_pred), ops.convert_to_tensor(t), ops.convert_to_tensor(t_prev),
                             ops.convert_to_tensor(x_t), _f64(alphas_cumprod), float(eta), noise))


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
    return _numpy(_time_embedding(ops.convert_to_tensor(t.astype(np.int64)), dim, np.dtype(dtype).name))


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
    x_t, t = ops.convert_to_tensor(x_t), ops.convert_to_tensor(t.astype(np.int64))
    eps_pred, recording = record(lambda *ps: _mlp_denoise(x_t, t, dict(zip(names, ps)), config.time_dim),
                                 *(params[name] for name in names))  # (B, D)
    return eps_pred, (recording, names)


def mlp_denoiser_backward(d_eps, cache):
    """Gradients of every "den.*" parameter from d eps_pred (B, D), by autodiff."""
    recording, names = cache
    return dict(zip(names, gradients(d_eps, recording)))


MLP_DENOISER = Denoiser(init_mlp_denoiser, mlp_denoiser_forward, mlp_denoiser_backward, mlp_denoiser_shapes)


# ----------------------------------------------------------------------------------------------
# The models the Keras way: the denoiser of Dense layers, and the diffusion model fit trains
# ----------------------------------------------------------------------------------------------


class MLPDenoiser(keras.Model):
    """ε_θ(x_t, t) for 2-D data: called on (x_t (B, D), t (B,) int) → ε̂ (B, D).

    [x_t, emb(t)] (B, D + E) → Dense + SiLU per hidden width → Dense. Unconditional: `cond` must be None.
    """

    def __init__(self, config, dtype="float32", **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.config = check_mlp_denoiser_config(config)
        widths = (*config.hidden, config.x_dim)
        self.dense = [keras.layers.Dense(width, activation=_silu if i < len(widths) else None, dtype=dtype,
                                         name=f"den_dense{i}") for i, width in enumerate(widths, start=1)]
        h = config.x_dim + config.time_dim
        for layer in self.dense:
            layer.build((None, h))
            h = layer.units

    def call(self, inputs, cond=None):
        if cond is not None:
            raise ValueError(f"the MLP denoiser is unconditional: cond must be None, got {type(cond).__name__}")
        x_t, t = inputs
        h = ops.concatenate([x_t, _time_embedding(t, self.config.time_dim, self.dtype)], axis=1)  # (B, D + E)
        for layer in self.dense:
            h = layer(h)  # (B, H_i), (B, D) after the last
        return h


def parameter_map(model):
    """scratch name → the Keras variable that holds it (a Dense kernel is (in, out), as scratch's W)."""
    named = {}
    for i, layer in enumerate(model.dense, start=1):
        named[f"den.W{i}"], named[f"den.b{i}"] = layer.kernel, layer.bias
    return named


def to_keras_mlp_denoiser(params, config):
    """A built MLPDenoiser holding copies of a scratch parameter dict (its dtype is theirs)."""
    expected = mlp_denoiser_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got {np.shape(params[name])}")
    model = MLPDenoiser(config, dtype=np.asarray(params["den.W1"]).dtype.name)
    for name, variable in parameter_map(model).items():
        variable.assign(params[name])
    return model


def from_keras_mlp_denoiser(model):
    """The scratch parameter dict of an MLPDenoiser (the inverse of to_keras_mlp_denoiser)."""
    return {name: np.array(variable.numpy()) for name, variable in parameter_map(model).items()}


class DenoisingDiffusion(keras.Model):
    """Algorithm 1 of Ho et al. (2020) as a Keras model: called on (x_0, t, ε), it returns ε_θ(q_sample(x_0, t, ε), t);
    its loss is the mean of (ε̂ − ε)², so `compile(optimizer)` then `fit(x=(x0, t, eps), y=eps)` trains the denoiser.

    alphas_cumprod: the (T,) ᾱ of the schedule, kept in float64 (the coefficients are cast per example).
    """

    def __init__(self, denoiser, alphas_cumprod, **kwargs):
        super().__init__(dtype=denoiser.dtype, **kwargs)
        self.denoiser = denoiser
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)  # (T,)
        # the loss fit reports, in the model's dtype (Keras's own tracker keeps a float32 mean, 3e-8 off in float64)
        self.loss_tracker = keras.metrics.Mean(name="loss", dtype=denoiser.dtype)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, inputs):
        x0, t, eps = inputs
        x_t = _q_sample(x0, t, eps, _f64(self.alphas_cumprod))  # (B, ...): no gradient reaches the data
        return self.denoiser((x_t, t))  # (B, ...)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = _eps_loss(y_pred, y)  # y: the noise ε that made x_t
        self.loss_tracker.update_state(loss)
        return loss
