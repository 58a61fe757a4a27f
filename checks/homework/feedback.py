"""What a student reads: the smallest failing input, what was expected, what came back, and how far off.

The parent validates the child's arrays itself (names, shapes, dtypes) before comparing values
with `checks.tolerances.assert_close`, the one comparison every check in the project uses, so
a grade and a failing check can never disagree about what "close" means.
"""

from typing import NamedTuple

import numpy as np

from checks.tolerances import TOLERANCES, assert_close
from checks.homework.tasks import Backward, Steps

SHOW = dict(precision=6, threshold=40, edgeitems=3, max_line_width=100)


class Mismatch(NamedTuple):
    output: str  # which output or gradient
    reason: str  # one sentence


def show(value):
    """An input or output, small enough to read: arrays with dtype and shape, dicts one per line."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, np.ndarray):
        text = np.array2string(value, **SHOW)
        text = text if "\n" not in text else "\n      " + text.replace("\n", "\n      ")
        return f"{text}  ({value.dtype}, shape {value.shape})"
    if isinstance(value, np.random.Generator):
        return generator(value)
    if isinstance(value, tuple) and hasattr(value, "_fields") and any(isinstance(v, (tuple, np.ndarray)) for v in value):
        return f"{type(value).__name__}(" + ", ".join(f"{k}={show(v)}" for k, v in zip(value._fields, value)) + ")"
    if isinstance(value, tuple) and any(isinstance(v, np.ndarray) for v in value):  # a KVCache's arrays, one per layer
        return "(" + ", ".join(show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def generator(rng):
    """A generator as the code that makes it, when it is still in its seed's first state."""
    seed = rng.bit_generator.seed_seq.entropy if hasattr(rng.bit_generator, "seed_seq") else None
    if isinstance(seed, int) and np.random.default_rng(seed).bit_generator.state == rng.bit_generator.state:
        return f"np.random.default_rng({seed})"
    return f"a np.random.Generator ({type(rng.bit_generator).__name__}) already drawn from"


def mismatch(received, expected, dtype, exact):
    """The first problem with the child's outputs, as a Mismatch, or None if they all pass."""
    missing = sorted(set(expected) - set(received))
    extra = sorted(set(received) - set(expected))
    if missing or extra:
        return Mismatch(", ".join(missing + extra) or "?", f"expected outputs {sorted(expected)}, received {sorted(received)}")
    for name, e in expected.items():
        r = received[name]
        if r.shape != e.shape:
            return Mismatch(name, f"{name} has shape {r.shape}, expected shape {e.shape}")
        if exact or e.dtype.kind in "biu":  # masks; counts, such as an optimizer's step number
            if r.dtype != e.dtype:
                return Mismatch(name, f"{name} has dtype {r.dtype}, expected {e.dtype}")
            if not np.array_equal(r, e):
                return Mismatch(name, f"{name} differs from the expected value at {int(np.sum(r != e))} of {e.size} entries")
            continue
        if r.dtype.kind != "f":
            return Mismatch(name, f"{name} has dtype {r.dtype}, expected a floating-point array")
        if e.ndim and r.dtype != e.dtype:
            return Mismatch(name, f"{name} has dtype {r.dtype} for {dtype} inputs: dtype in must equal dtype out "
                                  f"(a NumPy float64 scalar or array mixed into float32 math promotes it)")
        bad = ~np.isfinite(r) & np.isfinite(e)
        if np.any(bad):
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            return Mismatch(name, f"{name} holds {float(r[where])} at index {where} where {float(e[where])} is expected "
                                  f"(an overflow, a log of 0, or 0/0?)")
        try:
            with np.errstate(all="ignore"):  # inf − inf and the like are reported, not warned about
                assert_close(r, e, impl="submission", what=name, dtype=dtype)
        except AssertionError:
            return Mismatch(name, largest_error(name, r, e, dtype))
    return None


def largest_error(name, received, expected, dtype):
    r, e = received.astype(np.float64), expected.astype(np.float64)
    with np.errstate(all="ignore"):
        error = np.abs(r - e)
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(error), error.shape)) if error.ndim else ()
    tol = TOLERANCES[np.dtype(dtype)]
    return (f"{name} differs: largest error {float(error.max()):.3g} at index {worst} "
            f"(received {r[worst]:.6g}, expected {e[worst]:.6g}; tolerance for {dtype}: "
            f"rtol {tol.rtol:g}, atol {tol.atol:g} × max(1, max |expected|))")


def describe_mismatch(problem, received, expected):
    lines = [problem.reason]
    if problem.output in expected and problem.output in received:
        lines.append(f"expected {problem.output} = {show(expected[problem.output])}")
        lines.append(f"received {problem.output} = {show(received[problem.output])}")
    return "\n".join(lines)


def describe_case(task, case, status):
    """The input, named as the function's arguments; for a backward, the upstream gradient too."""
    call = task.call
    head = "smallest failing input (shrunk by Hypothesis)" if status in ("failed", "error") else "input"
    lines = [f"{head}, {case['dtype']}:"]
    if isinstance(call, Steps):
        return "\n".join(lines + describe_steps(call, case))
    names = list(call.args) + ([call.dout] if isinstance(call, Backward) else [])
    lines += [f"  {name} = {show(case[name])}" for name in names]
    if isinstance(call, Backward):
        lines.append(f"  ({call.function} was given the reference {call.forward}'s cache for these inputs, and {call.dout})")
    return "\n".join(lines)


def describe_steps(call, case):
    """A sequence: what is built, the state every call shares (as it was before the first), then
    each call's own inputs."""
    steps = case["steps"]
    shared = [name for name in dict.fromkeys(call.args) if name not in steps[0]]
    arguments, calls = ", ".join(call.args), "1 call" if len(steps) == 1 else f"{len(steps)} calls in a row"
    if call.build:
        constructor, names = call.build
        built = f"{constructor}({', '.join(f'{name}={show(case[name])}' for name in names)})"
        obj = "f" if call.callee == "." else "obj"  # a callable it returns, or an object whose method is called
        lines = [f"  {obj} = {built}, then {obj}{call.callee.rstrip('.')}({arguments}), {calls}"]
    else:
        lines = [f"  {call.callee}({arguments}), {calls}"]
    carried = [name for name in shared if name in (call.carry or {})]  # handed on through the return value
    kept = [name for name in shared if name not in carried]
    if kept:
        lines[0] += f" on the same {', '.join(kept)} (a call's changes to them are what the next call gets)"
    if carried:
        lines[0] += (f"{',' if kept else ''} each {call.label} after the first given the {', '.join(carried)} "
                     f"that the {call.label} before returned")
    lines += [f"  {name} = {show(case[name])}  ({'given to' if name in carried else 'before'} {call.label} 1)"
              for name in shared]
    for k, step in enumerate(steps, start=1):
        lines.append(f"  {call.label} {k}: " + ", ".join(f"{name} = {show(value)}" for name, value in step.items()))
    return lines
