"""The Transformer (Vaswani et al., 2017) trained in NumPy to write numbers in French words.

    transformer_positional_encoding.png   the sinusoid matrix PE(pos, i), and a few of its columns
    transformer_alignment.png             cross-attention of a held-out number: French words against English
    transformer_heads.png                 every head's attention map for one sentence, by layer
    transformer_curves.png                loss and exact-match accuracy over training, scratch and Keras

The scratch model and the Keras port train side by side, one process each (two CPU cores), on
the same split; each is scored by translating all 2,000 held-out numbers greedily. The default run
trains seed 0; --full trains seeds 0, 1 and 2 of all four implementations (scratch, Keras, PyTorch and
TensorFlow, two at a time, about half an hour) and prints every seed, the mean and the range.
"""

import multiprocessing
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from figures import save
from scratch import encoder_decoder as M
from scratch import text as X
from scratch.transformer import positional_encoding
from scratch.translation import ScratchTransformerTrainer, load_translation_data

NAME = "transformer"
# The command line's defaults (scratch/__main__.py): D = 64, 4 heads, F = 256, 2 + 2 layers
EVAL_ALONG_THE_WAY = 500
SEEDS_FULL = (0, 1, 2)  # --full trains each implementation on these; the default run, seed 0
IMPLS_FULL = ("scratch", "keras", "torch", "tensorflow")  # --full; the default run: scratch and Keras
# the command line's defaults, the cool-down included (the last quarter of the steps falls linearly to a rate of 0)
RUN = {"steps": 6000, "eval_every": 1000, "batch_size": 64, "warmup": 400, "lr_factor": 1.0, "label_smoothing": 0.1,
       "cooldown": 1500}


def model_config(data):
    return M.TransformerConfig(len(data.src_vocab), len(data.tgt_vocab), d_model=64, num_heads=4, d_ff=256,
                               num_layers=2, max_len=32)


def train(impl, steps=RUN["steps"], eval_every=RUN["eval_every"], seed=0):
    """Train one implementation; return (history, final params in the scratch layout, seconds of training)."""
    from threadpoolctl import threadpool_limits

    data = load_translation_data()
    if impl == "scratch":
        make = ScratchTransformerTrainer
    else:  # a port, trained by its own optimizer (Keras: its own fit and Adam)
        import importlib

        if impl == "torch":
            import torch

            torch.set_num_threads(1)
        else:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        make = importlib.import_module(f"ports.{impl}.train").TRAINERS["transformer"]
    run = {k: v for k, v in RUN.items() if k not in ("steps", "eval_every")}
    history, seconds = [], 0.0
    with threadpool_limits(limits=1, user_api="blas"):  # one core each: the two run side by side
        trainer = make(model_config(data), data, seed, dtype=np.float32, total_steps=steps, **run)
        losses = []
        for step in range(1, steps + 1):
            start = time.perf_counter()
            losses.append(trainer.train_step(step))
            seconds += time.perf_counter() - start
            if step % eval_every == 0 or step == steps:
                # along the way the first 500 held-out numbers (Keras decodes without a cache, slowly);
                # at the end all 2,000
                trainer.eval_size = None if step == steps else EVAL_ALONG_THE_WAY
                history.append({"step": step, "train_loss": float(np.mean(losses)), "seconds": seconds,
                                "evaluated": trainer.eval_size or len(data.test_src), **trainer.evaluate()})
                losses = []
    return history, {k: np.asarray(v) for k, v in trainer.numpy_params().items()}, seconds


def _positional_encoding_figure(out_dir):
    pe = positional_encoding(64, 64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1.2, 1], "wspace": 0.35})
    image = left.imshow(pe, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    left.set(xlabel="column i (sin on even, cos on odd)", ylabel="position", title="PE(pos, i), D = 64")
    fig.colorbar(image, ax=left, fraction=0.04)
    for i in (0, 1, 10, 30):
        right.plot(pe[:, i], label=f"column {i}")
    right.set(xlabel="position", title="wavelength grows with the column: 2π … 10000·2π")
    right.legend(fontsize=8, loc="lower left")
    return save(fig, out_dir, "transformer_positional_encoding.png")


def _attention_of(params, config, data, english):
    """Greedy translation of one sentence, and the forward pass's attention maps over it."""
    from scratch.decoding import greedy_decode

    src = data.src_vocab.encode(english)[None]  # (1, S)
    out = greedy_decode(src, params, config)[0]
    out = out[: list(out).index(X.EOS_ID) + 1] if X.EOS_ID in out else out
    tgt_in = np.concatenate([[X.BOS_ID], out[:-1]])[None]  # (1, T): what the decoder read at each step
    _, cache = M.transformer_forward(src, tgt_in, params, config)
    src_tokens = [data.src_vocab.tokens[i] for i in src[0]]
    tgt_tokens = [data.tgt_vocab.tokens[i] for i in out]
    return src_tokens, tgt_tokens, M.attention_maps(cache)


def _alignment_figure(params, config, data, english, out_dir):
    src_tokens, tgt_tokens, maps = _attention_of(params, config, data, english)
    layers = [k for k in maps if k.endswith("cross_attn")]
    fig, axes = plt.subplots(1, len(layers), figsize=(5.2 * len(layers), 5.2))
    for ax, name in zip(np.atleast_1d(axes), layers):
        weights = maps[name][0].mean(axis=0)  # (T, S), the heads' average
        ax.imshow(weights, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(tgt_tokens)), tgt_tokens, fontsize=8)
        ax.set_title(f"decoder layer {name.split('.')[1]}: cross-attention (mean of heads)", fontsize=9)
        ax.set_xlabel("English (source)")
    np.atleast_1d(axes)[0].set_ylabel("French (the model's greedy output)")
    fig.suptitle(f"A held-out number: {english!r} → {X.detokenize(tgt_tokens[:-1])!r}", fontsize=10)
    return save(fig, out_dir, "transformer_alignment.png")


def _heads_figure(params, config, data, english, out_dir):
    src_tokens, tgt_tokens, maps = _attention_of(params, config, data, english)
    rows = [k for k in maps if k.startswith("enc")] + [f"dec.{config.num_layers - 1}.cross_attn"]
    h = config.num_heads
    fig, axes = plt.subplots(len(rows), h, figsize=(2.9 * h, 2.9 * len(rows)))
    for r, name in enumerate(rows):
        queries = src_tokens if name.startswith("enc") else tgt_tokens
        for head in range(h):
            ax = axes[r, head]
            ax.imshow(maps[name][0, head], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"{name} head {head}", fontsize=8)
            ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=6)
            ax.set_yticks(range(len(queries)), queries, fontsize=6)
    fig.suptitle(f"Every head's attention for {english!r} (rows: queries, columns: keys)", fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, "transformer_heads.png")


def _curves_figure(histories, out_dir):
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for impl, history in histories.items():
        steps = [h["step"] for h in history]
        loss_ax.plot(steps, [h["train_loss"] for h in history], label=f"{impl}: train (label-smoothed)")
        loss_ax.plot(steps, [h["test_loss"] for h in history], "--", label=f"{impl}: held-out")
        acc_ax.plot(steps, [h["exact_match"] for h in history], marker="o", ms=3, label=f"{impl}: exact match")
        acc_ax.plot(steps, [h["token_accuracy"] for h in history], ":", label=f"{impl}: token accuracy")
    loss_ax.set(xlabel="step", ylabel="cross-entropy (nats per token)", yscale="log", title="Loss")
    acc_ax.axhline(99, color="gray", lw=0.8, ls="--")
    acc_ax.set(xlabel="step", ylabel="% of held-out numbers (500; the last point 2,000)", ylim=(80, 100.5),
               title="Greedy translations exactly right")
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=7)
    return save(fig, out_dir, "transformer_curves.png")


def _train_job(job):
    impl, seed = job
    return train(impl, seed=seed)


def pick_sentence(data, words="ninety-seven"):
    """The first held-out number whose English holds `words` (never seen in training)."""
    return next(s for s in data.test_sources if words in s)


def render(out_dir, full=False):
    from concurrent.futures import ProcessPoolExecutor

    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _positional_encoding_figure(out_dir)
    data = load_translation_data()
    # two fresh processes ("spawn", not fork: the figures before this one have started TensorFlow's
    # and PyTorch's thread pools in this process, and a forked copy of those can hang)
    seeds, impls = (SEEDS_FULL, IMPLS_FULL) if full else ((0,), ("scratch", "keras"))
    jobs = [(impl, seed) for impl in reversed(impls) for seed in seeds]  # TensorFlow, the slowest, first
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = dict(zip(jobs, pool.map(_train_job, jobs)))
    results = {impl: runs[(impl, 0)] for impl in ("scratch", "keras")}  # the figures show seed 0
    histories = {impl: r[0] for impl, r in results.items()}
    params, config = results["scratch"][1], model_config(data)
    english = pick_sentence(data)
    _alignment_figure(params, config, data, english, out_dir)
    _heads_figure(params, config, data, english, out_dir)
    _curves_figure(histories, out_dir)
    numbers = {"file": "transformer_*.png"}
    print(f"\nEnglish → French number words, {RUN['steps']} steps, the 2,000 held-out numbers translated greedily")
    print(f"  {'implementation':<16} {'seed':>4} {'exact match':>11} {'chrF':>7} {'token acc.':>10} {'held-out loss':>13} "
          f"{'training':>9}")
    for impl, seed in sorted(jobs, key=lambda job: (impls.index(job[0]), job[1])):
        history, _, seconds = runs[(impl, seed)]
        final = history[-1]
        print(f"  {impl:<16} {seed:>4} {final['exact_match']:>10.2f}% {final['chrf']:>7.2f} "
              f"{final['token_accuracy']:>9.2f}% {final['test_loss']:>13.4f} {seconds:>8.0f}s")
        suffix = "" if seed == 0 else f"_seed{seed}"
        numbers.update({f"{impl}_exact_match{suffix}": round(final["exact_match"], 2),
                        f"{impl}_chrf{suffix}": round(final["chrf"], 2), f"{impl}_train_seconds{suffix}": seconds})
    numbers["targets"] = []
    for impl in impls:
        matches = [runs[(impl, seed)][0][-1]["exact_match"] for seed in seeds]
        if len(seeds) > 1:
            print(f"  {impl:<16} mean {np.mean(matches):.2f}%, range {min(matches):.2f} … {max(matches):.2f}%")
        # the target holds on every seed, so the worst seed is the one set beside it
        label = f"translator exact match %, {impl}" + (f", worst of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "")
        numbers["targets"].append((label, min(matches), 99.0, ">="))
    return numbers
