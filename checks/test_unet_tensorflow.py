"""The digit U-Net (scratch/unet.py) in TensorFlow: ports/tensorflow/unet.py and its guided trainer equal scratch's.

(a) The tf.Module, fed scratch's weights, predicts scratch's ε̂ and gives every parameter scratch's
hand-written gradient, float64 and float32, with words and with ∅ on every row. The weights are
perturbed: scratch starts the last convolution of every block at zero, and a zero weight hides
the gradient of everything before it. (b) to_tf_unet and from_tf_unet move the weights both ways
bit for bit. (c) --data mnist in TensorFlow takes scratch/guidance.py's Adam steps on the same
batches and dropped words, its checkpoint is scratch's layout, and each resumes the other's.
(d) float32 stays float32 through the trainer's chunked ε prediction. Small U-Nets, 8×8 images
for the module, 28×28 digits (the data) for the trainer.
"""

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from checks.implementations import require
from checks.strategies import DTYPES
from checks.test_diffusion_ports import DTYPE_IDS, assert_same, assert_same_dict
from checks.tolerances import assert_clear_error, assert_close
from scratch import unet as U
from scratch.train_conv import single_threaded_blas

pytestmark = pytest.mark.diffusion

CONFIG = U.UNetConfig(channels=(4, 6, 8), emb_dim=6, time_dim=5, groups=2, num_steps=50)  # "dec" and "enc" differ: skip convs
TRAINER_CONFIG = U.UNetConfig(channels=(4, 8, 8), emb_dim=8, time_dim=8, groups=2, num_steps=1000)
TRAINER_OPTIONS = dict(decay_steps=12, batch_size=4, lr=2e-3, p_uncond=0.5, config=TRAINER_CONFIG)


def perturbed_unet(config, rng, dtype):
    """scratch's initial weights plus N(0, 0.1²) noise: no parameter left at zero or one."""
    return {k: v + (0.1 * rng.standard_normal(v.shape)).astype(dtype) for k, v in U.init_unet(config, rng, dtype).items()}


# ----------------------------------------------------------------------------------------------
# (a) forward and every parameter's gradient, (b) the converters
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), size=st.sampled_from([4, 8]))
def test_tensorflow_unet_matches_scratch(dtype, seed, batch, size):
    """ports/tensorflow/unet.py's forward and tape, on scratch's perturbed weights: scratch's ε̂ and gradients,
    with drawn words (∅ among them) and with cond None (∅ on every row)."""
    port = require("tensorflow", "unet")
    rng = np.random.default_rng(seed)
    params = perturbed_unet(CONFIG, rng, dtype)
    x_t = rng.standard_normal((batch, 1, size, size)).astype(dtype)
    t = rng.integers(0, CONFIG.num_steps, batch)
    d_eps = rng.standard_normal(x_t.shape).astype(dtype)
    for what, cond in (("words", rng.integers(0, U.NULL + 1, batch)), ("cond None", None)):
        eps_pred, cache = port.unet_forward(params, x_t, t, CONFIG, cond)
        expected, expected_cache = U.unet_forward(params, x_t, t, CONFIG, cond)
        assert_same("tensorflow", f"unet_forward ({what})", eps_pred, expected, dtype)
        assert_same_dict("tensorflow", f"unet_backward ({what})", port.unet_backward(d_eps, cache),
                         U.unet_backward(d_eps, expected_cache), dtype)


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
def test_tensorflow_unet_module_holds_the_scratch_weights(dtype):
    """to_tf_unet then from_tf_unet gives back every array bit for bit, and the tf.Module, called the TensorFlow
    way (tensors in, cond None for ∅), predicts scratch's ε̂."""
    import tensorflow as tf

    port = require("tensorflow", "unet")
    rng = np.random.default_rng(7)
    params = perturbed_unet(CONFIG, rng, dtype)
    module = port.to_tf_unet(params, CONFIG)
    back = port.from_tf_unet(module)
    assert list(back) == list(U.parameter_shapes(CONFIG)), f"tensorflow: from_tf_unet gives keys {list(back)}"
    for name, value in params.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), \
            f"tensorflow: {name} is not the same after to_tf_unet and from_tf_unet"
    x_t = rng.standard_normal((2, 1, 8, 8)).astype(dtype)
    t, cond = np.array([3, 41]), np.array([7, U.NULL])
    for what, c in (("words", cond), ("cond None", None)):
        predicted = module(tf.constant(x_t), tf.constant(t), None if c is None else tf.constant(c)).numpy()
        assert_same("tensorflow", f"the UNet module's prediction ({what})", predicted,
                    U.unet_forward(params, x_t, t, CONFIG, c)[0], dtype)


def test_tensorflow_unet_refuses_a_layout_that_is_not_scratchs():
    port = require("tensorflow", "unet")
    params = U.init_unet(CONFIG, np.random.default_rng(0))
    wrong = {**params, "unet.conv_in.w": params["unet.conv_in.w"].transpose(2, 3, 1, 0)}  # HWIO, TensorFlow's own
    assert_clear_error("tensorflow", "an HWIO conv weight", lambda: port.to_tf_unet(wrong, CONFIG), ValueError,
                       ["unet.conv_in.w", "(4, 1, 3, 3)", "(3, 3, 1, 4)"])
    missing = {k: v for k, v in params.items() if k != "unet.word.table"}
    assert_clear_error("tensorflow", "a missing word table", lambda: port.to_tf_unet(missing, CONFIG), ValueError,
                       ["unet.word.table"])


# ----------------------------------------------------------------------------------------------
# (c) the guided trainer, (d) its float32 prediction
# ----------------------------------------------------------------------------------------------


def tf_trainer(**options):
    require("tensorflow", "unet")
    from ports.tensorflow.train_diffusion import DIFFUSION_TRAINERS

    return DIFFUSION_TRAINERS["diffusion"]("mnist", 2, **{**TRAINER_OPTIONS, **options})


def test_the_tensorflow_guided_digit_trainer_follows_scratchs():
    """--data mnist in TensorFlow: ports/tensorflow/unet.py's UNet on scratch/guidance.py's batches, words dropped
    to ∅ on the same rows, takes scratch's 6 Adam steps (float64, a small U-Net); its checkpoint resumes in
    scratch, and scratch's in it."""
    from scratch.guidance import GuidedDigitTrainer

    with single_threaded_blas():
        port = tf_trainer(dtype=np.float64)
        assert type(port).__name__ == "TensorFlowGuidedDigitTrainer", f"tensorflow: --data mnist gets {type(port)}"
        scratch = GuidedDigitTrainer("mnist", 2, **TRAINER_OPTIONS, dtype=np.float64)
        expected = np.array([scratch.train_step(step) for step in range(1, 7)])
        actual = np.array([port.train_step(step) for step in range(1, 7)])
        assert len(set(expected.round(6))) > 1, "scratch's losses do not change: the check would prove nothing"
        assert_close(actual, expected, impl="tensorflow", what="losses of 6 guided U-Net steps (float64)")
        state, want = port.state(), scratch.state()
        assert sorted(state) == sorted(want), f"tensorflow: its checkpoint differs in {sorted(set(state) ^ set(want))}"
        for name, value in want.items():  # the weights and Adam's t, m and v, in scratch's layout
            assert state[name].dtype == value.dtype, f"tensorflow: {name} is {state[name].dtype}, scratch's {value.dtype}"
            if value.dtype.kind == "f":
                assert_close(state[name], value, impl="tensorflow", what=f"{name} after 6 steps")
            else:
                assert np.array_equal(state[name], value), f"tensorflow: {name} is {state[name]}, scratch's {value}"
        for name, value in port.params.items():  # what scratch's guided DDIM samples from
            assert_close(value, want[name], impl="tensorflow", what=f"params[{name!r}] after 6 steps")
        resumed = GuidedDigitTrainer("mnist", 2, **TRAINER_OPTIONS, dtype=np.float64)  # the TensorFlow checkpoint
        resumed.load_state(state)
        continued = tf_trainer(dtype=np.float64)  # scratch's checkpoint, continued in TensorFlow
        continued.load_state(want)
        expected = np.array([scratch.train_step(step) for step in range(7, 9)])
        assert_close(np.array([resumed.train_step(step) for step in range(7, 9)]), expected, impl="tensorflow",
                     what="scratch's steps 7 and 8 from the TensorFlow checkpoint")
        assert_close(np.array([continued.train_step(step) for step in range(7, 9)]), expected, impl="tensorflow",
                     what="TensorFlow's steps 7 and 8 from scratch's checkpoint")


def test_the_guided_trainers_eps_stays_float32():
    """A float32 run predicts ε in float32, CHUNK images a forward, and equals scratch's float32 prediction
    on 150 evaluation digits (two chunks), with their words and with ∅."""
    from scratch import diffusion as Df
    from scratch.guidance import CHUNK, GuidedDigitTrainer

    with single_threaded_blas():
        port = tf_trainer(dtype=np.float32)
        scratch = GuidedDigitTrainer("mnist", 2, **TRAINER_OPTIONS, dtype=np.float32)
        state = {**port.state(), **perturbed_unet(TRAINER_CONFIG, np.random.default_rng(5), np.float32)}
        for trainer in (port, scratch):  # weights away from the zero-initialised convolutions, the same in both
            trainer.load_state(state)
        x0, t, eps, cond = (a[:150] for a in scratch.eval_batch)
        assert len(x0) > CHUNK, "the batch must span two chunks"
        x_t = Df.q_sample(x0, t, eps, scratch.alphas_cumprod)  # (150, 1, 28, 28) float32
        for what, c in (("words", cond), ("cond None", None)):
            assert_same("tensorflow", f"the guided trainer's ε̂ ({what})", port._eps(x_t, t, c), scratch._eps(x_t, t, c),
                        np.float32)


def test_the_mlp_trainer_refuses_cond_and_the_unet_takes_word_ids():
    """The mixtures' MLP is unconditional: cond is an error, not ignored; the U-Net's cond must be integer ids."""
    require("tensorflow", "unet")
    from ports.tensorflow.train_diffusion import DIFFUSION_TRAINERS

    mlp = DIFFUSION_TRAINERS["diffusion"]("ring", 0, decay_steps=4, batch_size=8, dtype=np.float64)
    assert type(mlp).__name__ == "TensorFlowDiffusionTrainer", f"tensorflow: --data ring gets {type(mlp)}"
    x, t = np.zeros((2, 2)), np.array([1, 2])
    assert_clear_error("tensorflow", "cond given to the MLP", lambda: mlp._eps(x, t, np.array([1, 2])), ValueError,
                       ["unconditional", "cond must be None"])
    unet = tf_trainer(dtype=np.float32)
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert_clear_error("tensorflow", "float word ids", lambda: unet._eps(x, t, np.array([1.0, 2.0])), TypeError,
                       ["cond", "float64"])
