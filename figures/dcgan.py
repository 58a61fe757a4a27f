"""The DCGAN (scratch/dcgan.py) trained in NumPy on the 28×28 MNIST digits.

    dcgan_digits.png    generated digits over training (the same 16 noise vectors at every snapshot),
                        and generated digits each beside its nearest training digit: does the GAN copy?

The default protocol is SHORT: QUICK_STEPS steps (about a minute and a half on an idle core),
which draws recognisable but rough digits; `--full` trains the command line's default run
(`python -m scratch train gan --data mnist --arch conv`). The title says which one it is.
Training runs in a spawned process on one BLAS thread (as every trainer in scratch/train_conv.py).
"""

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import matplotlib.pyplot as plt
import numpy as np

from figures import save

NAME = "dcgan"
QUICK_STEPS = 600
NOISE, NEIGHBOURS = 12, 12  # digits per snapshot row; generated digits matched to their nearest training digit


def _snapshot_steps(steps):
    return sorted({s for s in (50, 150, steps // 4, steps // 2, steps) if 0 < s <= steps})


def _train(steps):
    """Train the default DCGAN for `steps` steps; return (snapshots {step: images (NOISE, 28, 28)}, final samples,
    the training digits, seconds, CPU seconds, the config)."""
    from scratch.__main__ import CONV_DEFAULTS
    from scratch.dcgan import DCGANConfig
    from scratch.runs import EVAL_NOISE
    from scratch.train_conv import ScratchDCGANTrainer

    d = CONV_DEFAULTS["gan"]
    config = DCGANConfig(z_dim=d["z_dim"], gen_width=d["width"], disc_width=d["width"])
    trainer = ScratchDCGANTrainer(config, "mnist", 0, steps, batch_size=d["batch_size"], lr=d["lr"], lr_end=d["lr_end"])
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
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        snapshots, samples, train, seconds, cpu, config = pool.submit(_train, steps).result()
    index, distance = _nearest(samples, train)
    test = load_mnist_5k("test", np.float32)[0][::5, 0]  # (200, 28, 28), 20 of each digit
    _, real_distance = _nearest(test, train)  # how far a real unseen digit lies from its nearest training digit
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.6), gridspec_kw={"width_ratios": [NOISE / 4, 1.1], "wspace": 0.06})
    rows = np.concatenate([snapshots[s] for s in sorted(snapshots)])  # (snapshots·NOISE, 28, 28)
    axes[0].imshow(_tiles(rows, NOISE), cmap="gray", vmin=0, vmax=1)
    axes[0].set_yticks([29 * i + 14 for i in range(len(snapshots))], [f"step {s}" for s in sorted(snapshots)])
    axes[0].set_xticks([]), axes[0].set_title(f"the same {NOISE} noise vectors through training (evaluation mode)", fontsize=10)
    pairs = np.stack([samples[:NEIGHBOURS], train[index[:NEIGHBOURS]]], axis=1)  # (K, 2, 28, 28)
    axes[1].imshow(_tiles(pairs.reshape(-1, 28, 28), 4), cmap="gray", vmin=0, vmax=1)
    axes[1].set_xticks([29 * i + 14 for i in range(4)], ["generated", "nearest\ntraining", "generated", "nearest\ntraining"],
                       fontsize=8)
    axes[1].set_yticks([])
    axes[1].set_title(f"nearest of the 4,000 training digits (pixel distance)\ngenerated: median {np.median(distance):.2f}; "
                      f"real test digits: median {np.median(real_distance):.2f}", fontsize=10)
    protocol = "full protocol (the command line's default run)" if full else f"SHORT protocol ({steps} steps; --full trains longer)"
    fig.suptitle(f"DCGAN trained in NumPy on 28×28 MNIST, {protocol}: {steps} steps of {CONV_DEFAULTS['gan']['batch_size']}, "
                 f"widths {config['gen_width']}/{config['disc_width']}, Adam 2e-4 β1 0.5; {cpu:.0f} CPU s", fontsize=11)
    save(fig, out_dir, "dcgan_digits.png")
    return {"file": "dcgan_digits.png", "steps": steps, "train_seconds": seconds, "train_cpu_seconds": cpu,
            "nn_distance_generated_median": float(np.median(distance)),
            "nn_distance_real_test_median": float(np.median(real_distance))}
