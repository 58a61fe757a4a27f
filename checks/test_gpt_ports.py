"""Every port computes what scratch/gpt.py and scratch/sampling.py compute.

On Hypothesis-drawn tiny GPTs, in float64 and float32: the logits and every parameter's gradient,
the language-model loss with padding ignored and its gradients, one block, the MLP and GELU, each
port's own model (nanoGPT's nn.Module, the tf.Module, the keras.Model) holding scratch's weights,
and the converters' round trips. Then sampling: filter_logits on logits with ties, and sample
drawing scratch's very tokens from the same generator; the ports' generate loops equal scratch's
cached generate token for token. Causality in every port: changing a later token leaves every
earlier logit bit for bit unchanged. Bad input raises scratch's error, word for word. Why the
Keras model writes GELU out and hands MultiHeadAttention its scale: on TensorFlow, Keras rounds
both constants through float32. Training: 30 AdamW steps of scratch, PyTorch and TensorFlow give
the same losses and weights (float64); every port's run resumes exactly; the Keras model trains by
`fit`; `python -m scratch sample` reads a PyTorch run's checkpoint.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from checks.implementations import PORTS, require
from checks.strategies import DTYPES, floats, gpt_cases, gpt_params
from checks.tolerances import assert_close
from scratch import gpt as G
from scratch import layers as L

pytestmark = pytest.mark.gpt

EXAMPLES = max(5, settings.default.max_examples // 3)
DTYPE_IDS = lambda d: np.dtype(d).name  # noqa: E731


def run_gpt(module, case):
    logits, cache = module.gpt_forward(case.tokens, case.params, case.config)
    return {"logits": logits, **{f"d{name}": g for name, g in module.gpt_backward(case.dlogits, cache).items()}}


def run_gpt_loss(module, case, pad_id):
    """The loss of the case's tokens as (B, T) sequences (inputs T − 1), with `pad_id` ignored."""
    loss, cache = module.gpt_loss_forward(case.tokens, case.params, case.config, pad_id)
    dtype = case.dlogits.dtype
    return {"loss": dtype.type(loss), **{f"d{k}": g for k, g in module.gpt_loss_backward(-0.5, cache).items()}}


def run_block(module, case, i, x, dy):
    y, cache = module.block_forward(x, case.params, i, case.config.n_head)
    dx, grads = module.block_backward(dy, cache)
    return {"y": y, "dx": dx, **{f"d{k}": g for k, g in grads.items()}}


def well_conditioned(case, x=None, bound=10.0):
    """True when every layer norm of the case (scratch, float64) divides by √(σ² + ε) ≥ 1 / bound.

    A row whose features (nearly) agree has σ ≈ 0, and layer norm multiplies the rounding of its
    mean by up to 1/√ε ≈ 316: in float32 that alone passes the tolerance, in every implementation
    alike (checks/strategies.py's spread_rows has the story). The drawn residual streams cannot be
    spread by hand, so float32 checks skip such cases (about one in six); float64 keeps them all.
    """
    p = {k: v.astype(np.float64) for k, v in case.params.items()}
    _, (_, _, _, blocks, ln_f, _) = G.gpt_forward(case.tokens, p, case.config)
    caches = [c for block in blocks for c in (block[1], block[3])] + [ln_f]
    if x is not None:
        for i in range(case.config.n_layer):
            _, block = G.block_forward(x.astype(np.float64), p, i, case.config.n_head)
            caches += [block[1], block[3]]
    return max(float(c.inv_std.max()) for c in caches) <= bound


def draw_case(data, dtype):
    case = data.draw(gpt_cases(dtype), label="case")
    if np.dtype(dtype) == np.float32:
        assume(well_conditioned(case))
    return case


def assert_all_close(impl, what, actual, expected, dtype):
    assert list(actual) == list(expected), f"{impl}: {what} returned {list(actual)}, scratch returns {list(expected)}"
    for name, value in expected.items():
        assert np.asarray(actual[name]).dtype == np.dtype(dtype), \
            f"{impl}: {what} {name} is {np.asarray(actual[name]).dtype}, the input was {np.dtype(dtype)}"
        assert_close(actual[name], value, impl=impl, what=f"{what} {name}")


# ----------------------------------------------------------------------------------------------
# The functions against scratch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_gpt_matches_scratch(impl, dtype, data):
    """Logits and every parameter's gradient of the whole model (tied wte: both uses summed)."""
    port = require(impl, "gpt")
    case = draw_case(data, dtype)
    assert_all_close(impl, "gpt", run_gpt(port, case), run_gpt(G, case), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_gpt_loss_block_mlp_and_gelu_match_scratch(impl, dtype, data):
    port = require(impl, "gpt")
    case = draw_case(data, dtype)
    if case.tokens.shape[1] >= 2:  # a loss needs inputs and targets
        pad_id = data.draw(st.none() | st.integers(0, case.config.vocab_size - 1), label="pad_id")
        assert_all_close(impl, f"gpt_loss (pad_id {pad_id})", run_gpt_loss(port, case, pad_id),
                         run_gpt_loss(G, case, pad_id), dtype)
    b, t = case.tokens.shape
    x = data.draw(floats(dtype, (b, t, case.config.d_model), bound=2.0), label="x")
    if np.dtype(dtype) == np.float32:
        assume(well_conditioned(case, x))
    dy = data.draw(floats(dtype, (b, t, case.config.d_model)), label="dy")
    i = data.draw(st.integers(0, case.config.n_layer - 1), label="block")
    assert_all_close(impl, f"block {i}", run_block(port, case, i, x, dy), run_block(G, case, i, x, dy), dtype)
    mlp = {k.rsplit(".", 1)[-1]: v for k, v in case.params.items() if k.startswith(f"h.{i}.mlp.")}
    results = {}
    for name, module in (("port", port), ("scratch", G)):
        m, cache = module.mlp_forward(x, mlp)
        dh, grads = module.mlp_backward(dy, cache)
        results[name] = {"m": m, "dh": dh, **{f"d{k}": g for k, g in grads.items()}}
    assert_all_close(impl, "mlp", results["port"], results["scratch"], dtype)
    a, cache = port.gelu_forward(x * 2.0)
    e, e_cache = L.gelu_forward(x * 2.0)
    assert_all_close(impl, "gelu", {"out": a, "dx": port.gelu_backward(dy, cache)},
                     {"out": e, "dx": L.gelu_backward(dy, e_cache)}, dtype)


# ----------------------------------------------------------------------------------------------
# Each framework's own model holding scratch's weights
# ----------------------------------------------------------------------------------------------


def torch_model_results(port, case):
    """logits and every gradient of ports.torch.gpt.GPT (nanoGPT's layout, F.scaled_dot_product_attention)."""
    import copy

    import torch

    module = port.to_torch_gpt(case.params, case.config)
    logits = module(torch.from_numpy(case.tokens))  # (B, T, V)
    logits.backward(torch.from_numpy(case.dlogits))
    # from_torch_gpt only copies, transposes and splits: applied to a copy whose parameters hold their
    # gradients, it lays the gradients out in scratch's layout
    shadow = copy.deepcopy(module)
    for p_shadow, p in zip(shadow.parameters(), module.parameters()):
        p_shadow.data = p.grad
    return logits.detach().numpy(), port.from_torch_gpt(shadow), port.from_torch_gpt(module)


def tf_model_results(port, case):
    import tensorflow as tf

    model = port.to_tf_gpt(case.params, case.config)
    with tf.GradientTape() as tape:
        logits = model(case.tokens)
    names = list(model.params)
    grads = tape.gradient(logits, [model.params[n] for n in names], output_gradients=tf.constant(case.dlogits))
    return logits.numpy(), {n: tf.convert_to_tensor(g).numpy() for n, g in zip(names, grads)}, port.from_tf_gpt(model)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", ["torch", "tensorflow"])
@settings(max_examples=max(5, settings.default.max_examples // 5))
@given(data=st.data())
def test_framework_model_matches_scratch(impl, dtype, data):
    """torch's GPT nn.Module and TensorFlow's GPT tf.Module: logits, every gradient, the converters' round trip."""
    port = require(impl, "gpt")
    case = draw_case(data, dtype)
    logits, grads, back = (torch_model_results if impl == "torch" else tf_model_results)(port, case)
    expected = run_gpt(G, case)
    what = f"{impl} GPT model"
    assert_all_close(what, "model", {"logits": logits, **{f"d{k}": g for k, g in grads.items()}}, expected, dtype)
    assert list(back) == list(case.params) and all(np.array_equal(back[k], v) for k, v in case.params.items()), \
        f"{what}: the converters' round trip changed the parameters"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_keras_model_matches_scratch(dtype):
    """The keras.Model of Keras layers: logits, compute_loss (what fit minimises), the converters' round trip."""
    port = require("keras", "gpt")
    config = G.GPTConfig(vocab_size=9, block_size=7, n_layer=2, n_head=2, d_model=6)
    params = gpt_params(np.random.default_rng(5), config, dtype)
    tokens = np.random.default_rng(6).integers(0, 9, (3, 7))
    tokens[1, 4:] = 0  # padding at the end of one row, id 0
    model = port.to_keras_gpt(params, config, pad_id=0)
    what = "keras GPT model"
    logits = np.asarray(model(tokens[:, :-1]))
    assert logits.dtype == np.dtype(dtype), f"{what}: logits are {logits.dtype}"
    assert_close(logits, G.gpt_forward(tokens[:, :-1], params, config)[0], impl=what, what="logits")
    loss = np.asarray(model.compute_loss(y=tokens[:, 1:], y_pred=model(tokens[:, :-1])))
    assert_close(loss, np.dtype(dtype).type(G.gpt_loss_forward(tokens, params, config, 0)[0]), impl=what, what="loss")
    back = port.from_keras_gpt(model)
    assert list(back) == list(params) and all(np.array_equal(back[k], v) for k, v in params.items()), \
        f"{what}: the converters' round trip changed the parameters"


def test_keras_gelu_rounds_its_coefficient_to_float32():
    """Why the Keras model writes GELU out instead of calling keras.activations.gelu(approximate=True):
    on TensorFlow that computes 0.044715 as float32(0.044715) = 0.04471499845…, 1e-9 off in float64,
    where scratch, HF's gelu_new and torch's gelu(approximate="tanh") use 0.044715 itself."""
    keras = pytest.importorskip("keras")
    require("keras", "gpt")
    x = np.linspace(-4.0, 4.0, 81)
    theirs = np.asarray(keras.activations.gelu(x, approximate=True))
    c32 = float(np.float32(0.044715))
    rounded = 0.5 * x * (1.0 + np.tanh(L.GELU_C * (x + c32 * x**3)))
    np.testing.assert_allclose(theirs, rounded, rtol=1e-14, atol=1e-15)
    assert np.abs(theirs - L.gelu_forward(x)[0]).max() > 1e-10, "keras's GELU now equals scratch's: use it"


def test_keras_attention_rounds_its_scale_to_float32():
    """Why the Keras model hands MultiHeadAttention its 1/√Dh as a NumPy scalar: kept as a Python float,
    the TensorFlow kernel casts it through float32, and with Dh = 3 a float64 layer is 1e-8 off scratch."""
    keras = pytest.importorskip("keras")
    attention = require("keras", "attention")
    from scratch.attention import causal_mask, multi_head_attention_forward

    rng = np.random.default_rng(11)
    params = {n: rng.normal(0.0, 0.5, (6, 6) if n.startswith("W") else (6,)) for n in ("W_q", "W_k", "W_v", "W_o",
                                                                                        "b_q", "b_k", "b_v", "b_o")}
    x = rng.standard_normal((2, 5, 6))
    expected = multi_head_attention_forward(x, x, params, 2, causal_mask(5))[0]
    layer = attention.to_keras_multi_head_attention(params, 2)
    assert isinstance(layer, keras.layers.MultiHeadAttention)
    assert np.abs(np.asarray(layer(x, x, use_causal_mask=True)) - expected).max() > 1e-10, \
        "keras's MultiHeadAttention now scales exactly in float64: the GPT block's workaround can go"
    layer._inverse_sqrt_key_dim = np.float64(1.0 / np.sqrt(3.0))  # what GPTBlock does
    assert_close(np.asarray(layer(x, x, use_causal_mask=True)), expected, impl="keras MultiHeadAttention", what="out")


# ----------------------------------------------------------------------------------------------
# Sampling and generation
# ----------------------------------------------------------------------------------------------


@st.composite
def tied_logits(draw, dtype):
    """(B, V) logits from a few distinct values, so that ties (at the top-k and top-p boundaries) are common."""
    b, v = draw(st.integers(1, 4), label="B"), draw(st.integers(1, 7), label="V")
    values = draw(st.lists(st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0]), min_size=1, max_size=3), label="values")
    return draw(hnp.arrays(dtype, (b, v), elements=st.sampled_from(values)), label="logits")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
@settings(max_examples=settings.default.max_examples)
@given(data=st.data())
def test_filter_logits_and_sample_match_scratch(impl, dtype, data):
    port = require(impl, "sampling")
    logits = data.draw(tied_logits(dtype))
    top_k = data.draw(st.none() | st.integers(1, logits.shape[1] + 1), label="top_k")
    top_p = data.draw(st.none() | st.sampled_from([1.0, 0.9, 0.5]) | st.floats(0.05, 1.0), label="top_p")
    np.testing.assert_array_equal(port.filter_logits(logits, top_k, top_p), G.filter_logits(logits, top_k, top_p),
                                  err_msg=f"{impl}: filter_logits(top_k={top_k}, top_p={top_p})")
    temperature = data.draw(st.sampled_from([0.0, 0.7, 1.0, 1.5]), label="temperature")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    drawn = port.sample(np.repeat(logits, 50, axis=0), np.random.default_rng(seed), temperature, top_k, top_p)
    np.testing.assert_array_equal(drawn, G.sample(np.repeat(logits, 50, axis=0), np.random.default_rng(seed),
                                                  temperature, top_k, top_p),
                                  err_msg=f"{impl}: sample(temperature={temperature}, top_k={top_k}, top_p={top_p})")
    if temperature == 0.0:  # greedy draws nothing: no generator needed
        np.testing.assert_array_equal(port.sample(logits, None, 0.0, top_k, top_p), G.sample(logits, None, 0.0, top_k, top_p),
                                      err_msg=f"{impl}: sample(temperature=0) without a generator")


@pytest.mark.parametrize("impl", ["tensorflow", "keras"])
def test_generate_loop_equals_scratch(impl):
    """The tf.Module's and the Keras model's generate (the whole prefix again at each step, the port's
    sample) draw the tokens scratch's cached generate draws from the same generator."""
    port = require(impl, "gpt")
    config = G.GPTConfig(vocab_size=12, block_size=9, n_layer=2, n_head=2, d_model=8)
    params = gpt_params(np.random.default_rng(7), config, np.float64)
    prompts = np.array([[1, 4], [1, 6], [1, 2]])
    for temperature, top_k, top_p in ((1.0, None, None), (0.8, 5, 0.9), (0.0, None, None)):
        expected = G.generate(params, config, prompts, 20, np.random.default_rng(8), temperature, top_k, top_p)
        model = port.to_tf_gpt(params, config) if impl == "tensorflow" else port.to_keras_gpt(params, config)
        got = model.generate(prompts, 20, np.random.default_rng(8), temperature, top_k, top_p)
        assert got.shape == expected.shape == (3, config.block_size + 1)
        np.testing.assert_array_equal(got, expected, err_msg=f"{impl}: generate({temperature}, {top_k}, {top_p})")


# ----------------------------------------------------------------------------------------------
# Causality: what follows position t cannot change logits[:, t]
# ----------------------------------------------------------------------------------------------


def _model_logits(impl, port, params, config):
    """tokens → logits of each port's own model class."""
    if impl == "torch":
        import torch

        module = port.to_torch_gpt(params, config)
        return lambda tokens: module(torch.from_numpy(tokens)).detach().numpy()
    if impl == "tensorflow":
        model = port.to_tf_gpt(params, config)
        return lambda tokens: model(tokens).numpy()
    model = port.to_keras_gpt(params, config)
    return lambda tokens: np.asarray(model(tokens))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", PORTS)
def test_later_tokens_leave_earlier_logits_bit_for_bit(impl, dtype):
    port = require(impl, "gpt")
    config = G.GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, d_model=8)
    params = gpt_params(np.random.default_rng(9), config, dtype)
    rng = np.random.default_rng(10)
    tokens = rng.integers(0, 10, (3, 8))
    models = {"functions": lambda tk: port.gpt_forward(tk, params, config)[0],
              "model": _model_logits(impl, port, params, config)}
    for what, logits_of in models.items():
        before = logits_of(tokens)
        for t in (0, 3, 6):
            changed = tokens.copy()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1 + rng.integers(0, 8, changed[:, t + 1:].shape)) % 10
            after = logits_of(changed)
            np.testing.assert_array_equal(after[:, : t + 1], before[:, : t + 1],
                                          err_msg=f"{impl} {what}: tokens after position {t} changed logits up to {t}")
            assert not np.array_equal(after[:, t + 1:], before[:, t + 1:]), f"{impl} {what}: the change did nothing"


# ----------------------------------------------------------------------------------------------
# Bad input: the same error, word for word, as scratch
# ----------------------------------------------------------------------------------------------


def _bad_calls():
    config = G.GPTConfig(vocab_size=6, block_size=4, n_layer=1, n_head=2, d_model=4)
    params = G.init_gpt(config, np.random.default_rng(0))
    tokens = np.array([[1, 2, 3]])
    return {
        "float tokens": lambda m: m.gpt_forward(tokens.astype(float), params, config),
        "1-D tokens": lambda m: m.gpt_forward(tokens[0], params, config),
        "too long": lambda m: m.gpt_forward(np.ones((1, 5), int), params, config),
        "vocabulary": lambda m: m.gpt_forward(np.array([[1, 6]]), params, config),
        "missing parameter": lambda m: m.gpt_forward(tokens, {k: v for k, v in params.items() if k != "wpe"}, config),
        "wrong shape": lambda m: m.gpt_forward(tokens, {**params, "wte": params["wte"][:5]}, config),
        "mixed dtypes": lambda m: m.gpt_forward(tokens, {**params, "wte": params["wte"].astype(np.float32)}, config),
        "heads": lambda m: m.gpt_forward(tokens, params, config._replace(n_head=3)),
        "loss one position": lambda m: m.gpt_loss_forward(tokens[:, :1], params, config),
        "top_k 0": lambda m: m.filter_logits(np.zeros((1, 3)), top_k=0),
        "top_p 0": lambda m: m.filter_logits(np.zeros((1, 3)), top_p=0.0),
        "NaN logits": lambda m: m.sample(np.array([[np.nan, 0.0]]), np.random.default_rng(0)),
        "negative temperature": lambda m: m.sample(np.zeros((1, 3)), np.random.default_rng(0), temperature=-1.0),
        "no generator": lambda m: m.sample(np.zeros((1, 3)), 0),
    }


BAD_CALLS = _bad_calls()


@pytest.mark.parametrize("what", sorted(BAD_CALLS))
@pytest.mark.parametrize("impl", PORTS)
def test_bad_input_raises_what_scratch_raises(impl, what):
    port, call = require(impl, "gpt"), BAD_CALLS[what]
    with pytest.raises((ValueError, TypeError)) as expected:
        call(G)
    with pytest.raises((ValueError, TypeError)) as raised:
        call(port)
    assert (type(raised.value), str(raised.value)) == (type(expected.value), str(expected.value)), \
        f"{impl}: {what} raised {raised.value!r}; scratch raises {expected.value!r}"


# ----------------------------------------------------------------------------------------------
# Training: the same trajectory in scratch, PyTorch and TensorFlow; every port resumes exactly
# ----------------------------------------------------------------------------------------------

WORDS = ("anna bob carla dmitri eve farid gus hana ivo jun kira lev mia nils olga pia quinn rosa sam tove uma vic "
         "wren xia yves zoe").split()
STEPS = 30
TRAINED_PORTS = ("torch", "tensorflow")  # Keras trains with its own AdamW (checked for resume only)


@pytest.fixture(scope="module")
def names_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt") / "names.txt"
    path.write_text("\n".join(WORDS * 3) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread: on a busy two-core machine its two spinning threads made a tiny step 30× slower."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gpt_trainer(impl):
    import importlib

    from scratch import language_model as LM

    if impl == "scratch":
        return LM.ScratchGPTTrainer
    require(impl, "gpt")
    return importlib.import_module(f"ports.{impl}.train").TRAINERS["gpt"]


@pytest.mark.parametrize("impl", TRAINED_PORTS)
def test_port_training_trajectory_equals_scratch(impl, names_file, one_torch_thread):
    """30 AdamW steps from the same weights on the same batches at the same warm-up + cosine rate:
    the same losses and the same final weights, in float64, to rounding."""
    from scratch import language_model as LM

    data = LM.load_lm_data(f"text:{names_file}")
    config = G.GPTConfig(len(data.vocab), data.block_size, n_layer=2, n_head=2, d_model=16)
    runs = {}
    for name in ("scratch", impl):
        trainer = gpt_trainer(name)(config, data, 0, batch_size=16, lr=1e-2, warmup=5, decay_steps=STEPS,
                                    dtype=np.float64, eval_samples=10)
        runs[name] = (np.array([trainer.train_step(step) for step in range(1, STEPS + 1)]), trainer)
    (expected, scratch), (actual, port) = runs["scratch"], runs[impl]
    assert expected[0] - expected[-1] > 0.5, f"the loss went from {expected[0]:.3f} to {expected[-1]:.3f}: too little"
    assert_close(actual, expected, impl=impl, what=f"losses of {STEPS} steps")
    final = port.numpy_params()
    for name, value in scratch.params.items():
        assert_close(final[name], value, impl=impl, what=f"{name} after {STEPS} steps")


def cli_args(names_file, out, steps, resume=False):
    from types import SimpleNamespace

    return SimpleNamespace(data=f"text:{names_file}", steps=steps, seed=1, out=str(out), resume=resume, eval_every=3,
                           batch_size=8, lr=1e-2, warmup=2, decay_steps=6, weight_decay=0.01, layers=1, heads=2,
                           d_model=8, dtype="float32", quiet=True)


@pytest.mark.parametrize("impl", PORTS)
def test_run_resumes_exactly(impl, names_file, tmp_path, one_torch_thread):
    """6 steps straight, or 3 then a resumed 3: the same checkpoint, array for array."""
    from scratch import runs
    from scratch.language_model import train_gpt

    trainer = gpt_trainer(impl)
    train_gpt(cli_args(names_file, tmp_path / "straight", 6), trainer)
    train_gpt(cli_args(names_file, tmp_path / "stopped", 3), trainer)
    train_gpt(cli_args(names_file, tmp_path / "stopped", 6, resume=True), trainer)
    a, b = (runs.load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in ("straight", "stopped"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{impl}: {name} differs after resuming"


def test_scratch_samples_from_a_pytorch_checkpoint(names_file, tmp_path, capsys, one_torch_thread):
    """`python -m ports.torch train gpt` writes the scratch layout: `python -m scratch sample` reads it."""
    from scratch.__main__ import main
    from scratch.language_model import load_sampler, sample_from

    trainers = {"gpt": gpt_trainer("torch")}
    out = tmp_path / "torch-run"
    assert main(["train", "gpt", "--data", f"text:{names_file}", "--steps", "4", "--eval-every", "2", "--out", str(out),
                 "--layers", "1", "--heads", "2", "--d-model", "8", "--warmup", "2", "--quiet"], implementation="torch",
                trainers=trainers) == 0
    capsys.readouterr()
    checkpoint = str(out / "checkpoint.npz")
    assert main(["sample", checkpoint, "--num", "6", "--seed", "3", "--temperature", "0.8", "--top-p", "0.95"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == sample_from(load_sampler(checkpoint), 6, 3, temperature=0.8, top_p=0.95)
    assert len(printed) == 6


def test_keras_model_trains_by_fit(names_file):
    """`compile` then `fit(inputs, targets)`, Keras's own loop, lowers scratch's loss of the model's weights."""
    keras = pytest.importorskip("keras")
    port = require("keras", "gpt")
    from scratch import language_model as LM

    data = LM.load_lm_data(f"text:{names_file}")
    config = G.GPTConfig(len(data.vocab), data.block_size, n_layer=1, n_head=2, d_model=8)
    model = port.to_keras_gpt(G.init_gpt(config, np.random.default_rng(0), np.float32), config, pad_id=LM.PAD_ID)
    tokens = LM.pad_sequences(data.train_ids)  # (N, T + 1)
    before = G.gpt_loss_forward(tokens, port.from_keras_gpt(model), config, LM.PAD_ID)[0]
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    history = model.fit(tokens[:, :-1], tokens[:, 1:], batch_size=16, epochs=3, shuffle=False, verbose=0)
    after = G.gpt_loss_forward(tokens, port.from_keras_gpt(model), config, LM.PAD_ID)[0]
    assert after < before - 0.3, f"fit took scratch's loss from {before:.3f} to {after:.3f} only"
    assert history.history["loss"][-1] < history.history["loss"][0]
