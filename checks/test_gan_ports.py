"""Every port computes what scratch/gan.py computes, and the losses equal the frameworks' own.

Three layers of agreement: (1) every contract op, both networks and both training steps of
every port equal scratch's outputs and gradients, float64 and float32; (2) each framework's own
model (`torch.nn.Module`s, `tf.Module`, `keras.Model`) holds the scratch weights exactly after
conversion and computes the same samples and logits; (3) binary cross-entropy written by other
people (`torch.nn.functional.binary_cross_entropy_with_logits`, Keras's `BinaryCrossentropy`
from logits) gives our losses. At logits of ±1e4, where σ rounds to exactly 0 or 1, every
implementation's losses and gradients stay finite and take their limits.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.implementations import IMPLEMENTATIONS, PORTS, require
from checks.runners import RUNNERS
from checks.strategies import DTYPES, gan_cases, gan_loss_cases
from checks.tolerances import assert_close
from scratch import gan as G

pytestmark = pytest.mark.gan


def assert_all_close(impl, what, actual, expected, dtype):
    assert list(actual) == list(expected), f"{impl}: {what} returned {list(actual)}, scratch returns {list(expected)}"
    for name, value in expected.items():
        assert np.asarray(actual[name]).dtype == np.dtype(dtype), \
            f"{impl}: {what} {name} is {np.asarray(actual[name]).dtype}, input was {np.dtype(dtype)}"
        assert_close(actual[name], value, impl=impl, what=f"{what} {name}")


# ----------------------------------------------------------------------------------------------
# (1) Port against scratch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["discriminator_loss", "generator_loss"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@given(data=st.data())
def test_loss_matches_scratch(impl, dtype, op, data):
    port, scratch = require(impl, "gan"), require("scratch", "gan")
    case = data.draw(gan_loss_cases(dtype), label="case")
    assert_all_close(impl, op, RUNNERS[op](port, case), RUNNERS[op](scratch, case), dtype)


# A network forward and backward costs a few ms in eager TensorFlow; half the profile's examples.
@pytest.mark.parametrize("what", ["generator", "discriminator", "gan_steps"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(data=st.data())
def test_networks_match_scratch(impl, dtype, what, data):
    """G and D forward and backward, and a whole discriminator step and generator step."""
    port, scratch = require(impl, "gan"), require("scratch", "gan")
    case = data.draw(gan_cases(dtype), label="case")
    assert_all_close(impl, what, RUNNERS[what](port, case), RUNNERS[what](scratch, case), dtype)


@pytest.mark.parametrize("impl", PORTS)
def test_optimal_discriminator_matches_scratch(impl):
    rng = np.random.default_rng(0)
    p_data, p_g = rng.uniform(0.0, 2.0, (2, 7))
    p_data[0] = p_g[0] = 0.0  # 0/0: both give the undecided 1/2
    assert_close(require(impl, "gan").optimal_discriminator(p_data, p_g), G.optimal_discriminator(p_data, p_g),
                 impl=impl, what="optimal_discriminator")


# ----------------------------------------------------------------------------------------------
# Saturated logits: σ(±1e4) is exactly 1 or 0 in floating point; log σ must never be taken
# ----------------------------------------------------------------------------------------------

BIG = 1e4


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_losses_at_saturated_logits(impl, dtype):
    module = require(impl, "gan")
    high, low = np.full(2, BIG, dtype=dtype), np.full(3, -BIG, dtype=dtype)

    # A perfect discriminator: real at +1e4, fake at −1e4. −log σ(1e4) = softplus(−1e4) = e^−1e4 = 0.
    loss, cache = module.discriminator_loss_forward(high, low)
    d_real, d_fake = module.discriminator_loss_backward(1.0, cache)
    assert loss == 0.0, f"{impl}: the perfect discriminator's loss is {loss}, expected 0"
    assert np.all(d_real == 0.0) and np.all(d_fake == 0.0), f"{impl}: gradients {d_real}, {d_fake}, expected 0"

    # The worst discriminator: real at −1e4, fake at +1e4. The loss is 2·1e4; the gradients are
    # −1/B_real (push real logits up) and +1/B_fake (push fake logits down), not NaN.
    loss, cache = module.discriminator_loss_forward(-high, -low)
    d_real, d_fake = module.discriminator_loss_backward(1.0, cache)
    assert math.isclose(loss, 2 * BIG, rel_tol=1e-6), f"{impl}: the worst discriminator's loss is {loss}, expected 2e4"
    np.testing.assert_allclose(d_real, -1.0 / 2, rtol=1e-6, err_msg=f"{impl}: d_real_logits")
    np.testing.assert_allclose(d_fake, 1.0 / 3, rtol=1e-6, err_msg=f"{impl}: d_fake_logits")

    # The generator fooled nobody (fake at −1e4): the minimax loss is log(1 − 0) = 0 with gradient
    # exactly 0 (saturated); the non-saturating loss is 1e4 with gradient −1/B.
    loss, cache = module.generator_loss_forward(low, "minimax")
    assert loss == 0.0 and np.all(module.generator_loss_backward(1.0, cache) == 0.0), f"{impl}: minimax at D = 0"
    loss, cache = module.generator_loss_forward(low, "non_saturating")
    assert math.isclose(loss, BIG, rel_tol=1e-6), f"{impl}: non-saturating loss at D = 0 is {loss}, expected 1e4"
    np.testing.assert_allclose(module.generator_loss_backward(1.0, cache), -1.0 / 3, rtol=1e-6,
                               err_msg=f"{impl}: non-saturating gradient at D = 0")

    # The generator fooled everyone (fake at +1e4): minimax loss −1e4 (unbounded below), gradient −1/B.
    loss, cache = module.generator_loss_forward(high, "minimax")
    assert math.isclose(loss, -BIG, rel_tol=1e-6), f"{impl}: minimax loss at D = 1 is {loss}, expected −1e4"
    np.testing.assert_allclose(module.generator_loss_backward(1.0, cache), -1.0 / 2, rtol=1e-6,
                               err_msg=f"{impl}: minimax gradient at D = 1")


# ----------------------------------------------------------------------------------------------
# (3) The frameworks' own binary cross-entropy, from logits
# ----------------------------------------------------------------------------------------------


@given(case=gan_loss_cases(np.float64))
def test_losses_equal_torch_binary_cross_entropy(case):
    """BCE(l, y) = −y log σ(l) − (1 − y) log(1 − σ(l)): D's loss is BCE(real, 1) + BCE(fake, 0);
    the non-saturating G loss is BCE(fake, 1); the minimax G loss is −BCE(fake, 0)."""
    require("torch", "gan")
    import torch

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    real, fake = torch.from_numpy(case.real_logits), torch.from_numpy(case.fake_logits)
    expected = float(bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake)))
    assert math.isclose(G.discriminator_loss_forward(case.real_logits, case.fake_logits)[0], expected, rel_tol=1e-12, abs_tol=1e-12)
    non_saturating = float(bce(fake, torch.ones_like(fake)))
    assert math.isclose(G.generator_loss_forward(case.fake_logits, "non_saturating")[0], non_saturating, rel_tol=1e-12, abs_tol=1e-12)
    minimax = -float(bce(fake, torch.zeros_like(fake)))
    assert math.isclose(G.generator_loss_forward(case.fake_logits, "minimax")[0], minimax, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(case=gan_loss_cases(np.float32))
def test_losses_equal_keras_binary_cross_entropy(case):
    """The same identities with `keras.losses.BinaryCrossentropy(from_logits=True)` (float32)."""
    require("keras", "gan")
    import keras

    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    real, fake = case.real_logits[:, None], case.fake_logits[:, None]
    expected = float(bce(np.ones_like(real), real)) + float(bce(np.zeros_like(fake), fake))
    tol = dict(rel_tol=1e-5, abs_tol=1e-5)
    assert math.isclose(G.discriminator_loss_forward(case.real_logits, case.fake_logits)[0], expected, **tol)
    assert math.isclose(G.generator_loss_forward(case.fake_logits, "non_saturating")[0], float(bce(np.ones_like(fake), fake)), **tol)
    assert math.isclose(G.generator_loss_forward(case.fake_logits, "minimax")[0], -float(bce(np.zeros_like(fake), fake)), **tol)


# ----------------------------------------------------------------------------------------------
# (2) The frameworks' own models
# ----------------------------------------------------------------------------------------------


def native_models(impl, params, config):
    """(generate, discriminate) of the framework's own model built from scratch weights, and its params back."""
    if impl == "torch":
        import torch

        from ports.torch.gan import from_torch_gan, to_torch_gan

        generator, discriminator = to_torch_gan(params, config)
        back = from_torch_gan(generator, discriminator)
        return (lambda z: generator(torch.from_numpy(z)).detach().numpy(),
                lambda x: discriminator(torch.from_numpy(x)).detach().numpy(), back)
    if impl == "tensorflow":
        from ports.tensorflow.gan import from_tf_gan, to_tf_gan

        gan = to_tf_gan(params, config)
        return lambda z: gan.generate(z).numpy(), lambda x: gan.discriminate(x).numpy(), from_tf_gan(gan)
    from ports.keras.gan import from_keras_gan, to_keras_gan

    model = to_keras_gan(params, config)
    return lambda z: np.asarray(model.generate(z)), lambda x: np.asarray(model.discriminate(x)), from_keras_gan(model)


@pytest.mark.parametrize("gen_output,pack", [("linear", 2), ("sigmoid", 1)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
def test_native_models_hold_scratch_weights(impl, dtype, gen_output, pack):
    require(impl, "gan")
    config = G.GANConfig(x_dim=3, z_dim=4, gen_hidden=(5, 6), disc_hidden=(7,), pack=pack, gen_output=gen_output)
    params = G.init_gan(config, np.random.default_rng(1), dtype)
    rng = np.random.default_rng(2)
    z, x = rng.standard_normal((4, 4)).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)
    generate, discriminate, back = native_models(impl, params, config)
    assert sorted(back) == sorted(params), f"{impl}: converted back, the keys are {sorted(back)}"
    for name in params:
        np.testing.assert_array_equal(back[name], params[name], err_msg=f"{impl}: {name} after the round trip")
    assert_close(generate(z), G.generator_forward(z, params, config)[0], impl=impl, what="native generator")
    assert_close(discriminate(x), G.discriminator_forward(x, params, config)[0], impl=impl, what="native discriminator")


@pytest.mark.parametrize("disc_steps", [1, 2])
def test_keras_fit_plays_the_rounds_scratch_gradients_say(disc_steps):
    """model.fit(x) on one full batch with SGD: each epoch is `disc_steps` steps of D along scratch's
    discriminator_step gradient, then one step of G along scratch's generator_step gradient, at
    the noise the model draws, which a fresh SeedGenerator with the same seed reproduces."""
    port = require("keras", "gan")
    import keras

    config = G.GANConfig(x_dim=2, z_dim=3, gen_hidden=(5, 4), disc_hidden=(6,), pack=2)
    params = G.init_gan(config, np.random.default_rng(3), np.float64)
    # fit's data adapter hands the batch over as float32 (Keras's floatx) whatever the array's dtype:
    # data that float32 holds exactly keeps this a float64 check of the model itself
    x = np.random.default_rng(4).standard_normal((8, 2)).astype(np.float32).astype(np.float64)
    model = port.to_keras_gan(params, config, seed=7, disc_steps=disc_steps)
    lr, epochs = 0.125, 2  # exact in float32, where Keras keeps the learning rate
    model.compile(d_optimizer=keras.optimizers.SGD(learning_rate=lr), g_optimizer=keras.optimizers.SGD(learning_rate=lr))
    history = model.fit(x, epochs=epochs, batch_size=len(x), shuffle=False, verbose=0).history
    assert sorted(history) == ["d_loss", "g_loss"], f"keras fit reports {sorted(history)}"
    seeds = keras.random.SeedGenerator(7)
    for epoch in range(epochs):
        for _ in range(disc_steps):
            z = np.asarray(keras.random.normal((len(x), config.z_dim), dtype="float64", seed=seeds))
            d_loss, grads = G.discriminator_step(x, z, params, config)
            params = {k: v - lr * grads[k] if k in grads else v for k, v in params.items()}
        z = np.asarray(keras.random.normal((len(x), config.z_dim), dtype="float64", seed=seeds))
        g_loss, grads = G.generator_step(z, params, config)
        params = {k: v - lr * grads[k] if k in grads else v for k, v in params.items()}
        for name, value in (("d_loss", d_loss), ("g_loss", g_loss)):
            # Keras metrics accumulate in float32, whatever the model's dtype
            assert_close(np.float64(history[name][epoch]), np.float64(value), impl="keras fit",
                         what=f"epoch {epoch} {name}", dtype=np.float32)
    for name, value in port.from_keras_gan(model).items():
        assert_close(value, params[name], impl="keras fit", what=f"{name} after {epochs} rounds")
