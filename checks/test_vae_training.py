"""Training trajectories: from the same weights, batches and noise, scratch and the ports take
the same 50 Adam steps. The strongest check of a hand-written backward: any error in any
gradient, or in the optimizer, moves the losses apart within a few steps."""

import importlib
from types import SimpleNamespace

import numpy as np
import pytest

from checks.implementations import require
from checks.tolerances import assert_close
from scratch import runs
from scratch import vae as V
from scratch.train import ScratchVAETrainer, load_vae_data, train_vae

pytestmark = pytest.mark.vae

STEPS = 50
TRAINED_PORTS = ("torch", "tensorflow")  # Keras trains with its own Adam (fit): see test_keras_fit_trains


def trainer_class(impl):
    if impl == "scratch":
        return ScratchVAETrainer
    require(impl, "vae")
    return importlib.import_module(f"ports.{impl}.train").TRAINERS["vae"]


def losses(impl, config, steps=STEPS):
    x_train, x_test = load_vae_data("digits")
    trainer = trainer_class(impl)(config, x_train, x_test, seed=5, batch_size=32, lr=3e-3)
    return np.array([trainer.train_step(step) for step in range(1, steps + 1)]), trainer


CONFIGS = {
    "bernoulli-mlp": V.VAEConfig(z_dim=2, hidden=16),
    "linear-gaussian": V.linear_gaussian_config(64, 4),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("impl", TRAINED_PORTS)
def test_port_training_trajectory_equals_scratch(impl, config):
    expected, scratch = losses("scratch", CONFIGS[config])
    actual, port = losses(impl, CONFIGS[config])
    assert expected[-1] < expected[0], "scratch did not learn: the check would prove nothing"
    assert_close(actual, expected, impl=impl, what=f"losses of {STEPS} Adam steps ({config})")
    final = port.state()
    for name, value in scratch.params.items():
        assert_close(final[name], value, impl=impl, what=f"{name} after {STEPS} steps")


@pytest.mark.parametrize("impl", ("scratch",) + TRAINED_PORTS + ("keras",))
def test_port_run_resumes_exactly(impl, tmp_path):
    trainer = trainer_class(impl)

    def args(out, steps, resume=False):
        return SimpleNamespace(data="digits", steps=steps, seed=1, out=str(out), resume=resume, eval_every=3,
                               batch_size=32, lr=1e-3, quiet=True, z_dim=2, hidden=8, likelihood="bernoulli")

    train_vae(args(tmp_path / "straight", 6), trainer)
    train_vae(args(tmp_path / "stopped", 3), trainer)
    train_vae(args(tmp_path / "stopped", 6, resume=True), trainer)
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{impl}: {name} differs after resuming"


def test_a_scratch_checkpoint_loads_into_the_torch_trainer(tmp_path):
    require("torch", "vae")
    _, scratch = losses("scratch", CONFIGS["bernoulli-mlp"], steps=5)
    port_trainer = trainer_class("torch")(CONFIGS["bernoulli-mlp"], scratch.x_train, scratch.x_test, seed=5, batch_size=32, lr=3e-3)
    port_trainer.load_state(scratch.state())
    scratch_next = [scratch.train_step(s) for s in range(6, 9)]
    port_next = [port_trainer.train_step(s) for s in range(6, 9)]
    assert_close(np.array(port_next), np.array(scratch_next), impl="torch", what="losses after loading a scratch checkpoint")
