"""GPT: the decoder-only Transformer in GPT-2's layout (Radford et al. 2019), forward and backward by hand.

Shape letters: B batch, T positions (≤ block_size), V vocabulary, D model width (d_model),
H heads, Dh = D / H, L layers (n_layer).

    x      = wte[tokens] + wpe[0 … T−1]                         token + learned position embeddings
    x      = x + attn(ln_1(x))                                  × L, pre-norm blocks, attention causal
    x      = x + mlp(ln_2(x)),   mlp(h) = gelu(h W1 + b1) W2 + b2
    logits = ln_f(x) wteᵀ                                       the output tied to the token embedding

The parameters are one flat dict (DESIGN.md): "wte" (V, D), "wpe" (block_size, D), per layer
"h.{i}.ln_1.gamma/beta", "h.{i}.attn.W_q … b_o" (scratch/attention.py's multi-head contract),
"h.{i}.ln_2.gamma/beta", "h.{i}.mlp.W1" (D, 4D), "h.{i}.mlp.b1", "h.{i}.mlp.W2" (4D, D),
"h.{i}.mlp.b2", and "ln_f.gamma/beta". Sampling filters are in scratch/sampling.py; cached
generation is at the end of this file.

GPT-2's choices, each for a reason:
  * pre-norm (x + f(LN(x)), GPT-2 §2.3): the residual path from the loss to the embeddings passes
    no normalisation, so gradients reach every layer at a similar size and training needs no long
    warm-up (Xiong et al. 2020); the price is the extra ln_f before the output.
  * GELU (Hendrycks and Gimpel 2016) in its tanh form, as GPT-2 computes it: smooth, unlike ReLU,
    and the tanh form is what its released weights were trained with.
  * learned position embeddings: positions stop at block_size, which is why generation does too.
  * the output tied to wte (Press and Wolf 2017): a token's input and output vectors are one.
"""

import math
from typing import NamedTuple

import numpy as np

from scratch.attention import (causal_mask, merge_heads, multi_head_attention_backward, multi_head_attention_forward,
                               scaled_dot_product_attention_forward, split_heads)
from scratch.flash_attention import (FlashAttentionCache, flash_multi_head_attention_backward,
                                     flash_multi_head_attention_forward)
from scratch.layers import gelu_backward, gelu_forward, linear_backward, linear_forward
from scratch.sampling import check_filters, filter_logits, sample  # noqa: F401 (filter_logits, sample: the contract)
from scratch.transformer import (cross_entropy_backward, cross_entropy_forward, layer_norm_backward, layer_norm_forward,
                                 prefixed)
from scratch.validate import MHA_PARAM_NAMES, as_float_array, check_same_dtype

ATTENTION_KINDS = ("plain", "flash")  # "flash": scratch/flash_attention.py, equal to "plain" to rounding


class GPTConfig(NamedTuple):
    vocab_size: int
    block_size: int  # the most positions the model reads at once (rows of wpe)
    n_layer: int
    n_head: int
    d_model: int
    attention: str = "plain"  # "plain" keeps the (B, H, T, T) weights; "flash" computes them in blocks, memory O(T)


def check_gpt_config(config):
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"config.{name} must be a positive int, got {value!r}")
    if config.d_model % config.n_head:
        raise ValueError(f"config.d_model = {config.d_model} must be divisible by config.n_head = {config.n_head}")
    if config.attention not in ATTENTION_KINDS:
        raise ValueError(f"config.attention must be one of {ATTENTION_KINDS}, got {config.attention!r}")
    return config


def layer_names(i):
    """The parameter names of block i, in the checkpoint's order."""
    return ([f"h.{i}.ln_1.gamma", f"h.{i}.ln_1.beta"] + [f"h.{i}.attn.{n}" for n in MHA_PARAM_NAMES]
            + [f"h.{i}.ln_2.gamma", f"h.{i}.ln_2.beta"] + [f"h.{i}.mlp.{n}" for n in ("W1", "b1", "W2", "b2")])


def parameter_shapes(config):
    """{name: shape} of every parameter, in a fixed order (the checkpoint's and the converters')."""
    check_gpt_config(config)
    d = config.d_model
    shapes = {"wte": (config.vocab_size, d), "wpe": (config.block_size, d)}
    for i in range(config.n_layer):
        for name in layer_names(i):
            leaf = name.rsplit(".", 1)[-1]
            shapes[name] = {"W1": (d, 4 * d), "b1": (4 * d,), "W2": (4 * d, d)}.get(leaf, (d, d) if leaf.startswith("W") else (d,))
    shapes["ln_f.gamma"] = shapes["ln_f.beta"] = (d,)
    return shapes


def init_gpt(config, rng, dtype=np.float64):
    """GPT-2's initialisation: weights and embeddings N(0, 0.02²), biases 0, layer-norm γ = 1, β = 0.

    The two projections that write into the residual stream, attn.W_o and mlp.W2, are scaled by
    1/√(2L) (GPT-2 §2.3): the stream is a sum of 2L such contributions, so each one's variance is
    cut by 2L and the sum's stays that of one, however deep the model.
    """
    params = {}
    for name, shape in parameter_shapes(config).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma":
            params[name] = np.ones(shape, dtype)
        elif leaf == "beta" or leaf.startswith("b"):
            params[name] = np.zeros(shape, dtype)
        else:
            std = 0.02 / math.sqrt(2 * config.n_layer) if leaf in ("W_o", "W2") else 0.02
            params[name] = rng.normal(0.0, std, size=shape).astype(dtype)
    return params


def check_gpt_inputs(tokens, params, config):
    """tokens (B, T) integers in [0, V), T ≤ block_size; every parameter present, shaped, one dtype."""
    check_gpt_config(config)
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must be a 2-D integer array of shape (B, T), got dtype {tokens.dtype} with shape {tokens.shape}")
    if tokens.shape[1] > config.block_size:
        raise ValueError(f"tokens has shape {tokens.shape}: T = {tokens.shape[1]} is more than block_size = {config.block_size}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        raise ValueError(f"tokens of shape {tokens.shape} must lie in [0, vocab_size={config.vocab_size}), "
                         f"got values in [{tokens.min()}, {tokens.max()}]")
    shapes = parameter_shapes(config)
    missing = [name for name in shapes if name not in params]
    if missing:
        raise ValueError(f"params is missing {missing}")
    for name, shape in shapes.items():
        p = as_float_array(f"params[{name!r}]", params[name])
        if p.shape != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape} for {config}, got shape {p.shape}")
    check_same_dtype(**{name.replace(".", "_"): params[name] for name in shapes})
    return tokens


# ----------------------------------------------------------------------------------------------
# The block: x + attn(ln_1(x)), then x + mlp(ln_2(x))
# ----------------------------------------------------------------------------------------------


def mlp_forward(h, p):
    """mlp(h) = gelu(h W1 + b1) W2 + b2 for h (B, T, D): widen to 4D, GELU, back to D."""
    a, cache1 = linear_forward(h, p["W1"], p["b1"])  # (B, T, 4D)
    g, gelu_cache = gelu_forward(a)  # (B, T, 4D)
    m, cache2 = linear_forward(g, p["W2"], p["b2"])  # (B, T, D)
    return m, (cache1, gelu_cache, cache2)


def mlp_backward(dm, cache):
    cache1, gelu_cache, cache2 = cache
    dg, dW2, db2 = linear_backward(dm, cache2)  # (B, T, 4D)
    da = gelu_backward(dg, gelu_cache)  # (B, T, 4D)
    dh, dW1, db1 = linear_backward(da, cache1)  # (B, T, D)
    return dh, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def causal_self_attention_forward(h, p, n_head, attention="plain"):
    """MHA(h, h) with the causal mask, by the plain attention or by FlashAttention (attention="flash")."""
    if attention == "flash":
        return flash_multi_head_attention_forward(h, h, p, n_head, causal=True)
    return multi_head_attention_forward(h, h, p, n_head, causal_mask(h.shape[1]))


def causal_self_attention_backward(dout, cache):
    """(dx_q, dx_kv, grads) of either kind: the cache says which ran."""
    if isinstance(cache.attention, FlashAttentionCache):
        return flash_multi_head_attention_backward(dout, cache)
    return multi_head_attention_backward(dout, cache)


def block_forward(x, params, i, n_head, attention="plain"):
    """Block i of the stack on x (B, T, D), causal; returns (y (B, T, D), cache). `attention`: config.attention."""
    p = prefixed(params, f"h.{i}.")
    # BEGIN SOLUTION
    # HINT: two residual sub-layers, each normalising its input first; the attention is self-attention with causal_mask.
    # x₁ = x + attn(ln_1(x)): position t attends to positions ≤ t only
    h1, ln1 = layer_norm_forward(x, p["ln_1.gamma"], p["ln_1.beta"])  # (B, T, D)
    a, attn = causal_self_attention_forward(h1, prefixed(p, "attn."), n_head, attention)  # (B, T, D)
    x1 = x + a  # (B, T, D)
    # y = x₁ + mlp(ln_2(x₁))
    h2, ln2 = layer_norm_forward(x1, p["ln_2.gamma"], p["ln_2.beta"])  # (B, T, D)
    m, mlp = mlp_forward(h2, prefixed(p, "mlp."))  # (B, T, D)
    y = x1 + m  # (B, T, D)
    # END SOLUTION
    return y, (i, ln1, attn, ln2, mlp)


def block_backward(dy, cache):
    """Return (dx, grads) with grads keyed like block i's parameters ("h.{i}.…")."""
    i, ln1, attn, ln2, mlp = cache
    g = {}
    # BEGIN SOLUTION
    # HINT: each residual sends its gradient two ways, straight on and through the sub-layer; add them.
    # y = x₁ + mlp(ln_2(x₁))  ⇒  dx₁ = dy + ln_2'ᵀ mlp'ᵀ dy
    dh2, mlp_grads = mlp_backward(dy, mlp)  # (B, T, D)
    dx1_norm, g["ln_2.gamma"], g["ln_2.beta"] = layer_norm_backward(dh2, ln2)
    dx1 = dy + dx1_norm  # (B, T, D)
    # x₁ = x + attn(ln_1(x)), self-attention: the query and the key/value paths both reach ln_1(x)
    dh1_q, dh1_kv, attn_grads = causal_self_attention_backward(dx1, attn)
    dx_norm, g["ln_1.gamma"], g["ln_1.beta"] = layer_norm_backward(dh1_q + dh1_kv, ln1)
    dx = dx1 + dx_norm  # (B, T, D)
    g.update({f"attn.{k}": v for k, v in attn_grads.items()})
    g.update({f"mlp.{k}": v for k, v in mlp_grads.items()})
    # END SOLUTION
    return dx, {name: g[name.split(".", 2)[2]] for name in layer_names(i)}


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


def gpt_forward(tokens, params, config):
    """logits (B, T, V) for tokens (B, T): logits[:, t] scores the token after position t, from positions ≤ t."""
    tokens = check_gpt_inputs(tokens, params, config)
    t = tokens.shape[1]
    # x = wte[tokens] + wpe[0 … T−1]
    x = params["wte"][tokens] + params["wpe"][:t]  # (B, T, D)
    blocks = []
    for i in range(config.n_layer):
        x, cache = block_forward(x, params, i, config.n_head, config.attention)  # (B, T, D)
        blocks.append(cache)
    h, ln_f = layer_norm_forward(x, params["ln_f.gamma"], params["ln_f.beta"])  # (B, T, D)
    # logits = ln_f(x) wteᵀ: the score of token v is the dot product of h with v's own embedding
    logits = h @ params["wte"].T  # (B, T, V)
    return logits, (tokens, params, config, blocks, ln_f, h)


def gpt_backward(dlogits, cache):
    """grads for every parameter, keyed and ordered like params, from dlogits (B, T, V)."""
    tokens, params, config, blocks, ln_f, h = cache
    grads = {}
    d = config.d_model
    # logits = h wteᵀ  ⇒  dh = dlogits wte,  d wte (output use) = dlogitsᵀ h, summed over (B, T)
    dh = dlogits @ params["wte"]  # (B, T, D)
    dwte = dlogits.reshape(-1, config.vocab_size).T @ h.reshape(-1, d)  # (V, D)
    dx, grads["ln_f.gamma"], grads["ln_f.beta"] = layer_norm_backward(dh, ln_f)  # (B, T, D)
    for cache_i in reversed(blocks):
        dx, block_grads = block_backward(dx, cache_i)  # (B, T, D)
        grads.update(block_grads)
    # x = wte[tokens] + wpe[:T]: the tied wte gets its input gradient too (rows add up over repeats)
    np.add.at(dwte, tokens.reshape(-1), dx.reshape(-1, d))
    grads["wte"] = dwte
    dwpe = np.zeros_like(params["wpe"])  # (block_size, D), rows ≥ T unused
    dwpe[: tokens.shape[1]] = dx.sum(axis=0)
    grads["wpe"] = dwpe
    return {name: grads[name] for name in params if name in grads}


def gpt_loss_forward(tokens, params, config, pad_id=None):
    """The causal language-model loss of sequences tokens (B, T + 1): each position predicts the next.

    Inputs tokens[:, :−1], targets tokens[:, 1:]; the mean cross-entropy in nats over the targets
    that are not `pad_id` (padding after a short sequence counts for nothing). Returns (loss, cache).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must have shape (B, T + 1) with T ≥ 1 (inputs and the targets shifted by one), "
                         f"got shape {tokens.shape}")
    logits, cache = gpt_forward(tokens[:, :-1], params, config)  # (B, T, V)
    # −(1/N) Σ log softmax(logits)[target], N the number of targets that are not padding
    loss, ce_cache = cross_entropy_forward(logits, tokens[:, 1:], 0.0, pad_id)
    return float(loss), (cache, ce_cache)


def gpt_loss_backward(dloss, cache):
    """grads of dloss · loss for every parameter."""
    model_cache, ce_cache = cache
    return gpt_backward(cross_entropy_backward(dloss, ce_cache), model_cache)


# ----------------------------------------------------------------------------------------------
# Generation with a key/value cache
# ----------------------------------------------------------------------------------------------


class KVCache(NamedTuple):
    """What a causal model must remember of the positions it has read: each layer's keys and values.

    keys[i], values[i] are (B, H, t, Dh) for the t positions so far; the next token sits at position t.
    """

    keys: tuple
    values: tuple


def empty_kv_cache(params, config, batch_size):
    """A KVCache holding no position yet, in the parameters' dtype."""
    shape = (batch_size, config.n_head, 0, config.d_model // config.n_head)
    empty = np.zeros(shape, params["wte"].dtype)
    return KVCache((empty,) * config.n_layer, (empty,) * config.n_layer)


def gpt_step(tokens, kv, params, config):
    """Feed one token per row, tokens (B,), at position t = kv's length; return (logits (B, V), kv with t + 1).

    The model is causal, so a position's keys and values never change once computed: the step runs
    the blocks on the new position alone and attends over the cached keys and values, O(t) work
    instead of the O(t²) of re-running gpt_forward on the whole prefix. Equals gpt_forward's
    logits[:, t] (checks/test_gpt_math.py). Pure: the cache passed in is not changed.
    """
    t, h = kv.keys[0].shape[2], config.n_head
    if t >= config.block_size:
        raise ValueError(f"the cache holds {t} positions, block_size = {config.block_size}: no position is left")
    tokens = check_gpt_inputs(np.asarray(tokens).reshape(-1, 1), params, config)[:, 0]  # (B,)
    # x = wte[token] + wpe[t]: the new token's position is t, the number of positions already cached
    # BEGIN SOLUTION
    # HINT: embed the new tokens at their own position, t (the cache's length), not at position 0.
    x = (params["wte"][tokens] + params["wpe"][t])[:, None, :]  # (B, 1, D)
    # END SOLUTION
    keys, values = [], []
    for i in range(config.n_layer):
        p = prefixed(params, f"h.{i}.")
        a = prefixed(p, "attn.")
        hn, _ = layer_norm_forward(x, p["ln_1.gamma"], p["ln_1.beta"])  # (B, 1, D)
        # BEGIN SOLUTION
        # HINT: project the new position, append its key and value to the layer's cache, attend over all of them.
        q = split_heads(hn @ a["W_q"] + a["b_q"], h)  # (B, H, 1, Dh)
        k = np.concatenate([kv.keys[i], split_heads(hn @ a["W_k"] + a["b_k"], h)], axis=2)  # (B, H, t + 1, Dh)
        v = np.concatenate([kv.values[i], split_heads(hn @ a["W_v"] + a["b_v"], h)], axis=2)  # (B, H, t + 1, Dh)
        keys.append(k)
        values.append(v)
        # the newest position may attend to every position so far: row t of the causal mask is all True
        attended, _ = scaled_dot_product_attention_forward(q, k, v)  # (B, H, 1, Dh)
        # END SOLUTION
        x = x + merge_heads(attended) @ a["W_o"] + a["b_o"]  # (B, 1, D)
        hn, _ = layer_norm_forward(x, p["ln_2.gamma"], p["ln_2.beta"])
        x = x + mlp_forward(hn, prefixed(p, "mlp."))[0]  # (B, 1, D)
    hf, _ = layer_norm_forward(x[:, 0], params["ln_f.gamma"], params["ln_f.beta"])  # (B, D)
    return hf @ params["wte"].T, KVCache(tuple(keys), tuple(values))  # (B, V)


def generate(params, config, prompt, max_new_tokens, rng, temperature=1.0, top_k=None, top_p=None, use_cache=True):
    """Continue each row of prompt (B, T₀) (or (T₀,)) by up to max_new_tokens sampled tokens; return prompt + them.

    Each new token is `sample(logits of the last position, rng, temperature, top_k, top_p)`; rng is a
    np.random.Generator, or None at temperature 0 (greedy: nothing is drawn).
    With use_cache (the default) one gpt_step per token; use_cache=False re-runs gpt_forward on the
    whole prefix every time (the slow reference, equal token for token at the same rng).
    A prompt longer than block_size is an error. Generation stops when the sequence reaches
    block_size + 1 tokens (the last one read off position block_size − 1): GPT-2's learned
    positions end there, so the result is then shorter than T₀ + max_new_tokens. No window slides.
    """
    check_gpt_config(config)
    check_filters(top_k, top_p, temperature)
    prompt = np.asarray(prompt)
    single = prompt.ndim == 1
    prompt = prompt[None] if single else prompt  # (B, T₀)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or prompt.dtype.kind not in "iu":
        raise ValueError(f"prompt must be a non-empty integer array of shape (B, T₀) or (T₀,), got dtype {prompt.dtype} "
                         f"with shape {prompt.shape}")
    if prompt.shape[1] > config.block_size:
        raise ValueError(f"prompt has shape {prompt.shape}: {prompt.shape[1]} tokens, more than block_size = "
                         f"{config.block_size}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int ≥ 0, got {max_new_tokens!r}")
    check_gpt_inputs(prompt, params, config)
    n_new = min(int(max_new_tokens), config.block_size + 1 - prompt.shape[1])
    seq = prompt.copy()
    if use_cache:
        kv = empty_kv_cache(params, config, len(prompt))
        for j in range(prompt.shape[1]):  # read the prompt, one position at a time
            logits, kv = gpt_step(prompt[:, j], kv, params, config)  # (B, V)
    for step in range(n_new):
        if not use_cache:
            logits = gpt_forward(seq, params, config)[0][:, -1]  # (B, V), the whole prefix again
        nxt = sample(logits, rng, temperature, top_k, top_p)  # (B,)
        seq = np.concatenate([seq, nxt[:, None].astype(seq.dtype)], axis=1)
        if use_cache and step < n_new - 1:  # the last token drawn needs no logits after it
            logits, kv = gpt_step(nxt, kv, params, config)
    return seq[0] if single else seq
