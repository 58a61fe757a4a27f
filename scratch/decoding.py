"""Decoding a trained encoder-decoder: greedy with a key/value cache, and beam search. Forward only.

Shape letters: N rows being decoded (B sentences, or B·K beams), S source positions, t positions
decoded so far, V target vocabulary, D model width, H heads, Dh = D / H.

The decoder is causal, so the keys and values of position j never change once computed. Instead
of re-running the decoder on the whole prefix (t positions) to get one new token, a step feeds in
only the newest token and attends over the keys and values kept from earlier steps: O(t) work per
step instead of O(t²). The cross-attention's keys and values, from the encoder, are computed once.
"""

import numpy as np

from scratch.attention import merge_heads, scaled_dot_product_attention_forward, split_heads
from scratch.encoder_decoder import check_tokens, decode_forward, encode_forward, output_weight, source_mask
from scratch.transformer import feed_forward_forward, layer_norm_forward, positional_encoding, prefixed

BOS_ID, EOS_ID = 1, 2  # scratch/text.py's special tokens


def _project(x, p, which, num_heads):
    """split_heads(x W_which + b_which): (N, t, D) → (N, H, t, Dh)."""
    return split_heads(x @ p[f"W_{which}"] + p[f"b_{which}"], num_heads)


def start_decoding(src, params, config):
    """Encode the source once and precompute every layer's cross-attention keys and values."""
    src = check_tokens("src", src, config, config.src_vocab)
    memory, _ = encode_forward(src, params, config)  # (N, S, D)
    layers = []
    for i in range(config.num_layers):
        cross = prefixed(params, f"dec.{i}.cross_attn.")
        layers.append({"cross_k": _project(memory, cross, "k", config.num_heads),  # (N, H, S, Dh)
                       "cross_v": _project(memory, cross, "v", config.num_heads),
                       "self_k": None, "self_v": None})  # (N, H, t, Dh) once a step has run
    return {"layers": layers, "memory_mask": source_mask(src, config.pad_id)[:, None], "t": 0}  # mask (N, 1, 1, S)


def _residual(x, sublayer, p, norm, norm_first):
    """The sub-layer wrapper of scratch/transformer.py without dropout: LN(x + f(x)) or x + f(LN(x))."""
    gamma, beta = p[f"{norm}.gamma"], p[f"{norm}.beta"]
    if norm_first:
        return x + sublayer(layer_norm_forward(x, gamma, beta)[0])
    return layer_norm_forward(x + sublayer(x), gamma, beta)[0]


def decoder_step(tokens, state, params, config):
    """Feed one token per row (N,) at position state["t"]; return logits (N, V) for the next one."""
    h = config.num_heads
    x = params["tgt_embed"][tokens][:, None, :] * float(np.sqrt(config.d_model))  # (N, 1, D)
    x = x + positional_encoding(state["t"] + 1, config.d_model, x.dtype)[-1]  # (N, 1, D)
    for i, layer in enumerate(state["layers"]):
        p = prefixed(params, f"dec.{i}.")
        sa, ca = prefixed(p, "self_attn."), prefixed(p, "cross_attn.")

        def attend_past(a):
            # BEGIN SOLUTION
            # HINT: append this position's key and value to the layer's cache, then attend over all of them.
            k, v = _project(a, sa, "k", h), _project(a, sa, "v", h)  # (N, H, 1, Dh) each
            if layer["self_k"] is not None:
                k = np.concatenate([layer["self_k"], k], axis=2)  # (N, H, t + 1, Dh)
                v = np.concatenate([layer["self_v"], v], axis=2)
            layer["self_k"], layer["self_v"] = k, v
            # the newest position may attend to every position so far: no mask needed
            out, _ = scaled_dot_product_attention_forward(_project(a, sa, "q", h), k, v)  # (N, H, 1, Dh)
            # END SOLUTION
            return merge_heads(out) @ sa["W_o"] + sa["b_o"]  # (N, 1, D)

        def attend_source(a):
            out, _ = scaled_dot_product_attention_forward(_project(a, ca, "q", h), layer["cross_k"], layer["cross_v"],
                                                          state["memory_mask"])  # (N, H, 1, Dh)
            return merge_heads(out) @ ca["W_o"] + ca["b_o"]  # (N, 1, D)

        x = _residual(x, attend_past, p, "ln1", config.norm_first)
        x = _residual(x, attend_source, p, "ln2", config.norm_first)
        x = _residual(x, lambda a: feed_forward_forward(a, prefixed(p, "ff."))[0], p, "ln3", config.norm_first)
    if config.norm_first:
        x = layer_norm_forward(x, params["dec.ln.gamma"], params["dec.ln.beta"])[0]
    state["t"] += 1
    return (x @ output_weight(params, config) + params["out.b"])[:, 0]  # (N, V)


def incremental_logits(src, tgt_in, params, config):
    """(B, T, V) logits of a whole target, one cached step at a time: equal to decode_forward's."""
    state = start_decoding(src, params, config)
    return np.stack([decoder_step(tgt_in[:, j], state, params, config) for j in range(tgt_in.shape[1])], axis=1)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)  # (N, V)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def greedy_decode(src, params, config, max_len=None, use_cache=True):
    """(B, L) target ids, L ≤ max_len (default config.max_len): the argmax token at every step.

    A row stops at its EOS (kept) and is padded after it; decoding ends when every row has stopped.
    use_cache=False re-runs the decoder on the whole prefix at every step (the slow reference).
    """
    src = check_tokens("src", src, config, config.src_vocab)
    max_len = config.max_len if max_len is None else max_len
    b = src.shape[0]
    tgt = np.full((b, 1), BOS_ID)  # (B, 1)
    done = np.zeros(b, bool)
    if use_cache:
        state = start_decoding(src, params, config)
    else:
        memory, _ = encode_forward(src, params, config)  # (B, S, D)
    for _ in range(max_len):
        if use_cache:
            logits = decoder_step(tgt[:, -1], state, params, config)  # (B, V)
        else:
            logits = decode_forward(tgt, memory, src, params, config)[0][:, -1]  # (B, V)
        nxt = np.where(done, config.pad_id, logits.argmax(axis=-1))  # (B,)
        tgt = np.concatenate([tgt, nxt[:, None]], axis=1)
        done |= nxt == EOS_ID
        if done.all():
            break
    return tgt[:, 1:]


def beam_search(src, params, config, beam_width=4, max_len=None, length_penalty=0.0):
    """(B, L) target ids: the best of `beam_width` hypotheses kept at every step, by total log-probability.

    A finished hypothesis (it emitted EOS) stays in the beam with its score unchanged, competing with
    the unfinished ones. The winner maximises score / length^length_penalty (0: the plain sum).
    With beam_width 1 this is greedy decoding.
    """
    src = check_tokens("src", src, config, config.src_vocab)
    if isinstance(beam_width, bool) or not isinstance(beam_width, (int, np.integer)) or beam_width < 1:
        raise ValueError(f"beam_width must be a positive int, got {beam_width!r}")
    max_len = config.max_len if max_len is None else max_len
    b, k = src.shape[0], beam_width
    state = start_decoding(np.repeat(src, k, axis=0), params, config)  # rows b·K … b·K + K − 1 are sentence b
    tokens = np.full((b * k, 1), BOS_ID)  # (B·K, 1)
    scores = np.full((b, k), -np.inf)
    scores[:, 0] = 0.0  # one live hypothesis at the start, so the K beams do not all begin equal
    done = np.zeros((b, k), bool)
    lengths = np.zeros((b, k), int)
    for _ in range(max_len):
        logp = _log_softmax(decoder_step(tokens[:, -1], state, params, config))  # (B·K, V)
        v = logp.shape[-1]
        finished = done.reshape(-1)
        logp[finished] = -np.inf
        logp[finished, config.pad_id] = 0.0  # a finished hypothesis extends only by padding, at no cost
        candidates = (scores[:, :, None] + logp.reshape(b, k, v)).reshape(b, k * v)  # (B, K·V)
        best = np.argsort(-candidates, axis=1, kind="stable")[:, :k]  # (B, K), ties: the earlier candidate
        beam, token = best // v, best % v  # (B, K) each
        rows = (np.arange(b)[:, None] * k + beam).reshape(-1)  # (B·K,), the row each survivor extends
        scores = np.take_along_axis(candidates, best, axis=1)
        lengths = np.take_along_axis(lengths, beam, axis=1) + ~np.take_along_axis(done, beam, axis=1)
        done = np.take_along_axis(done, beam, axis=1) | (token == EOS_ID)
        tokens = np.concatenate([tokens[rows], token.reshape(-1, 1)], axis=1)
        for layer in state["layers"]:  # every kept hypothesis takes its parent's cache
            layer["self_k"], layer["self_v"] = layer["self_k"][rows], layer["self_v"][rows]
        if done.all():
            break
    ranked = scores / np.maximum(lengths, 1) ** length_penalty  # (B, K)
    pick = np.arange(b) * k + ranked.argmax(axis=1)  # (B,)
    return tokens[pick, 1:]
