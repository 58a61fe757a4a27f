"""The math of scratch/diffusion.py holds, and its hand-written backward is the derivative of its forward.

Theory (Ho et al. 2020; Song et al. 2021):
  * the closed form q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) has the moments of t + 1 single steps of
    q(x_t | x_{t−1}), by Monte Carlo at a fixed seed, within 5 standard errors of the sample size;
  * the posterior q(x_{t−1} | x_t, x_0) is Bayes' rule on two Gaussians (precisions add);
  * for data N(μ, s²) the exact ε-predictor is E[ε | x_t] = √(1 − ᾱ_t)(x_t − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t).
    Ancestral sampling with it returns the data's mean and, since β̃_t is the smallest reverse
    variance (exact only for a point mass), a variance a little below s², by an amount that halves
    when the steps halve; DDIM with η = 0 is a deterministic map from x_T to x_0 with the data's
    moments, and ddim_invert undoes it to within an error that shrinks with the step (first order);
  * DDIM with η = 1 and t_prev = t − 1 is the DDPM step; ddpm_step is Algorithm 2's formula.
Gradients: the ε loss and every parameter of the MLP denoiser against central differences.
float32 stays float32; the ends of the schedules (ᾱ near 1 at t = 0, near 0 at T − 1) stay finite;
bad input gets a one-line error that names the argument and the shapes.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.tolerances import assert_clear_error, assert_close, assert_vjp
from scratch import diffusion as Df
from scratch.gradcheck import numerical_gradient, relative_error
from scratch.transformer import positional_encoding

pytestmark = pytest.mark.diffusion

KINDS = ("linear", "cosine")
MU, S = 0.5, 0.2  # the Gaussian data N(μ, s²) of the exact-predictor checks


def exact_eps(alphas_cumprod, mu=MU, s=S):
    """E[ε | x_t] for x_0 ~ N(μ, s²): x_t = √ᾱ x_0 + √(1 − ᾱ) ε is Gaussian with ε, so the regression is linear,
    Cov(ε, x_t) / Var(x_t) · (x_t − E x_t) = √(1 − ᾱ) (x_t − √ᾱ μ) / (ᾱ s² + 1 − ᾱ)."""

    def eps_fn(x, t):
        a = alphas_cumprod[t].reshape((-1,) + (1,) * (x.ndim - 1))  # (B, 1, …)
        return (np.sqrt(1.0 - a) * (x - np.sqrt(a) * mu) / (a * s * s + 1.0 - a)).astype(x.dtype)

    return eps_fn


# ----------------------------------------------------------------------------------------------
# The forward process and its posterior
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_has_the_moments_of_t_single_steps(kind):
    betas = Df.beta_schedule(kind, 1000)
    alphas_cumprod = Df.alpha_bar(betas)
    rng = np.random.default_rng(0)
    n, x0 = 10000, np.array([1.5, -0.7])
    x = np.broadcast_to(x0, (n, 2)).copy()  # (N, 2)
    checked = 0
    for t in range(1000):
        # q(x_t | x_{t−1}) = N(√(1 − β_t) x_{t−1}, β_t I), one step
        x = np.sqrt(1.0 - betas[t]) * x + np.sqrt(betas[t]) * rng.standard_normal(x.shape)
        if t in (0, 9, 99, 499, 999):
            a = alphas_cumprod[t]
            mean, var = np.sqrt(a) * x0, 1.0 - a  # the closed form q(x_t | x_0)
            # standard errors of a sample mean and a sample variance of n Gaussian draws
            se_mean, se_var = np.sqrt(var / n), var * np.sqrt(2.0 / (n - 1))
            assert np.all(np.abs(x.mean(axis=0) - mean) < 5.0 * se_mean), (
                f"{kind}, t = {t}: mean of {t + 1} steps {x.mean(axis=0)} against √ᾱ x_0 = {mean} (5 SE = {5 * se_mean:.2g})")
            assert np.all(np.abs(x.var(axis=0, ddof=1) - var) < 5.0 * se_var), (
                f"{kind}, t = {t}: variance of {t + 1} steps {x.var(axis=0, ddof=1)} against 1 − ᾱ = {var} "
                f"(5 SE = {5 * se_var:.2g})")
            # and q_sample draws from that closed form
            drawn = Df.q_sample(np.broadcast_to(x0, (n, 2)).copy(), np.full(n, t), rng.standard_normal((n, 2)),
                                alphas_cumprod)
            assert np.all(np.abs(drawn.mean(axis=0) - mean) < 5.0 * se_mean), f"{kind}, t = {t}: q_sample's mean"
            checked += 1
    assert checked == 5


@settings(max_examples=20)
@given(st.sampled_from(KINDS), st.integers(2, 1000), st.data())
def test_posterior_is_bayes_rule(kind, num_steps, data):
    betas = Df.beta_schedule(kind, num_steps)
    t = np.array(data.draw(st.lists(st.integers(1, num_steps - 1), min_size=1, max_size=4)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x0, x_t = rng.standard_normal((2, len(t), 3))
    mean, variance = Df.q_posterior(x0, x_t, t, betas)
    a = Df.alpha_bar(betas)
    a_prev, alpha = a[t - 1], 1.0 - betas[t]
    # q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x_0): as a function of x_{t−1}, a Gaussian of
    # precision α_t/β_t (from N(x_t; √α_t x_{t−1}, β_t)) plus 1/(1 − ᾱ_{t−1}) (from N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1}))
    precision = alpha / betas[t] + 1.0 / (1.0 - a_prev)  # (B,)
    expected_mean = (np.sqrt(alpha) / betas[t])[:, None] * x_t + (np.sqrt(a_prev) / (1.0 - a_prev))[:, None] * x0
    expected_mean /= precision[:, None]
    assert_close(variance, 1.0 / precision, impl="scratch", what=f"β̃_t ({kind}, T = {num_steps})")
    assert_close(mean, expected_mean, impl="scratch", what=f"μ̃_t ({kind}, T = {num_steps})")


def test_posterior_at_step_0_is_x0_itself():
    betas = Df.beta_schedule("linear", 1000)
    x0, x_t = np.random.default_rng(0).standard_normal((2, 4, 2))
    mean, variance = Df.q_posterior(x0, x_t, np.zeros(4, dtype=int), betas)
    assert_close(mean, x0, impl="scratch", what="μ̃_0 (ᾱ_{−1} = 1)")
    np.testing.assert_array_equal(variance, 0.0)


def test_ddpm_step_is_algorithm_2_and_ddim_eta_1_is_ddpm():
    betas = Df.beta_schedule("cosine", 1000)
    a = Df.alpha_bar(betas)
    rng = np.random.default_rng(1)
    t = np.array([1, 17, 500, 998, 999])
    eps, x_t, z = rng.standard_normal((3, 5, 2))
    # Algorithm 2: x_{t−1} = (x_t − β_t/√(1 − ᾱ_t) ε) / √α_t + σ_t z
    coef = (betas[t] / np.sqrt(1.0 - a[t]))[:, None]
    sigma = np.sqrt(Df.posterior_coefficients(betas, t).variance)[:, None]
    expected = (x_t - coef * eps) / np.sqrt(1.0 - betas[t])[:, None] + sigma * z
    assert_close(Df.ddpm_step(eps, t, x_t, betas, z), expected, impl="scratch", what="ddpm_step against Algorithm 2")
    assert_close(Df.ddim_step(eps, t, t - 1, x_t, a, eta=1.0, noise=z), expected, impl="scratch",
                 what="ddim_step(η = 1, t − 1) against the DDPM step")


# ----------------------------------------------------------------------------------------------
# Samplers with the exact ε-predictor of Gaussian data
# ----------------------------------------------------------------------------------------------


def ddpm_output_moments(betas, eps_fn):
    """The exact mean and std of ddpm_sample's output from x_T ~ N(0, 1): with a predictor linear in x,
    each step is x ← A x + c + σ z, so the moments follow m ← A m + c, v ← A² v + σ²."""
    m, v = 0.0, 1.0
    for t in range(len(betas) - 1, -1, -1):
        points = np.array([[0.0], [1.0]])  # (2, 1): the affine step's value at 0 and at 1
        y = Df.ddpm_step(eps_fn(points, np.full(2, t)), t, points, betas, np.zeros_like(points))[:, 0]
        m, v = (y[1] - y[0]) * m + y[0], (y[1] - y[0]) ** 2 * v + Df.posterior_coefficients(betas, t).variance[0]
    return m, np.sqrt(v)


@pytest.mark.parametrize("kind", KINDS)
def test_ddpm_sampling_with_the_exact_predictor_returns_the_data_distribution(kind):
    betas = Df.beta_schedule(kind, 1000)
    eps_fn = exact_eps(Df.alpha_bar(betas))
    n = 10000
    rng = np.random.default_rng(2)
    x = Df.ddpm_sample(eps_fn, rng.standard_normal((n, 1)), betas, rng)  # (N, 1)
    m, s = ddpm_output_moments(betas, eps_fn)
    se_mean, se_var = s / np.sqrt(n), s * s * np.sqrt(2.0 / (n - 1))
    assert abs(x.mean() - m) < 5.0 * se_mean, f"{kind}: sample mean {x.mean()} against the chain's exact {m}"
    assert abs(x.var(ddof=1) - s * s) < 5.0 * se_var, f"{kind}: sample variance {x.var(ddof=1)} against {s * s}"
    # the chain's exact output: the data's mean; a std below s, since β̃_t leaves out Var(x_0 | x_t)'s share
    assert abs(m - MU) < 1e-4, f"{kind}: the chain's output mean {m} against the data's {MU}"
    assert 0.95 * S < s < S, f"{kind}: the chain's output std {s} should sit a little below the data's {S}"
    # and the gap is the steps' size: half as large steps (twice as many, β/2), half the gap (±20%)
    finer = ddpm_output_moments(betas[np.repeat(np.arange(1000), 2)] / 2.0, exact_eps(Df.alpha_bar(
        betas[np.repeat(np.arange(1000), 2)] / 2.0)))[1]
    assert 0.4 < (S - finer) / (S - s) < 0.6, f"{kind}: std gap {S - s:.3g} at T, {S - finer:.3g} at 2T"


@pytest.mark.parametrize("kind", KINDS)
def test_ddim_is_deterministic_has_the_data_moments_and_inverts(kind):
    alphas_cumprod = Df.alpha_bar(Df.beta_schedule(kind, 1000))
    eps_fn = exact_eps(alphas_cumprod)
    x_T = np.random.default_rng(3).standard_normal((2000, 1))
    x0 = Df.ddim_sample(eps_fn, x_T, alphas_cumprod, 1000)
    np.testing.assert_array_equal(Df.ddim_sample(eps_fn, x_T, alphas_cumprod, 1000), x0,
                                  err_msg="DDIM with η = 0 drew something: the same x_T gave another x_0")
    # the map is affine for this predictor: its slope and offset are the output's std and mean for x_T ~ N(0, 1)
    ends = Df.ddim_sample(eps_fn, np.array([[0.0], [1.0]]), alphas_cumprod, 1000)[:, 0]
    assert abs(ends[0] - MU) < 0.01 * S and abs((ends[1] - ends[0]) - S) < 0.01 * S, (
        f"{kind}: DDIM maps N(0, 1) to N({ends[0]:.4f}, {ends[1] - ends[0]:.4f}²), the data is N({MU}, {S}²)")
    # ddim_invert is the η = 0 ODE run backwards: data → noise → data returns the data, to first order in the step
    errors = {}
    for steps in (100, 1000):
        back = Df.ddim_sample(eps_fn, Df.ddim_invert(eps_fn, x0, alphas_cumprod, steps), alphas_cumprod, steps)
        errors[steps] = float(np.max(np.abs(back - x0)))
    assert errors[1000] < 0.1 * S, f"{kind}: x_0 → x_T → x_0 with 1,000 steps is off by {errors[1000]:.3g}"
    assert errors[1000] < errors[100] / 5.0, f"{kind}: 10× finer steps should shrink the error ~10×, got {errors}"


# ----------------------------------------------------------------------------------------------
# The loss, the time embedding and the MLP denoiser
# ----------------------------------------------------------------------------------------------


def test_eps_loss_is_the_mean_squared_error_and_its_gradient():
    rng = np.random.default_rng(4)
    eps_pred, eps = rng.standard_normal((2, 8, 3))
    loss, _ = Df.eps_loss_forward(eps_pred, eps)
    assert abs(loss - float(np.mean((eps - eps_pred) ** 2))) < 1e-12
    assert_vjp(lambda i: (np.array(Df.eps_loss_forward(i["p"], eps)[0]), Df.eps_loss_forward(i["p"], eps)[1]),
               lambda g, cache: {"p": Df.eps_loss_backward(g, cache)}, {"p": eps_pred}, 0, "eps_loss")


def test_time_embedding_is_the_positional_encoding():
    t = np.array([0, 5, 999, 5])
    table = positional_encoding(1000, 64)
    np.testing.assert_array_equal(Df.time_embedding(t, 64), table[t])
    assert Df.time_embedding(t, 64, np.float32).dtype == np.float32
    np.testing.assert_array_equal(Df.time_embedding(np.array([3000]), 8), positional_encoding(3001, 8)[[3000]])


def small_denoiser(rng, dtype=np.float64):
    config = Df.MLPDenoiserConfig(x_dim=2, hidden=(5, 4), time_dim=6)
    return config, Df.init_mlp_denoiser(config, rng, dtype)


def test_mlp_denoiser_gradient_of_every_parameter():
    rng = np.random.default_rng(5)
    config, params = small_denoiser(rng)
    x_t, t = rng.standard_normal((7, 2)), np.array([0, 1, 10, 100, 500, 998, 999])
    g = rng.standard_normal((7, 2))  # a random upstream gradient: no error hides behind a sum
    _, cache = Df.mlp_denoiser_forward(params, x_t, t, config)
    grads = Df.mlp_denoiser_backward(g, cache)
    assert set(grads) == set(params) == set(Df.mlp_denoiser_shapes(config))
    for name in params:

        def f(value, name=name):
            return float(np.sum(g * Df.mlp_denoiser_forward({**params, name: value}, x_t, t, config)[0]))

        error = relative_error(grads[name], numerical_gradient(f, params[name]))
        assert error < 1e-6, f"scratch: d{name} of the MLP denoiser against central differences: relative error {error:.3g}"


def test_one_training_step_gradient_through_q_sample():
    rng = np.random.default_rng(6)
    config, params = small_denoiser(rng)
    alphas_cumprod = Df.alpha_bar(Df.beta_schedule("linear", 1000))
    x0, eps, t = rng.standard_normal((5, 2)), rng.standard_normal((5, 2)), rng.integers(0, 1000, 5)
    loss, grads = Df.denoiser_step(x0, t, eps, params, alphas_cumprod, Df.MLP_DENOISER, config)

    def f(value):
        x_t = Df.q_sample(x0, t, eps, alphas_cumprod)
        return Df.eps_loss_forward(Df.mlp_denoiser_forward({**params, "den.W1": value}, x_t, t, config)[0], eps)[0]

    assert abs(loss - f(params["den.W1"])) < 1e-12
    error = relative_error(grads["den.W1"], numerical_gradient(f, params["den.W1"]))
    assert error < 1e-6, f"scratch: denoiser_step's den.W1 gradient: relative error {error:.3g}"


def test_float32_stays_float32():
    rng = np.random.default_rng(7)
    config, params = small_denoiser(rng, np.float32)
    betas = Df.beta_schedule("cosine", 1000)
    a = Df.alpha_bar(betas)
    x, eps = rng.standard_normal((2, 4, 2)).astype(np.float32)
    t = np.array([0, 1, 500, 999])
    assert Df.q_sample(x, t, eps, a).dtype == np.float32
    assert Df.ddpm_step(eps, t, x, betas, eps).dtype == np.float32
    assert Df.ddim_step(eps, t, t - 1, x, a, eta=0.5, noise=eps).dtype == np.float32
    assert Df.q_posterior(x, x, t, betas)[0].dtype == np.float32
    out, cache = Df.mlp_denoiser_forward(params, x, t, config)
    assert out.dtype == np.float32
    assert {g.dtype for g in Df.mlp_denoiser_backward(out, cache).values()} == {np.dtype(np.float32)}
    loss, loss_cache = Df.eps_loss_forward(out, eps)
    assert isinstance(loss, float) and Df.eps_loss_backward(1.0, loss_cache).dtype == np.float32
    assert Df.ddpm_sample(lambda x, t: x * 0.1, x, betas[:20], rng).dtype == np.float32
    assert Df.ddim_sample(lambda x, t: x * 0.1, x, a, 10, eta=1.0, rng=rng).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_the_ends_of_the_schedule(kind, dtype):
    betas = Df.beta_schedule(kind, 1000)
    a = Df.alpha_bar(betas)
    assert 0.0 < a[-1] < 1e-4 and 1.0 - 1e-3 < a[0] < 1.0, f"{kind}: ᾱ runs from {a[0]} to {a[-1]}"
    assert betas.max() <= 0.999
    rng = np.random.default_rng(8)
    x0, eps, z = rng.standard_normal((3, 6, 2)).astype(dtype)
    last, first = np.full(6, 999), np.zeros(6, dtype=int)
    x_T = Df.q_sample(x0, last, eps, a)
    assert np.all(np.isfinite(x_T)) and np.max(np.abs(x_T - eps)) < 0.05 * (1.0 + np.max(np.abs(x0)))  # ≈ pure noise
    assert np.max(np.abs(Df.q_sample(x0, first, eps, a) - x0)) < 0.05 * (1.0 + np.max(np.abs(eps)))  # ≈ the data
    for t in (last, first):
        for out in (Df.ddpm_step(eps, t, x_T, betas, z), Df.ddim_step(eps, t, t - 1, x_T, a, eta=1.0, noise=z)):
            assert out.dtype == dtype and np.all(np.isfinite(out)), f"{kind}, t = {t[0]}: not finite"
    # at t = 0 the step returns x̂_0 = (x_t − √(1 − ᾱ_0) ε) / √ᾱ_0, whatever the noise (none is added)
    x0_pred = (x_T - np.sqrt(1.0 - a[0]) * eps) / np.sqrt(a[0])
    assert_close(Df.ddpm_step(eps, 0, x_T, betas, z), x0_pred, impl="scratch", what=f"ddpm_step at t = 0 ({kind})",
                 dtype=dtype)
    np.testing.assert_array_equal(Df.ddpm_step(eps, 0, x_T, betas, z), Df.ddpm_step(eps, 0, x_T, betas, None))
    assert_close(Df.ddim_step(eps, 0, -1, x_T, a), x0_pred, impl="scratch", what=f"ddim_step to t_prev = −1 ({kind})",
                 dtype=dtype)


def test_bad_input_gets_a_clear_error():
    betas = Df.beta_schedule("linear", 10)
    a = Df.alpha_bar(betas)
    x = np.zeros((4, 2))
    t = np.array([0, 1, 2, 3])
    config, params = small_denoiser(np.random.default_rng(0))
    cases = [
        ("kind", lambda: Df.beta_schedule("quadratic", 10), ValueError, ["kind", "quadratic"]),
        ("num_steps", lambda: Df.beta_schedule("linear", 0), ValueError, ["num_steps", "0"]),
        ("eps shape", lambda: Df.q_sample(x, t, np.zeros((4, 3)), a), ValueError, ["eps", "(4, 2)", "(4, 3)"]),
        ("eps dtype", lambda: Df.q_sample(x, t, np.zeros((4, 2), np.float32), a), TypeError, ["float64", "float32"]),
        ("t shape", lambda: Df.q_sample(x, t[:3], x, a), ValueError, ["t", "(4,)", "(3,)"]),
        ("t range", lambda: Df.q_sample(x, t + 7, x, a), ValueError, ["t", "T=10", "10"]),
        ("t dtype", lambda: Df.q_sample(x, t * 1.0, x, a), TypeError, ["t", "float64"]),
        ("x0 ndim", lambda: Df.q_sample(np.zeros(4), t, np.zeros(4), a), ValueError, ["x0", "(4,)"]),
        ("alphas", lambda: Df.q_sample(x, t, x, np.zeros(10)), ValueError, ["alphas_cumprod", "(0, 1]"]),
        ("noise None", lambda: Df.ddpm_step(x, t, x, betas, None), ValueError, ["noise", "(4, 2)", "None"]),
        ("eta range", lambda: Df.ddim_step(x, t, t - 1, x, a, eta=1.5), ValueError, ["eta", "1.5"]),
        ("eta noise", lambda: Df.ddim_step(x, t, t - 1, x, a, eta=0.5), ValueError, ["noise", "eta", "(4, 2)"]),
        ("eta direction", lambda: Df.ddim_step(x, t, t + 1, x, a, eta=0.5, noise=x), ValueError, ["t_prev", "< t"]),
        ("ddim steps", lambda: Df.ddim_timesteps(10, 20), ValueError, ["num_steps", "10", "20"]),
        ("x_t shape", lambda: Df.mlp_denoiser_forward(params, np.zeros((4, 3)), t, config), ValueError,
         ["x_t", "(B, 2)", "(4, 3)"]),
        ("cond", lambda: Df.mlp_denoiser_forward(params, x, t, config, cond=np.zeros(4)), ValueError, ["cond", "None"]),
        ("param shape", lambda: Df.mlp_denoiser_forward({**params, "den.W2": np.zeros((3, 3))}, x, t, config),
         ValueError, ["den.W2", "(5, 4)", "(3, 3)"]),
        ("time t", lambda: Df.time_embedding(np.array([[1]]), 8), ValueError, ["t", "(B,)", "(1, 1)"]),
    ]
    for what, call, error, fragments in cases:
        assert_clear_error("scratch", what, call, error, fragments)
