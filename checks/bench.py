"""Speed of the readable NumPy reference against PyTorch's CPU built-ins, on this machine.

    python -m checks.bench attention [--repeats 40] [--settle 0.15]

Method. Every candidate in a group (scratch, PyTorch's built-in, the PyTorch port when it
imports, and a plain float32 matmul in NumPy and in PyTorch) does the same work on the same
float32 shapes: forward, then backward with one fixed random upstream gradient. Each timed call
includes everything the caller pays for, allocation of outputs and temporaries included. The
candidates take turns, in an order rotated every round, so that noise from other jobs on a
shared machine falls on all of them alike; the table gives the median and the interquartile
range of the timed calls over `--repeats` rounds, and the fastest call.

On its turn a candidate first runs untimed for `--settle` seconds, then one call is timed.
Settling matters: NumPy's OpenBLAS worker threads keep spinning for about 0.1 s after a product
and PyTorch's OpenMP threads spin too, so a call made right after the other library's loses a
core to that library's spinning threads (on two cores PyTorch took about twice as long). Sleeping
instead of settling is no cure: an idle virtual CPU wakes late, which slowed PyTorch's
two-thread kernels by up to 10 ms. After settling, each call runs as in a program that uses
only its own library, warm; the medians agree with timing each candidate alone, back to back.
`--settle 0` shows the interference. At the end the bench prints how much CPU other
processes used during the run: interleaving evens out light noise, not a machine kept busy.

GFLOP/s counts only the matrix products, 2·m·n·k each (softmax, bias adds and reductions are
free in the count), so it says how close each implementation gets to the machine's matmul
throughput; the matmul rows show that throughput for one square product of the same FLOP count.
"""

import argparse
import os
import statistics
import time

import numpy as np

import scratch.attention as scratch_attention


def time_interleaved(candidates, repeats, settle):
    """{name: list of seconds}: each round, every candidate in turn settles, then one call is timed."""
    names = list(candidates)
    seconds = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            run = candidates[name]
            start = time.perf_counter()
            run()  # untimed: warm up, and let the previous candidate's idle threads stop spinning
            while time.perf_counter() - start < settle:
                run()
            start = time.perf_counter()
            run()
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


def assert_same(what, ours, theirs, tol=1e-4):
    """The timed candidates must compute the same gradients, or the table compares different work."""
    for a, b in zip(ours, theirs, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        err = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        assert err < tol, f"{what}: max relative difference {err:.1e} exceeds {tol:.0e}"


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

    assert_same("scratch vs torch SDPA (dq, dk, dv)", scratch(), builtin())
    candidates = {"scratch": (scratch, flops), "torch F.sdpa": (builtin, flops)}
    if port is not None:

        def ported():
            out, cache = port.scaled_dot_product_attention_forward(q, k, v)
            return port.scaled_dot_product_attention_backward(g, cache)

        assert_same("ports.torch vs scratch SDPA (dq, dk, dv)", ported(), scratch())
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

    assert_same("scratch vs torch MHA (dx)", scratch()[:1], builtin()[:1])
    candidates = {"scratch": (scratch, flops), "torch nn.MHA": (builtin, flops)}
    if port is not None:

        def ported():
            out, cache = port.multi_head_attention_forward(x, x, params, h)
            dx_q, dx_kv, grads = port.multi_head_attention_backward(g, cache)
            return dx_q + dx_kv, grads

        assert_same("ports.torch vs scratch MHA (dx)", ported()[:1], scratch()[:1])
        candidates["ports.torch"] = (ported, flops)
    count = f"12 products of 2·(B·T)·D·D + 6 of 2·(B·H)·T·T·Dh = {flops / 1e6:.1f} MFLOP"
    return "MHA fwd+bwd  B=8 T=128 D=256 H=8 self-attention float32", count, candidates, "torch nn.MHA", 1.25


def report(title, count, candidates, reference, target, args, rng):
    """Time one group (plus matmuls of the same FLOP count), print its table; True if target met."""
    flops = next(iter(candidates.values()))[1]
    candidates = {**candidates, **matmul_candidates(flops, rng)}
    seconds = time_interleaved({n: fn for n, (fn, _) in candidates.items()}, args.repeats, args.settle)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"\n{title}\nFLOPs counted: {count}")
    numpy_matmul = next(f / medians[n] for n, (_, f) in candidates.items() if n.startswith("numpy matmul"))
    print(f"{'implementation':<28}{'median ms':>10}{'IQR ms':>14}{'min ms':>8}{'x torch':>8}{'GFLOP/s':>9}{'of numpy matmul':>17}")
    for name, (_, f) in candidates.items():
        q1, _, q3 = statistics.quantiles(seconds[name], n=4, method="inclusive")
        ratio = f"{medians[name] / medians[reference]:.2f}" if name in ("scratch", "ports.torch") else ""
        iqr = f"{q1 * 1e3:.1f}-{q3 * 1e3:.1f}"
        rate = f / medians[name]
        low = min(seconds[name]) * 1e3
        print(f"{name:<28}{medians[name] * 1e3:>10.2f}{iqr:>14}{low:>8.2f}{ratio:>8}{rate / 1e9:>9.1f}{rate / numpy_matmul:>17.0%}")
    ratio = medians["scratch"] / medians[reference]
    met = ratio <= target
    print(f"target: scratch <= {target:.2f}x {reference}: {ratio:.2f}x, {'met' if met else 'MISSED'}")
    return met


def bench_attention(args):
    if args.scale:  # how the cost grows with T: plain, flash and PyTorch's fused kernel (checks/bench_flash.py)
        from checks.bench_flash import bench_scale

        return bench_scale(args, time_interleaved)
    rng = np.random.default_rng(args.seed)
    port = try_port()
    print("ports.torch.attention:", "found, timed" if port is not None else "not importable, skipped")
    met = [report(*group(rng, port), args, rng) for group in (sdpa_group, mha_group)]
    return all(met)


def machine_seconds():
    """(busy, stolen) CPU seconds of the whole machine since boot, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def print_threads():
    import torch

    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info() if p["user_api"] == "blas")
    except ImportError:
        blas = "unknown (threadpoolctl not installed)"
    print(f"numpy {np.__version__}, torch {torch.__version__}")
    print(f"threads: torch {torch.get_num_threads()}, numpy BLAS {blas}; NumPy elementwise ops: 1")


def bench_vae_step(args):
    from checks.bench_vae import bench_vae

    return bench_vae(args, report)


def bench_conv_step(args):
    from checks.bench_conv import bench_conv

    return bench_conv(args, report)


def bench_homework(args):
    from checks.homework.bench import bench_homework as bench

    return bench(args)


def bench_gan_step(args):
    from checks.bench_gan import bench_gan

    return bench_gan(args, report)


def bench_transformer_step(args):
    from checks.bench_transformer import bench_transformer

    return bench_transformer(args, report, time_interleaved)


def bench_gpt_step(args):
    from checks.bench_gpt import bench_gpt

    return bench_gpt(args, report, time_interleaved)


def bench_dcgan_step(args):
    from checks.bench_dcgan import bench_dcgan

    return bench_dcgan(args, report)


def bench_conv_vae_step(args):
    from checks.bench_dcgan import bench_conv_vae

    return bench_conv_vae(args, report)


def bench_diffusion_step(args):
    from checks.bench_diffusion import bench_diffusion

    return bench_diffusion(args, report)


BENCHES = {"attention": bench_attention, "vae": bench_vae_step, "gan": bench_gan_step, "transformer": bench_transformer_step,
           "conv": bench_conv_step, "gpt": bench_gpt_step, "diffusion": bench_diffusion_step, "homework": bench_homework,
           "dcgan": bench_dcgan_step, "conv_vae": bench_conv_vae_step}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m checks.bench", description=__doc__.split("\n\n")[0])
    topics = parser.add_subparsers(dest="topic", required=True)
    for name in BENCHES:
        sub = topics.add_parser(name, help=f"time {name} against PyTorch")
        sub.add_argument("--repeats", type=int, default=40, help="rounds, one timed call each (default 40)")
        sub.add_argument("--settle", type=float, default=0.15, help="untimed running before each timed call, s (default 0.15)")
        sub.add_argument("--seed", type=int, default=0)
    scale = topics.choices["attention"]
    scale.add_argument("--scale", action="store_true", help="time and memory against T, plain vs flash vs PyTorch's fused SDPA")
    scale.add_argument("--sizes", help="with --scale: comma-separated T values (default 128,512,1024,2048,4096)")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2")
    print_threads()
    before, ours, start = machine_seconds(), os.times(), time.perf_counter()
    BENCHES[args.topic](args)
    if before is not None:  # what the other jobs on this machine cost us
        (busy, steal), now = (a - b for a, b in zip(machine_seconds(), before)), os.times()
        others = busy - (now.user + now.system - ours.user - ours.system)
        capacity = (time.perf_counter() - start) * os.cpu_count()
        print(f"\nduring the run other processes used {max(others, 0.0) / capacity:.0%} of the CPUs, "
              f"the hypervisor stole {steal / capacity:.0%}: if either is large, rerun when the machine is idle")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
