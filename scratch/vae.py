"""The variational autoencoder (Kingma and Welling, 2014) in NumPy, every gradient by hand.

Shape letters, used in the comment at the end of each array line:
    B  batch      D  data width (64 for the 8×8 digits)      H  hidden width      Z  latent width

The model: an encoder q_φ(z|x) = N(μ(x), diag exp(log σ²(x))), a prior p(z) = N(0, I) and a
decoder p_θ(x|z), Bernoulli (logits) or Gaussian (mean, with one learned log-variance shared by
every pixel). Training maximises the evidence lower bound, per example

    L(θ, φ; x) = E_q[log p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z))  ≤  log p_θ(x),

estimated with one reparameterised sample z = μ + σ ⊙ ε, ε ~ N(0, I). As everywhere in this
project the loss is minimised and averaged over the batch: loss = −mean_b L(x_b). Per-example
terms have shape (B,), summed over features; variances are carried as log-variances.
"""

import math
from typing import NamedTuple

import numpy as np

from scratch.layers import linear_backward, linear_forward, sigmoid, softplus, tanh_backward, tanh_forward
from scratch.validate import as_float_array, check_same_dtype

LOG_2PI = math.log(2.0 * math.pi)


def _check_pair(name_a, a, name_b, b):
    a, b = as_float_array(name_a, a), as_float_array(name_b, b)
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {a.shape}, got shape {b.shape}")
    if a.ndim != 2:
        raise ValueError(f"{name_a} must have shape (B, Z), got shape {a.shape}")
    check_same_dtype(**{name_a: a, name_b: b})
    return a, b


def check_likelihood_inputs(x, mean_or_logits, log_var=None):
    """Bernoulli (log_var None: x in [0, 1], logits) or Gaussian (x, mean, log_var) inputs."""
    if log_var is None:
        x, logits = as_float_array("x", x), as_float_array("logits", mean_or_logits)
        if x.shape != logits.shape or x.ndim != 2:
            raise ValueError(f"x and logits must share one shape (B, D), got x {x.shape} and logits {logits.shape}")
        if np.any(np.isnan(x)):
            raise ValueError(f"x must lie in [0, 1] for a Bernoulli likelihood, got NaN (x has shape {x.shape})")
        if x.size and (np.min(x) < 0.0 or np.max(x) > 1.0):
            raise ValueError(f"x must lie in [0, 1] for a Bernoulli likelihood, got values in [{np.min(x)}, {np.max(x)}]")
        check_same_dtype(x=x, logits=logits)
        return x, logits
    x, mean, log_var = as_float_array("x", x), as_float_array("mean", mean_or_logits), as_float_array("log_var", log_var)
    if x.shape != mean.shape or x.ndim != 2:
        raise ValueError(f"x and mean must share one shape (B, D), got x {x.shape} and mean {mean.shape}")
    try:
        broadcasts = np.broadcast_shapes(log_var.shape, x.shape) == x.shape
    except ValueError:
        broadcasts = False
    if not broadcasts:
        raise ValueError(f"log_var must broadcast to x {x.shape}: shape (B, D), (D,) or (), got shape {log_var.shape}")
    check_same_dtype(x=x, mean=mean, log_var=log_var)
    return x, mean, log_var


def check_vae_params(params, config):
    """Exactly the names and shapes of parameter_shapes(config), all of one floating dtype."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have the keys {sorted(expected)}, got {sorted(params)}")
    checked = {name: as_float_array(f"params[{name!r}]", params[name]) for name in expected}
    for name, shape in expected.items():
        if checked[name].shape != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got shape {checked[name].shape}")
    check_same_dtype(**{f"params[{name!r}]": p for name, p in checked.items()})
    return checked


def check_vae_inputs(x, params, eps, config):
    """x (B, D), eps (B, Z) and params, all of one dtype."""
    x = as_float_array("x", x)
    if x.ndim != 2 or x.shape[1] != config.x_dim:
        raise ValueError(f"x must have shape (B, D={config.x_dim}), got shape {x.shape}")
    eps = as_float_array("eps", eps)
    if eps.shape != (x.shape[0], config.z_dim):
        raise ValueError(f"eps must have shape (B={x.shape[0]}, Z={config.z_dim}), got shape {eps.shape}")
    params = check_vae_params(params, config)
    check_same_dtype(x=x, eps=eps, params=next(iter(params.values())))
    return x, params, eps


# ----------------------------------------------------------------------------------------------
# The reparameterisation trick
# ----------------------------------------------------------------------------------------------


class ReparameterizeCache(NamedTuple):
    std: np.ndarray
    eps: np.ndarray


def reparameterize_forward(mu, log_var, eps):
    """z = μ + σ ⊙ ε with σ = exp(½ log σ²); μ, log σ², ε of shape (B, Z)."""
    mu, log_var = _check_pair("mu", mu, "log_var", log_var)
    _, eps = _check_pair("mu", mu, "eps", eps)
    # BEGIN SOLUTION
    # HINT: the noise is an input, so z is a deterministic function of μ and log σ².
    std = np.exp(0.5 * log_var)  # (B, Z), σ = exp(½ log σ²): the variance is exp(log σ²)
    # Kingma and Welling (2014), Eq. (10): z = μ + σ ⊙ ε, ε ~ N(0, I)
    z = mu + std * eps  # (B, Z)
    # END SOLUTION
    return z, ReparameterizeCache(std, eps)


def reparameterize_backward(dz, cache):
    """Return (dmu, dlog_var)."""
    std, eps = cache
    # BEGIN SOLUTION
    # ∂z/∂μ = 1
    dmu = dz  # (B, Z)
    # ∂z/∂log σ² = ε · ∂σ/∂log σ² = ε · ½ σ
    dlog_var = dz * 0.5 * std * eps  # (B, Z)
    # END SOLUTION
    return dmu, dlog_var


# ----------------------------------------------------------------------------------------------
# KL divergence to the standard normal prior
# ----------------------------------------------------------------------------------------------


class GaussianKLCache(NamedTuple):
    mu: np.ndarray
    var: np.ndarray


def gaussian_kl_forward(mu, log_var):
    """KL(N(μ, diag σ²) ‖ N(0, I)) per example, shape (B,), in closed form."""
    mu, log_var = _check_pair("mu", mu, "log_var", log_var)
    # BEGIN SOLUTION
    # HINT: ½ Σ_j (σ_j² + μ_j² − 1 − log σ_j²); every term is ≥ 0.
    var = np.exp(log_var)  # (B, Z)
    # Kingma and Welling (2014), Appendix B: −KL = ½ Σ_j (1 + log σ_j² − μ_j² − σ_j²)
    kl = 0.5 * np.sum(var + mu * mu - 1.0 - log_var, axis=-1)  # (B,)
    # END SOLUTION
    return kl, GaussianKLCache(mu, var)


def gaussian_kl_backward(dkl, cache):
    """Return (dmu, dlog_var) given dkl of shape (B,)."""
    mu, var = cache
    dkl = np.asarray(dkl)[:, None]  # (B, 1)
    # BEGIN SOLUTION
    # ∂KL/∂μ_j = μ_j
    dmu = dkl * mu  # (B, Z)
    # ∂KL/∂log σ_j² = ½ (σ_j² − 1)
    dlog_var = dkl * 0.5 * (var - 1.0)  # (B, Z)
    # END SOLUTION
    return dmu, dlog_var


# ----------------------------------------------------------------------------------------------
# Log-likelihoods of the decoder
# ----------------------------------------------------------------------------------------------


class BernoulliCache(NamedTuple):
    x: np.ndarray
    logits: np.ndarray


def bernoulli_log_likelihood_forward(x, logits):
    """log p(x | logits) = Σ_d x_d log p_d + (1 − x_d) log(1 − p_d), p = sigmoid(logits); shape (B,).

    x may be any value in [0, 1]. For grey levels this is the common shortcut, not a normalised
    density: the continuous Bernoulli (Loaiza-Ganem and Cunningham, 2019) adds the missing constant.
    """
    x, logits = check_likelihood_inputs(x, logits)
    # BEGIN SOLUTION
    # HINT: log p = −softplus(−l) and log(1 − p) = −softplus(l); combine them.
    # log σ(l) = −softplus(−l), log(1 − σ(l)) = −softplus(l)  ⇒  x·l − softplus(l), stable for any l
    log_likelihood = np.sum(x * logits - softplus(logits), axis=-1)  # (B,)
    # END SOLUTION
    return log_likelihood, BernoulliCache(x, logits)


def bernoulli_log_likelihood_backward(dll, cache):
    """Return dlogits (x is data, not differentiated)."""
    x, logits = cache
    # BEGIN SOLUTION
    # ∂/∂l [x l − softplus(l)] = x − σ(l)
    dlogits = np.asarray(dll)[:, None] * (x - sigmoid(logits))  # (B, D)
    # END SOLUTION
    return dlogits


class GaussianLikelihoodCache(NamedTuple):
    residual: np.ndarray  # x − mean
    inv_var: np.ndarray  # exp(−log σ²), broadcast like log_var
    log_var_shape: tuple


def gaussian_log_likelihood_forward(x, mean, log_var):
    """log N(x; mean, diag exp(log_var)) per example, shape (B,).

    `log_var` broadcasts against x (B, D): shape (B, D), (D,) or () for one variance shared by
    every pixel; its gradient comes back in its own shape.
    """
    x, mean, log_var = check_likelihood_inputs(x, mean, log_var)
    # BEGIN SOLUTION
    residual = x - mean  # (B, D)
    inv_var = np.exp(-log_var)  # broadcasts against (B, D)
    # log N(x; m, s²) = −½ [log 2π + log s² + (x − m)² / s²], summed over the D pixels
    per_pixel = LOG_2PI + log_var + residual * residual * inv_var  # (B, D)
    log_likelihood = -0.5 * np.sum(per_pixel, axis=-1)  # (B,)
    # END SOLUTION
    return log_likelihood, GaussianLikelihoodCache(residual, inv_var, log_var.shape)


def _sum_to_shape(g, shape):
    """Sum a broadcast gradient back down to the shape of the input that was broadcast."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and g.shape[axis] != 1:
            g = g.sum(axis=axis, keepdims=True)
    return np.asarray(g)


def gaussian_log_likelihood_backward(dll, cache):
    """Return (dmean, dlog_var), dlog_var in the shape log_var had."""
    residual, inv_var, log_var_shape = cache
    dll = np.asarray(dll)[:, None]  # (B, 1)
    # BEGIN SOLUTION
    # HINT: a log-variance that was broadcast gets the sum of the gradients of its copies.
    # ∂/∂m [−½ (x − m)² / s²] = (x − m) / s²
    dmean = dll * residual * inv_var  # (B, D)
    # ∂/∂log s² [−½ (log s² + (x − m)² e^{−log s²})] = ½ ((x − m)² / s² − 1)
    dlog_var = _sum_to_shape(dll * 0.5 * (residual * residual * inv_var - 1.0), log_var_shape)
    # END SOLUTION
    return dmean, dlog_var


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class VAEConfig(NamedTuple):
    x_dim: int = 64
    z_dim: int = 2
    hidden: int = 128  # 0: linear encoder and decoder (the linear-Gaussian VAE)
    likelihood: str = "bernoulli"  # or "gaussian": mean from the decoder, one learned log-variance


def linear_gaussian_config(x_dim=64, z_dim=8):
    """Linear encoder and decoder, isotropic learned decoder variance: probabilistic PCA's model."""
    return VAEConfig(x_dim=x_dim, z_dim=z_dim, hidden=0, likelihood="gaussian")


def parameter_shapes(config):
    """The flat parameter layout: name → shape. A checkpoint is one .npz of exactly these."""
    d, z, h = config.x_dim, config.z_dim, config.hidden
    if config.likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {config.likelihood!r}")
    width = h if h else d  # the encoder heads read the hidden layer, or x itself when linear
    shapes = {}
    if h:
        shapes.update({"enc.W1": (d, h), "enc.b1": (h,)})
    shapes.update({"enc.W_mu": (width, z), "enc.b_mu": (z,), "enc.W_lv": (width, z), "enc.b_lv": (z,)})
    if h:
        shapes.update({"dec.W1": (z, h), "dec.b1": (h,)})
    shapes.update({"dec.W_out": (h if h else z, d), "dec.b_out": (d,)})
    if config.likelihood == "gaussian":
        shapes["dec.log_var"] = ()
    return shapes


def init_vae(config, rng, dtype=np.float64):
    """Glorot-uniform weights, zero biases, and a decoder log-variance of 0 (unit variance)."""
    params = {}
    for name, shape in parameter_shapes(config).items():
        if len(shape) == 2:
            limit = math.sqrt(6.0 / (shape[0] + shape[1]))
            params[name] = rng.uniform(-limit, limit, size=shape).astype(dtype)
        else:
            params[name] = np.zeros(shape, dtype=dtype)
    return params


class VAEOutput(NamedTuple):
    loss: float  # −mean_b ELBO(x_b), the number training minimises
    elbo: np.ndarray  # (B,) per-example evidence lower bound, in nats
    reconstruction: np.ndarray  # (B,) log p(x | z) at the sampled z
    kl: np.ndarray  # (B,) KL(q(z|x) ‖ p(z))
    mu: np.ndarray  # (B, Z)
    log_var: np.ndarray  # (B, Z)
    z: np.ndarray  # (B, Z)
    decoded: np.ndarray  # (B, D): Bernoulli logits or Gaussian means


class VAECache(NamedTuple):
    config: VAEConfig
    batch: int
    encoder: tuple
    reparameterize: ReparameterizeCache
    kl: GaussianKLCache
    decoder: tuple
    likelihood: tuple


def encode(x, params, config):
    """q(z|x): return (μ, log σ²) of shape (B, Z) and the cache for encode_backward."""
    caches = {}
    h = x
    if config.hidden:
        a, caches["lin1"] = linear_forward(x, params["enc.W1"], params["enc.b1"])  # (B, H)
        h, caches["act1"] = tanh_forward(a)  # (B, H)
    mu, caches["mu"] = linear_forward(h, params["enc.W_mu"], params["enc.b_mu"])  # (B, Z)
    log_var, caches["lv"] = linear_forward(h, params["enc.W_lv"], params["enc.b_lv"])  # (B, Z)
    return mu, log_var, caches


def encode_backward(dmu, dlog_var, caches, config):
    grads = {}
    dh_mu, grads["enc.W_mu"], grads["enc.b_mu"] = linear_backward(dmu, caches["mu"])
    dh_lv, grads["enc.W_lv"], grads["enc.b_lv"] = linear_backward(dlog_var, caches["lv"])
    dh = dh_mu + dh_lv  # h feeds both heads: their gradients add
    if config.hidden:
        da = tanh_backward(dh, caches["act1"])
        _, grads["enc.W1"], grads["enc.b1"] = linear_backward(da, caches["lin1"])
    return grads


def decode(z, params, config):
    """p(x|z): Bernoulli logits or Gaussian means of shape (B, D), and the cache."""
    caches = {}
    h = z
    if config.hidden:
        a, caches["lin1"] = linear_forward(z, params["dec.W1"], params["dec.b1"])  # (B, H)
        h, caches["act1"] = tanh_forward(a)  # (B, H)
    out, caches["out"] = linear_forward(h, params["dec.W_out"], params["dec.b_out"])  # (B, D)
    return out, caches


def decode_backward(dout, caches, config):
    grads = {}
    dh, grads["dec.W_out"], grads["dec.b_out"] = linear_backward(dout, caches["out"])
    if config.hidden:
        da = tanh_backward(dh, caches["act1"])
        dh, grads["dec.W1"], grads["dec.b1"] = linear_backward(da, caches["lin1"])
    return dh, grads


def vae_forward(x, params, eps, config):
    """One reparameterised pass: x (B, D) data, eps (B, Z) the noise. Returns (VAEOutput, cache)."""
    x, params, eps = check_vae_inputs(x, params, eps, config)
    # BEGIN SOLUTION
    # HINT: encode, reparameterize, decode, then the two terms of the ELBO.
    mu, log_var, encoder_cache = encode(x, params, config)  # (B, Z) each
    z, reparameterize_cache = reparameterize_forward(mu, log_var, eps)  # (B, Z)
    decoded, decoder_cache = decode(z, params, config)  # (B, D)
    if config.likelihood == "bernoulli":
        reconstruction, likelihood_cache = bernoulli_log_likelihood_forward(x, decoded)  # (B,)
    else:
        reconstruction, likelihood_cache = gaussian_log_likelihood_forward(x, decoded, params["dec.log_var"])  # (B,)
    kl, kl_cache = gaussian_kl_forward(mu, log_var)  # (B,)
    # Kingma and Welling (2014), Eq. (3): L(θ, φ; x) = E_q[log p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z))
    elbo = reconstruction - kl  # (B,)
    loss = -float(np.mean(elbo))
    # END SOLUTION
    output = VAEOutput(loss, elbo, reconstruction, kl, mu, log_var, z, decoded)
    cache = VAECache(config, x.shape[0], encoder_cache, reparameterize_cache, kl_cache, decoder_cache, likelihood_cache)
    return output, cache


def vae_backward(dloss, cache):
    """Gradients of dloss · loss with respect to every parameter, keyed like params."""
    config, batch, encoder_cache, reparameterize_cache, kl_cache, decoder_cache, likelihood_cache = cache
    # BEGIN SOLUTION
    # HINT: loss = −mean(reconstruction − kl): each example's terms get ∓dloss / B.
    dterm = np.full(batch, dloss / batch, dtype=kl_cache.mu.dtype)  # (B,), ∂loss/∂kl_b = 1/B and ∂loss/∂reconstruction_b = −1/B
    if config.likelihood == "bernoulli":
        ddecoded = bernoulli_log_likelihood_backward(-dterm, likelihood_cache)  # (B, D)
        grads = {}
    else:
        ddecoded, dlog_var_dec = gaussian_log_likelihood_backward(-dterm, likelihood_cache)
        grads = {"dec.log_var": dlog_var_dec}
    dz, decoder_grads = decode_backward(ddecoded, decoder_cache, config)  # (B, Z)
    dmu, dlog_var = reparameterize_backward(dz, reparameterize_cache)  # (B, Z) each
    dmu_kl, dlog_var_kl = gaussian_kl_backward(dterm, kl_cache)
    # μ and log σ² reach the loss twice, through z and through the KL: the gradients add
    grads.update(encode_backward(dmu + dmu_kl, dlog_var + dlog_var_kl, encoder_cache, config))
    grads.update(decoder_grads)
    # END SOLUTION
    return {name: grads[name] for name in parameter_shapes(config)}


# ----------------------------------------------------------------------------------------------
# The linear-Gaussian VAE and probabilistic PCA, in closed form
# ----------------------------------------------------------------------------------------------


def linear_gaussian_elbo(x, params):
    """The exact ELBO (B,) of the linear-Gaussian VAE: the expectation over q taken analytically.

    With z ~ q = N(μ, diag σ²) and p(x|z) = N(z W + b, s² I), W = dec.W_out of shape (Z, D):
    E_q[(x − z W − b)_d²] = (x − μ W − b)_d² + Σ_j σ_j² W_jd², so no Monte-Carlo noise is left.
    """
    mu = x @ params["enc.W_mu"] + params["enc.b_mu"]  # (B, Z)
    log_var = x @ params["enc.W_lv"] + params["enc.b_lv"]  # (B, Z)
    W, log_s2 = params["dec.W_out"], params["dec.log_var"]  # (Z, D), ()
    residual = x - (mu @ W + params["dec.b_out"])  # (B, D)
    spread = np.exp(log_var) @ (W * W)  # (B, D), Σ_j σ_j² W_jd²
    # E_q[log N(x; zW + b, s² I)] = −½ Σ_d [log 2π + log s² + ((x − μW − b)_d² + Σ_j σ_j² W_jd²) / s²]
    expected_log_likelihood = -0.5 * np.sum(LOG_2PI + log_s2 + (residual * residual + spread) * np.exp(-log_s2), axis=-1)
    kl, _ = gaussian_kl_forward(mu, log_var)  # (B,)
    return expected_log_likelihood - kl


def ppca_log_likelihood(x, z_dim):
    """Mean log-likelihood per example of probabilistic PCA at its maximum (Tipping and Bishop, 1999).

    With S the sample covariance and λ_1 ≥ … ≥ λ_D its eigenvalues, the maximum-likelihood
    solution has σ² = mean of the D − q discarded eigenvalues, and C = W Wᵀ + σ² I keeps λ_1 … λ_q
    and replaces the rest by σ². Then, Eq. (4) at the optimum:
        L / N = −½ [D log 2π + log |C| + tr(C⁻¹ S)],  with tr(C⁻¹ S) = q + (D − q) = D.
    This bounds the ELBO of the linear-Gaussian VAE from above, and the bound is tight.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if not 1 <= z_dim < d:
        raise ValueError(f"z_dim must lie in [1, D) = [1, {d}) for x of shape {x.shape}, got {z_dim}")
    centred = x - x.mean(axis=0)  # (N, D)
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred / n)[::-1]  # (D,), descending
    sigma2 = float(np.mean(eigenvalues[z_dim:]))
    log_det = float(np.sum(np.log(eigenvalues[:z_dim]))) + (d - z_dim) * math.log(sigma2)
    return -0.5 * (d * LOG_2PI + log_det + d)
