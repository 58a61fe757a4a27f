"""The Keras translator (ports/keras/transformer.py, the seed's §5.3) computes and learns what scratch does.

Its Keras layers (PositionalEmbedding, TransformerEncoder/Decoder around MultiHeadAttention,
LayerNormalization and Dense) hold scratch's weights exactly after conversion and give scratch's
logits, float64 and float32, pre- and post-norm, tied or not, with padded sources and targets;
its loss is scratch's label-smoothed cross-entropy with padding ignored (and, without smoothing,
Keras's own SparseCategoricalCrossentropy(ignore_class=0)); its schedule is Eq. (3); `fit` with
SGD takes exactly the steps scratch's gradients say; `translate` is scratch's greedy decoding;
and `fit` with Adam and the warm-up learns a copy task. The one place it differs from scratch, a
source made only of padding, is shown. Keras models take a few tenths of a second to build, so
each configuration is built once and fed several seeded batches instead of Hypothesis examples.
"""

import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.implementations import require
from checks.strategies import DTYPES, cross_entropy_cases
from checks.tolerances import assert_close
from scratch import encoder_decoder as M
from scratch import transformer as T
from scratch.decoding import EOS_ID, greedy_decode
from scratch.optim import transformer_schedule

pytestmark = pytest.mark.transformer

VARIANTS = {"post-norm": dict(norm_first=False, tie_output=False),
            "pre-norm": dict(norm_first=True, tie_output=False),
            "post-norm-tied": dict(norm_first=False, tie_output=True),
            "pre-norm-tied": dict(norm_first=True, tie_output=True)}


def keras_port():
    return require("keras", "transformer")


def tiny_config(**changes):
    # every size different (V_src, V_tgt, D, F, S, T), so a transposed axis cannot pass
    return M.TransformerConfig(src_vocab=7, tgt_vocab=9, d_model=8, num_heads=2, d_ff=12, num_layers=2, max_len=7,
                               **changes)


def tiny_params(config, dtype, seed=0):
    """init_transformer's weights with biases, β and γ moved off 0 and 1, so that every parameter matters."""
    rng = np.random.default_rng(seed)
    params = M.init_transformer(config, rng)
    for name, value in params.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "beta") or leaf.startswith("b"):
            params[name] = value + rng.uniform(-0.5, 0.5, value.shape)
    return {name: value.astype(dtype) for name, value in params.items()}


def batches(config, seed=0):
    """Four (src, tgt_in) batches of different shapes: sources padded after ≥ 1 real token (one row of
    a single token), targets starting at BOS with padding after their end, S ≠ T."""
    rng = np.random.default_rng(seed)
    out = []
    for b, s, t in ((3, 4, 5), (2, 6, 3), (1, 1, 2), (4, 7, 7)):
        src = rng.integers(3, config.src_vocab, (b, s))
        src[np.arange(s)[None, :] >= rng.integers(1, s + 1, b)[:, None]] = config.pad_id
        src[0, 1:] = config.pad_id
        tgt = rng.integers(3, config.tgt_vocab, (b, t))
        tgt[:, 0] = 1
        tgt[np.arange(t)[None, :] >= rng.integers(1, t + 1, b)[:, None]] = config.pad_id
        out.append((src, tgt))
    return out


@functools.lru_cache(maxsize=None)
def converted(dtype, variant):
    """(config, params, Translator holding params): built once per dtype and variant."""
    config = tiny_config(**VARIANTS[variant])
    params = tiny_params(config, dtype)
    return config, params, keras_port().to_keras_translator(params, config)


# ----------------------------------------------------------------------------------------------
# The model holds scratch's weights and computes scratch's logits
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_translator_holds_scratch_weights_and_computes_scratch_logits(dtype, variant):
    port = keras_port()
    config, params, model = converted(dtype, variant)
    back = port.from_keras_translator(model)
    assert list(back) == list(params), f"from_keras_translator gives {list(back)}, expected {list(params)}"
    for name, value in params.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), \
            f"keras: {name} changed on the round trip"
    for src, tgt_in in batches(config):
        logits = np.asarray(model((src, tgt_in)))
        assert logits.dtype == np.dtype(dtype), \
            f"keras Translator: logits are {logits.dtype}, weights {np.dtype(dtype)}"
        expected, _ = M.transformer_forward(src, tgt_in, params, config)
        assert_close(logits, expected, impl="keras Translator",
                     what=f"{variant} logits for src {src.shape}, tgt {tgt_in.shape}")


@pytest.mark.parametrize("variant", ["post-norm", "pre-norm-tied"])
def test_native_translator_round_trips_through_the_scratch_layout(variant):
    """Keras's own initialisation → scratch layout → Keras: every weight unchanged, every shape scratch's."""
    port = keras_port()
    config = tiny_config(**VARIANTS[variant])
    model = port.Translator(config, dtype="float64", seed=0)
    params = port.from_keras_translator(model)
    assert {name: p.shape for name, p in params.items()} == M.parameter_shapes(config)
    again = port.to_keras_translator(params, config)
    for before, after in zip(model.weights, again.weights, strict=True):
        assert before.dtype == after.dtype and np.array_equal(before.numpy(), after.numpy()), \
            f"keras: {before.path} changed on the round trip"


def test_keras_passes_the_padding_mask_itself():
    """PositionalEmbedding attaches (src != pad) to its output and Keras hands it to the encoder layer's
    `mask` argument: calling the layer Keras-style equals passing the mask explicitly."""
    config, _, model = converted(np.float64, "post-norm")
    src, _ = batches(config)[0]
    embedded = model.src_embed(src)
    np.testing.assert_array_equal(np.asarray(model.src_embed.compute_mask(src)), src != config.pad_id)
    implicit = np.asarray(model.encoder_layers[0](embedded))
    explicit = np.asarray(model.encoder_layers[0](np.asarray(embedded), mask=src != config.pad_id))
    assert_close(implicit, explicit, impl="keras TransformerEncoder", what="output with Keras's own mask")


def test_a_source_of_only_padding_is_where_keras_differs():
    """Keras's MultiHeadAttention gives a query with every key blocked the mean of V, scratch 0
    (DESIGN.md). A whole source of padding blocks every key of the cross-attention: that row's
    logits differ; the other rows, whose sources have tokens, agree."""
    config, params, model = converted(np.float64, "post-norm")
    src, tgt_in = np.array([[3, 4, 0], [0, 0, 0]]), np.array([[1, 5, 6], [1, 4, 0]])
    logits, (expected, _) = np.asarray(model((src, tgt_in))), M.transformer_forward(src, tgt_in, params, config)
    assert_close(logits[0], expected[0], impl="keras Translator", what="logits of a source with tokens")
    gap = np.abs(logits[1] - expected[1]).max()
    assert gap > 1e-3, \
        f"an all-padding source gave scratch's logits (max difference {gap:.2g}): Keras no longer averages V?"


# ----------------------------------------------------------------------------------------------
# The loss and the schedule
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@given(data=st.data())
def test_keras_loss_equals_scratch_cross_entropy(dtype, data):
    """masked_cross_entropy(targets, logits, ε, pad_id) and its gradient (by the tape) are scratch's
    cross_entropy with label_smoothing ε and ignore_index = pad_id (None: nothing ignored)."""
    import tensorflow as tf

    port = keras_port()
    case = data.draw(cross_entropy_cases(dtype), label="case")
    expected, cache = T.cross_entropy_forward(case.logits, case.targets, case.label_smoothing, case.ignore_index)
    logits = tf.constant(case.logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = port.masked_cross_entropy(tf.constant(case.targets), logits, case.label_smoothing, case.ignore_index)
    dlogits = tape.gradient(loss, logits).numpy()
    assert np.asarray(loss).dtype == np.dtype(dtype) and dlogits.dtype == np.dtype(dtype)
    assert_close(np.asarray(loss), np.asarray(expected), impl="keras masked_cross_entropy", what="loss")
    assert_close(dlogits, T.cross_entropy_backward(1.0, cache), impl="keras masked_cross_entropy", what="dlogits")


def test_without_smoothing_the_loss_is_keras_sparse_categorical_crossentropy():
    """ε = 0: the loss is keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    a mean over the non-padding targets. (That loss has no label smoothing for sparse targets.)"""
    import keras

    port = keras_port()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 6)).astype(np.float32)  # Keras losses compute in float32
    targets = rng.integers(1, 6, (3, 5))
    targets[0, 2:], targets[1, 4:] = 0, 0
    ours = np.asarray(port.masked_cross_entropy(targets, logits, 0.0, pad_id=0))
    theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)(targets, logits)
    assert_close(np.asarray(theirs), ours, impl="keras SparseCategoricalCrossentropy", what="loss with padding ignored")


def test_schedule_is_eq_3_and_the_first_update_takes_rate_1():
    """TransformerSchedule(iterations) = transformer_schedule(iterations + 1): an optimizer calls its schedule
    with the updates made so far, so its k-th update (k = 1, 2, …) takes scratch's rate(k)."""
    import keras

    port = keras_port()
    for d_model, warmup in ((512, 4000), (16, 10)):
        schedule, expected = port.TransformerSchedule(d_model, warmup), transformer_schedule(d_model, warmup)
        iterations = np.array([0, 1, 2, warmup - 2, warmup - 1, warmup, 3 * warmup])
        rates = np.array([float(schedule(i)) for i in iterations])
        assert_close(rates, np.array([expected(int(i) + 1) for i in iterations]), impl="keras TransformerSchedule",
                     what=f"rates (d_model={d_model}, warmup={warmup})", dtype=np.float32)
    weight = keras.Variable(np.zeros(3), dtype="float64")
    optimizer = keras.optimizers.SGD(port.TransformerSchedule(16, 10))
    taken = []
    for _ in range(3):
        before = weight.numpy().copy()
        optimizer.apply([np.ones(3)], [weight])
        taken.append(float((before - weight.numpy())[0]))
    assert_close(np.array(taken), np.array([transformer_schedule(16, 10)(k) for k in (1, 2, 3)]),
                 impl="keras SGD with TransformerSchedule", what="the first three step sizes", dtype=np.float32)
    scaled = port.TransformerSchedule(16, 10, factor=2.5)  # the trainers' lr_factor
    assert_close(np.float64(scaled(4)), np.float64(2.5 * transformer_schedule(16, 10)(5)),
                 impl="keras TransformerSchedule", what="rate × factor", dtype=np.float32)
    with pytest.raises(ValueError, match="warmup must be a positive int, got 0"):
        port.TransformerSchedule(16, 0)


def test_schedule_with_a_cooldown_is_scratchs_to_the_last_step():
    """With a cool-down the k-th update takes scratch's scaled_schedule(k): flat factor, then linearly to 0 at `total`."""
    from scratch.translation import scaled_schedule

    port = keras_port()
    schedule, expected = port.TransformerSchedule(16, 10, 1.5, cooldown=30, total=100), scaled_schedule(16, 10, 1.5, 30, 100)
    iterations = np.array([0, 9, 69, 70, 71, 85, 98, 99, 100, 120])  # steps 1 … 121: before, at and after the cool-down
    rates = np.array([float(schedule(i)) for i in iterations])
    assert_close(rates, np.array([expected(int(i) + 1) for i in iterations]), impl="keras TransformerSchedule",
                 what="rates with a cool-down", dtype=np.float32)
    assert rates[-3] > 0 and rates[-2] == rates[-1] == 0.0, "the last step (100) keeps a rate, the steps after it have none"


# ----------------------------------------------------------------------------------------------
# fit and translate
# ----------------------------------------------------------------------------------------------


def copy_pairs(config, rng, n):
    """(src, tgt_in, tgt_out) for copying sequences of 1 to 4 tokens (ids ≥ 3), padded; EOS ends each target."""
    lengths = rng.integers(1, 5, n)
    src = np.zeros((n, 4), np.int64)
    tgt_in, tgt_out = np.zeros((n, 5), np.int64), np.zeros((n, 5), np.int64)
    for i, length in enumerate(lengths):
        tokens = rng.integers(3, min(config.src_vocab, config.tgt_vocab), length)
        src[i, :length] = tokens
        tgt_in[i, : length + 1] = [1, *tokens]
        tgt_out[i, : length + 1] = [*tokens, EOS_ID]
    return src, tgt_in, tgt_out


def test_fit_with_sgd_takes_the_steps_scratch_gradients_say():
    """model.fit((src, tgt_in), tgt_out) on one full batch with SGD, label smoothing 0.1: each epoch is one
    step along the gradient of scratch's transformer_backward(cross_entropy_backward(…)), in float64.
    (fit hands integer arrays over unchanged; only float arrays are cast to Keras's float32.) Pre-norm and
    tied, so that the final norms and the tied embedding's two gradients are in it; one layer, because
    tracing fit's train function costs seconds per layer."""
    import keras

    port = keras_port()
    config = tiny_config(norm_first=True, tie_output=True)._replace(num_layers=1)
    params = tiny_params(config, np.float64, seed=1)
    src, tgt_in, tgt_out = copy_pairs(config, np.random.default_rng(2), 5)
    model = port.to_keras_translator(params, config)
    lr, smoothing, epochs = 0.125, 0.1, 2  # a rate exact in float32, where Keras keeps it
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), label_smoothing=smoothing)
    history = model.fit((src, tgt_in), tgt_out, epochs=epochs, batch_size=len(src), shuffle=False, verbose=0).history
    assert sorted(history) == ["accuracy", "loss"], f"keras fit reports {sorted(history)}"
    counted = tgt_out != config.pad_id
    for epoch in range(epochs):
        logits, cache = M.transformer_forward(src, tgt_in, params, config)
        loss, loss_cache = T.cross_entropy_forward(logits, tgt_out, smoothing, ignore_index=config.pad_id)
        accuracy = (logits.argmax(-1) == tgt_out)[counted].mean()
        for name, value in (("loss", loss), ("accuracy", accuracy)):
            # Keras metrics accumulate in float32, whatever the model's dtype
            assert_close(np.float64(history[name][epoch]), np.float64(value), impl="keras fit",
                         what=f"epoch {epoch} {name}", dtype=np.float32)
        grads = M.transformer_backward(T.cross_entropy_backward(1.0, loss_cache), cache)
        params = {name: p - lr * grads[name] for name, p in params.items()}
    for name, value in port.from_keras_translator(model).items():
        assert_close(value, params[name], impl="keras fit", what=f"{name} after {epochs} SGD steps")


@pytest.mark.parametrize("dtype,variant,compiled",
                         [(np.float64, "post-norm", True), (np.float32, "pre-norm-tied", False)],
                         ids=["float64-post-norm-compiled", "float32-pre-norm-tied-eager"])
def test_translate_is_scratch_greedy_decoding(dtype, variant, compiled):
    """translate(model, src) = greedy_decode(src, params, config), with rows that stop at EOS and rows that
    run to max_len: out.b[EOS] is set halfway into the widest gap between the rows' first-step margins
    (the best other logit minus EOS's), so that some rows open with EOS and the others do not, by a clear
    margin. Each step traced once (compiled, what the trainer runs) or the layers called eagerly."""
    port = keras_port()
    config, params, _ = converted(dtype, variant)
    src = np.array([[3, 4, 5, 6], [6, 5, 0, 0], [4, 0, 0, 0], [5, 3, 3, 0], [6, 6, 4, 3], [3, 0, 0, 0]])
    first, _ = M.transformer_forward(src, np.ones((len(src), 1), np.int64), params, config)  # (B, 1, V)
    margin = np.sort(np.delete(first[:, 0], EOS_ID, axis=1).max(axis=1) - first[:, 0, EOS_ID])  # (B,)
    widest = np.argmax(np.diff(margin))
    bias = params["out.b"].copy()
    bias[EOS_ID] += (margin[widest] + margin[widest + 1]) / 2
    params = {**params, "out.b": bias}
    model = port.to_keras_translator(params, config)
    for max_len in (3, None):
        expected = greedy_decode(src, params, config, max_len=max_len)
        ids = port.translate(model, src, max_len=max_len, compiled=compiled)
        assert ids.shape == expected.shape and np.array_equal(ids, expected), \
            f"keras translate ({variant}, compiled={compiled}, max_len={max_len}) gave\n{ids}\n" \
            f"scratch's greedy_decode\n{expected}"
    opened = expected[:, 0] == EOS_ID  # these rows stopped at once and were padded while the others went on
    assert opened.any() and not opened.all(), \
        f"every row or no row of\n{expected}\nopens with EOS: the case proves less"
    with pytest.raises(ValueError, match=r"src must be a \(B, T\) integer array"):
        port.translate(model, src.astype(np.float64))


def test_fit_with_adam_and_the_warm_up_learns_to_copy():
    """The paper's recipe the Keras way, from Keras's own initialisation: compile(Adam(TransformerSchedule,
    β = (0.9, 0.98), ε = 1e-9), label_smoothing=0.1), then fit on padded batches of a copy task (160 steps).
    The loss must fall by half, and translate must copy most of 32 new sequences exactly."""
    import keras

    port = keras_port()
    config = M.TransformerConfig(src_vocab=8, tgt_vocab=8, d_model=32, num_heads=2, d_ff=64, num_layers=1, max_len=6)
    src, tgt_in, tgt_out = copy_pairs(config, np.random.default_rng(0), 1024)
    keras.utils.set_random_seed(0)
    model = port.Translator(config, seed=0)
    before = float(port.masked_cross_entropy(tgt_out, model((src, tgt_in)), 0.1))
    schedule = port.TransformerSchedule(config.d_model, 80)
    optimizer = keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9)
    model.compile(optimizer=optimizer, label_smoothing=0.1)
    history = model.fit((src, tgt_in), tgt_out, epochs=5, batch_size=32, shuffle=False, verbose=0).history
    after = float(port.masked_cross_entropy(tgt_out, model((src, tgt_in)), 0.1))
    assert after < 0.5 * before and history["accuracy"][-1] > 0.8, \
        f"keras fit on the copy task: loss {before:.3f} → {after:.3f}, accuracy {history['accuracy']}"
    new_src, _, new_out = copy_pairs(config, np.random.default_rng(1), 32)
    translated = port.translate(model, new_src, compiled=False)
    copied = np.mean([np.array_equal(row[: len(ref)], ref) for row, ref in zip(translated, new_out)])
    assert copied > 0.6, f"keras translate copied {copied:.0%} of 32 new sequences exactly after training"


# ----------------------------------------------------------------------------------------------
# The functional port's dropout and the converters' errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_functional_dropout_draws_the_masks_scratch_draws(norm_first):
    port = keras_port()
    config = tiny_config(norm_first=norm_first, dropout=0.3)
    params = tiny_params(config, np.float64)
    src, tgt_in = batches(config)[0]
    dlogits = np.random.default_rng(1).standard_normal((*tgt_in.shape, config.tgt_vocab))
    expected, cache = M.transformer_forward(src, tgt_in, params, config, rng=np.random.default_rng(2))
    logits, port_cache = port.transformer_forward(src, tgt_in, params, config, rng=np.random.default_rng(2))
    assert_close(logits, expected, impl="keras", what="logits with dropout")
    assert not np.allclose(expected, M.transformer_forward(src, tgt_in, params, config)[0]), "dropout changed nothing"
    grads = port.transformer_backward(dlogits, port_cache)
    for name, g in M.transformer_backward(dlogits, cache).items():
        assert_close(grads[name], g, impl="keras", what=f"d{name} with dropout")


def test_converter_errors_name_the_parameter():
    port = keras_port()
    config = tiny_config()
    params = tiny_params(config, np.float64)
    with pytest.raises(ValueError, match=r"params is missing \['out.W'\]"):
        port.to_keras_translator({k: v for k, v in params.items() if k != "out.W"}, config)
    with pytest.raises(ValueError, match=r"params\['src_embed'\] must have shape \(7, 8\), got shape \(7, 4\)"):
        port.to_keras_translator({**params, "src_embed": params["src_embed"][:, :4]}, config)
    with pytest.raises(ValueError, match=r"\['bogus'\]"):
        port.to_keras_translator({**params, "bogus": np.zeros(2)}, config)
