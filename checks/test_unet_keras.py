"""The Keras digit U-Net (ports/keras/unet.py) computes and learns what scratch/unet.py and scratch/guidance.py do.

Its keras.Model of Keras layers (Conv2D channels last, GroupNormalization, Dense, Embedding, UpSampling2D)
predicts scratch's ε̂ and gives every parameter scratch's hand-written gradient, float64 and float32, with
words and with ∅ for every row; the converters carry the scratch weights there and back to the bit (the
convolution kernels transposed to Keras's (kh, kw, C_in, C_out) on the way); and the guided digit trainer
(ports/keras/train_diffusion.py) takes scratch's Adam steps on scratch's batches and dropped words, as the
Keras MLP trainer does (checks/test_diffusion_port_training.py holds it to scratch's losses), its checkpoint
is in scratch's layout, and each resumes from the other's. Keras models take a few tenths of a second to
build, so the U-Nets are tiny (8×8 images in the forward checks) and the trainers take a handful of steps.
"""

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import Phase, given, settings

from checks.implementations import require
from checks.strategies import DTYPES
from checks.test_diffusion_ports import assert_same, assert_same_dict
from checks.tolerances import assert_close
from scratch import unet as U

pytestmark = pytest.mark.diffusion

DTYPE_IDS = {"ids": lambda d: np.dtype(d).name}
# every width different (c1, c2, c3, E, S), so a transposed axis cannot pass; "dec" has a 1×1 skip, "enc" none
CONFIG = U.UNetConfig(channels=(4, 6, 8), emb_dim=6, time_dim=5, groups=2, num_steps=50)
# the trainers' U-Net: small enough for a step in a few milliseconds on the 28×28 digits
TRAINER_CONFIG = U.UNetConfig(channels=(4, 8, 8), emb_dim=8, time_dim=8, groups=2, num_steps=1000)
TRAINER_OPTIONS = dict(decay_steps=12, batch_size=4, lr=2e-3, p_uncond=0.5, config=TRAINER_CONFIG)


def keras_unet():
    return require("keras", "unet")


def perturbed_params(config, dtype, rng):
    """init_unet's weights moved off their start: the zero-initialised convolutions would hide their inputs' gradients."""
    return {k: v + (0.1 * rng.standard_normal(v.shape)).astype(dtype) for k, v in U.init_unet(config, rng, dtype).items()}


# ----------------------------------------------------------------------------------------------
# The model: forward and every parameter's gradient, and the converters
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("words", ("given", "none"))
# no shrinking: each example builds a Keras model (tenths of a second), and shrinking a failure took five minutes;
# the falsifying seed, batch and size are readable as drawn
@settings(max_examples=3, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), size=st.sampled_from([4, 8]))
def test_keras_unet_matches_scratch(dtype, words, seed, batch, size):
    """unet_forward / unet_backward (the model's stateless_call, differentiated by autodiff) give scratch's ε̂ and
    scratch's hand-written gradient of every parameter, in the input's dtype, with words and with cond=None."""
    port = keras_unet()
    rng = np.random.default_rng(seed)
    params = perturbed_params(CONFIG, dtype, rng)
    x_t = rng.standard_normal((batch, 1, size, size)).astype(dtype)  # (B, 1, H, W)
    t = rng.integers(0, CONFIG.num_steps, batch)
    cond = rng.integers(0, U.NULL + 1, batch) if words == "given" else None  # words and ∅, or every row ∅
    d_eps = rng.standard_normal(x_t.shape).astype(dtype)  # a random upstream gradient: no sum hides an error
    eps_pred, cache = port.unet_forward(params, x_t, t, CONFIG, cond)
    expected, expected_cache = U.unet_forward(params, x_t, t, CONFIG, cond)
    assert_same("keras", f"unet_forward (cond {words})", eps_pred, expected, dtype)
    assert_same_dict("keras", f"unet_backward (cond {words})", port.unet_backward(d_eps, cache),
                     U.unet_backward(d_eps, expected_cache), dtype)


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
def test_keras_unet_holds_the_scratch_weights(dtype):
    """to_keras_unet then from_keras_unet gives back every array to the bit, in its dtype; the model holds each
    kernel in Keras's layout; and the model called the Keras way, model((x_t, t), cond=…), predicts scratch's ε̂."""
    port = keras_unet()
    rng = np.random.default_rng(1)
    params = perturbed_params(CONFIG, dtype, rng)
    model = port.to_keras_unet(params, CONFIG)
    back = port.from_keras_unet(model)
    assert list(back) == list(U.parameter_shapes(CONFIG)), f"keras: from_keras_unet's keys are {list(back)}"
    for name, value in params.items():
        assert back[name].dtype == value.dtype, f"keras: {name} comes back {back[name].dtype}, it went in {value.dtype}"
        assert np.array_equal(back[name], value), f"keras: {name} changed in the round trip"
    assert len(model.trainable_variables) == len(params), \
        f"keras: the model has {len(model.trainable_variables)} trainable variables, scratch {len(params)} parameters"
    kernel = port.parameter_map(model)["unet.enc.conv1.w"].numpy()
    assert np.array_equal(kernel, params["unet.enc.conv1.w"].transpose(2, 3, 1, 0)), \
        f"keras: Conv2D's kernel should be scratch's (C_out, C_in, kh, kw) as (kh, kw, C_in, C_out), got {kernel.shape}"
    x_t = rng.standard_normal((3, 1, 8, 8)).astype(dtype)
    t, cond = rng.integers(0, CONFIG.num_steps, 3), rng.integers(0, U.NULL + 1, 3)
    for given_cond in (cond, None):
        assert_same("keras", f"UNet.__call__ (cond {'given' if given_cond is not None else None})",
                    np.asarray(model((x_t, t), cond=given_cond)), U.unet_forward(params, x_t, t, CONFIG, given_cond)[0], dtype)
    with pytest.raises(ValueError, match="unet.conv_out.b"):
        port.to_keras_unet({k: v for k, v in params.items() if k != "unet.conv_out.b"}, CONFIG)


# ----------------------------------------------------------------------------------------------
# The guided digit trainer: scratch's trajectory, scratch's checkpoint
# ----------------------------------------------------------------------------------------------


def keras_trainer(data, seed, **options):
    require("keras", "unet")
    from ports.keras.train_diffusion import DIFFUSION_TRAINERS

    return DIFFUSION_TRAINERS["diffusion"](data, seed, **options)


def copied(state):
    return {name: np.array(value) for name, value in state.items()}  # scratch's state() hands out its live arrays


def test_the_keras_guided_digit_trainer_follows_scratchs():
    """--data mnist in Keras: the UNet inside GuidedDenoisingDiffusion, trained by train_on_batch with the port's
    Adam on scratch/guidance.py's batches and dropped words, takes scratch's 6 Adam steps (float64); its checkpoint
    has scratch's keys, dtypes and values (Adam's moments in scratch's layout), scratch continues from it and it
    from scratch's; its evaluation (words, and ∅ for every row) is scratch's."""
    from scratch.guidance import GuidedDigitTrainer

    options = dict(TRAINER_OPTIONS, dtype=np.float64)
    scratch, port = GuidedDigitTrainer("mnist", 2, **options), keras_trainer("mnist", 2, **options)
    assert type(port).__name__ == "KerasGuidedDigitTrainer", f"keras: --data mnist built a {type(port).__name__}"
    assert type(keras_trainer("ring", 2, decay_steps=4, batch_size=8)).__name__ == "KerasDiffusionTrainer"
    expected = np.array([scratch.train_step(step) for step in range(1, 7)])
    actual = np.array([port.train_step(step) for step in range(1, 7)])
    assert len(set(expected.round(6))) > 1, "scratch's losses do not change: the check would prove nothing"
    assert_close(actual, expected, impl="keras", what="losses of 6 guided U-Net steps (float64)")
    state, want = port.state(), copied(scratch.state())
    assert sorted(state) == sorted(want), f"keras: its checkpoint differs in {sorted(set(state) ^ set(want))}"
    for name, value in want.items():  # the weights and Adam's t, m and v, in scratch's layout
        assert state[name].dtype == value.dtype, f"keras: {name} is {state[name].dtype}, scratch's {value.dtype}"
        if value.dtype.kind == "f":
            assert_close(state[name], value, impl="keras", what=f"{name} after 6 steps")
        else:
            assert np.array_equal(state[name], value), f"keras: {name} is {state[name]}, scratch's {value}"
    figures, scratch_figures = port.evaluate(), scratch.evaluate()
    for key in ("eval_loss", "eval_loss_null"):
        assert_close(np.array(figures[key]), np.array(scratch_figures[key]), impl="keras", what=f"{key} after 6 steps")

    resumed = GuidedDigitTrainer("mnist", 2, **options)  # the Keras checkpoint, continued in scratch
    resumed.load_state(state)
    port_from_scratch = keras_trainer("mnist", 2, **options)  # scratch's checkpoint, continued in Keras
    port_from_scratch.load_state(want)
    then = np.array([scratch.train_step(step) for step in range(7, 9)])
    assert_close(np.array([resumed.train_step(step) for step in range(7, 9)]), then, impl="keras",
                 what="scratch's steps 7 and 8 from the Keras checkpoint")
    assert_close(np.array([port_from_scratch.train_step(step) for step in range(7, 9)]), then, impl="keras",
                 what="the Keras steps 7 and 8 from scratch's checkpoint")


def test_the_keras_guided_digit_trainer_keeps_float32():
    """float32 in, float32 throughout: the model's variables, Adam's moments, the checkpoint, the predictions
    and the sampling weights (`params`); nothing upcast to float64, nothing cast to Keras's floatx behind it."""
    port = keras_trainer("mnist", 2, **TRAINER_OPTIONS, dtype=np.float32)
    losses = [port.train_step(step) for step in (1, 2)]
    assert np.all(np.isfinite(losses)), f"keras: float32 losses {losses}"
    kinds = {variable.path: variable.dtype for variable in port.denoiser_model.variables}
    wrong = {path: dtype for path, dtype in kinds.items() if dtype != "float32"}
    assert not wrong, f"keras: {len(wrong)} U-Net variables are not float32, e.g. {dict(list(wrong.items())[:3])}"
    state = port.state()
    wrong = {name: value.dtype for name, value in state.items() if value.dtype.kind == "f" and value.dtype != np.float32}
    assert not wrong, f"keras: {len(wrong)} checkpoint arrays are not float32, e.g. {dict(list(wrong.items())[:3])}"
    wrong = {name: value.dtype for name, value in port.params.items() if value.dtype != np.float32}
    assert not wrong, f"keras: {len(wrong)} sampling weights are not float32, e.g. {dict(list(wrong.items())[:3])}"
    x0, t, _, cond = port.eval_batch
    for given_cond in (cond[:8], None):
        eps_pred = port._eps(x0[:8], t[:8], given_cond)
        assert eps_pred.dtype == np.float32, f"keras: ε̂ is {eps_pred.dtype} for float32 digits"
