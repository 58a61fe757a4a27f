"""Diffusion on the ring and the grid (scratch/diffusion.py, scratch/train_diffusion.py).

Three figures:
  * diffusion_forward.png: the forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) on the grid
    and on a test digit, t = 0 … T − 1: the data dissolves into N(0, I).
  * diffusion_reverse.png: ancestral sampling (ddpm_step, Algorithm 2) on the ring and the grid,
    the same points seen at several t on their way from x_T ~ N(0, I) back to the modes.
  * diffusion_samplers.png: on the grid, DDPM over all 1,000 steps against DDIM (η = 0) over 10, 50
    and 1,000 of them, each scored with the PacGAN protocol.

The default main job trains each 2-D model for QUICK_STEPS (a SHORT run, and the titles say so) on seed 0;
`--full` trains the command line's default run (20,000 steps) on seeds 0, 1 and 2 and prints the README's table:
each seed's modes, high quality, reverse KL and CPU seconds, and per mixture the mean and the range of high quality.
Seed 0 trains here and draws the figures; seeds 1 and 2 train two at a time in spawned processes, one BLAS thread
each. The targets are set beside the worst seed.
"""

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

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
SEEDS_FULL = (0, 1, 2)  # --full trains each mixture on these; the figures and the short run are seed 0's
MODES = {"ring": 8, "grid": 25}  # each mixture's modes (scratch/data.py)
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
            title = (f"{data}: x_{t}" if t else
                     f"{data}: x_0, {scores.high_quality:.1%} HQ, {scores.modes}/{MODES[data]}")
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


def _seed_scores(job):
    """One (data, seed) run of `steps` steps, in a worker: its mode coverage of `points` ancestral samples drawn as
    seed 0's are (reverse_snapshots' x_0), its training and its sampling CPU seconds."""
    data, seed, steps, points = job
    with single_threaded_blas():
        trainer, cpu = train(data, steps, seed)
        began = time.process_time()
        scores = mode_coverage(reverse_snapshots(trainer, points, shown=(0,))[0], data)
        return scores, cpu, time.process_time() - began


def _seed_table(runs, seeds, steps, points):
    """Print each seed's row and per mixture the mean (and high quality's range); runs: {(data, seed): (ModeCoverage,
    train CPU s, sample CPU s)}. Returns the numbers of the seeds after 0 (suffix _seed{s}) and the means."""
    print(f"\nDiffusion, {' / '.join(f'{n:,}' for n in steps.values())} training steps (ring / grid), {points:,} "
          f"ancestral samples, seeds {', '.join(map(str, seeds))} (CPU s on one BLAS thread)")
    print(f"  {'mixture':<8}  {'seed':>4}  {'modes':>6}  {'high quality':>22}  {'reverse KL':>10}  "
          f"{'train CPU s':>11}  {'sample CPU s':>12}")
    numbers = {}
    for data in ("ring", "grid"):
        rows = [runs[(data, seed)] for seed in seeds]
        for seed, (s, cpu, sample_cpu) in zip(seeds, rows):
            modes = f"{s.modes}/{MODES[data]}"
            print(f"  {data:<8}  {seed:>4}  {modes:>6}  {s.high_quality:>22.1%}  {s.reverse_kl:>10.4f}  {cpu:>11.0f}  "
                  f"{sample_cpu:>12.0f}")
            if seed:  # seed 0's numbers are the keys without a suffix
                numbers.update({f"{data}_modes_seed{seed}": modes, f"{data}_high_quality_seed{seed}": s.high_quality,
                                f"{data}_reverse_kl_seed{seed}": s.reverse_kl,
                                f"{data}_train_cpu_s_seed{seed}": round(cpu, 1)})
        modes, quality, kl = zip(*(s for s, _, _ in rows))  # a ModeCoverage is (modes, high_quality, reverse_kl)
        spread = f"{np.mean(quality):.1%} ({min(quality):.1%} … {max(quality):.1%})"
        print(f"  {data:<8}  {'mean':>4}  {np.mean(modes):>6.1f}  {spread:>22}  {np.mean(kl):>10.4f}  "
              f"{np.mean([r[1] for r in rows]):>11.0f}  {np.mean([r[2] for r in rows]):>12.0f}")
        numbers.update({f"{data}_modes_mean": float(np.mean(modes)),
                        f"{data}_high_quality_mean": float(np.mean(quality)),
                        f"{data}_reverse_kl_mean": float(np.mean(kl))})
    return numbers


def render(out_dir, full=False):
    steps = {data: FULL_STEPS if full else QUICK_STEPS[data] for data in ("ring", "grid")}
    protocol = (" and ".join(f"{data} {n:,}" for data, n in steps.items()) + f" training steps, "
                f"{FULL_POINTS if full else QUICK_POINTS:,} points" + ("" if full else ": a SHORT run,\n--full trains the "
                                                                      "default 20,000 and draws 2,500"))
    numbers, runs, trainers = {"file": "diffusion_*.png", "train_steps": " / ".join(map(str, steps.values()))}, {}, {}
    seed_runs = {}  # {(data, seed): (ModeCoverage, train CPU s, sample CPU s)}
    for data in ("ring", "grid"):
        trainer, cpu = train(data, steps[data])
        began = time.process_time()
        snaps = reverse_snapshots(trainer, FULL_POINTS if full else QUICK_POINTS)
        scores = mode_coverage(snaps[0], data)
        runs[data], trainers[data] = (snaps, scores), trainer
        seed_runs[(data, 0)] = scores, cpu, time.process_time() - began
        numbers.update({f"{data}_modes": f"{scores.modes}/{MODES[data]}", f"{data}_high_quality": scores.high_quality,
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
        seeds = SEEDS_FULL
        jobs = [(data, seed, steps[data], FULL_POINTS) for seed in seeds if seed for data in ("ring", "grid")]
        # two fresh processes ("spawn", not fork: the figures before this one have started TensorFlow's and
        # PyTorch's thread pools in this process, and a forked copy of those can hang)
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            seed_runs.update(zip(((data, seed) for data, seed, *_ in jobs), pool.map(_seed_scores, jobs)))
        numbers.update(_seed_table(seed_runs, seeds, steps, FULL_POINTS))
        # the targets hold on every seed, so the worst seed is the one set beside them
        worst = f", worst of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
        scores = {data: [seed_runs[(data, seed)][0] for seed in seeds] for data in ("ring", "grid")}
        numbers["targets"] = (
            [(f"diffusion {data} modes{worst}", min(s.modes for s in scores[data]), MODES[data], ">=")
             for data in scores]
            + [(f"diffusion {data} high quality{worst}", min(s.high_quality for s in scores[data]), target, ">=")
               for data, target in (("ring", 0.98), ("grid", 0.97))]
            + [(f"diffusion {data} reverse KL{worst}", max(s.reverse_kl for s in scores[data]), 0.01, "<=")
               for data in scores])
    return numbers
