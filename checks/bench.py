"""Speed of the readable NumPy reference against PyTorch's CPU built-ins, on this machine.

    python -m checks.bench attention [--repeats 60] [--warmup 5]

Method. Every candidate in a group (scratch, PyTorch's built-in, the PyTorch port when it
imports, and a plain float32 matmul in NumPy and in PyTorch) does the same work on the same
float32 shapes: forward, then backward with one fixed random upstream gradient. Each timed call
includes everything the caller pays for, allocation of outputs and temporaries included. After
`--warmup` untimed rounds the candidates are run *interleaved*, one call each per round with
the order rotated every round, so that noise from other jobs on a shared machine falls on all of
them alike; the table reports the median and the interquartile range over `--repeats` rounds.

GFLOP/s counts only the matrix products, 2·m·n·k each (softmax, bias adds and reductions are
free in the count), so it says how close each implementation gets to the machine's matmul
throughput; the matmul rows show that throughput for one square product of the same FLOP count.
"""

import argparse
import statistics
import time

import numpy as np

import scratch.attention as scratch_attention


def time_interleaved(candidates, repeats, warmup):
    """{name: list of seconds}, calling each candidate once per round in a rotating order."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    seconds = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def matmul_candidates(flops, rng):
    """A square float32 product n×n×n with 2n³ ≈ `flops`, in NumPy and in PyTorch."""
    import torch

    n = round((flops / 2.0) ** (1.0 / 3.0))
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    label = f"{n}x{n}x{n}"
    return {f"numpy matmul {label}": (lambda: a @ b, 2.0 * n**3), f"torch matmul {label}": (lambda: ta @ tb, 2.0 * n**3)}


def try_port():
    """ports.torch.attention when another engineer's port exists and imports, else None."""
    try:
        import ports.torch.attention as port
    except Exception:  # absent or broken: the bench runs without it
        return None
    return port


def sdpa_group(rng, port):
    import torch

    b, h, t, dk = 8, 8, 128, 32
    q, k, v, g = rng.standard_normal((4, b, h, t, dk), dtype=np.float32)
    # QKᵀ and A·V forward; dA = dOut·Vᵀ, dV = Aᵀ·dOut, dQ = dS·K, dK = dSᵀ·Q backward: 6 products
    flops = 6 * 2.0 * b * h * t * t * dk
    tq, tk, tv = (torch.from_numpy(x.copy()).requires_grad_() for x in (q, k, v))
    tg = torch.from_numpy(g)

    def scratch():
        out, cache = scratch_attention.scaled_dot_product_attention_forward(q, k, v)
        return scratch_attention.scaled_dot_product_attention_backward(g, cache)

    def builtin():
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
        return torch.autograd.grad(out, (tq, tk, tv), tg)

    candidates = {"scratch": (scratch, flops), "torch F.sdpa": (builtin, flops)}
    if port is not None:

        def ported():
            out, cache = port.scaled_dot_product_attention_forward(q, k, v)
            return port.scaled_dot_product_attention_backward(g, cache)

        candidates["ports.torch"] = (ported, flops)
    count = f"6 products of 2·(B·H)·T·T·dk = {flops / 1e6:.1f} MFLOP"
    return "SDPA fwd+bwd  B=8 H=8 T=128 dk=32 float32", count, candidates, "torch F.sdpa", 1.1


def mha_group(rng, port):
    import torch

    b, t, d, h = 8, 128, 256, 8
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(d, h, batch_first=True)
    x, g = rng.standard_normal((2, b, t, d), dtype=np.float32)
    tx, tg = torch.from_numpy(x.copy()).requires_grad_(), torch.from_numpy(g)
    # The same weights for scratch: torch keeps W_q W_k W_v stacked as rows of in_proj_weight.
    w = mha.in_proj_weight.detach().numpy()
    bias = mha.in_proj_bias.detach().numpy()
    params = {f"W_{c}": np.ascontiguousarray(w[i * d : (i + 1) * d].T) for i, c in enumerate("qkv")}
    params |= {f"b_{c}": bias[i * d : (i + 1) * d].copy() for i, c in enumerate("qkv")}
    params["W_o"] = np.ascontiguousarray(mha.out_proj.weight.detach().numpy().T)
    params["b_o"] = mha.out_proj.bias.detach().numpy().copy()
    # 4 projections x·W (B·T×D×D) + 2 attention products (B·H·T×T×Dh) forward; each backward
    # product twice over (dW and dx; dA, dV, dQ, dK): 12 of B·T×D×D and 6 of B·H·T×T×Dh in all.
    flops = 12 * 2.0 * b * t * d * d + 6 * 2.0 * b * h * t * t * (d // h)

    def scratch():
        out, cache = scratch_attention.multi_head_attention_forward(x, x, params, h)
        dx_q, dx_kv, grads = scratch_attention.multi_head_attention_backward(g, cache)
        return dx_q + dx_kv, grads  # self-attention: x feeds both inputs

    def builtin():
        out, _ = mha(tx, tx, tx, need_weights=False)
        return torch.autograd.grad(out, [tx, *mha.parameters()], tg)

    # Sanity: both compute the same function (or the timing would compare different work).
    dx_scratch = scratch()[0]
    dx_torch = builtin()[0].numpy()
    err = float(np.max(np.abs(dx_scratch - dx_torch)) / np.max(np.abs(dx_torch)))
    assert err < 1e-4, f"scratch and torch MHA disagree on dx: max rel error {err:.2e}"
    candidates = {"scratch": (scratch, flops), "torch nn.MHA": (builtin, flops)}
    if port is not None:

        def ported():
            out, cache = port.multi_head_attention_forward(x, x, params, h)
            return port.multi_head_attention_backward(g, cache)

        candidates["ports.torch"] = (ported, flops)
    count = f"12 products of 2·(B·T)·D·D + 6 of 2·(B·H)·T·T·Dh = {flops / 1e6:.1f} MFLOP"
    return "MHA fwd+bwd  B=8 T=128 D=256 H=8 self-attention float32", count, candidates, "torch nn.MHA", 1.25


def report(title, count, candidates, reference, target, repeats, warmup, rng):
    """Time one group (plus matmuls of the same FLOP count), print its table; True if target met."""
    flops = next(iter(candidates.values()))[1]
    candidates = {**candidates, **matmul_candidates(flops, rng)}
    seconds = time_interleaved({name: fn for name, (fn, _) in candidates.items()}, repeats, warmup)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"\n{title}\nFLOPs counted: {count}")
    print(f"{'implementation':<26}{'median ms':>10}{'IQR ms':>16}{'x torch':>9}{'GFLOP/s':>9}")
    for name, (_, f) in candidates.items():
        q1, _, q3 = statistics.quantiles(seconds[name], n=4)
        ratio = f"{medians[name] / medians[reference]:.2f}" if name in ("scratch", "ports.torch") else ""
        iqr = f"{q1 * 1e3:.2f}-{q3 * 1e3:.2f}"
        print(f"{name:<26}{medians[name] * 1e3:>10.2f}{iqr:>16}{ratio:>9}{f / medians[name] / 1e9:>9.1f}")
    ratio = medians["scratch"] / medians[reference]
    met = ratio <= target
    print(f"target: scratch <= {target:.2f}x {reference}: {ratio:.2f}x, {'met' if met else 'MISSED'}")
    return met


def bench_attention(args):
    rng = np.random.default_rng(args.seed)
    port = try_port()
    print("ports.torch.attention:", "found, timed" if port is not None else "not importable, skipped")
    met = [report(*group(rng, port), args.repeats, args.warmup, rng) for group in (sdpa_group, mha_group)]
    return all(met)


def print_threads():
    import torch

    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info() if p["user_api"] == "blas")
    except ImportError:
        blas = "unknown (threadpoolctl not installed)"
    print(f"numpy {np.__version__}, torch {torch.__version__}")
    print(f"threads: torch {torch.get_num_threads()}, numpy BLAS {blas}; NumPy elementwise ops: 1")


BENCHES = {"attention": bench_attention}  # later topics add "vae", "gan"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m checks.bench", description=__doc__.split("\n\n")[0])
    topics = parser.add_subparsers(dest="topic", required=True)
    for name in BENCHES:
        sub = topics.add_parser(name, help=f"time {name} against PyTorch")
        sub.add_argument("--repeats", type=int, default=60, help="timed interleaved rounds (default 60)")
        sub.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default 5)")
        sub.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2")
    print_threads()
    BENCHES[args.topic](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
