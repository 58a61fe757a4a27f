"""Every port's DCGAN computes what scratch/dcgan.py computes, trains as it trains, and resumes exactly.

(1) Functions: both networks' forward in training and evaluation mode, every gradient of a random
    upstream gradient, batch norm's running statistics after each forward, and whole steps of each
    player (loss, every parameter gradient, the statistics after the step's three or two forwards),
    float64 and float32, on Hypothesis-drawn widths, batches and seeds.
(2) The frameworks' own models (nn.Modules, the tf.Module, the keras.Model of Keras layers) hold the
    scratch weights and statistics exactly after conversion and compute scratch's images and logits;
    one training-mode forward moves their running statistics by scratch's rule (Keras: by Keras's,
    whose moving variance averages biased variances).
(3) Training: 20 steps of scratch, PyTorch and TensorFlow from the same weights, batches and noise give
    the same losses, parameters and running statistics (float64); Keras's train_step, fed the same
    batches and noise, plays the rounds that scratch's gradients say (with SGD: Keras's Adam moves ε).
(4) Runs: stopped at 10 and resumed, every port equals 20 straight; checkpoints move between scratch
    and the ports both ways.
Finite differences through whole steps of each player are in checks/test_dcgan.py.
"""

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.implementations import PORTS, require
from checks.strategies import DTYPES
from checks.test_dcgan import setup
from checks.tolerances import assert_close, assert_like_the_full_call
from scratch import dcgan as DC
from scratch import runs
from scratch.train import DISC_NOISE
from scratch.train_conv import ScratchDCGANTrainer, train_dcgan

pytestmark = pytest.mark.gan

EXAMPLES = max(4, settings.default.max_examples // 5)  # a case runs both networks and both steps: a few suffice


@pytest.fixture(autouse=True)
def one_torch_thread():
    """PyTorch on one thread, as its conv trainers run (ports/torch/train_conv.py): on two busy cores its
    default two threads made these small kernels 30 to 100 times slower."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@st.composite
def dcgan_cases(draw):
    """(config, batch, seed): narrow networks (a failing case stays readable), batches of 2 to 4."""
    config = DC.DCGANConfig(z_dim=draw(st.integers(1, 5)), gen_width=draw(st.integers(1, 3)),
                            disc_width=draw(st.integers(1, 3)), slope=draw(st.sampled_from([0.2, 0.1])))
    return config, draw(st.integers(2, 4)), draw(st.integers(0, 2**16))


def assert_dict_close(impl, what, actual, expected, dtype):
    assert list(actual) == list(expected), f"{impl}: {what} has keys {list(actual)}, scratch gives {list(expected)}"
    for name, value in expected.items():
        assert np.asarray(actual[name]).dtype == np.dtype(dtype), \
            f"{impl}: {what} {name} is {np.asarray(actual[name]).dtype}, the input was {np.dtype(dtype)}"
        assert_close(actual[name], value, impl=impl, what=f"{what} {name}")


def run_networks(module, params, stats, x_real, z, config, rng):
    """Both networks, training then evaluation mode, with a random upstream gradient: every output by name."""
    out = {}
    x, cache = module.generator_forward(z, params, config)
    out["G(z)"] = x
    dz, grads = module.generator_backward(rng.standard_normal(x.shape).astype(x.dtype), cache)
    out["dz"] = dz
    out.update({f"d{k}": v for k, v in grads.items()})
    stats = module.update_stats(stats, cache, config.momentum)
    logits, cache = module.discriminator_forward(x_real, params, config)
    out["D(x)"] = logits
    dx, grads = module.discriminator_backward(rng.standard_normal(logits.shape).astype(logits.dtype), cache)
    out["dx"] = dx
    out.update({f"d{k}": v for k, v in grads.items()})
    stats = module.update_stats(stats, cache, config.momentum)
    out.update(stats)
    out["G(z), evaluation mode"] = module.generator_forward(z, params, config, stats)[0]
    out["D(x), evaluation mode"] = module.discriminator_forward(x_real, params, config, stats)[0]
    return out


def run_steps(module, params, stats, x_real, z, config, kind):
    """One discriminator step, then one generator step on its statistics."""
    d_loss, d_grads, stats = module.discriminator_step(x_real, z, params, stats, config)
    g_loss, g_grads, stats = module.generator_step(z[::-1].copy(), params, stats, config, kind)
    dtype = z.dtype
    return {"D loss": np.asarray(d_loss, dtype), **{f"d{k}": v for k, v in d_grads.items()},
            "G loss": np.asarray(g_loss, dtype), **{f"d{k}": v for k, v in g_grads.items()}, **stats}


# ----------------------------------------------------------------------------------------------
# (1) Port against scratch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=EXAMPLES)
@given(case=dcgan_cases())
def test_networks_match_scratch(impl, dtype, case):
    """G and D forward (training and evaluation mode), dz, dx, every parameter gradient, running statistics."""
    port = require(impl, "dcgan")
    config, batch, seed = case
    params, stats, x_real, z = setup(config, batch, dtype, seed)
    expected = run_networks(DC, params, stats, x_real, z, config, np.random.default_rng(seed))
    actual = run_networks(port, params, stats, x_real, z, config, np.random.default_rng(seed))
    for name in expected:
        assert_close(actual[name], expected[name], impl=impl, what=name)
        assert np.asarray(actual[name]).dtype == np.dtype(dtype), f"{impl}: {name} became {np.asarray(actual[name]).dtype}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=EXAMPLES)
@given(case=dcgan_cases(), kind=st.sampled_from(["non_saturating", "minimax"]))
def test_steps_match_scratch(impl, dtype, case, kind):
    """discriminator_step and generator_step: losses, every gradient, the statistics after their forwards."""
    port = require(impl, "dcgan")
    config, batch, seed = case
    params, stats, x_real, z = setup(config, batch, dtype, seed)
    expected = run_steps(DC, params, stats, x_real, z, config, kind)
    assert_dict_close(impl, "steps", run_steps(port, params, stats, x_real, z, config, kind), expected, dtype)


@pytest.mark.parametrize("impl", PORTS)
def test_bad_input_names_the_argument_and_shapes(impl):
    port = require(impl, "dcgan")
    config = DC.DCGANConfig(z_dim=3, gen_width=2, disc_width=2)
    params, stats, _, z = setup(config)
    with pytest.raises(ValueError, match=r"z must have shape \(None, 3\), got shape \(3, 4\)"):
        port.generator_forward(np.zeros((3, 4)), params, config)
    with pytest.raises(ValueError, match=r"x must have shape \(None, 1, 28, 28\), got shape \(3, 1, 27, 28\)"):
        port.discriminator_forward(np.zeros((3, 1, 27, 28)), params, config)
    with pytest.raises(ValueError, match="training-mode"):
        port.generator_backward(np.zeros((3, 1, 28, 28)), port.generator_forward(z, params, config, stats)[1])


# ----------------------------------------------------------------------------------------------
# (2) The frameworks' own models
# ----------------------------------------------------------------------------------------------


def native(impl, params, stats, config):
    """(generate(z, training), discriminate(x, training), (params, stats) read back) of the framework's model."""
    if impl == "torch":
        import torch

        from ports.torch.dcgan import from_torch_dcgan, to_torch_dcgan

        generator, discriminator = to_torch_dcgan(params, config, stats)

        def run(module, data, training):
            module.train(training)
            with torch.no_grad():
                return module(torch.from_numpy(data)).numpy()

        return (lambda z, t: run(generator, z, t), lambda x, t: run(discriminator, x, t),
                lambda: from_torch_dcgan(generator, discriminator))
    if impl == "tensorflow":
        from ports.tensorflow.dcgan import from_tf_dcgan, to_tf_dcgan

        gan = to_tf_dcgan(params, config, stats)
        return (lambda z, t: gan.generate(z, training=t).numpy(), lambda x, t: gan.discriminate(x, training=t).numpy(),
                lambda: from_tf_dcgan(gan))
    from ports.keras.dcgan import from_keras_dcgan, to_keras_dcgan

    model = to_keras_dcgan(params, config, stats)
    return (lambda z, t: np.asarray(model.generate(z, training=t)), lambda x, t: np.asarray(model.discriminate(x, training=t)),
            lambda: from_keras_dcgan(model))


def keras_rule(stats, caches, momentum):
    """Keras's BatchNormalization: moving ← (1 − m) moving + m · batch statistic, the variance biased (divided by N)."""
    new = dict(stats)
    for cache in caches:
        for bn, c in cache.batch_norms.items():
            for key, value in (("running_mean", c.mean), ("running_var", c.var)):
                new[f"{bn}.{key}"] = (1.0 - momentum) * new[f"{bn}.{key}"] + momentum * value
    return new


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
def test_native_models_hold_scratch_weights_and_statistics(impl, dtype):
    require(impl, "dcgan")
    config = DC.DCGANConfig(z_dim=4, gen_width=3, disc_width=2)
    params, stats, x_real, z = setup(config, batch=3, dtype=dtype, seed=5)
    rng = np.random.default_rng(6)
    stats = {k: (v + rng.uniform(0.0, 0.5, v.shape)).astype(dtype) for k, v in stats.items()}  # off 0 and 1
    generate, discriminate, read_back = native(impl, params, stats, config)
    back_params, back_stats = read_back()
    for name, value in {**params, **stats}.items():
        np.testing.assert_array_equal({**back_params, **back_stats}[name], value, err_msg=f"{impl}: {name} after the round trip")
    # evaluation mode: the running statistics
    assert_close(generate(z, False), DC.generator_forward(z, params, config, stats)[0], impl=impl, what="native G, eval")
    assert_close(discriminate(x_real, False), DC.discriminator_forward(x_real, params, config, stats)[0], impl=impl,
                 what="native D, eval")
    # training mode: the batch's statistics, and each forward moves the running ones
    x, gen_cache = DC.generator_forward(z, params, config)
    assert_close(generate(z, True), x, impl=impl, what="native G, training mode")
    logits, disc_cache = DC.discriminator_forward(x_real, params, config)
    assert_close(discriminate(x_real, True), logits, impl=impl, what="native D, training mode")
    if impl == "keras":
        expected = keras_rule(stats, [gen_cache, disc_cache], config.momentum)
    else:
        expected = DC.update_stats(DC.update_stats(stats, gen_cache, config.momentum), disc_cache, config.momentum)
    moved = read_back()[1]
    for name, value in expected.items():
        assert_close(moved[name], value, impl=impl, what=f"native {name} after one training-mode forward of each")


# ----------------------------------------------------------------------------------------------
# (3) Training trajectories
# ----------------------------------------------------------------------------------------------

STEPS = 20
TINY = DC.DCGANConfig(z_dim=4, gen_width=2, disc_width=2)


def trainer_class(impl):
    if impl == "scratch":
        return ScratchDCGANTrainer
    require(impl, "dcgan")
    return importlib.import_module(f"ports.{impl}.train_conv").CONV_TRAINERS["gan:conv"]


def trajectory(impl, kind):
    trainer = trainer_class(impl)(TINY, "mnist", 3, STEPS, batch_size=8, lr=2e-3, lr_end=5e-4, kind=kind, dtype=np.float64)
    losses = []
    for step in range(1, STEPS + 1):
        trainer.train_step(step)
        losses.append(trainer.last_losses)
    return np.array(losses), trainer.state()  # (STEPS, 2): D's and G's loss


@pytest.mark.parametrize("kind", ["non_saturating", "minimax"])
@pytest.mark.parametrize("impl", ["torch", "tensorflow"])
def test_training_trajectory_equals_scratch(impl, kind):
    """20 Adam steps of each player on the same batches and noise; the rate decays (lr_end < lr)."""
    expected, scratch_state = trajectory("scratch", kind)
    actual, state = trajectory(impl, kind)
    assert np.ptp(expected[:, 1]) > 0.01, "the generator's loss never moved: the check would prove nothing"
    assert_close(actual, expected, impl=impl, what=f"(D, G) losses of {STEPS} steps ({kind})")
    assert sorted(state) == sorted(scratch_state), f"{impl}: the checkpoint's keys are not scratch's"
    for name in DC.init_stats(TINY):
        assert not np.array_equal(scratch_state[name], DC.init_stats(TINY)[name]), f"{name} never moved"
    for name, value in scratch_state.items():
        if value.dtype.kind in "iu":  # Adam's step counts
            assert np.array_equal(state[name], value), f"{impl}: {name} is {state[name]}, scratch's {value}"
        else:
            assert_close(state[name], value, impl=impl, what=f"{name} after {STEPS} steps ({kind})")


def test_keras_train_step_plays_the_rounds_scratch_gradients_say():
    """The keras.Model's own train_step (compiled, as fit runs it), fed scratch's batches and noise, with SGD:
    each round is one step of D along scratch's discriminator_step gradient, then one of G along
    generator_step's; the moving statistics follow Keras's rule (biased variances)."""
    port = require("keras", "dcgan")
    import keras
    import tensorflow as tf

    trainer = ScratchDCGANTrainer(TINY, "mnist", 3, STEPS, batch_size=8, dtype=np.float64)
    params, stats = trainer.params, trainer.stats
    model = port.to_keras_dcgan(params, TINY, stats)
    lr = 0.125  # exact in float32, where Keras keeps the learning rate
    model.compile(d_optimizer=keras.optimizers.SGD(lr), g_optimizer=keras.optimizers.SGD(lr))
    step_fn = tf.function(lambda x, zd, zg: model.train_step(((x, zd, zg),)), autograph=False)
    keras_stats = dict(stats)
    for step in range(1, 6):
        x_real, z_disc, z_gen = trainer.real_batch(step), trainer.noise(step, DISC_NOISE), trainer.noise(step, runs.TRAIN_NOISE)
        model.reset_metrics()
        logs = step_fn(*(tf.constant(a) for a in (x_real, z_disc, z_gen)))
        x_fake, gen_cache = DC.generator_forward(z_disc, params, TINY)
        caches = [gen_cache, DC.discriminator_forward(x_real, params, TINY)[1], DC.discriminator_forward(x_fake, params, TINY)[1]]
        d_loss, grads, _ = DC.discriminator_step(x_real, z_disc, params, stats, TINY)
        params = {k: v - lr * grads[k] if k in grads else v for k, v in params.items()}
        x_fake, gen_cache = DC.generator_forward(z_gen, params, TINY)
        caches += [gen_cache, DC.discriminator_forward(x_fake, params, TINY)[1]]
        g_loss, grads, _ = DC.generator_step(z_gen, params, stats, TINY)
        params = {k: v - lr * grads[k] if k in grads else v for k, v in params.items()}
        keras_stats = keras_rule(keras_stats, caches, TINY.momentum)
        for name, value in (("d_loss", d_loss), ("g_loss", g_loss)):  # Keras metrics are float32
            assert_close(np.float64(logs[name]), np.float64(value), impl="keras", what=f"round {step} {name}", dtype=np.float32)
    got_params, got_stats = port.from_keras_dcgan(model)
    for name, value in {**params, **keras_stats}.items():
        assert_close({**got_params, **got_stats}[name], value, impl="keras train_step", what=f"{name} after 5 rounds")


def test_keras_fit_draws_its_own_noise_from_the_model_seed():
    """fit(x), keras-io's way: the noise of each round is keras.random's, which a SeedGenerator of the same seed replays."""
    port = require("keras", "dcgan")
    import keras

    params, stats, x_real, _ = setup(TINY, batch=4)
    model = port.to_keras_dcgan(params, TINY, stats, seed=7)
    lr = 0.125
    model.compile(d_optimizer=keras.optimizers.SGD(lr), g_optimizer=keras.optimizers.SGD(lr))
    # fit's data adapter hands float64 data over as float32: data that float32 holds exactly keeps this a float64 check
    x_real = x_real.astype(np.float32).astype(np.float64)
    history = model.fit(x_real, epochs=2, batch_size=len(x_real), shuffle=False, verbose=0).history
    seeds = keras.random.SeedGenerator(7)
    for epoch in range(2):
        z_disc, z_gen = (np.asarray(keras.random.normal((4, TINY.z_dim), dtype="float64", seed=seeds)) for _ in range(2))
        d_loss, grads, stats = DC.discriminator_step(x_real, z_disc, params, stats, TINY)
        params = {k: v - lr * grads[k] if k in grads else v for k, v in params.items()}
        g_loss, grads, stats = DC.generator_step(z_gen, params, stats, TINY)
        params = {k: v - lr * grads[k] if k in grads else v for k, v in params.items()}
        assert_close(np.float64(history["d_loss"][epoch]), np.float64(d_loss), impl="keras fit", what=f"epoch {epoch} d_loss",
                     dtype=np.float32)
        assert_close(np.float64(history["g_loss"][epoch]), np.float64(g_loss), impl="keras fit", what=f"epoch {epoch} g_loss",
                     dtype=np.float32)
    for name, value in port.from_keras_dcgan(model)[0].items():
        assert_close(value, params[name], impl="keras fit", what=f"{name} after 2 epochs")


# ----------------------------------------------------------------------------------------------
# (4) Runs: exact resume, and checkpoints that move between implementations
# ----------------------------------------------------------------------------------------------


def run_args(out, steps, resume=False, dtype="float32", eval_every=10):
    return SimpleNamespace(data="mnist", steps=steps, decay_steps=20, seed=1, out=str(out), resume=resume, eval_every=eval_every,
                           batch_size=8, lr=2e-3, lr_end=1e-3, disc_steps=1, loss="non_saturating", dtype=dtype,
                           z_dim=4, width=2, quiet=True)


@pytest.mark.parametrize("impl", PORTS)
def test_run_resumes_exactly(impl, tmp_path):
    trainer = trainer_class(impl)
    train_dcgan(run_args(tmp_path / "straight", 20), trainer)
    train_dcgan(run_args(tmp_path / "stopped", 10), trainer)
    train_dcgan(run_args(tmp_path / "stopped", 20, resume=True), trainer)
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b)
    assert {"gen.bn1.running_mean", "disc.bn2.running_var", "optim.gen.m.gen.W2", "optim.disc.v.disc.W1"} <= set(a)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{impl}: {name} differs after resuming"
    samples = [np.load(tmp_path / d / "samples.npy", allow_pickle=False) for d in ("straight", "stopped")]
    np.testing.assert_array_equal(samples[0], samples[1], err_msg=f"{impl}: samples.npy differs after resuming")


@pytest.mark.parametrize("impl", PORTS)
def test_checkpoints_move_between_scratch_and_the_port(impl, tmp_path):
    """4 steps in one implementation, 4 more in the other: the same run as 8 straight in scratch (float64)
    for torch and TensorFlow; Keras (its own Adam) reads scratch's checkpoint and writes one scratch resumes."""
    port = trainer_class(impl)
    args = lambda out, steps, resume=False: run_args(tmp_path / out, steps, resume, "float64", eval_every=4)  # noqa: E731
    train_dcgan(args("scratch", 8))
    train_dcgan(args("port-then-scratch", 4), port)
    train_dcgan(args("port-then-scratch", 8, resume=True))
    train_dcgan(args("scratch-then-port", 4))
    train_dcgan(args("scratch-then-port", 8, resume=True), port)
    expected = runs.load_checkpoint(tmp_path / "scratch" / runs.CHECKPOINT)
    for order in ("port-then-scratch", "scratch-then-port"):
        got = runs.load_checkpoint(tmp_path / order / runs.CHECKPOINT)
        assert sorted(got) == sorted(expected), f"{impl} ({order}): the checkpoint's keys are not scratch's"
        assert int(got["run.step"]) == 8, f"{impl} ({order}): the resumed run stopped at step {int(got['run.step'])}"
        if impl == "keras":
            continue
        for name in DC.parameter_shapes(TINY).keys() | DC.init_stats(TINY).keys():
            assert_close(got[name], expected[name], impl=impl, what=f"{name} after 4 + 4 steps ({order})")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", ("scratch",) + PORTS)
def test_discriminator_backward_without_the_input_gradient(impl, dtype):
    """needs_input_grad=False, as D's own step asks: dx is None, every parameter gradient is the full backward's
    (scratch: the same bits; a port: scratch's within the tolerance). A fresh forward for each backward: a
    TensorFlow tape is read once."""
    module = require(impl, "dcgan")
    config = DC.DCGANConfig(z_dim=3, gen_width=2, disc_width=3)
    params, _, x_real, _ = setup(config, 3, dtype, seed=5)
    dlogits = np.random.default_rng(6).standard_normal(3).astype(dtype)
    _, expected = DC.discriminator_backward(dlogits, DC.discriminator_forward(x_real, params, config)[1])
    dx, grads = module.discriminator_backward(dlogits, module.discriminator_forward(x_real, params, config)[1],
                                              needs_input_grad=False)
    assert dx is None, f"{impl}: needs_input_grad=False still returned a dx of shape {np.shape(dx)}"
    assert_like_the_full_call(impl, "D backward without dx", grads, expected, dtype)
    with pytest.raises(TypeError, match="needs_input_grad must be True or False"):
        module.discriminator_backward(dlogits, module.discriminator_forward(x_real, params, config)[1],
                                      needs_input_grad="no")
