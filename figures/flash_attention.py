"""flash_attention_scale.png and flash_online_softmax.png: what FlashAttention saves, and why it is exact.

flash_attention_scale.png: forward+backward time and peak memory against T (log–log) of scratch's
plain attention, scratch's FlashAttention and PyTorch's fused SDPA (B = 2, H = 4, d_k = 32, float32,
causal), measured as `python -m checks.bench attention --scale` measures them (checks/bench_flash.py),
in one process, the candidates taking turns. The plain attention's memory grows as T², the tiled one's
as T. Quick protocol: T up to 1024, three timed calls each; --full: T up to 4096.

flash_online_softmax.png: one query row, its keys streamed in blocks, as flash_attention_forward sees
them. Every curve is read off scratch: the state after block j is flash_attention_forward on the
keys of blocks 0 … j (its output and its log-sum-exp L⁽ʲ⁾), the exact result is
scaled_dot_product_attention_forward on all of them.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from checks.bench import time_interleaved
from checks.bench_flash import B, CANDIDATES, DK, H, candidate, traced_peak
from figures import save
from scratch.attention import scaled_dot_product_attention_forward
from scratch.flash_attention import flash_attention_forward

NAME = "flash_attention"
STYLES = {"scratch plain": ("C3", "s"), "scratch flash": ("C0", "o"), "scratch flash 128": ("C1", "D"), "torch F.sdpa": ("C2", "^")}


def _scale_figure(out_dir, full):
    sizes = (128, 256, 512, 1024, 2048, 4096) if full else (128, 256, 512, 1024)
    repeats = 5 if full else 2
    times = {name: [] for name in CANDIDATES}  # (median, fastest, slowest) per T
    memory = {name: [] for name in CANDIDATES if name.startswith("scratch")}  # tracemalloc sees NumPy's buffers only
    for t in sizes:
        runs = {name: candidate(name, B, H, t) for name in CANDIDATES}
        seconds = time_interleaved(runs, repeats, 0.05)
        for name in CANDIDATES:
            times[name].append((float(np.median(seconds[name])), min(seconds[name]), max(seconds[name])))
        for name in memory:
            memory[name].append(traced_peak(runs[name]))
        del runs

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"wspace": 0.25})
    for name in CANDIDATES:
        color, marker = STYLES[name]
        median, fastest, slowest = (np.array(x) * 1e3 for x in zip(*times[name]))
        ax_t.plot(sizes, median, color=color, marker=marker, label=f"{name}, median")
        ax_t.fill_between(sizes, fastest, slowest, color=color, alpha=0.15, linewidth=0)
        if name in memory:
            ax_m.plot(sizes, np.array(memory[name]) / 2**20, color=color, marker=marker, label=f"{name} (tracemalloc peak)")
    ax_t.fill_between([], [], [], color="0.5", alpha=0.15, label=f"fastest to slowest of {repeats} calls")
    ax_m.text(0.98, 0.03, "PyTorch's fused kernel keeps O(T) too; its buffers are outside\ntracemalloc's sight "
              "(checks.bench attention --scale prints RSS)", transform=ax_m.transAxes, ha="right", fontsize=7.5, color="0.3")
    # guides through the first plain point: ∝ T² and ∝ T
    t0, m0 = sizes[0], memory["scratch plain"][0] / 2**20
    grid = np.array(sizes, float)
    ax_m.plot(grid, m0 * (grid / t0) ** 2, color="0.6", linestyle=":", linewidth=1, label="∝ T²")
    f0 = memory["scratch flash"][0] / 2**20
    ax_m.plot(grid, f0 * grid / t0, color="0.6", linestyle="--", linewidth=1, label="∝ T")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(t) for t in sizes])
        ax.set_xlabel("sequence length T")
        ax.grid(True, which="major", alpha=0.3)
    ax_t.legend(fontsize=8, loc="lower right")
    ax_m.legend(fontsize=8, loc="upper left")
    ax_t.set_ylabel("forward + backward, median ms")
    ax_t.set_title("Time (one process, candidates taking turns)")
    ax_m.set_ylabel("peak memory of forward + backward, MiB")
    ax_m.set_title("Memory: the plain attention keeps (T, T) weights")
    fig.suptitle(f"Causal attention, B = {B}, H = {H}, d_k = {DK}, float32, on this machine's CPUs "
                 f"(shared and noisy: times are indicative, memory is exact)", fontsize=10)
    save(fig, out_dir, "flash_attention_scale.png")
    last = sizes[-1]
    return {f"flash/plain memory @T={last}": memory["scratch flash"][-1] / memory["scratch plain"][-1],
            f"flash/torch time @T={last}": times["scratch flash"][-1][0] / times["torch F.sdpa"][-1][0],
            f"plain/torch time @T={last}": times["scratch plain"][-1][0] / times["torch F.sdpa"][-1][0]}


def _online_softmax_figure(out_dir):
    t, block, d = 32, 8, 8
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, d))  # (1, d), one query row
    # keys drift towards q, so the later blocks hold larger scores and the running maximum grows
    k = rng.standard_normal((t, d)) + np.linspace(0.0, 2.5, t)[:, None] * q / np.linalg.norm(q)  # (T, d)
    v = rng.standard_normal((t, 1)) + np.linspace(-1.0, 1.0, t)[:, None]  # (T, 1), one value per key
    exact, cache = scaled_dot_product_attention_forward(q, k, v)
    ends = list(range(block, t + 1, block))
    state = [flash_attention_forward(q, k[:c1], v[:c1], block_q=1, block_k=block) for c1 in ends]  # after block j
    lse = np.array([c.lse[0] for _, c in state])  # L⁽ʲ⁾ = log Σ_{keys ≤ j} exp S
    lse_final = lse[-1]
    s = np.log(cache.weights[0]) + lse_final  # (T,), the scores, read off the weights: A_j = exp(S_j − L)
    running_max = np.array([s[:c1].max() for c1 in ends])  # m⁽ʲ⁾
    own_sum = np.exp(lse - running_max)  # ℓ⁽ʲ⁾ = Σ exp(S − m⁽ʲ⁾): what the algorithm holds after block j
    rescaled = np.exp(lse - running_max[-1])  # the same sums taken relative to the final maximum
    blocks_alone = [flash_attention_forward(q, k[c1 - block:c1], v[c1 - block:c1], block_q=1, block_k=block)[1].lse[0]
                    for c1 in ends]
    # the bug: each block's Σ exp(S − m⁽ʲ⁾) added on without rescaling the sum kept so far
    stale = np.cumsum([math.exp(b - m) for b, m in zip(blocks_alone, running_max)])
    outputs = np.array([o[0, 0] for o, _ in state])  # O⁽ʲ⁾ = Õ⁽ʲ⁾ / ℓ⁽ʲ⁾ after block j
    # the other bug: Õ never rescaled, each block's Σ exp(S − m⁽ʲ⁾) v added on, divided by the right ℓ⁽ʲ⁾
    block_outputs = [flash_attention_forward(q, k[c1 - block:c1], v[c1 - block:c1], block_q=1, block_k=block)[0][0, 0]
                     for c1 in ends]
    stale_out = np.cumsum([o * math.exp(b - m) for o, b, m in zip(block_outputs, blocks_alone, running_max)]) / own_sum
    final_error = abs(outputs[-1] - exact[0, 0])

    fig, (ax_s, ax_l, ax_o) = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"wspace": 0.28})
    j = np.arange(t)
    blocks_read = range(1, len(ends) + 1)
    ax_s.bar(j, s, color="0.75", label=r"score $S_j = q \cdot k_j / \sqrt{d_k}$")
    ax_s.step(j, np.repeat(running_max, block), where="mid", color="C3", linewidth=2,
              label=r"running maximum $m^{(j)}$ after block $j$")
    ax_l.plot(blocks_read, own_sum, "o-", color="C0", label=r"$\ell^{(j)} = \sum \exp(S - m^{(j)})$, as held")
    ax_l.plot(blocks_read, rescaled, "s-", color="C2", label=r"$\ell^{(j)} \exp(m^{(j)} - m_{final})$: rescaled")
    ax_l.plot(blocks_read, stale, "x--", color="C3", label="old sums never rescaled (a bug)")
    ax_l.axhline(rescaled[-1], color="0.3", linestyle=":", linewidth=1, label=r"exact $\sum_j \exp(S_j - \max S)$")
    ax_o.plot(blocks_read, outputs, "o-", color="C0", label=r"$O^{(j)} = \tilde O^{(j)} / \ell^{(j)}$ after block $j$")
    ax_o.plot(blocks_read, stale_out, "x--", color="C3", label=r"$\tilde O$ never rescaled (a bug)")
    ax_o.axhline(exact[0, 0], color="0.3", linestyle=":", linewidth=1, label="exact softmax(S) V (plain attention);\n"
                f"after the last block |flash − plain| = {final_error:.1e}")
    for c1 in ends[:-1]:
        ax_s.axvline(c1 - 0.5, color="0.4", linewidth=0.8, linestyle="--")
    ax_s.set_xlabel(f"key j (blocks of {block}, dashed lines)")
    ax_s.set_title("One query's scores, streamed block by block")
    ax_l.set_title(r"The row sum, rescaled by $\exp(m_{old} - m_{new})$")
    ax_o.set_title("The output (one value dimension)")
    for ax in (ax_l, ax_o):
        ax.set_xlabel("key blocks read, j")
        ax.set_xticks(list(blocks_read))
    ax_l.set_yscale("log")
    for ax in (ax_s, ax_l, ax_o):
        ax.grid(True, alpha=0.3)
    ax_s.legend(fontsize=8, loc="lower right")
    ax_l.legend(fontsize=8, loc="lower right")
    low, high = ax_o.get_ylim()
    ax_o.set_ylim(low, high + 0.5 * (high - low))  # room above the curves for the legend
    ax_o.legend(fontsize=8, loc="upper left")
    fig.suptitle("The online softmax (Milakov and Gimelshein 2018) inside flash_attention_forward: when a block raises the "
                 "running maximum,\nℓ and Õ are multiplied by exp(m_old − m_new), an identity, so the output after the last "
                 "block is exact", fontsize=10, y=1.02)
    save(fig, out_dir, "flash_online_softmax.png")
    return {"online softmax |flash - plain|": final_error, "stale sum / exact": stale[-1] / rescaled[-1]}


def render(out_dir, full=False):
    numbers = {"file": "flash_attention_scale.png, flash_online_softmax.png"}
    numbers.update(_online_softmax_figure(out_dir))
    numbers.update(_scale_figure(out_dir, full))
    return numbers
