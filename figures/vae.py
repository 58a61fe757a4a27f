"""The VAE on the bundled 8×8 digits (Kingma and Welling, 2014), trained in NumPy.

One training run of scratch/train.py's ScratchVAETrainer (2-D latent, Bernoulli decoder)
feeds five figures:

    vae_latent.png          the test digits' posterior means μ(x), coloured by label
    vae_manifold.png        the decoder's mean image over a grid of z (Gaussian quantiles)
    vae_reconstructions.png test digits beside their reconstructions
    vae_interpolation.png   decoding a straight line between two test digits' μ
    vae_curves.png          ELBO, reconstruction and KL during training, train and test

and a second run, the linear-Gaussian VAE (8-D latent), gives vae_ppca.png: its exact ELBO
climbing to the probabilistic-PCA log-likelihood, the bound it cannot exceed.

vae_trajectory.png puts the losses of 50 Adam steps of scratch, PyTorch and TensorFlow on one
plot (same initial weights, batches and noise), with their differences from scratch; and the
printed table trains every implementation the same number of steps and reports its test ELBO.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from figures import save
from scratch import vae as V
from scratch.layers import sigmoid_forward
from scratch.optim import step_decay
from scratch.train import ScratchVAETrainer, load_vae_data

NAME = "vae"
SEED = 0
SEEDS = (0, 1, 2)  # the seeds of the printed spread (--full)
STEPS, PPCA_STEPS = 4000, 12000  # the default run's lengths: the Bernoulli VAE, the linear-Gaussian VAE
LR = 2e-3  # Adam's step for the Bernoulli VAE, in scratch and every port


def _train(config, x_train, x_test, steps, eval_every, lr, seed=SEED):
    trainer = ScratchVAETrainer(config, x_train, x_test, seed, batch_size=128, lr=lr)
    history = []
    for step in range(1, steps + 1):
        trainer.train_step(step)
        if step % eval_every == 0:
            history.append({"step": step, **trainer.evaluate()})
    return trainer, history


def _tiles(images, rows, cols, side=8):
    """(rows·cols, side²) images → one (rows·side, cols·side) picture with 1-pixel gutters."""
    canvas = np.ones((rows * (side + 1) - 1, cols * (side + 1) - 1))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (side + 1) : r * (side + 1) + side, c * (side + 1) : c * (side + 1) + side] = image.reshape(side, side)
    return canvas


def _decode_mean(trainer, z):
    logits, _ = V.decode(z, trainer.params, trainer.vae_config)  # (N, 64)
    return sigmoid_forward(logits)[0]  # Bernoulli means: the expected image


def _latent(trainer, x_test, labels, out_dir):
    mu, _, _ = V.encode(x_test, trainer.params, trainer.vae_config)  # (N, 2)
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    points = ax.scatter(mu[:, 0], mu[:, 1], c=labels, cmap="tab10", s=14, alpha=0.85, vmin=-0.5, vmax=9.5)
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set(xlabel="μ₁(x)", ylabel="μ₂(x)", title=f"2-D latent space: posterior means of the {len(x_test)} test digits")
    ax.grid(alpha=0.3)
    return save(fig, out_dir, "vae_latent.png")


def _manifold(trainer, out_dir, n=15):
    from scipy.stats import norm

    ticks = norm.ppf(np.linspace(0.03, 0.97, n))  # equal prior mass between neighbouring rows
    z = np.array([[a, b] for b in ticks[::-1] for a in ticks])  # (n², 2), top row = high z₂
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    ax.imshow(_tiles(_decode_mean(trainer, z), n, n), cmap="gray_r", vmin=0, vmax=1)
    ax.set(title=f"Decoded manifold: E[x | z] over a {n}×{n} grid of z\n(Gaussian quantiles 3%…97% on each axis)")
    ax.set_xticks([]), ax.set_yticks([])
    return save(fig, out_dir, "vae_manifold.png")


def _reconstructions(trainer, x_test, out_dir, n=12):
    mu, _, _ = V.encode(x_test[:n], trainer.params, trainer.vae_config)
    pictures = np.concatenate([x_test[:n], _decode_mean(trainer, mu)])  # originals, then reconstructions
    fig, ax = plt.subplots(figsize=(9, 1.9))
    ax.imshow(_tiles(pictures, 2, n), cmap="gray_r", vmin=0, vmax=1)
    ax.set_yticks([3.5, 12.5], ["test digit", "E[x | z = μ(x)]"])
    ax.set_xticks([])
    ax.set_title("Reconstructions through a 2-D bottleneck (first 12 test digits)")
    return save(fig, out_dir, "vae_reconstructions.png")


def _interpolation(trainer, x_test, labels, out_dir, n=10):
    a, b = int(np.flatnonzero(labels == 0)[0]), int(np.flatnonzero(labels == 7)[0])
    mu, _, _ = V.encode(x_test[[a, b]], trainer.params, trainer.vae_config)
    t = np.linspace(0.0, 1.0, n)[:, None]
    z = (1 - t) * mu[0] + t * mu[1]  # (n, 2), the straight line from μ(x_a) to μ(x_b)
    pictures = np.concatenate([x_test[[a]], _decode_mean(trainer, z), x_test[[b]]])
    fig, ax = plt.subplots(figsize=(9, 1.4))
    ax.imshow(_tiles(pictures, 1, n + 2), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([3.5, 9 * (n + 1) + 3.5], ["test 0", "test 7"])
    ax.set_yticks([])
    ax.set_title("Interpolation: decoding (1 − t)·μ(x₀) + t·μ(x₇), t = 0 … 1")
    return save(fig, out_dir, "vae_interpolation.png")


def _curves(history, out_dir):
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, title in zip(axes, ("elbo", "reconstruction", "kl"), ("ELBO", "E_q log p(x|z)", "KL(q(z|x) ‖ p(z))")):
        for split, style in (("train", "-"), ("test", "--")):
            ax.plot(steps, [h[split][key] for h in history], style, label=split)
        ax.set(title=title + " (nats per image)", xlabel="Adam step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training the 2-D Bernoulli VAE in NumPy (ELBO = reconstruction − KL)")
    fig.tight_layout()
    return save(fig, out_dir, "vae_curves.png")


def _linear_vae(x_train, x_test, steps, seed=SEED):
    """The linear-Gaussian VAE (Z = 8) trained `steps`; its history of exact train ELBOs, step by step."""
    config = V.linear_gaussian_config(x_train.shape[1], 8)
    lr = step_decay(3e-3, [steps // 2, steps * 4 // 5], [1 / 3, 1 / 15])  # settle despite the noise
    _, history = _train(config, x_train, x_test, steps, eval_every=max(1, steps // 40), lr=lr, seed=seed)
    return history


def _ppca(x_train, x_test, steps, out_dir):
    target = V.ppca_log_likelihood(x_train, 8)
    history = _linear_vae(x_train, x_test, steps)
    elbo = [h["train_exact_elbo"] for h in history]
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    ax.plot([h["step"] for h in history], elbo, label="linear-Gaussian VAE: exact ELBO (train)")
    ax.axhline(target, color="k", ls="--", label=f"pPCA log-likelihood (closed form) = {target:.3f}")
    ax.set(xlabel="Adam step", ylabel="nats per image", ylim=(target - 3, target + 0.5),
           title=f"ELBO → pPCA bound (Z = 8): final gap {target - elbo[-1]:.3f} nats")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save(fig, out_dir, "vae_ppca.png")
    return target, elbo[-1]


def _trainers():
    """Every implementation's VAE trainer that imports here, scratch first."""
    import importlib

    found = {"scratch": ScratchVAETrainer}
    for impl in ("torch", "tensorflow", "keras"):
        try:
            found[impl] = importlib.import_module(f"ports.{impl}.train").TRAINERS["vae"]
        except ImportError as error:
            print(f"[figures] vae: {impl} port skipped ({error})")
    return found


def _trajectory(trainers, x_train, x_test, out_dir, steps=50):
    config = V.VAEConfig(z_dim=2, hidden=64)
    losses = {}
    for impl in ("scratch", "torch", "tensorflow"):
        if impl in trainers:
            trainer = trainers[impl](config, x_train, x_test, SEED, batch_size=64, lr=3e-3)
            losses[impl] = np.array([trainer.train_step(s) for s in range(1, steps + 1)])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True)
    styles = {"scratch": ("-", "C0"), "torch": ("--", "C1"), "tensorflow": (":", "C2")}
    for impl, values in losses.items():
        style, color = styles[impl]
        top.plot(range(1, steps + 1), values, style, color=color, lw=2, label=impl)
        if impl != "scratch":
            difference = np.maximum(np.abs(values - losses["scratch"]), 1e-17)  # 0 would vanish on a log axis
            bottom.semilogy(range(1, steps + 1), difference, style, color=color, lw=2, label=f"|{impl} − scratch|")
    top.set(ylabel="loss = −mean ELBO (nats)", title=f"{steps} Adam steps from the same weights, batches and noise (float64)")
    bottom.set(xlabel="Adam step", ylabel="absolute difference", ylim=(1e-17, 1e-6))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, out_dir, "vae_trajectory.png")
    return {impl: float(np.max(np.abs(v - losses["scratch"]))) for impl, v in losses.items() if impl != "scratch"}


def _port_test(make, x_train, x_test, steps, seed):
    """A port's Bernoulli VAE (Z = 2) trained as scratch is, `steps` steps on `seed`: its test figures."""
    trainer = make(V.VAEConfig(z_dim=2), x_train, x_test, seed, batch_size=128, lr=LR)
    for step in range(1, steps + 1):
        trainer.train_step(step)
    return trainer.evaluate()["test"]


def _port_table(trainers, x_train, x_test, steps, scratch_result):
    """Train every port as scratch was trained (scratch's result is passed in); {impl: test figures}."""
    results = {"scratch": scratch_result}
    for impl, make in trainers.items():
        if impl == "scratch":
            continue
        results[impl] = _port_test(make, x_train, x_test, steps, SEED)
    print(f"\nBernoulli VAE (Z = 2, H = 128), {steps} Adam steps, batch 128: test ELBO in nats per image")
    print(f"  {'implementation':<14} {'ELBO':>9} {'log p(x|z)':>11} {'KL':>7}")
    for impl, r in results.items():
        print(f"  {impl:<14} {r['elbo']:9.3f} {r['reconstruction']:11.3f} {r['kl']:7.3f}")
    print("  (torch and tensorflow follow scratch's trajectory; keras uses its own Adam and noise.)")
    return results


def _seed_table(trainers, x_train, x_test, seeds=SEEDS, steps=STEPS, ppca_steps=PPCA_STEPS):
    """The Bernoulli VAE's test ELBO and the linear VAE's gap to pPCA on every seed, at the default run's lengths.

    Scratch, PyTorch and TensorFlow follow one trajectory (vae_trajectory.png), so scratch stands for the three;
    Keras draws its own noise and is trained on each seed too.
    """
    target = V.ppca_log_likelihood(x_train, 8)
    rows, gaps = {impl: {} for impl in ("scratch", "keras") if impl in trainers}, {}
    for seed in seeds:
        rows["scratch"][seed] = _train(V.VAEConfig(z_dim=2), x_train, x_test, steps, steps, LR, seed)[1][-1]["test"]
        if "keras" in rows:
            rows["keras"][seed] = _port_test(trainers["keras"], x_train, x_test, steps, seed)
        gaps[seed] = target - _linear_vae(x_train, x_test, ppca_steps, seed)[-1]["train_exact_elbo"]
    print(f"\nSeeds {', '.join(map(str, seeds))}, {steps} steps: test ELBO (nats per image), and the linear VAE's gap to "
          f"pPCA after {ppca_steps} steps")
    for impl, by_seed in rows.items():
        elbos = [by_seed[s]["elbo"] for s in seeds]
        each = " / ".join(f"{e:.3f}" for e in elbos)
        print(f"  {impl:<14} {each}   mean {np.mean(elbos):.3f}, range {min(elbos):.3f} … {max(elbos):.3f}")
    values = [gaps[s] for s in seeds]
    print(f"  {'pPCA gap':<14} {' / '.join(f'{g:.3f}' for g in values)}   mean {np.mean(values):.3f}, "
          f"largest {max(values):.3f}")
    return {impl: {s: r["elbo"] for s, r in by_seed.items()} for impl, by_seed in rows.items()}, gaps


def render(out_dir, full=False):
    x_train, x_test = load_vae_data("digits")
    from scratch.data import load_digits

    labels = load_digits("test")[1]
    steps = 20000 if full else STEPS
    trainer, history = _train(V.VAEConfig(z_dim=2), x_train, x_test, steps, eval_every=steps // 20, lr=LR)
    _latent(trainer, x_test, labels, out_dir)
    _manifold(trainer, out_dir)
    _reconstructions(trainer, x_test, out_dir)
    _interpolation(trainer, x_test, labels, out_dir)
    _curves(history, out_dir)
    target, elbo = _ppca(x_train, x_test, 30000 if full else PPCA_STEPS, out_dir)
    trainers = _trainers()
    differences = _trajectory(trainers, x_train, x_test, out_dir)
    table = _port_table(trainers, x_train, x_test, steps, history[-1]["test"])
    # the spread over seeds, at the default run's lengths: --full only (it trains nine more runs)
    elbos, gaps = _seed_table(trainers, x_train, x_test) if full else ({}, {})
    final = history[-1]
    return {
        "file": "vae_*.png (7 files)",
        **{f"test_elbo_{impl}": r["elbo"] for impl, r in table.items()},
        **{f"trajectory_max_diff_{impl}": d for impl, d in differences.items()},
        "test_elbo_nats": final["test"]["elbo"],
        "test_kl_nats": final["test"]["kl"],
        "ppca_loglik": target,
        "linear_vae_elbo": elbo,
        "ppca_gap_nats": target - elbo,
        **{f"test_elbo_{impl}_seed{s}": e for impl, by_seed in elbos.items() for s, e in by_seed.items()},
        **{f"ppca_gap_nats_seed{s}": g for s, g in gaps.items()},
    }
