"""attention_scale.png: why attention divides the scores by √d_k (Vaswani et al. 2017, §3.2.1).

With q and k of unit-variance entries, q·k has variance d_k. Unscaled, the scores spread out
as √d_k grows, the softmax saturates (one key takes all the weight) and its gradient vanishes.
Divided by √d_k, the scores keep variance 1 at every width, and so does the gradient.

Both curves come from `scratch.attention.scaled_dot_product_attention_forward` (its
`cache.weights`) and `scratch.attention.softmax_backward`; the figure computes no math itself.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from figures import save
from scratch.attention import scaled_dot_product_attention_forward, softmax_backward

NAME = "attention_scale"
T = 32  # keys per query (and queries per draw)


def _measure(d_k, samples, rng):
    """Row statistics of the attention weights with and without the 1/√d_k scale.

    Returns {"scaled": (max weights, grad norms), "unscaled": (...)}, each (samples·T,) per row.
    """
    q = rng.standard_normal((samples, T, d_k))  # (N, T, dk), entries ~ N(0, 1)
    k = rng.standard_normal((samples, T, d_k))  # (N, T, dk)
    v = np.zeros((samples, T, 1))  # (N, T, 1): the values do not affect the weights
    upstream = rng.standard_normal((samples, T, T))  # (N, Tq, Tk), a random dL/dweights
    results = {}
    # The scratch function always multiplies q·k by 1/√d_k. Feeding it √d_k·q cancels that
    # factor, so its weights are softmax(q·k): attention *without* the scale, same code path.
    for name, q_in in (("scaled", q), ("unscaled", q * math.sqrt(d_k))):
        _, cache = scaled_dot_product_attention_forward(q_in, k, v)
        weights = cache.weights  # (N, Tq, Tk)
        # softmax_backward gives dL/dscores from dL/dweights: how much signal reaches q and k.
        dscores = softmax_backward(upstream, cache.softmax)  # (N, Tq, Tk)
        results[name] = (weights.max(axis=-1).ravel(), np.linalg.norm(dscores, axis=-1).ravel())
    return results


def render(out_dir, full=False):
    rng = np.random.default_rng(0)
    d_ks = [2 ** p for p in range(1, 13 if full else 11)]  # 2 … 1024 (4096 with --full)
    samples = 128 if full else 64  # independent (q, k) draws of T×T scores each
    stats = {name: {"max": [], "grad": []} for name in ("scaled", "unscaled")}
    for d_k in d_ks:
        for name, (max_w, grad) in _measure(d_k, samples, rng).items():
            stats[name]["max"].append(max_w)
            stats[name]["grad"].append(grad)

    fig, (ax_max, ax_grad) = plt.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"wspace": 0.28})
    styles = {"scaled": ("C0", "o", "scaled: softmax(QKᵀ/√d_k)"), "unscaled": ("C3", "s", "unscaled: softmax(QKᵀ)")}
    for name, (color, marker, label) in styles.items():
        for ax, key in ((ax_max, "max"), (ax_grad, "grad")):
            rows = stats[name][key]
            # the median row, not the mean: a few unsaturated rows would hide the typical row
            low, median, high = (np.array([np.percentile(r, p) for r in rows]) for p in (10, 50, 90))
            ax.plot(d_ks, median, color=color, marker=marker, label=label + ", median row")
            ax.fill_between(d_ks, low, high, color=color, alpha=0.18, linewidth=0,
                            label="rows, 10th–90th percentile")
    ax_max.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
    ax_max.axhline(1.0 / T, color="0.3", linestyle=":", linewidth=1)
    ax_max.text(d_ks[0], 0.97, "1 = saturated (one-hot row)", va="top", fontsize=8, color="0.3")
    ax_max.text(d_ks[0], 1.0 / T + 0.015, f"1/T = {1.0 / T:.3f} = uniform row", va="bottom", fontsize=8, color="0.3")
    ax_max.set_ylim(0, 1.05)
    ax_max.set_ylabel("largest weight in a row, max_j A_ij")
    ax_max.set_title("Saturation: how much of a row one key takes")
    ax_grad.set_yscale("log")
    ax_grad.set_ylabel("‖∂L/∂scores‖ per row (softmax_backward,\nrandom upstream ∂L/∂A ~ N(0, 1))")
    ax_grad.set_title("Gradient reaching the scores (and so q and k)")
    for ax in (ax_max, ax_grad):
        ax.set_xscale("log", base=2)
        ax.set_xticks(d_ks, [str(d) for d in d_ks], rotation=45 if len(d_ks) > 10 else 0)
        ax.set_xlabel("key/query width d_k")
        ax.grid(True, which="major", alpha=0.3)
    ax_max.legend(loc="center right", fontsize=8)
    ax_grad.legend(loc="lower left", fontsize=8)
    fig.suptitle("Why scaled dot-product attention divides by √d_k (Vaswani et al. 2017, §3.2.1)\n"
                 f"q, k ~ N(0, I), T = {T} keys, {samples} draws per d_k; q·k has variance d_k, so unscaled "
                 "scores push the softmax into saturation where its gradient vanishes", fontsize=10, y=1.03)
    save(fig, out_dir, "attention_scale.png")

    def median(name, key, i):
        return float(np.median(stats[name][key][i]))

    d = d_ks[-1]
    return {
        "file": "attention_scale.png",
        f"median_max_w_scaled@d{d}": median("scaled", "max", -1),
        f"median_max_w_unscaled@d{d}": median("unscaled", "max", -1),
        f"median_grad_scaled d2->d{d}": f"{median('scaled', 'grad', 0):.3g}->{median('scaled', 'grad', -1):.3g}",
        f"median_grad_unscaled d2->d{d}": f"{median('unscaled', 'grad', 0):.3g}->{median('unscaled', 'grad', -1):.3g}",
    }
