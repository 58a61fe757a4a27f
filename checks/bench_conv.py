"""`python -m checks.bench conv`: conv2d and conv_transpose2d at DCGAN's sizes, scratch against PyTorch.

The four layers of a DCGAN on 28×28 digits (Radford et al. 2016, as pytorch/examples and the
TensorFlow tutorial size them), batch 64, float32, kernel 4, stride 2, padding 1:
the discriminator's conv2d 1→64 (28→14) and 64→128 (14→7), the generator's mirror,
conv_transpose2d 128→64 (7→14) and 64→1 (14→28). Each candidate runs the forward and the
backward (dx, dw, db) with one fixed upstream gradient: scratch/conv.py against
torch.nn.functional with autograd (PyTorch's CPU kernels, oneDNN where it has them), and the
PyTorch port when it imports. Timed with checks/bench.py's interleaved method.

FLOPs: the forward is one product of (B·L) × K × C_out (conv2d: K = C_in·kh·kw, L = Ho·Wo; the
transpose: its input's rows (B·H·W) × C_in times C_in × C_out·kh·kw); the backward is two products
of the same size (dw and dx). 3 × 2·m·n·k in all; im2col, col2im and the bias are free in the count.
"""

import numpy as np

from scratch import conv as C

BATCH, KERNEL, STRIDE, PADDING = 64, 4, 2, 1
LAYERS = (  # (name, transposed, C_in, C_out, input side)
    ("conv2d 1→64, 28→14", False, 1, 64, 28),
    ("conv2d 64→128, 14→7", False, 64, 128, 14),
    ("conv_transpose2d 128→64, 7→14", True, 128, 64, 7),
    ("conv_transpose2d 64→1, 14→28", True, 64, 1, 14),
)


def try_port():
    """ports.torch.conv when it exists and imports, else None."""
    try:
        import ports.torch.conv as port
    except Exception:  # absent or broken: the bench runs without it
        return None
    return port


def conv_group(layer, rng, port):
    import torch

    from checks.bench import assert_same

    name, transposed, c_in, c_out, side = layer
    w_shape = (c_in, c_out, KERNEL, KERNEL) if transposed else (c_out, c_in, KERNEL, KERNEL)
    x = rng.standard_normal((BATCH, c_in, side, side), dtype=np.float32)
    w = (rng.standard_normal(w_shape, dtype=np.float32) * 0.05).astype(np.float32)
    b = rng.standard_normal(c_out, dtype=np.float32)
    forward = C.conv_transpose2d_forward if transposed else C.conv2d_forward
    backward = C.conv_transpose2d_backward if transposed else C.conv2d_backward
    out, _ = forward(x, w, b, STRIDE, PADDING)
    g = rng.standard_normal(out.shape, dtype=np.float32)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    tg = torch.from_numpy(g)
    functional = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d

    def scratch():
        _, cache = forward(x, w, b, STRIDE, PADDING)
        return backward(g, cache)

    def builtin():
        return torch.autograd.grad(functional(tx, tw, tb, STRIDE, PADDING), (tx, tw, tb), tg)

    reference = f"torch F.{functional.__name__}"
    assert_same(f"scratch vs {reference} (dx, dw, db)", scratch(), builtin())
    candidates = {"scratch": scratch, reference: builtin}
    if port is not None:
        port_forward = getattr(port, forward.__name__)
        port_backward = getattr(port, backward.__name__)

        def ported():
            _, cache = port_forward(x, w, b, STRIDE, PADDING)
            return port_backward(g, cache)

        try:
            assert_same(f"ports.torch vs scratch {name} (dx, dw, db)", ported(), scratch())
            candidates["ports.torch"] = ported
        except Exception as error:  # another engineer's port, still in progress: reported, not timed
            print(f"ports.torch {name}: not timed ({type(error).__name__}: {error})")
    if transposed:
        m, k, n = BATCH * side * side, c_in, c_out * KERNEL * KERNEL  # rows of x times w (C_in, C_out·kh·kw)
    else:
        m, k, n = BATCH * out.shape[2] * out.shape[3], c_in * KERNEL * KERNEL, c_out  # patches times wᵀ
    flops = 3 * 2.0 * m * k * n
    count = f"3 products of 2·{m}·{k}·{n} = {flops / 1e6:.1f} MFLOP"
    title = f"{name} fwd+bwd  B={BATCH} kernel {KERNEL} stride {STRIDE} padding {PADDING} float32"
    return title, count, {label: (fn, flops) for label, fn in candidates.items()}, reference, 1.5


def bench_conv(args, report):
    rng = np.random.default_rng(args.seed)
    port = try_port()
    print("ports.torch.conv:", "found, timed" if port is not None else "not importable, skipped")
    met = [report(*conv_group(layer, rng, port), args, rng) for layer in LAYERS]
    return all(met)
