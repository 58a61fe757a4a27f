"""Every port's convolutional VAE computes what scratch/conv_vae.py computes, trains as it trains, and resumes exactly.

(1) Functions: the whole pass (loss, the (B,) terms, μ, log σ², z, the logits) and every parameter
    gradient of a random multiple of the loss; the encoder and decoder pairs on their own (random
    upstream gradients, dz included); the decoder's means; float64 and float32 on Hypothesis-drawn
    widths, batches and seeds.
(2) The frameworks' own models (the nn.Module, the tf.Module, the keras.Model of Keras layers) hold the
    scratch weights exactly after conversion and compute scratch's bound and images.
(3) Training: 20 Adam steps of scratch, PyTorch and TensorFlow from the same weights, batches and noise
    give the same losses and parameters (float64); Keras's fit takes the SGD steps scratch's gradients
    say at the ε its Sampling layer draws (a SeedGenerator of the same seed replays them).
(4) Runs: stopped at 10 and resumed, every port equals 20 straight; checkpoints move between scratch and
    the ports both ways.
Finite differences through a whole step, every parameter, are in checks/test_conv_vae.py.
"""

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.implementations import PORTS, require
from checks.strategies import DTYPES
from checks.test_conv_vae import setup
from checks.test_dcgan_ports import one_torch_thread  # noqa: F401  (an autouse fixture: torch on one thread here too)
from checks.tolerances import assert_close
from scratch import conv_vae as CV
from scratch import runs
from scratch.train import load_vae_data
from scratch.train_conv import ScratchConvVAETrainer, train_conv_vae

pytestmark = pytest.mark.vae

EXAMPLES = max(4, settings.default.max_examples // 5)


@st.composite
def conv_vae_cases(draw):
    """(config, batch, seed): narrow networks, batches of 1 to 3."""
    config = CV.ConvVAEConfig(z_dim=draw(st.integers(1, 4)), width=draw(st.integers(1, 3)))
    return config, draw(st.integers(1, 3)), draw(st.integers(0, 2**16))


def run_all(module, params, x, eps, config, rng):
    """The pass, its gradients, the encoder's and decoder's pairs and the means: every output by name."""
    out = {}
    output, cache = module.conv_vae_forward(x, params, eps, config)
    out.update({f"output.{k}": np.asarray(v) for k, v in output._asdict().items()})
    dloss = float(rng.uniform(0.5, 2.0))
    out.update({f"d{k} (whole pass)": v for k, v in module.conv_vae_backward(dloss, cache).items()})
    mu, log_var, caches = module.encode(x, params, config)
    out["encode mu"], out["encode log_var"] = mu, log_var
    grads = module.encode_backward(rng.standard_normal(mu.shape).astype(mu.dtype),
                                   rng.standard_normal(log_var.shape).astype(mu.dtype), caches)
    out.update({f"d{k} (encoder)": v for k, v in grads.items()})
    logits, caches = module.decode(eps, params, config)
    out["decode logits"] = logits
    dz, grads = module.decode_backward(rng.standard_normal(logits.shape).astype(logits.dtype), caches)
    out["dz (decoder)"] = dz
    out.update({f"d{k} (decoder)": v for k, v in grads.items()})
    out["decoded means"] = module.decoded_means(eps, params, config)
    return out


# ----------------------------------------------------------------------------------------------
# (1) Port against scratch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=EXAMPLES)
@given(case=conv_vae_cases())
def test_functions_match_scratch(impl, dtype, case):
    port = require(impl, "conv_vae")
    config, batch, seed = case
    params, x, eps = setup(config, batch, dtype, seed)
    expected = run_all(CV, params, x, eps, config, np.random.default_rng(seed))
    actual = run_all(port, params, x, eps, config, np.random.default_rng(seed))
    assert sorted(actual) == sorted(expected), f"{impl}: outputs {sorted(actual)}, scratch gives {sorted(expected)}"
    for name, value in expected.items():
        if name == "output.loss":  # a Python float
            assert isinstance(actual[name].item(), float)
            assert_close(actual[name], value, impl=impl, what=name, dtype=dtype)
            continue
        assert actual[name].dtype == np.dtype(dtype), f"{impl}: {name} is {actual[name].dtype}, the input was {np.dtype(dtype)}"
        assert_close(actual[name], value, impl=impl, what=name)


@pytest.mark.parametrize("impl", PORTS)
def test_bad_input_names_the_argument_and_shapes(impl):
    port = require(impl, "conv_vae")
    params, x, eps = setup()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 28, 28\), got shape \(3, 784\)"):
        port.conv_vae_forward(x.reshape(3, -1), params, eps, CV.ConvVAEConfig(z_dim=2, width=2))
    with pytest.raises(ValueError, match=r"eps must have shape \(B=3, Z=2\), got shape \(3, 5\)"):
        port.conv_vae_forward(x, params, np.zeros((3, 5)), CV.ConvVAEConfig(z_dim=2, width=2))


# ----------------------------------------------------------------------------------------------
# (2) The frameworks' own models
# ----------------------------------------------------------------------------------------------


def native(impl, params, config):
    """(bound(x, eps) → (loss, elbo, decoded), means(z), params read back) of the framework's own model."""
    if impl == "torch":
        import torch

        from ports.torch.conv_vae import from_torch_conv_vae, to_torch_conv_vae

        module = to_torch_conv_vae(params, config)

        def bound(x, eps):
            with torch.no_grad():
                out = module(torch.from_numpy(x), torch.from_numpy(eps))
            return float(out.loss), out.elbo.numpy(), out.decoded.numpy()

        def means(z):
            with torch.no_grad():
                return torch.sigmoid(module.decode(torch.from_numpy(z)))[:, 0].numpy()

        return bound, means, from_torch_conv_vae(module)
    if impl == "tensorflow":
        from ports.tensorflow.conv_vae import from_tf_conv_vae, to_tf_conv_vae

        vae = to_tf_conv_vae(params, config)

        def bound(x, eps):
            out = vae.elbo(x, eps)
            return float(out.loss), out.elbo.numpy(), out.decoded.numpy()

        return bound, lambda z: vae.decoded_means(z).numpy(), from_tf_conv_vae(vae)
    from ports.keras.conv_vae import from_keras_conv_vae, to_keras_conv_vae

    model = to_keras_conv_vae(params, config)

    def bound(x, eps):
        out = model(x, eps=eps)
        return float(out.loss), np.asarray(out.elbo), np.asarray(out.decoded)

    return bound, lambda z: np.asarray(model.decoded_means(z)), from_keras_conv_vae(model)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
def test_native_models_hold_scratch_weights(impl, dtype):
    require(impl, "conv_vae")
    config = CV.ConvVAEConfig(z_dim=3, width=2)
    params, x, eps = setup(config, batch=2, dtype=dtype, seed=4)
    bound, means, back = native(impl, params, config)
    assert list(back) == list(params), f"{impl}: converted back, the keys are {list(back)}"
    for name, value in params.items():
        np.testing.assert_array_equal(back[name], value, err_msg=f"{impl}: {name} after the round trip")
    output, _ = CV.conv_vae_forward(x, params, eps, config)
    loss, elbo, decoded = bound(x, eps)
    assert_close(np.asarray(loss), np.asarray(output.loss), impl=impl, what="native loss", dtype=dtype)
    assert_close(elbo, output.elbo, impl=impl, what="native ELBO")
    assert_close(decoded, output.decoded, impl=impl, what="native logits")
    assert_close(means(eps), CV.decoded_means(eps, params, config), impl=impl, what="native decoded means")


# ----------------------------------------------------------------------------------------------
# (3) Training trajectories
# ----------------------------------------------------------------------------------------------

STEPS = 20
TINY = CV.ConvVAEConfig(z_dim=2, width=2)


def trainer_class(impl, quick=False):
    if impl == "scratch":
        base = ScratchConvVAETrainer
    else:
        require(impl, "conv_vae")
        base = importlib.import_module(f"ports.{impl}.train_conv").CONV_TRAINERS["vae:conv"]
    if not quick:
        return base
    # every 10th test image with one draw: the full evaluation (10,000 forwards) is for real runs
    return type(f"Quick{base.__name__}", (base,), {"TEST_SAMPLES": 1, "TEST_EVERY": 10})


@pytest.mark.parametrize("impl", ["torch", "tensorflow"])
def test_training_trajectory_equals_scratch(impl):
    x_train, x_test = (x.astype(np.float64) for x in load_vae_data("mnist"))
    results = {}
    for name in ("scratch", impl):
        trainer = trainer_class(name)(TINY, x_train, x_test, 5, batch_size=8, lr=3e-3)
        results[name] = np.array([trainer.train_step(step) for step in range(1, STEPS + 1)]), trainer.state()
    (expected, scratch_state), (actual, state) = results["scratch"], results[impl]
    assert expected[-1] < expected[0] - 1.0, "scratch did not learn: the check would prove nothing"
    assert_close(actual, expected, impl=impl, what=f"losses of {STEPS} Adam steps")
    assert sorted(state) == sorted(scratch_state), f"{impl}: the checkpoint's keys are not scratch's"
    for name, value in scratch_state.items():
        if value.dtype.kind in "iu":  # Adam's step count
            assert np.array_equal(state[name], value), f"{impl}: {name} is {state[name]}, scratch's {value}"
        else:
            assert_close(state[name], value, impl=impl, what=f"{name} after {STEPS} steps")


def test_keras_fit_takes_the_steps_scratch_gradients_say():
    """model.fit(x) on one full batch with SGD: each epoch one step along scratch's gradient at the ε
    that the Sampling layer draws, which a fresh SeedGenerator with the same seed reproduces."""
    port = require("keras", "conv_vae")
    import keras

    params, x, _ = setup(TINY, batch=3)
    x = x.astype(np.float32).astype(np.float64)  # fit hands float64 data over as float32: keep it exact
    model = port.to_keras_conv_vae(params, TINY, seed=7)
    lr, epochs = 0.0625, 2  # exact in float32, where Keras keeps the learning rate
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr))
    history = model.fit(x, epochs=epochs, batch_size=len(x), shuffle=False, verbose=0).history
    assert sorted(history) == ["kl", "loss", "reconstruction"], f"keras fit reports {sorted(history)}"
    seeds = keras.random.SeedGenerator(7)
    for epoch in range(epochs):
        eps = np.asarray(keras.random.normal((len(x), TINY.z_dim), dtype="float64", seed=seeds))
        out, cache = CV.conv_vae_forward(x, params, eps, TINY)
        for name, value in (("loss", out.loss), ("reconstruction", out.reconstruction.mean()), ("kl", out.kl.mean())):
            # Keras metrics accumulate in float32, whatever the model's dtype
            assert_close(np.float64(history[name][epoch]), np.float64(value), impl="keras fit", what=f"epoch {epoch} {name}",
                         dtype=np.float32)
        grads = CV.conv_vae_backward(1.0, cache)
        params = {k: v - lr * grads[k] for k, v in params.items()}
    for name, value in port.from_keras_conv_vae(model).items():
        assert_close(value, params[name], impl="keras fit", what=f"{name} after {epochs} SGD steps")


# ----------------------------------------------------------------------------------------------
# (4) Runs: exact resume, and checkpoints that move between implementations
# ----------------------------------------------------------------------------------------------


def run_args(out, steps, resume=False, dtype="float32", eval_every=10):
    return SimpleNamespace(data="mnist", steps=steps, seed=1, out=str(out), resume=resume, eval_every=eval_every,
                           batch_size=8, lr=1e-3, quiet=True, z_dim=2, width=2, likelihood="bernoulli", dtype=dtype)


@pytest.mark.parametrize("impl", PORTS)
def test_run_resumes_exactly(impl, tmp_path):
    trainer = trainer_class(impl, quick=True)
    train_conv_vae(run_args(tmp_path / "straight", 20), trainer)
    train_conv_vae(run_args(tmp_path / "stopped", 10), trainer)
    train_conv_vae(run_args(tmp_path / "stopped", 20, resume=True), trainer)
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b) and "optim.m.dec.W_out" in a
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{impl}: {name} differs after resuming"
    samples = [np.load(tmp_path / d / "samples.npy", allow_pickle=False) for d in ("straight", "stopped")]
    np.testing.assert_array_equal(samples[0], samples[1], err_msg=f"{impl}: samples.npy differs after resuming")


@pytest.mark.parametrize("impl", PORTS)
def test_checkpoints_move_between_scratch_and_the_port(impl, tmp_path):
    """4 steps in one implementation, 4 more in the other: the same run as 8 straight in scratch (float64)
    for torch and TensorFlow; Keras (its own Adam and noise) reads scratch's checkpoint and writes one scratch resumes."""
    port, scratch = trainer_class(impl, quick=True), trainer_class("scratch", quick=True)
    args = lambda out, steps, resume=False: run_args(tmp_path / out, steps, resume, "float64", eval_every=4)  # noqa: E731
    train_conv_vae(args("scratch", 8), scratch)
    train_conv_vae(args("port-then-scratch", 4), port)
    train_conv_vae(args("port-then-scratch", 8, resume=True), scratch)
    train_conv_vae(args("scratch-then-port", 4), scratch)
    train_conv_vae(args("scratch-then-port", 8, resume=True), port)
    expected = runs.load_checkpoint(tmp_path / "scratch" / runs.CHECKPOINT)
    names = set(CV.parameter_shapes(TINY))
    for order in ("port-then-scratch", "scratch-then-port"):
        got = runs.load_checkpoint(tmp_path / order / runs.CHECKPOINT)
        assert sorted(got) == sorted(expected), f"{impl} ({order}): the checkpoint's keys are not scratch's"
        assert int(got["run.step"]) == 8, f"{impl} ({order}): the resumed run stopped at step {int(got['run.step'])}"
        if impl == "keras":
            continue
        for name in names:
            assert_close(got[name], expected[name], impl=impl, what=f"{name} after 4 + 4 steps ({order})")
