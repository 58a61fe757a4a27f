"""Every port computes what scratch/vae.py computes: each op, the whole model, the native models.

Three layers of agreement: (1) every contract op and `vae_forward`/`vae_backward` of every port
equal scratch's outputs and gradients, float64 and float32; (2) each framework's own model
(`torch.nn.Module`, `tf.Module`, `keras.Model`) holds the scratch weights exactly after
conversion and computes the same ELBO terms, and its training step moves the weights exactly as
scratch's gradients say; (3) independent references written by other people
(`torch.distributions`) agree with our KL and log-likelihoods.
"""

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.implementations import PORTS, require
from checks.runners import RUNNERS
from checks.strategies import (
    DTYPES, VAE_KINDS, bernoulli_cases, gaussian_likelihood_cases, latent_cases, vae_cases,
)
from checks.tolerances import assert_close
from scratch import vae as V

pytestmark = pytest.mark.vae

OPS = {
    "reparameterize": latent_cases,
    "gaussian_kl": latent_cases,
    "bernoulli_log_likelihood": bernoulli_cases,
    "gaussian_log_likelihood": gaussian_likelihood_cases,
}


def assert_all_close(impl, what, actual, expected, dtype):
    assert list(actual) == list(expected), f"{impl}: {what} returned {list(actual)}, scratch returns {list(expected)}"
    for name, value in expected.items():
        assert actual[name].dtype == np.dtype(dtype), f"{impl}: {what} {name} is {actual[name].dtype}, input was {np.dtype(dtype)}"
        assert_close(actual[name], value, impl=impl, what=f"{what} {name}")


# ----------------------------------------------------------------------------------------------
# (1) The contract ops and the whole model, port against scratch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@given(data=st.data())
def test_op_matches_scratch(impl, dtype, op, data):
    port, scratch = require(impl, "vae"), require("scratch", "vae")
    case = data.draw(OPS[op](dtype), label="case")  # a Gaussian log_var of any shape in LOG_VAR_SHAPES
    assert_all_close(impl, op, RUNNERS[op](port, case), RUNNERS[op](scratch, case), dtype)


# A whole VAE forward and backward costs ~30 ms in eager TensorFlow and Keras, 18 checks of it
# would dominate the suite: half the profile's examples each (12 in `ci`, 125 in `thorough`).
@pytest.mark.parametrize("kind", VAE_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(data=st.data())
def test_vae_matches_scratch(impl, dtype, kind, data):
    """vae_forward's loss and every term, and vae_backward's gradient for every parameter."""
    port, scratch = require(impl, "vae"), require("scratch", "vae")
    case = data.draw(vae_cases(dtype, kind), label="case")
    assert_all_close(impl, "vae", RUNNERS["vae"](port, case), RUNNERS["vae"](scratch, case), dtype)


@pytest.mark.parametrize("impl", PORTS)
def test_vae_loss_is_a_python_float(impl):
    config, params, x, eps = native_case("gaussian MLP", np.float32)
    output, _ = require(impl, "vae").vae_forward(x, params, eps, config)
    assert type(output.loss) is float, f"{impl}: loss is a {type(output.loss).__name__}, scratch returns a float"


# ----------------------------------------------------------------------------------------------
# (2) The frameworks' own models: converters and training steps
# ----------------------------------------------------------------------------------------------

# One fixed size per kind (B, D, Z, H all different); Keras models take tens of milliseconds to
# build, so these checks draw their numbers from a seeded generator instead of Hypothesis.
NATIVE_CONFIGS = {
    "bernoulli MLP": V.VAEConfig(x_dim=5, z_dim=2, hidden=4, likelihood="bernoulli"),
    "gaussian MLP": V.VAEConfig(x_dim=5, z_dim=2, hidden=4, likelihood="gaussian"),
    "linear gaussian": V.linear_gaussian_config(x_dim=5, z_dim=2),
}
CONVERTERS = {"torch": "torch", "tensorflow": "tf", "keras": "keras"}


@functools.lru_cache(maxsize=None)
def native_case(kind, dtype, seed=0):
    """Random parameters (biases and decoder log-variance too), data and noise for NATIVE_CONFIGS[kind]."""
    config, rng = NATIVE_CONFIGS[kind], np.random.default_rng(seed)
    params = {name: (0.5 * rng.standard_normal(shape)).astype(dtype) for name, shape in V.parameter_shapes(config).items()}
    # grey levels k/16 as in the digits: exact in float32, into which Keras's fit casts its data
    x = (np.round(16 * rng.uniform(size=(3, config.x_dim))) / 16).astype(dtype)
    return config, params, x, rng.standard_normal((3, config.z_dim)).astype(dtype)


def native_terms(impl, model, x, eps):
    """The model's own forward on (x, eps), as a dict of NumPy arrays."""
    if impl == "torch":
        import torch

        with torch.no_grad():
            out = model(torch.from_numpy(x), torch.from_numpy(eps))
    elif impl == "tensorflow":
        out = model.elbo(x, eps)
    else:
        out = model(x, eps=eps)
    return {name: np.asarray(value) for name, value in out._asdict().items() if name != "loss"}


@pytest.mark.parametrize("kind", VAE_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
def test_native_model_holds_the_scratch_weights_and_computes_the_same_elbo(impl, dtype, kind):
    port, fw = require(impl, "vae"), CONVERTERS[impl]
    to_native, from_native = getattr(port, f"to_{fw}_vae"), getattr(port, f"from_{fw}_vae")
    config, params, x, eps = native_case(kind, dtype)
    model = to_native(params, config)
    # scratch → native → scratch is exact, name for name
    back = from_native(model)
    assert list(back) == list(params), f"from_{fw}_vae gives the names {list(back)}, expected {list(params)}"
    for name, value in params.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), f"{impl}: {name} changed on the round trip"
    # the native forward equals scratch's terms
    expected, _ = V.vae_forward(x, params, eps, config)
    for name, value in native_terms(impl, model, x, eps).items():
        assert value.dtype == np.dtype(dtype), f"{impl} native model: {name} is {value.dtype}, weights are {np.dtype(dtype)}"
        assert_close(value, getattr(expected, name), impl=f"{impl} native model", what=name)


@pytest.mark.parametrize("kind", VAE_KINDS)
@pytest.mark.parametrize("impl", PORTS)
def test_native_model_round_trips_through_the_scratch_layout(impl, kind):
    """native (the framework's own initialisation) → scratch → native: every weight unchanged."""
    port, fw = require(impl, "vae"), CONVERTERS[impl]
    config = NATIVE_CONFIGS[kind]
    if impl == "keras":
        model = port.VAE(config, dtype="float64", seed=1)
        model.build((None, config.x_dim))
    else:
        model = port.VAE(config)
    params = getattr(port, f"from_{fw}_vae")(model)
    assert {name: p.shape for name, p in params.items()} == V.parameter_shapes(config)
    again = getattr(port, f"to_{fw}_vae")(params, config)
    weights = {
        "torch": lambda m: [w.detach().numpy() for w in m.state_dict().values()],
        "tensorflow": lambda m: [v.numpy() for v in m.trainable_variables],
        "keras": lambda m: [w.numpy() for w in m.weights],
    }[impl]
    for before, after in zip(weights(model), weights(again), strict=True):
        assert before.dtype == after.dtype and np.array_equal(before, after), f"{impl}: a weight changed on the round trip"


def scratch_sgd_step(params, x, eps, config, lr):
    """params − lr · ∂loss/∂params, with scratch's hand-written gradients."""
    _, cache = V.vae_forward(x, params, eps, config)
    grads = V.vae_backward(1.0, cache)
    return {name: p - lr * grads[name] for name, p in params.items()}


@pytest.mark.parametrize("kind", VAE_KINDS)
def test_tf_train_step_moves_the_weights_as_scratch_gradients_say(kind):
    tf = pytest.importorskip("tensorflow")
    port = require("tensorflow", "vae")
    config, params, x, eps = native_case(kind, np.float64)
    vae = port.to_tf_vae(params, config)
    lr = 0.25  # exact in float32, in which Keras optimizers keep the learning rate
    loss = port.train_step(vae, x, eps, tf.keras.optimizers.SGD(learning_rate=lr))
    assert_close(np.float64(loss), np.float64(V.vae_forward(x, params, eps, config)[0].loss), impl="tensorflow train_step", what="loss")
    for name, value in scratch_sgd_step(params, x, eps, config, lr).items():
        assert_close(port.from_tf_vae(vae)[name], value, impl="tensorflow train_step", what=f"{name} after one SGD step")


@pytest.mark.parametrize("kind", ["bernoulli MLP", "gaussian MLP"])
def test_keras_fit_takes_the_steps_scratch_gradients_say(kind):
    """model.fit(x) on one full batch with SGD: each epoch is one step along scratch's gradient
    at the ε the Sampling layer draws, which a fresh SeedGenerator with the same seed reproduces."""
    port = require("keras", "vae")
    import keras

    config, params, x, _ = native_case(kind, np.float64)
    model = port.to_keras_vae(params, config, seed=7)
    lr, epochs = 0.25, 2
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr))
    history = model.fit(x, epochs=epochs, batch_size=len(x), shuffle=False, verbose=0).history
    assert sorted(history) == ["kl", "loss", "reconstruction"], f"keras fit reports {sorted(history)}"
    seeds = keras.random.SeedGenerator(7)
    for epoch in range(epochs):
        eps = np.asarray(keras.random.normal((len(x), config.z_dim), dtype="float64", seed=seeds))
        out, _ = V.vae_forward(x, params, eps, config)
        for name, value in (("loss", out.loss), ("reconstruction", out.reconstruction.mean()), ("kl", out.kl.mean())):
            # Keras metrics accumulate in float32, whatever the model's dtype
            assert_close(np.float64(history[name][epoch]), np.float64(value), impl="keras fit", what=f"epoch {epoch} {name}", dtype=np.float32)
        params = scratch_sgd_step(params, x, eps, config, lr)
    for name, value in port.from_keras_vae(model).items():
        assert_close(value, params[name], impl="keras fit", what=f"{name} after {epochs} SGD steps")


def test_keras_sampling_draws_standard_normal_noise_unless_given_some():
    port = require("keras", "vae")
    rng = np.random.default_rng(0)
    mu, log_var, eps = (rng.standard_normal((4, 3)) for _ in range(3))
    z = np.asarray(port.Sampling(seed=0, dtype="float64")((mu, log_var), eps=eps))
    assert_close(z, V.reparameterize_forward(mu, log_var, eps)[0], impl="keras Sampling", what="z with a given ε")
    n = 20_000
    drawn = np.asarray(port.Sampling(seed=0, dtype="float64")((np.zeros((n, 1)), np.zeros((n, 1)))))
    # mean 0 and variance 1 within 4 standard errors (1/√n and √(2/n)); a uniform ε has mean ½, variance 1/12
    assert abs(drawn.mean()) < 4 / np.sqrt(n) and abs(drawn.var() - 1.0) < 4 * np.sqrt(2 / n), (
        f"keras Sampling: drawn ε has mean {drawn.mean():.4f} and variance {drawn.var():.4f}, expected 0 and 1 "
        f"within 4 standard errors ({4 / np.sqrt(n):.4f} and {4 * np.sqrt(2 / n):.4f})"
    )


# ----------------------------------------------------------------------------------------------
# (3) Independent references: torch.distributions (against scratch; (1) makes every port equal to it)
# ----------------------------------------------------------------------------------------------


@given(case=latent_cases(np.float64))
def test_gaussian_kl_equals_torch_distributions(case):
    torch = pytest.importorskip("torch")
    from torch.distributions import Normal, kl_divergence

    mu, log_var = torch.from_numpy(case.mu), torch.from_numpy(case.log_var)
    reference = kl_divergence(Normal(mu, torch.exp(0.5 * log_var)), Normal(0.0, 1.0)).sum(-1).numpy()
    kl, _ = V.gaussian_kl_forward(case.mu, case.log_var)
    assert_close(kl, reference, impl="scratch", what="KL against torch.distributions.kl_divergence")


@given(case=bernoulli_cases(np.float64), gaussian=gaussian_likelihood_cases(np.float64))
def test_log_likelihoods_equal_torch_distributions(case, gaussian):
    torch = pytest.importorskip("torch")
    from torch.distributions import Bernoulli, Normal

    # Bernoulli.log_prob is −BCE-with-logits, defined for grey levels too once validation is off
    reference = Bernoulli(logits=torch.from_numpy(case.decoded), validate_args=False).log_prob(torch.from_numpy(case.x))
    ours, _ = V.bernoulli_log_likelihood_forward(case.x, case.decoded)
    assert_close(ours, reference.sum(-1).numpy(), impl="scratch", what="Bernoulli log-likelihood against torch.distributions")
    std = torch.exp(0.5 * torch.from_numpy(gaussian.log_var))
    reference = Normal(torch.from_numpy(gaussian.decoded), std).log_prob(torch.from_numpy(gaussian.x))
    ours, _ = V.gaussian_log_likelihood_forward(gaussian.x, gaussian.decoded, gaussian.log_var)
    assert_close(ours, reference.sum(-1).numpy(), impl="scratch", what="Gaussian log-likelihood against torch.distributions")
