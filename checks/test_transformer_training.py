"""Transformer training runs: the same trajectory in scratch, PyTorch and TensorFlow (float64),
exact resume in every implementation, the files the command line promises, and `translate`
with its input errors. The corpus is a small number-words corpus written to a temporary cache,
so the checks neither wait for nor touch the default one."""

import importlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from checks.implementations import require
from checks.tolerances import assert_close
from scratch import runs
from scratch import text as X
from scratch.__main__ import main
from scratch.encoder_decoder import TransformerConfig
from scratch.translation import (ScratchTransformerTrainer, load_translation_data, load_translator, train_transformer,
                                 translate)

pytestmark = pytest.mark.transformer

STEPS = 30
TRAINED_PORTS = ("torch", "tensorflow")  # Keras trains with its own Adam and fit (checked for resume only)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return X.load_number_words(train=400, test=40, seed=3, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def data(corpus):
    return load_translation_data(corpus=corpus)


def trainer_class(impl):
    if impl == "scratch":
        return ScratchTransformerTrainer
    require(impl, "transformer")
    return importlib.import_module(f"ports.{impl}.train").TRAINERS["transformer"]


def small_config(data, **changes):
    return TransformerConfig(len(data.src_vocab), len(data.tgt_vocab), d_model=16, num_heads=2, d_ff=24, num_layers=2,
                             max_len=24)._replace(**changes)


@pytest.mark.parametrize("variant", [{}, {"norm_first": True, "tie_output": True}], ids=["post-norm", "pre-norm-tied"])
@pytest.mark.parametrize("impl", TRAINED_PORTS)
def test_port_training_trajectory_equals_scratch(impl, variant, data):
    """30 Adam steps from the same weights on the same batches: the same losses and final weights (float64)."""
    runs_ = {}
    for name in ("scratch", impl):
        trainer = trainer_class(name)(small_config(data, **variant), data, 0, batch_size=16, warmup=10, lr_factor=2.0,
                                      dtype=np.float64)
        runs_[name] = (np.array([trainer.train_step(step) for step in range(1, STEPS + 1)]), trainer)
    (expected, scratch), (actual, port) = runs_["scratch"], runs_[impl]
    assert expected[0] - expected[-1] > 0.3, "the loss hardly moved: the check would prove little"
    assert_close(actual, expected, impl=impl, what=f"losses of {STEPS} steps")
    final = port.numpy_params()
    for name, value in scratch.params.items():
        # A key bias adds q·b_k to every score of a query, which softmax ignores: its true gradient is
        # 0, and what each implementation computes is rounding noise of order 1e-17. Adam divides by
        # the noise's own size and turns it into steps of order lr, a random walk of b_k that differs
        # between implementations and changes no output. Compared only for staying finite.
        if name.endswith(".b_k"):
            assert np.all(np.isfinite(final[name])), f"{impl}: {name} is not finite"
            continue
        assert_close(final[name], value, impl=impl, what=f"{name} after {STEPS} steps")


def test_batches_come_from_the_length_buckets(data):
    trainer = ScratchTransformerTrainer(small_config(data), data, 4, batch_size=32)
    per_epoch = -(-len(data.train_src) // 32)
    for step in (1, 2, per_epoch, per_epoch + 1, 3 * per_epoch + 2):
        src, tgt_in, tgt_out = trainer.batch(step)
        idx = X.batch_for_step(step, trainer.lengths, 32, 4)
        np.testing.assert_array_equal(src, X.pad_batch([data.train_src[i] for i in idx]))
        np.testing.assert_array_equal(tgt_in[:, 1:], tgt_out[:, :-1])  # the target, shifted by one
        assert np.all(tgt_in[:, 0] == X.BOS_ID)


def cli_args(out, steps, resume=False, dtype="float32"):
    return SimpleNamespace(data="numbers", steps=steps, seed=1, out=str(out), resume=resume, eval_every=3, batch_size=16,
                           lr=2.0, d_model=16, heads=2, d_ff=24, layers=1, max_len=24, warmup=5, label_smoothing=0.1,
                           dropout=0.1, norm_first=False, tie_output=False, dtype=dtype, quiet=True)


@pytest.fixture
def small_corpus_everywhere(monkeypatch, corpus):
    """The command line loads the default corpus; give it the small one."""
    monkeypatch.setattr(X, "load_number_words", lambda *a, **k: corpus)


@pytest.mark.parametrize("impl", ("scratch",) + TRAINED_PORTS + ("keras",))
def test_run_resumes_exactly(impl, tmp_path, small_corpus_everywhere):
    trainer = trainer_class(impl)
    train_transformer(cli_args(tmp_path / "straight", 6), trainer)
    train_transformer(cli_args(tmp_path / "stopped", 3), trainer)
    train_transformer(cli_args(tmp_path / "stopped", 6, resume=True), trainer)
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{impl}: {name} differs after resuming"


def test_command_line_trains_then_translates(tmp_path, small_corpus_everywhere, capsys):
    out = tmp_path / "run"
    assert main(["train", "transformer", "--steps", "4", "--eval-every", "2", "--out", str(out), "--d-model", "16",
                 "--heads", "2", "--d-ff", "16", "--layers", "1", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    assert {"test_loss", "token_accuracy", "exact_match", "chrf"} <= set(metrics["final"])
    assert metrics["config"]["model"] == "transformer" and metrics["config"]["d_model"] == 16
    capsys.readouterr()
    checkpoint = str(out / runs.CHECKPOINT)
    assert main(["translate", "97", "--checkpoint", checkpoint]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("ninety-seven → ") and "reference: quatre-vingt-dix-sept" in printed
    with pytest.raises(SystemExit, match="bananas.*--unknown unk"):
        main(["translate", "ninety-seven", "bananas", "--checkpoint", checkpoint])
    capsys.readouterr()
    assert main(["translate", "ninety-seven", "bananas", "--unknown", "unk", "--checkpoint", checkpoint]) == 0
    assert capsys.readouterr().out.startswith("ninety-seven bananas → ")
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["translate", "one", "--checkpoint", str(tmp_path / "missing.npz")])


def test_translate_handles_bad_and_empty_input(tmp_path, small_corpus_everywhere, data):
    train_transformer(cli_args(tmp_path, 2, dtype="float64"), ScratchTransformerTrainer)
    translator = load_translator(tmp_path / runs.CHECKPOINT)
    assert translator.config.d_model == 16 and len(translator.tgt_vocab) == len(data.tgt_vocab)
    out = translate(translator, ["", "ninety-seven", "   "])
    assert out[0] == "" and out[2] == "" and isinstance(out[1], str)  # empty in, empty out, the model not run
    with pytest.raises(ValueError, match=r"\['apples', 'bananas'\]"):
        translate(translator, ["bananas and apples"])  # every unknown word is listed (sorted)
    assert isinstance(translate(translator, ["bananas"], unknown="unk")[0], str)  # or mapped to <unk>
    with pytest.raises(ValueError, match="max_len = 24"):
        translate(translator, [" ".join(["one"] * 30)])
    assert translate(translator, ["ninety-seven"], beam_width=3)[0] is not None
    with pytest.raises(ValueError, match="not a Transformer checkpoint"):
        runs.save_checkpoint(tmp_path / "other.npz", {"w": np.zeros(2)})
        load_translator(tmp_path / "other.npz")
