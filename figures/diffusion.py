"""Diffusion on the ring and the grid (scratch/diffusion.py, scratch/train_diffusion.py).

Three figures:
  * diffusion_forward.png: the forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) on the grid
    and on a test digit, t = 0 … T − 1: the data dissolves into N(0, I).
  * diffusion_reverse.png: ancestral sampling (ddpm_step, Algorithm 2) on the ring and the grid,
    the same points seen at several t on their way from x_T ~ N(0, I) back to the modes.
  * diffusion_samplers.png: on the grid, DDPM over all 1,000 steps against DDIM (η = 0) over 10, 50
    and 1,000 of them, each scored with the PacGAN protocol.

The default main job trains each 2-D model for QUICK_STEPS (a SHORT run, and the titles say so);
`--full` trains the command line's default run (20,000 steps, the README's table).
"""

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figures import save  # noqa: E402
from scratch import diffusion as Df  # noqa: E402
from scratch.data import load_mnist_5k, mode_coverage, sample_mixture  # noqa: E402
from scratch.runs import EVAL_NOISE, noise_for_step  # noqa: E402
from scratch.train_conv import single_threaded_blas  # noqa: E402
from scratch.train_diffusion import SAMPLER_NOISE, ScratchDiffusionTrainer  # noqa: E402

NAME = "diffusion"
QUICK_STEPS, FULL_STEPS = {"ring": 3000, "grid": 5000}, 20000  # the grid needs longer to close its bridges
QUICK_POINTS, FULL_POINTS = 500, 2500  # the protocol scores 2,500; the short run draws fewer to stay quick
SHOWN_T = (999, 600, 300, 100, 30, 0)  # the reverse process, as x_t after the step that reaches t
FORWARD_T = (0, 50, 100, 250, 500, 999)


def train(data, steps, seed=0):
    """A ScratchDiffusionTrainer after `steps` steps (the command line's defaults otherwise) and its CPU seconds."""
    trainer = ScratchDiffusionTrainer(data, seed, decay_steps=steps)
    began = time.process_time()
    with single_threaded_blas():
        for step in range(1, steps + 1):
            trainer.train_step(step)
    return trainer, time.process_time() - began


def reverse_snapshots(trainer, n=FULL_POINTS, shown=SHOWN_T):
    """Algorithm 2 from the trainer's fixed x_T, keeping x_t (in data units) at each t of `shown`; x_T at T."""
    x = noise_for_step(0, trainer.seed, (n, 2), trainer.dtype, EVAL_NOISE)  # (n, 2), x_T
    rng = np.random.default_rng([trainer.seed, SAMPLER_NOISE])
    snaps = {}
    with single_threaded_blas():
        for t in range(trainer.num_train_steps - 1, -1, -1):
            steps = np.full(n, t)
            noise = rng.standard_normal(x.shape).astype(x.dtype) if t > 0 else None
            x = Df.ddpm_step(trainer.eps_fn(x, steps), steps, x, trainer.betas, noise)  # x_{t−1}
            if t in shown:
                snaps[t] = x / trainer.data_scale
    return snaps


def _scatter(ax, points, data, title):
    ax.scatter(points[:, 0], points[:, 1], s=1.5, alpha=0.5, color="tab:blue", rasterized=True)
    lim = 1.6 if data == "ring" else 5.5
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def _forward_figure(out_dir, alphas_cumprod):
    rng = np.random.default_rng(0)
    grid = sample_mixture("grid", 2500, rng)  # (2500, 2)
    x_test = _test_digit()
    fig, axes = plt.subplots(2, len(FORWARD_T), figsize=(2.1 * len(FORWARD_T), 4.4))
    for j, t in enumerate(FORWARD_T):
        eps = rng.standard_normal(grid.shape)
        x_t = Df.q_sample(grid, np.full(len(grid), t), eps, alphas_cumprod)
        _scatter(axes[0, j], x_t, "grid", f"grid, t = {t}  (ᾱ = {alphas_cumprod[t]:.3f})")
        axes[0, j].set_xlim(-6, 6)
        axes[0, j].set_ylim(-6, 6)
        d = 2.0 * x_test - 1.0  # pixels scaled into [−1, 1], as the digit model sees them
        d_t = Df.q_sample(d[None], np.array([t]), rng.standard_normal(d[None].shape), alphas_cumprod)[0]
        axes[1, j].imshow(d_t, cmap="gray", vmin=-1.5, vmax=1.5)
        axes[1, j].set_xticks([])
        axes[1, j].set_yticks([])
        axes[1, j].set_title(f"digit, t = {t}", fontsize=9)
    fig.suptitle("The forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), 1,000 linear β steps", fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, "diffusion_forward.png")


def _test_digit():
    """The first test 7 of the 5,000 MNIST digits, (28, 28) in [0, 1]."""
    images, labels = load_mnist_5k("test")  # (1000, 1, 28, 28), (1000,)
    return images[int(np.flatnonzero(labels == 7)[0]), 0]


def _reverse_figure(out_dir, runs, protocol):
    fig, axes = plt.subplots(len(runs), len(SHOWN_T), figsize=(2.1 * len(SHOWN_T), 2.3 * len(runs)))
    for i, (data, (snaps, scores)) in enumerate(runs.items()):
        for j, t in enumerate(SHOWN_T):
            modes = 8 if data == "ring" else 25
            title = f"{data}: x_{t}" if t else f"{data}: x_0, {scores.high_quality:.1%} HQ, {scores.modes}/{modes}"
            _scatter(axes[i, j], snaps[t], data, title)
    fig.suptitle(f"The reverse process: ancestral sampling (DDPM) from x_T ~ N(0, I), in data units (the network sees "
                 f"the ring ×8, the grid ×2)\n{protocol}", fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, "diffusion_reverse.png")


def _samplers_figure(out_dir, trainer, ddpm, protocol, ddim_steps):
    panels = [("DDPM, 1,000 steps", ddpm)]  # ddpm: the reverse figure's x_0, which is trainer.samples()
    for steps in ddim_steps:
        panels.append((f"DDIM (η = 0), {steps} steps", trainer.samples(len(ddpm), sampler="ddim", num_steps=steps)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 3.1))
    scores = {}
    for ax, (label, points) in zip(axes, panels):
        s = mode_coverage(points, "grid")
        scores[label] = s
        _scatter(ax, points, "grid", f"{label}\n{s.modes}/25 modes, {s.high_quality:.1%} HQ, KL {s.reverse_kl:.3f}")
    fig.suptitle(f"One grid model, four samplers\n{protocol}", fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, "diffusion_samplers.png"), scores


def render(out_dir, full=False):
    steps = {data: FULL_STEPS if full else QUICK_STEPS[data] for data in ("ring", "grid")}
    protocol = (" and ".join(f"{data} {n:,}" for data, n in steps.items()) + f" training steps, "
                f"{FULL_POINTS if full else QUICK_POINTS:,} points" + ("" if full else ": a SHORT run,\n--full trains the "
                                                                      "default 20,000 and draws 2,500"))
    numbers, runs, trainers = {"file": "diffusion_*.png", "train_steps": " / ".join(map(str, steps.values()))}, {}, {}
    for data in ("ring", "grid"):
        trainer, cpu = train(data, steps[data])
        snaps = reverse_snapshots(trainer, FULL_POINTS if full else QUICK_POINTS)
        scores = mode_coverage(snaps[0], data)
        runs[data], trainers[data] = (snaps, scores), trainer
        numbers.update({f"{data}_modes": f"{scores.modes}/{8 if data == 'ring' else 25}", f"{data}_high_quality": scores.high_quality,
                        f"{data}_reverse_kl": scores.reverse_kl, f"{data}_train_cpu_s": round(cpu, 1)})
    _forward_figure(out_dir, trainers["grid"].alphas_cumprod)
    _reverse_figure(out_dir, runs, protocol)
    with single_threaded_blas():
        _, sampler_scores = _samplers_figure(out_dir, trainers["grid"], runs["grid"][0][0], protocol,
                                             (10, 50, 1000) if full else (10, 50, 200))
    for label, s in sampler_scores.items():
        if label.startswith("DDIM"):
            numbers[f"grid DDIM {label.split(', ')[1]} high_quality"] = s.high_quality
    if full:  # the targets hold for the default run only; a short run is not held to them
        numbers["targets"] = [
            ("diffusion ring high quality", runs["ring"][1].high_quality, 0.98, ">="),
            ("diffusion grid high quality", runs["grid"][1].high_quality, 0.97, ">="),
            ("diffusion ring reverse KL", runs["ring"][1].reverse_kl, 0.01, "<="),
            ("diffusion grid reverse KL", runs["grid"][1].reverse_kl, 0.01, "<="),
        ]
    return numbers
