"""GAN training runs: the same trajectory in scratch, PyTorch and TensorFlow, exact resume in all
four implementations, and the files the command line promises (metrics.json, checkpoint.npz,
samples.npy). Two players make trajectories fragile: an error in any gradient of either network,
in the detaching of G's samples from D's update, or in either optimizer moves the losses apart
within a few steps."""

import importlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from checks.implementations import require
from checks.tolerances import assert_close
from scratch import runs
from scratch.__main__ import main
from scratch.train import SAMPLES, ScratchGANTrainer, gan_config_for, train_gan

pytestmark = pytest.mark.gan

STEPS = 50
TRAINED_PORTS = ("torch", "tensorflow")  # Keras draws its own noise in train_step (as fit does)


def trainer_class(impl):
    if impl == "scratch":
        return ScratchGANTrainer
    require(impl, "gan")
    return importlib.import_module(f"ports.{impl}.train").TRAINERS["gan"]


# (data, pack, disc_steps, generator loss): the 2-D GAN with packing, and the digit GAN with k = 2
SETUPS = {
    "ring-pack2": ("ring", 2, 1, "non_saturating"),
    "digits-k2-minimax": ("digits", 1, 2, "minimax"),
}


def trained(impl, setup, steps=STEPS):
    data, pack, disc_steps, kind = SETUPS[setup]
    config = gan_config_for(data, pack=pack)._replace(gen_hidden=(16, 16), disc_hidden=(16,))
    trainer = trainer_class(impl)(config, data, 5, STEPS, batch_size=32, lr=2e-3, lr_end=2e-4,
                                  disc_steps=disc_steps, kind=kind, dtype=np.float64)
    losses = []
    for step in range(1, steps + 1):
        trainer.train_step(step)
        losses.append(trainer.last_losses)
    return np.array(losses), trainer  # (steps, 2): discriminator and generator loss


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("impl", TRAINED_PORTS)
def test_port_training_trajectory_equals_scratch(impl, setup):
    expected, scratch = trained("scratch", setup)
    actual, port = trained(impl, setup)
    assert np.ptp(expected[:, 1]) > 0.05, "the generator's loss never moved: the check would prove nothing"
    assert_close(actual, expected, impl=impl, what=f"(D, G) losses of {STEPS} steps ({setup})")
    final = port.state()
    for name, value in scratch.params.items():
        assert_close(final[name], value, impl=impl, what=f"{name} after {STEPS} steps ({setup})")


def args(out, steps, resume=False, data="ring"):
    return SimpleNamespace(data=data, steps=steps, decay_steps=6, seed=1, out=str(out), resume=resume, eval_every=3, batch_size=16,
                           lr=1e-3, lr_end=1e-4, pack=2, disc_steps=2, loss="non_saturating", dtype="float32",
                           z_dim=None, quiet=True)


@pytest.mark.parametrize("impl", ("scratch",) + TRAINED_PORTS + ("keras",))
def test_run_resumes_exactly(impl, tmp_path):
    trainer = trainer_class(impl)
    train_gan(args(tmp_path / "straight", 6), trainer)
    train_gan(args(tmp_path / "stopped", 3), trainer)
    train_gan(args(tmp_path / "stopped", 6, resume=True), trainer)
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{impl}: {name} differs after resuming"
    samples = [np.load(tmp_path / d / "samples.npy", allow_pickle=False) for d in ("straight", "stopped")]
    np.testing.assert_array_equal(samples[0], samples[1], err_msg=f"{impl}: samples.npy differs after resuming")


def test_a_scratch_checkpoint_loads_into_the_torch_trainer():
    require("torch", "gan")
    _, scratch = trained("scratch", "ring-pack2", steps=5)
    data, pack, disc_steps, kind = SETUPS["ring-pack2"]
    port = trainer_class("torch")(scratch.gan_config, data, 5, STEPS, batch_size=32, lr=2e-3, lr_end=2e-4,
                                  disc_steps=disc_steps, kind=kind, dtype=np.float64)
    port.load_state(scratch.state())
    for step in range(6, 9):
        scratch.train_step(step)
        port.train_step(step)
        assert_close(np.array(port.last_losses), np.array(scratch.last_losses), impl="torch",
                     what=f"losses at step {step} after loading a scratch checkpoint")


def test_command_line_writes_metrics_checkpoint_and_samples(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "gan", "--data", "grid", "--steps", "4", "--eval-every", "2", "--batch-size", "8",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == "gan" and metrics["config"]["data"] == "grid"
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    assert {"modes", "high_quality", "reverse_kl", "disc_loss", "gen_loss"} <= set(metrics["final"])
    samples = np.load(out / "samples.npy", allow_pickle=False)
    assert samples.shape == (SAMPLES, 2) and np.all(np.isfinite(samples))
    checkpoint = runs.load_checkpoint(out / runs.CHECKPOINT)
    assert int(checkpoint["run.step"]) == 4 and "optim.disc.t" in checkpoint and "optim.gen.t" in checkpoint
    assert json.loads(capsys.readouterr().out)["final"]["step"] == 4


def test_digits_gan_runs_and_scores_the_test_set(tmp_path):
    metrics = train_gan(args(tmp_path / "digits", 2, data="digits"))
    assert 0.0 < metrics["final"]["d_real_test"] < 1.0 and 0.0 < metrics["final"]["d_fake"] < 1.0
    assert not (tmp_path / "digits" / "samples.npy").exists(), "samples.npy is for the 2-D mixtures only"


def test_batch_must_be_a_multiple_of_the_pack():
    with pytest.raises(ValueError, match="--batch-size 9 must be a multiple of --pack 2"):
        ScratchGANTrainer(gan_config_for("ring", pack=2), "ring", 0, 10, batch_size=9)
