"""Hypothesis strategies for every check, in one place.

Shapes are small (a failing example shrinks to something a student can read by eye), the
query and key lengths always differ and so do d_k and d_v (a transposed axis cannot hide
behind a square shape), and floats are well scaled: in [-3, 3], the range where float32
agrees with float64 to about 1e-6 and softmax neither saturates nor goes flat.
"""

from typing import NamedTuple, Optional

import hypothesis.strategies as st
import numpy as np
from hypothesis.extra import numpy as hnp

DTYPES = (np.float64, np.float32)


def floats(dtype, shape, bound=3.0):
    """Arrays of `dtype` and `shape` with elements in [-bound, bound], exactly representable."""
    width = 8 * np.dtype(dtype).itemsize
    bound = float(np.asarray(bound, dtype=dtype))  # the nearest value the dtype can hold
    elements = st.floats(-bound, bound, width=width, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    return hnp.arrays(dtype, shape, elements=elements)


def distinct_pair(low=1, high=5):
    """Two different sizes (a, b), a ≠ b."""
    return st.tuples(st.integers(low, high), st.integers(low, high)).filter(lambda ab: ab[0] != ab[1])


batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)  # (), (B,), (B, H)


@st.composite
def masks(draw, scores_shape, empty_rows=False):
    """Boolean masks broadcastable to `scores_shape` (..., Tq, Tk), True = may attend.

    The mask's own shape is drawn too: the full shape, one row shared by every query
    (..., 1, Tk) as a padding mask is, or a single (Tq, Tk) matrix as a causal mask is.
    By default every query row keeps at least one key; with `empty_rows=True` at least one
    row keeps none (the fully-masked case, whose output must be 0).
    """
    *lead, tq, tk = scores_shape
    shape = draw(st.sampled_from([tuple(scores_shape), (*lead, 1, tk), (tq, tk)]))
    mask = draw(hnp.arrays(np.bool_, shape))
    keep = draw(hnp.arrays(np.int64, shape[:-1], elements=st.integers(0, tk - 1)))
    np.put_along_axis(mask, keep[..., None], True, axis=-1)  # at least one True per row
    if empty_rows:
        row = draw(st.integers(0, int(np.prod(shape[:-1])) - 1))
        mask.reshape(-1, tk)[row] = False
    return mask


class SoftmaxCase(NamedTuple):
    x: np.ndarray
    axis: int
    mask: Optional[np.ndarray]
    dout: np.ndarray


@st.composite
def softmax_cases(draw, dtype, masked=None):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    if masked is None:
        masked = draw(st.booleans())
    mask = None
    if masked:  # a full-shape mask keeping at least one entry of every slice along `axis`
        moved = np.moveaxis(np.empty(shape), axis, -1).shape
        keep = draw(hnp.arrays(np.int64, moved[:-1], elements=st.integers(0, moved[-1] - 1)))
        mask = draw(hnp.arrays(np.bool_, moved))
        np.put_along_axis(mask, keep[..., None], True, axis=-1)
        mask = np.moveaxis(mask, -1, axis)
    return SoftmaxCase(draw(floats(dtype, shape)), axis, mask, draw(floats(dtype, shape)))


class AttentionCase(NamedTuple):
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: Optional[np.ndarray]
    dout: np.ndarray


@st.composite
def attention_cases(draw, dtype, masked=None, empty_rows=False):
    """q (..., Tq, dk), k (..., Tk, dk), v (..., Tk, dv) with Tq ≠ Tk and dk ≠ dv."""
    lead = draw(batch_shapes)
    tq, tk = draw(distinct_pair())
    dk, dv = draw(distinct_pair())
    if masked is None:
        masked = draw(st.booleans()) or empty_rows
    mask = draw(masks((*lead, tq, tk), empty_rows)) if masked else None
    return AttentionCase(
        draw(floats(dtype, (*lead, tq, dk))),
        draw(floats(dtype, (*lead, tk, dk))),
        draw(floats(dtype, (*lead, tk, dv))),
        mask,
        draw(floats(dtype, (*lead, tq, dv))),
    )


class MultiHeadCase(NamedTuple):
    x_q: np.ndarray
    x_kv: np.ndarray
    params: dict
    num_heads: int
    mask: Optional[np.ndarray]
    dout: np.ndarray


@st.composite
def multi_head_cases(draw, dtype, masked=None, empty_rows=False, self_attention=None):
    """x_q (B, Tq, D), x_kv (B, Tk, D) with D = H·Dh; self-attention (x_kv is x_q) or cross."""
    b = draw(st.integers(1, 2))
    num_heads, head_width = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    d = num_heads * head_width
    if self_attention is None:
        self_attention = draw(st.booleans())
    if self_attention:
        tq = tk = draw(st.integers(1, 5))
    else:
        tq, tk = draw(distinct_pair())
    params = {}
    for name in ("W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o"):
        # Weights of Glorot's scale keep the scores of order 1, where softmax is well conditioned.
        params[name] = draw(floats(dtype, (d, d) if name.startswith("W") else (d,), bound=1.0 / np.sqrt(d)))
    x_q = draw(floats(dtype, (b, tq, d), bound=2.0))
    x_kv = x_q if self_attention else draw(floats(dtype, (b, tk, d), bound=2.0))
    if masked is None:
        masked = draw(st.booleans()) or empty_rows
    mask = draw(masks((b, tq, tk), empty_rows)) if masked else None
    return MultiHeadCase(x_q, x_kv, params, num_heads, mask, draw(floats(dtype, (b, tq, d))))


# ----------------------------------------------------------------------------------------------
# The VAE (scratch/vae.py): latent Gaussians, the two decoder likelihoods, the whole model
# ----------------------------------------------------------------------------------------------


def unit_floats(dtype, shape):
    """Arrays in [0, 1]: data for a Bernoulli likelihood (grey levels included, not just 0 and 1)."""
    width = 8 * np.dtype(dtype).itemsize
    elements = st.floats(0.0, 1.0, width=width, allow_subnormal=False)
    return hnp.arrays(dtype, shape, elements=elements)


class LatentCase(NamedTuple):
    mu: np.ndarray  # (B, Z)
    log_var: np.ndarray  # (B, Z)
    eps: np.ndarray  # (B, Z)
    dz: np.ndarray  # (B, Z), upstream gradient of the reparameterised z
    dkl: np.ndarray  # (B,), upstream gradient of the KL


@st.composite
def latent_cases(draw, dtype):
    """μ, log σ², ε of shape (B, Z) with B ≠ Z, and upstream gradients for z and the KL."""
    b, z = draw(distinct_pair(1, 4))
    mu, log_var, eps, dz = (draw(floats(dtype, (b, z))) for _ in range(4))
    return LatentCase(mu, log_var, eps, dz, draw(floats(dtype, (b,))))


class LikelihoodCase(NamedTuple):
    x: np.ndarray  # (B, D)
    decoded: np.ndarray  # (B, D): Bernoulli logits or Gaussian means
    log_var: Optional[np.ndarray]  # Gaussian only, broadcastable to (B, D)
    dll: np.ndarray  # (B,), upstream gradient of the log-likelihood


@st.composite
def bernoulli_cases(draw, dtype):
    """x in [0, 1] and logits of shape (B, D) with B ≠ D."""
    b, d = draw(distinct_pair(1, 4))
    return LikelihoodCase(draw(unit_floats(dtype, (b, d))), draw(floats(dtype, (b, d))), None, draw(floats(dtype, (b,))))


# The shapes a Gaussian log-variance may have against x (B, D): per pixel and example, per pixel,
# one shared by everything (the VAE's decoder), and the two partial broadcasts.
LOG_VAR_SHAPES = {"(B, D)": lambda b, d: (b, d), "(D,)": lambda b, d: (d,), "()": lambda b, d: (),
                  "(1, D)": lambda b, d: (1, d), "(B, 1)": lambda b, d: (b, 1)}


@st.composite
def gaussian_likelihood_cases(draw, dtype, log_var_shape=None):
    """x, mean of shape (B, D) with B ≠ D, and log_var of one of LOG_VAR_SHAPES (drawn if not named)."""
    b, d = draw(distinct_pair(1, 4))
    shape = LOG_VAR_SHAPES[log_var_shape or draw(st.sampled_from(sorted(LOG_VAR_SHAPES)))](b, d)
    x, mean = draw(floats(dtype, (b, d))), draw(floats(dtype, (b, d)))
    return LikelihoodCase(x, mean, draw(floats(dtype, shape)), draw(floats(dtype, (b,))))


class VAECase(NamedTuple):
    x: np.ndarray  # (B, D)
    params: dict  # the scratch layout, parameter_shapes(config)
    eps: np.ndarray  # (B, Z)
    config: object  # scratch.vae.VAEConfig
    dloss: float


VAE_KINDS = ("bernoulli MLP", "gaussian MLP", "linear gaussian")


@st.composite
def vae_cases(draw, dtype, kind):
    """A small VAE of one of VAE_KINDS, its parameters, data and noise.

    B, D, Z and H are four different sizes (no transposed axis hides behind a square shape).
    The parameters are many numbers and none is special, so they come from a NumPy generator
    seeded by Hypothesis (drawing each element through Hypothesis made the model checks slow):
    weights uniform at Glorot's scale ±1/√fan_in, biases and the decoder log-variance in [-1, 1],
    so log σ² stays within a few units and float32 keeps its precision. x and ε are drawn
    element by element, edge values included (x exactly 0 or 1, ε = 0).
    """
    from scratch.vae import VAEConfig, parameter_shapes

    b, d, z, h = draw(st.lists(st.integers(1, 5), min_size=4, max_size=4, unique=True), label="B, D, Z, H")
    config = VAEConfig(x_dim=d, z_dim=z, hidden=0 if kind == "linear gaussian" else h,
                       likelihood="bernoulli" if kind == "bernoulli MLP" else "gaussian")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="parameter seed"))
    params = {}
    for name, shape in parameter_shapes(config).items():
        bound = 1.0 / np.sqrt(shape[0]) if len(shape) == 2 else 1.0
        params[name] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    x = draw(unit_floats(dtype, (b, d)) if config.likelihood == "bernoulli" else floats(dtype, (b, d), bound=2.0))
    eps = draw(floats(dtype, (b, z), bound=2.0))
    dloss = draw(st.sampled_from([1.0, -0.5, 2.0]))
    return VAECase(x, params, eps, config, dloss)


# ----------------------------------------------------------------------------------------------
# The GAN (scratch/gan.py)
# ----------------------------------------------------------------------------------------------


class GANLossCase(NamedTuple):
    real_logits: np.ndarray  # (B_real,)
    fake_logits: np.ndarray  # (B_fake,)
    kind: str  # the generator loss
    dloss: float


@st.composite
def gan_loss_cases(draw, dtype):
    """Logits for a real and a fake batch of different sizes, a generator loss kind, an upstream dloss."""
    b_real, b_fake = draw(distinct_pair(1, 5))
    kind = draw(st.sampled_from(["minimax", "non_saturating"]))
    return GANLossCase(draw(floats(dtype, (b_real,), bound=6.0)), draw(floats(dtype, (b_fake,), bound=6.0)), kind,
                       draw(st.sampled_from([1.0, -0.5, 2.0])))


class GANCase(NamedTuple):
    config: object  # scratch.gan.GANConfig
    params: dict  # the scratch layout, parameter_shapes(config)
    x: np.ndarray  # (B, D) real data
    z: np.ndarray  # (B, Z) noise
    dx: np.ndarray  # (B, D) upstream gradient of G's samples
    dlogits: np.ndarray  # (B / m,) upstream gradient of D's logits
    kind: str


@st.composite
def gan_cases(draw, dtype):
    """A small GAN (one or two hidden layers each, packing 1 or 2, linear or sigmoid output).

    D, Z and the widths differ, and B is a multiple of the pack. Parameters come from a NumPy
    generator seeded by Hypothesis: weights at Kaiming scale as init_gan draws them, biases in
    [-0.5, 0.5] rather than init_gan's zeros, so that no (leaky) ReLU input sits exactly on the
    kink at 0. (There the frameworks legitimately differ: TensorFlow flushes a float32 product
    such as 1e-38 · 0.5 to 0, NumPy keeps it positive, and the two take different branches.)
    """
    from scratch.gan import GANConfig, init_gan

    d, z, h1, h2 = draw(st.lists(st.integers(1, 5), min_size=4, max_size=4, unique=True), label="D, Z, H1, H2")
    pack = draw(st.sampled_from([1, 2]), label="pack")
    gen_hidden = draw(st.sampled_from([(h1,), (h1, h2)]), label="gen_hidden")
    disc_hidden = draw(st.sampled_from([(h2,), (h2, h1)]), label="disc_hidden")
    gen_output = draw(st.sampled_from(["linear", "sigmoid"]), label="gen_output")
    config = GANConfig(x_dim=d, z_dim=z, gen_hidden=gen_hidden, disc_hidden=disc_hidden, pack=pack, gen_output=gen_output)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="parameter seed"))
    params = init_gan(config, rng, dtype)
    for name in params:
        if ".b" in name:
            params[name] = rng.uniform(-0.5, 0.5, params[name].shape).astype(dtype)
    b = pack * draw(st.integers(1, 3), label="B / pack")
    x, zz, dx = draw(floats(dtype, (b, d), bound=2.0)), draw(floats(dtype, (b, z), bound=2.0)), draw(floats(dtype, (b, d)))
    dlogits = draw(floats(dtype, (b // pack,)))
    return GANCase(config, params, x, zz, dx, dlogits, draw(st.sampled_from(["minimax", "non_saturating"])))


# ----------------------------------------------------------------------------------------------
# The Transformer (scratch/transformer.py, scratch/encoder_decoder.py)
# ----------------------------------------------------------------------------------------------


def spread_rows(x, min_spread=0.5):
    """x (..., D) with every row's features at least `min_spread` apart (rows of one feature left alone).

    Layer norm divides by √(σ² + ε): on a row of (nearly) equal features σ is ~0 and 1/√ε ≈ 316
    multiplies the last bit of the mean, which NumPy and the frameworks round differently (pairwise
    and blocked sums). In float32 that alone reaches the tolerance; it is rounding, not a mistake.
    Lifting the first feature of such a row above the others keeps every row well conditioned.
    """
    x = np.array(x)
    if x.shape[-1] < 2 or x.size == 0:
        return x
    flat = x.reshape(-1, x.shape[-1])
    narrow = np.ptp(flat, axis=-1) < min_spread
    flat[narrow, 0] = flat[narrow].max(axis=-1) + 1.0
    return flat.reshape(x.shape)


def transformer_layer_params(rng, names, d, f, dtype):
    """A layer's parameters from a NumPy generator: Glorot-uniform weights, biases and β uniform in
    [-0.5, 0.5] (never 0, so no ReLU input sits exactly on its kink), γ uniform in [0.5, 1.5]."""
    params = {}
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        shape = {"W1": (d, f), "b1": (f,), "W2": (f, d)}.get(leaf, (d, d) if leaf.startswith("W") else (d,))
        if len(shape) == 2:
            limit = np.sqrt(6.0 / sum(shape))
            params[name] = rng.uniform(-limit, limit, shape)
        else:
            params[name] = rng.uniform(0.5, 1.5, shape) if leaf == "gamma" else rng.uniform(-0.5, 0.5, shape)
    return {name: value.astype(dtype) for name, value in params.items()}


class LayerNormCase(NamedTuple):
    x: np.ndarray  # (..., D)
    gamma: np.ndarray  # (D,)
    beta: np.ndarray  # (D,)
    dout: np.ndarray  # (..., D)


@st.composite
def layer_norm_cases(draw, dtype):
    """x (..., D) with 0 to 2 leading axes and D in 1..5 (D = 1: the output is β, the gradient 0)."""
    lead, d = draw(batch_shapes), draw(st.integers(1, 5))
    x = spread_rows(draw(floats(dtype, (*lead, d))))
    gamma, beta = draw(floats(dtype, (d,), bound=2.0)), draw(floats(dtype, (d,)))
    return LayerNormCase(x, gamma, beta, draw(floats(dtype, (*lead, d))))


class FeedForwardCase(NamedTuple):
    x: np.ndarray  # (..., D)
    params: dict  # W1 (D, F), b1 (F,), W2 (F, D), b2 (D,)
    dout: np.ndarray  # (..., D)


@st.composite
def feed_forward_cases(draw, dtype):
    """x (..., D) and the two linear maps, D ≠ F."""
    from scratch.transformer import FF_PARAM_NAMES

    lead = draw(batch_shapes)
    d, f = draw(distinct_pair(1, 5), label="D, F")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="parameter seed"))
    params = {name[3:]: p for name, p in transformer_layer_params(rng, [f"ff.{n}" for n in FF_PARAM_NAMES], d, f,
                                                                   dtype).items()}
    return FeedForwardCase(draw(floats(dtype, (*lead, d), bound=2.0)), params, draw(floats(dtype, (*lead, d))))


class EncoderLayerCase(NamedTuple):
    x: np.ndarray  # (B, S, D)
    params: dict  # ENCODER_LAYER_NAMES
    num_heads: int
    mask: Optional[np.ndarray]  # broadcastable to (B, S, S)
    norm_first: bool
    dout: np.ndarray  # (B, S, D)


def _layer_sizes(draw):
    """(heads, D = heads · head width, F ≠ D)."""
    num_heads, head_width = draw(st.integers(1, 2), label="heads"), draw(st.integers(1, 3), label="head width")
    d = num_heads * head_width
    return num_heads, d, draw(st.integers(1, 6).filter(lambda f: f != d), label="F")


@st.composite
def encoder_layer_cases(draw, dtype, norm_first=None, empty_rows=None):
    """One encoder layer: x (B, S, D), a mask drawn as a padding mask (B, 1, S), a full (B, S, S) or a
    shared (S, S) one, or none; with `empty_rows` (drawn if None) one query row (or one all-padding
    sequence) has no key at all."""
    from scratch.transformer import ENCODER_LAYER_NAMES

    b, s = draw(st.integers(1, 2), label="B"), draw(st.integers(1, 4), label="S")
    num_heads, d, f = _layer_sizes(draw)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="parameter seed"))
    params = transformer_layer_params(rng, ENCODER_LAYER_NAMES, d, f, dtype)
    if empty_rows is None:
        empty_rows = draw(st.booleans(), label="empty row")
    mask = draw(st.none() | masks((b, s, s), empty_rows=empty_rows), label="mask")
    if norm_first is None:
        norm_first = draw(st.booleans(), label="norm_first")
    x = spread_rows(draw(floats(dtype, (b, s, d), bound=2.0)))
    return EncoderLayerCase(x, params, num_heads, mask, norm_first, draw(floats(dtype, (b, s, d))))


class DecoderLayerCase(NamedTuple):
    y: np.ndarray  # (B, T, D)
    memory: np.ndarray  # (B, S, D)
    params: dict  # DECODER_LAYER_NAMES
    num_heads: int
    self_mask: Optional[np.ndarray]  # broadcastable to (B, T, T)
    memory_mask: Optional[np.ndarray]  # broadcastable to (B, T, S)
    norm_first: bool
    dout: np.ndarray  # (B, T, D)


@st.composite
def decoder_layer_cases(draw, dtype, norm_first=None):
    """One decoder layer: T ≠ S, a causal self mask (or another, or none), a source padding mask
    (B, 1, S) or another memory mask, or none."""
    from scratch.attention import causal_mask
    from scratch.transformer import DECODER_LAYER_NAMES

    b = draw(st.integers(1, 2), label="B")
    t, s = draw(distinct_pair(1, 4), label="T, S")
    num_heads, d, f = _layer_sizes(draw)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="parameter seed"))
    params = transformer_layer_params(rng, DECODER_LAYER_NAMES, d, f, dtype)
    self_mask = draw(st.sampled_from(["causal", "none", "drawn"]), label="self mask")
    if self_mask == "causal":
        self_mask = causal_mask(t)  # (T, T)
    elif self_mask == "drawn":
        self_mask = draw(masks((b, t, t)))
    else:
        self_mask = None
    memory_mask = draw(st.none() | masks((b, t, s)), label="memory mask")
    if norm_first is None:
        norm_first = draw(st.booleans(), label="norm_first")
    y = spread_rows(draw(floats(dtype, (b, t, d), bound=2.0)))
    memory = draw(floats(dtype, (b, s, d), bound=2.0))
    dout = draw(floats(dtype, (b, t, d)))
    return DecoderLayerCase(y, memory, params, num_heads, self_mask, memory_mask, norm_first, dout)


class CrossEntropyCase(NamedTuple):
    logits: np.ndarray  # (..., V)
    targets: np.ndarray  # (...) integers
    label_smoothing: float
    ignore_index: Optional[int]
    dloss: float


@st.composite
def cross_entropy_cases(draw, dtype, all_ignored=False, ignore=None):
    """Logits (..., V) with 0 to 2 leading axes, targets in [0, V), ε in [0, 0.3]; with an ignore_index
    (0, the padding id, or −100, torch's default) some targets are set to it; `all_ignored`: all of them.
    `ignore`: None draws whether to ignore; True or False decides."""
    lead = draw(st.lists(st.integers(1, 3), min_size=1 if all_ignored else 0, max_size=2).map(tuple), label="lead")
    v = draw(st.integers(1, 6), label="V")
    logits = draw(floats(dtype, (*lead, v)))
    targets = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, v - 1)), label="targets")
    if ignore is None:
        ignore = all_ignored or draw(st.booleans(), label="ignore")
    ignore_index = draw(st.sampled_from([0, -100]), label="ignore_index") if ignore or all_ignored else None
    if ignore_index is not None:
        ignored = np.ones(lead, bool) if all_ignored else draw(hnp.arrays(np.bool_, lead), label="ignored")
        targets = np.where(ignored, ignore_index, targets)
    label_smoothing = draw(st.sampled_from([0.0, 0.1, 0.3]) | st.floats(0.0, 0.3), label="label_smoothing")
    return CrossEntropyCase(logits, targets, label_smoothing, ignore_index, draw(st.sampled_from([1.0, -0.5, 2.0])))


class TransformerCase(NamedTuple):
    src: np.ndarray  # (B, S) ids, 0 = padding
    tgt_in: np.ndarray  # (B, T) ids
    params: dict  # the scratch layout, parameter_shapes(config)
    config: object  # scratch.encoder_decoder.TransformerConfig
    dlogits: np.ndarray  # (B, T, V_tgt)


@st.composite
def transformer_cases(draw, dtype, norm_first=None, tie_output=None, padding="end"):
    """A tiny whole model: 2 layers, 2 heads, D = 4, F = 6, vocabularies of 7 and 6, S ≠ T ≤ 5.

    Parameters from init_transformer with a seed drawn by Hypothesis, then biases, β and γ moved
    off their initial 0 and 1 (uniform ±0.5 around them), so that every parameter matters.
    Source padding (id 0): padding="end" pads each sequence after at least one real token (what
    the data loaders make, and what torch's nested-tensor path expects); padding="anywhere" draws
    pads at any position, all-padding sources included.
    """
    from scratch.encoder_decoder import TransformerConfig, init_transformer

    if norm_first is None:
        norm_first = draw(st.booleans(), label="norm_first")
    if tie_output is None:
        tie_output = draw(st.booleans(), label="tie_output")
    config = TransformerConfig(src_vocab=7, tgt_vocab=6, d_model=4, num_heads=2, d_ff=6, num_layers=2, max_len=5,
                               norm_first=norm_first, tie_output=tie_output)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="parameter seed"))
    params = init_transformer(config, rng, np.float64)
    for name, value in params.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "beta") or leaf.startswith("b"):
            params[name] = value + rng.uniform(-0.5, 0.5, value.shape)
    params = {name: value.astype(dtype) for name, value in params.items()}
    b = draw(st.integers(1, 3), label="B")
    s, t = draw(distinct_pair(1, 5), label="S, T")
    src = draw(hnp.arrays(np.int64, (b, s), elements=st.integers(1, config.src_vocab - 1)), label="src")
    if padding == "end":
        lengths = draw(hnp.arrays(np.int64, (b,), elements=st.integers(1, s)), label="source lengths")
        src[np.arange(s)[None, :] >= lengths[:, None]] = config.pad_id
    else:
        src[draw(hnp.arrays(np.bool_, (b, s)), label="padded")] = config.pad_id
    tgt_in = draw(hnp.arrays(np.int64, (b, t), elements=st.integers(0, config.tgt_vocab - 1)), label="tgt_in")
    return TransformerCase(src, tgt_in, params, config, draw(floats(dtype, (b, t, config.tgt_vocab))))


# ----------------------------------------------------------------------------------------------
# Convolutions (scratch/conv.py) and batch norm (scratch/layers.py)
# ----------------------------------------------------------------------------------------------


class ConvCase(NamedTuple):
    x: np.ndarray  # (B, C_in, H, W)
    w: np.ndarray  # conv2d (C_out, C_in, kh, kw); transposed (C_in, C_out, kh, kw)
    b: Optional[np.ndarray]  # (C_out,) or None
    stride: object  # an int or an (h, w) pair, as the caller would pass it
    padding: object
    dilation: object
    output_padding: object  # 0 for conv2d
    dout: np.ndarray  # (B, C_out, Ho, Wo)


def _setting(draw, pair, label):
    """An int when both axes agree and a coin says so, else the (h, w) tuple: both spellings get called."""
    if pair[0] == pair[1] and draw(st.booleans(), label=f"{label} as an int"):
        return pair[0]
    return pair


@st.composite
def conv_cases(draw, dtype, transposed=False):
    """One conv2d (or, with `transposed`, conv_transpose2d) call and an upstream gradient.

    Kernels 1×1 to 3×3, square or not; stride 1 to 3 per axis (so often larger than the kernel);
    dilation 1 or 2; padding 0 up to the kernel size; output_padding below max(stride, dilation)
    for the transpose; C_in and C_out drawn apart (often unequal), batch 1 or 2, a bias or None.
    The input is sized so the (dilated, padded) kernel fits: H from the smallest valid size up 3 more.
    """
    bsz, c_in, c_out = (draw(st.integers(1, n), label=name) for n, name in ((2, "B"), (3, "C_in"), (3, "C_out")))
    kernel = (draw(st.integers(1, 3), label="kh"), draw(st.integers(1, 3), label="kw"))
    stride = (draw(st.integers(1, 3), label="stride h"), draw(st.integers(1, 3), label="stride w"))
    dilation = (draw(st.integers(1, 2), label="dilation h"), draw(st.integers(1, 2), label="dilation w"))
    padding, output_padding, size, out = [], [], [], []
    for k, s, d, axis in zip(kernel, stride, dilation, "hw"):
        extent = d * (k - 1) + 1
        if transposed:
            n = draw(st.integers(1, 4), label=f"{axis} in")
            op = draw(st.integers(0, max(s, d) - 1), label=f"output_padding {axis}")
            # the output (n − 1)s − 2p + d(k − 1) + op + 1 must keep at least one cell
            p = draw(st.integers(0, min(k, ((n - 1) * s + extent - 1 + op) // 2)), label=f"padding {axis}")
            o = (n - 1) * s - 2 * p + extent - 1 + op + 1
        else:
            p = draw(st.integers(0, k), label=f"padding {axis}")
            smallest = max(1, extent - 2 * p)
            n = draw(st.integers(smallest, smallest + 3), label=f"{axis} in")
            op, o = 0, (n + 2 * p - extent) // s + 1
        padding.append(p), output_padding.append(op), size.append(n), out.append(o)
    w_shape = (c_in, c_out, *kernel) if transposed else (c_out, c_in, *kernel)
    x = draw(floats(dtype, (bsz, c_in, *size)), label="x")
    w = draw(floats(dtype, w_shape, bound=1.0), label="w")
    b = draw(st.none() | floats(dtype, (c_out,)), label="b")
    dout = draw(floats(dtype, (bsz, c_out, *out)), label="dout")
    return ConvCase(x, w, b, _setting(draw, stride, "stride"), _setting(draw, tuple(padding), "padding"),
                    _setting(draw, dilation, "dilation"), _setting(draw, tuple(output_padding), "output_padding"), dout)


class BatchNormCase(NamedTuple):
    x: np.ndarray  # (B, C) or (B, C, H, W)
    gamma: np.ndarray  # (C,)
    beta: np.ndarray  # (C,)
    dout: np.ndarray  # shaped like x
    running_mean: np.ndarray  # (C,)
    running_var: np.ndarray  # (C,), positive


def spread_channels(x, min_spread=0.5):
    """Lift one value of any channel whose values lie closer than `min_spread`: a nearly constant
    channel has σ² near 0, where x̂ = (x − μ)/√(σ² + ε) amplifies float32's rounding 1/√ε-fold
    (the constant channel itself, σ² = 0 exactly, is checked on its own)."""
    x = np.array(x)
    moved = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)  # (C, N), a copy
    narrow = np.ptp(moved, axis=1) < min_spread
    moved[narrow, 0] = moved[narrow].max(axis=1) + 1.0
    return np.moveaxis(moved.reshape((x.shape[1], x.shape[0]) + x.shape[2:]), 0, 1)


@st.composite
def batch_norm_cases(draw, dtype, image=None):
    """x (B, C) or, with `image` (drawn if None), (B, C, H, W), with at least 2 values per channel
    (PyTorch refuses to train on one); γ, β, running statistics and an upstream gradient."""
    if image is None:
        image = draw(st.booleans(), label="image")
    c = draw(st.integers(1, 3), label="C")
    if image:
        shape = (draw(st.integers(1, 3), label="B"), c, draw(st.integers(1, 3), label="H"), draw(st.integers(1, 3), label="W"))
        if shape[0] * shape[2] * shape[3] < 2:
            shape = (2,) + shape[1:]
    else:
        shape = (draw(st.integers(2, 5), label="B"), c)
    x = spread_channels(draw(floats(dtype, shape), label="x"))
    gamma, beta = draw(floats(dtype, (c,), bound=2.0), label="gamma"), draw(floats(dtype, (c,)), label="beta")
    running_mean = draw(floats(dtype, (c,)), label="running_mean")
    running_var = draw(hnp.arrays(dtype, (c,), elements=st.floats(0.125, 3.0, width=8 * np.dtype(dtype).itemsize)),
                       label="running_var")
    return BatchNormCase(x, gamma, beta, draw(floats(dtype, shape), label="dout"), running_mean, running_var)


# ----------------------------------------------------------------------------------------------
# The GPT (scratch/gpt.py)
# ----------------------------------------------------------------------------------------------


class GPTCase(NamedTuple):
    tokens: np.ndarray  # (B, T) ids, T ≤ block_size
    params: dict  # the scratch layout, parameter_shapes(config)
    config: object  # scratch.gpt.GPTConfig
    dlogits: np.ndarray  # (B, T, V)


def gpt_params(rng, config, dtype):
    """Every parameter of a GPT drawn so that each one matters: embeddings N(0, 1), Glorot-uniform
    matrices, biases and β uniform in [-0.5, 0.5], γ uniform in [0.5, 1.5]. (init_gpt's N(0, 0.02²)
    leaves a model so close to linear that a wrong nonlinearity would hide.)"""
    from scratch.gpt import parameter_shapes

    params = {}
    for name, shape in parameter_shapes(config).items():
        leaf = name.rsplit(".", 1)[-1]
        if name in ("wte", "wpe"):
            params[name] = rng.normal(0.0, 1.0, shape)
        elif len(shape) == 2:
            limit = np.sqrt(6.0 / sum(shape))
            params[name] = rng.uniform(-limit, limit, shape)
        else:
            params[name] = rng.uniform(0.5, 1.5, shape) if leaf == "gamma" else rng.uniform(-0.5, 0.5, shape)
    return {name: value.astype(dtype) for name, value in params.items()}


@st.composite
def gpt_cases(draw, dtype, max_layers=2):
    """A tiny GPT and a batch for it: V in 2..9, block_size in 1..6, 1 to `max_layers` blocks, 1 or 2
    heads of width 1 to 3 (D ≥ 2, so layer norm has something to normalise), B in 1..3, T in 1..block_size."""
    from scratch.gpt import GPTConfig

    n_head = draw(st.integers(1, 2), label="heads")
    head_width = draw(st.integers(1 if n_head > 1 else 2, 3), label="head width")
    config = GPTConfig(vocab_size=draw(st.integers(2, 9), label="V"), block_size=draw(st.integers(1, 6), label="block"),
                       n_layer=draw(st.integers(1, max_layers), label="layers"), n_head=n_head,
                       d_model=n_head * head_width)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="parameter seed"))
    b, t = draw(st.integers(1, 3), label="B"), draw(st.integers(1, config.block_size), label="T")
    tokens = draw(hnp.arrays(np.int64, (b, t), elements=st.integers(0, config.vocab_size - 1)), label="tokens")
    return GPTCase(tokens, gpt_params(rng, config, dtype), config, draw(floats(dtype, (b, t, config.vocab_size))))


@st.composite
def logits_with_ties(draw, max_rows=3, max_vocab=8):
    """(B, V) float64 logits drawn from at most four levels, so that ties are common, at the top-k and
    top-p boundaries too, with equal probabilities that sum exactly to boundaries like p = 0.5; now and
    then −inf (a token removed already). Every row keeps at least one finite entry."""
    b, v = draw(st.integers(1, max_rows), label="B"), draw(st.integers(1, max_vocab), label="V")
    levels = draw(st.lists(st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]) | st.floats(-4, 4, allow_subnormal=False),
                           min_size=1, max_size=4, unique=True), label="levels")
    choices = st.sampled_from(levels) | st.just(-np.inf) if draw(st.booleans(), label="with −inf") else st.sampled_from(levels)
    logits = draw(hnp.arrays(np.float64, (b, v), elements=choices), label="logits")
    logits[np.isneginf(logits).all(axis=1), 0] = levels[0]
    return logits


# ----------------------------------------------------------------------------------------------
# FlashAttention (scratch/flash_attention.py): shapes and the two block sizes
# ----------------------------------------------------------------------------------------------


class FlashCase(NamedTuple):
    q: np.ndarray  # (..., Tq, dk)
    k: np.ndarray  # (..., Tk, dk)
    v: np.ndarray  # (..., Tk, dv)
    causal: bool
    block_q: int
    block_k: int
    dout: np.ndarray  # (..., Tq, dv)


@st.composite
def flash_cases(draw, dtype, causal=None, max_t=9, max_block=10):
    """q, k, v with up to two leading axes and dk ≠ dv; causal (Tq = Tk) or not (Tq ≠ Tk); block sizes
    from 1 to `max_block`, so that blocks often do not divide T and are sometimes larger than T."""
    lead = draw(batch_shapes, label="leading axes")
    if causal is None:
        causal = draw(st.booleans(), label="causal")
    if causal:
        tq = tk = draw(st.integers(1, max_t), label="T")
    else:
        tq, tk = draw(distinct_pair(1, max_t), label="Tq, Tk")
    dk, dv = draw(distinct_pair(1, 4), label="dk, dv")
    block_q, block_k = draw(st.integers(1, max_block), label="block_q"), draw(st.integers(1, max_block), label="block_k")
    q, k, v = draw(floats(dtype, (*lead, tq, dk))), draw(floats(dtype, (*lead, tk, dk))), draw(floats(dtype, (*lead, tk, dv)))
    return FlashCase(q, k, v, causal, block_q, block_k, draw(floats(dtype, (*lead, tq, dv))))
