"""Support for the public checks: load the stored cases, call your function, compare, gradcheck.

Each file in tests/cases/ holds, for one function, a few inputs drawn by Hypothesis when your
instructor made this package, and the outputs the reference solution gave on them (values, not
code). A backward function is called with the reference forward's cache for its inputs, so it
is checked on its own even while your forward is still wrong.

The gradient checks need no reference at all: your backward must equal central differences
of your own forward, along a random direction, for a random upstream gradient
(scratch/gradcheck.py explains why both must be random).
"""

import importlib
import os
from typing import NamedTuple

import numpy as np

import homework_protocol as protocol

CASE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases")


class Case(NamedTuple):
    id: str
    spec: dict  # module, function, marker, kind, outputs, exact, tolerance; backward: forward, target
    case: dict  # args, expected, dtype, gradcheck; backward: forward_args; steps: the sequence of calls
    arrays: dict


def find_class(module, name):
    return getattr(importlib.import_module(module), name)


def load_cases(folder=CASE_DIR):
    cases = []
    for filename in sorted(os.listdir(folder)):
        if filename.endswith(".npz"):
            with open(os.path.join(folder, filename), "rb") as f:
                spec, arrays = protocol.decode(f.read())
            for i, case in enumerate(spec.pop("cases")):
                cases.append(Case(f"{spec['function']}-{i}-{case['dtype']}", spec, case, arrays))
    return cases


def run_case(c):
    """Call the function on the stored input and compare every output with the stored one.

    A function that keeps state (an optimizer's step, decoder_step and its cache) is called
    several times in a row, the state kept from one call to the next, and its outputs after
    every call are compared, in order: "step 2: params.W" is the parameters after the second."""
    module = importlib.import_module(f"scratch.{c.spec['module']}")
    args = protocol.unpack(c.case["args"], c.arrays, find_class)
    if c.spec["kind"] == "steps":
        received = {}
        for outputs in protocol.run_steps(module, args, c.case["steps"]):
            received.update(outputs)
    else:
        received = protocol.select(getattr(module, c.spec["function"])(*args), dict(c.spec["outputs"]))
    expected = {name: c.arrays[key] for name, key in c.case["expected"].items()}
    assert sorted(received) == sorted(expected), f"{c.spec['function']} returned outputs {sorted(received)}, expected {sorted(expected)}"
    for name, e in expected.items():
        compare(c.spec, name, received[name], e, c.case["dtype"])


def compare(spec, name, r, e, dtype):
    what = f"{spec['module']}.{spec['function']}: {name}"
    assert r.shape == e.shape, f"{what} has shape {r.shape}, expected {e.shape}"
    if spec["exact"]:
        assert r.dtype == e.dtype and np.array_equal(r, e), f"{what} = {r!r}, expected {e!r}"
        return
    assert r.dtype == e.dtype or r.ndim == 0, f"{what} has dtype {r.dtype}, expected {e.dtype} (dtype in = dtype out)"
    rtol, atol = spec["tolerance"][dtype]  # the row of the inputs' dtype
    error = np.abs(r.astype(np.float64) - e.astype(np.float64))
    scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
    ok = np.all(error <= atol * scale + rtol * np.abs(e))
    assert ok, f"{what}: largest error {np.nanmax(error) if error.size else 0:.3g}\nreceived {r!r}\nexpected {e!r}"


def gradient_check(c, rng=None):
    """Relative error of your backward against central differences of your forward (float64)."""
    from scratch.gradcheck import check_vjp

    module = importlib.import_module(f"scratch.{c.spec['module']}")
    args = protocol.unpack(c.case["forward_args"], c.arrays, find_class)
    args = [to_float64(a) for a in args]
    # The differentiable inputs: "dx" is the gradient of argument x, "grads" that of params.
    names = c.spec["arg_names"]
    inputs = {}
    for output in dict(c.spec["outputs"]):
        arg = "params" if output == "grads" else output[1:].lstrip("_")  # dx → x, d_real_logits → real_logits
        value = args[names.index(arg)]
        if isinstance(value, dict):  # only the entries that get a gradient (a generator's, not D's)
            graded = {name.split(".", 1)[1] for name in c.case["expected"] if name.startswith(output + ".")}
            inputs.update({f"{arg}.{key}": v for key, v in value.items() if key in graded})
        else:
            inputs[arg] = value

    def with_inputs(values):
        new = list(args)
        for key, v in values.items():
            arg, _, sub = key.partition(".")
            i = names.index(arg)
            if sub:
                new[i] = {**new[i], sub: v}
            else:
                new[i] = v
        return new

    def forward(values):
        result = getattr(module, c.spec["forward"])(*with_inputs(values))
        return protocol.navigate(result, c.spec["target"]), result[1]

    def backward(g, cache):
        result = getattr(module, c.spec["function"])(g, cache)
        grads = protocol.select(result, dict(c.spec["outputs"]))
        return {("params" + name[len("grads"):] if name.startswith("grads.") else name[1:].lstrip("_")): g
                for name, g in grads.items()}

    return check_vjp(forward, backward, inputs, rng or np.random.default_rng(0)).error


def to_float64(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(np.float64)
    if isinstance(value, dict):
        return {k: to_float64(v) for k, v in value.items()}
    return value
