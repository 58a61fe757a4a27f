"""The port error table: how far each framework port lands from scratch on the same inputs.

Not a picture: `python -m figures` prints it. For softmax, scaled dot-product attention (with a
mask that leaves one query row nothing to attend to) and multi-head attention, in float64 and
float32, every port in `ports/` gets the arrays scratch gets and the same random upstream
gradient; the table shows the largest absolute difference of the forward output and of every
gradient the backward returns. A port that cannot be imported gets one row saying why.
"""

import importlib
import os

import numpy as np

from scratch import attention as scratch_attention

NAME = "port_errors"
PORTS = ("torch", "tensorflow", "keras")
DTYPES = (np.float64, np.float32)


def _import_port(port):
    """ports.<port>.attention, imported only when the table is made (frameworks load slowly)."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # bit-reproducible TF CPU kernels
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no TF start-up chatter in the table
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    return importlib.import_module(f"ports.{port}.attention")


def _cases(dtype):
    """[(op label, op name, forward args, forward kwargs)], the same arrays for every implementation."""
    rng = np.random.default_rng(0)

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    # softmax: rows of moderate and of large logits (the max-subtraction must keep them finite)
    x = normal(3, 4, 7, scale=3.0)  # (3, 4, 7)
    x[0, 0] += 500.0
    # SDPA over (B, H) = (2, 3); a random mask (Tq, Tk) in which query row 2 may attend to nothing
    q, k, v = normal(2, 3, 5, 8), normal(2, 3, 6, 8), normal(2, 3, 6, 4)  # (B, H, T·, ·)
    mask = rng.random((5, 6)) < 0.6  # (Tq, Tk)
    mask[:, 0] = True
    mask[2] = False
    # MHA, cross-attention B = 2, Tq = 5, Tk = 6, D = 16, H = 4, padding mask plus one empty row
    params = scratch_attention.init_multi_head_attention(16, rng, dtype)
    params = {name: p + normal(*p.shape, scale=0.1) for name, p in params.items()}  # non-zero biases
    mha_mask = scratch_attention.padding_mask(np.array([6, 4]), 6, t_q=5)  # (B, Tq, Tk)
    mha_mask[1, 3] = False
    return [
        ("softmax", "softmax", (x,), {}),
        ("SDPA, masked", "scaled_dot_product_attention", (q, k, v), {"mask": mask}),
        ("MHA, masked", "multi_head_attention", (normal(2, 5, 16), normal(2, 6, 16), params, 4), {"mask": mha_mask}),
    ]


def _flat(grads):
    """softmax dx, SDPA (dq, dk, dv), MHA (dx_q, dx_kv, {name: grad}) → a list of arrays."""
    if isinstance(grads, np.ndarray):
        return [grads]
    out = []
    for g in grads:
        if isinstance(g, dict):
            out.extend(g[name] for name in sorted(g))
        else:
            out.append(g)
    return out


def _max_abs(a, b):
    """Largest |a − b| in float64; inf when shapes differ or anything is not finite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _compare(module, op, args, kwargs, dout_rng):
    """(forward error, gradient error, note) of `module` against scratch for one op."""
    ref_out, ref_cache = getattr(scratch_attention, f"{op}_forward")(*args, **kwargs)
    dout = dout_rng.standard_normal(ref_out.shape).astype(ref_out.dtype)  # random upstream gradient
    ref_grads = _flat(getattr(scratch_attention, f"{op}_backward")(dout, ref_cache))
    out, cache = getattr(module, f"{op}_forward")(*args, **kwargs)
    grads = _flat(getattr(module, f"{op}_backward")(dout, cache))
    notes = [f"out dtype {np.asarray(out).dtype}"] if np.asarray(out).dtype != ref_out.dtype else []
    if len(grads) != len(ref_grads):
        return _max_abs(out, ref_out), float("inf"), f"{len(grads)} gradients, expected {len(ref_grads)}"
    grad_error = max(_max_abs(g, r) for g, r in zip(grads, ref_grads))
    notes += [f"grad dtype {np.asarray(g).dtype}" for g, r in zip(grads, ref_grads) if np.asarray(g).dtype != r.dtype][:1]
    return _max_abs(out, ref_out), grad_error, "; ".join(notes)


def error_table():
    """[(port, op, dtype name, forward error, gradient error, note)]; errors are None when not run."""
    rows = []
    for port in PORTS:
        try:
            module = _import_port(port)
        except Exception as error:  # a missing framework, or a port still being written
            rows.append((port, "(all)", "-", None, None, f"not importable: {type(error).__name__}: {error}"))
            continue
        for dtype in DTYPES:
            for label, op, args, kwargs in _cases(dtype):
                try:
                    fwd, grad, note = _compare(module, op, args, kwargs, np.random.default_rng(1))
                except Exception as error:
                    fwd, grad, note = None, None, f"failed: {type(error).__name__}: {error}"
                rows.append((port, label, np.dtype(dtype).name, fwd, grad, note))
    return rows


def print_table(rows):
    print("\nPort errors: max |port − scratch| on the same inputs and the same random upstream gradient")
    print("  (SDPA and MHA masks each leave one query row with no key: its output and gradients must be 0)")
    print(f"  {'port':<12}{'op':<14}{'dtype':<9}{'forward':>10}{'gradient':>11}  note")
    for port, label, dtype, fwd, grad, note in rows:
        fwd_text = "-" if fwd is None else f"{fwd:.1e}"
        grad_text = "-" if grad is None else f"{grad:.1e}"
        print(f"  {port:<12}{label:<14}{dtype:<9}{fwd_text:>10}{grad_text:>11}  {note[:110]}")


def render(out_dir, full=False):
    rows = error_table()
    print_table(rows)
    summary = {"ports_compared": ", ".join(sorted({r[0] for r in rows if r[3] is not None})) or "none"}
    for dtype in DTYPES:
        name = np.dtype(dtype).name
        ran = [r for r in rows if r[2] == name and r[3] is not None]
        if ran:
            summary[f"max_fwd_{name}"] = max(r[3] for r in ran)
            summary[f"max_grad_{name}"] = max(r[4] for r in ran)
    summary["rows_not_run"] = sum(1 for r in rows if r[3] is None)
    return summary
