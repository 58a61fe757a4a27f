"""The hand-written VAE backward is the derivative of its forward, and the math keeps its promises.

Gradients against central differences along random directions (scratch/gradcheck.py); the KL
against its definition and a Monte-Carlo estimate; the reparameterisation trick's samples and
gradient estimates against their expectations; the linear-Gaussian ELBO and probabilistic PCA in
closed form against direct computation; bad input and extreme log-variances in every implementation.

Monte-Carlo checks use a fixed seed and pass when the estimate lies within K = 4 standard errors
of the exact value: deterministic, and a real mistake (a variance used as a standard deviation,
a lost ½) moves the estimate by tens or hundreds of standard errors.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.implementations import IMPLEMENTATIONS, require
from checks.strategies import (
    LOG_VAR_SHAPES, VAE_KINDS, bernoulli_cases, gaussian_likelihood_cases, latent_cases, vae_cases,
)
from checks.tolerances import assert_clear_error, assert_close, assert_vjp
from scratch import vae as V

pytestmark = pytest.mark.vae

K = 4.0  # Monte-Carlo tolerance, in standard errors
seeds = st.integers(0, 2**32 - 1)


def assert_within_standard_errors(estimate, standard_error, exact, what):
    error = np.abs(np.asarray(estimate) - exact)
    assert np.all(error <= K * np.asarray(standard_error)), (
        f"scratch: {what}: Monte-Carlo estimate {estimate!r} is {np.max(error / standard_error):.3g} standard errors "
        f"from the exact {exact!r} (tolerance {K:g} standard errors)"
    )


# ----------------------------------------------------------------------------------------------
# Gradients against central differences (float64, random upstream gradient, random direction)
# ----------------------------------------------------------------------------------------------


@given(case=latent_cases(np.float64), seed=seeds)
def test_reparameterize_backward_matches_finite_differences(case, seed):
    assert_vjp(
        lambda p: V.reparameterize_forward(p["mu"], p["log_var"], case.eps),
        lambda g, cache: dict(zip(("mu", "log_var"), V.reparameterize_backward(g, cache))),
        {"mu": case.mu, "log_var": case.log_var}, seed, "reparameterize",
    )


@given(case=latent_cases(np.float64), seed=seeds)
def test_gaussian_kl_backward_matches_finite_differences(case, seed):
    assert_vjp(
        lambda p: V.gaussian_kl_forward(p["mu"], p["log_var"]),
        lambda g, cache: dict(zip(("mu", "log_var"), V.gaussian_kl_backward(g, cache))),
        {"mu": case.mu, "log_var": case.log_var}, seed, "gaussian_kl",
    )


@given(case=bernoulli_cases(np.float64), seed=seeds)
def test_bernoulli_log_likelihood_backward_matches_finite_differences(case, seed):
    assert_vjp(
        lambda p: V.bernoulli_log_likelihood_forward(case.x, p["logits"]),
        lambda g, cache: {"logits": V.bernoulli_log_likelihood_backward(g, cache)},
        {"logits": case.decoded}, seed, "bernoulli_log_likelihood",
    )


@pytest.mark.parametrize("shape", LOG_VAR_SHAPES)
@given(data=st.data(), seed=seeds)
def test_gaussian_log_likelihood_backward_matches_finite_differences(shape, data, seed):
    case = data.draw(gaussian_likelihood_cases(np.float64, log_var_shape=shape), label="case")
    assert_vjp(
        lambda p: V.gaussian_log_likelihood_forward(case.x, p["mean"], p["log_var"]),
        lambda g, cache: dict(zip(("mean", "log_var"), V.gaussian_log_likelihood_backward(g, cache))),
        {"mean": case.decoded, "log_var": case.log_var}, seed, f"gaussian_log_likelihood (log_var {shape})",
    )


@pytest.mark.parametrize("kind", VAE_KINDS)
@given(data=st.data(), seed=seeds)
def test_vae_backward_matches_finite_differences_for_every_parameter(kind, data, seed):
    """One check per parameter, the others held fixed, so a failure names the gradient that is wrong."""
    case = data.draw(vae_cases(np.float64, kind), label="case")
    output, _ = V.vae_forward(case.x, case.params, case.eps, case.config)
    scale = 1.0 + float(np.sum(np.abs(output.reconstruction)) + np.sum(output.kl))  # the terms the loss sums
    for name in case.params:
        def forward(p, name=name):
            output, cache = V.vae_forward(case.x, {**case.params, name: p[name]}, case.eps, case.config)
            return np.asarray(output.loss), cache

        assert_vjp(forward, lambda g, cache, name=name: {name: V.vae_backward(g, cache)[name]},
                   {name: case.params[name]}, seed, f"vae ({kind}), gradient of the loss for {name}", scale)


# ----------------------------------------------------------------------------------------------
# The KL divergence
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=latent_cases(np.float64))
def test_kl_is_nonnegative(impl, case):
    kl, _ = require(impl, "vae").gaussian_kl_forward(case.mu, case.log_var)
    # Each term σ² + μ² − 1 − log σ² ≥ 0; near 0 it is a difference of numbers of order
    # s = 1 + σ² + μ² + |log σ²|, whose rounding (a few machine epsilons × s) is all that may go below 0.
    size = np.sum(1.0 + np.exp(case.log_var) + case.mu**2 + np.abs(case.log_var), axis=-1)
    assert np.all(kl >= -4 * np.finfo(np.float64).eps * size), f"{impl}: KL {kl!r} is negative"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(data=st.data())
def test_kl_is_zero_exactly_at_the_prior_and_positive_away_from_it(impl, data):
    module = require(impl, "vae")
    b, z = data.draw(st.integers(1, 3), label="B"), data.draw(st.integers(1, 4), label="Z")
    zeros = np.zeros((b, z))
    kl, _ = module.gaussian_kl_forward(zeros, zeros)
    assert np.array_equal(kl, np.zeros(b)), f"{impl}: KL(N(0, I) ‖ N(0, I)) = {kl!r}, expected exactly 0"
    # Move one coordinate of one example, of μ or of log σ², by at least 1e-3: that example's KL > 0.
    row, col = data.draw(st.integers(0, b - 1), label="row"), data.draw(st.integers(0, z - 1), label="column")
    step = data.draw(st.floats(1e-3, 3.0), label="|step|") * data.draw(st.sampled_from([-1.0, 1.0]), label="sign")
    mu, log_var = zeros.copy(), zeros.copy()
    (mu if data.draw(st.booleans(), label="move μ") else log_var)[row, col] = step
    kl, _ = module.gaussian_kl_forward(mu, log_var)
    assert kl[row] > 0.0, f"{impl}: KL is {kl[row]!r} at μ = {mu[row]}, log σ² = {log_var[row]}, expected > 0"
    others = np.arange(b) != row
    assert np.array_equal(kl[others], np.zeros(b - 1)), f"{impl}: examples left at the prior got KL {kl[others]!r}"


def test_kl_equals_a_monte_carlo_estimate():
    """KL(q ‖ p) = E_q[log q(z) − log p(z)], estimated from 200,000 samples of q per example."""
    rng = np.random.default_rng(0)
    mu = np.array([[0.0, 0.5, -1.0], [1.5, -0.3, 0.2]])  # (B, Z)
    log_var = np.array([[-1.2, 0.7, 0.0], [1.5, -0.5, -2.0]])  # (B, Z)
    kl, _ = V.gaussian_kl_forward(mu, log_var)
    n = 200_000
    for b in range(mu.shape[0]):
        eps = rng.standard_normal((n, mu.shape[1]))
        z = mu[b] + np.exp(0.5 * log_var[b]) * eps  # (N, Z), samples of q
        # log N(z; μ, σ²) − log N(z; 0, 1), summed over Z; the ½ log 2π cancel
        log_ratio = np.sum(-0.5 * log_var[b] - 0.5 * (z - mu[b]) ** 2 / np.exp(log_var[b]) + 0.5 * z**2, axis=-1)  # (N,)
        assert_within_standard_errors(log_ratio.mean(), log_ratio.std(ddof=1) / math.sqrt(n), kl[b], f"KL of example {b}")


# ----------------------------------------------------------------------------------------------
# The reparameterisation trick
# ----------------------------------------------------------------------------------------------

MU = np.array([0.5, -1.0, 2.0])  # (Z,)
LOG_VAR = np.array([-1.2, 0.7, 1.5])  # (Z,): variances 0.30, 2.0, 4.5, none near 1


def reparameterized_samples(n, seed=0):
    """n samples z = μ + σ ε of q = N(MU, diag exp(LOG_VAR)), through reparameterize_forward."""
    eps = np.random.default_rng(seed).standard_normal((n, MU.size))
    return V.reparameterize_forward(np.tile(MU, (n, 1)), np.tile(LOG_VAR, (n, 1)), eps)


def test_reparameterized_samples_have_mean_mu_and_variance_exp_log_var():
    n = 200_000
    z, _ = reparameterized_samples(n)
    var = np.exp(LOG_VAR)
    # standard errors: of a sample mean σ/√n; of a Gaussian sample variance σ²√(2/(n − 1))
    assert_within_standard_errors(z.mean(axis=0), np.sqrt(var / n), MU, "sample mean of z")
    assert_within_standard_errors(z.var(axis=0, ddof=1), var * math.sqrt(2.0 / (n - 1)), var, "sample variance of z")


def test_reparameterized_gradient_of_an_expectation_is_unbiased():
    """f(z) = Σ_j a_j z_j² + b_j z_j has E_q[f] = Σ_j a_j (μ_j² + σ_j²) + b_j μ_j, so
    ∂E/∂μ_j = 2 a_j μ_j + b_j and ∂E/∂log σ_j² = a_j σ_j². The per-sample gradients that
    reparameterize_backward gives from df/dz = 2 a z + b must average to these."""
    a, b = np.array([0.7, -1.3, 0.4]), np.array([0.5, 2.0, -1.0])
    n = 200_000
    z, cache = reparameterized_samples(n, seed=1)
    dmu, dlog_var = V.reparameterize_backward(2.0 * a * z + b, cache)  # (N, Z) each: one estimate per sample
    var = np.exp(LOG_VAR)
    for name, samples, exact in (("∂/∂μ", dmu, 2.0 * a * MU + b), ("∂/∂log σ²", dlog_var, a * var)):
        assert_within_standard_errors(samples.mean(axis=0), samples.std(axis=0, ddof=1) / math.sqrt(n), exact, f"E[f] {name}")


# ----------------------------------------------------------------------------------------------
# The linear-Gaussian VAE and probabilistic PCA in closed form
# ----------------------------------------------------------------------------------------------


def linear_gaussian_params(config, rng, dec_log_var=0.3):
    """Random parameters (biases included) for the linear-Gaussian VAE."""
    params = {name: 0.6 * rng.standard_normal(shape) for name, shape in V.parameter_shapes(config).items()}
    params["dec.log_var"] = np.array(dec_log_var)
    return params


def test_linear_gaussian_elbo_equals_the_monte_carlo_mean_of_the_sampled_elbo():
    rng = np.random.default_rng(2)
    config = V.linear_gaussian_config(x_dim=4, z_dim=2)
    params, x, n = linear_gaussian_params(config, rng), rng.standard_normal((3, 4)), 50_000
    exact = V.linear_gaussian_elbo(x, params)  # (B,)
    eps = rng.standard_normal((n * len(x), config.z_dim))
    sampled = V.vae_forward(np.repeat(x, n, axis=0), params, eps, config)[0].elbo.reshape(len(x), n)  # (B, N)
    assert_within_standard_errors(sampled.mean(axis=1), sampled.std(axis=1, ddof=1) / math.sqrt(n), exact, "ELBO")


def ppca_mle(x, q):
    """Tipping and Bishop (1999), Eq. (7)-(8): W = U_q (Λ_q − σ² I)^½, σ² = mean of the discarded λ."""
    mean = x.mean(axis=0)  # (D,)
    eigenvalues, vectors = np.linalg.eigh((x - mean).T @ (x - mean) / len(x))
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]  # descending
    sigma2 = eigenvalues[q:].mean()
    return mean, vectors[:, :q] * np.sqrt(eigenvalues[:q] - sigma2), sigma2, eigenvalues[:q]  # W: (D, q)


def pca_data(rng, n=300, d=5, q=2):
    """Data from a pPCA model with D = 5, q = 2: x = W z + μ + noise."""
    return rng.standard_normal((n, q)) @ rng.standard_normal((q, d)) + rng.standard_normal(d) + 0.3 * rng.standard_normal((n, d))


def test_ppca_log_likelihood_equals_the_gaussian_density_of_the_mle_model():
    rng = np.random.default_rng(3)
    x, q = pca_data(rng), 2
    mean, W, sigma2, _ = ppca_mle(x, q)
    C = W @ W.T + sigma2 * np.eye(x.shape[1])  # (D, D), the model covariance
    sign, log_det = np.linalg.slogdet(C)
    assert sign > 0
    centred = x - mean  # (N, D)
    mahalanobis = np.sum(centred * np.linalg.solve(C, centred.T).T, axis=1)  # (N,)
    direct = np.mean(-0.5 * (x.shape[1] * math.log(2 * math.pi) + log_det + mahalanobis))
    assert_close(np.float64(V.ppca_log_likelihood(x, q)), np.float64(direct), impl="scratch", what="ppca_log_likelihood")


def test_linear_gaussian_elbo_reaches_the_ppca_log_likelihood_with_the_exact_posterior():
    """With W = U_q (Λ_q − σ² I)^½ the pPCA posterior N(M⁻¹Wᵀ(x − x̄), σ² M⁻¹), M = WᵀW + σ² I = Λ_q,
    is diagonal: the VAE's encoder can represent it exactly, and then the ELBO is log p(x)."""
    rng = np.random.default_rng(4)
    x, q = pca_data(rng), 2
    mean, W, sigma2, top = ppca_mle(x, q)
    W_mu = W / top  # (D, q) = W M⁻¹, M = diag(Λ_q)
    params = {
        "enc.W_mu": W_mu, "enc.b_mu": -mean @ W_mu,  # μ(x) = (x − x̄) W M⁻¹
        "enc.W_lv": np.zeros((x.shape[1], q)), "enc.b_lv": np.log(sigma2 / top),  # log σ² M⁻¹, the same for every x
        "dec.W_out": W.T, "dec.b_out": mean, "dec.log_var": np.array(math.log(sigma2)),
    }
    elbo = V.linear_gaussian_elbo(x, params).mean()
    assert_close(np.float64(elbo), np.float64(V.ppca_log_likelihood(x, q)), impl="scratch", what="ELBO at the pPCA optimum")


@given(seed=seeds)
def test_ppca_log_likelihood_bounds_the_linear_gaussian_elbo(seed):
    rng = np.random.default_rng(seed)
    x = pca_data(np.random.default_rng(5), n=100)
    config = V.linear_gaussian_config(x_dim=5, z_dim=2)
    elbo = V.linear_gaussian_elbo(x, linear_gaussian_params(config, rng, dec_log_var=rng.uniform(-2, 2))).mean()
    assert elbo <= V.ppca_log_likelihood(x, 2) + 1e-9, f"mean ELBO {elbo!r} exceeds the pPCA log-likelihood bound"


# ----------------------------------------------------------------------------------------------
# Bad input and extreme values, in every implementation
# ----------------------------------------------------------------------------------------------


def _latent(shape=(2, 3), dtype=np.float64):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


_LINEAR = V.linear_gaussian_config(x_dim=3, z_dim=2)
_PARAMS = linear_gaussian_params(_LINEAR, np.random.default_rng(0))

BAD_INPUTS = {
    "Bernoulli x above 1": (lambda m: m.bernoulli_log_likelihood_forward(np.full((2, 3), 1.5), _latent()),
                            ValueError, ["x", "[0, 1]", "1.5"]),
    "Bernoulli x below 0": (lambda m: m.bernoulli_log_likelihood_forward(np.full((2, 3), -0.5), _latent()),
                            ValueError, ["x", "[0, 1]", "-0.5"]),
    "KL with mismatched mu and log_var": (lambda m: m.gaussian_kl_forward(_latent(), _latent((2, 4))),
                                          ValueError, ["mu", "log_var", "(2, 3)", "(2, 4)"]),
    "reparameterize with mismatched mu and log_var": (lambda m: m.reparameterize_forward(_latent(), _latent((3, 3)), _latent()),
                                                      ValueError, ["mu", "log_var", "(2, 3)", "(3, 3)"]),
    "reparameterize with mismatched eps": (lambda m: m.reparameterize_forward(_latent(), _latent(), _latent((2, 1))),
                                           ValueError, ["eps", "(2, 3)", "(2, 1)"]),
    "KL of a single vector": (lambda m: m.gaussian_kl_forward(_latent((3,)), _latent((3,))),
                              ValueError, ["mu", "(B, Z)", "(3,)"]),
    "mixed float32/float64": (lambda m: m.gaussian_kl_forward(_latent(dtype=np.float32), _latent()),
                              TypeError, ["mu float32", "log_var float64"]),
    "integer logits": (lambda m: m.bernoulli_log_likelihood_forward(np.ones((2, 3)), np.ones((2, 3), int)),
                       TypeError, ["logits", "int64", "(2, 3)"]),
    "Gaussian log_var that does not broadcast": (lambda m: m.gaussian_log_likelihood_forward(_latent(), _latent(), _latent((2,))),
                                                 ValueError, ["log_var", "(2, 3)", "(2,)"]),
    "Gaussian mean of another shape": (lambda m: m.gaussian_log_likelihood_forward(_latent(), _latent((3, 2)), np.zeros(())),
                                       ValueError, ["mean", "(2, 3)", "(3, 2)"]),
    "vae x of the wrong width": (lambda m: m.vae_forward(_latent((2, 4)), _PARAMS, _latent((2, 2)), _LINEAR),
                                 ValueError, ["x", "D=3", "(2, 4)"]),
    "vae eps of the wrong shape": (lambda m: m.vae_forward(_latent(), _PARAMS, _latent((2, 3)), _LINEAR),
                                   ValueError, ["eps", "(B=2, Z=2)", "(2, 3)"]),
    "vae x float32, params float64": (lambda m: m.vae_forward(_latent(dtype=np.float32), _PARAMS, _latent((2, 2)), _LINEAR),
                                      TypeError, ["x float32", "float64"]),
    "vae params missing a key": (lambda m: m.vae_forward(_latent(), {k: v for k, v in _PARAMS.items() if k != "dec.log_var"}, _latent((2, 2)), _LINEAR),
                                 ValueError, ["params", "dec.log_var"]),
    "vae weight of the wrong shape": (lambda m: m.vae_forward(_latent(), {**_PARAMS, "enc.W_mu": np.ones((3, 5))}, _latent((2, 2)), _LINEAR),
                                      ValueError, ["enc.W_mu", "(3, 2)", "(3, 5)"]),
    "vae decoder log-variance of the wrong shape": (lambda m: m.vae_forward(_latent(), {**_PARAMS, "dec.log_var": np.zeros(3)}, _latent((2, 2)), _LINEAR),
                                                    ValueError, ["dec.log_var", "()", "(3,)"]),
}


@pytest.mark.parametrize("bad", sorted(BAD_INPUTS))
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bad_input_gets_a_clear_error(impl, bad):
    module = require(impl, "vae")
    call, error, fragments = BAD_INPUTS[bad]
    assert_clear_error(impl, bad, lambda: call(module), error, fragments)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_log_variances_of_80_and_logits_of_1e3_give_finite_values_and_gradients(impl):
    """exp(80) ≈ 5.5e34 and exp(40) ≈ 2.4e17 are far from float64's overflow near e^709; logits of
    ±1e3 would overflow a naive log(1 + eˡ), not the stable softplus."""
    module, scratch, rng = require(impl, "vae"), require("scratch", "vae"), np.random.default_rng(6)
    mu, eps, dz = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    log_var = np.array([[80.0, -80.0, 79.5, -79.5]]) * np.array([[1.0], [-1.0], [1.0]])  # (3, 4)
    x, logits, dterm = rng.uniform(size=(3, 4)), 1e3 * rng.standard_normal((3, 4)), rng.standard_normal(3)
    cases = {  # op: (inputs, upstream gradient)
        "reparameterize": ((mu, log_var, eps), dz),
        "gaussian_kl": ((mu, log_var), dterm),
        "bernoulli_log_likelihood": ((x, logits), dterm),
        "gaussian_log_likelihood": ((x, logits, log_var), dterm),
    }
    for op, (inputs, upstream) in cases.items():
        actual, expected = (_forward_backward(m, op, inputs, upstream) for m in (module, scratch))
        for i, (value, e) in enumerate(zip(actual, expected)):
            assert np.all(np.isfinite(value)), f"{impl}: {op} output/gradient {i} is not finite: {value!r}"
            assert_close(value, e, impl=impl, what=f"{op} output/gradient {i} at extreme inputs")


def _forward_backward(module, op, inputs, upstream):
    """(out, *gradients) of one op."""
    out, cache = getattr(module, f"{op}_forward")(*inputs)
    grads = getattr(module, f"{op}_backward")(upstream, cache)
    return (out, *(grads if isinstance(grads, tuple) else (grads,)))
