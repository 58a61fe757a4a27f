"""The digit U-Net in Keras 3: scratch/unet.py's network as a `keras.Model` of Keras layers, the backward by autodiff.

Read it beside scratch/unet.py, whose docstring draws the network: the same blocks in the same
order, built from Keras's own layers (Conv2D, GroupNormalization, Dense, Embedding, UpSampling2D,
Permute). `unet_forward` / `unet_backward` keep scratch's interface (a scratch-layout parameter
dict in, NumPy out): the forward is the model's `stateless_call` on the scratch arrays moved into
Keras's layout, recorded by ports/keras/autodiff.py's `record`, so `gradients` hands back every
parameter's gradient already in scratch's layout. `to_keras_unet` / `from_keras_unet` move weights
between the scratch layout and the model. Keras's conventions are not scratch's, and each is
translated here:

- Images are channels last (NHWC; TensorFlow's CPU convolutions refuse NCHW, ports/keras/conv.py).
  The model takes and returns scratch's (B, 1, H, W) and permutes at both ends (keras.layers.Permute);
  inside, the channels are the last axis, in scratch's order, so ⊕ (concatenation) and group norm's
  groups of C/G neighbouring channels are the same channels as in scratch.
- Convolution kernels: Conv2D holds (kh, kw, C_in, C_out), scratch (C_out, C_in, kh, kw):
  transpose(2, 3, 1, 0) there, transpose(3, 2, 0, 1) back. Dense kernels are (in, out), as scratch's W.
- Padding: a 3×3, stride-1 convolution with padding="same" pads one zero on every side, scratch's
  padding 1. With stride 2, "same" would pad an even image only after (TensorFlow puts the odd zero
  at the end and needs just one), so the stride-2 convolutions are ZeroPadding2D(1) then "valid".
- Group norm: keras.layers.GroupNormalization(G, epsilon=1e-5), scratch's ε (Keras's default is 1e-3).
  Keras computes σ² as E[x²] − μ², scratch as E[(x − μ)²]: the same in exact arithmetic, a rounding
  apart in floating point.
- The word table is an Embedding of NULL + 1 = 11 rows: the ten digit words and the null token ∅.

Shape letters as in scratch: B batch, C channels (c1, c2, c3), H W the image, E the embedding width,
S the sinusoid width of the time embedding.
"""

import keras
import numpy as np
from keras import ops

from ports.keras.autodiff import gradients, record
from ports.keras.diffusion import DenoisingDiffusion, _f64, _q_sample, _silu, _time_embedding
from scratch.diffusion import Denoiser
from scratch.unet import (NULL, UNetConfig, block_channels, check_config, check_params, check_unet_inputs, init_unet,
                         parameter_shapes)

__all__ = ["UNetConfig", "parameter_shapes", "init_unet", "ResBlock", "UNet", "GuidedDenoisingDiffusion",
           "parameter_map", "to_keras_layout", "to_scratch_layout", "to_keras_unet", "from_keras_unet",
           "unet_forward", "unet_backward", "UNET_DENOISER"]

TO_KERAS_KERNEL, TO_SCRATCH_KERNEL = (2, 3, 1, 0), (3, 2, 0, 1)  # (C_out, C_in, kh, kw) ⇄ (kh, kw, C_in, C_out)


def _is_conv_kernel(name):
    return name.endswith(".w")  # "unet.conv_in.w", "unet.enc.conv1.w", …; the Dense kernels are ".W", (in, out)


def to_keras_layout(name, value):
    """The scratch array `name` in the layout of its Keras variable (a convolution kernel transposed, the rest as is)."""
    return ops.transpose(value, TO_KERAS_KERNEL) if _is_conv_kernel(name) else value


def to_scratch_layout(name, value):
    """A Keras variable's value (NumPy) in the layout of scratch's `name`: the inverse of to_keras_layout."""
    return np.ascontiguousarray(np.transpose(value, TO_SCRATCH_KERNEL)) if _is_conv_kernel(name) else value


# ----------------------------------------------------------------------------------------------
# The layers
# ----------------------------------------------------------------------------------------------


def _conv(c_in, c_out, kernel, dtype, name):
    """A built Conv2D, channels last; 3×3 kernels pad one zero on every side ("same" at stride 1)."""
    layer = keras.layers.Conv2D(c_out, kernel, padding="same", dtype=dtype, name=name)
    layer.build((None, None, None, c_in))
    return layer


def _norm(channels, groups, dtype, name):
    layer = keras.layers.GroupNormalization(groups, axis=-1, epsilon=1e-5, dtype=dtype, name=name)  # scratch's ε
    layer.build((None, None, None, channels))
    return layer


def _dense(d_in, d_out, dtype, name, activation=None):
    layer = keras.layers.Dense(d_out, activation=activation, dtype=dtype, name=name)
    layer.build((None, d_in))
    return layer


class DownConv(keras.layers.Layer):
    """scratch's 3×3, stride-2, padding-1 convolution: ZeroPadding2D(1), then Conv2D "valid" (H → H/2 for even H)."""

    def __init__(self, c_in, c_out, dtype, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.pad = keras.layers.ZeroPadding2D(1, dtype=dtype)
        self.conv = keras.layers.Conv2D(c_out, 3, strides=2, padding="valid", dtype=dtype, name="conv")
        self.conv.build((None, None, None, c_in))
        self.built = True  # every weight exists from here: the converters assign them before any call

    def call(self, x):
        return self.conv(self.pad(x))  # (B, H/2, W/2, C_out)


class ResBlock(keras.layers.Layer):
    """res(x, e) = x' + conv(SiLU(GN(conv(SiLU(GN(x))) + W_e SiLU(e) + b_e))), x' = x or a 1×1 conv of x.

    Called on x (B, H, W, C_in), channels last, and e_act = SiLU(e) (B, E) → (B, H, W, C_out).
    """

    def __init__(self, c_in, c_out, emb_dim, groups, dtype, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.norm1, self.conv1 = _norm(c_in, groups, dtype, "norm1"), _conv(c_in, c_out, 3, dtype, "conv1")
        self.emb = _dense(emb_dim, c_out, dtype, "emb")
        self.norm2, self.conv2 = _norm(c_out, groups, dtype, "norm2"), _conv(c_out, c_out, 3, dtype, "conv2")
        self.skip = _conv(c_in, c_out, 1, dtype, "skip") if c_in != c_out else None
        self.built = True

    def call(self, x, e_act):
        h = self.conv1(_silu(self.norm1(x)))  # (B, H, W, C_out)
        # the embedding enters as one shift per channel: h + (W_e SiLU(e) + b_e)[:, None, None, :]
        h = h + self.emb(e_act)[:, None, None, :]  # (B, H, W, C_out)
        h = self.conv2(_silu(self.norm2(h)))  # (B, H, W, C_out)
        return h + (x if self.skip is None else self.skip(x))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class UNet(keras.Model):
    """ε̂(x_t, t, word): called on (x_t (B, 1, H, W), t (B,) int), cond (B,) word ids (None: every row ∅) → (B, 1, H, W)."""

    def __init__(self, config, dtype="float32", **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        check_config(config)
        self.config = config
        c1, c2, c3 = config.channels
        e, g = config.emb_dim, config.groups
        self.time1 = _dense(config.time_dim, e, dtype, "time1", activation=_silu)  # SiLU(W₁ PE(t) + b₁)
        self.time2 = _dense(e, e, dtype, "time2")
        self.word = keras.layers.Embedding(NULL + 1, e, dtype=dtype, name="word")  # rows 0 … 9 the words, NULL ∅
        self.word.build((None,))
        self.to_channels_last = keras.layers.Permute((2, 3, 1), dtype=dtype)  # (B, C, H, W) → (B, H, W, C)
        self.to_channels_first = keras.layers.Permute((3, 1, 2), dtype=dtype)  # (B, H, W, C) → (B, C, H, W)
        self.conv_in = _conv(1, c1, 3, dtype, "conv_in")
        self.down1, self.down2 = DownConv(c1, c2, dtype, name="down1"), DownConv(c2, c3, dtype, name="down2")
        self.to_full = _conv(c2, c1, 1, dtype, "to_full")
        self.up = keras.layers.UpSampling2D(2, interpolation="nearest", dtype=dtype)  # each pixel a 2×2 block
        self.blocks = {name: ResBlock(c_in, c_out, e, g, dtype, name=name)
                       for name, (c_in, c_out) in block_channels(config).items()}
        self.norm_out, self.conv_out = _norm(c1, g, dtype, "norm_out"), _conv(c1, 1, 3, dtype, "conv_out")
        self.built = True  # every layer above is built: stateless_call and the converters need no first call

    def call(self, inputs, cond=None):
        x_t, t = inputs
        if cond is None:
            cond = ops.full((ops.shape(x_t)[0],), NULL, dtype="int64")
        # e = W₂ SiLU(W₁ PE(t) + b₁) + b₂ + table[word]
        e = self.time2(self.time1(_time_embedding(t, self.config.time_dim, self.dtype))) + self.word(cond)  # (B, E)
        e_act = _silu(e)  # (B, E), what every block projects
        h0 = self.conv_in(self.to_channels_last(x_t))  # (B, H, W, c1)
        skip = self.blocks["enc"](self.down1(h0), e_act)  # (B, H/2, W/2, c2)
        h = self.blocks["mid"](self.down2(skip), e_act)  # (B, H/4, W/4, c3)
        h = self.blocks["dec"](ops.concatenate([self.up(h), skip], axis=-1), e_act)  # (B, H/2, W/2, c2): ⊕ the skip
        h = self.up(self.to_full(h))  # (B, H, W, c1)
        h = self.blocks["full"](h + h0, e_act)  # (B, H, W, c1): + the full-resolution maps
        return self.to_channels_first(self.conv_out(_silu(self.norm_out(h))))  # (B, 1, H, W)


class GuidedDenoisingDiffusion(DenoisingDiffusion):
    """ports/keras/diffusion.py's DenoisingDiffusion for a denoiser with a word: called on (x_0, t, ε, cond), it
    returns ε_θ(q_sample(x_0, t, ε), t, cond); its loss, the mean of (ε̂ − ε)², is DenoisingDiffusion's."""

    def call(self, inputs):
        x0, t, eps, cond = inputs
        x_t = _q_sample(x0, t, eps, _f64(self.alphas_cumprod))  # (B, 1, H, W): no gradient reaches the data
        return self.denoiser((x_t, t), cond=cond)  # (B, 1, H, W)


# ----------------------------------------------------------------------------------------------
# Where the scratch weights live, and scratch's interface
# ----------------------------------------------------------------------------------------------


def parameter_map(model):
    """scratch name → the Keras variable that holds it (to_keras_layout says in which layout)."""
    named = {"unet.time.W1": model.time1.kernel, "unet.time.b1": model.time1.bias,
             "unet.time.W2": model.time2.kernel, "unet.time.b2": model.time2.bias,
             "unet.word.table": model.word.embeddings}
    convs = {"conv_in": model.conv_in, "down1": model.down1.conv, "down2": model.down2.conv,
             "to_full": model.to_full, "conv_out": model.conv_out}
    for name, layer in convs.items():
        named[f"unet.{name}.w"], named[f"unet.{name}.b"] = layer.kernel, layer.bias
    for name, block in model.blocks.items():
        p = f"unet.{name}"
        for norm in ("norm1", "norm2"):
            layer = getattr(block, norm)
            named[f"{p}.{norm}.gamma"], named[f"{p}.{norm}.beta"] = layer.gamma, layer.beta
        for conv in ("conv1", "conv2") + (("skip",) if block.skip is not None else ()):
            layer = getattr(block, conv)
            named[f"{p}.{conv}.w"], named[f"{p}.{conv}.b"] = layer.kernel, layer.bias
        named[f"{p}.emb.W"], named[f"{p}.emb.b"] = block.emb.kernel, block.emb.bias
    named["unet.norm_out.gamma"], named["unet.norm_out.beta"] = model.norm_out.gamma, model.norm_out.beta
    return named


def to_keras_unet(params, config):
    """A built UNet holding copies of a scratch parameter dict (its dtype is theirs; the convolution kernels transposed)."""
    check_params(params, config)
    model = UNet(config, dtype=np.asarray(params["unet.conv_in.w"]).dtype.name)
    for name, variable in parameter_map(model).items():
        variable.assign(to_keras_layout(name, np.asarray(params[name])))
    return model


def from_keras_unet(model):
    """The scratch parameter dict of a UNet (the inverse of to_keras_unet), in parameter_shapes' order."""
    named = parameter_map(model)
    return {name: np.array(to_scratch_layout(name, named[name].numpy())) for name in parameter_shapes(model.config)}


def unet_forward(params, x_t, t, config, cond=None):
    """scratch's unet_forward: (ε̂ (B, 1, H, W), cache); the model's stateless_call on the scratch arrays, recorded."""
    x_t, t, cond = check_unet_inputs(params, x_t, t, config, cond)
    model = to_keras_unet(params, config)
    names = list(parameter_shapes(config))
    by_variable = {id(variable): name for name, variable in parameter_map(model).items()}
    order = [by_variable[id(variable)] for variable in model.trainable_variables]  # every variable is a parameter
    x_t, t, cond = (ops.convert_to_tensor(a) for a in (x_t, t, cond))

    def forward(*arrays):  # the scratch-layout parameters, in `names` order
        given = dict(zip(names, arrays))
        values = [to_keras_layout(name, given[name]) for name in order]
        return model.stateless_call(values, model.non_trainable_variables, (x_t, t), cond=cond)[0]

    eps_pred, recording = record(forward, *(params[name] for name in names))  # (B, 1, H, W)
    return eps_pred, (recording, names)


def unet_backward(d_eps, cache):
    """The gradients of every parameter, in the scratch layout, for d_eps = ∂loss/∂ε̂ (B, 1, H, W), by autodiff."""
    recording, names = cache
    return dict(zip(names, gradients(d_eps, recording)))


UNET_DENOISER = Denoiser(init_unet, unet_forward, unet_backward, parameter_shapes)  # scratch/diffusion.py's interface
