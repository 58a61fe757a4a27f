"""The encoder-decoder Transformer (Vaswani et al. 2017, Figure 1) in NumPy, forward and backward.

Shape letters: B batch, S source positions, T target positions, V vocabulary, D model width.

    memory = Encoder(E_src[src] · √D + PE)                   N encoder layers (scratch/transformer.py)
    h      = Decoder(E_tgt[tgt_in] · √D + PE, memory)        N decoder layers
    logits = h W_out + b_out                                  W_out = E_tgtᵀ when the output is tied

The parameters are one flat dict: "src_embed" (V_src, D), "tgt_embed" (V_tgt, D),
"enc.{i}.<encoder layer name>", "dec.{i}.<decoder layer name>", "out.W" (D, V_tgt) unless tied,
"out.b" (V_tgt,), and with pre-norm the final norms "enc.ln.gamma/beta", "dec.ln.gamma/beta".
Token id 0 is padding: source padding is masked out of every attention over the source, and the
decoder is causal, so a real target position never sees the padding after it.
"""

import math
from typing import NamedTuple

import numpy as np

from scratch.attention import causal_mask, init_multi_head_attention
from scratch.layers import dropout_backward, dropout_forward, embedding_backward, embedding_forward
from scratch.transformer import (
    DECODER_LAYER_NAMES,
    ENCODER_LAYER_NAMES,
    decoder_layer_backward,
    decoder_layer_forward,
    encoder_layer_backward,
    encoder_layer_forward,
    layer_norm_backward,
    layer_norm_forward,
    positional_encoding,
    prefixed,
)
from scratch.validate import as_float_array, check_same_dtype, check_shape


ATTENTION_KINDS = ("plain", "flash")


class TransformerConfig(NamedTuple):
    src_vocab: int
    tgt_vocab: int
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 256
    num_layers: int = 2
    max_len: int = 32  # the longest source or target sequence, special tokens included
    norm_first: bool = False  # False: post-norm (the paper); True: pre-norm
    tie_output: bool = False  # True: the output projection is the target embedding, transposed
    dropout: float = 0.0
    pad_id: int = 0
    # "flash": the decoder's causal self-attention by FlashAttention (scratch/flash_attention.py); the encoder's
    # self-attention and the cross-attention mask the source padding, an arbitrary mask, so they stay plain
    attention: str = "plain"


def parameter_shapes(config):
    """{name: shape} of every parameter, in a fixed order (the checkpoint's and the converters')."""
    d, f = config.d_model, config.d_ff
    shapes = {"src_embed": (config.src_vocab, d), "tgt_embed": (config.tgt_vocab, d)}
    for stack, names in (("enc", ENCODER_LAYER_NAMES), ("dec", DECODER_LAYER_NAMES)):
        for i in range(config.num_layers):
            for name in names:
                leaf = name.rsplit(".", 1)[-1]
                shape = {"W1": (d, f), "b1": (f,), "W2": (f, d)}.get(leaf, (d, d) if leaf.startswith("W") else (d,))
                shapes[f"{stack}.{i}.{name}"] = shape
        if config.norm_first:
            shapes[f"{stack}.ln.gamma"] = shapes[f"{stack}.ln.beta"] = (d,)
    if not config.tie_output:
        shapes["out.W"] = (d, config.tgt_vocab)
    shapes["out.b"] = (config.tgt_vocab,)
    return shapes


def init_transformer(config, rng, dtype=np.float64):
    """Embeddings N(0, 1/D) (so that E·√D has unit variance), Glorot-uniform weights, zero biases, γ = 1."""
    params = {}
    for name, shape in parameter_shapes(config).items():
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("_embed"):
            params[name] = rng.normal(0.0, config.d_model**-0.5, size=shape)
        elif leaf == "gamma":
            params[name] = np.ones(shape)
        elif leaf.startswith("W") and len(shape) == 2:
            limit = math.sqrt(6.0 / (shape[0] + shape[1]))
            params[name] = rng.uniform(-limit, limit, size=shape)
        else:
            params[name] = np.zeros(shape)
    return {name: p.astype(dtype) for name, p in params.items()}


def check_tokens(name, ids, config, vocab):
    """Token ids (B, T) of an integer dtype, in [0, vocab), with 1 ≤ T ≤ max_len."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu" or ids.ndim != 2:
        raise ValueError(f"{name} must be a (B, T) integer array of token ids, got dtype {ids.dtype} with shape {ids.shape}")
    if not 1 <= ids.shape[1] <= config.max_len:
        raise ValueError(f"{name} has {ids.shape[1]} positions (shape {ids.shape}); the model takes 1 to "
                         f"max_len = {config.max_len}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"{name} must hold ids in [0, {vocab}), got values in [{ids.min()}, {ids.max()}]")
    return ids


def check_transformer_params(params, config):
    """Every name of parameter_shapes(config), floating, of its shape, all of one dtype; returns the dtype.

    Checked up front, so that nothing is computed from a malformed dict (the layers would meet a
    missing name only halfway through the forward).
    """
    expected = parameter_shapes(config)
    missing = [name for name in expected if name not in params]
    if missing:
        raise ValueError(f"params is missing {missing}")
    for name, shape in expected.items():
        check_shape(f"params[{name!r}]", as_float_array(f"params[{name!r}]", params[name]), shape)
    check_same_dtype(**{name.replace(".", "_"): np.asarray(params[name]) for name in expected})
    return np.asarray(params["src_embed"]).dtype


def embed_forward(ids, table, dropout, rng):
    """x = E[ids] · √D + PE, then dropout (§3.4, §5.4): (B, T) ids → (B, T, D)."""
    d = table.shape[1]
    e, embed_cache = embedding_forward(ids, table)  # (B, T, D)
    x = e * math.sqrt(d) + positional_encoding(ids.shape[1], d, table.dtype)  # (B, T, D)
    x, drop_cache = dropout_forward(x, dropout, rng)
    return x, (embed_cache, drop_cache, math.sqrt(d))


def embed_backward(dout, cache):
    embed_cache, drop_cache, scale = cache
    # x = E[ids]·√D + PE  ⇒  dE[v] = √D · Σ_{positions with id v} dx  (PE is a constant)
    return embedding_backward(dropout_backward(dout, drop_cache) * scale, embed_cache)


def source_mask(src, pad_id):
    """(B, 1, S), True at real source tokens: broadcasts over every query row."""
    return (src != pad_id)[:, None, :]


def encode_forward(src, params, config, rng=None):
    """memory (B, S, D) from source ids (B, S)."""
    dropout = config.dropout if rng is not None else 0.0
    mask = source_mask(src, config.pad_id)  # (B, 1, S)
    x, embed_cache = embed_forward(src, params["src_embed"], dropout, rng)  # (B, S, D)
    caches = []
    for i in range(config.num_layers):
        x, c = encoder_layer_forward(x, prefixed(params, f"enc.{i}."), config.num_heads, mask,
                                     config.norm_first, dropout, rng)  # (B, S, D)
        caches.append(c)
    norm_cache = None
    if config.norm_first:  # pre-norm leaves the stack's output unnormalised: one more LN
        x, norm_cache = layer_norm_forward(x, params["enc.ln.gamma"], params["enc.ln.beta"])
    return x, (embed_cache, caches, norm_cache)


def encode_backward(dmemory, cache, grads):
    """Add the encoder's gradients to `grads`."""
    embed_cache, caches, norm_cache = cache
    dx = dmemory
    if norm_cache is not None:
        dx, grads["enc.ln.gamma"], grads["enc.ln.beta"] = layer_norm_backward(dx, norm_cache)
    for i in reversed(range(len(caches))):
        dx, g = encoder_layer_backward(dx, caches[i])  # (B, S, D)
        grads.update({f"enc.{i}.{k}": v for k, v in g.items()})
    grads["src_embed"] = embed_backward(dx, embed_cache)


def output_weight(params, config):
    """W_out (D, V_tgt): its own matrix, or the target embedding transposed (§3.4, weight tying)."""
    return params["tgt_embed"].T if config.tie_output else params["out.W"]


def decode_forward(tgt_in, memory, src, params, config, rng=None):
    """logits (B, T, V_tgt) for target ids (B, T) that start with BOS, given memory (B, S, D)."""
    dropout = config.dropout if rng is not None else 0.0
    flash = config.attention == "flash"  # causal by construction, no mask array
    self_mask = None if flash else causal_mask(tgt_in.shape[1])  # (T, T), position i sees j ≤ i
    memory_mask = source_mask(src, config.pad_id)  # (B, 1, S)
    y, embed_cache = embed_forward(tgt_in, params["tgt_embed"], dropout, rng)  # (B, T, D)
    caches = []
    for i in range(config.num_layers):
        y, c = decoder_layer_forward(y, memory, prefixed(params, f"dec.{i}."), config.num_heads, self_mask,
                                     memory_mask, config.norm_first, dropout, rng, config.attention)  # (B, T, D)
        caches.append(c)
    norm_cache = None
    if config.norm_first:
        y, norm_cache = layer_norm_forward(y, params["dec.ln.gamma"], params["dec.ln.beta"])
    logits = y @ output_weight(params, config) + params["out.b"]  # (B, T, V)
    return logits, (embed_cache, caches, norm_cache, y)


def decode_backward(dlogits, cache, params, config, grads):
    """Add the decoder's gradients to `grads`; return dmemory (B, S, D)."""
    embed_cache, caches, norm_cache, y = cache
    # logits = y W + b  ⇒  dy = dlogits Wᵀ, dW = yᵀ dlogits, db = Σ dlogits
    rows = dlogits.reshape(-1, dlogits.shape[-1])  # (B·T, V)
    dW = y.reshape(-1, y.shape[-1]).T @ rows  # (D, V)
    grads["out.b"] = rows.sum(axis=0)
    dy = dlogits @ output_weight(params, config).T  # (B, T, D)
    if norm_cache is not None:
        dy, grads["dec.ln.gamma"], grads["dec.ln.beta"] = layer_norm_backward(dy, norm_cache)
    dmemory = 0.0
    for i in reversed(range(len(caches))):
        dy, dm, g = decoder_layer_backward(dy, caches[i])  # every layer reads the same memory: add them up
        dmemory = dmemory + dm  # (B, S, D)
        grads.update({f"dec.{i}.{k}": v for k, v in g.items()})
    grads["tgt_embed"] = embed_backward(dy, embed_cache)
    if config.tie_output:
        grads["tgt_embed"] += dW.T  # the tied matrix gets both of its gradients
    else:
        grads["out.W"] = dW
    return dmemory


def transformer_forward(src, tgt_in, params, config, rng=None):
    """logits (B, T, V_tgt) for source ids (B, S) and target ids (B, T) shifted right (BOS first).

    `rng`, a np.random.Generator, turns dropout on (training); None turns it off (evaluation).
    """
    check_transformer_params(params, config)
    if config.attention not in ATTENTION_KINDS:
        raise ValueError(f"config.attention must be one of {ATTENTION_KINDS}, got {config.attention!r}")
    src = check_tokens("src", src, config, config.src_vocab)
    tgt_in = check_tokens("tgt_in", tgt_in, config, config.tgt_vocab)
    if src.shape[0] != tgt_in.shape[0]:
        raise ValueError(f"src {src.shape} and tgt_in {tgt_in.shape} must share the batch axis B")
    memory, enc_cache = encode_forward(src, params, config, rng)  # (B, S, D)
    logits, dec_cache = decode_forward(tgt_in, memory, src, params, config, rng)  # (B, T, V)
    return logits, (params, config, enc_cache, dec_cache)


def transformer_backward(dlogits, cache):
    """grads keyed like params, from dlogits (B, T, V_tgt)."""
    params, config, enc_cache, dec_cache = cache
    grads = {}
    dmemory = decode_backward(dlogits, dec_cache, params, config, grads)
    encode_backward(dmemory, enc_cache, grads)
    return {name: grads[name] for name in params}


def attention_maps(cache):
    """The attention weights of a forward pass, (B, H, T_q, T_k) each: "enc.{i}.attn",
    "dec.{i}.self_attn" and "dec.{i}.cross_attn" (what the figures draw; not part of the math).
    With attention="flash" the decoder's self-attention keeps no (T, T) weights: "dec.{i}.self_attn" is absent."""
    _, config, (_, enc_caches, _), (_, dec_caches, _, _) = cache
    maps = {}
    for i, layer in enumerate(enc_caches):
        maps[f"enc.{i}.attn"] = layer[3][2].attention.weights  # layer cache → sub-layer 1 → its MHA cache
    for i, layer in enumerate(dec_caches):
        if hasattr(layer[3][2].attention, "weights"):
            maps[f"dec.{i}.self_attn"] = layer[3][2].attention.weights
        maps[f"dec.{i}.cross_attn"] = layer[4][2].attention.weights
    return maps
