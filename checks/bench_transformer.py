"""`python -m checks.bench transformer`: a Transformer training step, scratch against the PyTorch
port, and greedy decoding with the key/value cache against decoding by full recomputation.

Training step: the command line's default model (D = 64, 4 heads, F = 256, 2 + 2 layers, the
number-words vocabularies), one real length-bucketed batch of 64 sentence pairs, the same
weights. Scratch: forward, label-smoothed cross-entropy, the hand-written backward and Adam
(ScratchTransformerTrainer._step). PyTorch: TorchTransformerTrainer._step, i.e. the model built
on torch.nn.Transformer, `loss.backward()` and torch.optim.Adam. float32 (what training uses)
and float64. Decoding: the same model translating 64 held-out sources greedily, 32 steps, in
scratch, cached (one new position per step) and recomputed (the whole prefix every step).
"""

import numpy as np

from scratch import decoding as Dec
from scratch import text as X
from scratch.translation import ScratchTransformerTrainer, load_translation_data

BATCH = 64


def _config(data):
    from scratch.encoder_decoder import TransformerConfig

    return TransformerConfig(len(data.src_vocab), len(data.tgt_vocab), d_model=64, num_heads=4, d_ff=256,
                             num_layers=2, max_len=32)


def _flops(config, src, tgt_in):
    """Multiply-adds of the dense products, ×2 for FLOPs, ×3 for forward + backward (dx and dW)."""
    d, f, v = config.d_model, config.d_ff, config.tgt_vocab
    b, s = src.shape
    t = tgt_in.shape[1]
    enc = b * s * (4 * d * d + 2 * d * f) + 2 * b * s * s * d  # projections, FFN, QKᵀ and AV
    dec = b * t * (8 * d * d + 2 * d * f) + 2 * b * t * t * d + 2 * b * t * s * d
    return 3 * 2.0 * (config.num_layers * (enc + dec) + b * t * d * v)


def step_group(data, dtype, rng):
    from ports.torch.train import TorchTransformerTrainer

    config = _config(data)
    trainers = {name: make(config, data, 0, batch_size=BATCH, dtype=dtype)
                for name, make in (("scratch", ScratchTransformerTrainer), ("torch", TorchTransformerTrainer))}
    src, tgt_in, tgt_out = trainers["scratch"].batch(1)
    step = 1000  # a fixed, moderate rate: every timed call is the same update size
    flops = _flops(config, src, tgt_in)
    candidates = {name: ((lambda tr=tr: tr._step(src, tgt_in, tgt_out, step)), flops) for name, tr in trainers.items()}
    title = (f"Transformer training step (fwd + label-smoothed CE + bwd + Adam)  B={BATCH} S={src.shape[1]} "
             f"T={tgt_in.shape[1]} D=64 H=4 F=256 N=2 {np.dtype(dtype).name}")
    count = f"3 × 2 × multiply-adds of the products = {flops / 1e6:.1f} MFLOP"
    return title, count, candidates, "torch", 1.5


def decode_group(data, rng):
    config = _config(data)
    trainer = ScratchTransformerTrainer(config, data, 0, dtype=np.float32)
    src = X.pad_batch(data.test_src[:BATCH])  # (B, S)
    params = trainer.params
    cached, recomputed = Dec.greedy_decode(src, params, config), Dec.greedy_decode(src, params, config, use_cache=False)
    assert np.array_equal(cached, recomputed), "cached and recomputed greedy decoding disagree"
    return {"cached": lambda: Dec.greedy_decode(src, params, config),
            "recomputed": lambda: Dec.greedy_decode(src, params, config, use_cache=False)}, cached.shape[1]


def bench_transformer(args, report, time_interleaved):
    import statistics

    rng = np.random.default_rng(args.seed)
    data = load_translation_data()
    met = [report(*step_group(data, dtype, rng), args, rng) for dtype in (np.float32, np.float64)]
    calls, length = decode_group(data, rng)
    seconds = time_interleaved(calls, max(args.repeats // 4, 2), args.settle)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"\nGreedy decoding, scratch, {BATCH} held-out sources, {length} tokens each, float32 (untrained weights: "
          f"every row runs to max_len)")
    for name, m in medians.items():
        print(f"  {name:<11} {m * 1e3:8.1f} ms")
    print(f"  recomputed / cached = {medians['recomputed'] / medians['cached']:.2f}x (reported, no target)")
    return all(met)
