"""The Transformer (Vaswani et al. 2017) in NumPy, with every gradient derived by hand.

Shape letters, used in the comment at the end of each array line:
    B  batch     S  source positions    T  target positions    V  vocabulary
    D  model width (d_model)            F  feed-forward width (d_ff)    H  heads

The pieces, bottom-up: the positional encoding (§3.5), layer normalisation (Ba et al. 2016),
the position-wise feed-forward block (§3.3), one encoder layer and one decoder layer (§3.1),
the label-smoothed cross-entropy (§5.4), and the encoder-decoder model built from them.
Decoding (greedy with a key/value cache, beam search) is in scratch/decoding.py.

Each layer wraps its sub-layers in a residual connection and a layer norm, in one of two orders:
    post-norm (the paper, the default)   y = LayerNorm(x + Dropout(Sublayer(x)))
    pre-norm  (norm_first=True)          y = x + Dropout(Sublayer(LayerNorm(x)))
Pre-norm keeps an unnormalised path from the loss to the embeddings and trains without warm-up
(Xiong et al. 2020); it needs one more layer norm after each stack.
"""

from typing import NamedTuple

import numpy as np

from scratch.attention import multi_head_attention_backward, multi_head_attention_forward
from scratch.flash_attention import (FlashAttentionCache, flash_multi_head_attention_backward,
                                     flash_multi_head_attention_forward)
from scratch.layers import (
    dropout_backward,
    dropout_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
)
from scratch.validate import (
    MHA_PARAM_NAMES,
    as_float_array,
    check_cross_entropy_inputs,
    check_layer_norm_inputs,
    check_ndim,
    check_positional_encoding_args,
    check_same_dtype,
    check_shape,
)

# ----------------------------------------------------------------------------------------------
# Positional encoding
# ----------------------------------------------------------------------------------------------


def positional_encoding(t, d_model, dtype=np.float64):
    """(t, d_model) sinusoids: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)."""
    check_positional_encoding_args(t, d_model)
    # BEGIN SOLUTION
    # HINT: column pair (2i, 2i+1) shares one frequency 1/10000^(2i/d); even columns take sin, odd take cos.
    # §3.5, Vaswani et al. 2017: each pair of columns is a sinusoid of its own wavelength, from 2π to
    # 10000·2π, so PE(pos + k) is a linear function (a rotation) of PE(pos) for every offset k.
    pos = np.arange(t, dtype=np.float64)[:, None]  # (t, 1)
    two_i = np.arange(0, d_model, 2, dtype=np.float64)  # (⌈d/2⌉,), the even column indices 2i
    angle = pos / 10000.0 ** (two_i / d_model)  # (t, ⌈d/2⌉)
    pe = np.zeros((t, d_model))  # (t, D)
    pe[:, 0::2] = np.sin(angle)  # PE(pos, 2i)
    pe[:, 1::2] = np.cos(angle[:, : d_model // 2])  # PE(pos, 2i + 1); an odd d has one fewer cos column
    # END SOLUTION
    return pe.astype(dtype)


# ----------------------------------------------------------------------------------------------
# Layer normalisation
# ----------------------------------------------------------------------------------------------


class LayerNormCache(NamedTuple):
    x_hat: np.ndarray  # (..., D), the normalised input
    inv_std: np.ndarray  # (..., 1), 1 / √(σ² + ε)
    gamma: np.ndarray  # (D,)


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """LayerNorm(x) = γ ⊙ (x − μ) / √(σ² + ε) + β over the last axis (biased σ², as PyTorch)."""
    x, gamma, beta = check_layer_norm_inputs(x, gamma, beta)
    # BEGIN SOLUTION
    # HINT: the variance divides by D, not D − 1, and ε goes inside the square root.
    # Ba et al. 2016: statistics over the features of each position, not over the batch
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    centred = x - mu  # (..., D)
    var = (centred * centred).mean(axis=-1, keepdims=True)  # (..., 1), biased: divides by D
    inv_std = 1.0 / np.sqrt(var + eps)  # (..., 1)
    x_hat = centred * inv_std  # (..., D), mean 0 and variance ≈ 1 per position
    y = gamma * x_hat + beta  # (..., D)
    # END SOLUTION
    return y, LayerNormCache(x_hat, inv_std, gamma)


def layer_norm_backward(dout, cache):
    """Return (dx, dgamma, dbeta) for y = γ ⊙ x̂ + β."""
    x_hat, inv_std, gamma = cache
    # BEGIN SOLUTION
    # HINT: μ and σ depend on every feature, so dx has two correction terms besides γ·dout/σ.
    # y = γ x̂ + β  ⇒  dγ = Σ_rows dout ⊙ x̂, dβ = Σ_rows dout, dx̂ = γ ⊙ dout
    rows = dout.reshape(-1, dout.shape[-1])  # (N, D)
    dgamma = (rows * x_hat.reshape(rows.shape)).sum(axis=0)  # (D,)
    dbeta = rows.sum(axis=0)  # (D,)
    dx_hat = dout * gamma  # (..., D)
    # x̂ = (x − μ)/σ with μ, σ functions of x  ⇒  dx = (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂)) / σ
    dx = dx_hat - dx_hat.mean(axis=-1, keepdims=True)  # (..., D)
    dx -= x_hat * (dx_hat * x_hat).mean(axis=-1, keepdims=True)
    dx *= inv_std
    # END SOLUTION
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------------
# The position-wise feed-forward block
# ----------------------------------------------------------------------------------------------

FF_PARAM_NAMES = ("W1", "b1", "W2", "b2")


def feed_forward_forward(x, params):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, Eq. (2): the same two linear maps at every position."""
    # BEGIN SOLUTION
    h, cache1 = linear_forward(x, params["W1"], params["b1"])  # (..., F)
    a, relu_cache = relu_forward(h)  # (..., F)
    y, cache2 = linear_forward(a, params["W2"], params["b2"])  # (..., D)
    # END SOLUTION
    return y, (cache1, relu_cache, cache2)


def feed_forward_backward(dout, cache):
    """Return (dx, grads) with grads keyed W1 b1 W2 b2."""
    cache1, relu_cache, cache2 = cache
    grads = {}
    # BEGIN SOLUTION
    da, grads["W2"], grads["b2"] = linear_backward(dout, cache2)  # (..., F)
    dh = relu_backward(da, relu_cache)  # (..., F)
    dx, grads["W1"], grads["b1"] = linear_backward(dh, cache1)  # (..., D)
    # END SOLUTION
    return dx, grads


# ----------------------------------------------------------------------------------------------
# Residual sub-layers, and the encoder and decoder layers made of them
# ----------------------------------------------------------------------------------------------


def prefixed(params, prefix):
    """The entries of a flat parameter dict under `prefix`, prefix removed: ("attn.", …) → {"W_q": …}."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def sublayer_forward(x, sublayer, gamma, beta, norm_first, dropout, rng):
    """Post-norm LN(x + Dropout(f(x))) or pre-norm x + Dropout(f(LN(x))), for f = sublayer(x) → (out, cache)."""
    # BEGIN SOLUTION
    # §5.4: dropout on each sub-layer's output, before it is added to the sub-layer's input
    if norm_first:
        h, norm_cache = layer_norm_forward(x, gamma, beta)  # (B, T, D)
        f, inner_cache = sublayer(h)  # (B, T, D)
        f, drop_cache = dropout_forward(f, dropout, rng)
        y = x + f  # (B, T, D)
    else:
        f, inner_cache = sublayer(x)  # (B, T, D)
        f, drop_cache = dropout_forward(f, dropout, rng)
        y, norm_cache = layer_norm_forward(x + f, gamma, beta)  # (B, T, D)
    # END SOLUTION
    return y, (norm_first, norm_cache, inner_cache, drop_cache)


def sublayer_backward(dout, cache, sublayer_backward_fn):
    """Return (dx, extra, dgamma, dbeta); `sublayer_backward_fn(df, cache) → (d input, extra)`."""
    norm_first, norm_cache, inner_cache, drop_cache = cache
    # BEGIN SOLUTION
    # HINT: the residual x + f(·) sends dout straight to x and also through f; the two add up.
    if norm_first:
        # y = x + f(LN(x))  ⇒  dx = dout + LN'ᵀ f'ᵀ dout
        df = dropout_backward(dout, drop_cache)  # (B, T, D)
        dh, extra = sublayer_backward_fn(df, inner_cache)
        dx_norm, dgamma, dbeta = layer_norm_backward(dh, norm_cache)
        dx = dout + dx_norm  # (B, T, D)
    else:
        # y = LN(x + f(x))  ⇒  ds = LN'ᵀ dout, dx = ds + f'ᵀ ds
        ds, dgamma, dbeta = layer_norm_backward(dout, norm_cache)  # (B, T, D)
        df = dropout_backward(ds, drop_cache)
        dx_inner, extra = sublayer_backward_fn(df, inner_cache)
        dx = ds + dx_inner  # (B, T, D)
    # END SOLUTION
    return dx, extra, dgamma, dbeta


def _self_attention(params, prefix, num_heads, mask, flash=False):
    """f(h) = MHA(h, h) for a sub-layer, and its backward, which adds the query and key/value paths.

    flash=True: causal self-attention by scratch/flash_attention.py (the mask is then causal_mask, implied);
    the backward knows which kind ran from the cache it is given.
    """
    p = prefixed(params, prefix)

    def forward(h):
        if flash:
            return flash_multi_head_attention_forward(h, h, p, num_heads, causal=True)
        return multi_head_attention_forward(h, h, p, num_heads, mask)

    def backward(df, cache):
        if isinstance(cache.attention, FlashAttentionCache):
            dx_q, dx_kv, grads = flash_multi_head_attention_backward(df, cache)
        else:
            dx_q, dx_kv, grads = multi_head_attention_backward(df, cache)
        return dx_q + dx_kv, grads

    return forward, backward


def _check_layer_params(params, names, d_model):
    """Every name present, floating, and shaped for width D (the feed-forward width F read from ff.W1)."""
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"params is missing {missing}")
    w1 = as_float_array("params['ff.W1']", params["ff.W1"])
    check_ndim("params['ff.W1']", w1, 2, "(D, F)")
    d_ff = w1.shape[1]
    expected = {"W1": (d_model, d_ff), "b1": (d_ff,), "W2": (d_ff, d_model), "b2": (d_model,)}
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        shape = expected.get(leaf, (d_model, d_model) if leaf.startswith("W") else (d_model,))
        check_shape(f"params[{name!r}]", as_float_array(f"params[{name!r}]", params[name]), shape)


def _layer_names(sublayers):
    """Parameter names of a layer: (attention prefix, …) → ["attn.W_q", …, "ln1.gamma", …, "ff.W1", …]."""
    names = [f"{prefix}{n}" for prefix in sublayers for n in MHA_PARAM_NAMES]
    names += [f"ln{i}.{n}" for i in range(1, len(sublayers) + 2) for n in ("gamma", "beta")]
    return names + [f"ff.{n}" for n in FF_PARAM_NAMES]


ENCODER_LAYER_NAMES = tuple(_layer_names(["attn."]))
DECODER_LAYER_NAMES = tuple(_layer_names(["self_attn.", "cross_attn."]))


def _check_sequence(name, x, d_model=None):
    x = as_float_array(name, x)
    if x.ndim != 3 or (d_model is not None and x.shape[2] != d_model):
        raise ValueError(f"{name} must have shape (B, T, D{'' if d_model is None else '=' + str(d_model)}), "
                         f"got shape {x.shape}")
    return x


def check_encoder_layer_inputs(x, params):
    """x (B, S, D) and every encoder-layer parameter, shaped for D, all of x's dtype (scratch and the ports)."""
    x = _check_sequence("x", x)
    _check_layer_params(params, ENCODER_LAYER_NAMES, x.shape[2])
    check_same_dtype(x=x, **{k.replace(".", "_"): params[k] for k in ENCODER_LAYER_NAMES})
    return x


def check_decoder_layer_inputs(y, memory, params):
    """y (B, T, D), memory (B, S, D) and every decoder-layer parameter, one dtype (scratch and the ports)."""
    y = _check_sequence("y", y)
    memory = _check_sequence("memory", memory, y.shape[2])
    if memory.shape[0] != y.shape[0]:
        raise ValueError(f"memory must have shape (B={y.shape[0]}, S, D) to match y {y.shape}, got shape {memory.shape}")
    _check_layer_params(params, DECODER_LAYER_NAMES, y.shape[2])
    check_same_dtype(y=y, memory=memory, **{k.replace(".", "_"): params[k] for k in DECODER_LAYER_NAMES})
    return y, memory


def encoder_layer_forward(x, params, num_heads, mask=None, norm_first=False, dropout=0.0, rng=None):
    """One encoder layer, §3.1: self-attention, then the feed-forward block, each residual and normalised.

    x (B, S, D); `mask` broadcastable to (B, S, S), True where a position may attend (padding: False).
    """
    x = check_encoder_layer_inputs(x, params)
    # BEGIN SOLUTION
    # HINT: two calls of sublayer_forward: one with self-attention, one with the feed-forward block.
    attend, _ = _self_attention(params, "attn.", num_heads, mask)
    h, cache1 = sublayer_forward(x, attend, params["ln1.gamma"], params["ln1.beta"], norm_first, dropout, rng)  # (B, S, D)
    ff = lambda a: feed_forward_forward(a, prefixed(params, "ff."))  # noqa: E731
    y, cache2 = sublayer_forward(h, ff, params["ln2.gamma"], params["ln2.beta"], norm_first, dropout, rng)  # (B, S, D)
    # END SOLUTION
    return y, (params, num_heads, mask, cache1, cache2)


def encoder_layer_backward(dout, cache):
    """Return (dx, grads) with grads keyed like the layer's params."""
    params, num_heads, mask, cache1, cache2 = cache
    grads = {}
    # BEGIN SOLUTION
    dh, ff_grads, grads["ln2.gamma"], grads["ln2.beta"] = sublayer_backward(dout, cache2, feed_forward_backward)
    _, attend_backward = _self_attention(params, "attn.", num_heads, mask)
    dx, attn_grads, grads["ln1.gamma"], grads["ln1.beta"] = sublayer_backward(dh, cache1, attend_backward)
    grads.update({f"ff.{k}": v for k, v in ff_grads.items()})
    grads.update({f"attn.{k}": v for k, v in attn_grads.items()})
    # END SOLUTION
    return dx, {name: grads[name] for name in ENCODER_LAYER_NAMES}


def decoder_layer_forward(y, memory, params, num_heads, self_mask=None, memory_mask=None, norm_first=False,
                          dropout=0.0, rng=None, self_attention="plain"):
    """One decoder layer, §3.1: masked self-attention, attention over the encoder's output, feed-forward.

    y (B, T, D) the target so far, memory (B, S, D) the encoder's output; `self_mask` broadcastable
    to (B, T, T) (causal: position i sees j ≤ i), `memory_mask` to (B, T, S) (source padding).
    self_attention="flash": the self-attention is causal and computed by FlashAttention (self_mask
    must then be None); the attention over the memory keeps its arbitrary padding mask, so stays plain.
    """
    y, memory = check_decoder_layer_inputs(y, memory, params)
    if self_attention not in ("plain", "flash"):
        raise ValueError(f"self_attention must be 'plain' or 'flash', got {self_attention!r}")
    if self_attention == "flash" and self_mask is not None:
        raise ValueError("self_attention='flash' is causal self-attention, the mask built in: self_mask must be None, "
                         f"got an array of shape {np.shape(self_mask)}")
    # BEGIN SOLUTION
    # HINT: like the encoder layer, with a second attention sub-layer whose keys and values are the memory.
    attend, _ = _self_attention(params, "self_attn.", num_heads, self_mask, self_attention == "flash")
    h1, cache1 = sublayer_forward(y, attend, params["ln1.gamma"], params["ln1.beta"], norm_first, dropout, rng)  # (B, T, D)
    cross = prefixed(params, "cross_attn.")
    # queries from the decoder, keys and values from the encoder: every target position reads the source
    attend_source = lambda h: multi_head_attention_forward(h, memory, cross, num_heads, memory_mask)  # noqa: E731
    h2, cache2 = sublayer_forward(h1, attend_source, params["ln2.gamma"], params["ln2.beta"], norm_first, dropout, rng)
    ff = lambda a: feed_forward_forward(a, prefixed(params, "ff."))  # noqa: E731
    out, cache3 = sublayer_forward(h2, ff, params["ln3.gamma"], params["ln3.beta"], norm_first, dropout, rng)  # (B, T, D)
    # END SOLUTION
    return out, (params, num_heads, self_mask, cache1, cache2, cache3)


def decoder_layer_backward(dout, cache):
    """Return (dy, dmemory, grads) with grads keyed like the layer's params."""
    params, num_heads, self_mask, cache1, cache2, cache3 = cache
    grads = {}
    # BEGIN SOLUTION
    dh2, ff_grads, grads["ln3.gamma"], grads["ln3.beta"] = sublayer_backward(dout, cache3, feed_forward_backward)

    def cross_backward(df, inner_cache):
        dq, dmemory, g = multi_head_attention_backward(df, inner_cache)
        return dq, (dmemory, g)

    dh1, (dmemory, cross_grads), grads["ln2.gamma"], grads["ln2.beta"] = sublayer_backward(dh2, cache2, cross_backward)
    _, attend_backward = _self_attention(params, "self_attn.", num_heads, self_mask)
    dy, self_grads, grads["ln1.gamma"], grads["ln1.beta"] = sublayer_backward(dh1, cache1, attend_backward)
    for prefix, g in (("ff.", ff_grads), ("cross_attn.", cross_grads), ("self_attn.", self_grads)):
        grads.update({f"{prefix}{k}": v for k, v in g.items()})
    # END SOLUTION
    return dy, dmemory, {name: grads[name] for name in DECODER_LAYER_NAMES}


# ----------------------------------------------------------------------------------------------
# Label-smoothed cross-entropy
# ----------------------------------------------------------------------------------------------


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (N, V), softmax of the logits
    targets: np.ndarray  # (N,)
    weight: np.ndarray  # (N, 1), 1 / (number of counted targets) where counted, else 0
    label_smoothing: float
    shape: tuple


def cross_entropy_forward(logits, targets, label_smoothing=0.0, ignore_index=None):
    """Mean over the counted targets of −Σ_v q_v log p_v, q = (1 − ε)·one-hot(target) + ε/V.

    logits (..., V), targets integers (...); positions whose target is `ignore_index` (padding)
    count for nothing. With nothing counted the loss is 0 and so is its gradient (not 0/0 = NaN).
    This is `torch.nn.functional.cross_entropy(..., label_smoothing=ε, ignore_index=…)`.
    """
    logits, targets, counted = check_cross_entropy_inputs(logits, targets, label_smoothing, ignore_index)
    v = logits.shape[-1]
    # BEGIN SOLUTION
    # HINT: log-softmax with the max subtracted; smoothing mixes −log p_target with the mean of −log p_v.
    z = logits.reshape(-1, v)  # (N, V)
    t = np.where(counted, targets, 0).reshape(-1)  # (N,), ignored positions point at any valid class
    shifted = z - z.max(axis=-1, keepdims=True)  # (N, V)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # (N, V), log softmax
    eps = float(label_smoothing)
    # −Σ_v q_v log p_v = (1 − ε)(−log p_t) + ε · mean_v(−log p_v)
    per_position = -(1.0 - eps) * log_probs[np.arange(len(t)), t] - eps * log_probs.mean(axis=-1)  # (N,)
    n = int(counted.sum())
    weight = counted.reshape(-1, 1).astype(z.dtype) / max(n, 1)  # (N, 1)
    loss = (per_position * weight[:, 0]).sum()  # a mean over the counted positions; 0 if none
    probs = np.exp(log_probs)  # (N, V)
    # END SOLUTION
    return loss, CrossEntropyCache(probs, t, weight, eps, logits.shape)


def cross_entropy_backward(dout, cache):
    """dlogits = (p − q) · weight: softmax minus the smoothed target, per counted position."""
    probs, t, weight, eps, shape = cache
    # BEGIN SOLUTION
    # ∂/∂z_v of −Σ_u q_u log p_u = p_v Σ_u q_u − q_v = p_v − q_v  (Σ_u q_u = 1)
    dlogits = probs - eps / probs.shape[-1]  # (N, V), p − ε/V
    dlogits[np.arange(len(t)), t] -= 1.0 - eps  # − (1 − ε) at the target
    dlogits *= weight * dout  # the mean's 1/n, and 0 at ignored positions
    # END SOLUTION
    return dlogits.reshape(shape)
