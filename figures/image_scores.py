"""The README's table "Image generators and their scores": the DCGAN and the conv VAE, three seeds each.

    image_scores.png   16 samples of each model's seed 0 beside 16 real training digits, and every seed's
                       FID (as a multiple of the floor's) and IS analogue beside the targets

and the printed table: each model's 1,000 samples (`python -m scratch train gan|vae --data mnist --arch conv
--seed S`, its samples.npy) scored against the 1,000 test digits exactly as `python -m scratch score` scores
them (scratch/scoring.py: FID, KID, precision and recall with k = 3, the IS analogue, on the features of the
cached digit classifier), one row per seed, a mean row with the range of FID and IS, and the floor: 1,000 real
training digits scored the same way. The targets are DCGAN IS ≥ 8 and FID ≤ 4× the floor, conv VAE IS ≥ 7.5
and FID ≤ 6× the floor, on every seed, so the worst seed is the one set beside each.

Each run is the command line itself (scratch/__main__.py's main, into a temporary folder): its defaults, its
trainers and its samples.npy, so the numbers are those of the two commands above. It prints its JSON summary
as it ends. The runs go two at a time, each in a spawned process on one BLAS thread: --full trains seeds
SEEDS (about 20 minutes on two idle cores), the default run seed 0 only. STEPS = None trains the command
line's default step counts; a test sets a few steps.
"""

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import matplotlib.pyplot as plt
import numpy as np

from figures import save
from figures.dcgan import _tiles

NAME = "image_scores"
SEEDS = (0, 1, 2)  # --full; the default run trains seed 0
STEPS = None  # None: the command line's defaults (CONV_DEFAULTS); a smoke test sets a few
# the key of each model's numbers → (its command line model, its name in the table, IS target, FID × floor target)
MODELS = {"dcgan": ("gan", "DCGAN", 8.0, 4.0), "conv_vae": ("vae", "conv VAE", 7.5, 6.0)}
SHOWN = 16  # samples drawn per model, as a 4 × 4 grid


def _train(model, seed, steps):
    """`python -m scratch train MODEL --data mnist --arch conv --seed SEED [--steps STEPS]`, in a temporary folder.

    Returns (its samples.npy (1000, 28, 28), the test ELBO of its last evaluation or None for the GAN,
    wall seconds, CPU seconds); the CPU seconds are this process's, the wall time of the run on an idle core.
    """
    import os
    import tempfile

    from scratch.__main__ import main
    from scratch.runs import read_metrics
    from scratch.scoring import load_samples_file
    from scratch.train_conv import single_threaded_blas

    with tempfile.TemporaryDirectory() as out, single_threaded_blas():
        argv = ["train", model, "--data", "mnist", "--arch", "conv", "--seed", str(seed), "--out", out, "--quiet"]
        began, cpu = time.perf_counter(), time.process_time()
        main(argv + ([] if steps is None else ["--steps", str(steps)]))
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        samples = load_samples_file(os.path.join(out, "samples.npy"))[:, 0]  # (1000, 28, 28), as `score` reads it
        final = read_metrics(os.path.join(out, "metrics.json"))["final"]
    return samples, final["test"]["elbo"] if model == "vae" else None, seconds, cpu


def _points(ax, runs, seeds, key, targets, target_label, floor=None):
    """One point per seed and model of runs[name][seed][key], each model's target a red dash across its points."""
    for s, seed in enumerate(seeds):
        offset = 0.12 * (s - (len(seeds) - 1) / 2)
        ax.plot([i + offset for i in range(len(MODELS))], [runs[name][seed][key] for name in MODELS], "o",
                color=f"C{s}", label=f"seed {seed}")
    for i, target in enumerate(targets):
        ax.hlines(target, i - 0.3, i + 0.3, colors="tab:red", linestyles="--", label=target_label if i == 0 else None)
    if floor is not None:
        ax.axhline(floor, color="gray", lw=0.8, ls=":", label="real training digits (the floor)")
    ax.set_xticks(range(len(MODELS)), [label for _, label, _, _ in MODELS.values()])
    ax.set_xlim(-0.6, len(MODELS) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)


def _row(label, seed, s, floor, elbo=None, training=""):
    """One line of the table: the scores `s` of a set, FID also as a multiple of the floor's."""
    elbo = f"{elbo:9.1f}" if elbo is not None else " " * 9
    print(f"  {label:<22} {seed:>4} {s['fid']:8.2f} {s['fid'] / floor['fid']:8.2f} {s['kid']:8.4f} "
          f"{s['precision']:9.2f} {s['recall']:6.2f} {s['inception_score']:5.2f} {elbo}  {training}".rstrip())


def _figure(runs, samples, real, floor, seeds, protocol, out_dir):
    fig = plt.figure(figsize=(17, 4.6))
    grid = fig.add_gridspec(1, 5, width_ratios=[1, 1, 1, 1.25, 1.25], wspace=0.25)
    first = seeds[0]
    panels = [(real, f"real training digits (the floor)\nFID {floor['fid']:.2f}, IS {floor['inception_score']:.2f}")]
    panels += [(samples[name][first], f"{label}, seed {first}\nFID {runs[name][first]['fid']:.1f} "
                f"({runs[name][first]['ratio']:.1f}× floor), IS {runs[name][first]['inception_score']:.2f}")
               for name, (_, label, _, _) in MODELS.items()]
    for i, (images, title) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(_tiles(images[:SHOWN], 4), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    ratio_ax, is_ax = fig.add_subplot(grid[0, 3]), fig.add_subplot(grid[0, 4])
    is_targets, fid_targets = zip(*[(score, fid) for _, _, score, fid in MODELS.values()])
    _points(ratio_ax, runs, seeds, "ratio", fid_targets, f"target (≤ {' / ≤ '.join(f'{t:g}×' for t in fid_targets)})",
            floor=1.0)
    ratio_ax.set_ylim(bottom=0.0)
    ratio_ax.set_title("FID as a multiple of the floor's\n(lower is better)", fontsize=9)
    _points(is_ax, runs, seeds, "inception_score", is_targets, f"target (≥ {' / ≥ '.join(f'{t:g}' for t in is_targets)})",
            floor=floor["inception_score"])
    is_ax.set_ylim(0.0, 10.3)
    is_ax.set_title("IS analogue, exp E[KL(p(y | x) ‖ p(y))]\n(at most 10; higher is better)", fontsize=9)
    fig.suptitle(f"1,000 samples of each model scored against the 1,000 test digits on the features of scratch's digit "
                 f"classifier (python -m scratch score)\n{protocol}", fontsize=10, y=1.04)
    return save(fig, out_dir, "image_scores.png")


def render(out_dir, full=False):
    from scratch.__main__ import CONV_DEFAULTS
    from scratch.scoring import default_classifier, load_classifier_data, real_floor, score_samples

    seeds = SEEDS if full else SEEDS[:1]
    # the classifier first, alone: on first use it trains (minutes), and then the runs' times are their own
    classifier = default_classifier(quiet=False)
    jobs = [(name, seed) for seed in seeds for name in MODELS]
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {(name, seed): pool.submit(_train, MODELS[name][0], seed, STEPS) for name, seed in jobs}
        done = {job: future.result() for job, future in futures.items()}
    floor = real_floor(classifier)
    runs = {name: {} for name in MODELS}  # name → seed → scores, "ratio" (FID ÷ the floor's), ELBO and times
    for (name, seed), (images, elbo, seconds, cpu) in done.items():
        scores = score_samples(images, classifier)
        runs[name][seed] = {**scores, "ratio": scores["fid"] / floor["fid"], "elbo": elbo, "seconds": seconds, "cpu": cpu}

    if STEPS is None:
        d = {name: CONV_DEFAULTS[MODELS[name][0]] for name in MODELS}
        protocol = (f"the command line's default runs: DCGAN {d['dcgan']['steps']:,} steps of {d['dcgan']['batch_size']}, "
                    f"conv VAE {d['conv_vae']['steps']:,} steps of {d['conv_vae']['batch_size']}; seeds "
                    f"{', '.join(map(str, seeds))}")
    else:
        protocol = f"a TEST protocol: {STEPS} steps each, not the default runs; seeds {', '.join(map(str, seeds))}"
    print(f"\nImage generators and their scores ({protocol})")
    header = (f"  {'samples (1,000)':<22} {'seed':>4} {'FID':>8} {'× floor':>8} {'KID':>8} {'precision':>9} {'recall':>6} "
              f"{'IS':>5} {'test ELBO':>9}  training")
    print(header + "\n  " + "-" * len(header))
    _row("real training digits", "", floor, floor)
    numbers = {"file": "image_scores.png", "floor_fid": floor["fid"], "floor_is": floor["inception_score"],
               "floor_precision": floor["precision"], "floor_recall": floor["recall"]}
    for name, (_, label, _, _) in MODELS.items():
        by_seed = runs[name]
        for seed in seeds:
            r = by_seed[seed]
            _row(label, seed, r, floor, r["elbo"], f"{r['seconds']:.0f} s ({r['cpu']:.0f} CPU s)")
            numbers.update({f"{name}_{key}_seed{seed}": r[field] for key, field in (
                ("fid", "fid"), ("is", "inception_score"), ("precision", "precision"), ("recall", "recall"))})
            if r["elbo"] is not None:
                numbers[f"{name}_test_elbo_seed{seed}"] = r["elbo"]
            numbers[f"{name}_train_seconds_seed{seed}"] = r["seconds"]
        mean = {key: float(np.mean([by_seed[seed][key] for seed in seeds]))
                for key in ("fid", "kid", "precision", "recall", "inception_score")}
        elbos = [by_seed[seed]["elbo"] for seed in seeds if by_seed[seed]["elbo"] is not None]
        fids, scores = [by_seed[seed]["fid"] for seed in seeds], [by_seed[seed]["inception_score"] for seed in seeds]
        _row(f"{label}, mean", "", mean, floor, float(np.mean(elbos)) if elbos else None,
             f"FID {min(fids):.2f} … {max(fids):.2f}, IS {min(scores):.2f} … {max(scores):.2f}")
        numbers.update({f"{name}_fid_mean": mean["fid"], f"{name}_fid_ratio_mean": mean["fid"] / floor["fid"],
                        f"{name}_is_mean": mean["inception_score"], f"{name}_precision_mean": mean["precision"],
                        f"{name}_recall_mean": mean["recall"]})

    real = load_classifier_data()[0][::250, 0]  # (16, 28, 28): the file is sorted by digit, so these run from 0 to 9
    samples = {name: {seed: done[(name, seed)][0] for seed in seeds} for name in MODELS}
    _figure(runs, samples, real, floor, seeds, protocol, out_dir)
    # the targets hold on every seed, so the worst seed is the one set beside each
    which = f"worst of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    which += "" if STEPS is None else f" (test run, {STEPS} steps)"
    numbers["targets"] = []
    for name, (_, _, is_target, fid_target) in MODELS.items():
        label = name.replace("_", " ")
        numbers["targets"] += [
            (f"{label} IS, {which}", min(r["inception_score"] for r in runs[name].values()), is_target, ">="),
            (f"{label} FID × floor, {which}", max(r["ratio"] for r in runs[name].values()), fid_target, "<="),
        ]
    return numbers
