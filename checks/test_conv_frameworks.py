"""After conversion, the frameworks' own layers compute what scratch computes.

`nn.Conv2d`, `nn.ConvTranspose2d`, `nn.BatchNorm2d` and Keras's `Conv2D`, `Conv2DTranspose`,
`BatchNormalization` are written by other people: agreeing with them checks our conventions
(weight layouts, padding, output_padding, the running statistics), not just our arithmetic.
Where a framework's convention differs (Keras's momentum and its biased moving variance), the
check states the difference and measures it, rather than hiding it. The converters round-trip
exactly, both ways. The last checks pin what TensorFlow's CPU kernels cannot do (dilation in
the gradient and in the transposed convolution), which is why the TF and Keras ports dilate the
kernel themselves; when one starts working, its check fails and says so.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from checks.implementations import require
from checks.strategies import batch_norm_cases, conv_cases
from checks.tolerances import assert_close
from scratch import conv as C
from scratch import layers as L
from scratch.validate import as_pair

pytestmark = pytest.mark.conv

# A Keras layer is slow to build eagerly: half the profile's examples for those checks.
fewer = settings(max_examples=max(10, settings.default.max_examples // 2))


def params_of(case):
    return {"w": case.w, **({} if case.b is None else {"b": case.b})}


def assert_same_params(actual, expected, what):
    assert sorted(actual) == sorted(expected), f"{what}: keys {sorted(actual)}, expected {sorted(expected)}"
    for name, value in expected.items():
        assert np.asarray(actual[name]).dtype == value.dtype, f"{what}: {name} is {np.asarray(actual[name]).dtype}"
        np.testing.assert_array_equal(actual[name], value, err_msg=f"{what}: {name} changed in the round trip")


def scratch_conv(case, transposed):
    if transposed:
        out, cache = C.conv_transpose2d_forward(case.x, case.w, case.b, case.stride, case.padding,
                                                case.output_padding, case.dilation)
        return out, C.conv_transpose2d_backward(case.dout, cache)
    out, cache = C.conv2d_forward(case.x, case.w, case.b, case.stride, case.padding, case.dilation)
    return out, C.conv2d_backward(case.dout, cache)


# ----------------------------------------------------------------------------------------------
# PyTorch: nn.Conv2d, nn.ConvTranspose2d
# ----------------------------------------------------------------------------------------------


def torch_layer_run(layer, case):
    """(out, dx, dweight, dbias) of an nn module on case.x, upstream case.dout, by autograd."""
    import torch

    x = torch.tensor(case.x, requires_grad=True)
    out = layer(x)
    leaves = [x, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    grads = torch.autograd.grad(out, leaves, torch.from_numpy(case.dout))
    return out.detach().numpy(), *(g.numpy() for g in grads), *([None] if layer.bias is None else [])


@pytest.mark.parametrize("transposed", [False, True], ids=["Conv2d", "ConvTranspose2d"])
@given(data=st.data())
def test_torch_layers_match_scratch_after_conversion(transposed, data):
    port = require("torch", "conv")
    case = data.draw(conv_cases(np.float64, transposed=transposed), label="case")
    params = params_of(case)
    if transposed:
        layer = port.to_torch_conv_transpose2d(params, case.stride, case.padding, case.output_padding, case.dilation)
        assert layer.output_padding == as_pair("output_padding", case.output_padding, 0)
        back = port.from_torch_conv_transpose2d(layer)
    else:
        layer = port.to_torch_conv2d(params, case.stride, case.padding, case.dilation)
        back = port.from_torch_conv2d(layer)
    name = type(layer).__name__
    assert (layer.stride, layer.padding, layer.dilation) == (as_pair("stride", case.stride, 1),
                                                             as_pair("padding", case.padding, 0),
                                                             as_pair("dilation", case.dilation, 1)), name
    assert_same_params(back, params, f"from_torch of {name}")
    expected_out, expected_grads = scratch_conv(case, transposed)
    out, dx, dw, db = torch_layer_run(layer, case)
    assert_close(out, expected_out, impl=f"torch.nn.{name}", what="out")
    for what, got, want in zip(("dx", "dw", "db"), (dx, dw, db), expected_grads):
        assert (got is None) == (want is None), f"torch.nn.{name}: {what} is {got}, scratch's is {want}"
        if want is not None:
            assert_close(got, want, impl=f"torch.nn.{name}", what=what)


@pytest.mark.parametrize("transposed", [False, True], ids=["Conv2d", "ConvTranspose2d"])
def test_torch_layer_converts_to_scratch_and_back(transposed):
    """The other direction: a layer torch initialised itself → scratch params → a layer with the same tensors."""
    port = require("torch", "conv")
    import torch

    torch.manual_seed(0)
    kind = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    extra = dict(output_padding=(1, 0)) if transposed else {}
    for bias in (True, False):
        layer = kind(3, 5, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2), bias=bias, dtype=torch.float64, **extra)
        params = (port.from_torch_conv_transpose2d if transposed else port.from_torch_conv2d)(layer)
        assert sorted(params) == (["b", "w"] if bias else ["w"])
        if transposed:
            again = port.to_torch_conv_transpose2d(params, layer.stride, layer.padding, layer.output_padding, layer.dilation)
        else:
            again = port.to_torch_conv2d(params, layer.stride, layer.padding, layer.dilation)
        assert str(again) == str(layer), f"{again} is not {layer}"
        for (name, a), (_, b) in zip(again.named_parameters(), layer.named_parameters()):
            assert torch.equal(a, b), f"{kind.__name__}: {name} changed in the round trip"


def test_torch_conv_converters_reject_what_scratch_does_not_compute():
    port = require("torch", "conv")
    import torch

    for layer in (torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.Conv2d(2, 2, 3, padding_mode="reflect"),
                  torch.nn.Conv2d(2, 2, 3, padding="same")):
        with pytest.raises(ValueError, match="groups=1, padding_mode='zeros'"):
            port.from_torch_conv2d(layer)


# ----------------------------------------------------------------------------------------------
# PyTorch: nn.BatchNorm2d in training and in evaluation, and its running statistics
# ----------------------------------------------------------------------------------------------


@given(case=batch_norm_cases(np.float64, image=True))
def test_torch_batch_norm2d_matches_scratch_after_conversion(case):
    port = require("torch", "layers")
    import torch

    params = {"gamma": case.gamma, "beta": case.beta, "running_mean": case.running_mean, "running_var": case.running_var}
    layer = port.to_torch_batch_norm(params)  # momentum 0.1, eps 1e-5: torch's defaults and scratch's
    assert (layer.momentum, layer.eps) == (0.1, 1e-5)
    assert_same_params(port.from_torch_batch_norm(layer), params, "from_torch_batch_norm")
    # training: the batch's statistics, and the buffers updated in place
    x = torch.tensor(case.x, requires_grad=True)
    out = layer.train()(x)
    dx, dgamma, dbeta = torch.autograd.grad(out, (x, layer.weight, layer.bias), torch.from_numpy(case.dout))
    expected, cache = L.batch_norm_forward(case.x, case.gamma, case.beta)
    assert_close(out.detach().numpy(), expected, impl="torch.nn.BatchNorm2d", what="training out")
    for what, got, want in zip(("dx", "dgamma", "dbeta"), (dx, dgamma, dbeta), L.batch_norm_backward(case.dout, cache)):
        assert_close(got.numpy(), want, impl="torch.nn.BatchNorm2d", what=what)
    running_mean, running_var = L.batch_norm_update_running(case.running_mean, case.running_var, cache)
    assert_close(layer.running_mean.numpy(), running_mean, impl="torch.nn.BatchNorm2d", what="running_mean")
    assert_close(layer.running_var.numpy(), running_var, impl="torch.nn.BatchNorm2d", what="running_var (unbiased)")
    # evaluation: the running statistics
    with torch.no_grad():
        eval_out = layer.eval()(torch.from_numpy(case.x)).numpy()
    assert_close(eval_out, L.batch_norm_eval(case.x, case.gamma, case.beta, running_mean, running_var),
                 impl="torch.nn.BatchNorm2d", what="eval out")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_torch_batch_norm2d_running_statistics_after_several_steps(dtype):
    """Six training steps on batches of different sizes (N = 2 … 12 values per channel, where the
    unbiased correction N / (N − 1) differs most), then evaluation."""
    port = require("torch", "layers")
    import torch

    rng = np.random.default_rng(3)
    c = 3
    gamma, beta = rng.uniform(0.5, 1.5, c).astype(dtype), rng.uniform(-0.5, 0.5, c).astype(dtype)
    layer = port.to_torch_batch_norm({"gamma": gamma, "beta": beta}).train()
    running_mean, running_var = np.zeros(c, dtype), np.ones(c, dtype)  # torch's initial buffers
    for step, shape in enumerate([(2, c, 1, 1), (1, c, 2, 3), (3, c, 2, 2), (2, c, 1, 2), (1, c, 3, 1), (4, c, 1, 3)]):
        x = (rng.standard_normal(shape) * 1.5 + 2.0).astype(dtype)
        with torch.no_grad():
            out = layer(torch.from_numpy(x)).numpy()
        expected, cache = L.batch_norm_forward(x, gamma, beta)
        assert_close(out, expected, impl="torch.nn.BatchNorm2d", what=f"training out at step {step + 1}")
        running_mean, running_var = L.batch_norm_update_running(running_mean, running_var, cache)
        assert_close(layer.running_mean.numpy(), running_mean, impl="torch.nn.BatchNorm2d", what=f"running_mean after step {step + 1}")
        assert_close(layer.running_var.numpy(), running_var, impl="torch.nn.BatchNorm2d", what=f"running_var after step {step + 1}")
    assert int(layer.num_batches_tracked) == 6
    x = rng.standard_normal((2, c, 2, 2)).astype(dtype)
    with torch.no_grad():
        eval_out = layer.eval()(torch.from_numpy(x)).numpy()
    assert eval_out.dtype == np.dtype(dtype)
    assert_close(eval_out, L.batch_norm_eval(x, gamma, beta, running_mean, running_var), impl="torch.nn.BatchNorm2d",
                 what="eval out after six steps")


def test_torch_batch_norm2d_converts_to_scratch_and_back():
    """A layer torch trained one step itself → scratch arrays → a layer with the same tensors and outputs."""
    port = require("torch", "layers")
    import torch

    layer = torch.nn.BatchNorm2d(3, dtype=torch.float64).train()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-0.5, 0.5)
        layer(torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2.0 + 1.0)
    arrays = port.from_torch_batch_norm(layer)
    assert sorted(arrays) == ["beta", "gamma", "running_mean", "running_var"]
    again = port.to_torch_batch_norm(arrays, momentum=layer.momentum, eps=layer.eps)
    for name, tensor in layer.state_dict().items():
        if name != "num_batches_tracked":
            assert torch.equal(again.state_dict()[name], tensor), f"nn.BatchNorm2d: {name} changed in the round trip"
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), layer.eval()(x)), "nn.BatchNorm2d: evaluation changed in the round trip"


# ----------------------------------------------------------------------------------------------
# Keras: Conv2D, Conv2DTranspose (channels last), in float64
# ----------------------------------------------------------------------------------------------


def keras_layer_run(net, case):
    """(out, dx, dkernel, dbias) of a Keras layer or Sequential, NCHW outside, NHWC inside.

    The gradients come from TensorFlow's tape directly (this is a check of Keras's layer, not a
    port), with respect to the input and the layer's own kernel and bias variables.
    """
    import tensorflow as tf

    inner = net if not hasattr(net, "layers") else next(l for l in net.layers if hasattr(l, "kernel"))
    variables = [inner.kernel] + ([inner.bias] if inner.use_bias else [])
    x = tf.constant(case.x.transpose(0, 2, 3, 1))  # (B, H, W, C_in)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = net(x)  # (B, Ho, Wo, C_out)
    dx, *dvars = tape.gradient(out, [x] + variables, output_gradients=tf.constant(case.dout.transpose(0, 2, 3, 1)))
    dkernel = dvars[0].numpy().transpose(3, 2, 0, 1)  # (kh, kw, I, O) → scratch's order
    db = dvars[1].numpy() if inner.use_bias else None
    return out.numpy().transpose(0, 3, 1, 2), dx.numpy().transpose(0, 3, 1, 2), dkernel, db


def assert_layer_matches(impl, got, expected_out, expected_grads):
    out, *grads = got
    assert_close(out, expected_out, impl=impl, what="out")
    for what, g, want in zip(("dx", "dw", "db"), grads, expected_grads):
        assert (g is None) == (want is None), f"{impl}: {what} is {g}, scratch's is {want}"
        if want is not None:
            assert_close(g, want, impl=impl, what=what)


def strided_and_dilated(case):
    stride, dilation = as_pair("stride", case.stride, 1), as_pair("dilation", case.dilation, 1)
    return max(stride) > 1 and max(dilation) > 1


@fewer
@given(case=conv_cases(np.float64))
def test_keras_conv2d_matches_scratch_after_conversion(case):
    """Keras refuses strides > 1 together with dilation_rate > 1 (checked below); every other case."""
    port = require("keras", "conv")
    assume(not strided_and_dilated(case))
    net = port.to_keras_conv2d(params_of(case), case.stride, case.padding, case.dilation)
    assert_same_params(port.from_keras_conv2d(net), params_of(case), "from_keras_conv2d")
    assert_layer_matches("keras.layers.Conv2D", keras_layer_run(net, case), *scratch_conv(case, transposed=False))


@fewer
@given(case=conv_cases(np.float64, transposed=True))
def test_keras_conv2d_transpose_matches_scratch_after_conversion(case):
    """Without dilation: TensorFlow's CPU kernel cannot run a dilated Conv2DTranspose (pinned below).
    At dilation 1, Keras's rule output_padding < stride is PyTorch's output_padding < max(stride, dilation)."""
    port = require("keras", "conv")
    assume(as_pair("dilation", case.dilation, 1) == (1, 1))
    net = port.to_keras_conv_transpose2d(params_of(case), case.stride, case.padding, case.output_padding)
    assert_same_params(port.from_keras_conv_transpose2d(net), params_of(case), "from_keras_conv_transpose2d")
    assert_layer_matches("keras.layers.Conv2DTranspose", keras_layer_run(net, case), *scratch_conv(case, transposed=True))


@pytest.mark.parametrize("transposed", [False, True], ids=["Conv2D", "Conv2DTranspose"])
def test_keras_layer_converts_to_scratch_and_back(transposed):
    """A layer Keras initialised itself → scratch params → a layer with the same kernel and bias."""
    port = require("keras", "conv")
    import keras

    for bias in (True, False):
        kind = keras.layers.Conv2DTranspose if transposed else keras.layers.Conv2D
        layer = kind(5, (2, 3), strides=(2, 1), use_bias=bias, dtype="float64")
        layer.build((None, 6, 7, 3))
        params = (port.from_keras_conv_transpose2d if transposed else port.from_keras_conv2d)(layer)
        assert sorted(params) == (["b", "w"] if bias else ["w"])
        assert params["w"].shape == ((3, 5, 2, 3) if transposed else (5, 3, 2, 3)), params["w"].shape
        again = (port.to_keras_conv_transpose2d if transposed else port.to_keras_conv2d)(params, stride=(2, 1))
        for a, b in zip(again.weights, layer.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{kind.__name__}: {b.name} changed in the round trip")


def test_keras_conv2d_refuses_stride_with_dilation_and_the_port_does_not():
    """Keras's own limit, passed on by the converter; the port (a dilated kernel) computes the case."""
    port = require("keras", "conv")
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((1, 2, 7, 7)), rng.standard_normal((3, 2, 2, 2)), rng.standard_normal(3)
    with pytest.raises(ValueError, match="strides > 1.*dilation_rate > 1"):
        port.to_keras_conv2d({"w": w, "b": b}, stride=2, dilation=2)
    assert_close(port.conv2d_forward(x, w, b, 2, 0, 2)[0], C.conv2d_forward(x, w, b, 2, 0, 2)[0], impl="keras", what="out")


def test_keras_valid_transpose_without_output_padding_is_longer_than_pytorchs():
    """Keras's "valid" conv_transpose length is H·s + max(k − s, 0) when output_padding is None:
    for a stride larger than the kernel, s − k cells more than PyTorch's (H − 1)·s + k. The port
    and the converter pass output_padding explicitly, where Keras uses (H − 1)·s + k + output_padding."""
    require("keras", "conv")
    from keras import ops

    x, k = np.ones((1, 2, 2, 1)), np.ones((2, 2, 1, 1))  # H = 2, kernel 2, stride 3
    assert ops.conv_transpose(x, k, strides=3, padding="valid").shape == (1, 6, 6, 1)
    assert ops.conv_transpose(x, k, strides=3, padding="valid", output_padding=0).shape == (1, 5, 5, 1)
    assert C.conv_transpose2d_forward(x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1), None, 3)[0].shape == (1, 1, 5, 5)


# ----------------------------------------------------------------------------------------------
# Keras: BatchNormalization, and the two conventions it does not share with PyTorch
# ----------------------------------------------------------------------------------------------


@fewer
@given(case=batch_norm_cases(np.float64, image=True))
def test_keras_batch_normalization_trains_like_scratch_except_the_moving_variance(case):
    """Training output and gradients equal scratch's; the moving mean follows PyTorch's rule at
    Keras momentum 1 − m; the moving variance averages the *biased* batch variance, so it falls
    short of scratch's (PyTorch's) running_var by exactly m · σ² / (N − 1) after one step."""
    port = require("keras", "layers")
    import tensorflow as tf

    params = {"gamma": case.gamma, "beta": case.beta, "running_mean": case.running_mean, "running_var": case.running_var}
    layer = port.to_keras_batch_norm(params)  # PyTorch's momentum 0.1 → Keras's 0.9; epsilon 1e-5, not Keras's 1e-3
    assert (layer.momentum, layer.epsilon, layer.axis) == (0.9, 1e-5, -1)
    assert_same_params(port.from_keras_batch_norm(layer), params, "from_keras_batch_norm")
    x = tf.constant(case.x.transpose(0, 2, 3, 1))  # (B, H, W, C): channels last
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, training=True)
    dx, dgamma, dbeta = tape.gradient(out, [x, layer.gamma, layer.beta], output_gradients=tf.constant(case.dout.transpose(0, 2, 3, 1)))
    expected, cache = L.batch_norm_forward(case.x, case.gamma, case.beta)
    impl = "keras.layers.BatchNormalization"
    assert_close(out.numpy().transpose(0, 3, 1, 2), expected, impl=impl, what="training out")
    for what, got, want in zip(("dx", "dgamma", "dbeta"), (dx.numpy().transpose(0, 3, 1, 2), dgamma.numpy(), dbeta.numpy()),
                               L.batch_norm_backward(case.dout, cache)):
        assert_close(got, want, impl=impl, what=what)
    moved = port.from_keras_batch_norm(layer)
    m = 0.1
    running_mean, running_var = L.batch_norm_update_running(case.running_mean, case.running_var, cache, momentum=m)
    assert_close(moved["running_mean"], running_mean, impl=impl, what="moving_mean (PyTorch's rule at momentum 1 − m)")
    biased = (1 - m) * case.running_var + m * cache.var  # Keras's rule: the batch variance divided by N
    assert_close(moved["running_var"], biased, impl=impl, what="moving_variance (the biased batch variance)")
    assert_close(running_var - moved["running_var"], m * cache.var / (cache.count - 1), impl=impl,
                 what="scratch's running_var − Keras's moving_variance")
    # evaluation uses the moving statistics the layer has
    eval_out = layer(case.x.transpose(0, 2, 3, 1), training=False).numpy().transpose(0, 3, 1, 2)
    assert_close(eval_out, L.batch_norm_eval(case.x, case.gamma, case.beta, moved["running_mean"], moved["running_var"]),
                 impl=impl, what="eval out")


def test_keras_momentum_is_pytorchs_the_other_way_round():
    """Keras's default momentum 0.99 keeps 99% of the old average: PyTorch's momentum 0.01 (not 0.1,
    torch's default, which is Keras's 0.9). Measured on one step from moving mean 0 and variance 1."""
    port = require("keras", "layers")
    import keras

    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 2)) * 3.0 + 4.0  # (B, C)
    _, cache = L.batch_norm_forward(x, np.ones(2), np.zeros(2))
    default = keras.layers.BatchNormalization(dtype="float64")
    assert (default.momentum, default.epsilon) == (0.99, 1e-3)
    default(x, training=True)
    as_torch_001, _ = L.batch_norm_update_running(np.zeros(2), np.ones(2), cache, momentum=0.01)
    as_torch_01, _ = L.batch_norm_update_running(np.zeros(2), np.ones(2), cache, momentum=0.1)
    moved = port.from_keras_batch_norm(default)
    assert_close(moved["running_mean"], as_torch_001, impl="keras.layers.BatchNormalization()", what="moving_mean at 0.99")
    assert not np.allclose(moved["running_mean"], as_torch_01), "Keras's 0.99 behaved as PyTorch's 0.1"
    # and Keras's moving variance after that step: 0.99 · 1 + 0.01 · σ²_biased, not σ²_unbiased
    assert_close(moved["running_var"], 0.99 + 0.01 * cache.var, impl="keras.layers.BatchNormalization()",
                 what="moving_variance at 0.99 (biased)")


def test_keras_batch_normalization_running_statistics_after_several_steps():
    """Five steps: Keras's moving mean tracks scratch's running mean, its moving variance the biased
    recurrence, and the gap to scratch's unbiased running_var stays, step after step."""
    port = require("keras", "layers")
    rng = np.random.default_rng(6)
    c, m = 2, 0.1
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c)
    layer = port.to_keras_batch_norm({"gamma": gamma, "beta": beta}, momentum=m)
    running_mean, running_var, biased = np.zeros(c), np.ones(c), np.ones(c)
    for step, shape in enumerate([(2, c, 1, 1), (1, c, 2, 2), (3, c, 1, 2), (2, c, 2, 1), (1, c, 1, 3)]):
        x = rng.standard_normal(shape) * 2.0 + 1.0
        layer(x.transpose(0, 2, 3, 1), training=True)
        _, cache = L.batch_norm_forward(x, gamma, beta)
        running_mean, running_var = L.batch_norm_update_running(running_mean, running_var, cache, momentum=m)
        biased = (1 - m) * biased + m * cache.var
        moved = port.from_keras_batch_norm(layer)
        impl, when = "keras.layers.BatchNormalization", f"after step {step + 1}"
        assert_close(moved["running_mean"], running_mean, impl=impl, what=f"moving_mean {when}")
        assert_close(moved["running_var"], biased, impl=impl, what=f"moving_variance {when}")
        assert np.all(moved["running_var"] < running_var), f"{impl}: moving_variance {when} is not below scratch's"


def test_keras_batch_normalization_converts_to_scratch_and_back():
    """A layer Keras trained one step itself → scratch arrays → a layer with the same weights, outputs
    and momentum (Keras's 0.9 is PyTorch's 0.1, the argument to_keras_batch_norm takes)."""
    port = require("keras", "layers")
    import keras

    layer = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype="float64")
    rng = np.random.default_rng(7)
    layer(rng.standard_normal((2, 2, 2, 3)) * 2.0 + 1.0, training=True)
    arrays = port.from_keras_batch_norm(layer)
    assert sorted(arrays) == ["beta", "gamma", "running_mean", "running_var"]
    again = port.to_keras_batch_norm(arrays, momentum=1.0 - layer.momentum, eps=layer.epsilon)
    assert again.momentum == layer.momentum
    for a, b in zip(again.weights, layer.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"BatchNormalization: {b.name} changed in the round trip")
    x = rng.standard_normal((1, 2, 2, 3))
    np.testing.assert_array_equal(np.asarray(again(x, training=False)), np.asarray(layer(x, training=False)))


# ----------------------------------------------------------------------------------------------
# What TensorFlow's CPU kernels cannot do, and why the TF and Keras ports dilate the kernel
# ----------------------------------------------------------------------------------------------


def _tensorflow_on_cpu():
    require("tensorflow", "conv")
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: these pins are about TensorFlow's CPU kernels")
    return tf


def test_tensorflow_cpu_has_no_gradient_for_a_dilated_conv2d():
    """tf.nn.conv2d runs dilated forward on the CPU, but its input gradient (Conv2DBackpropInput) refuses."""
    tf = _tensorflow_on_cpu()
    x, k = tf.ones((1, 5, 5, 1), tf.float64), tf.ones((2, 2, 1, 1), tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.nn.conv2d(x, k, strides=1, padding="VALID", dilations=2)
    assert out.shape == (1, 3, 3, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="do not yet support dilation rates larger than 1"):
        tape.gradient(out, x)


def test_tensorflow_cpu_cannot_run_a_dilated_conv2d_transpose():
    tf = _tensorflow_on_cpu()
    x, k = tf.ones((1, 3, 3, 1), tf.float64), tf.ones((2, 2, 1, 1), tf.float64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="do not yet support dilation rates larger than 1"):
        tf.nn.conv2d_transpose(x, k, output_shape=[1, 5, 5, 1], strides=1, padding="VALID", dilations=2)


@pytest.mark.parametrize("impl", ["tensorflow", "keras"])
def test_the_dilated_kernel_is_the_kernel_with_zeros_between_its_taps(impl):
    """The ports' workaround, checked on its own: tap (u, v) at (d_h·u, d_w·v), zeros elsewhere."""
    port = require(impl, "conv")
    k = np.arange(1.0, 1.0 + 2 * 3 * 2 * 1).reshape(2, 3, 2, 1)  # (kh, kw, I, O)
    dilated = np.asarray(port._dilate_kernel(k, (3, 2)))
    expected = np.zeros((4, 5, 2, 1))
    expected[::3, ::2] = k
    np.testing.assert_array_equal(dilated, expected)
    np.testing.assert_array_equal(np.asarray(port._dilate_kernel(k, (1, 1))), k)
