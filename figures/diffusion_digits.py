"""Classifier-free guidance on the 28×28 digits: the U-Net of scratch/unet.py trained in NumPy, asked for a word.

    diffusion_digits.png   generated digits per word at guidance scales 0, 1, 3 and 6 (the same x_T at every
                           scale), and the trade-off: the scoring classifier's accuracy on the word asked for
                           against precision and recall (scratch/scoring.py), as the scale grows
    diffusion_draw.png     `python -m scratch draw` for a few numbers: each digit drawn from its word

The default protocol is SHORT: QUICK["steps"] training steps (about two CPU minutes), 20 digits per word
and 10 DDIM steps per scale; its digits are rough and its scores are on 200 images, not the README's 1,000.
`--full` trains the command line's default run (`python -m scratch train diffusion --data mnist`) on seeds
0, 1 and 2; the figures are seed 0's, 1,000 images per scale. Seeds 1 and 2 are scored at the headline setting
only (samples.npy's: s = 3, DDIM 20 steps, as many images), and a table prints each seed's word accuracy, FID,
KID, precision, recall and IS, the mean and the range. `render(out_dir, run_dir=DIR)` reuses the checkpoint of
a run already made (and trains no other seed), and its sweep when scratch/guidance.py's write_sweep saved one there.
Training runs in spawned processes, two at a time, each on one BLAS thread, as scratch/guidance.py's trainer does.
"""

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import matplotlib.pyplot as plt
import numpy as np

from figures import save

NAME = "diffusion_digits"
SCALES = (0.0, 1.0, 3.0, 6.0)
QUICK = {"steps": 300, "per_word": 20, "sample_steps": 10}
COLUMNS = 8  # digits shown per word and scale
SEEDS_FULL = (0, 1, 2)  # --full trains the default run on these; the figures are seed 0's
HEADLINE = ("word_accuracy", "fid", "kid", "precision", "recall", "inception_score")  # the README's samples.npy row
NUMBERS = ("three hundred and twelve", "forty-two", "one thousand nine hundred and eighty-four", "seven")


def _train(steps, seed=0):
    """Train the default guided U-Net for `steps` steps (rate decaying over them); return (params, CPU seconds)."""
    from scratch import guidance as G
    from scratch.train_conv import single_threaded_blas

    trainer = G.GuidedDigitTrainer("mnist", seed, decay_steps=steps)
    began = time.process_time()
    with single_threaded_blas():
        for step in range(1, steps + 1):
            trainer.train_step(step)
    return trainer.params, time.process_time() - began


def _seed_scores(steps, seed, per_word, sample_steps):
    """Train `seed` as _train does and score its headline setting: DIGIT_RUN's guidance, DDIM over sample_steps,
    per_word images a word from the seed's own x_T, as samples.npy is drawn. Returns (scores, training CPU seconds)."""
    from scratch import diffusion as Df
    from scratch import guidance as G
    from scratch.train_conv import single_threaded_blas

    params, cpu = _train(steps, seed)
    alphas_cumprod = Df.alpha_bar(Df.beta_schedule("linear", G.DIGIT_UNET.num_steps))
    scale = G.DIGIT_RUN["guidance"]
    with single_threaded_blas():
        sweep = G.guidance_sweep(params, G.DIGIT_UNET, alphas_cumprod, seed, (scale,), per_word, sample_steps)
    return sweep[scale][1], cpu


def _tiles(images, cols):
    rows = -(-len(images) // cols)
    canvas = np.ones((rows * 29 - 1, cols * 29 - 1))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * 29:r * 29 + 28, c * 29:c * 29 + 28] = image
    return canvas


def _model(full, run_dir, pool, headline):
    """(params, config, alphas_cumprod, description, training CPU seconds or None) of seed 0, trained in `pool`,
    and {seed: future of _seed_scores} of the seeds that --full trains there beside it; headline: (per_word,
    sample_steps) of their scores."""
    from scratch import diffusion as Df
    from scratch import guidance as G
    from scratch.draw import load_guided_model

    if run_dir is not None:
        import json
        import os

        params, config, alphas_cumprod = load_guided_model(os.path.join(run_dir, "checkpoint.npz"))
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics = json.load(f)
        cpu = metrics["final"].get("process_cpu_s")
        steps, seed = metrics["steps"], metrics["seed"]
        what = "the default run" if steps == G.DIGIT_RUN["steps"] else "a run"
        trained_by = metrics["config"].get("implementation", "scratch")  # a port's run: its weights in scratch's layout
        by = "" if trained_by == "scratch" else f", trained by the {trained_by} port"
        return (params, config, alphas_cumprod, f"{what} of {steps} steps (seed {seed}{by}, reused)", cpu), {}
    steps = G.DIGIT_RUN["steps"] if full else QUICK["steps"]
    job = pool.submit(_train, steps)
    # after seed 0, so that seed 1 trains beside it and seed 2 beside render's sweep of seed 0
    others = {seed: pool.submit(_seed_scores, steps, seed, *headline) for seed in SEEDS_FULL if seed and full}
    params, cpu = job.result()
    alphas_cumprod = Df.alpha_bar(Df.beta_schedule("linear", G.DIGIT_UNET.num_steps))
    protocol = "full protocol" if full else "SHORT protocol (--full trains the default run)"
    return (params, G.DIGIT_UNET, alphas_cumprod, f"{steps} steps, {protocol}", cpu), others


def render(out_dir, full=False, run_dir=None, per_word=None, sample_steps=None):
    """Both figures; run_dir reuses a run's checkpoint (and its saved sweep); per_word and sample_steps override the protocol's."""
    from scratch import guidance as G
    from scratch.draw import draw_number, parse_number

    long = full or run_dir is not None
    per_word = per_word or (100 if long else QUICK["per_word"])
    sample_steps = sample_steps or (G.DIGIT_RUN["sample_steps"] if long else QUICK["sample_steps"])
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        (params, config, alphas_cumprod, trained, cpu), others = _model(full, run_dir, pool, (per_word, sample_steps))
        began = time.process_time()
        sweep = _cached_sweep(run_dir, per_word, sample_steps)
        if sweep is None:
            sweep = G.guidance_sweep(params, config, alphas_cumprod, 0, SCALES, per_word, sample_steps)
        sweep_cpu = time.process_time() - began
        seeds = {0: (sweep[G.DIGIT_RUN["guidance"]][1], cpu), **{seed: job.result() for seed, job in others.items()}}

    fig = plt.figure(figsize=(17, 6.2))
    grid = fig.add_gridspec(1, len(SCALES) + 1, width_ratios=[1] * len(SCALES) + [1.35], wspace=0.08)
    for i, scale in enumerate(SCALES):
        images, scores = sweep[scale]
        shown = images.reshape(10, per_word, 28, 28)[:, :COLUMNS].reshape(-1, 28, 28)  # (10·COLUMNS, 28, 28)
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(_tiles(shown, COLUMNS), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([29 * r + 14 for r in range(10)], [f'"{w}"' for w in G.U.DIGIT_WORDS] if i == 0 else [],
                      fontsize=8)
        label = {0.0: "unconditional", 1.0: "conditional"}.get(scale, "guided")
        ax.set_title(f"s = {scale:g} ({label})\nword accuracy {scores['word_accuracy']:.1%}", fontsize=10)
    ax = fig.add_subplot(grid[0, -1])
    xs = list(SCALES)
    for key, style in (("word_accuracy", "o-"), ("precision", "s-"), ("recall", "^-")):
        ax.plot(xs, [sweep[s][1][key] for s in xs], style, label=key.replace("_", " "))
    ax.set_xlabel("guidance scale s"), ax.set_ylim(0, 1.02), ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(xs, [sweep[s][1]["fid"] for s in xs], "k--", alpha=0.6, label="FID (right)")
    twin.set_ylabel("FID (classifier features; lower is better)", fontsize=9)
    lines = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
    ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], fontsize=8, loc="upper left")
    ax.set_title(f"the trade-off, {10 * per_word} images per scale", fontsize=10)
    cpu_text = f"; training {cpu:.0f} CPU s" if cpu is not None else ""
    fig.suptitle(f"Classifier-free guidance, ε̃ = ε(x, ∅) + s·(ε(x, word) − ε(x, ∅)): scratch's U-Net after {trained}"
                 f"{cpu_text}; DDIM, {sample_steps} steps, the same x_T in every column", fontsize=11)
    save(fig, out_dir, "diffusion_digits.png")

    numbers = [parse_number(text) for text in NUMBERS]
    strips = [draw_number(n, params, config, alphas_cumprod, G.DIGIT_RUN["guidance"], sample_steps, seed)
              for seed, n in enumerate(numbers)]
    width = max(len(s) for s in strips)
    fig, axes = plt.subplots(len(strips), 1, figsize=(1.1 * width + 1, 1.35 * len(strips)))
    for ax, text, number, strip in zip(axes, NUMBERS, numbers, strips):
        canvas = np.full((28, width * 30 - 2), np.nan)  # NaN: left blank (white) after a shorter number
        canvas[:, :len(strip) * 30 - 2] = _row(strip)
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f'python -m scratch draw "{text}" --guidance {G.DIGIT_RUN["guidance"]:g}  →  {number}', fontsize=9,
                     loc="left")
    fig.tight_layout()
    save(fig, out_dir, "diffusion_draw.png")
    summary = {"files": ["diffusion_digits.png", "diffusion_draw.png"], "trained": trained, "train_cpu_seconds": cpu,
               "sweep_cpu_seconds": sweep_cpu, "images_per_scale": 10 * per_word}
    for scale in SCALES:
        scores = sweep[scale][1]
        for key in ("word_accuracy", "fid", "precision", "recall"):
            summary[f"s{scale:g}_{key}"] = float(scores[key])
    if len(seeds) > 1:
        summary.update(_seed_table(seeds, 10 * per_word, sample_steps))
    return summary


def _seed_table(seeds, images, sample_steps):
    """Print each seed's headline scores, their mean and their range; seeds: {seed: (scores, training CPU seconds)}.
    Returns each seed's numbers (suffix _seed{s} after seed 0) and the means."""
    from scratch import guidance as G

    scale = G.DIGIT_RUN["guidance"]
    print(f"\nGuided digits, the default run ({G.DIGIT_RUN['steps']:,} steps) on seeds {', '.join(map(str, seeds))}: "
          f"s = {scale:g}, DDIM {sample_steps} steps, {images:,} images a seed")
    print(f"  {'seed':>4}  {'word accuracy':>13}  {'FID':>7}  {'KID':>6}  {'precision':>9}  {'recall':>6}  {'IS':>5}  "
          f"{'train CPU s':>11}")

    def row(label, scores, cpu):
        print(f"  {label:>4}  {scores['word_accuracy']:>13.1%}  {scores['fid']:>7.1f}  {scores['kid']:>6.2f}  "
              f"{scores['precision']:>9.2f}  {scores['recall']:>6.2f}  {scores['inception_score']:>5.2f}  {cpu:>11.0f}")

    numbers = {}
    for seed, (scores, cpu) in seeds.items():
        row(str(seed), scores, cpu)
        suffix = f"_seed{seed}" if seed else ""  # seed 0's: the sweep's s{scale}_ numbers, with KID and IS beside them
        numbers.update({f"s{scale:g}_{key}{suffix}": float(scores[key]) for key in HEADLINE})
        if seed:
            numbers[f"train_cpu_seconds_seed{seed}"] = cpu
    by_key = {key: [float(scores[key]) for scores, _ in seeds.values()] for key in HEADLINE}
    row("mean", {key: np.mean(values) for key, values in by_key.items()}, np.mean([cpu for _, cpu in seeds.values()]))
    accuracy, fid = by_key["word_accuracy"], by_key["fid"]
    print(f"  range: word accuracy {min(accuracy):.1%} … {max(accuracy):.1%}, FID {min(fid):.1f} … {max(fid):.1f}")
    numbers.update({f"s{scale:g}_{key}_mean": float(np.mean(values)) for key, values in by_key.items()})
    return numbers


def _cached_sweep(run_dir, per_word, sample_steps):
    """The sweep that scratch/guidance.py's write_sweep saved in run_dir (sweep.json and sweep-s{scale}.npy), or None."""
    import json
    import os

    if run_dir is None or not os.path.exists(os.path.join(run_dir, "sweep.json")):
        return None
    with open(os.path.join(run_dir, "sweep.json")) as f:
        saved = json.load(f)
    if saved["per_word"] != per_word or saved["sample_steps"] != sample_steps or \
            not all(f"{s:g}" in saved["scores"] for s in SCALES):
        return None
    return {s: (np.load(os.path.join(run_dir, f"sweep-s{s:g}.npy")), saved["scores"][f"{s:g}"]) for s in SCALES}


def _row(strip):
    """Digits (k, 28, 28) side by side, 2 black columns apart: the draw command's strip (scratch/draw.py), unzoomed."""
    canvas = np.zeros((28, len(strip) * 30 - 2))
    for i, image in enumerate(strip):
        canvas[:, i * 30:i * 30 + 28] = image
    return canvas
