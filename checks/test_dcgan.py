"""The DCGAN (scratch/dcgan.py): central differences through a whole step of each player, every
parameter; the same networks built from torch.nn, forward and every gradient; batch norm in
training and in evaluation mode; float32 in, float32 out; exact resume; the command line."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from checks.implementations import require_package
from checks.tolerances import GRADCHECK_RTOL, assert_close
from scratch import dcgan as DC
from scratch import runs
from scratch.__main__ import main
from scratch.gradcheck import relative_error
from scratch.train_conv import ScratchDCGANTrainer, train_dcgan

pytestmark = pytest.mark.gan

TINY = DC.DCGANConfig(z_dim=3, gen_width=2, disc_width=2)


def setup(config=TINY, batch=3, dtype=np.float64, seed=0):
    """Parameters with γ, β and biases moved off their initial values, running statistics, a real batch and noise."""
    rng = np.random.default_rng(seed)
    params = DC.init_dcgan(config, rng, dtype)
    for name, p in params.items():  # N(0, 0.02²) weights make every layer nearly linear: scale them up
        p[...] = rng.standard_normal(p.shape) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if name.endswith("gamma") else 0.0)
    stats = DC.init_stats(config, dtype)
    x_real = np.tanh(rng.standard_normal((batch, 1, 28, 28))).astype(dtype)  # (B, 1, 28, 28) in (−1, 1)
    z = rng.standard_normal((batch, config.z_dim)).astype(dtype)  # (B, Z)
    return params, stats, x_real, z


def directional_errors(loss, grads, params, names, rng, eps=1e-6):
    """For each parameter, (⟨grad, v⟩, central difference of loss along a random v): a wrong entry anywhere shows."""
    errors = {}
    for name in names:
        v = rng.standard_normal(params[name].shape)
        saved = params[name].copy()
        params[name][...] = saved + eps * v
        plus = loss(params)
        params[name][...] = saved - eps * v
        minus = loss(params)
        params[name][...] = saved
        numeric, analytic = (plus - minus) / (2.0 * eps), float(np.sum(grads[name] * v))
        errors[name] = (relative_error(analytic, numeric), analytic, numeric)
    return errors


def assert_gradcheck(errors, what):
    bad = {name: e for name, e in errors.items() if e[0] > GRADCHECK_RTOL}
    assert not bad, (f"{what}: the hand-written gradient disagrees with central differences (rtol {GRADCHECK_RTOL:g}) "
                     f"for {', '.join(f'{n} (rel {e[0]:.2g}: analytic {e[1]:.8g}, numeric {e[2]:.8g})' for n, e in bad.items())}")


def test_discriminator_step_gradient_of_every_disc_parameter():
    params, stats, x_real, z = setup()
    loss, grads, _ = DC.discriminator_step(x_real, z, params, stats, TINY)
    assert list(grads) == list(DC.DISC_NAMES)
    errors = directional_errors(lambda p: DC.discriminator_step(x_real, z, p, stats, TINY)[0], grads, params,
                                DC.DISC_NAMES, np.random.default_rng(1))
    assert_gradcheck(errors, "discriminator step")


@pytest.mark.parametrize("kind", ("non_saturating", "minimax"))
def test_generator_step_gradient_of_every_gen_parameter_through_the_fixed_discriminator(kind):
    params, stats, _, z = setup()
    loss, grads, _ = DC.generator_step(z, params, stats, TINY, kind)
    assert list(grads) == list(DC.GEN_NAMES)
    errors = directional_errors(lambda p: DC.generator_step(z, p, stats, TINY, kind)[0], grads, params,
                                DC.GEN_NAMES, np.random.default_rng(2))
    assert_gradcheck(errors, f"generator step ({kind})")


def test_steps_move_the_running_statistics_and_leave_the_inputs_alone():
    params, stats, x_real, z = setup()
    before = {k: v.copy() for k, v in stats.items()}
    _, _, after_d = DC.discriminator_step(x_real, z, params, stats, TINY)
    _, _, after_g = DC.generator_step(z, params, after_d, TINY)
    for name in stats:
        np.testing.assert_array_equal(stats[name], before[name], err_msg=f"{name}: the step changed its input stats")
        assert not np.array_equal(after_d[name], before[name]), f"{name} did not move in the discriminator step"
        assert not np.array_equal(after_g[name], after_d[name]), f"{name} did not move in the generator step"


def test_float32_stays_float32():
    params, stats, x_real, z = setup(dtype=np.float32)
    x, _ = DC.generator_forward(z, params, TINY)
    logits, _ = DC.discriminator_forward(x_real, params, TINY)
    assert x.dtype == logits.dtype == np.float32
    _, d_grads, stats = DC.discriminator_step(x_real, z, params, stats, TINY)
    _, g_grads, stats = DC.generator_step(z, params, stats, TINY)
    for name, g in {**d_grads, **g_grads, **stats}.items():
        assert g.dtype == np.float32, f"{name} became {g.dtype}"
    assert DC.generator_forward(z, params, TINY, stats)[0].dtype == np.float32


def test_batch_norm_training_and_evaluation_modes():
    params, stats, _, z = setup(batch=4)
    train_x, cache = DC.generator_forward(z, params, TINY)
    # training mode: an image depends on the rest of its batch; evaluation mode: it does not
    alone_train, _ = DC.generator_forward(z[:2], params, TINY)
    assert not np.allclose(alone_train, train_x[:2]), "training mode must normalise with the batch's statistics"
    eval_x, eval_cache = DC.generator_forward(z, params, TINY, stats)
    assert eval_cache is None
    assert_close(DC.generator_forward(z[:2], params, TINY, stats)[0], eval_x[:2], impl="scratch",
                 what="evaluation-mode images, alone vs in a batch")
    assert not np.allclose(eval_x, train_x), "at the initial running statistics, evaluation must differ from training"
    # with the batch's own (biased) statistics as the running ones, evaluation mode reproduces training mode
    batch_stats = {}
    for bn, c in cache.batch_norms.items():
        batch_stats[f"{bn}.running_mean"], batch_stats[f"{bn}.running_var"] = c.mean, c.var
    batch_stats.update({k: v for k, v in stats.items() if k.startswith("disc.")})
    assert_close(DC.generator_forward(z, params, TINY, batch_stats)[0], train_x, impl="scratch",
                 what="evaluation mode at the batch's statistics vs training mode")
    with pytest.raises(ValueError, match="training-mode"):
        DC.generator_backward(train_x, None)


# ----------------------------------------------------------------------------------------------
# The same networks from torch.nn
# ----------------------------------------------------------------------------------------------


def torch_networks(torch, params, config):
    nn = torch.nn
    g, d, q = config.gen_width, config.disc_width, 7
    gen_linear = nn.Linear(config.z_dim, 2 * g * q * q, bias=False)
    gen = nn.Sequential(nn.BatchNorm2d(2 * g), nn.ReLU(), nn.ConvTranspose2d(2 * g, g, 4, 2, 1, bias=False),
                        nn.BatchNorm2d(g), nn.ReLU(), nn.ConvTranspose2d(g, 1, 4, 2, 1), nn.Tanh())
    disc = nn.Sequential(nn.Conv2d(1, d, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(d, 2 * d, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(2 * d), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(2 * d * q * q, 1))
    gen_linear, gen, disc = gen_linear.double(), gen.double(), disc.double()  # float64, as the check's arrays
    t = lambda name: torch.tensor(params[name])  # noqa: E731
    with torch.no_grad():
        gen_linear.weight.copy_(t("gen.W1").T)  # torch stores (out, in)
        gen[0].weight.copy_(t("gen.bn1.gamma")), gen[0].bias.copy_(t("gen.bn1.beta"))
        gen[2].weight.copy_(t("gen.W2"))  # ConvTranspose2d's weight is (C_in, C_out, kh, kw), as ours
        gen[3].weight.copy_(t("gen.bn2.gamma")), gen[3].bias.copy_(t("gen.bn2.beta"))
        gen[5].weight.copy_(t("gen.W3")), gen[5].bias.copy_(t("gen.b3"))
        disc[0].weight.copy_(t("disc.W1")), disc[0].bias.copy_(t("disc.b1"))
        disc[2].weight.copy_(t("disc.W2"))
        disc[3].weight.copy_(t("disc.bn2.gamma")), disc[3].bias.copy_(t("disc.bn2.beta"))
        disc[6].weight.copy_(t("disc.W3").T), disc[6].bias.copy_(t("disc.b3"))
    gen_params = {"gen.W1": (gen_linear.weight, True), "gen.bn1.gamma": (gen[0].weight, False),
                  "gen.bn1.beta": (gen[0].bias, False), "gen.W2": (gen[2].weight, False),
                  "gen.bn2.gamma": (gen[3].weight, False), "gen.bn2.beta": (gen[3].bias, False),
                  "gen.W3": (gen[5].weight, False), "gen.b3": (gen[5].bias, False)}
    disc_params = {"disc.W1": (disc[0].weight, False), "disc.b1": (disc[0].bias, False), "disc.W2": (disc[2].weight, False),
                   "disc.bn2.gamma": (disc[3].weight, False), "disc.bn2.beta": (disc[3].bias, False),
                   "disc.W3": (disc[6].weight, True), "disc.b3": (disc[6].bias, False)}
    generator = lambda z: gen(gen_linear(z).view(len(z), 2 * g, q, q))  # noqa: E731
    return generator, disc, (gen_linear, gen), gen_params, disc_params, {"gen.bn1": gen[0], "gen.bn2": gen[3],
                                                                          "disc.bn2": disc[3]}


def test_networks_equal_torch_nn_forward_every_gradient_and_running_statistics():
    torch = require_package("torch")  # missing: a skip while developing, a failure in CI
    config = DC.DCGANConfig(z_dim=5, gen_width=3, disc_width=3)
    params, stats, x_real, z = setup(config, batch=4)
    generator, disc, _, gen_params, disc_params, norms = torch_networks(torch, params, config)
    rng = np.random.default_rng(3)
    # the generator, training mode
    x, gen_cache = DC.generator_forward(z, params, config)
    zt = torch.tensor(z, requires_grad=True)
    xt = generator(zt)
    assert_close(xt.detach().numpy(), x, impl="torch.nn", what="G(z), training mode")
    dx = rng.standard_normal(x.shape)
    dz, grads = DC.generator_backward(dx, gen_cache)
    xt.backward(torch.tensor(dx))
    assert_close(zt.grad.numpy(), dz, impl="torch.nn", what="G's dz")
    for name, (p, transposed) in gen_params.items():
        assert_close((p.grad.T if transposed else p.grad).numpy(), grads[name], impl="torch.nn", what=f"d{name}")
    # the discriminator, training mode
    logits, disc_cache = DC.discriminator_forward(x_real, params, config)
    x_t = torch.tensor(x_real, requires_grad=True)
    lt = disc(x_t)[:, 0]
    assert_close(lt.detach().numpy(), logits, impl="torch.nn", what="D's logits, training mode")
    dl = rng.standard_normal(logits.shape)
    dx_real, grads = DC.discriminator_backward(dl, disc_cache)
    lt.backward(torch.tensor(dl))
    assert_close(x_t.grad.numpy(), dx_real, impl="torch.nn", what="D's dx")
    for name, (p, transposed) in disc_params.items():
        assert_close((p.grad.T if transposed else p.grad).numpy(), grads[name], impl="torch.nn", what=f"d{name}")
    # running statistics after those two training-mode forwards, then evaluation mode on them
    stats = DC.update_stats(DC.update_stats(stats, gen_cache, config.momentum), disc_cache, config.momentum)
    for bn, module in norms.items():
        assert_close(module.running_mean.numpy(), stats[f"{bn}.running_mean"], impl="torch.nn", what=f"{bn} running mean")
        assert_close(module.running_var.numpy(), stats[f"{bn}.running_var"], impl="torch.nn", what=f"{bn} running var")
    for module in norms.values():
        module.eval()
    with torch.no_grad():
        assert_close(generator(torch.tensor(z)).numpy(), DC.generator_forward(z, params, config, stats)[0],
                     impl="torch.nn", what="G(z), evaluation mode")
        assert_close(disc(torch.tensor(x_real))[:, 0].numpy(), DC.discriminator_forward(x_real, params, config, stats)[0],
                     impl="torch.nn", what="D's logits, evaluation mode")


# ----------------------------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------------------------


def run_args(out, steps, resume=False):
    return SimpleNamespace(data="mnist", steps=steps, decay_steps=6, seed=1, out=str(out), resume=resume, eval_every=2,
                           batch_size=8, lr=2e-4, lr_end=1e-4, disc_steps=1, loss="non_saturating", dtype="float32",
                           z_dim=4, width=2, quiet=True)


def test_run_resumes_exactly(tmp_path):
    train_dcgan(run_args(tmp_path / "straight", 4))
    train_dcgan(run_args(tmp_path / "stopped", 2))
    train_dcgan(run_args(tmp_path / "stopped", 4, resume=True))
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b)
    assert {"gen.bn1.running_mean", "disc.bn2.running_var", "optim.gen.m.gen.W2", "optim.disc.v.disc.W1"} <= set(a)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs after resuming"
    samples = [np.load(tmp_path / d / "samples.npy", allow_pickle=False) for d in ("straight", "stopped")]
    np.testing.assert_array_equal(samples[0], samples[1], err_msg="samples.npy differs after resuming")


def test_command_line_writes_images_in_the_unit_interval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "gan", "--arch", "conv", "--steps", "2", "--eval-every", "2", "--batch-size", "8",
                 "--width", "2", "--z-dim", "4", "--out", str(out), "--quiet"]) == 0
    samples = np.load(out / "samples.npy", allow_pickle=False)
    assert samples.shape == (1000, 28, 28) and samples.dtype == np.float32
    assert 0.0 <= samples.min() and samples.max() <= 1.0 and samples.std() > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["arch"] == "conv" and metrics["config"]["lr"] == 4e-4 and metrics["config"]["lr_end"] == 4e-4 and metrics["config"]["betas"] == [0.5, 0.999]
    assert {"d_real_test", "d_fake", "disc_loss", "gen_loss"} <= set(metrics["final"])
    assert json.loads(capsys.readouterr().out)["final"]["step"] == 2
    with pytest.raises(SystemExit, match="--data mnist"):
        main(["train", "gan", "--arch", "conv", "--data", "ring", "--steps", "1", "--out", str(tmp_path / "x")])


def test_trainer_rejects_other_data():
    with pytest.raises(ValueError, match="--data mnist"):
        ScratchDCGANTrainer(TINY, "digits", 0)


def test_arch_mlp_stays_the_default_on_mnist(tmp_path):
    out = tmp_path / "mlp"
    assert main(["train", "gan", "--data", "mnist", "--steps", "1", "--batch-size", "8", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert "arch" not in config and config["gen_hidden"] == [512, 512] and config["lr"] == 1e-3 and config["lr_end"] == 1e-5
    assert np.load(out / "samples.npy", allow_pickle=False).shape == (1000, 28, 28)
