"""`python -m checks.bench gpt`: a GPT training step, scratch against the PyTorch port, and generation with
and without the key/value cache.

Training step: the command line's default model (`python -m scratch train gpt`: 3 blocks of width
D = 64, 4 heads, the census surnames, 28 tokens, block size 14), one real batch of 64 names (step
1's, padded to its longest), the same weights, the same rate. Scratch: gpt_loss_forward, the
hand-written backward and AdamW (ScratchGPTTrainer._step). PyTorch: TorchGPTTrainer._step, i.e.
nanoGPT's nn.Module (F.scaled_dot_product_attention), `loss.backward()` and torch.optim.AdamW.
float32, as training runs, and float64.

Threads. The scratch trainer runs NumPy's BLAS on one thread (its products are too small to
share; see ScratchGPTTrainer.BLAS_THREADS), so the bench does too, and times PyTorch on one thread
(the same resources: the target is judged there) and on its default, every core.

Generation: scratch's generate of a whole block (13 new tokens after the start token) for 64
rows at temperature 1, with the cache (gpt_step: one new position per step) and without (the
whole prefix again every step), in tokens per second.
"""

import statistics

import numpy as np

BATCH = 64


def _flops(config, tokens):
    """Multiply-adds of the dense products, ×2 for FLOPs, ×3 for forward + backward (dx and dW)."""
    b, t = tokens.shape[0], tokens.shape[1] - 1
    d, v = config.d_model, config.vocab_size
    per_layer = b * t * (4 * d * d + 8 * d * d) + 2 * b * t * t * d  # q, k, v, o; the MLP; QKᵀ and AV
    return 3 * 2.0 * (config.n_layer * per_layer + b * t * d * v)


def _trainers(dtype):
    from ports.torch.train import TorchGPTTrainer
    from scratch import language_model as LM
    from scratch.gpt import GPTConfig

    data = LM.load_lm_data("names")
    config = GPTConfig(len(data.vocab), data.block_size, n_layer=3, n_head=4, d_model=64)
    make = dict(batch_size=BATCH, lr=1e-2, warmup=200, decay_steps=4000, dtype=dtype)
    return config, {"scratch": LM.ScratchGPTTrainer(config, data, 0, **make), "torch": TorchGPTTrainer(config, data, 0, **make)}


def step_group(dtype, default_threads):
    import torch

    config, trainers = _trainers(dtype)
    tokens = trainers["scratch"].batch(1)  # (B, T + 1)
    step = 1000  # a fixed, moderate rate: every timed call is the same update size
    # the same work: from the same weights the two compute the same loss (the trajectories themselves are
    # checked in float64 by checks/test_gpt_ports.py; after one float32 step, entries whose gradient is
    # ~ε move by ±lr in either, their sign the rounding's)
    losses = [trainers[name]._step(tokens, step) for name in trainers]
    assert abs(losses[0] - losses[1]) < 1e-5 * abs(losses[0]), f"scratch and torch losses differ: {losses}"

    def torch_step(threads):
        def run():
            torch.set_num_threads(threads)
            try:
                return trainers["torch"]._step(tokens, step)
            finally:
                torch.set_num_threads(1)
        return run

    flops = _flops(config, tokens)
    candidates = {"scratch": (lambda: trainers["scratch"]._step(tokens, step), flops),
                  "torch": (torch_step(1), flops),
                  f"torch, {default_threads} threads": (torch_step(default_threads), flops)}
    title = (f"GPT training step (fwd + next-token CE + bwd + AdamW)  B={BATCH} T={tokens.shape[1] - 1} D=64 H=4 "
             f"L=3 V={config.vocab_size} {np.dtype(dtype).name}; scratch and 'torch' on one thread")
    count = f"3 × 2 × multiply-adds of the products = {flops / 1e6:.1f} MFLOP"
    return title, count, candidates, "torch", 1.2


def generate_group():
    from scratch import gpt as G
    from scratch import language_model as LM

    config, trainers = _trainers(np.float32)
    params = trainers["scratch"].params
    prompt = np.full((BATCH, 1), LM.BOUNDARY_ID)  # (B, 1): the start token
    new = config.block_size  # the most a prompt of one token can take
    run = lambda cached: G.generate(params, config, prompt, new, np.random.default_rng(0), use_cache=cached)  # noqa: E731
    assert np.array_equal(run(True), run(False)), "cached and recomputed generation disagree"
    return {"cached": lambda: run(True), "recomputed": lambda: run(False)}, BATCH * new, new


def bench_gpt(args, report, time_interleaved):
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            met = []
            for dtype in (np.float32, np.float64):
                title, count, candidates, reference, target = step_group(dtype, threads)
                met.append(report(title, count, candidates, reference, target, args, np.random.default_rng(args.seed)))
            calls, tokens, new = generate_group()
            seconds = time_interleaved(calls, max(args.repeats // 4, 2), args.settle)
    finally:
        torch.set_num_threads(threads)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"\nGeneration, scratch, {BATCH} rows × {new} new tokens, float32, temperature 1 (untrained weights; "
          f"one BLAS thread)")
    for name, m in medians.items():
        print(f"  {name:<11} {m * 1e3:8.1f} ms   {tokens / m:10.0f} tokens/s")
    print(f"  cached / recomputed speed = {medians['recomputed'] / medians['cached']:.2f}x (reported, no target)")
    return all(met)
