"""Training runs: one loop for every implementation, with metrics, checkpoints and exact resume.

Not math. A run is a pure function of (seed, step): step s trains on the batch that
`batch_for_step` picks and with the noise that `noise_for_step` draws, whatever happened
before, so a run stopped after step s and resumed from its checkpoint continues exactly as if
it had never stopped. Files written to the run's folder:

    metrics.json     config, seed, wall time, and the figures of every evaluation
    checkpoint.npz   parameters in the scratch layout (+ optimizer state under "optim.",
                     the step under "run.step"); written atomically, loaded with allow_pickle=False
"""

import json
import math
import os
import tempfile
import time

import numpy as np

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"


def _atomic_write(path, write):
    """Write through a temporary file in the same folder, fsync it, then os.replace: a reader
    (or a crash) sees the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(path, arrays):
    """Save a flat dict of arrays as one .npz, atomically."""
    _atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def load_checkpoint(path):
    """Load a checkpoint written by save_checkpoint; no pickled objects are ever loaded."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def write_metrics(path, metrics):
    _atomic_write(path, lambda f: f.write(json.dumps(metrics, indent=2, default=_plain).encode()))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "_asdict"):
        return value._asdict()
    raise TypeError(f"cannot write {type(value).__name__} to metrics.json")


def batch_for_step(step, n, batch_size, seed, drop_last=False):
    """Indices of the examples that 1-based step `step` trains on: epochs of a fresh permutation.

    The last batch of an epoch keeps the remainder, or with drop_last the remainder is skipped
    and every batch is full (a packed GAN discriminator needs a batch that m divides).
    """
    from scratch.data import epoch_order

    if drop_last and n < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} examples: drop_last would leave no batch")
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    epoch, position = divmod(step - 1, per_epoch)
    order = epoch_order(n, seed, epoch)  # a pure function of (seed, epoch)
    return order[position * batch_size : (position + 1) * batch_size]


TRAIN_NOISE, EVAL_NOISE = 1, 2  # separate streams: evaluating never shifts the training noise


def noise_for_step(step, seed, shape, dtype=np.float64, stream=TRAIN_NOISE):
    """The standard-normal noise of step `step`, a pure function of (seed, stream, step)."""
    return np.random.default_rng([seed, stream, step]).standard_normal(shape).astype(dtype)


def run_training(trainer, out_dir, steps, seed, eval_every, resume=False, make_bar=None, describe=None):
    """Train `trainer` for `steps` steps, evaluating every `eval_every`; write metrics and checkpoint.

    `make_bar(total, initial)`, if given, returns a progress bar (update, set_postfix, close), as
    tqdm's does; the command line passes one on a terminal.
    `trainer` provides: `train_step(step) -> float` (one optimizer step, batch and noise chosen
    from the step number), `evaluate() -> dict` of figures, `state() -> dict of arrays` in the
    scratch layout, `load_state(arrays)`, and `config() -> dict`.
    Returns the metrics dict (also written to out_dir/metrics.json).
    """
    os.makedirs(out_dir, exist_ok=True)
    checkpoint_path, metrics_path = os.path.join(out_dir, CHECKPOINT), os.path.join(out_dir, METRICS)
    start, history, elapsed = 0, [], 0.0
    if resume:
        if not os.path.exists(checkpoint_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
        arrays = load_checkpoint(checkpoint_path)
        start = int(arrays.pop("run.step"))
        trainer.load_state(arrays)
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                previous = json.load(f)
            history = [h for h in previous.get("history", []) if h["step"] <= start]
            elapsed = previous.get("wall_time_s", 0.0)
    bar = make_bar(steps, start) if make_bar is not None else None
    began = time.perf_counter()
    losses = []
    for step in range(start + 1, steps + 1):
        losses.append(trainer.train_step(step))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step % eval_every == 0 or step == steps:
            history.append({"step": step, "train_loss": float(np.mean(losses)), **trainer.evaluate()})
            losses = []
            save_checkpoint(checkpoint_path, {**trainer.state(), "run.step": np.array(step)})
    if bar is not None:
        bar.close()
    metrics = {
        "config": trainer.config(),
        "seed": seed,
        "steps": steps,
        "resumed_from_step": start if resume else None,
        "wall_time_s": elapsed + time.perf_counter() - began,
        "final": history[-1] if history else None,
        "history": history,
    }
    if describe is not None:
        metrics.update(describe())
    write_metrics(metrics_path, metrics)
    return metrics
