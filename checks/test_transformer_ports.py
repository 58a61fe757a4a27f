"""Every port computes what scratch/transformer.py and scratch/encoder_decoder.py compute.

For each op (layer norm, the feed-forward block, the label-smoothed cross-entropy), each layer
(encoder and decoder, post-norm and pre-norm, with padding, causal and drawn masks) and a whole
tiny model (pre/post-norm, tied or separate output, padded sources): the outputs and every
gradient of every port equal scratch's, in float64 and float32, within the tolerance table.
Also: the positional encoding, the cross-entropy with every target ignored (0 and 0, where
torch's own mean is NaN), dropout drawing scratch's masks, the TensorFlow tf.Module holding
scratch weights, and bad inputs raising exactly scratch's errors.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.implementations import PORTS, require
from checks.runners import RUNNERS
from checks.strategies import (DTYPES, cross_entropy_cases, decoder_layer_cases, encoder_layer_cases,
                               feed_forward_cases, layer_norm_cases, transformer_cases)
from checks.tolerances import assert_close
from scratch import encoder_decoder as M
from scratch import transformer as T
from scratch.attention import causal_mask

pytestmark = [
    pytest.mark.transformer,
    # torch's eval-mode encoder packs padded batches into a (prototype) nested tensor, and says so
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning"),
]


def assert_all_close(impl, what, actual, expected, dtype):
    assert sorted(actual) == sorted(expected), \
        f"{impl}: {what} returned {sorted(actual)}, scratch returns {sorted(expected)}"
    for name, value in expected.items():
        assert np.asarray(actual[name]).dtype == np.dtype(dtype), \
            f"{impl}: {what} {name} is {np.asarray(actual[name]).dtype}, input was {np.dtype(dtype)}"
        assert_close(actual[name], value, impl=impl, what=f"{what} {name}")


def check_against_scratch(impl, what, case, dtype):
    port, scratch = require(impl, "transformer"), require("scratch", "transformer")
    if what == "transformer":
        scratch = M  # the whole model lives in scratch/encoder_decoder.py; the ports keep it in transformer.py
    assert_all_close(impl, what, RUNNERS[what](port, case), RUNNERS[what](scratch, case), dtype)


# ----------------------------------------------------------------------------------------------
# Ops, layers and the whole model against scratch
# ----------------------------------------------------------------------------------------------

OP_CASES = {"layer_norm": layer_norm_cases, "feed_forward": feed_forward_cases, "cross_entropy": cross_entropy_cases}


@pytest.mark.parametrize("op", sorted(OP_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(data=st.data())
def test_op_matches_scratch(impl, dtype, op, data):
    check_against_scratch(impl, op, data.draw(OP_CASES[op](dtype), label="case"), dtype)


# A layer forward and backward costs a few ms in eager TensorFlow: a third of the profile's examples.
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("layer", ["encoder_layer", "decoder_layer"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=max(5, settings.default.max_examples // 4))
@given(data=st.data())
def test_layer_matches_scratch(impl, dtype, layer, norm_first, data):
    cases = encoder_layer_cases if layer == "encoder_layer" else decoder_layer_cases
    check_against_scratch(impl, layer, data.draw(cases(dtype, norm_first), label="case"), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=max(5, settings.default.max_examples // 4))
@given(data=st.data())
def test_transformer_matches_scratch(impl, dtype, data):
    """Logits and every parameter's gradient of a 2-layer model; sources padded anywhere, all-padding included."""
    case = data.draw(transformer_cases(dtype, padding="anywhere"), label="case")
    check_against_scratch(impl, "transformer", case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=max(5, settings.default.max_examples // 5))
@given(data=st.data())
def test_cross_entropy_with_every_target_ignored_is_zero(impl, dtype, data):
    """Nothing counted: loss 0 and gradient 0 in scratch (a mean over no terms is taken as 0, not 0/0);
    each port must do the same, although torch's own cross_entropy returns NaN here."""
    case = data.draw(cross_entropy_cases(dtype, all_ignored=True), label="case")
    out = RUNNERS["cross_entropy"](require(impl, "transformer"), case)
    assert out["loss"] == 0.0 and np.all(out["dlogits"] == 0.0), f"{impl}: loss {out['loss']}, dlogits {out['dlogits']}"
    check_against_scratch(impl, "cross_entropy", case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
def test_positional_encoding_matches_scratch(impl, dtype):
    port = require(impl, "transformer")
    for t, d in ((0, 4), (3, 0), (1, 1), (5, 7), (32, 16)):
        pe = port.positional_encoding(t, d, dtype)
        assert pe.dtype == np.dtype(dtype), f"{impl}: positional_encoding({t}, {d}, {np.dtype(dtype)}) is {pe.dtype}"
        assert_close(pe, T.positional_encoding(t, d, dtype), impl=impl, what=f"positional_encoding({t}, {d})")


# ----------------------------------------------------------------------------------------------
# Dropout: with the same generator the ports drop what scratch drops
# ----------------------------------------------------------------------------------------------


# The Keras port is written by its own author; its dropout, if any, need not draw NumPy's masks.
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("impl", ["torch", "tensorflow"])
def test_dropout_draws_the_masks_scratch_draws(impl, norm_first):
    port = require(impl, "transformer")
    config = M.TransformerConfig(src_vocab=7, tgt_vocab=6, d_model=4, num_heads=2, d_ff=6, num_layers=2, max_len=6,
                                 norm_first=norm_first, dropout=0.3)
    params = M.init_transformer(config, np.random.default_rng(0))
    src, tgt_in = np.array([[3, 4, 5, 0], [6, 2, 0, 0]]), np.array([[1, 3, 2, 4, 5], [1, 2, 3, 0, 0]])
    dlogits = np.random.default_rng(1).standard_normal((2, 5, 6))
    expected, cache = M.transformer_forward(src, tgt_in, params, config, rng=np.random.default_rng(2))
    logits, port_cache = port.transformer_forward(src, tgt_in, params, config, rng=np.random.default_rng(2))
    assert_close(logits, expected, impl=impl, what="logits with dropout")
    without, _ = M.transformer_forward(src, tgt_in, params, config)
    assert not np.allclose(expected, without), "dropout at p = 0.3 changed nothing: the check would prove nothing"
    grads = port.transformer_backward(dlogits, port_cache)
    for name, g in M.transformer_backward(dlogits, cache).items():
        assert_close(grads[name], g, impl=impl, what=f"d{name} with dropout")


# ----------------------------------------------------------------------------------------------
# TensorFlow's tf.Module
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first,tie_output", [(False, False), (True, True)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_tf_module_holds_scratch_weights(dtype, norm_first, tie_output):
    port = require("tensorflow", "transformer")
    config = M.TransformerConfig(src_vocab=7, tgt_vocab=6, d_model=4, num_heads=2, d_ff=6, num_layers=2, max_len=6,
                                 norm_first=norm_first, tie_output=tie_output)
    params = M.init_transformer(config, np.random.default_rng(3), dtype)
    model = port.to_tf_transformer(params, config)
    back = port.from_tf_transformer(model)
    assert list(back) == list(params), f"tensorflow: converted back, the keys are {list(back)}"
    for name in params:
        np.testing.assert_array_equal(back[name], params[name], err_msg=f"tensorflow: {name} after the round trip")
    src, tgt_in = np.array([[3, 4, 5, 0], [6, 2, 0, 0]]), np.array([[1, 3, 2], [1, 2, 3]])
    assert_close(np.asarray(model(src, tgt_in)), M.transformer_forward(src, tgt_in, params, config)[0],
                 impl="tensorflow Transformer (tf.Module)", what="logits")
    fresh = port.Transformer(config, dtype=dtype, seed=3)  # built from the same seed as scratch's init
    for name, value in port.from_tf_transformer(fresh).items():
        np.testing.assert_array_equal(value, params[name], err_msg=f"tensorflow: Transformer(seed=3) {name}")


def test_tf_module_drops_what_scratch_drops_with_masks_drawn_ahead():
    """dropout_masks draws, before a compiled step, the masks scratch's forward draws from the same generator."""
    port = require("tensorflow", "transformer")
    config = M.TransformerConfig(src_vocab=7, tgt_vocab=6, d_model=4, num_heads=2, d_ff=6, num_layers=2, max_len=6,
                                 norm_first=True, dropout=0.3)
    params = M.init_transformer(config, np.random.default_rng(4))
    src, tgt_in = np.array([[3, 4, 5, 0], [6, 2, 0, 0]]), np.array([[1, 3, 2], [1, 2, 3]])
    masks = port.dropout_masks(np.random.default_rng(5), config, 2, 4, 3, np.float64)
    expected, _ = M.transformer_forward(src, tgt_in, params, config, rng=np.random.default_rng(5))
    assert_close(np.asarray(port.to_tf_transformer(params, config)(src, tgt_in, masks)), expected,
                 impl="tensorflow Transformer (tf.Module)", what="logits with dropout_masks")


@pytest.mark.parametrize("impl", ["torch", "tensorflow"])
def test_module_greedy_decoding_equals_scratch(impl):
    """TorchTransformer.greedy_decode and Transformer.greedy_decode (tf.Module), which re-run the decoder on
    the whole prefix, return scratch's cached greedy_decode: BOS dropped, EOS kept, padding after it."""
    port = require(impl, "transformer")
    from scratch.decoding import EOS_ID, greedy_decode

    config = M.TransformerConfig(src_vocab=7, tgt_vocab=6, d_model=8, num_heads=2, d_ff=12, num_layers=2, max_len=7)
    params = M.init_transformer(config, np.random.default_rng(61))
    params["out.b"] = np.random.default_rng(1061).normal(0.0, 0.3, 6)  # a seed where rows stop at different steps
    src = np.array([[3, 4, 5, 0], [6, 2, 0, 0], [1, 1, 2, 3]])
    expected = greedy_decode(src, params, config)
    if impl == "torch":
        import torch

        module = port.to_torch_transformer(params, config).eval()
        decoded = module.greedy_decode(torch.from_numpy(src)).numpy()
    else:
        decoded = port.to_tf_transformer(params, config).greedy_decode(src).numpy()
    assert expected.tolist() == [[4, 3, 5, 3, 2, 0, 0], [2, 0, 0, 0, 0, 0, 0], [4, 4, 4, 0, 0, 0, 0]], \
        f"scratch decodes {expected.tolist()}: pick a seed where rows stop at different steps, one never"
    np.testing.assert_array_equal(decoded, expected, err_msg=f"{impl}: greedy decoding")


# ----------------------------------------------------------------------------------------------
# Bad input: the same error, word for word, as scratch
# ----------------------------------------------------------------------------------------------


def _bad_calls():
    rng = np.random.default_rng(0)
    enc = {n: rng.standard_normal((4, 6) if n == "ff.W1" else (6, 4) if n == "ff.W2" else (6,) if n == "ff.b1"
                                  else (4, 4) if ".W" in n else (4,)) for n in T.ENCODER_LAYER_NAMES}
    dec = {n: rng.standard_normal((4, 6) if n == "ff.W1" else (6, 4) if n == "ff.W2" else (6,) if n == "ff.b1"
                                  else (4, 4) if ".W" in n else (4,)) for n in T.DECODER_LAYER_NAMES}
    x, memory = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    ff = {k[3:]: v for k, v in enc.items() if k.startswith("ff.")}
    config = M.TransformerConfig(src_vocab=7, tgt_vocab=6, d_model=4, num_heads=2, d_ff=6, num_layers=1, max_len=4)
    params = M.init_transformer(config, rng)
    src, tgt = np.array([[3, 4, 0]]), np.array([[1, 2]])
    logits = rng.standard_normal((2, 3, 5))
    return {
        "positional_encoding t < 0": lambda m: m.positional_encoding(-1, 4),
        "positional_encoding float d": lambda m: m.positional_encoding(3, 4.0),
        "layer_norm gamma shape": lambda m: m.layer_norm_forward(x, np.ones(3), np.zeros(4)),
        "layer_norm dtypes": lambda m: m.layer_norm_forward(x.astype(np.float32), np.ones(4), np.zeros(4)),
        "layer_norm integer x": lambda m: m.layer_norm_forward(np.ones((2, 4), int), np.ones(4), np.zeros(4)),
        "feed_forward W1 shape": lambda m: m.feed_forward_forward(x[..., :3], ff),
        "feed_forward dtypes": lambda m: m.feed_forward_forward(x.astype(np.float32), ff),
        "encoder x 2-D": lambda m: m.encoder_layer_forward(x[0], enc, 2),
        "encoder missing param": lambda m: m.encoder_layer_forward(x, {k: enc[k] for k in list(enc)[:-1]}, 2),
        "encoder heads": lambda m: m.encoder_layer_forward(x, enc, 3),
        "encoder mask shape": lambda m: m.encoder_layer_forward(x, enc, 2, np.ones((2, 1, 4), bool)),
        "encoder integer mask": lambda m: m.encoder_layer_forward(x, enc, 2, np.ones((2, 1, 3), int)),
        "encoder dtypes": lambda m: m.encoder_layer_forward(x.astype(np.float32), enc, 2),
        "decoder memory batch": lambda m: m.decoder_layer_forward(x, memory[:1], dec, 2),
        "decoder memory width": lambda m: m.decoder_layer_forward(x, memory[..., :2], dec, 2),
        "decoder memory mask": lambda m: m.decoder_layer_forward(x, memory, dec, 2, causal_mask(3),
                                                                 np.ones((2, 1, 3), bool)),
        "cross_entropy float targets": lambda m: m.cross_entropy_forward(logits, np.zeros((2, 3))),
        "cross_entropy targets shape": lambda m: m.cross_entropy_forward(logits, np.zeros((2, 4), int)),
        "cross_entropy target range": lambda m: m.cross_entropy_forward(logits, np.full((2, 3), 5)),
        "cross_entropy smoothing": lambda m: m.cross_entropy_forward(logits, np.zeros((2, 3), int), 1.5),
        "model float ids": lambda m: m.transformer_forward(src.astype(float), tgt, params, config),
        "model too long": lambda m: m.transformer_forward(np.ones((1, 5), int), tgt, params, config),
        "model vocabulary": lambda m: m.transformer_forward(src, np.array([[1, 6]]), params, config),
        "model batch": lambda m: m.transformer_forward(np.ones((2, 3), int), tgt, params, config),
    }


BAD_CALLS = _bad_calls()


@pytest.mark.parametrize("what", sorted(BAD_CALLS))
@pytest.mark.parametrize("impl", PORTS)
def test_bad_input_raises_what_scratch_raises(impl, what):
    port, call = require(impl, "transformer"), BAD_CALLS[what]
    scratch = M if what.startswith("model") else T
    with pytest.raises((ValueError, TypeError)) as expected:
        call(scratch)
    with pytest.raises((ValueError, TypeError)) as raised:
        call(port)
    assert (type(raised.value), str(raised.value)) == (type(expected.value), str(expected.value)), \
        f"{impl}: {what} raised {raised.value!r}; scratch raises {expected.value!r}"
