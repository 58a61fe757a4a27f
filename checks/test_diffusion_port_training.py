"""Diffusion training trajectories: from the same weights, batches, steps t and noise ε, scratch and every port
take the same Adam steps, and each port's run resumes exactly, in itself and across implementations.

The strongest check of the hand-written backward and of each port's training step: any error in a
gradient, in the time embedding, in q_sample's coefficients, in the optimizer or in the rate moves the
losses apart within a few steps. Keras is in it too: nothing in a diffusion step is random inside the
model, and ports/keras/train_diffusion.py's Adam is Algorithm 1's (Keras's own moves ε). The
denoiser is the one the runs train (the MLP of 3 × 256, a 64-wide time embedding) on the ring; a batch
of 64 keeps the 30 steps short. The runs go through scratch/runs.py's run_training (metrics.json,
checkpoint.npz) but not train_diffusion's final sampling, a thousand steps on 2,500 points.
"""

import importlib

import numpy as np
import pytest

from checks.implementations import PORTS, require
from checks.tolerances import assert_close
from scratch import runs
from scratch.train_conv import single_threaded_blas
from scratch.train_diffusion import ScratchDiffusionTrainer

pytestmark = pytest.mark.diffusion

STEPS = 30


@pytest.fixture(autouse=True)
def one_thread_each():
    """NumPy's BLAS and PyTorch on one thread, as train_diffusion runs NumPy: these matrices are small, and on a
    shared machine two threads of each library spin against each other (PyTorch's 30 steps took 14 s instead of 2)."""
    try:
        import torch
    except ImportError:
        torch = None
    threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    try:
        with single_threaded_blas():
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(threads)
OPTIONS = dict(decay_steps=2 * STEPS, batch_size=64, lr=1e-3)  # the rate falls by half a cosine over twice the run


def trainer_class(impl):
    if impl == "scratch":
        return ScratchDiffusionTrainer
    require(impl, "diffusion")
    return importlib.import_module(f"ports.{impl}.train_diffusion").DIFFUSION_TRAINERS["diffusion"]


def make(impl, dtype=np.float64, seed=3, **options):
    return trainer_class(impl)("ring", seed, dtype=dtype, **{**OPTIONS, **options})


_SCRATCH = {}


def scratch_run():
    """Scratch's 30 losses, its evaluation loss before and after, and its final state (computed once)."""
    if not _SCRATCH:
        trainer = make("scratch")
        before = trainer.evaluate()["eval_loss"]
        losses = np.array([trainer.train_step(step) for step in range(1, STEPS + 1)])
        _SCRATCH.update(losses=losses, before=before, after=trainer.evaluate()["eval_loss"], state=trainer.state())
    return _SCRATCH


@pytest.mark.parametrize("impl", PORTS)
def test_port_training_trajectory_equals_scratch(impl):
    expected = scratch_run()
    assert expected["after"] < 0.95 * expected["before"], \
        (f"scratch did not learn in {STEPS} steps (eval loss {expected['before']:.4f} → {expected['after']:.4f}): "
         f"the check would prove nothing")
    port = make(impl)
    actual = np.array([port.train_step(step) for step in range(1, STEPS + 1)])
    assert_close(actual, expected["losses"], impl=impl, what=f"losses of {STEPS} Adam steps (float64)")
    assert_close(np.array(port.evaluate()["eval_loss"]), np.array(expected["after"]), impl=impl,
                 what=f"the evaluation loss after {STEPS} steps")
    state = port.state()
    assert sorted(state) == sorted(expected["state"]), \
        f"{impl}: its checkpoint has {sorted(set(state) ^ set(expected['state']))} where scratch's differs"
    for name, value in expected["state"].items():  # the weights and Adam's t, m and v, in scratch's layout
        assert state[name].dtype == value.dtype, f"{impl}: {name} is {state[name].dtype}, scratch's {value.dtype}"
        if value.dtype.kind == "f":
            assert_close(state[name], value, impl=impl, what=f"{name} after {STEPS} steps")
        else:
            assert np.array_equal(state[name], value), f"{impl}: {name} is {state[name]}, scratch's {value}"


def run(impl, out, steps, resume=False, dtype=np.float32):
    """run_training of a fresh trainer into `out`: `steps` steps, evaluating every 10; the checkpoint's arrays."""
    runs.run_training(make(impl, dtype=dtype, seed=1, decay_steps=20, batch_size=32), str(out), steps, 1, 10,
                      resume=resume)
    return runs.load_checkpoint(out / runs.CHECKPOINT)


@pytest.mark.parametrize("impl", ("scratch",) + PORTS)
def test_run_resumes_exactly(impl, tmp_path):
    """10 steps, stop, resume to 20: every array of the checkpoint equals 20 straight steps', bit for bit."""
    straight = run(impl, tmp_path / "straight", 20)
    run(impl, tmp_path / "stopped", 10)
    resumed = run(impl, tmp_path / "stopped", 20, resume=True)
    assert sorted(straight) == sorted(resumed)
    assert int(resumed["optim.t"]) == 20, f"{impl}: Adam's step count after resuming is {int(resumed['optim.t'])}"
    for name in straight:
        assert np.array_equal(straight[name], resumed[name]), f"{impl}: {name} differs after resuming"


@pytest.mark.parametrize("impl", PORTS)
def test_checkpoints_resume_across_implementations(impl, tmp_path):
    """A scratch checkpoint continues in the port, and the port's in scratch, as if never stopped (float64)."""
    straight = run("scratch", tmp_path / "scratch", 20, dtype=np.float64)
    for first, then in (("scratch", impl), (impl, "scratch")):
        out = tmp_path / f"{first}-then-{then}"
        run(first, out, 10, dtype=np.float64)
        resumed = run(then, out, 20, resume=True, dtype=np.float64)
        for name, value in straight.items():
            if value.dtype.kind == "f":
                assert_close(resumed[name], value, impl=impl, what=f"{name} after 10 steps in {first} and 10 in {then}")
            else:  # Adam's step count, run.step, run.model
                assert np.array_equal(resumed[name], value), f"{impl}: {name} is {resumed[name]} after {first} then {then}"


@pytest.mark.parametrize("impl", ("torch", "tensorflow", "keras"))
def test_every_port_trains_the_digits_with_its_guided_u_net(impl):
    """--data mnist is the guided U-Net of scratch/guidance.py in every port: the command line's trainer for the
    digits is the port's guided trainer, on scratch's batches (the step-for-step checks are in test_unet_*.py and
    below), and the mixtures keep their MLP trainer."""
    from scratch import unet as U
    from scratch.guidance import GuidedDigitTrainer

    config = U.UNetConfig(channels=(4, 8, 8), emb_dim=8, time_dim=8, groups=2, num_steps=1000)
    digits = trainer_class(impl)("mnist", 0, decay_steps=10, batch_size=8, lr=1e-3, p_uncond=0.2, config=config,
                                 dtype=np.float32)
    assert isinstance(digits, GuidedDigitTrainer) and digits.IMPLEMENTATION == impl, \
        f"{impl}: --data mnist built {type(digits).__name__}, not the port's guided digit trainer"
    ring = trainer_class(impl)("ring", 0, decay_steps=10, batch_size=8, dtype=np.float32)
    assert not isinstance(ring, GuidedDigitTrainer), f"{impl}: --data ring built the digits' trainer"


def test_the_torch_guided_digit_trainer_follows_scratchs(tmp_path):
    """--data mnist in PyTorch: ports/torch/unet.py's UNet on scratch/guidance.py's batches, words dropped to ∅ on
    the same rows, takes scratch's 6 Adam steps (float64, a small U-Net), and its checkpoint resumes in scratch."""
    from scratch import unet as U
    from scratch.guidance import GuidedDigitTrainer

    port_trainer = trainer_class("torch")
    config = U.UNetConfig(channels=(4, 8, 8), emb_dim=8, time_dim=8, groups=2, num_steps=1000)
    options = dict(decay_steps=12, batch_size=4, lr=2e-3, p_uncond=0.5, config=config, dtype=np.float64)
    scratch, port = GuidedDigitTrainer("mnist", 2, **options), port_trainer("mnist", 2, **options)
    expected = np.array([scratch.train_step(step) for step in range(1, 7)])
    actual = np.array([port.train_step(step) for step in range(1, 7)])
    assert len(set(expected.round(6))) > 1, "scratch's losses do not change: the check would prove nothing"
    assert_close(actual, expected, impl="torch", what="losses of 6 guided U-Net steps (float64)")
    state, want = port.state(), scratch.state()
    assert sorted(state) == sorted(want), f"torch: its checkpoint differs in {sorted(set(state) ^ set(want))}"
    for name, value in want.items():
        if value.dtype.kind == "f":
            assert_close(state[name], value, impl="torch", what=f"{name} after 6 steps")
    resumed = GuidedDigitTrainer("mnist", 2, **options)  # the torch checkpoint, continued in scratch
    resumed.load_state(state)
    assert_close(np.array([resumed.train_step(step) for step in range(7, 9)]),
                 np.array([scratch.train_step(step) for step in range(7, 9)]), impl="torch",
                 what="scratch's steps 7 and 8 from the torch checkpoint")
