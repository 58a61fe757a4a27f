"""What `python -m scratch train classifier` trains and `python -m scratch score` runs.

Not math: the trainer of the digit classifier (scratch/classifier.py), the one classifier every
score is measured with, and the scoring of a file of generated images against the 1,000 test
digits with the scores of scratch/metrics.py.

The ruler must be the same for every row of the scores table, and nothing trained ships in git.
So the default classifier is trained on first use, with a fixed recipe and seed (the defaults of
`python -m scratch train classifier`: seed 0, DEFAULT_STEPS steps), and cached as
$XDG_CACHE_HOME/genai-from-scratch/classifier-v1.npz (or ~/.cache/…), where scratch/data.py
caches the MNIST digits. A cache that does not load, or holds other shapes or another step
count, is retrained over. Training is deterministic on one machine (fixed seed, fixed batches
and shifts per step); another machine's BLAS may round float32 sums in another order, so its
features can differ in the last bits and its scores in the third or fourth digit. To compare
with someone else's numbers exactly, pass their checkpoint: `--classifier DIR/checkpoint.npz`.
"""

import os
import warnings

import numpy as np

from scratch import classifier as C
from scratch import metrics as M
from scratch.optim import Adam, exponential_decay
from scratch.runs import batch_for_step, checkpoint_model, describe_checkpoint, load_checkpoint, run_training
from scratch.transformer import cross_entropy_backward, cross_entropy_forward

AUGMENT_STREAM = 7  # the shifts and the dropout mask of step s come from default_rng([seed, 7, s])
DEFAULT_STEPS, DEFAULT_SEED = 1500, 0  # the cached classifier's run: 24 epochs of the 4,000 digits in batches of 64
CACHE_NAME = "classifier-v1.npz"


def shift_images(x, rng, max_shift):
    """Each image (B, 1, H, W) moved by its own random (dy, dx) ∈ [−s, s]², zeros shifted in.

    A handwritten digit moved by a pixel or two is the same digit: the augmentation that lets
    4,000 training digits reach ≥ 98% test accuracy.
    """
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    s = max_shift
    padded = np.pad(x[:, 0], ((0, 0), (s, s), (s, s)))  # (B, H + 2s, W + 2s)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))  # (B, 2s + 1, 2s + 1, H, W)
    dy, dx = rng.integers(0, 2 * s + 1, size=(2, b))  # (B,) each; s means no shift
    return windows[np.arange(b), dy, dx][:, None]  # (B, 1, H, W), a copy


def load_classifier_data(dtype=np.float32):
    """(x_train, y_train, x_test, y_test): the MNIST 5k digits, (N, 1, 28, 28) in [0, 1], labels 0 … 9."""
    from scratch.data import load_mnist_5k

    (x_train, y_train), (x_test, y_test) = (load_mnist_5k(split, dtype) for split in ("train", "test"))
    return x_train, y_train, x_test, y_test


class ScratchClassifierTrainer:
    """The NumPy classifier with scratch/optim.py's Adam, for scratch/runs.py.

    Step s trains on the batch batch_for_step picks, each image shifted by up to `max_shift`
    pixels with the shifts of default_rng([seed, AUGMENT_STREAM, s]): a pure function of the
    step, so a resumed run is exact. The rate falls geometrically from lr to lr_end.
    """

    IMPLEMENTATION, OPTIMIZER = "scratch", "adam"

    def __init__(self, config, data, seed, batch_size=64, lr=1e-3, lr_end=1e-5, decay_steps=DEFAULT_STEPS,
                 max_shift=2, dropout=0.5, dtype=np.float32):
        self.net_config, self.seed, self.batch_size, self.max_shift = config, seed, batch_size, max_shift
        self.dropout = dropout
        self.lr, self.lr_end, self.decay_steps, self.dtype = lr, lr_end, decay_steps, np.dtype(dtype)
        self.x_train, self.y_train, self.x_test, self.y_test = (a.astype(self.dtype) if a.dtype.kind == "f" else a
                                                                for a in data)
        self._build(C.init_classifier(config, np.random.default_rng(seed), self.dtype))

    def _build(self, params):
        self.params = params
        self.optimizer = Adam(exponential_decay(self.lr, self.lr_end, self.decay_steps))

    def train_step(self, step):
        index = batch_for_step(step, len(self.x_train), self.batch_size, self.seed)
        rng = np.random.default_rng([self.seed, AUGMENT_STREAM, step])
        x = shift_images(self.x_train[index], rng, self.max_shift)  # (B, 1, 28, 28)
        logits, cache = C.classifier_forward(x, self.params, self.net_config, self.dropout, rng)  # (B, 10)
        loss, loss_cache = cross_entropy_forward(logits, self.y_train[index])
        self.optimizer.step(self.params, C.classifier_backward(cross_entropy_backward(1.0, loss_cache), cache))
        return float(loss)

    def evaluate(self):
        figures = {}
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            logits = C._batched(x, self.params, self.net_config, 500)[1]  # (N, 10)
            figures[f"{split}_loss"] = float(cross_entropy_forward(logits, y)[0])
            figures[f"{split}_accuracy"] = float(np.mean(logits.argmax(axis=1) == y))
        return figures

    def config(self):
        return {"model": "classifier", "implementation": self.IMPLEMENTATION, **self.net_config._asdict(),
                "batch_size": self.batch_size, "lr": self.lr, "lr_end": self.lr_end, "decay_steps": self.decay_steps,
                "max_shift": self.max_shift, "dropout": self.dropout, "optimizer": self.OPTIMIZER, "dtype": self.dtype.name}

    def state(self):
        return {**self.params, **{f"optim.{k}": v for k, v in self.optimizer.state_dict().items()}}

    def load_state(self, arrays):
        self._build({name: arrays[name] for name in C.parameter_shapes(self.net_config)})
        self.optimizer.load_state_dict({k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")})


def train_classifier(args, make_trainer=ScratchClassifierTrainer, make_bar=None):
    """Train the digit classifier as the command line asks (--data mnist only)."""
    if args.data != "mnist":
        raise ValueError(f"--data must be mnist for the classifier, got {args.data!r}")
    trainer = make_trainer(C.ClassifierConfig(), load_classifier_data(), args.seed, batch_size=args.batch_size,
                           lr=args.lr, lr_end=args.lr_end, decay_steps=args.decay_steps)
    return run_training(trainer, args.out, args.steps, args.seed, args.eval_every, resume=args.resume,
                        overwrite=getattr(args, "overwrite", False), make_bar=make_bar)


# ----------------------------------------------------------------------------------------------
# The classifier every score uses: a checkpoint given, or the cached default
# ----------------------------------------------------------------------------------------------


def load_classifier(path, steps=None):
    """(params, config) from a classifier checkpoint.npz; ValueError if it is not one (or not `steps` long)."""
    config = C.ClassifierConfig()
    arrays = load_checkpoint(path)  # RunError (a ValueError) if missing or damaged
    if checkpoint_model(arrays) not in ("classifier", None):
        raise ValueError(f"{path} is not a digit-classifier checkpoint: it holds {describe_checkpoint(arrays)}")
    shapes = C.parameter_shapes(config)
    wrong = {k: (tuple(arrays[k].shape) if k in arrays else None) for k, s in shapes.items()
             if k not in arrays or tuple(arrays[k].shape) != s}
    if wrong:
        raise ValueError(f"{path} is not a digit-classifier checkpoint of {config}: parameters {wrong} "
                         f"(None: missing) differ from {[shapes[k] for k in wrong]}")
    if steps is not None and int(arrays.get("run.step", -1)) != steps:
        raise ValueError(f"{path} holds a run stopped at step {int(arrays.get('run.step', -1))}, not {steps}")
    return {k: arrays[k] for k in shapes}, config


def cache_path(cache_dir=None):
    if cache_dir is None:
        cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "genai-from-scratch")
    return os.path.join(cache_dir, CACHE_NAME)


def default_classifier(cache_dir=None, steps=DEFAULT_STEPS, quiet=True):
    """The cached classifier of seed 0 and `steps` steps, trained (a few minutes) on first use.

    It trains in a private folder beside the cache and moves the finished checkpoint into place
    with one os.replace, so a reader never sees half a file and two first uses never mix.
    """
    import shutil
    from types import SimpleNamespace

    path = cache_path(cache_dir)
    try:
        return load_classifier(path, steps)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, EOFError) as error:
        warnings.warn(f"classifier cache {path} is damaged ({error}); retraining it", stacklevel=2)
    if not quiet:
        print(f"training the scoring classifier once ({steps} steps, seed {DEFAULT_SEED}); cached at {path}")
    folder = f"{path}.{os.getpid()}.run"
    args = SimpleNamespace(data="mnist", seed=DEFAULT_SEED, steps=steps, out=folder, resume=False,
                           eval_every=max(steps // 6, 1), batch_size=64, lr=1e-3, lr_end=1e-5, decay_steps=steps)
    try:
        train_classifier(args)
        # the run's metrics.json (test accuracy per evaluation) beside the checkpoint, then the checkpoint itself
        os.replace(os.path.join(folder, "metrics.json"), path[:-len(".npz")] + ".json")
        os.replace(os.path.join(folder, "checkpoint.npz"), path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return load_classifier(path, steps)


# ----------------------------------------------------------------------------------------------
# Scoring images
# ----------------------------------------------------------------------------------------------


def check_samples(samples, name="samples"):
    """Images (N, 28, 28) or (N, 1, 28, 28), finite, in [0, 1], N ≥ 2 → float (N, 1, 28, 28)."""
    samples = np.asarray(samples)
    if samples.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold numbers, got dtype {samples.dtype} with shape {samples.shape}")
    if samples.ndim == 3:
        samples = samples[:, None]
    if samples.ndim != 4 or samples.shape[1:] != (1, 28, 28):
        raise ValueError(f"{name} must have shape (N, 28, 28) or (N, 1, 28, 28), got {np.shape(samples)}")
    if len(samples) < 2:
        raise ValueError(f"{name} must hold at least 2 images (a covariance needs N − 1 ≥ 1), got shape {samples.shape}")
    samples = samples.astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(samples)))} non-finite values (NaN or ±inf)")
    if samples.min() < 0.0 or samples.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{samples.min():.4g}, {samples.max():.4g}]")
    return samples


def score_features(real_features, fake_features, fake_probabilities, k=3):
    """Every score of fake against real, from their features (N, F) and the fakes' p(y | x) (N, K)."""
    precision, recall = M.precision_recall(real_features, fake_features, k=k)
    return {"fid": M.frechet_distance(real_features, fake_features), "kid": M.kernel_distance(real_features, fake_features),
            "precision": precision, "recall": recall, "inception_score": M.inception_score(fake_probabilities),
            "samples": len(fake_features)}


def score_samples(samples, classifier=None, k=3, cache_dir=None):
    """FID, KID, precision, recall (k-NN radius k) and the IS analogue of images against the 1,000 test digits.

    classifier: a checkpoint path, a (params, config) pair, or None for the cached default.
    """
    params, config = _classifier(classifier, cache_dir)
    fake = check_samples(samples)
    real = load_classifier_data()[2]  # (1000, 1, 28, 28)
    return score_features(C.features(real, params, config), C.features(fake, params, config),
                          C.probabilities(fake, params, config), k=k)


def real_floor(classifier=None, k=3, cache_dir=None):
    """The scores of real training digits against the test digits: the best a generator can hope for.

    1,000 training digits, the first 100 of each digit, so that the floor is measured on as many
    images as a samples.npy holds: FID and KID's spread, and precision/recall, depend on N.
    """
    x_train, _, _, _ = load_classifier_data()
    per_digit = x_train.reshape(10, -1, 1, 28, 28)  # (10, 400, 1, 28, 28): the file is sorted by digit
    return score_samples(per_digit[:, :100].reshape(-1, 1, 28, 28), classifier, k=k, cache_dir=cache_dir)


def _classifier(classifier, cache_dir):
    if classifier is None:
        return default_classifier(cache_dir)
    if isinstance(classifier, (str, os.PathLike)):
        return load_classifier(classifier)
    return classifier


def load_samples_file(path):
    """The images of a .npy file, checked (check_samples); ValueError with a one-line reason otherwise."""
    if not str(path).endswith(".npy"):
        raise ValueError(f"{path}: expected a .npy file (np.save of an (N, 28, 28) array)")
    try:
        samples = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file")
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy array ({str(error).splitlines()[0]})")
    return check_samples(samples, name=str(path))


def format_scores(label, scores):
    return (f"{label:<24} FID {scores['fid']:9.3f}   KID {scores['kid']:8.4f}   precision {scores['precision']:.3f}   "
            f"recall {scores['recall']:.3f}   IS {scores['inception_score']:.2f} (of 10)   N {scores['samples']}")


def run_score(args):
    """`python -m scratch score FILE [--classifier CKPT] [--floor]`: one line of scores per set; exit 2 on a bad file."""
    import sys

    if args.samples is None and not args.floor:
        print("error: give a samples .npy file, or --floor", file=sys.stderr)
        return 2
    try:
        samples = load_samples_file(args.samples) if args.samples is not None else None
        if args.classifier is not None and not os.path.exists(args.classifier):
            raise ValueError(f"--classifier {args.classifier}: no such file")
        classifier = load_classifier(args.classifier) if args.classifier is not None else None
        if classifier is None:
            classifier = default_classifier(quiet=False)
        if samples is not None:
            print(format_scores(args.samples, score_samples(samples, classifier, k=args.k)))
        if args.floor:
            print(format_scores("real train digits (floor)", real_floor(classifier, k=args.k)))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
