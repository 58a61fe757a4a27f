"""The DCGAN (scratch/dcgan.py) trained in NumPy on the 28×28 MNIST digits.

    dcgan_digits.png    generated digits over training (the same noise vectors at every snapshot), in NumPy
                        and in the PyTorch port side by side, and generated digits each beside its nearest
                        training digit: does the GAN copy?

The default protocol is SHORT: QUICK_STEPS steps (about a minute and a half on an idle core),
which draws recognisable but rough digits; `--full` trains the command line's default run
(`python -m scratch train gan --data mnist --arch conv`). The title says which one it is.
The two trainings run at once, each in a spawned process on one thread (as the trainers of
scratch/train_conv.py and ports/torch/train_conv.py do), so the figure takes the time of one on two cores.
PyTorch (ports/torch/train_conv.py) starts from scratch's weights and takes the same batches and
noise: in float32 the two runs round differently and drift apart slowly, so their digits are alike,
not identical; the title gives the mean and the largest pixel difference of the last snapshot.
"""

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import matplotlib.pyplot as plt
import numpy as np

from figures import save

NAME = "dcgan"
QUICK_STEPS = 600
NOISE, NEIGHBOURS = 8, 12  # digits per snapshot row (each implementation); generated digits matched to their nearest training digit


def _snapshot_steps(steps):
    return sorted({s for s in (50, 150, steps // 4, steps // 2, steps) if 0 < s <= steps})


def _train(steps, implementation="scratch"):
    """Train the default DCGAN for `steps` steps in scratch or the PyTorch port; return (snapshots {step: images
    (NOISE, 28, 28)}, final samples, the training digits, seconds, CPU seconds, the config)."""
    from scratch.__main__ import CONV_DEFAULTS
    from scratch.dcgan import DCGANConfig
    from scratch.runs import EVAL_NOISE
    from scratch.train_conv import ScratchDCGANTrainer

    if implementation == "torch":
        from ports.torch.train_conv import TorchDCGANTrainer as Trainer
    else:
        Trainer = ScratchDCGANTrainer
    d = CONV_DEFAULTS["gan"]
    config = DCGANConfig(z_dim=d["z_dim"], gen_width=d["width"], disc_width=d["width"])
    trainer = Trainer(config, "mnist", 0, steps, batch_size=d["batch_size"], lr=d["lr"], lr_end=d["lr_end"])
    z = trainer.noise(0, EVAL_NOISE, NOISE)  # (NOISE, Z), the same at every snapshot
    snapshots, began, cpu = {}, time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
        trainer.train_step(step)
        if step in _snapshot_steps(steps):
            snapshots[step] = trainer.generate(z)[:, 0]  # (NOISE, 28, 28), evaluation mode
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    return snapshots, trainer.samples(200)[:, 0], trainer.x_train[:, 0], seconds, cpu, config._asdict()


def _nearest(samples, train):
    """For each sample, the index of its nearest training digit and the Euclidean distance, in pixels."""
    s, t = samples.reshape(len(samples), -1), train.reshape(len(train), -1)  # (N, 784), (M, 784)
    d2 = (s * s).sum(1)[:, None] - 2.0 * s @ t.T + (t * t).sum(1)[None, :]  # (N, M)
    index = np.argmin(d2, axis=1)
    return index, np.sqrt(np.maximum(d2[np.arange(len(s)), index], 0.0))


def _tiles(images, cols):
    rows = -(-len(images) // cols)
    canvas = np.ones((rows * 29 - 1, cols * 29 - 1))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * 29:r * 29 + 28, c * 29:c * 29 + 28] = image
    return canvas


def render(out_dir, full=False):
    from scratch.__main__ import CONV_DEFAULTS
    from scratch.data import load_mnist_5k

    steps = CONV_DEFAULTS["gan"]["steps"] if full else QUICK_STEPS
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        runs = [pool.submit(_train, steps, implementation) for implementation in ("scratch", "torch")]
        (snapshots, samples, train, seconds, cpu, config), (torch_snapshots, _, _, torch_seconds, torch_cpu, _) = (
            run.result() for run in runs)
    index, distance = _nearest(samples, train)
    test = load_mnist_5k("test", np.float32)[0][::5, 0]  # (200, 28, 28), 20 of each digit
    _, real_distance = _nearest(test, train)  # how far a real unseen digit lies from its nearest training digit
    last = max(snapshots)
    gap = np.abs(snapshots[last] - torch_snapshots[last])  # (NOISE, 28, 28), pixels in [0, 1]
    difference, mean_difference = float(gap.max()), float(gap.mean())
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6),
                             gridspec_kw={"width_ratios": [NOISE / 4, NOISE / 4, 1.1], "wspace": 0.06})
    for ax, shots, who, spent in ((axes[0], snapshots, "scratch (NumPy)", cpu), (axes[1], torch_snapshots, "PyTorch port", torch_cpu)):
        rows = np.concatenate([shots[s] for s in sorted(shots)])  # (snapshots·NOISE, 28, 28)
        ax.imshow(_tiles(rows, NOISE), cmap="gray", vmin=0, vmax=1)
        ax.set_yticks([29 * i + 14 for i in range(len(shots))], [f"step {s}" for s in sorted(shots)])
        ax.set_xticks([])
        ax.set_title(f"{who}: the same {NOISE} noise vectors through training\n(evaluation mode; {spent:.0f} CPU s)", fontsize=10)
    axes[1].set_yticks([])
    pairs = np.stack([samples[:NEIGHBOURS], train[index[:NEIGHBOURS]]], axis=1)  # (K, 2, 28, 28)
    axes[2].imshow(_tiles(pairs.reshape(-1, 28, 28), 4), cmap="gray", vmin=0, vmax=1)
    axes[2].set_xticks([29 * i + 14 for i in range(4)], ["generated", "nearest\ntraining", "generated", "nearest\ntraining"],
                       fontsize=8)
    axes[2].set_yticks([])
    axes[2].set_title(f"scratch's digits beside the nearest of the 4,000 training\ndigits (pixel distance): generated "
                      f"median {np.median(distance):.2f}; real test digits {np.median(real_distance):.2f}", fontsize=10)
    protocol = "full protocol (the command line's default run)" if full else f"SHORT protocol ({steps} steps; --full trains longer)"
    fig.suptitle(f"DCGAN on 28×28 MNIST, {protocol}: {steps} steps of {CONV_DEFAULTS['gan']['batch_size']}, "
                 f"widths {config['gen_width']}/{config['disc_width']}, Adam {CONV_DEFAULTS['gan']['lr']:g} β1 0.5\nthe same weights, batches and noise "
                 f"in both; in float32 they drift apart: at step {last} the pixels differ by {mean_difference:.3f} on average, "
                 f"{difference:.2f} at most", fontsize=11, y=1.02)
    save(fig, out_dir, "dcgan_digits.png")
    return {"file": "dcgan_digits.png", "steps": steps, "train_seconds": seconds, "train_cpu_seconds": cpu,
            "torch_train_seconds": torch_seconds, "torch_train_cpu_seconds": torch_cpu,
            "scratch_torch_max_pixel_difference": difference, "scratch_torch_mean_pixel_difference": mean_difference,
            "nn_distance_generated_median": float(np.median(distance)),
            "nn_distance_real_test_median": float(np.median(real_distance))}
