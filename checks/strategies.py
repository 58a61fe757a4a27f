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
