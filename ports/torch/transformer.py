"""The Transformer in PyTorch: scratch/transformer.py and scratch/encoder_decoder.py with torch ops,
every backward by autograd.

Read it beside the two scratch files: the names, the arguments and the NumPy-in/NumPy-out
interface are the same; each forward records the graph, each backward replays it with
`torch.autograd.grad` instead of the hand-derived lines. Inputs are checked by scratch's own
helpers, so a bad input raises the same error here as there.

Dropout: the functional forwards take `dropout` and `rng` as scratch does and draw the very same
masks from `rng` (scratch/layers.py's `dropout_forward`), so with one seed both implementations
drop the same entries; p = 0 or rng = None is the identity (evaluation), as in scratch.

After the functions come PyTorch's own modules holding scratch weights: `to_torch_encoder_layer`
→ `torch.nn.TransformerEncoderLayer`, `to_torch_decoder_layer` → `torch.nn.TransformerDecoderLayer`,
and `TorchTransformer`, the whole model around `torch.nn.Transformer`, each with its inverse.

Shape letters as in scratch: B batch, S source positions, T target positions, V vocabulary,
D model width, F feed-forward width, H heads.
"""

import math

import numpy as np
import torch
from torch import nn

from ports.torch.attention import (Cache, _attention, _gradients, _leaf, from_torch_multi_head_attention, merge_heads,
                                   split_heads, to_torch_multi_head_attention)
from scratch.encoder_decoder import check_transformer_params
from scratch.validate import (check_cross_entropy_inputs, check_feed_forward_inputs, check_layer_norm_inputs,
                              check_positional_encoding_args)
from scratch.attention import causal_mask
from scratch.decoding import BOS_ID, EOS_ID
from scratch.encoder_decoder import TransformerConfig, check_tokens, init_transformer, parameter_shapes, source_mask
from scratch.layers import dropout_forward
from scratch.transformer import (DECODER_LAYER_NAMES, ENCODER_LAYER_NAMES, FF_PARAM_NAMES, _check_layer_params,
                                 check_decoder_layer_inputs, check_encoder_layer_inputs, prefixed)
from scratch.validate import check_multi_head_attention_inputs

__all__ = [
    "positional_encoding", "layer_norm_forward", "layer_norm_backward", "feed_forward_forward", "feed_forward_backward",
    "encoder_layer_forward", "encoder_layer_backward", "decoder_layer_forward", "decoder_layer_backward",
    "cross_entropy_forward", "cross_entropy_backward", "TransformerConfig", "parameter_shapes", "init_transformer",
    "transformer_forward", "transformer_backward", "ENCODER_LAYER_NAMES", "DECODER_LAYER_NAMES",
    "to_torch_encoder_layer", "from_torch_encoder_layer", "to_torch_decoder_layer", "from_torch_decoder_layer",
    "TorchTransformer", "to_torch_transformer", "from_torch_transformer",
]


def positional_encoding(t, d_model, dtype=np.float64):
    """(t, d_model) sinusoids: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)."""
    check_positional_encoding_args(t, d_model)
    # §3.5, Vaswani et al. 2017: column pair (2i, 2i+1) is a sinusoid of wavelength 2π·10000^(2i/d)
    pos = torch.arange(t, dtype=torch.float64)[:, None]  # (t, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (⌈d/2⌉,)
    angle = pos / 10000.0 ** (two_i / d_model)  # (t, ⌈d/2⌉)
    pe = torch.zeros(t, d_model, dtype=torch.float64)  # (t, D)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # an odd d has one fewer cos column
    return pe.numpy().astype(dtype)


# ----------------------------------------------------------------------------------------------
# The building blocks on tensors (shared by the functions below and by nothing else)
# ----------------------------------------------------------------------------------------------


def _layer_norm(x, gamma, beta, eps=1e-5):
    # Ba et al. 2016: LayerNorm(x) = γ ⊙ (x − μ) / √(σ² + ε) + β, statistics over the last axis
    mu = x.mean(dim=-1, keepdim=True)  # (..., 1)
    centred = x - mu  # (..., D)
    var = (centred * centred).mean(dim=-1, keepdim=True)  # (..., 1), biased: divides by D
    return gamma * (centred / torch.sqrt(var + eps)) + beta  # (..., D)


def _feed_forward(x, p):
    # Eq. (2): FFN(x) = max(0, x W1 + b1) W2 + b2
    return torch.relu(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]  # (..., D)


def _multi_head(x_q, x_kv, p, num_heads, mask):
    """MultiHead(x_q, x_kv) as ports/torch/attention.py computes it; mask a bool tensor (B, Tq, Tk) or None."""
    q = split_heads(x_q @ p["W_q"] + p["b_q"], num_heads)  # (B, H, Tq, Dh)
    k = split_heads(x_kv @ p["W_k"] + p["b_k"], num_heads)  # (B, H, Tk, Dh)
    v = split_heads(x_kv @ p["W_v"] + p["b_v"], num_heads)  # (B, H, Tk, Dh)
    heads = merge_heads(_attention(q, k, v, None if mask is None else mask[..., None, :, :]))  # (B, Tq, D)
    return heads @ p["W_o"] + p["b_o"]  # (B, Tq, D)


def _dropout(x, p, rng):
    """Inverted dropout with the mask scratch draws from `rng` (the same entries dropped, scaled alike)."""
    _, keep = dropout_forward(np.ones(tuple(x.shape), _numpy_dtype(x)), p, rng)
    return x if keep is None else x * torch.from_numpy(keep)


def _numpy_dtype(t):
    return torch.empty(0, dtype=t.dtype).numpy().dtype


def _sublayer(x, f, gamma, beta, norm_first, dropout, rng):
    """Post-norm LN(x + Dropout(f(x))) or pre-norm x + Dropout(f(LN(x)))."""
    if norm_first:
        return x + _dropout(f(_layer_norm(x, gamma, beta)), dropout, rng)  # (B, T, D)
    return _layer_norm(x + _dropout(f(x), dropout, rng), gamma, beta)  # (B, T, D)


def _encoder_layer(x, p, num_heads, mask, norm_first, dropout, rng):
    attn, ff = prefixed(p, "attn."), prefixed(p, "ff.")
    h = _sublayer(x, lambda a: _multi_head(a, a, attn, num_heads, mask), p["ln1.gamma"], p["ln1.beta"],
                  norm_first, dropout, rng)  # (B, S, D)
    return _sublayer(h, lambda a: _feed_forward(a, ff), p["ln2.gamma"], p["ln2.beta"], norm_first, dropout, rng)


def _decoder_layer(y, memory, p, num_heads, self_mask, memory_mask, norm_first, dropout, rng):
    self_attn, cross_attn, ff = prefixed(p, "self_attn."), prefixed(p, "cross_attn."), prefixed(p, "ff.")
    h1 = _sublayer(y, lambda a: _multi_head(a, a, self_attn, num_heads, self_mask), p["ln1.gamma"], p["ln1.beta"],
                   norm_first, dropout, rng)  # (B, T, D)
    # queries from the decoder, keys and values from the encoder
    h2 = _sublayer(h1, lambda a: _multi_head(a, memory, cross_attn, num_heads, memory_mask), p["ln2.gamma"],
                   p["ln2.beta"], norm_first, dropout, rng)  # (B, T, D)
    return _sublayer(h2, lambda a: _feed_forward(a, ff), p["ln3.gamma"], p["ln3.beta"], norm_first, dropout, rng)


def _bool_mask(mask):
    return None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))


def _leaves(params, names):
    return {name: _leaf(np.asarray(params[name])) for name in names}


# ----------------------------------------------------------------------------------------------
# Layer normalisation and the feed-forward block
# ----------------------------------------------------------------------------------------------


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """LayerNorm(x) = γ ⊙ (x − μ) / √(σ² + ε) + β over the last axis (biased σ², as PyTorch)."""
    x, gamma, beta = check_layer_norm_inputs(x, gamma, beta)
    inputs = (_leaf(x), _leaf(gamma), _leaf(beta))
    y = _layer_norm(*inputs, eps)
    return y.detach().numpy(), Cache(inputs, y)


def layer_norm_backward(dout, cache):
    """Return (dx, dgamma, dbeta)."""
    dx, dgamma, dbeta = _gradients(dout, cache)
    return dx, dgamma, dbeta


def feed_forward_forward(x, params):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, Eq. (2): the same two linear maps at every position."""
    x = check_feed_forward_inputs(x, params)
    p = _leaves(params, FF_PARAM_NAMES)
    xt = _leaf(x)
    y = _feed_forward(xt, p)
    return y.detach().numpy(), Cache((xt, *p.values()), y)


def feed_forward_backward(dout, cache):
    """Return (dx, grads) with grads keyed W1 b1 W2 b2."""
    dx, *grads = _gradients(dout, cache)
    return dx, dict(zip(FF_PARAM_NAMES, grads))


# ----------------------------------------------------------------------------------------------
# The encoder and decoder layers
# ----------------------------------------------------------------------------------------------


def encoder_layer_forward(x, params, num_heads, mask=None, norm_first=False, dropout=0.0, rng=None):
    """One encoder layer, §3.1: self-attention, then the feed-forward block, each residual and normalised.

    x (B, S, D); `mask` broadcastable to (B, S, S), True where a position may attend (padding: False).
    """
    x = check_encoder_layer_inputs(x, params)
    _, _, _, mask = check_multi_head_attention_inputs(x, x, prefixed(params, "attn."), num_heads, mask)
    xt, p = _leaf(x), _leaves(params, ENCODER_LAYER_NAMES)
    y = _encoder_layer(xt, p, num_heads, _bool_mask(mask), norm_first, dropout, rng)  # (B, S, D)
    return y.detach().numpy(), Cache((xt, *p.values()), y)


def encoder_layer_backward(dout, cache):
    """Return (dx, grads) with grads keyed like the layer's params."""
    dx, *grads = _gradients(dout, cache)
    return dx, dict(zip(ENCODER_LAYER_NAMES, grads))


def decoder_layer_forward(y, memory, params, num_heads, self_mask=None, memory_mask=None, norm_first=False,
                          dropout=0.0, rng=None):
    """One decoder layer, §3.1: masked self-attention, attention over the encoder's output, feed-forward.

    y (B, T, D) the target so far, memory (B, S, D) the encoder's output; `self_mask` broadcastable
    to (B, T, T) (causal: position i sees j ≤ i), `memory_mask` to (B, T, S) (source padding).
    """
    y, memory = check_decoder_layer_inputs(y, memory, params)
    _, _, _, self_mask = check_multi_head_attention_inputs(y, y, prefixed(params, "self_attn."), num_heads, self_mask)
    _, _, _, memory_mask = check_multi_head_attention_inputs(y, memory, prefixed(params, "cross_attn."), num_heads,
                                                             memory_mask)
    yt, mt, p = _leaf(y), _leaf(memory), _leaves(params, DECODER_LAYER_NAMES)
    out = _decoder_layer(yt, mt, p, num_heads, _bool_mask(self_mask), _bool_mask(memory_mask), norm_first, dropout, rng)
    return out.detach().numpy(), Cache((yt, mt, *p.values()), out)


def decoder_layer_backward(dout, cache):
    """Return (dy, dmemory, grads) with grads keyed like the layer's params."""
    dy, dmemory, *grads = _gradients(dout, cache)
    return dy, dmemory, dict(zip(DECODER_LAYER_NAMES, grads))


# ----------------------------------------------------------------------------------------------
# Label-smoothed cross-entropy
# ----------------------------------------------------------------------------------------------


def _cross_entropy(logits, targets, counted, label_smoothing):
    """logits (N, V), targets (N,) int64 tensors, counted (N,) bool tensor."""
    eps = float(label_smoothing)
    log_probs = torch.log_softmax(logits, dim=-1)  # (N, V)
    t = torch.where(counted, targets, torch.zeros_like(targets))  # ignored positions point at any valid class
    # −Σ_v q_v log p_v = (1 − ε)(−log p_t) + ε · mean_v(−log p_v),  q = (1 − ε)·one-hot + ε/V
    per_position = -(1.0 - eps) * log_probs.gather(-1, t[:, None])[:, 0] - eps * log_probs.mean(dim=-1)  # (N,)
    n = int(counted.sum())
    # a mean over the counted positions; with none counted 0, not 0/0 (torch's own mean gives NaN there)
    return (per_position * counted.to(logits.dtype)).sum() / max(n, 1)


def cross_entropy_forward(logits, targets, label_smoothing=0.0, ignore_index=None):
    """Mean over the counted targets of −Σ_v q_v log p_v, q = (1 − ε)·one-hot(target) + ε/V.

    logits (..., V), targets integers (...); a target equal to `ignore_index` counts for nothing;
    with nothing counted the loss is 0 and so is its gradient.
    """
    logits, targets, counted = check_cross_entropy_inputs(logits, targets, label_smoothing, ignore_index)
    v = logits.shape[-1]
    z = _leaf(logits)
    loss = _cross_entropy(z.reshape(-1, v), torch.from_numpy(targets.reshape(-1).astype(np.int64)),
                          torch.from_numpy(counted.reshape(-1)), label_smoothing)
    return loss.detach().numpy()[()], Cache((z,), loss)


def cross_entropy_backward(dout, cache):
    """Return dlogits (..., V)."""
    (dlogits,) = _gradients(dout, cache)
    return dlogits


# ----------------------------------------------------------------------------------------------
# The encoder-decoder model as a function of a scratch parameter dict
# ----------------------------------------------------------------------------------------------


def _embed(ids, table, dropout, rng):
    # §3.4, §3.5: x = E[ids] · √D + PE, then dropout
    d = table.shape[1]
    pe = torch.from_numpy(positional_encoding(ids.shape[1], d, _numpy_dtype(table)))  # (T, D)
    return _dropout(table[ids] * math.sqrt(d) + pe, dropout, rng)  # (B, T, D)


def _encode(src, p, config, rng):
    dropout = config.dropout if rng is not None else 0.0
    mask = torch.from_numpy(source_mask(src, config.pad_id))  # (B, 1, S)
    x = _embed(torch.from_numpy(src.astype(np.int64)), p["src_embed"], dropout, rng)  # (B, S, D)
    for i in range(config.num_layers):
        x = _encoder_layer(x, prefixed(p, f"enc.{i}."), config.num_heads, mask, config.norm_first, dropout, rng)
    if config.norm_first:  # pre-norm leaves the stack's output unnormalised: one more LN
        x = _layer_norm(x, p["enc.ln.gamma"], p["enc.ln.beta"])
    return x  # (B, S, D)


def _decode(tgt_in, memory, src, p, config, rng):
    dropout = config.dropout if rng is not None else 0.0
    self_mask = torch.from_numpy(causal_mask(tgt_in.shape[1]))  # (T, T)
    memory_mask = torch.from_numpy(source_mask(src, config.pad_id))  # (B, 1, S)
    y = _embed(torch.from_numpy(tgt_in.astype(np.int64)), p["tgt_embed"], dropout, rng)  # (B, T, D)
    for i in range(config.num_layers):
        y = _decoder_layer(y, memory, prefixed(p, f"dec.{i}."), config.num_heads, self_mask, memory_mask,
                           config.norm_first, dropout, rng)  # (B, T, D)
    if config.norm_first:
        y = _layer_norm(y, p["dec.ln.gamma"], p["dec.ln.beta"])
    w_out = p["tgt_embed"].T if config.tie_output else p["out.W"]  # (D, V), §3.4 weight tying
    return y @ w_out + p["out.b"]  # (B, T, V)


def transformer_forward(src, tgt_in, params, config, rng=None):
    """logits (B, T, V_tgt) for source ids (B, S) and target ids (B, T) shifted right (BOS first).

    `rng`, a np.random.Generator, turns dropout on (scratch's masks); None turns it off.
    """
    src = check_tokens("src", src, config, config.src_vocab)
    tgt_in = check_tokens("tgt_in", tgt_in, config, config.tgt_vocab)
    if src.shape[0] != tgt_in.shape[0]:
        raise ValueError(f"src {src.shape} and tgt_in {tgt_in.shape} must share the batch axis B")
    check_transformer_params(params, config)
    p = _leaves(params, parameter_shapes(config))
    memory = _encode(src, p, config, rng)  # (B, S, D)
    logits = _decode(tgt_in, memory, src, p, config, rng)  # (B, T, V)
    return logits.detach().numpy(), (Cache(tuple(p.values()), logits), list(p))


def transformer_backward(dlogits, cache):
    """grads keyed like params, from dlogits (B, T, V_tgt)."""
    cache, names = cache
    return dict(zip(names, _gradients(dlogits, cache)))


# ----------------------------------------------------------------------------------------------
# PyTorch's own layers: torch.nn.TransformerEncoderLayer and TransformerDecoderLayer
# ----------------------------------------------------------------------------------------------
# torch keeps a Linear's weight as (out, in), y = x Wᵀ + b: every scratch (in, out) matrix is
# transposed on the way in and out. LayerNorm's weight and bias are γ and β.


def _torch_dtype(params, name):
    return torch.from_numpy(np.asarray(params[name])).dtype


def _copy_into(layer, params, attentions):
    """Copy a scratch layer's params into a torch encoder or decoder layer, in place.

    attentions: (scratch prefix, torch attribute) of each attention sub-layer; the norms are
    ln1, ln2, … in scratch and norm1, norm2, … in torch, in the same order.
    """
    t = lambda name: torch.from_numpy(np.asarray(params[name]))  # noqa: E731
    with torch.no_grad():
        for prefix, attribute in attentions:
            mha = to_torch_multi_head_attention(prefixed(params, prefix), getattr(layer, attribute).num_heads)
            getattr(layer, attribute).load_state_dict(mha.state_dict())
        for i in range(1, len(attentions) + 2):
            getattr(layer, f"norm{i}").weight.copy_(t(f"ln{i}.gamma"))
            getattr(layer, f"norm{i}").bias.copy_(t(f"ln{i}.beta"))
        layer.linear1.weight.copy_(t("ff.W1").T)  # (F, D)
        layer.linear1.bias.copy_(t("ff.b1"))
        layer.linear2.weight.copy_(t("ff.W2").T)  # (D, F)
        layer.linear2.bias.copy_(t("ff.b2"))


def _copy_out(layer, attentions, names):
    params = {}
    for prefix, attribute in attentions:
        params.update({prefix + k: v for k, v in from_torch_multi_head_attention(getattr(layer, attribute)).items()})
    for i in range(1, len(attentions) + 2):
        params[f"ln{i}.gamma"] = getattr(layer, f"norm{i}").weight.detach().numpy().copy()
        params[f"ln{i}.beta"] = getattr(layer, f"norm{i}").bias.detach().numpy().copy()
    for name, linear in (("1", layer.linear1), ("2", layer.linear2)):
        params[f"ff.W{name}"] = linear.weight.detach().T.contiguous().numpy().copy()  # (in, out)
        params[f"ff.b{name}"] = linear.bias.detach().numpy().copy()
    return {name: params[name] for name in names}


ENCODER_ATTENTIONS = (("attn.", "self_attn"),)
DECODER_ATTENTIONS = (("self_attn.", "self_attn"), ("cross_attn.", "multihead_attn"))


def _layer_kwargs(params, num_heads, norm_first):
    d, f = np.asarray(params["ff.W1"]).shape
    return dict(d_model=d, nhead=num_heads, dim_feedforward=f, dropout=0.0, activation="relu", layer_norm_eps=1e-5,
                batch_first=True, norm_first=norm_first, dtype=_torch_dtype(params, "ff.W1"))


def to_torch_encoder_layer(params, num_heads, norm_first=False):
    """A `torch.nn.TransformerEncoderLayer(batch_first=True)` computing what scratch's encoder layer does."""
    _check_layer_params(params, ENCODER_LAYER_NAMES, np.asarray(params["ff.W1"]).shape[0])
    layer = nn.TransformerEncoderLayer(**_layer_kwargs(params, num_heads, norm_first))
    _copy_into(layer, params, ENCODER_ATTENTIONS)
    return layer


def from_torch_encoder_layer(layer):
    """The scratch parameter dict of a `torch.nn.TransformerEncoderLayer` (the inverse of the above)."""
    return _copy_out(layer, ENCODER_ATTENTIONS, ENCODER_LAYER_NAMES)


def to_torch_decoder_layer(params, num_heads, norm_first=False):
    """A `torch.nn.TransformerDecoderLayer(batch_first=True)`: self_attn, multihead_attn (the cross-attention),
    norm1/2/3, linear1/2."""
    _check_layer_params(params, DECODER_LAYER_NAMES, np.asarray(params["ff.W1"]).shape[0])
    layer = nn.TransformerDecoderLayer(**_layer_kwargs(params, num_heads, norm_first))
    _copy_into(layer, params, DECODER_ATTENTIONS)
    return layer


def from_torch_decoder_layer(layer):
    """The scratch parameter dict of a `torch.nn.TransformerDecoderLayer`."""
    return _copy_out(layer, DECODER_ATTENTIONS, DECODER_LAYER_NAMES)


# ----------------------------------------------------------------------------------------------
# The whole model around torch.nn.Transformer
# ----------------------------------------------------------------------------------------------


class TorchTransformer(nn.Module):
    """The encoder-decoder of scratch/encoder_decoder.py built from PyTorch's own modules.

    `torch.nn.Transformer` holds the two stacks, given as custom `nn.TransformerEncoder` and
    `nn.TransformerDecoder`: with post-norm (the paper) they end in no LayerNorm (`norm=None`;
    nn.Transformer's default stacks would add one); with pre-norm their final LayerNorms are
    scratch's enc.ln and dec.ln. Around them: the two `nn.Embedding`s, scaled by √D, plus the
    sinusoidal positional encoding (a buffer of max_len rows), and the output `nn.Linear`, whose
    weight *is* the target embedding when `config.tie_output` (an nn.Linear weight is (V, D),
    exactly the embedding table's layout).

    forward(src (B, S), tgt_in (B, T) int64) → logits (B, T, V_tgt); `encode`, `decode` and
    `greedy_decode` for translating.

    Masks. torch's boolean masks mean True = *blocked*, ours True = may attend, so each is
    the complement of scratch's: src_key_padding_mask = memory_key_padding_mask = (src == pad)
    (scratch: source_mask = src != pad), tgt_mask = ~causal_mask(T) (True above the diagonal).
    A source made only of padding leaves every query no key: scratch's attention returns 0 there,
    and so does torch's in train mode; in eval mode a pre-norm encoder's fused layers return NaN.

    Evaluation mode. With `module.eval()` and no gradient recorded, nn.TransformerEncoder takes
    its "fast path": a post-norm stack given a padding mask packs the batch into a nested
    tensor and its output (the memory) is exactly 0 at padded source positions, where scratch's
    memory holds numbers. Nothing reads them (the cross-attention masks the same positions), so
    the logits agree with scratch's in both modes: checks/test_transformer_frameworks.py
    compares train mode (dropout 0, gradients) and eval mode (the fast path) to scratch.
    """

    def __init__(self, config, dtype=torch.float32):
        super().__init__()
        self.config = config
        d, h, f, n = config.d_model, config.num_heads, config.d_ff, config.num_layers
        layer = dict(d_model=d, nhead=h, dim_feedforward=f, dropout=config.dropout, activation="relu",
                     layer_norm_eps=1e-5, batch_first=True, norm_first=config.norm_first, dtype=dtype)
        final_norm = (lambda: nn.LayerNorm(d, eps=1e-5, dtype=dtype)) if config.norm_first else (lambda: None)
        # (a pre-norm stack cannot take the nested-tensor path; saying so up front spares torch's warning)
        encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), n, norm=final_norm(),
                                        enable_nested_tensor=not config.norm_first)
        decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), n, norm=final_norm())
        # §5.4 drops out each sub-layer's output and the embedded input, as scratch does. torch's layers
        # also drop attention weights and the feed-forward block's hidden units: those two are switched
        # off, so that with dropout on this is still scratch's model (torch's masks, not scratch's).
        for layer in (*encoder.layers, *decoder.layers):
            layer.dropout = nn.Identity()  # between linear1 and linear2
            for attention in (layer.self_attn, getattr(layer, "multihead_attn", None)):
                if attention is not None:
                    attention.dropout = 0.0
        self.transformer = nn.Transformer(d, h, custom_encoder=encoder, custom_decoder=decoder, batch_first=True,
                                          dtype=dtype)
        self.src_embed = nn.Embedding(config.src_vocab, d, dtype=dtype)
        self.tgt_embed = nn.Embedding(config.tgt_vocab, d, dtype=dtype)
        self.register_buffer("pe", torch.from_numpy(positional_encoding(config.max_len, d)).to(dtype))  # (max_len, D)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(d, config.tgt_vocab, dtype=dtype)
        if config.tie_output:
            self.out.weight = self.tgt_embed.weight  # one Parameter, two uses: its gradient is their sum

    def embed(self, ids, embedding):
        """x = Dropout(E[ids] · √D + PE) (§3.4, §3.5, §5.4): (B, T) → (B, T, D)."""
        return self.dropout(embedding(ids) * math.sqrt(self.config.d_model) + self.pe[: ids.shape[1]])

    def masks(self, src, t):
        """torch's masks (True = blocked) for source ids (B, S) and T target positions."""
        padding = src == self.config.pad_id  # (B, S), the complement of scratch's source_mask
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=src.device), diagonal=1)  # (T, T) = ~causal_mask
        return padding, causal

    def encode(self, src):
        """memory (B, S, D) for source ids (B, S)."""
        padding, _ = self.masks(src, 0)
        return self.transformer.encoder(self.embed(src, self.src_embed), src_key_padding_mask=padding)

    def decode(self, tgt_in, memory, src):
        """logits (B, T, V) for target ids (B, T), the memory (B, S, D) and its source ids (B, S)."""
        padding, causal = self.masks(src, tgt_in.shape[1])
        h = self.transformer.decoder(self.embed(tgt_in, self.tgt_embed), memory, tgt_mask=causal,
                                     memory_key_padding_mask=padding)  # (B, T, D)
        return self.out(h)  # (B, T, V)

    def forward(self, src, tgt_in):
        padding, causal = self.masks(src, tgt_in.shape[1])
        h = self.transformer(self.embed(src, self.src_embed), self.embed(tgt_in, self.tgt_embed), tgt_mask=causal,
                             src_key_padding_mask=padding, memory_key_padding_mask=padding)  # (B, T, D)
        return self.out(h)  # (B, T, V)

    @torch.no_grad()
    def greedy_decode(self, src, max_len=None):
        """(B, L) target ids as scratch/decoding.py's greedy_decode returns them (BOS dropped, EOS kept,
        padding after it), the decoder re-run on the whole prefix at each step (torch's decoder keeps
        no key/value cache). Call it in eval mode."""
        max_len = self.config.max_len if max_len is None else max_len
        memory = self.encode(src)  # (B, S, D)
        tgt = torch.full((src.shape[0], 1), BOS_ID, dtype=torch.int64, device=src.device)  # (B, 1)
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            nxt = self.decode(tgt, memory, src)[:, -1].argmax(dim=-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, self.config.pad_id), nxt)
            tgt = torch.cat([tgt, nxt[:, None]], dim=1)
            done |= nxt == EOS_ID
            if bool(done.all()):
                break
        return tgt[:, 1:]


def to_torch_transformer(params, config):
    """A `TorchTransformer` holding copies of a scratch parameter dict (same dtype)."""
    check_transformer_params(params, config)
    dtype = _torch_dtype(params, "src_embed")
    module = TorchTransformer(config, dtype)
    t = lambda name: torch.from_numpy(np.asarray(params[name]))  # noqa: E731
    with torch.no_grad():
        module.src_embed.weight.copy_(t("src_embed"))
        module.tgt_embed.weight.copy_(t("tgt_embed"))  # also the output weight when tied
        stacks = (("enc", module.transformer.encoder, ENCODER_ATTENTIONS),
                  ("dec", module.transformer.decoder, DECODER_ATTENTIONS))
        for stack, torch_stack, attentions in stacks:
            for i, layer in enumerate(torch_stack.layers):
                _copy_into(layer, prefixed(params, f"{stack}.{i}."), attentions)
            if config.norm_first:
                torch_stack.norm.weight.copy_(t(f"{stack}.ln.gamma"))
                torch_stack.norm.bias.copy_(t(f"{stack}.ln.beta"))
        if not config.tie_output:
            module.out.weight.copy_(t("out.W").T)  # (V, D)
        module.out.bias.copy_(t("out.b"))
    return module


def from_torch_transformer(module):
    """The scratch parameter dict of a `TorchTransformer`, in parameter_shapes order."""
    config = module.config
    copy = lambda tensor: tensor.detach().contiguous().numpy().copy()  # noqa: E731
    params = {"src_embed": copy(module.src_embed.weight), "tgt_embed": copy(module.tgt_embed.weight),
              "out.b": copy(module.out.bias)}
    stacks = (("enc", module.transformer.encoder, ENCODER_ATTENTIONS, ENCODER_LAYER_NAMES),
              ("dec", module.transformer.decoder, DECODER_ATTENTIONS, DECODER_LAYER_NAMES))
    for stack, torch_stack, attentions, names in stacks:
        for i, layer in enumerate(torch_stack.layers):
            params.update({f"{stack}.{i}.{k}": v for k, v in _copy_out(layer, attentions, names).items()})
        if config.norm_first:
            params[f"{stack}.ln.gamma"] = copy(torch_stack.norm.weight)
            params[f"{stack}.ln.beta"] = copy(torch_stack.norm.bias)
    if not config.tie_output:
        params["out.W"] = copy(module.out.weight.T)  # (D, V)
    return {name: params[name] for name in parameter_shapes(config)}
