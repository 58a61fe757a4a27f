"""Every port computes what scratch/diffusion.py computes: the contract, the loss and the MLP denoiser.

Three layers of agreement, float64 and float32, on Hypothesis-drawn shapes and values:
(1) the contract functions (beta_schedule, alpha_bar, q_sample, the posterior, predict_x0, ddpm_step,
ddim_step, time_embedding) and the ε loss forward and backward equal scratch's outputs, in the
input's dtype; (2) the MLP denoiser's forward and the gradient of every parameter, alone and inside
a whole training step (denoiser_step), equal scratch's hand-written backward; (3) each framework's own
model (`torch.nn.Module`, `tf.Module`, `keras.Model`) holds the scratch weights exactly after
conversion, converts back to the same bits, and predicts what scratch predicts. The samplers, run
on a fixed ε-predictor, draw the same chains. Bad input gets scratch's clear errors.

Strategies are here rather than in checks/strategies.py: the diffusion topic's own, small (B ≤ 4,
T ≤ 40, widths ≤ 6) so that a failing example shrinks to something readable.
"""

from typing import NamedTuple

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from checks.implementations import PORTS, require
from checks.strategies import DTYPES, floats
from checks.tolerances import assert_close, assert_clear_error
from scratch import diffusion as Df

pytestmark = pytest.mark.diffusion

# each example runs a few eager TensorFlow ops: fewer than the profile's default keeps the file near 30 s
EXAMPLES = settings(max_examples=max(8, settings.default.max_examples // 3))
DTYPE_IDS = {"ids": lambda d: np.dtype(d).name}


def assert_same(impl, what, actual, expected, dtype):
    """Same dtype as the input (float32 stays float32) and the same values as scratch's."""
    actual = np.asarray(actual)
    assert actual.dtype == np.dtype(dtype), f"{impl}: {what} is {actual.dtype}, the input was {np.dtype(dtype)}"
    assert_close(actual, expected, impl=impl, what=what)


def assert_same_dict(impl, what, actual, expected, dtype):
    assert sorted(actual) == sorted(expected), f"{impl}: {what} has keys {sorted(actual)}, scratch {sorted(expected)}"
    for name, value in expected.items():
        assert_same(impl, f"{what} {name}", actual[name], value, dtype)


# ----------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------


class ProcessCase(NamedTuple):
    betas: np.ndarray  # (T,) float64
    x0: np.ndarray  # (B, ...)
    x_t: np.ndarray  # (B, ...), a state to step from
    eps: np.ndarray  # (B, ...), the noise, or the network's prediction of it
    noise: np.ndarray  # (B, ...), a reverse step's z
    t: np.ndarray  # (B,) int, some at 0 (the last step, which adds no noise)
    t_prev: np.ndarray  # (B,) int < t, −1 where the chain ends
    eta: float
    d: np.ndarray  # (B, ...), an upstream gradient


@st.composite
def process_cases(draw, dtype):
    """A schedule of T ≤ 40 steps, a batch of 1–4 examples of 1–2 data axes, their steps and noise."""
    num_steps = draw(st.integers(1, 40))
    betas = Df.beta_schedule(draw(st.sampled_from(Df.SCHEDULES)), num_steps)
    batch = draw(st.integers(1, 4))
    shape = (batch, *draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    x0, x_t, eps, noise, d = (draw(floats(dtype, shape), label=name) for name in ("x0", "x_t", "eps", "noise", "d"))
    t = np.array(draw(st.lists(st.integers(0, num_steps - 1), min_size=batch, max_size=batch)), dtype=np.int64)
    t_prev = np.array([draw(st.integers(-1, s - 1)) if s > 0 else -1 for s in t], dtype=np.int64)
    eta = draw(st.sampled_from([0.0, 0.5, 1.0]))
    return ProcessCase(betas, x0, x_t, eps, noise, t, t_prev, eta, d)


class DenoiserCase(NamedTuple):
    config: Df.MLPDenoiserConfig
    params: dict
    x0: np.ndarray  # (B, D)
    eps: np.ndarray  # (B, D)
    t: np.ndarray  # (B,) int
    alphas_cumprod: np.ndarray  # (T,)
    d_eps: np.ndarray  # (B, D), the upstream gradient of ε̂


@st.composite
def denoiser_cases(draw, dtype):
    """A small MLP denoiser (D ≤ 3, one or two hidden layers ≤ 6 wide, E ≤ 7, odd E included), its
    scratch initialisation from a drawn seed, a batch and its steps in a 1,000-step schedule."""
    config = Df.MLPDenoiserConfig(x_dim=draw(st.integers(1, 3)), time_dim=draw(st.integers(1, 7)),
                                  hidden=tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=2))))
    params = Df.init_mlp_denoiser(config, np.random.default_rng(draw(st.integers(0, 2**16))), dtype)
    batch = draw(st.integers(1, 4))
    x0, eps, d_eps = (draw(floats(dtype, (batch, config.x_dim)), label=n) for n in ("x0", "eps", "d_eps"))
    t = np.array(draw(st.lists(st.integers(0, 999), min_size=batch, max_size=batch)), dtype=np.int64)
    return DenoiserCase(config, params, x0, eps, t, Df.alpha_bar(Df.beta_schedule("linear", 1000)), d_eps)


# ----------------------------------------------------------------------------------------------
# (1) The contract functions and the loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", PORTS)
@pytest.mark.parametrize("kind", Df.SCHEDULES)
def test_schedules_match_scratch(impl, kind):
    port = require(impl, "diffusion")
    for num_steps in (1, 2, 10, 1000):
        betas = Df.beta_schedule(kind, num_steps)
        assert_same(impl, f"beta_schedule({kind!r}, {num_steps})", port.beta_schedule(kind, num_steps), betas, np.float64)
        assert_same(impl, f"alpha_bar of {kind}, {num_steps}", port.alpha_bar(betas), Df.alpha_bar(betas), np.float64)


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@EXAMPLES
@given(data=st.data())
def test_forward_process_and_posterior_match_scratch(impl, dtype, data):
    port = require(impl, "diffusion")
    c = data.draw(process_cases(dtype), label="case")
    a = Df.alpha_bar(c.betas)
    assert_same(impl, "q_sample", port.q_sample(c.x0, c.t, c.eps, a), Df.q_sample(c.x0, c.t, c.eps, a), dtype)
    mean, variance = port.q_posterior(c.x0, c.x_t, c.t, c.betas)
    expected_mean, expected_variance = Df.q_posterior(c.x0, c.x_t, c.t, c.betas)
    assert_same(impl, "q_posterior's mean", mean, expected_mean, dtype)
    assert_same(impl, "q_posterior's variance", variance, expected_variance, np.float64)
    for name, value, expected in zip(Df.Posterior._fields, port.posterior_coefficients(c.betas, c.t),
                                     Df.posterior_coefficients(c.betas, c.t)):
        assert_same(impl, f"posterior_coefficients' {name}", value, expected, np.float64)
    assert_same(impl, "predict_x0", port.predict_x0(c.eps, c.x_t, a[c.t]), Df.predict_x0(c.eps, c.x_t, a[c.t]), dtype)


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@EXAMPLES
@given(data=st.data())
def test_reverse_steps_match_scratch(impl, dtype, data):
    """ddpm_step (with and without noise) and ddim_step at the drawn η, t_prev = −1 included."""
    port = require(impl, "diffusion")
    c = data.draw(process_cases(dtype), label="case")
    a = Df.alpha_bar(c.betas)
    assert_same(impl, "ddpm_step", port.ddpm_step(c.eps, c.t, c.x_t, c.betas, c.noise),
                Df.ddpm_step(c.eps, c.t, c.x_t, c.betas, c.noise), dtype)
    last = np.zeros_like(c.t)  # every example at t = 0: no noise needed
    assert_same(impl, "ddpm_step at t = 0 without noise", port.ddpm_step(c.eps, last, c.x_t, c.betas, None),
                Df.ddpm_step(c.eps, last, c.x_t, c.betas, None), dtype)
    noise = c.noise if c.eta > 0.0 else None
    assert_same(impl, f"ddim_step (η = {c.eta})", port.ddim_step(c.eps, c.t, c.t_prev, c.x_t, a, c.eta, noise),
                Df.ddim_step(c.eps, c.t, c.t_prev, c.x_t, a, c.eta, noise), dtype)


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@EXAMPLES
@given(data=st.data())
def test_eps_loss_matches_scratch(impl, dtype, data):
    port = require(impl, "diffusion")
    c = data.draw(process_cases(dtype), label="case")
    dloss = data.draw(st.floats(-2.0, 2.0), label="dloss")
    loss, cache = port.eps_loss_forward(c.x_t, c.eps)
    expected, expected_cache = Df.eps_loss_forward(c.x_t, c.eps)
    assert_close(np.array(loss), np.array(expected, dtype=dtype), impl=impl, what="eps_loss_forward")
    assert_same(impl, "eps_loss_backward", port.eps_loss_backward(dloss, cache), Df.eps_loss_backward(dloss, expected_cache),
                dtype)


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@EXAMPLES
@given(t=st.lists(st.integers(0, 999), min_size=1, max_size=5), dim=st.integers(1, 9))
def test_time_embedding_matches_scratch(impl, dtype, t, dim):
    port = require(impl, "diffusion")
    t = np.array(t, dtype=np.int64)
    assert_same(impl, f"time_embedding(E = {dim})", port.time_embedding(t, dim, dtype), Df.time_embedding(t, dim, dtype),
                dtype)


# ----------------------------------------------------------------------------------------------
# (2) The MLP denoiser: forward, every parameter's gradient, the whole training step
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@EXAMPLES
@given(data=st.data())
def test_mlp_denoiser_forward_and_gradients_match_scratch(impl, dtype, data):
    port = require(impl, "diffusion")
    c = data.draw(denoiser_cases(dtype), label="case")
    x_t = Df.q_sample(c.x0, c.t, c.eps, c.alphas_cumprod)
    eps_pred, cache = port.mlp_denoiser_forward(c.params, x_t, c.t, c.config)
    expected, expected_cache = Df.mlp_denoiser_forward(c.params, x_t, c.t, c.config)
    assert_same(impl, "mlp_denoiser_forward", eps_pred, expected, dtype)
    assert_same_dict(impl, "mlp_denoiser_backward", port.mlp_denoiser_backward(c.d_eps, cache),
                     Df.mlp_denoiser_backward(c.d_eps, expected_cache), dtype)


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@EXAMPLES
@given(data=st.data())
def test_denoiser_step_matches_scratch(impl, dtype, data):
    """Algorithm 1's loss and gradients: q_sample, the denoiser, the ε loss and back, through the port's MLP_DENOISER."""
    port = require(impl, "diffusion")
    c = data.draw(denoiser_cases(dtype), label="case")
    loss, grads = port.denoiser_step(c.x0, c.t, c.eps, c.params, c.alphas_cumprod, port.MLP_DENOISER, c.config)
    expected, expected_grads = Df.denoiser_step(c.x0, c.t, c.eps, c.params, c.alphas_cumprod, Df.MLP_DENOISER, c.config)
    assert_close(np.array(loss), np.array(expected, dtype=dtype), impl=impl, what="denoiser_step's loss")
    assert_same_dict(impl, "denoiser_step's gradient of", grads, expected_grads, dtype)


# ----------------------------------------------------------------------------------------------
# (3) The frameworks' own models hold the scratch weights and predict what scratch predicts
# ----------------------------------------------------------------------------------------------

CONVERTERS = {"torch": ("to_torch_mlp_denoiser", "from_torch_mlp_denoiser"),
              "tensorflow": ("to_tf_mlp_denoiser", "from_tf_mlp_denoiser"),
              "keras": ("to_keras_mlp_denoiser", "from_keras_mlp_denoiser")}


def module_predict(impl, module, x_t, t):
    """The framework's model called the framework's way on NumPy inputs → NumPy."""
    if impl == "torch":
        import torch

        with torch.no_grad():
            return module(torch.from_numpy(x_t), torch.from_numpy(t)).numpy()
    if impl == "tensorflow":
        import tensorflow as tf

        return module(tf.constant(x_t), tf.constant(t)).numpy()
    return np.asarray(module((x_t, t)))


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=5)
@given(data=st.data())
def test_framework_models_hold_the_scratch_weights(impl, dtype, data):
    port = require(impl, "diffusion")
    to_model, from_model = (getattr(port, name) for name in CONVERTERS[impl])
    c = data.draw(denoiser_cases(dtype), label="case")
    module = to_model(c.params, c.config)
    back = from_model(module)
    assert sorted(back) == sorted(c.params), f"{impl}: {from_model.__name__} gives keys {sorted(back)}"
    for name, value in c.params.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), \
            f"{impl}: {name} is not the same after {to_model.__name__} and {from_model.__name__}"
    x_t = Df.q_sample(c.x0, c.t, c.eps, c.alphas_cumprod)
    expected, _ = Df.mlp_denoiser_forward(c.params, x_t, c.t, c.config)
    assert_same(impl, f"the {type(module).__name__} model's prediction", module_predict(impl, module, x_t, c.t),
                expected, dtype)


@pytest.mark.parametrize("impl", PORTS)
def test_framework_model_refuses_a_layout_that_is_not_scratchs(impl):
    port = require(impl, "diffusion")
    to_model = getattr(port, CONVERTERS[impl][0])
    config = Df.MLPDenoiserConfig(2, (4,), 3)
    params = Df.init_mlp_denoiser(config, np.random.default_rng(0))
    wrong = {**params, "den.W1": params["den.W1"].T}  # (H, D + E): torch's layout, not scratch's
    assert_clear_error(impl, "a transposed W1", lambda: to_model(wrong, config), ValueError, ["den.W1", "(5, 4)", "(4, 5)"])
    missing = {k: v for k, v in params.items() if k != "den.b2"}
    assert_clear_error(impl, "a missing bias", lambda: to_model(missing, config), ValueError, ["den.b2"])


# ----------------------------------------------------------------------------------------------
# Samplers on a fixed ε-predictor, and scratch's clear errors
# ----------------------------------------------------------------------------------------------


def fixed_predictor(alphas_cumprod):
    """ε̂(x, t) = √(1 − ᾱ_t) x + 0.1 sin(x): smooth, t-dependent, the same NumPy function for every port."""

    def eps_fn(x, t):
        a = np.sqrt(1.0 - alphas_cumprod[t]).astype(x.dtype)[:, None]  # (B, 1)
        return a * x + np.sin(x) * x.dtype.type(0.1)

    return eps_fn


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
def test_samplers_draw_scratchs_chains(impl, dtype):
    port = require(impl, "diffusion")
    betas = Df.beta_schedule("cosine", 50)
    a = Df.alpha_bar(betas)
    x_T = np.random.default_rng(1).standard_normal((6, 2)).astype(dtype)
    eps_fn = fixed_predictor(a)
    chains = {"ddpm_sample": (lambda m: m.ddpm_sample(eps_fn, x_T, betas, np.random.default_rng(2))),
              "ddim_sample η = 0, 10 steps": (lambda m: m.ddim_sample(eps_fn, x_T, a, 10)),
              "ddim_sample η = 1, 25 steps": (lambda m: m.ddim_sample(eps_fn, x_T, a, 25, 1.0, np.random.default_rng(3)))}
    for what, run in chains.items():
        assert_same(impl, what, run(port), run(Df), dtype)


BAD_INPUTS = {
    "q_sample with eps of another shape": (lambda m, a, b: m.q_sample(np.zeros((3, 2)), np.zeros(3, int), np.zeros((3, 1)), a),
                                           ValueError, ["eps", "(3, 2)", "(3, 1)"]),
    "q_sample with t past T": (lambda m, a, b: m.q_sample(np.zeros((2, 2)), np.array([0, 10]), np.zeros((2, 2)), a),
                               ValueError, ["t", "T=10"]),
    "ddpm_step without noise at t > 0": (lambda m, a, b: m.ddpm_step(np.zeros((2, 2)), np.array([0, 3]), np.zeros((2, 2)), b,
                                                                   None), ValueError, ["noise", "(2, 2)"]),
    "ddim_step with η > 0 stepping away from the data": (
        lambda m, a, b: m.ddim_step(np.zeros((1, 2)), np.array([3]), np.array([5]), np.zeros((1, 2)), a, 1.0, np.zeros((1, 2))),
        ValueError, ["t_prev", "eta"]),
    "the MLP denoiser with x_t of the wrong width": (
        lambda m, a, b: m.mlp_denoiser_forward(Df.init_mlp_denoiser(Df.MLPDenoiserConfig(2, (3,), 4), np.random.default_rng(0)),
                                               np.zeros((2, 3)), np.zeros(2, int), Df.MLPDenoiserConfig(2, (3,), 4)),
        ValueError, ["x_t", "(B, 2)", "(2, 3)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("impl", PORTS)
def test_bad_inputs_get_scratchs_clear_errors(impl, case):
    port = require(impl, "diffusion")
    betas = Df.beta_schedule("linear", 10)
    call, error, fragments = BAD_INPUTS[case]
    assert_clear_error(impl, case, lambda: call(port, Df.alpha_bar(betas), betas), error, fragments)


# ----------------------------------------------------------------------------------------------
# The digit U-Net (scratch/unet.py) in PyTorch: forward and every parameter's gradient
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), size=st.sampled_from([4, 8]))
def test_torch_unet_matches_scratch(dtype, seed, batch, size):
    """ports/torch/unet.py's nn.Module, fed scratch's weights (perturbed: the zero-initialised convolutions would
    hide their inputs' gradients), predicts scratch's ε̂ and gives every parameter scratch's hand-written gradient."""
    from scratch import unet as U

    port = require("torch", "unet")
    config = U.UNetConfig(channels=(4, 6, 8), emb_dim=6, time_dim=5, groups=2, num_steps=50)
    rng = np.random.default_rng(seed)
    params = {k: v + (0.1 * rng.standard_normal(v.shape)).astype(dtype)
              for k, v in U.init_unet(config, rng, dtype).items()}
    x_t = rng.standard_normal((batch, 1, size, size)).astype(dtype)
    t = rng.integers(0, 50, batch)
    cond = rng.integers(0, U.NULL + 1, batch)  # words and ∅
    d_eps = rng.standard_normal(x_t.shape).astype(dtype)
    eps_pred, cache = port.unet_forward(params, x_t, t, config, cond)
    expected, expected_cache = U.unet_forward(params, x_t, t, config, cond)
    assert_same("torch", "unet_forward", eps_pred, expected, dtype)
    assert_same_dict("torch", "unet_backward", port.unet_backward(d_eps, cache), U.unet_backward(d_eps, expected_cache), dtype)
    back = port.from_torch_unet(port.to_torch_unet(params, config))
    assert all(np.array_equal(back[k], v) for k, v in params.items()), "torch: the U-Net's weights changed in conversion"
