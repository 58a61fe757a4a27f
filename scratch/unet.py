"""A small U-Net ε-predictor for 28×28 digits, conditioned on a number word, every gradient by hand.

Shape letters, used in the comment at the end of each array line:
    B  batch        C  channels (c1, c2, c3 at the three resolutions)     H W  height, width
    G  groups of group norm      E  embedding width      S  the sinusoid width of the time embedding

The network (Ronneberger et al. 2015's U shape, with Ho et al. 2020's residual blocks), for
images (B, 1, H, W) with H and W divisible by 4 (28 → 14 → 7):

    x_t → conv 3×3 ─────────────────────────────────────────────────── h0 ─┐ (+)
     28×28   └ conv 3×3 stride 2 → res "enc" ───────────── skip ─┐ (⊕)         │
                   14×14              └ conv 3×3 stride 2 → res "mid"          │
                                           7×7          └ up 2× ⊕ skip → res "dec" │
                                                                14×14     └ conv 1×1, up 2× + h0 → res "full"
                                                                                     28×28  → GN, SiLU, conv 3×3 → ε̂

    res(x, e) = x' + conv(SiLU(GN(conv(SiLU(GN(x))) + W_e SiLU(e) + b_e)))   (x' = x, or a 1×1 conv of x)

Most of the work happens at 14×14, where a convolution costs a quarter of what it costs at
28×28. The skip at 14×14 is the U-Net's concatenation (⊕, along the channels); the one at 28×28
is a sum (+, as in LinkNet and FPN): in NumPy a 3×3 convolution of c2 + c1 channels at 28×28
took three times as long as one of c1 (the im2col rows are three times as wide), and at 28×28
that one convolution would have cost as much as the rest of the network.
⊕ is concatenation along the channels; "up 2×" repeats each pixel in a 2×2 block (nearest
neighbour), whose backward sums each 2×2 block of the gradient. Every convolution is
scratch/conv.py's conv2d (PyTorch's NCHW layout, weights (C_out, C_in, kh, kw)).

The embedding e (B, E) carries everything that is not the image: the time step and the word,

    e = W₂ SiLU(W₁ PE(t) + b₁) + b₂ + table[word]

with PE the sinusoidal embedding of scratch/diffusion.py's time_embedding (the Transformer's
positional encoding, at position t); each residual block adds its own projection of SiLU(e)
to its feature maps, one number per channel. table has one row per digit word, "zero" … "nine"
(rows 0 … 9), and a last row, NULL = 10, for the null token ∅: the "no word" that classifier-free
guidance trains on a share of the rows and subtracts at sampling time (Ho and Salimans 2022).

Group norm, not batch norm (Wu and He 2018): each image is normalised over groups of its own
channels, never over the batch. A denoiser with batch norm would predict ε for one image
differently depending on the others in its batch; guidance evaluates the conditional and the
unconditional rows of the same images in one batch, and batch norm would let the two halves
leak into each other (and make guidance scale 0 differ from the unconditional model).

Parameter names: "unet.time.W1", …, "unet.word.table", "unet.conv_in.w", "unet.down1.norm1.gamma",
"unet.down1.conv1.w", "unet.down1.emb.W", …, "unet.conv_out.b" (parameter_shapes lists them all).
"""

from typing import NamedTuple

import numpy as np

from scratch.conv import conv2d_backward, conv2d_forward
from scratch.diffusion import Denoiser, time_embedding
from scratch.layers import linear_backward, linear_forward, silu_backward, silu_forward
from scratch.text import tokenize
from scratch.validate import as_float_array, check_same_dtype

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NULL = len(DIGIT_WORDS)  # 10: the row of the null token ∅ in the word table


class UNetConfig(NamedTuple):
    channels: tuple = (16, 32, 64)  # c1, c2, c3: the channels at full, half and quarter resolution
    emb_dim: int = 64  # E, the width of the time-and-word embedding
    time_dim: int = 32  # S, the width of the sinusoidal time embedding fed to the time MLP
    groups: int = 8  # G, group norm's groups; every block's channels must be divisible by it
    num_steps: int = 1000  # T: t must lie in [0, T)


def block_channels(config):
    """{residual block: (input channels, output channels)}; "dec" takes the upsampled maps ⊕ the skip."""
    c1, c2, c3 = config.channels
    return {"enc": (c2, c2), "mid": (c3, c3), "dec": (c3 + c2, c2), "full": (c1, c1)}


def parameter_shapes(config):
    """{name: shape} of every parameter, in the order of the forward."""
    c1, c2, c3 = config.channels
    e, s = config.emb_dim, config.time_dim
    shapes = {"unet.time.W1": (s, e), "unet.time.b1": (e,), "unet.time.W2": (e, e), "unet.time.b2": (e,),
              "unet.word.table": (NULL + 1, e), "unet.conv_in.w": (c1, 1, 3, 3), "unet.conv_in.b": (c1,),
              "unet.down1.w": (c2, c1, 3, 3), "unet.down1.b": (c2,), "unet.down2.w": (c3, c2, 3, 3),
              "unet.down2.b": (c3,), "unet.to_full.w": (c1, c2, 1, 1), "unet.to_full.b": (c1,)}
    for name, (c_in, c_out) in block_channels(config).items():
        p = f"unet.{name}"
        shapes.update({f"{p}.norm1.gamma": (c_in,), f"{p}.norm1.beta": (c_in,),
                       f"{p}.conv1.w": (c_out, c_in, 3, 3), f"{p}.conv1.b": (c_out,),
                       f"{p}.emb.W": (e, c_out), f"{p}.emb.b": (c_out,),
                       f"{p}.norm2.gamma": (c_out,), f"{p}.norm2.beta": (c_out,),
                       f"{p}.conv2.w": (c_out, c_out, 3, 3), f"{p}.conv2.b": (c_out,)})
        if c_in != c_out:
            shapes.update({f"{p}.skip.w": (c_out, c_in, 1, 1), f"{p}.skip.b": (c_out,)})
    shapes.update({"unet.norm_out.gamma": (c1,), "unet.norm_out.beta": (c1,),
                   "unet.conv_out.w": (1, c1, 3, 3), "unet.conv_out.b": (1,)})
    return shapes


def check_params(params, config):
    """A converter's input: exactly parameter_shapes(config)'s names, each of its shape."""
    expected = parameter_shapes(config)
    if set(params) != set(expected):
        raise ValueError(f"params must have keys {sorted(expected)}, got {sorted(params)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got {np.shape(params[name])}")


def check_config(config):
    if len(config.channels) != 3 or min(config.channels) < 1:
        raise ValueError(f"config.channels must be three positive ints (c1, c2, c3), got {config.channels}")
    widths = sorted({c for pair in block_channels(config).values() for c in pair})
    if any(c % config.groups for c in widths):
        raise ValueError(f"config.groups = {config.groups} must divide every block's channels {widths}")


def init_unet(config, rng, dtype=np.float64):
    """Weights from N(0, 1/fan-in), biases and β zero, γ one, the word table N(0, 1).

    The last convolution of every residual block and of the network start at zero (Ho et al.
    2020's code does the same): each block starts as the identity, the network as ε̂ = 0, and the
    first steps do not have to undo a random output.
    """
    check_config(config)
    params = {}
    for name, shape in parameter_shapes(config).items():
        if name.endswith("gamma"):
            params[name] = np.ones(shape, dtype=dtype)
        elif name.endswith("table"):
            params[name] = rng.standard_normal(shape).astype(dtype)
        elif len(shape) == 1 or name.endswith(("conv2.w", "conv_out.w")):
            params[name] = np.zeros(shape, dtype=dtype)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
            params[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)
    return params


# ----------------------------------------------------------------------------------------------
# Group norm (Wu and He 2018) and nearest-neighbour upsampling: the two ops conv.py and layers.py lack
# ----------------------------------------------------------------------------------------------


class GroupNormCache(NamedTuple):
    x_hat: np.ndarray  # (B, G, C/G, H, W), the normalised input, grouped
    inv_std: np.ndarray  # (B, G, 1, 1, 1), 1 / √(σ² + ε) per image and group
    gamma: np.ndarray  # (C,)


def group_norm_forward(x, gamma, beta, groups, eps=1e-5):
    """y = γ · (x − μ) / √(σ² + ε) + β, μ and σ² per image over each group of C/G channels and all pixels.

    x (B, C, H, W), gamma and beta (C,); as torch.nn.functional.group_norm (biased variance).
    """
    x = as_float_array("x", x)
    if x.ndim != 4 or x.shape[1] % groups or gamma.shape != (x.shape[1],) or beta.shape != (x.shape[1],):
        raise ValueError(f"group norm needs x (B, C, H, W) with C divisible by groups = {groups} and gamma, beta (C,): "
                         f"got x {x.shape}, gamma {gamma.shape}, beta {beta.shape}")
    b, c, h, w = x.shape
    xg = x.reshape(b, groups, c // groups, h, w)  # (B, G, C/G, H, W)
    # Eq. (1), Wu and He 2018: μ_i = (1/m) Σ_{k ∈ S_i} x_k,  σ_i² = (1/m) Σ_{k ∈ S_i} (x_k − μ_i)²,  S_i one image's group
    mean = xg.mean(axis=(2, 3, 4), keepdims=True)  # (B, G, 1, 1, 1)
    centred = xg - mean  # (B, G, C/G, H, W)
    var = np.mean(centred * centred, axis=(2, 3, 4), keepdims=True)  # (B, G, 1, 1, 1)
    inv_std = 1.0 / np.sqrt(var + eps)  # (B, G, 1, 1, 1)
    x_hat = centred * inv_std  # (B, G, C/G, H, W)
    # y = γ x̂ + β, one γ and β per channel
    y = x_hat.reshape(b, c, h, w) * gamma[:, None, None] + beta[:, None, None]  # (B, C, H, W)
    return y, GroupNormCache(x_hat, inv_std, gamma)


def group_norm_backward(dout, cache):
    """Return (dx, dgamma, dbeta): batch norm's backward, with each image's group in place of a channel."""
    x_hat, inv_std, gamma = cache
    b, g, cg, h, w = x_hat.shape
    # y = γ x̂ + β  ⇒  dβ = Σ_{b,h,w} dout,  dγ = Σ_{b,h,w} dout ⊙ x̂
    dbeta = dout.sum(axis=(0, 2, 3))  # (C,)
    dgamma = (dout * x_hat.reshape(dout.shape)).sum(axis=(0, 2, 3))  # (C,)
    dx_hat = (dout * gamma[:, None, None]).reshape(x_hat.shape)  # (B, G, C/G, H, W)
    # through μ and σ² of the group:  dx = (1/√(σ² + ε)) · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂))
    axes = (2, 3, 4)
    dx = dx_hat - dx_hat.mean(axis=axes, keepdims=True) - x_hat * (dx_hat * x_hat).mean(axis=axes, keepdims=True)
    dx *= inv_std  # (B, G, C/G, H, W)
    return dx.reshape(b, g * cg, h, w), dgamma, dbeta


def upsample_forward(x):
    """Nearest-neighbour 2× upsampling: out[b, c, i, j] = x[b, c, ⌊i/2⌋, ⌊j/2⌋], (B, C, H, W) → (B, C, 2H, 2W)."""
    return x.repeat(2, axis=2).repeat(2, axis=3), x.shape


def upsample_backward(dout, cache):
    """Each input pixel was copied into a 2×2 block  ⇒  its gradient is the block's sum."""
    b, c, h, w = cache
    return dout.reshape(b, c, h, 2, w, 2).sum(axis=(3, 5))  # (B, C, H, W)


# ----------------------------------------------------------------------------------------------
# The residual block
# ----------------------------------------------------------------------------------------------


def res_block_forward(x, e_act, params, name, groups):
    """res(x, e) of the module docstring: x (B, C_in, H, W), e_act = SiLU(e) (B, E) → (B, C_out, H, W)."""
    p, cache = f"unet.{name}", {}
    h, cache["norm1"] = group_norm_forward(x, params[f"{p}.norm1.gamma"], params[f"{p}.norm1.beta"], groups)
    h, cache["act1"] = silu_forward(h)  # (B, C_in, H, W)
    h, cache["conv1"] = conv2d_forward(h, params[f"{p}.conv1.w"], params[f"{p}.conv1.b"], padding=1)  # (B, C_out, H, W)
    # the embedding enters as one shift per channel: h + (W_e SiLU(e) + b_e)[:, :, None, None]
    shift, cache["emb"] = linear_forward(e_act, params[f"{p}.emb.W"], params[f"{p}.emb.b"])  # (B, C_out)
    h = h + shift[:, :, None, None]  # (B, C_out, H, W)
    h, cache["norm2"] = group_norm_forward(h, params[f"{p}.norm2.gamma"], params[f"{p}.norm2.beta"], groups)
    h, cache["act2"] = silu_forward(h)  # (B, C_out, H, W)
    h, cache["conv2"] = conv2d_forward(h, params[f"{p}.conv2.w"], params[f"{p}.conv2.b"], padding=1)  # (B, C_out, H, W)
    if f"{p}.skip.w" in params:  # a 1×1 convolution matches the channels of the residual path
        skip, cache["skip"] = conv2d_forward(x, params[f"{p}.skip.w"], params[f"{p}.skip.b"])  # (B, C_out, H, W)
    else:
        skip = x  # (B, C_out, H, W)
    return h + skip, cache


def res_block_backward(dout, cache, name):
    """Return (dx, de_act, grads of the block's parameters)."""
    p, grads = f"unet.{name}", {}
    # out = h + skip(x): the gradient reaches both paths unchanged
    if "skip" in cache:
        dx, grads[f"{p}.skip.w"], grads[f"{p}.skip.b"] = conv2d_backward(dout, cache["skip"])  # (B, C_in, H, W)
    else:
        dx = dout
    dh, grads[f"{p}.conv2.w"], grads[f"{p}.conv2.b"] = conv2d_backward(dout, cache["conv2"])
    dh = silu_backward(dh, cache["act2"])
    dh, grads[f"{p}.norm2.gamma"], grads[f"{p}.norm2.beta"] = group_norm_backward(dh, cache["norm2"])
    # the shift was broadcast over H × W  ⇒  its gradient sums dh over the pixels
    de_act, grads[f"{p}.emb.W"], grads[f"{p}.emb.b"] = linear_backward(dh.sum(axis=(2, 3)), cache["emb"])  # (B, E)
    dh, grads[f"{p}.conv1.w"], grads[f"{p}.conv1.b"] = conv2d_backward(dh, cache["conv1"])
    dh = silu_backward(dh, cache["act1"])
    dh, grads[f"{p}.norm1.gamma"], grads[f"{p}.norm1.beta"] = group_norm_backward(dh, cache["norm1"])
    return dx + dh, de_act, grads


# ----------------------------------------------------------------------------------------------
# The whole network
# ----------------------------------------------------------------------------------------------


def word_ids(words):
    """Number words ("three", "Seven", None or "" for ∅) → int64 ids (B,): 0 … 9, or NULL = 10."""
    ids = []
    for word in words:
        tokens = tokenize(word) if word else []
        if len(tokens) > 1 or (tokens and tokens[0] not in DIGIT_WORDS):
            raise ValueError(f"words must be digit words {DIGIT_WORDS} (or None for the null token), got {word!r}")
        ids.append(DIGIT_WORDS.index(tokens[0]) if tokens else NULL)
    return np.array(ids, dtype=np.int64)  # (B,)


def _check_ids(name, ids, batch, high, meaning):
    """ids as an int array (B,) with values in [0, high]: TypeError for another dtype, ValueError for shape or range."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of shape ({batch},), got dtype {ids.dtype} with shape {ids.shape}")
    if ids.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) (one per image of x_t), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > high):
        raise ValueError(f"{name} must lie in [0, {high}] ({meaning}), got values in [{ids.min()}, {ids.max()}]")
    return ids


def check_unet_inputs(params, x_t, t, config, cond):
    """x_t (B, 1, H, W) float, H and W divisible by 4, of the parameters' dtype; t and cond (B,) ints in range."""
    for name, shape in parameter_shapes(config).items():
        if name not in params or np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape} for {config}, got "
                             f"{np.shape(params[name]) if name in params else 'nothing'}")
    x_t = as_float_array("x_t", x_t)
    if x_t.ndim != 4 or x_t.shape[1] != 1 or x_t.shape[2] % 4 or x_t.shape[3] % 4:
        raise ValueError(f"x_t must have shape (B, 1, H, W) with H and W divisible by 4, got shape {x_t.shape}")
    check_same_dtype(x_t=x_t, params=params["unet.conv_in.w"])
    b = len(x_t)
    t = _check_ids("t", t, b, config.num_steps - 1, f"0-based steps, T = {config.num_steps}")
    cond = np.full(b, NULL, dtype=np.int64) if cond is None else cond
    cond = _check_ids("cond", cond, b, NULL, f"digit 0 … 9, or NULL = {NULL} for ∅")
    return x_t, t, cond


class UNetCache(NamedTuple):
    layers: dict  # name → that op's cache
    cond: np.ndarray  # (B,) the word ids, for the table's gradient
    channels: tuple  # (c1, c2, c3): where the backward splits each concatenation


def unet_forward(params, x_t, t, config, cond=None):
    """ε̂(x_t, t, word): x_t (B, 1, H, W), t (B,) 0-based steps, cond (B,) word ids (None: all ∅) → (ε̂ (B, 1, H, W), cache)."""
    x_t, t, cond = check_unet_inputs(params, x_t, t, config, cond)
    g, layers = config.groups, {}
    c1, c2, c3 = config.channels
    # the embedding: e = W₂ SiLU(W₁ PE(t) + b₁) + b₂ + table[word]
    pe = time_embedding(t, config.time_dim, x_t.dtype)  # (B, S)
    e, layers["time1"] = linear_forward(pe, params["unet.time.W1"], params["unet.time.b1"])  # (B, E)
    e, layers["time_act"] = silu_forward(e)  # (B, E)
    e, layers["time2"] = linear_forward(e, params["unet.time.W2"], params["unet.time.b2"])  # (B, E)
    e = e + params["unet.word.table"][cond]  # (B, E), the word's row (row NULL for ∅)
    e_act, layers["e_act"] = silu_forward(e)  # (B, E), what every block projects
    # down: 28×28 → 14×14 → 7×7; 3×3, stride 2, padding 1: o = ⌊(i + 2 − 3) / 2⌋ + 1 = i / 2 for even i
    h0, layers["conv_in"] = conv2d_forward(x_t, params["unet.conv_in.w"], params["unet.conv_in.b"], padding=1)  # (B, c1, H, W)
    h, layers["down1"] = conv2d_forward(h0, params["unet.down1.w"], params["unet.down1.b"], stride=2, padding=1)  # (B, c2, H/2, W/2)
    skip, layers["enc"] = res_block_forward(h, e_act, params, "enc", g)  # (B, c2, H/2, W/2)
    h, layers["down2"] = conv2d_forward(skip, params["unet.down2.w"], params["unet.down2.b"], stride=2, padding=1)  # (B, c3, H/4, W/4)
    h, layers["mid"] = res_block_forward(h, e_act, params, "mid", g)  # (B, c3, H/4, W/4)
    # up: the upsampled maps beside the skip of the same resolution (⊕), then + h0 at full resolution
    h, layers["up_half"] = upsample_forward(h)  # (B, c3, H/2, W/2)
    h, layers["dec"] = res_block_forward(np.concatenate([h, skip], axis=1), e_act, params, "dec", g)  # (B, c2, H/2, W/2)
    h, layers["to_full"] = conv2d_forward(h, params["unet.to_full.w"], params["unet.to_full.b"])  # (B, c1, H/2, W/2)
    h, layers["up_full"] = upsample_forward(h)  # (B, c1, H, W)
    h, layers["full"] = res_block_forward(h + h0, e_act, params, "full", g)  # (B, c1, H, W)
    h, layers["norm_out"] = group_norm_forward(h, params["unet.norm_out.gamma"], params["unet.norm_out.beta"], g)
    h, layers["act_out"] = silu_forward(h)  # (B, c1, H, W)
    eps, layers["conv_out"] = conv2d_forward(h, params["unet.conv_out.w"], params["unet.conv_out.b"], padding=1)  # (B, 1, H, W)
    return eps, UNetCache(layers, cond, (c1, c2, c3))


def unet_backward_with_input(d_eps, cache):
    """Return (dx_t, grads) for d_eps = ∂loss/∂ε̂ (B, 1, H, W); grads has the keys of parameter_shapes."""
    layers, (c1, c2, c3), grads = cache.layers, cache.channels, {}
    dh, grads["unet.conv_out.w"], grads["unet.conv_out.b"] = conv2d_backward(d_eps, layers["conv_out"])  # (B, c1, H, W)
    dh = silu_backward(dh, layers["act_out"])
    dh, grads["unet.norm_out.gamma"], grads["unet.norm_out.beta"] = group_norm_backward(dh, layers["norm_out"])
    # every block projects SiLU(e): their gradients with respect to it add up in de_act
    dh, de_act, block = res_block_backward(dh, layers["full"], "full")  # (B, c1, H, W)
    grads.update(block)
    # h + h0: the sum hands dh to both, so dh0 starts as dh (and the down path adds its share below)
    dh0 = dh
    dh = upsample_backward(dh, layers["up_full"])  # (B, c1, H/2, W/2)
    dh, grads["unet.to_full.w"], grads["unet.to_full.b"] = conv2d_backward(dh, layers["to_full"])  # (B, c2, H/2, W/2)
    dcat, de, block = res_block_backward(dh, layers["dec"], "dec")  # (B, c3 + c2, H/2, W/2)
    de_act = de_act + de
    grads.update(block)
    # a concatenation's backward splits the gradient where the inputs were joined
    dh, dskip = upsample_backward(dcat[:, :c3], layers["up_half"]), dcat[:, c3:]  # (B, c3, H/4, W/4), (B, c2, H/2, W/2)
    dh, de, block = res_block_backward(dh, layers["mid"], "mid")  # (B, c3, H/4, W/4)
    de_act = de_act + de
    grads.update(block)
    dh, grads["unet.down2.w"], grads["unet.down2.b"] = conv2d_backward(dh, layers["down2"])  # (B, c2, H/2, W/2)
    # skip fed both the stride-2 convolution and "dec"  ⇒  its gradients add
    dh, de, block = res_block_backward(dh + dskip, layers["enc"], "enc")  # (B, c2, H/2, W/2)
    de_act = de_act + de
    grads.update(block)
    dh, grads["unet.down1.w"], grads["unet.down1.b"] = conv2d_backward(dh, layers["down1"])  # (B, c1, H, W)
    # h0 fed down1 and the sum before "full"
    dx, grads["unet.conv_in.w"], grads["unet.conv_in.b"] = conv2d_backward(dh + dh0, layers["conv_in"])  # (B, 1, H, W)
    # back through the embedding: e = time MLP + table[word]
    de = silu_backward(de_act, layers["e_act"])  # (B, E)
    table = np.zeros((NULL + 1, de.shape[1]), dtype=de.dtype)  # (11, E)
    # row v of the table collects every row of the batch whose word is v
    np.add.at(table, cache.cond, de)
    grads["unet.word.table"] = table
    dh, grads["unet.time.W2"], grads["unet.time.b2"] = linear_backward(de, layers["time2"])
    dh = silu_backward(dh, layers["time_act"])
    _, grads["unet.time.W1"], grads["unet.time.b1"] = linear_backward(dh, layers["time1"])
    return dx, grads


def unet_backward(d_eps, cache):
    """The parameters' gradients (same keys as the parameters), for d_eps = ∂loss/∂ε̂ (B, 1, H, W)."""
    return unet_backward_with_input(d_eps, cache)[1]


UNET_DENOISER = Denoiser(init_unet, unet_forward, unet_backward, parameter_shapes)  # scratch/diffusion.py's interface


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance (Ho and Salimans 2022)
# ----------------------------------------------------------------------------------------------


def guidance_mix(eps_cond, eps_uncond, scale):
    """ε̃ = ε(x, ∅) + s · (ε(x, word) − ε(x, ∅)), written (1 − s) · ε(x, ∅) + s · ε(x, word).

    s is the guidance scale as diffusers and Imagen count it: s = 0 is the unconditional model,
    s = 1 the conditional one, s > 1 pushes the sample further from ∅ towards the word. Ho and
    Salimans's Eq. (6), ε̃ = (1 + w) ε(x, c) − w ε(x, ∅), is the same mix with w = s − 1.
    The weighted-sum form makes both ends exact in floating point: s = 0 returns ε(x, ∅)
    and s = 1 returns ε(x, word) to the last bit (1 · a + 0 · b = a).
    """
    # BEGIN SOLUTION
    # HINT: the guided ε moves from the unconditional prediction towards the conditional one, by s.
    return (1.0 - scale) * eps_uncond + scale * eps_cond  # (B, 1, H, W)
    # END SOLUTION


def guided_eps(params, x_t, t, words, scale, config):
    """The guided ε̃(x_t, t, word) for the samplers' eps_fn: both branches in one forward of 2B rows.

    words: (B,) word ids (0 … 9, word_ids turns "three" into 3). Rows 0 … B−1 of the forward are
    conditional, rows B … 2B−1 the same images with ∅; group norm keeps them independent.
    """
    scale = float(scale)
    x_t = as_float_array("x_t", x_t)
    words = np.asarray(words)
    if words.shape != (len(x_t),):
        raise ValueError(f"words must have shape ({len(x_t)},) to match x_t {x_t.shape}, got shape {words.shape}")
    t = np.broadcast_to(np.asarray(t), (len(x_t),)) if np.ndim(t) == 0 else np.asarray(t)
    both, _ = unet_forward(params, np.concatenate([x_t, x_t]), np.concatenate([t, t]), config,
                           np.concatenate([words, np.full(len(x_t), NULL, dtype=words.dtype)]))  # (2B, 1, H, W)
    return guidance_mix(both[:len(x_t)], both[len(x_t):], scale)  # (B, 1, H, W)
