"""attention_masks.png: what a causal mask and a padding mask do to every head's weights.

Top row: one sentence attending to itself under `causal_mask`, one panel per head. Rows below:
a padded batch of three sentences under `padding_mask`, one row per sentence. The weights are
`cache.attention.weights` (B, H, Tq, Tk) of `scratch.attention.multi_head_attention_forward`
with seeded random parameters. Hatched cells are masked: their weight is exactly 0 in every
head, and every row still sums to 1; each panel's title prints both facts as measured.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from figures import save
from scratch.attention import causal_mask, init_multi_head_attention, multi_head_attention_forward, padding_mask

NAME = "attention_masks"
D_MODEL, NUM_HEADS = 32, 4  # D, H
# Glorot-initialised W_q, W_k give scores of spread ~1: near-uniform maps. Scaling both by 2
# multiplies the scores by 2.6 (a lower softmax temperature), so each head's preferences show.
QK_GAIN = 1.6
CAUSAL_SENTENCE = "the cat sat on the mat because it was tired".split()
PADDED_SENTENCES = ["a bird sang in the tall green tree", "the dog ran home fast", "it was late"]
PAD = "<pad>"


def _inputs(sentences, embedding):
    """(B, T, D) word vectors plus the sinusoidal position signal; input data, not model math."""
    t = max(len(s) for s in sentences)
    pos = np.arange(t)[:, None] / 10000.0 ** (np.arange(0, D_MODEL, 2)[None, :] / D_MODEL)  # (T, D/2)
    signal = np.zeros((t, D_MODEL))  # (T, D): sin on even, cos on odd columns
    signal[:, 0::2], signal[:, 1::2] = np.sin(pos), np.cos(pos)
    x = np.zeros((len(sentences), t, D_MODEL))  # (B, T, D); padded positions keep only the position signal
    for b, sentence in enumerate(sentences):
        x[b, : len(sentence)] = [embedding[w] for w in sentence]
    return x + signal


def _params(rng):
    params = init_multi_head_attention(D_MODEL, rng, np.float64)
    params["W_q"] = params["W_q"] * QK_GAIN
    params["W_k"] = params["W_k"] * QK_GAIN
    return params


def _panel(ax, weights, allowed, labels, image_kwargs):
    """One head's (Tq, Tk) weights; masked cells hatched; title: measured 0s and row sums."""
    image = ax.imshow(weights, **image_kwargs)
    for i, j in zip(*np.nonzero(~allowed)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.93", edgecolor="0.55",
                               hatch="////", linewidth=0))
    t = len(labels)
    ax.set_xticks(range(t), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(t), labels, fontsize=7)
    masked_max = float(np.max(weights[~allowed], initial=0.0))
    row_error = float(np.max(np.abs(weights.sum(axis=-1) - 1.0)))
    return image, masked_max, row_error


def render(out_dir, full=False):
    rng = np.random.default_rng(0)
    vocabulary = sorted(set(CAUSAL_SENTENCE) | {w for s in PADDED_SENTENCES for w in s.split()})
    params = _params(rng)
    embedding = {word: rng.standard_normal(D_MODEL) for word in vocabulary}  # one vector per word

    # (a) causal self-attention over one sentence
    x_causal = _inputs([CAUSAL_SENTENCE], embedding)  # (1, T, D)
    t_c = x_causal.shape[1]
    mask_c = causal_mask(t_c)  # (T, T), broadcasts to (B, T, T)
    _, cache_c = multi_head_attention_forward(x_causal, x_causal, params, NUM_HEADS, mask=mask_c)
    w_causal = cache_c.attention.weights  # (1, H, T, T)

    # (b) a padded batch: keys past each sentence's length are masked in every head
    padded = [s.split() for s in PADDED_SENTENCES]
    lengths = np.array([len(s) for s in padded])
    x_pad = _inputs(padded, embedding)  # (B, T, D)
    t_p = x_pad.shape[1]
    mask_p = padding_mask(lengths, t_p)  # (B, 1, Tk): the same key mask for every query
    _, cache_p = multi_head_attention_forward(x_pad, x_pad, params, NUM_HEADS, mask=mask_p)
    w_pad = cache_p.attention.weights  # (B, H, T, T)

    rows = 1 + len(padded)
    fig, axes = plt.subplots(rows, NUM_HEADS, figsize=(3.0 * NUM_HEADS + 1.2, 3.25 * rows),
                             gridspec_kw={"hspace": 0.75, "wspace": 0.35, "top": 0.88, "right": 0.9}, squeeze=False)
    image_kwargs = dict(cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    worst_masked, worst_row = 0.0, 0.0
    for h in range(NUM_HEADS):
        ax = axes[0, h]
        image, m, r = _panel(ax, w_causal[0, h], mask_c, CAUSAL_SENTENCE, image_kwargs)
        ax.set_title(f"causal, head {h + 1}\nmax masked w = {m:g}, max |Σrow−1| = {r:.0e}", fontsize=8)
        worst_masked, worst_row = max(worst_masked, m), max(worst_row, r)
    for b, sentence in enumerate(padded):
        labels = sentence + [PAD] * (t_p - len(sentence))
        allowed = np.broadcast_to(mask_p[b], (t_p, t_p))  # (Tq, Tk)
        note = ", no padding" if lengths[b] == t_p else ""
        for h in range(NUM_HEADS):
            ax = axes[1 + b, h]
            image, m, r = _panel(ax, w_pad[b, h], allowed, labels, image_kwargs)
            ax.set_title(f"padded seq {b + 1} (length {lengths[b]}{note}), head {h + 1}\n"
                         f"max masked w = {m:g}, max |Σrow−1| = {r:.0e}", fontsize=8)
            worst_masked, worst_row = max(worst_masked, m), max(worst_row, r)
    for ax in axes[:, 0]:
        ax.set_ylabel("query position")
    for ax in axes[-1, :]:
        ax.set_xlabel("key position")
    colorbar = fig.colorbar(image, cax=fig.add_axes([0.93, 0.3, 0.015, 0.4]))
    colorbar.set_label("attention weight (softmax over keys)")
    fig.suptitle("Multi-head attention weights under masks (scratch.attention.multi_head_attention_forward)\n"
                 f"D = {D_MODEL}, H = {NUM_HEADS}, seeded random weights; input = word vector + sinusoidal position. "
                 "Hatched = masked (True = may attend):\ncausal mask hides the future (zeros above the diagonal); "
                 "padding mask hides <pad> keys in every head; every row sums to 1.\n"
                 "(Queries at <pad> positions still attend to the real keys; their outputs are discarded downstream.)",
                 fontsize=10, y=0.965)
    save(fig, out_dir, "attention_masks.png")
    return {"file": "attention_masks.png", "max_masked_weight": worst_masked, "max_row_sum_error": worst_row}
