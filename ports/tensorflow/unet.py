"""The digit U-Net in TensorFlow 2: scratch/unet.py's network as a `tf.Module`, the backward by tf.GradientTape.

Read it beside scratch/unet.py, whose docstring draws the network: the same blocks in the same
order, written with tf ops (tf.nn.conv2d, tf.nn.silu, tf.gather for the word table, tf.repeat for
the nearest-neighbour upsampling; group norm by hand, as scratch writes it). As ports/tensorflow/
diffusion.py's MLPDenoiser, the module holds one tf.Variable per scratch parameter in scratch's
layout, so `to_tf_unet` / `from_tf_unet` copy and transpose nothing; `unet_forward` / `unet_backward`
keep scratch's interface (a scratch-layout parameter dict in, NumPy out; the tape's vector-Jacobian
product in place of the hand-written backward).

The layouts (ports/tensorflow/conv.py explains them): TensorFlow's CPU convolution takes channels-
last images only, NHWC. The network's input and output are scratch's NCHW, (B, 1, H, W); inside,
every feature map is NHWC, so x_t is transposed once on the way in and ε̂ once on the way out, not
around every convolution. Each convolution's weight, (C_out, C_in, kh, kw) as scratch and PyTorch
store it, becomes tf.nn.conv2d's HWIO (kh, kw, C_in, C_out) by transpose(2, 3, 1, 0) inside the
forward (the tape carries its gradient back to the scratch layout). Padding is PyTorch's p zeros on
every side (tf.pad, then "VALID"): TensorFlow's "SAME" at stride 2 would pad the bottom and right only.

Shape letters as in scratch: B batch, C channels (c1, c2, c3), H W the image, G groups of group
norm, E the embedding width, S the sinusoid width of the time embedding.
"""

import numpy as np
import tensorflow as tf

from ports.tensorflow.attention import _watched
from ports.tensorflow.diffusion import _time_embedding
from scratch.diffusion import Denoiser
from scratch.unet import NULL, UNetConfig, check_config, check_params, check_unet_inputs, init_unet, parameter_shapes

__all__ = ["UNetConfig", "parameter_shapes", "init_unet", "UNet", "to_tf_unet", "from_tf_unet", "unet_forward",
           "unet_backward", "UNET_DENOISER"]


# ----------------------------------------------------------------------------------------------
# The ops, on NHWC tensors
# ----------------------------------------------------------------------------------------------


def _conv(x, w, b, stride=1, padding=0):
    """scratch's conv2d on channels-last maps: x (B, H, W, C_in), w (C_out, C_in, kh, kw), b (C_out,) → (B, Ho, Wo, C_out)."""
    k = tf.transpose(w, (2, 3, 1, 0))  # (C_out, C_in, kh, kw) → HWIO (kh, kw, C_in, C_out)
    x = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])  # PyTorch's zeros on every side
    # Ho = ⌊(H + 2p − kh) / s⌋ + 1: "VALID" on the padded input
    return tf.nn.conv2d(x, k, strides=[1, stride, stride, 1], padding="VALID") + b  # (B, Ho, Wo, C_out)


def _group_norm(x, gamma, beta, groups, eps=1e-5):
    """y = γ · (x − μ) / √(σ² + ε) + β, μ and σ² per image over each group of C/G channels and all pixels."""
    _, h, w, c = x.shape  # B may be unknown inside a tf.function: -1 below
    xg = tf.reshape(x, (-1, h, w, groups, c // groups))  # (B, H, W, G, C/G): channels-last, so the group is axis 3
    # Eq. (1), Wu and He 2018: μ_i = (1/m) Σ_{k ∈ S_i} x_k,  σ_i² = (1/m) Σ_{k ∈ S_i} (x_k − μ_i)²,  S_i one image's group
    mean = tf.reduce_mean(xg, axis=(1, 2, 4), keepdims=True)  # (B, 1, 1, G, 1)
    centred = xg - mean  # (B, H, W, G, C/G)
    var = tf.reduce_mean(centred * centred, axis=(1, 2, 4), keepdims=True)  # (B, 1, 1, G, 1), the biased variance
    x_hat = centred * (1.0 / tf.sqrt(var + eps))  # (B, H, W, G, C/G)
    # y = γ x̂ + β, one γ and β per channel
    return tf.reshape(x_hat, (-1, h, w, c)) * gamma + beta  # (B, H, W, C)


def _upsample(x):
    """Nearest-neighbour 2× upsampling: out[b, i, j, c] = x[b, ⌊i/2⌋, ⌊j/2⌋, c], (B, H, W, C) → (B, 2H, 2W, C)."""
    return tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)


def _res_block(x, e_act, params, name, groups):
    """res(x, e) of scratch/unet.py's docstring: x (B, H, W, C_in), e_act = SiLU(e) (B, E) → (B, H, W, C_out)."""
    p = f"unet.{name}"
    h = tf.nn.silu(_group_norm(x, params[f"{p}.norm1.gamma"], params[f"{p}.norm1.beta"], groups))  # (B, H, W, C_in)
    h = _conv(h, params[f"{p}.conv1.w"], params[f"{p}.conv1.b"], padding=1)  # (B, H, W, C_out)
    # the embedding enters as one shift per channel: h + (W_e SiLU(e) + b_e)[:, None, None, :]
    shift = tf.matmul(e_act, params[f"{p}.emb.W"]) + params[f"{p}.emb.b"]  # (B, C_out)
    h = h + shift[:, None, None, :]  # (B, H, W, C_out)
    h = tf.nn.silu(_group_norm(h, params[f"{p}.norm2.gamma"], params[f"{p}.norm2.beta"], groups))  # (B, H, W, C_out)
    h = _conv(h, params[f"{p}.conv2.w"], params[f"{p}.conv2.b"], padding=1)  # (B, H, W, C_out)
    if f"{p}.skip.w" in params:  # a 1×1 convolution matches the channels of the residual path
        return h + _conv(x, params[f"{p}.skip.w"], params[f"{p}.skip.b"])  # (B, H, W, C_out)
    return h + x  # (B, H, W, C_out)


def _unet(x_t, t, cond, params, config):
    """ε̂(x_t, t, word): x_t (B, 1, H, W), t and cond (B,) int64, params name → tensor (scratch layout) → (B, 1, H, W)."""
    g = config.groups
    # the embedding: e = W₂ SiLU(W₁ PE(t) + b₁) + b₂ + table[word]
    pe = _time_embedding(t, config.time_dim, x_t.dtype)  # (B, S)
    e = tf.nn.silu(tf.matmul(pe, params["unet.time.W1"]) + params["unet.time.b1"])  # (B, E)
    e = tf.matmul(e, params["unet.time.W2"]) + params["unet.time.b2"]  # (B, E)
    e = e + tf.gather(params["unet.word.table"], cond)  # (B, E), the word's row (row NULL for ∅)
    e_act = tf.nn.silu(e)  # (B, E), what every block projects
    x = tf.transpose(x_t, (0, 2, 3, 1))  # (B, 1, H, W) → (B, H, W, 1): channels last from here on
    # down: 28×28 → 14×14 → 7×7; 3×3, stride 2, padding 1: o = ⌊(i + 2 − 3) / 2⌋ + 1 = i / 2 for even i
    h0 = _conv(x, params["unet.conv_in.w"], params["unet.conv_in.b"], padding=1)  # (B, H, W, c1)
    h = _conv(h0, params["unet.down1.w"], params["unet.down1.b"], stride=2, padding=1)  # (B, H/2, W/2, c2)
    skip = _res_block(h, e_act, params, "enc", g)  # (B, H/2, W/2, c2)
    h = _conv(skip, params["unet.down2.w"], params["unet.down2.b"], stride=2, padding=1)  # (B, H/4, W/4, c3)
    h = _res_block(h, e_act, params, "mid", g)  # (B, H/4, W/4, c3)
    # up: the upsampled maps beside the skip of the same resolution (⊕, the channels are the last axis), then + h0
    h = _upsample(h)  # (B, H/2, W/2, c3)
    h = _res_block(tf.concat([h, skip], axis=3), e_act, params, "dec", g)  # (B, H/2, W/2, c2)
    h = _upsample(_conv(h, params["unet.to_full.w"], params["unet.to_full.b"]))  # (B, H, W, c1)
    h = _res_block(h + h0, e_act, params, "full", g)  # (B, H, W, c1)
    h = tf.nn.silu(_group_norm(h, params["unet.norm_out.gamma"], params["unet.norm_out.beta"], g))  # (B, H, W, c1)
    eps = _conv(h, params["unet.conv_out.w"], params["unet.conv_out.b"], padding=1)  # (B, H, W, 1)
    return tf.transpose(eps, (0, 3, 1, 2))  # (B, 1, H, W), scratch's layout again


# ----------------------------------------------------------------------------------------------
# The U-Net as a tf.Module: one tf.Variable per scratch parameter
# ----------------------------------------------------------------------------------------------


class UNet(tf.Module):
    """ε̂(x_t, t, word), its weights `params` (name → tf.Variable) in the scratch layout.

    Built from a scratch parameter dict (`to_tf_unet`): the very numbers scratch starts from.
    """

    def __init__(self, params, config, name="unet"):
        super().__init__(name=name)
        check_config(config)
        self.config = config
        # tf.Module tracks the dict, so these are its variables
        self.params = {key: tf.Variable(params[key], name=key.replace(".", "_")) for key in parameter_shapes(config)}

    def __call__(self, x_t, t, cond=None):
        """x_t (B, 1, H, W), t (B,) int64, cond (B,) int64 word ids (None: every row ∅) → ε̂ (B, 1, H, W)."""
        if cond is None:
            cond = tf.fill(tf.shape(t), tf.constant(NULL, tf.int64))  # (B,), the null token's row
        return _unet(x_t, t, cond, self.params, self.config)


def to_tf_unet(params, config):
    """A UNet tf.Module holding copies of `params` (same names, shapes and dtype)."""
    check_params(params, config)
    return UNet({name: np.array(value) for name, value in params.items()}, config)


def from_tf_unet(module):
    """The scratch parameter dict of a UNet tf.Module (the inverse of to_tf_unet), in parameter_shapes' order."""
    return {name: module.params[name].numpy().copy() for name in parameter_shapes(module.config)}


# ----------------------------------------------------------------------------------------------
# scratch's interface: NumPy in, NumPy out
# ----------------------------------------------------------------------------------------------


def unet_forward(params, x_t, t, config, cond=None):
    """scratch's unet_forward: (ε̂ (B, 1, H, W), cache), recorded by a GradientTape watching every parameter."""
    x_t, t, cond = check_unet_inputs(params, x_t, t, config, cond)  # scratch's errors; cond None → all NULL
    names = list(parameter_shapes(config))
    with tf.GradientTape() as tape:
        inputs = tuple(_watched(tape, np.asarray(params[name])) for name in names)
        eps = _unet(tf.constant(x_t), tf.constant(t.astype(np.int64)), tf.constant(cond.astype(np.int64)),
                    dict(zip(names, inputs)), config)  # (B, 1, H, W)
    return eps.numpy(), (tape, inputs, eps, names)


def unet_backward(d_eps, cache):
    """The gradients of every parameter, in the scratch layout, for d_eps = ∂loss/∂ε̂ (B, 1, H, W)."""
    tape, inputs, eps, names = cache
    d_eps = np.asarray(d_eps)
    if d_eps.shape != tuple(eps.shape):
        raise ValueError(f"d_eps must have shape {tuple(eps.shape)}, got shape {d_eps.shape}")
    grads = tape.gradient(eps, inputs, output_gradients=tf.constant(d_eps, dtype=eps.dtype))
    # tf.gather's gradient is sparse (tf.IndexedSlices, one row per image): made dense, rows of one word summed
    return {name: np.zeros(x.shape, x.dtype.as_numpy_dtype) if g is None else tf.convert_to_tensor(g).numpy()
            for name, x, g in zip(names, inputs, grads)}


UNET_DENOISER = Denoiser(init_unet, unet_forward, unet_backward, parameter_shapes)  # scratch/diffusion.py's interface
