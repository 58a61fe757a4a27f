"""scratch/data.py: the digits split, IDX files the tests write themselves, and the epoch order."""

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratch import data

pytestmark = pytest.mark.data


# ----------------------------------------------------------------------------------------------
# Digits
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sklearn_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    return datasets.load_digits()


def test_digits_splits(sklearn_digits):
    x_train, y_train = data.load_digits("train")
    x_test, y_test = data.load_digits("test")
    x_all, y_all = data.load_digits("all")
    assert x_train.shape == (1437, 64) and y_train.shape == (1437,)
    assert x_test.shape == (360, 64) and y_test.shape == (360,)
    assert x_all.shape == (1797, 64) and y_all.shape == (1797,)
    assert x_all.dtype == np.float64 and y_all.dtype == np.int64
    # train then test is all, in scikit-learn's order
    assert np.array_equal(np.concatenate([x_train, x_test]), x_all)
    assert np.array_equal(np.concatenate([y_train, y_test]), y_all)
    assert np.array_equal(x_all, sklearn_digits.data / 16.0)
    assert np.array_equal(y_all, sklearn_digits.target)
    assert np.array_equal(x_train[0], sklearn_digits.data[0] / 16.0) and y_train[0] == sklearn_digits.target[0]
    assert np.array_equal(x_test[-1], sklearn_digits.data[-1] / 16.0) and y_test[-1] == sklearn_digits.target[-1]
    assert np.array_equal(x_test[0], sklearn_digits.data[1437] / 16.0)


def test_digits_values_and_dtype():
    x, labels = data.load_digits("all")
    assert x.min() == 0.0 and x.max() == 1.0, f"pixels span [{x.min()}, {x.max()}], not [0, 1]"
    assert np.all(np.isin(x * 16.0, np.arange(17))), "pixels are not the counts 0 … 16 divided by 16"
    assert set(np.unique(labels).tolist()) == set(range(10))
    x32, labels32 = data.load_digits("train", dtype=np.float32)
    assert x32.dtype == np.float32 and labels32.dtype == np.int64
    assert np.array_equal(x32, data.load_digits("train")[0].astype(np.float32))


def test_digits_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test', 'all'\), got 'valid'"):
        data.load_digits("valid")
    with pytest.raises(TypeError, match="dtype must be a floating dtype.*got int64"):
        data.load_digits("train", dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# IDX files, written here byte by byte from the format's description (not with read_idx's code)
# ----------------------------------------------------------------------------------------------

IDX_CODES = {  # type code → (struct letter, NumPy dtype)
    0x08: ("B", np.uint8), 0x09: ("b", np.int8), 0x0B: ("h", np.int16),
    0x0C: ("i", np.int32), 0x0D: ("f", np.float32), 0x0E: ("d", np.float64),
}


def idx_bytes(array, code):
    """The IDX encoding of `array`: 0, 0, type code, ndim, big-endian uint32 sizes, big-endian data."""
    letter, _ = IDX_CODES[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + struct.pack(f">{array.size}{letter}", *array.ravel().tolist())


def write(path, payload, gzipped):
    path.write_bytes(gzip.compress(payload) if gzipped else payload)
    return path


def elements(dtype):
    if np.dtype(dtype).kind == "f":
        return st.floats(-1e6, 1e6, width=8 * np.dtype(dtype).itemsize)
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max))


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("code", sorted(IDX_CODES), ids=[f"0x{c:02X}" for c in sorted(IDX_CODES)])
@given(data_=st.data())
def test_read_idx_round_trip(tmp_path_factory, code, gzipped, data_):
    dtype = IDX_CODES[code][1]
    shape = data_.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))
    array = data_.draw(hnp.arrays(dtype, shape, elements=elements(dtype)))
    path = write(tmp_path_factory.mktemp("idx") / "x.idx", idx_bytes(array, code), gzipped)
    result = data.read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    assert result.shape == array.shape
    assert np.array_equal(result, array)
    assert result.flags.writeable


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_read_idx_mnist_like_files(tmp_path, gzipped):
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256  # (N, rows, cols)
    labels = np.array([7, 2], dtype=np.uint8)
    suffix = ".gz" if gzipped else ""
    x = data.read_idx(write(tmp_path / f"images-idx3-ubyte{suffix}", idx_bytes(images, 0x08), gzipped))
    y = data.read_idx(write(tmp_path / f"labels-idx1-ubyte{suffix}", idx_bytes(labels, 0x08), gzipped))
    assert x.dtype == np.uint8 and x.shape == (2, 28, 28) and np.array_equal(x, images)
    assert y.dtype == np.uint8 and y.shape == (2,) and np.array_equal(y, labels)
    assert x[1, 0, 0] == (28 * 28) % 256, "the last index must change fastest (C order)"


def test_read_idx_float_is_big_endian(tmp_path):
    """1.5 as a big-endian float32 is 3F C0 00 00: read little-endian it would be a tiny number."""
    path = tmp_path / "f.idx"
    path.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 2]) + bytes.fromhex("3FC00000") + bytes.fromhex("C0200000"))
    result = data.read_idx(path)
    assert result.dtype == np.float32 and result.tolist() == [1.5, -2.5]


def test_read_idx_by_content_not_name(tmp_path):
    """A '.gz' that is not gzipped (browsers unpack and keep the name) and a gzip without '.gz'."""
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    plain = write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(array, 0x08), gzipped=False)
    packed = write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(array, 0x08), gzipped=True)
    assert np.array_equal(data.read_idx(plain), array)
    assert np.array_equal(data.read_idx(packed), array)


GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08)  # 4 + 8 header bytes + 12 data bytes
MALFORMED = {
    "empty": (b"", "0 bytes is too short for an IDX file"),
    "three bytes": (b"\x00\x00\x08", "3 bytes is too short"),
    "bad magic": (b"\x01\x00\x08\x01" + GOOD[4:], r"not an IDX file: the magic number must start with two zero bytes, got 0x01000801"),
    "text": (b"hello world", "not an IDX file"),
    "unknown type": (b"\x00\x00\x0A\x02" + GOOD[4:], r"unknown IDX type code 0x0A"),
    "zero dims": (b"\x00\x00\x08\x00", "0 dimensions"),
    "truncated header": (GOOD[:10], r"truncated header: 2 dimensions need 12 bytes, the file has 10"),
    "truncated data": (GOOD[:-1], r"truncated data: shape \(3, 4\) of unsigned byte needs 12 bytes .* the file has 11"),
    "trailing bytes": (GOOD + b"\x00\x00", r"2 bytes left over after the data of shape \(3, 4\)"),
    "truncated int32": (idx_bytes(np.arange(3, dtype=np.int32), 0x0C)[:-2], r"shape \(3,\) of int \(4 bytes\) needs 12 bytes"),
    "truncated gzip": (gzip.compress(GOOD)[:-12], "a damaged or truncated gzip file"),
    "corrupt gzip": (gzip.compress(GOOD)[:10] + b"\xff" * 20, "a damaged or truncated gzip file"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_read_idx_rejects_malformed_files(tmp_path, name):
    payload, message = MALFORMED[name]
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=message) as error:
        data.read_idx(path)
    assert str(path) in str(error.value), "the error must name the file"


def test_read_idx_gzipped_malformed_content(tmp_path):
    path = write(tmp_path / "x.gz", GOOD[:-3], gzipped=True)
    with pytest.raises(ValueError, match="truncated data"):
        data.read_idx(path)


# ----------------------------------------------------------------------------------------------
# MNIST directories
# ----------------------------------------------------------------------------------------------


def write_mnist(directory, split, images, labels, gzipped):
    stem_images, stem_labels = data.MNIST_FILES[split]
    suffix = ".gz" if gzipped else ""
    write(directory / (stem_images + suffix), idx_bytes(images, 0x08), gzipped)
    write(directory / (stem_labels + suffix), idx_bytes(labels, 0x08), gzipped)


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_load_mnist(tmp_path, gzipped):
    rng = np.random.default_rng(0)
    train_images, test_images = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    train_images[0, 0, :2] = [0, 255]  # the extremes map to 0 and 1
    train_labels, test_labels = rng.integers(0, 10, 5), rng.integers(0, 10, 3)
    write_mnist(tmp_path, "train", train_images, train_labels, gzipped)
    write_mnist(tmp_path, "test", test_images, test_labels, gzipped=not gzipped)  # a mixed directory
    x, labels = data.load_mnist(tmp_path, "train")
    assert x.shape == (5, 784) and x.dtype == np.float64 and labels.dtype == np.int64
    assert np.array_equal(x, train_images.reshape(5, 784) / 255.0)
    assert x[0, 0] == 0.0 and x[0, 1] == 1.0
    assert np.array_equal(labels, train_labels)
    x_test, labels_test = data.load_mnist(str(tmp_path), "test", dtype=np.float32)
    assert x_test.dtype == np.float32 and x_test.shape == (3, 784)
    np.testing.assert_array_equal(x_test, (test_images.reshape(3, 784) / 255.0).astype(np.float32))
    x_all, labels_all = data.load_mnist(tmp_path, "all")
    assert x_all.shape == (8, 784)
    assert np.array_equal(x_all, np.concatenate([train_images, test_images]).reshape(8, 784) / 255.0)
    assert np.array_equal(labels_all, np.concatenate([train_labels, test_labels]))


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither train-images-idx3-ubyte nor train-images-idx3-ubyte.gz"):
        data.load_mnist(tmp_path, "train")
    write_mnist(tmp_path, "train", np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.uint8), gzipped=False)
    with pytest.raises(ValueError, match="holds 4 images but .*train-labels-idx1-ubyte holds 3 labels"):
        data.load_mnist(tmp_path, "train")
    write_mnist(tmp_path, "train", np.zeros((4, 784), np.uint8), np.zeros(4, np.uint8), gzipped=False)
    with pytest.raises(ValueError, match=r"images must be unsigned bytes of shape \(N, rows, cols\).*\(4, 784\)"):
        data.load_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_mnist(tmp_path, "validation")


# ----------------------------------------------------------------------------------------------
# Epoch order and minibatches
# ----------------------------------------------------------------------------------------------

seeds = st.integers(0, 2**63 - 1)


@given(n=st.integers(0, 200), seed=seeds, epoch=st.integers(0, 10**6))
def test_epoch_order_is_a_reproducible_permutation(n, seed, epoch):
    order = data.epoch_order(n, seed, epoch)
    assert order.shape == (n,) and order.dtype == np.int64
    assert np.array_equal(np.sort(order), np.arange(n)), "not a permutation of range(n)"
    np.random.seed(12345)  # global NumPy state must not matter
    np.random.default_rng().random(10)
    assert np.array_equal(data.epoch_order(n, seed, epoch), order)
    # the documented contract: np.random.default_rng([seed, epoch]), so other tools can replay it
    assert np.array_equal(order, np.random.default_rng([seed, epoch]).permutation(n))


@given(n=st.integers(30, 200), seed=seeds, epoch=st.integers(0, 1000))
def test_epoch_order_changes_with_epoch_and_seed(n, seed, epoch):
    """30! ≈ 2.7e32: two equal permutations would be a bug (an epoch or seed that is ignored)."""
    order = data.epoch_order(n, seed, epoch)
    assert not np.array_equal(order, data.epoch_order(n, seed, epoch + 1)), "the epoch is ignored"
    assert not np.array_equal(order, data.epoch_order(n, seed ^ 1, epoch)), "the seed is ignored"


def test_epoch_order_does_not_depend_on_history():
    """A resumed run calls epoch 3 first; an uninterrupted one calls 0, 1, 2 before it."""
    straight = [data.epoch_order(50, 7, epoch) for epoch in range(4)]
    assert np.array_equal(data.epoch_order(50, 7, 3), straight[3])


@given(n=st.integers(0, 100), batch_size=st.integers(1, 40), seed=seeds, epoch=st.integers(0, 100))
def test_minibatches_cover_the_epoch_order(n, batch_size, seed, epoch):
    batches = list(data.minibatches(n, batch_size, seed, epoch))
    assert len(batches) == -(-n // batch_size), f"{len(batches)} batches for n={n}, batch_size={batch_size}"
    assert all(len(b) == batch_size for b in batches[:-1])
    if batches:
        assert len(batches[-1]) == (n % batch_size or batch_size), "the last partial batch must be kept"
    joined = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    assert np.array_equal(joined, data.epoch_order(n, seed, epoch))


@pytest.mark.parametrize("call, error, message", [
    (lambda: data.epoch_order(-1, 0, 0), ValueError, "n must be ≥ 0, got -1"),
    (lambda: data.epoch_order(10, -1, 0), ValueError, "seed must be ≥ 0, got -1"),
    (lambda: data.epoch_order(10, 0, 1.0), TypeError, "epoch must be an int, got 1.0"),
    (lambda: data.minibatches(10, 0, 0, 0), ValueError, "batch_size must be ≥ 1, got 0"),
    (lambda: data.minibatches(10, True, 0, 0), TypeError, "batch_size must be an int"),
])
def test_epoch_arguments_are_checked(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------------------------
# The 2-D mixtures and the mode-coverage protocol
# ----------------------------------------------------------------------------------------------


def test_mixture_geometry():
    ring, ring_std = data.mixture("ring")
    np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 1.0, rtol=1e-15)  # on the unit circle
    angles = np.sort(np.mod(np.arctan2(ring[:, 1], ring[:, 0]), 2 * np.pi))
    np.testing.assert_allclose(np.diff(angles), 2 * np.pi / 8, rtol=1e-12)  # evenly spaced
    grid, grid_std = data.mixture("grid")
    assert sorted(map(tuple, grid)) == [(a, b) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)]
    assert (ring_std, grid_std) == (0.01, 0.05)
    with pytest.raises(ValueError, match="'ring' or 'grid'"):
        data.mixture("spiral")


@pytest.mark.parametrize("name", ["ring", "grid"])
def test_mixture_samples_score_like_the_data(name):
    """Samples of the mixture itself: every mode captured, ≈ 98.9% high quality (the mass of a
    2-D Gaussian within 3σ is 1 − e^{−9/2}), and a reverse KL near 0."""
    samples = data.sample_mixture(name, 20000, np.random.default_rng(0), np.float32)
    assert samples.dtype == np.float32 and samples.shape == (20000, 2)
    score = data.mode_coverage(samples, name)
    assert score.modes == len(data.mixture(name).centers)
    assert abs(score.high_quality - (1 - np.exp(-4.5))) < 0.003, score
    assert score.reverse_kl < 0.005, score


def test_mode_coverage_of_a_collapsed_generator():
    centers, std = data.mixture("ring")
    on_one_mode = centers[3] + 0.5 * std * np.random.default_rng(1).standard_normal((100, 2))
    score = data.mode_coverage(on_one_mode, "ring")
    assert score == (1, 1.0, pytest.approx(np.log(8.0)))  # one mode: KL(δ ‖ uniform) = log K


def test_mode_coverage_counts_only_high_quality_samples():
    centers, std = data.mixture("grid")
    inside, outside = centers[0] + [2.9 * std, 0.0], centers[1] + [0.0, 3.1 * std]
    far = np.array([[1.0, 1.0]])  # halfway between four modes
    score = data.mode_coverage(np.vstack([inside, inside, outside, far]), "grid")
    assert score.modes == 1 and score.high_quality == 0.5 and score.reverse_kl == pytest.approx(np.log(25.0))
    two = data.mode_coverage(np.vstack([centers[0], centers[1], centers[1], centers[1]]), "grid")
    p = np.array([0.25, 0.75])
    assert two.modes == 2 and two.reverse_kl == pytest.approx(float(np.sum(p * np.log(p * 25))))


def test_mode_coverage_without_any_high_quality_sample():
    score = data.mode_coverage(np.full((10, 2), 10.0), "ring")
    assert score.modes == 0 and score.high_quality == 0.0 and score.reverse_kl == np.inf


@pytest.mark.parametrize("samples,message", [
    (np.zeros((5, 3)), r"samples must have shape \(N, 2\).*\(5, 3\)"),
    (np.zeros((0, 2)), r"samples must have shape \(N, 2\).*\(0, 2\)"),
    (np.array([[np.nan, 0.0]]), "finite"),
])
def test_mode_coverage_rejects_bad_samples(samples, message):
    with pytest.raises(ValueError, match=message):
        data.mode_coverage(samples, "ring")
