"""Training runs: one loop for every implementation, with metrics, checkpoints and exact resume.

Not math. A run is a pure function of (seed, step): step s trains on the batch that
`batch_for_step` picks and with the noise that `noise_for_step` draws, whatever happened
before, so a run stopped after step s and resumed from its checkpoint continues exactly as if
it had never stopped. Files written to the run's folder:

    metrics.json     config, seed, wall time, and the figures of every evaluation
    checkpoint.npz   parameters in the scratch layout (+ optimizer state under "optim.",
                     the step under "run.step", the model under "run.model"); written
                     atomically, loaded with allow_pickle=False

A folder never loses a run by mistake. A run into a folder that holds a checkpoint refuses
(RunError, naming the folder, the checkpoint's model and step) unless it is asked to `resume`
the run there or to `overwrite` it. Overwriting replaces nothing up front: the old checkpoint
and metrics.json stay until the new run's first evaluation replaces them (each file by one
os.replace), so a new run that dies before then leaves the old run whole and resumable; from
that evaluation on, the folder holds the new run (metrics.json is rewritten at every evaluation,
beside its checkpoint). Files written at a run's end (samples.npy) are the old run's until then.

A resumed checkpoint must be the run this trainer would write: the same model, and every array
of the trainer's own state() under the same name, shape and dtype (strings, such as a
vocabulary, equal). Anything else is a RunError with a one-line message, never a KeyError or a
zipfile.BadZipFile from deep inside.
"""

import contextlib
import json
import math
import os
import tempfile
import time
import zipfile
import zlib

import numpy as np

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"


class RunError(ValueError):
    """A run or a command asked for in a way that cannot work: a folder that holds another run, a
    checkpoint that is missing, corrupt, of another model or of another shape. The message is one
    line that names the problem; the command line prints it as `prog: error: …` and exits with
    status 2 (argparse's status for a usage mistake), without a traceback."""


class MissingCheckpoint(RunError, FileNotFoundError):
    """No checkpoint where one was asked for: a RunError, and a FileNotFoundError, which is what it is."""


# What np.load raises on a file that is not a whole .npz of plain arrays: truncated (BadZipFile, EOFError),
# a member's bytes damaged (BadZipFile "Bad CRC-32", ValueError from the .npy header or a short read),
# pickled objects (ValueError with allow_pickle=False), unreadable (OSError).
UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError)


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


def load_checkpoint(path, model=None, expect=None):
    """Load a checkpoint written by save_checkpoint; no pickled objects are ever loaded.

    Every member is read here, so a damaged file fails now, as one RunError that names it
    (MissingCheckpoint when there is no file). `model` ("vae", "gan-conv", …): the checkpoint must
    be that model's (checkpoint_model). `expect`: a dict of arrays, such as a fresh trainer's
    state(); each must be in the checkpoint with its shape and dtype (layout_mismatch).
    """
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MissingCheckpoint(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise RunError(f"{path} is a folder, not a checkpoint .npz") from None
    except PermissionError:
        raise RunError(f"{path} cannot be read: permission denied") from None
    except UNREADABLE as error:
        raise RunError(f"{path} is truncated or corrupt, not a checkpoint .npz ({_first_line(error)})") from None
    if isinstance(data, np.ndarray):
        raise RunError(f"{path} holds a single .npy array {data.shape}, not a checkpoint .npz of named arrays")
    try:
        with data:
            arrays = {name: data[name] for name in data.files}
    except UNREADABLE as error:
        raise RunError(f"{path} is truncated or corrupt: an array inside does not load ({_first_line(error)})") from None
    if model is not None:
        found = checkpoint_model(arrays)
        if found != model:
            raise RunError(f"{path} holds {describe_checkpoint(arrays)}, not a {_label(model)} checkpoint")
    if expect is not None:
        problem = layout_mismatch(arrays, expect)
        if problem:
            raise RunError(f"{path} ({describe_checkpoint(arrays)}) does not fit: {problem}")
    return arrays


def _first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def model_name(config):
    """The model a trainer's config() names, as checkpoints record it: "vae", "gan", …, "-conv" added
    for --arch conv ("gan-conv", as its run folder runs/gan-conv-IMPLEMENTATION); None if it names none."""
    model = config.get("model")
    if model is None:
        return None
    return f"{model}-conv" if config.get("arch") == "conv" else str(model)


def _label(name):
    return f"{name[:-len('-conv')]} (--arch conv)" if name.endswith("-conv") else name


def checkpoint_model(arrays):
    """The model whose run wrote a checkpoint: its "run.model", or, in a checkpoint written before runs
    recorded it, the model its parameter names belong to; None when neither tells."""
    recorded = arrays.get("run.model")
    if recorded is not None and recorded.dtype.kind == "U" and recorded.shape == ():
        return str(recorded)
    if "vocab.src" in arrays:
        return "transformer"
    if "wte" in arrays and "vocab.tokens" in arrays:
        return "gpt"
    if "conv1.w" in arrays:
        return "classifier"
    if "gen.bn1.gamma" in arrays:  # the DCGAN's batch norm; the MLP GAN has none
        return "gan-conv"
    if "gen.W1" in arrays:
        return "gan"
    if "enc.W1" in arrays and arrays["enc.W1"].ndim == 4:  # the conv VAE's first convolution
        return "vae-conv"
    if "enc.W_mu" in arrays:
        return "vae"
    return None


def checkpoint_step(arrays):
    """The step a checkpoint was written at ("run.step"), or None if it holds no integer step."""
    step = arrays.get("run.step")
    if step is None or step.shape != () or step.dtype.kind not in "iu":
        return None
    return int(step)


def describe_checkpoint(arrays):
    """"a vae run at step 2000", for messages."""
    model, step = checkpoint_model(arrays), checkpoint_step(arrays)
    what = f"a {_label(model)} run" if model is not None else "a run of an unrecognised model"
    return f"{what} at step {step}" if step is not None else f"{what} with no step (not written by a training run)"


def layout_mismatch(arrays, expect):
    """A one-line description of how `arrays` differs from the layout of `expect`, or None if it fits.

    Every array of `expect` must be in `arrays` under its name, with its shape and dtype; string
    arrays (vocabularies, a JSON config) must be equal. Arrays only in `arrays` are let be (the
    optimizer's moments, which a fresh trainer does not have yet).
    """
    problems = []
    for name, want in expect.items():
        want = np.asarray(want)
        got = arrays.get(name)
        if got is None:
            problems.append(f"it has no {name!r}")
        elif want.dtype.kind in "US" or got.dtype.kind in "US":
            if got.shape != want.shape or not np.array_equal(got, want):
                problems.append(f"its {name!r} differs from this run's")
        elif got.shape != want.shape:
            problems.append(f"{name!r} has shape {tuple(got.shape)} there, {tuple(want.shape)} here")
        elif got.dtype != want.dtype:
            problems.append(f"{name!r} is {got.dtype} there, {want.dtype} here")
    if not problems:
        return None
    more = len(problems) - 1
    return problems[0] + (f" (and {more} more array{'s' if more > 1 else ''} differ)" if more else "")


def read_metrics(path):
    """A run's metrics.json as a dict; RunError if it is not readable JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError) as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunError(f"{path} is not a readable metrics.json ({_first_line(error)})") from None
    if not isinstance(metrics, dict):
        raise RunError(f"{path} is not a run's metrics.json: it holds a JSON {type(metrics).__name__}")
    return metrics


def prepare_out(out_dir, resume=False, overwrite=False, model=None):
    """Check, before anything trains, that a run may write into out_dir; the arrays to resume from, or None.

    out_dir must be a folder or a path where one can be made. If it holds a checkpoint, the run
    refuses (RunError naming the folder and the checkpoint's model and step) unless `resume`
    (continue it; it must load and, given `model`, be that model's) or `overwrite` (replace it:
    nothing is removed now; the new run's first checkpoint replaces it atomically). The command
    line calls this before loading any data; run_training calls it again, whoever its caller.
    """
    if resume and overwrite:
        raise RunError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == os.path.abspath(out_dir) else f"lies inside {existing}, a file"
        raise RunError(f"--out {out_dir} {where}, not a folder: give a folder for the run's files")
    checkpoint_path = os.path.join(out_dir, CHECKPOINT)
    if resume:
        try:
            return load_checkpoint(checkpoint_path, model=model)
        except MissingCheckpoint:
            raise MissingCheckpoint(f"--resume: no checkpoint at {checkpoint_path} to continue from") from None
    if os.path.lexists(checkpoint_path) and not overwrite:
        try:
            what = describe_checkpoint(load_checkpoint(checkpoint_path))
        except RunError as error:
            what = f"a checkpoint that does not load ({error})"
        raise RunError(f"{out_dir} already holds {what}: pass --resume to continue it, --overwrite to replace it, "
                       f"or another --out")
    return None


def _config_differences(previous, config, limit=4):
    """"z_dim 2 there, 4 here" for the options that differ between two configs (not the implementation)."""
    config = json.loads(json.dumps(config, default=_plain))  # as metrics.json holds it: tuples become lists
    differ = [k for k in config if k in previous and k not in ("implementation", "optimizer") and config[k] != previous[k]]
    text = ", ".join(f"{k} {previous[k]!r} there, {config[k]!r} here" for k in differ[:limit])
    return text + (", …" if len(differ) > limit else "")


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


def blas_threads(limit):
    """A context with NumPy's BLAS on `limit` threads (threadpoolctl, installed with scikit-learn); None: as it is.

    Not math, speed: the small products of these models gain nothing from two BLAS threads, and on a
    busy machine OpenBLAS's threads spin while they wait for a core. A Transformer step took 0.59 CPU
    seconds with them and 0.05 on one thread, the machine loaded by other work (load average 9 on two cores).
    """
    if limit is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit, user_api="blas")


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


def run_training(trainer, out_dir, steps, seed, eval_every, resume=False, make_bar=None, describe=None,
                 overwrite=False):
    """Train `trainer` for `steps` steps, evaluating every `eval_every`; write metrics and checkpoint.

    `make_bar(total, initial)`, if given, returns a progress bar (update, set_postfix, close), as
    tqdm's does; the command line passes one on a terminal.
    `trainer` provides: `train_step(step) -> float` (one optimizer step, batch and noise chosen
    from the step number), `evaluate() -> dict` of figures, `state() -> dict of arrays` in the
    scratch layout, `load_state(arrays)`, and `config() -> dict`.
    A folder that holds a checkpoint is refused unless `resume` or `overwrite` (prepare_out); a
    checkpoint resumed must fit the trainer's own state() (layout_mismatch). Both are RunErrors.
    Returns the metrics dict (also written to out_dir/metrics.json, at every evaluation and at the end).
    """
    config = trainer.config()
    model = model_name(config)
    arrays = prepare_out(out_dir, resume=resume, overwrite=overwrite, model=model)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise RunError(f"--out {out_dir}: cannot make the folder ({error.strerror or error})") from None
    checkpoint_path, metrics_path = os.path.join(out_dir, CHECKPOINT), os.path.join(out_dir, METRICS)
    start, history, elapsed = 0, [], 0.0
    if resume:
        previous = read_metrics(metrics_path) if os.path.exists(metrics_path) else {}
        problem = layout_mismatch(arrays, trainer.state())
        if problem:
            differences = _config_differences(previous.get("config", {}), config)
            raise RunError(f"--resume: {checkpoint_path} ({describe_checkpoint(arrays)}) was trained with other "
                           f"options: {problem}" + (f"; its metrics.json: {differences}" if differences else ""))
        start = checkpoint_step(arrays)
        if start is None:
            raise RunError(f"--resume: {checkpoint_path} holds no run.step: it was not written by a training run")
        if start > steps:
            raise RunError(f"--resume: {checkpoint_path} is at step {start}, past --steps {steps}: ask for more steps")
        trainer.load_state({k: v for k, v in arrays.items() if k not in ("run.step", "run.model")})
        history = [h for h in previous.get("history", []) if h["step"] <= start]
        elapsed = previous.get("wall_time_s", 0.0)
    recorded = {"run.model": np.array(model)} if model is not None else {}
    bar = make_bar(steps, start) if make_bar is not None else None
    began = time.perf_counter()

    def metrics():
        return {
            "config": trainer.config(),
            "seed": seed,
            "steps": steps,
            "resumed_from_step": start if resume else None,
            "wall_time_s": elapsed + time.perf_counter() - began,
            "final": history[-1] if history else None,
            "history": history,
        }

    losses = []
    for step in range(start + 1, steps + 1):
        losses.append(trainer.train_step(step))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step % eval_every == 0 or step == steps:
            history.append({"step": step, "train_loss": float(np.mean(losses)), **trainer.evaluate()})
            losses = []
            save_checkpoint(checkpoint_path, {**trainer.state(), "run.step": np.array(step), **recorded})
            if step < steps:  # metrics.json describes the checkpoint beside it, should the run stop here
                write_metrics(metrics_path, metrics())
    if bar is not None:
        bar.close()
    final = metrics()
    if describe is not None:
        final.update(describe())
    write_metrics(metrics_path, final)
    return final
