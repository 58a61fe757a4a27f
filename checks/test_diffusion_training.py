"""Diffusion training runs (scratch/train_diffusion.py): a short run lowers the ε loss, a resumed run
continues exactly, and `python -m scratch train diffusion` writes what DESIGN.md promises (metrics.json
with the PacGAN scores of the samples, checkpoint.npz with Adam's state, samples.npy of 2,500 points).

The denoiser here is a small MLP (DENOISERS patched), so that ancestral sampling over all 1,000
steps takes a second; the default network is the same code, wider.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from scratch import diffusion as Df
from scratch import runs
from scratch import train_diffusion as TD
from scratch.__main__ import main

pytestmark = pytest.mark.diffusion

SMALL = Df.MLPDenoiserConfig(x_dim=2, hidden=(32, 32), time_dim=16)


@pytest.fixture
def small_denoiser(monkeypatch):
    """Every mixture's denoiser is the small MLP for the length of a test."""
    monkeypatch.setitem(TD.DENOISERS, "ring", lambda: (Df.MLP_DENOISER, SMALL))
    monkeypatch.setitem(TD.DENOISERS, "grid", lambda: (Df.MLP_DENOISER, SMALL))


def test_a_short_run_lowers_the_loss(small_denoiser):
    trainer = TD.ScratchDiffusionTrainer("grid", 0, 400, batch_size=128, lr=3e-3)
    before = trainer.evaluate()["eval_loss"]
    losses = [trainer.train_step(step) for step in range(1, 401)]
    after = trainer.evaluate()["eval_loss"]
    # ε ~ N(0, I) has mean square 1: a predictor that learnt nothing scores about 1 (the untrained MLP a bit more)
    assert before > 0.9, f"the untrained denoiser's loss {before:.3f} should be near E‖ε‖²/D = 1"
    assert after < 0.7 * before, f"400 steps took the evaluation loss from {before:.3f} only to {after:.3f}"
    assert np.mean(losses[-50:]) < 0.7 * np.mean(losses[:50]), "the training loss did not fall"
    assert trainer.params["den.W1"].dtype == np.float32


def args(out, steps, resume=False, data="ring"):
    """A run of the command line's options, on a 50-step cosine schedule: its sampling takes 50 steps, not 1,000."""
    return SimpleNamespace(data=data, steps=steps, decay_steps=6, seed=1, out=str(out), resume=resume, eval_every=3,
                           batch_size=16, lr=1e-3, dtype="float32", quiet=True, num_train_steps=50, schedule="cosine")


def test_run_resumes_exactly(tmp_path, small_denoiser):
    TD.train_diffusion(args(tmp_path / "straight", 6))
    TD.train_diffusion(args(tmp_path / "stopped", 3))
    TD.train_diffusion(args(tmp_path / "stopped", 6, resume=True))
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b) and "optim.t" in a and "den.W1" in a
    config = json.loads((tmp_path / "stopped" / "metrics.json").read_text())["config"]
    assert config["num_train_steps"] == 50 and config["schedule"] == "cosine" and config["data_scale"] == TD.DATA_SCALE["ring"]
    for name in a:
        assert np.array_equal(a[name], b[name]), f"scratch: {name} differs after resuming"
    samples = [np.load(tmp_path / d / "samples.npy", allow_pickle=False) for d in ("straight", "stopped")]
    np.testing.assert_array_equal(samples[0], samples[1], err_msg="scratch: samples.npy differs after resuming")
    histories = [json.loads((tmp_path / d / "metrics.json").read_text())["history"] for d in ("straight", "stopped")]
    assert [h["eval_loss"] for h in histories[0]] == [h["eval_loss"] for h in histories[1]]


def test_a_step_depends_on_the_step_number_alone(small_denoiser):
    trainer = TD.ScratchDiffusionTrainer("ring", 3, 10)
    x0, t, eps, _ = trainer.batch(7, 64, TD.DATA_SAMPLES)
    again = trainer.batch(7, 64, TD.DATA_SAMPLES)
    for a, b in zip((x0, t, eps), again[:3]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(trainer.batch(8, 64, TD.DATA_SAMPLES)[2], eps), "two steps drew the same noise"
    assert t.min() >= 0 and t.max() < 1000 and len(np.unique(t)) > 32
    # the ring reaches the network times DATA_SCALE, and samples come back in data units
    assert abs(np.median(np.linalg.norm(x0, axis=1)) - TD.DATA_SCALE["ring"]) < 0.1


def test_command_line_writes_metrics_checkpoint_and_samples(tmp_path, capsys, small_denoiser):
    out = tmp_path / "run"
    assert main(["train", "diffusion", "--data", "grid", "--steps", "4", "--eval-every", "2", "--batch-size", "8",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == "diffusion" and metrics["config"]["data"] == "grid"
    assert metrics["config"]["num_train_steps"] == 1000 and metrics["config"]["schedule"] == "linear"
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    assert {"modes", "high_quality", "reverse_kl", "eval_loss", "process_cpu_s", "sample_cpu_s"} <= set(metrics["final"])
    assert metrics["history"][-1] == metrics["final"]
    samples = np.load(out / "samples.npy", allow_pickle=False)
    assert samples.shape == (TD.SAMPLES, 2) and samples.dtype == np.float32 and np.all(np.isfinite(samples))
    checkpoint = runs.load_checkpoint(out / runs.CHECKPOINT)
    assert int(checkpoint["run.step"]) == 4 and int(checkpoint["optim.t"]) == 4
    assert set(Df.mlp_denoiser_shapes(SMALL)) <= set(checkpoint)
    assert json.loads(capsys.readouterr().out)["final"]["step"] == 4


def test_unknown_data_is_a_clear_error():
    with pytest.raises(ValueError, match="--data must be one of ring, grid, mnist for diffusion, got 'moons'"):
        TD.ScratchDiffusionTrainer("moons", 0, 10)
    with pytest.raises(ValueError, match="sampler must be 'ddpm' or 'ddim'"):
        TD.ScratchDiffusionTrainer("ring", 0, 10).samples(4, sampler="euler")
