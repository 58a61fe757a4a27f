"""Training runs: metrics.json, atomic checkpoints, and a resumed run that continues exactly."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from scratch import runs
from scratch.train import train_vae

pytestmark = pytest.mark.runs


def vae_args(out, steps, resume=False, **overrides):
    args = dict(data="digits", steps=steps, seed=3, out=str(out), resume=resume, eval_every=2, batch_size=32,
                lr=1e-3, quiet=True, z_dim=2, hidden=8, likelihood="bernoulli")
    args.update(overrides)
    return SimpleNamespace(**args)


def test_a_resumed_run_continues_exactly_as_if_never_stopped(tmp_path):
    straight = train_vae(vae_args(tmp_path / "straight", steps=6))
    train_vae(vae_args(tmp_path / "stopped", steps=3))
    resumed = train_vae(vae_args(tmp_path / "stopped", steps=6, resume=True))
    assert resumed["resumed_from_step"] == 3
    a = runs.load_checkpoint(tmp_path / "straight" / runs.CHECKPOINT)
    b = runs.load_checkpoint(tmp_path / "stopped" / runs.CHECKPOINT)
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs after resuming"
    assert [h["step"] for h in resumed["history"]] == [2, 3, 4, 6]  # evaluations of both legs
    assert resumed["final"] == straight["final"]


def test_metrics_and_checkpoint_layout(tmp_path):
    metrics = train_vae(vae_args(tmp_path, steps=2, hidden=0, likelihood="gaussian"))
    with open(tmp_path / runs.METRICS) as f:
        assert json.load(f) == json.loads(json.dumps(metrics))
    assert metrics["config"]["model"] == "vae" and metrics["seed"] == 3 and metrics["wall_time_s"] > 0
    for split in ("train", "test"):
        assert set(metrics["final"][split]) == {"elbo", "reconstruction", "kl"}
        assert metrics["final"][split]["elbo"] == pytest.approx(metrics["final"][split]["reconstruction"] - metrics["final"][split]["kl"])
    assert metrics["ppca_log_likelihood"] > metrics["final"]["train_exact_elbo"]  # the ELBO is a lower bound
    arrays = runs.load_checkpoint(tmp_path / runs.CHECKPOINT)
    assert int(arrays["run.step"]) == 2
    from scratch.vae import linear_gaussian_config, parameter_shapes

    for name, shape in parameter_shapes(linear_gaussian_config(64, 2)).items():
        assert arrays[name].shape == shape
    assert any(k.startswith("optim.") for k in arrays)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    runs.save_checkpoint(path, {"w": np.arange(3.0)})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        runs.save_checkpoint(path, {"w": np.zeros(3)})
    assert np.array_equal(runs.load_checkpoint(path)["w"], np.arange(3.0))  # the old file is intact
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # no temporary file left behind


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_vae(vae_args(tmp_path, steps=2, resume=True))


def test_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "scratch", "train", "vae", "--steps", "2", "--eval-every", "1",
                           "--hidden", "4", "--out", str(tmp_path), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["final"]["step"] == 2
    bad = subprocess.run([sys.executable, "-m", "scratch", "train", "vae", "--data", "cifar", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--data must be 'digits' or 'mnist:DIR'" in bad.stderr
