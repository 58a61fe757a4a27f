"""The hand-written GAN backward is the derivative of its forward, and the theory of Goodfellow
et al. (2014) holds for our functions.

Gradients: every op and both networks against central differences along random directions,
and a whole discriminator step and generator step of a small GAN against the full numerical
gradient of every parameter. Theory: D* maximises the value function pointwise (Prop. 1);
V(D*, G) = −log 4 + 2·JSD(p_data ‖ p_g), exactly −log 4 when p_g = p_data (Thm. 1); the
minimax generator gradient vanishes as D(G(z)) → 0 while the non-saturating one does not (§3).
Bad input gets a clear error in every implementation.
"""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from checks.implementations import IMPLEMENTATIONS, require
from checks.strategies import floats
from checks.tolerances import GRADCHECK_RTOL, assert_clear_error, assert_vjp
from scratch import gan as G
from scratch.gradcheck import numerical_gradient, relative_error

pytestmark = pytest.mark.gan

seeds = st.integers(0, 2**32 - 1)
LOG4 = math.log(4.0)


def small_gan(rng, pack=1, gen_output="linear", dtype=np.float64):
    """A GAN small enough for full central differences; biases nonzero so no ReLU sits on its kink."""
    config = G.GANConfig(x_dim=3, z_dim=2, gen_hidden=(5, 4), disc_hidden=(6, 3), pack=pack, gen_output=gen_output)
    params = G.init_gan(config, rng, dtype)
    for name in params:
        if ".b" in name:
            params[name] = rng.uniform(-0.5, 0.5, params[name].shape).astype(dtype)
    return config, params


# ----------------------------------------------------------------------------------------------
# Gradients against central differences
# ----------------------------------------------------------------------------------------------


@given(seed=seeds, kind=st.sampled_from(G.GENERATOR_LOSSES))
def test_loss_gradients_match_central_differences(seed, kind):
    rng = np.random.default_rng(seed)
    real, fake = 3.0 * rng.standard_normal(4), 3.0 * rng.standard_normal(3)

    def disc_forward(inputs):
        loss, cache = G.discriminator_loss_forward(inputs["real"], inputs["fake"])
        return np.array(loss), cache

    def disc_backward(dloss, cache):
        d_real, d_fake = G.discriminator_loss_backward(float(dloss), cache)
        return {"real": d_real, "fake": d_fake}

    assert_vjp(disc_forward, disc_backward, {"real": real, "fake": fake}, seed, "discriminator_loss")

    def gen_forward(inputs):
        loss, cache = G.generator_loss_forward(inputs["fake"], kind)
        return np.array(loss), cache

    assert_vjp(gen_forward, lambda d, c: {"fake": G.generator_loss_backward(float(d), c)}, {"fake": fake}, seed,
               f"generator_loss {kind}")


@given(seed=seeds, pack=st.sampled_from([1, 2]), gen_output=st.sampled_from(["linear", "sigmoid"]))
def test_network_gradients_match_central_differences(seed, pack, gen_output):
    """G and D, with respect to their input and every parameter at once (one random direction)."""
    rng = np.random.default_rng(seed)
    config, params = small_gan(rng, pack, gen_output)
    gen = {k: v for k, v in params.items() if k.startswith("gen.")}
    disc = {k: v for k, v in params.items() if k.startswith("disc.")}

    def gen_forward(inputs):
        return G.generator_forward(inputs["z"], {**params, **{k: inputs[k] for k in gen}}, config)

    def gen_backward(dx, cache):
        dz, grads = G.generator_backward(dx, cache)
        return {"z": dz, **grads}

    assert_vjp(gen_forward, gen_backward, {"z": rng.standard_normal((4, 2)), **gen}, seed, "generator")

    def disc_forward(inputs):
        return G.discriminator_forward(inputs["x"], {**params, **{k: inputs[k] for k in disc}}, config)

    def disc_backward(dlogits, cache):
        dx, grads = G.discriminator_backward(dlogits, cache)
        return {"x": dx, **grads}

    assert_vjp(disc_forward, disc_backward, {"x": rng.standard_normal((4, 3)), **disc}, seed, "discriminator")


@pytest.mark.parametrize("kind", G.GENERATOR_LOSSES)
@pytest.mark.parametrize("pack", [1, 2])
def test_whole_training_step_matches_numerical_gradient(pack, kind):
    """discriminator_step and generator_step: every entry of every parameter's gradient against
    central differences of the step's loss (float64), the whole chain loss → D → G included."""
    rng = np.random.default_rng(10 * pack + len(kind))
    config, params = small_gan(rng, pack, "sigmoid" if kind == "minimax" else "linear")
    x_real, z = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    disc_loss, disc_grads = G.discriminator_step(x_real, z, params, config)
    gen_loss, gen_grads = G.generator_step(z, params, config, kind)
    assert sorted(disc_grads) == sorted(k for k in params if k.startswith("disc."))
    assert sorted(gen_grads) == sorted(k for k in params if k.startswith("gen."))
    for grads, step in ((disc_grads, lambda p: G.discriminator_step(x_real, z, p, config)[0]),
                        (gen_grads, lambda p: G.generator_step(z, p, config, kind)[0])):
        for name, analytic in grads.items():
            def loss_at(value, name=name):
                return step({**params, name: value})

            numeric = numerical_gradient(loss_at, params[name])
            error = relative_error(analytic, numeric)
            assert error < GRADCHECK_RTOL or np.max(np.abs(analytic - numeric)) < 1e-8, (
                f"scratch: the gradient of {name} in a whole {'discriminator' if name.startswith('disc') else 'generator'} "
                f"step (pack {pack}, {kind}) disagrees with central differences: relative error {error:.3g}, "
                f"max abs error {np.max(np.abs(analytic - numeric)):.3g}"
            )


# ----------------------------------------------------------------------------------------------
# Theory: the optimal discriminator and the Jensen-Shannon divergence (Goodfellow et al. 2014, §4)
# ----------------------------------------------------------------------------------------------


counts = st.lists(st.integers(1, 6), min_size=2, max_size=6)


def _expected_value(p_counts, q_counts, d):
    """V(D, G) = E_p[log D] + E_q[log(1 − D)] on K points, through our discriminator loss: each
    point's logit log(D / (1 − D)) repeated as many times as its count, so that the loss's means
    are the expectations under p = counts / Σ counts."""
    logits = np.log(d) - np.log1p(-d)  # (K,)
    return G.value_function(np.repeat(logits, p_counts), np.repeat(logits, q_counts))


def _jsd(p, q):
    m = 0.5 * (p + q)
    return 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))


@given(data=st.data())
def test_value_at_optimal_discriminator_is_minus_log4_plus_twice_jsd(data):
    p_counts = np.array(data.draw(counts, label="p_data counts"))
    q_counts = np.array(data.draw(st.lists(st.integers(1, 6), min_size=len(p_counts), max_size=len(p_counts)), label="p_g counts"))
    p, q = p_counts / p_counts.sum(), q_counts / q_counts.sum()
    d_star = G.optimal_discriminator(p, q)
    value = _expected_value(p_counts, q_counts, d_star)
    assert math.isclose(value, -LOG4 + 2.0 * _jsd(p, q), rel_tol=1e-12, abs_tol=1e-12), \
        f"V(D*, G) = {value!r}, but −log 4 + 2·JSD = {-LOG4 + 2.0 * _jsd(p, q)!r} for p={p}, q={q}"
    # Prop. 1: no other discriminator does better; nudge D* by ±δ at one point
    k = data.draw(st.integers(0, len(p) - 1), label="point")
    for delta in (-1e-3, 1e-3):
        nudged = d_star.copy()
        nudged[k] = min(max(nudged[k] + delta, 1e-6), 1 - 1e-6)
        assert _expected_value(p_counts, q_counts, nudged) <= value + 1e-15, f"D* is not a maximum at point {k}"


@given(p_counts=counts)
def test_value_is_minus_log4_when_generator_matches_data(p_counts):
    p = np.array(p_counts) / np.sum(p_counts)
    d_star = G.optimal_discriminator(p, p)
    np.testing.assert_array_equal(d_star, np.full_like(p, 0.5), err_msg="D* = 1/2 everywhere when p_g = p_data")
    assert math.isclose(_expected_value(p_counts, p_counts, d_star), -LOG4, rel_tol=1e-14)


def test_value_reaches_zero_for_disjoint_supports():
    """JSD = log 2 when the supports do not overlap: V(D*, G) = −log 4 + 2 log 2 = 0."""
    p, q = np.array([0.5, 0.5, 0.0, 0.0]), np.array([0.0, 0.0, 0.25, 0.75])
    np.testing.assert_array_equal(G.optimal_discriminator(p, q), [1.0, 1.0, 0.0, 0.0])
    big = 1e4  # a logit so large that D rounds to exactly 1 or 0: the perfect discriminator
    assert G.value_function(np.full(2, big), np.full(4, -big)) == 0.0


@given(data=st.data())
def test_optimal_discriminator_formula(data):
    p_data = data.draw(floats(np.float64, (5,), bound=3.0).map(np.abs), label="p_data")
    p_g = data.draw(floats(np.float64, (5,), bound=3.0).map(np.abs), label="p_g")
    d_star = G.optimal_discriminator(p_data, p_g)
    total = p_data + p_g
    for i in range(5):
        expected = 0.5 if total[i] == 0 else p_data[i] / total[i]
        assert d_star[i] == expected, f"D*[{i}] = {d_star[i]!r}, expected p_data / (p_data + p_g) = {expected!r}"


# ----------------------------------------------------------------------------------------------
# Why the non-saturating loss (Goodfellow et al. 2014, §3)
# ----------------------------------------------------------------------------------------------


def test_minimax_gradient_vanishes_as_discriminator_rejects_fakes():
    """As D(G(z)) → 0 (logit → −∞) the minimax gradient ∂/∂l log(1 − σ(l)) = −σ(l) → 0 while the
    non-saturating one, ∂/∂l [−log σ(l)] = −(1 − σ(l)), → −1: early in training, when D rejects
    every sample, only the non-saturating loss tells G which way to move."""
    magnitudes = {}
    for kind in G.GENERATOR_LOSSES:
        row = []
        for logit in (0.0, -2.0, -5.0, -10.0, -20.0):
            _, cache = G.generator_loss_forward(np.array([logit]), kind)
            row.append(abs(float(G.generator_loss_backward(1.0, cache)[0])))
        magnitudes[kind] = row
    assert magnitudes["minimax"] == sorted(magnitudes["minimax"], reverse=True), "minimax: shrinks as D(G(z)) → 0"
    assert magnitudes["minimax"][-1] < 1e-8, f"minimax gradient at logit −20 is {magnitudes['minimax'][-1]:.3g}"
    assert magnitudes["non_saturating"] == sorted(magnitudes["non_saturating"]), "non-saturating: grows as D(G(z)) → 0"
    assert magnitudes["non_saturating"][-1] > 0.999999, f"non-saturating gradient at −20 is {magnitudes['non_saturating'][-1]}"
    # at D = 1/2 (logit 0) the two agree: both are −1/2
    assert magnitudes["minimax"][0] == magnitudes["non_saturating"][0] == 0.5


# ----------------------------------------------------------------------------------------------
# Bad input: clear errors, the same in every implementation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bad_input_gets_clear_errors(impl):
    module = require(impl, "gan")
    config = G.GANConfig(x_dim=2, z_dim=3, gen_hidden=(4,), disc_hidden=(4,), pack=2)
    params = G.init_gan(config, np.random.default_rng(0))
    ok = np.zeros(4)
    assert_clear_error(impl, "empty logits", lambda: module.discriminator_loss_forward(np.zeros(0), ok), ValueError,
                       ["real_logits", "(0,)"])
    assert_clear_error(impl, "integer logits", lambda: module.generator_loss_forward(np.zeros(3, int), "minimax"),
                       TypeError, ["fake_logits", "int"])
    assert_clear_error(impl, "mixed dtypes", lambda: module.discriminator_loss_forward(ok, ok.astype(np.float32)),
                       TypeError, ["real_logits float64", "fake_logits float32"])
    assert_clear_error(impl, "an unknown loss", lambda: module.generator_loss_forward(ok, "wasserstein"), ValueError,
                       ["kind", "minimax", "non_saturating", "wasserstein"])
    assert_clear_error(impl, "z of the wrong width", lambda: module.generator_forward(np.zeros((4, 2)), params, config),
                       ValueError, ["z", "(B, 3)", "(4, 2)"])
    assert_clear_error(impl, "a batch the pack does not divide",
                       lambda: module.discriminator_forward(np.zeros((3, 2)), params, config), ValueError,
                       ["x", "pack=2", "(3, 2)"])
    assert_clear_error(impl, "densities of different shapes", lambda: module.optimal_discriminator(np.ones(3), np.ones(2)),
                       ValueError, ["p_g", "(3,)", "(2,)"])
    assert_clear_error(impl, "a negative density", lambda: module.optimal_discriminator(-np.ones(2), np.ones(2)),
                       ValueError, ["p_data", "≥ 0"])


def test_bad_config_gets_clear_errors():
    for field, value, fragment in (("pack", 0, "config.pack"), ("gen_hidden", [4], "config.gen_hidden"),
                                   ("gen_output", "tanh", "config.gen_output"), ("z_dim", True, "config.z_dim")):
        with pytest.raises(ValueError, match=fragment):
            G.parameter_shapes(G.GANConfig()._replace(**{field: value}))
