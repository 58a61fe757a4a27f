"""The digit classifier of the scores (scratch/classifier.py) and its runs (scratch/scoring.py):
finite differences through the whole network for every parameter, features and probabilities,
a short run that writes its files and resumes exactly, the cached default, and `python -m scratch
score` on good and bad files."""

import json
import os

import numpy as np
import pytest

from checks.tolerances import GRADCHECK_RTOL
from scratch import classifier as C
from scratch import runs
from scratch import scoring as S
from scratch.__main__ import main
from scratch.gradcheck import check_vjp

pytestmark = pytest.mark.metrics

TINY = C.ClassifierConfig(channels=(2, 3, 2), features=5, classes=4, image=8)


def tiny_batch(seed=0, n=3):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, TINY.image, TINY.image)), C.init_classifier(TINY, rng)


def test_parameter_shapes_follow_the_strides():
    shapes = C.parameter_shapes(C.ClassifierConfig())
    assert shapes["conv1.w"] == (16, 1, 3, 3) and shapes["conv3.w"] == (64, 32, 3, 3)
    assert shapes["fc.W"] == (64 * 7 * 7, 128) and shapes["out.W"] == (128, 10)  # 28 → 28 → 14 → 7
    assert C.parameter_shapes(TINY)["fc.W"] == (2 * 2 * 2, 5)  # 8 → 8 → 4 → 2


@pytest.mark.parametrize("name", sorted(C.parameter_shapes(TINY)))
def test_backward_matches_finite_differences_for_every_parameter(name):
    x, params = tiny_batch()
    for key in ("fc.b", "conv1.b", "conv2.b", "conv3.b"):  # biases off zero, so that every ReLU has both sides
        params[key] = params[key] + 0.1 * np.random.default_rng(1).standard_normal(params[key].shape)

    def forward(inputs):
        logits, cache = C.classifier_forward(x, {**params, **inputs}, TINY)
        return logits, cache

    def backward(dlogits, cache):
        return {name: C.classifier_backward(dlogits, cache)[name]}

    result = check_vjp(forward, backward, {name: params[name]}, np.random.default_rng(2))
    assert result.error < GRADCHECK_RTOL, f"scratch: d{name} differs from central differences: {result}"


def test_backward_returns_every_parameter_with_its_shape_and_dtype():
    for dtype in (np.float32, np.float64):
        x, params = tiny_batch()
        params = {k: v.astype(dtype) for k, v in params.items()}
        logits, cache = C.classifier_forward(x.astype(dtype), params, TINY)
        assert logits.shape == (3, 4) and logits.dtype == dtype
        grads = C.classifier_backward(np.ones_like(logits), cache)
        assert sorted(grads) == sorted(params)
        for k in params:
            assert grads[k].shape == params[k].shape and grads[k].dtype == dtype, k


def test_features_and_probabilities_do_not_depend_on_the_batch():
    x, params = tiny_batch(n=7)
    whole = C.features(x, params, TINY)
    one_by_one = np.concatenate([C.features(x[i:i + 1], params, TINY) for i in range(7)])
    np.testing.assert_allclose(C.features(x, params, TINY, batch_size=2), whole, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-12, atol=1e-14)
    assert whole.shape == (7, 5) and (whole >= 0).all()  # after the ReLU
    probs = C.probabilities(x, params, TINY)
    assert probs.shape == (7, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("bad", [np.zeros((3, 8, 8)), np.zeros((3, 2, 8, 8)), np.zeros((3, 1, 9, 8))])
def test_images_of_the_wrong_shape_are_refused(bad):
    _, params = tiny_batch()
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        C.classifier_forward(bad, params, TINY)


def test_shift_images_moves_each_image_by_at_most_the_shift():
    x = np.zeros((50, 1, 6, 6))
    x[:, 0, 2, 3] = 1.0  # one lit pixel
    shifted = S.shift_images(x, np.random.default_rng(0), 2)
    rows, cols = np.nonzero(shifted[:, 0].sum(axis=0))
    assert shifted.shape == x.shape and np.all(shifted.sum(axis=(1, 2, 3)) == 1.0)  # nothing lost inside the frame
    assert rows.min() == 0 and rows.max() == 4 and cols.min() == 1 and cols.max() == 5  # every shift in [−2, 2]
    assert S.shift_images(x, np.random.default_rng(0), 0) is x
    np.testing.assert_array_equal(shifted, S.shift_images(x, np.random.default_rng(0), 2))


# ----------------------------------------------------------------------------------------------
# Runs: files, exact resume, the cached default
# ----------------------------------------------------------------------------------------------


def small_data():
    x_train, y_train, x_test, y_test = S.load_classifier_data()
    return x_train[::40], y_train[::40], x_test[::20], y_test[::20]  # 100 and 50 digits, every class


def run(out, steps, resume=False):
    trainer = S.ScratchClassifierTrainer(C.ClassifierConfig(), small_data(), seed=3, batch_size=16, decay_steps=6)
    return runs.run_training(trainer, str(out), steps, 3, eval_every=3, resume=resume)


def test_a_run_writes_its_files_and_resumes_exactly(tmp_path):
    straight = run(tmp_path / "straight", 6)
    run(tmp_path / "stopped", 3)
    resumed = run(tmp_path / "stopped", 6, resume=True)
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b) and int(a["run.step"]) == 6
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs after resuming"
    assert [h["step"] for h in resumed["history"]] == [3, 6]
    assert resumed["history"][-1]["test_accuracy"] == straight["history"][-1]["test_accuracy"]
    with open(tmp_path / "straight" / runs.METRICS) as f:
        metrics = json.load(f)
    assert metrics["config"]["model"] == "classifier" and 0.0 <= metrics["final"]["test_accuracy"] <= 1.0


def test_the_command_line_trains_a_classifier(tmp_path, capsys):
    out = tmp_path / "classifier"
    assert main(["train", "classifier", "--steps", "2", "--eval-every", "2", "--out", str(out), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["final"]["step"] == 2
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "metrics.json"]
    params, config = S.load_classifier(out / "checkpoint.npz")
    assert config == C.ClassifierConfig() and sorted(params) == sorted(C.parameter_shapes(config))
    with pytest.raises(SystemExit, match="mnist"):
        main(["train", "classifier", "--data", "digits", "--out", str(out)])


def test_the_default_classifier_is_trained_once_cached_and_retrained_when_damaged(tmp_path):
    cache = tmp_path / "cache"
    first, _ = S.default_classifier(cache_dir=str(cache), steps=2)
    path = S.cache_path(str(cache))
    assert sorted(os.listdir(cache)) == ["classifier-v1.json", "classifier-v1.npz"], "the run folder must be gone"
    with open(cache / "classifier-v1.json") as f:
        assert json.load(f)["final"]["step"] == 2
    stamp = os.stat(path).st_mtime_ns
    again, _ = S.default_classifier(cache_dir=str(cache), steps=2)
    assert os.stat(path).st_mtime_ns == stamp, "a good cache must be read, not retrained"
    for name in first:
        assert np.array_equal(first[name], again[name])
    with open(path, "wb") as f:
        f.write(b"not an npz")
    with pytest.warns(UserWarning, match="damaged"):
        retrained, _ = S.default_classifier(cache_dir=str(cache), steps=2)
    for name in first:  # the same seed and steps: the same network, bit for bit
        assert np.array_equal(first[name], retrained[name]), name
    with pytest.raises(ValueError, match="step 2, not 3"):
        S.load_classifier(path, steps=3)


# ----------------------------------------------------------------------------------------------
# python -m scratch score
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A classifier of 2 steps: a poor ruler, but a ruler, for checking the command line."""
    out = tmp_path_factory.mktemp("scoring-classifier")
    trainer = S.ScratchClassifierTrainer(C.ClassifierConfig(), small_data(), seed=0, batch_size=16)
    runs.run_training(trainer, str(out), 2, 0, eval_every=2)
    return str(out / runs.CHECKPOINT)


def test_score_prints_every_score_of_a_samples_file(tmp_path, checkpoint, capsys):
    x_test = S.load_classifier_data()[2]
    path = tmp_path / "samples.npy"
    np.save(path, x_test[::-1, 0])  # the test digits themselves, (1000, 28, 28)
    assert main(["score", str(path), "--classifier", checkpoint]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    for name in ("FID", "KID", "precision", "recall", "IS"):
        assert name in line, line
    scores = S.score_samples(x_test[::-1], S.load_classifier(checkpoint))
    assert abs(scores["fid"]) < 1e-6 and scores["precision"] == 1.0 and scores["recall"] == 1.0  # the same set


BAD_FILES = {
    "wrong shape": (np.zeros((10, 28, 27)), "(N, 28, 28)"),
    "out of [0, 1]": (np.full((10, 28, 28), 1.5), "[0, 1]"),
    "NaN": (np.full((10, 28, 28), np.nan), "non-finite"),
    "one image": (np.zeros((1, 28, 28)), "at least 2"),
    "strings": (np.array(["a", "b"]), "numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_score_refuses_a_bad_samples_file_in_one_line(case, tmp_path, checkpoint, capsys):
    array, fragment = BAD_FILES[case]
    path = tmp_path / "samples.npy"
    np.save(path, array)
    assert main(["score", str(path), "--classifier", checkpoint]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err


def test_score_refuses_what_is_not_a_npy_file(tmp_path, checkpoint, capsys):
    text = tmp_path / "samples.txt"
    text.write_text("0.5")
    fake = tmp_path / "fake.npy"
    fake.write_bytes(b"\x93NUMPY garbage")
    for path, fragment in ((text, ".npy"), (tmp_path / "missing.npy", "no such file"), (fake, "not a readable")):
        assert main(["score", str(path), "--classifier", checkpoint]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    assert main(["score", str(text), "--classifier", str(tmp_path / "none.npz")]) == 2
    assert main(["score"]) == 2
