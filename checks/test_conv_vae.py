"""The convolutional VAE (scratch/conv_vae.py): central differences through a whole step, every
parameter; its ELBO is vae.py's on the decoder's logits; the same networks from torch.nn; float32
in, float32 out; exact resume; the command line's samples and test ELBO."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from checks.implementations import require_package
from checks.test_dcgan import assert_gradcheck, directional_errors
from checks.tolerances import assert_close
from scratch import conv_vae as CV
from scratch import runs
from scratch import vae as V
from scratch.__main__ import main
from scratch.train_conv import ScratchConvVAETrainer, train_conv_vae

pytestmark = pytest.mark.vae

TINY = CV.ConvVAEConfig(z_dim=2, width=2)


def setup(config=TINY, batch=3, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    params = CV.init_conv_vae(config, rng, dtype)
    for p in params.values():  # nonzero biases too, so that every gradient is exercised
        p += (0.1 * rng.standard_normal(p.shape)).astype(dtype)
    x = rng.uniform(0.0, 1.0, (batch, 1, 28, 28)).astype(dtype)  # (B, 1, 28, 28)
    eps = rng.standard_normal((batch, config.z_dim)).astype(dtype)  # (B, Z)
    return params, x, eps


def test_whole_step_gradient_of_every_parameter():
    params, x, eps = setup()
    output, cache = CV.conv_vae_forward(x, params, eps, TINY)
    grads = CV.conv_vae_backward(1.0, cache)
    assert list(grads) == list(CV.parameter_shapes(TINY))
    errors = directional_errors(lambda p: CV.conv_vae_forward(x, p, eps, TINY)[0].loss, grads, params, list(grads),
                                np.random.default_rng(1))
    assert_gradcheck(errors, "conv VAE step")


def test_the_bound_is_vae_py_s_on_the_decoder_s_logits():
    params, x, eps = setup()
    output, _ = CV.conv_vae_forward(x, params, eps, TINY)
    mu, log_var, _ = CV.encode(x, params, TINY)
    logits, _ = CV.decode(mu + np.exp(0.5 * log_var) * eps, params, TINY)
    assert logits.shape == (3, 1, 28, 28) and mu.shape == (3, 2)
    expected = (V.bernoulli_log_likelihood_forward(x.reshape(3, -1), logits.reshape(3, -1))[0]
                - V.gaussian_kl_forward(mu, log_var)[0])
    assert_close(output.elbo, expected, impl="scratch", what="ELBO")
    assert output.loss == pytest.approx(-expected.mean(), rel=1e-12)


def test_float32_stays_float32():
    params, x, eps = setup(dtype=np.float32)
    output, cache = CV.conv_vae_forward(x, params, eps, TINY)
    assert output.elbo.dtype == output.decoded.dtype == output.z.dtype == np.float32
    for name, g in CV.conv_vae_backward(1.0, cache).items():
        assert g.dtype == np.float32, f"{name} became {g.dtype}"
    assert CV.decoded_means(eps, params, TINY).dtype == np.float32


def test_networks_equal_torch_nn_forward_and_every_gradient():
    torch = require_package("torch")  # missing: a skip while developing, a failure in CI
    nn = torch.nn
    config = CV.ConvVAEConfig(z_dim=3, width=2)
    params, x, eps = setup(config, batch=2)
    c = config.width
    enc = nn.Sequential(nn.Conv2d(1, c, 3, 2), nn.ReLU(), nn.Conv2d(c, 2 * c, 3, 2), nn.ReLU(), nn.Flatten()).double()
    heads = nn.Linear(2 * c * 36, config.z_dim).double(), nn.Linear(2 * c * 36, config.z_dim).double()
    dec_linear = nn.Linear(config.z_dim, c * 49).double()
    dec = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c, 2 * c, 3, 2, 1, 1), nn.ReLU(),
                        nn.ConvTranspose2d(2 * c, c, 3, 2, 1, 1), nn.ReLU(), nn.ConvTranspose2d(c, 1, 3, 1, 1)).double()
    modules = {"enc.W1": enc[0], "enc.W2": enc[2], "enc.W_mu": heads[0], "enc.W_lv": heads[1], "dec.W1": dec_linear,
               "dec.W2": dec[1], "dec.W3": dec[3], "dec.W_out": dec[5]}
    with torch.no_grad():
        for name, module in modules.items():
            w = torch.tensor(params[name])
            module.weight.copy_(w.T if w.ndim == 2 else w)
            module.bias.copy_(torch.tensor(params[name.replace(".W", ".b")]))
    xt = torch.tensor(x)
    h = enc(xt)
    mu, log_var = heads[0](h), heads[1](h)
    z = mu + torch.exp(0.5 * log_var) * torch.tensor(eps)
    logits = dec(dec_linear(z).view(-1, c, 7, 7))
    # −ELBO: Bernoulli log-likelihood from the logits, and the Gaussian KL, averaged over the batch
    nll = nn.functional.binary_cross_entropy_with_logits(logits, xt, reduction="none").sum(dim=(1, 2, 3))
    kl = 0.5 * (log_var.exp() + mu * mu - 1.0 - log_var).sum(dim=1)
    loss = (nll + kl).mean()
    loss.backward()
    output, cache = CV.conv_vae_forward(x, params, eps, config)
    assert_close(logits.detach().numpy().reshape(2, -1), output.decoded, impl="torch.nn", what="decoder logits")
    assert_close(np.array(loss.item()), np.array(output.loss), impl="torch.nn", what="loss")
    grads = CV.conv_vae_backward(1.0, cache)
    for name, module in modules.items():
        g = module.weight.grad.numpy()
        assert_close(g.T if g.ndim == 2 else g, grads[name], impl="torch.nn", what=f"d{name}")
        assert_close(module.bias.grad.numpy(), grads[name.replace(".W", ".b")], impl="torch.nn",
                     what=f"d{name.replace('.W', '.b')}")


class QuickTrainer(ScratchConvVAETrainer):
    """Evaluates on every 10th test image with one draw each: the full evaluation (10,000 forwards) is for real runs."""

    TEST_SAMPLES, TEST_EVERY = 1, 10


def run_args(out, steps, resume=False):
    return SimpleNamespace(data="mnist", steps=steps, seed=1, out=str(out), resume=resume, eval_every=2, batch_size=8,
                           lr=1e-3, quiet=True, z_dim=2, width=2, likelihood="bernoulli", dtype="float32")


def test_run_resumes_exactly(tmp_path):
    train_conv_vae(run_args(tmp_path / "straight", 4), QuickTrainer)
    train_conv_vae(run_args(tmp_path / "stopped", 2), QuickTrainer)
    train_conv_vae(run_args(tmp_path / "stopped", 4, resume=True), QuickTrainer)
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b) and "optim.m.dec.W_out" in a
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs after resuming"
    samples = [np.load(tmp_path / d / "samples.npy", allow_pickle=False) for d in ("straight", "stopped")]
    np.testing.assert_array_equal(samples[0], samples[1], err_msg="samples.npy differs after resuming")


def test_command_line_writes_samples_and_the_test_elbo(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "vae", "--arch", "conv", "--steps", "2", "--eval-every", "1", "--batch-size", "8",
                 "--width", "2", "--z-dim", "2", "--out", str(out), "--quiet"], trainers={"vae:conv": QuickTrainer}) == 0
    samples = np.load(out / "samples.npy", allow_pickle=False)
    assert samples.shape == (1000, 28, 28) and samples.dtype == np.float32
    assert 0.0 <= samples.min() and samples.max() <= 1.0 and samples.std() > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["arch"] == "conv" and [h["step"] for h in metrics["history"]] == [1, 2]
    for h in metrics["history"]:
        test = h["test"]
        assert test["elbo"] < 0 and test["elbo"] == pytest.approx(test["reconstruction"] - test["kl"], rel=1e-5)
    with pytest.raises(SystemExit, match="--data mnist"):
        main(["train", "vae", "--arch", "conv", "--data", "digits", "--steps", "1", "--out", str(tmp_path / "x")])
