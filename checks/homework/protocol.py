"""What the grader and its child worker say to each other: framed `.npz` messages over a pipe.

This file is loaded by path inside the child, next to the untrusted submission, and imported
normally by the parent. It uses only the standard library and NumPy, and holds no solution.

A message is 8 bytes of big-endian length, then an uncompressed `.npz` archive. The archive's
entry `__meta__` is a UTF-8 JSON document (as a uint8 array); every other entry is an array.
Structured values (the arguments of a call, a forward's cache) travel as a JSON tree whose
leaves name arrays of the archive: `pack` builds the tree, `unpack` rebuilds the value. A
np.random.Generator travels as its PCG64 state (plain ints in the JSON): the receiver gets a new
generator that draws exactly what the sent one would have, so the reference and the submission
both draw from the same numbers, each from its own fresh copy.

Why not pickle: unpickling runs code, so a submission could make the parent execute anything.
The parent reads archives with `allow_pickle=False`, checks the uncompressed size of every
entry before reading it (no zip bomb), and never rebuilds a class from the child's data.
"""

import io
import json
import os
import zipfile

import numpy as np

MAX_MESSAGE = 64 * 1024 * 1024  # bytes on the wire, and uncompressed bytes in one archive
PLAIN_KINDS = "biuf"  # bool, int, unsigned, float: the only dtypes that may cross


class ProtocolError(Exception):
    """A malformed, oversized or unreadable message."""


# ----------------------------------------------------------------------------------------------
# Values ⇄ (JSON tree, arrays)
# ----------------------------------------------------------------------------------------------


def pack(value, arrays=None):
    """Return (tree, arrays): a JSON-able tree whose array leaves are keys of `arrays`."""
    arrays = {} if arrays is None else arrays

    def leaf(x):
        key = f"a{len(arrays)}"
        arrays[key] = plain_array(x)
        return key

    def walk(x):
        if isinstance(x, np.ndarray):
            return {"array": leaf(x)}
        if isinstance(x, np.generic):
            return {"scalar": leaf(x)}
        if isinstance(x, np.random.Generator):  # its state: the other side gets a fresh one that draws the same
            state = x.bit_generator.state
            if state.get("bit_generator") != "PCG64":
                raise TypeError(f"cannot send a Generator of {state.get('bit_generator')!r}: only PCG64 (np.random.default_rng)")
            return {"generator": state}
        if x is None or isinstance(x, (bool, int, float, str)):
            return {"value": x}
        if isinstance(x, tuple) and hasattr(x, "_fields"):  # a NamedTuple: keep its class's name
            return {"namedtuple": [type(x).__module__, type(x).__qualname__], "items": [walk(i) for i in x]}
        if isinstance(x, (tuple, list)):
            return {type(x).__name__: [walk(i) for i in x]}
        if isinstance(x, dict) and all(isinstance(k, str) for k in x):
            return {"dict": [[k, walk(v)] for k, v in x.items()]}
        raise TypeError(f"cannot send a value of type {type(x).__name__}")

    return walk(value), arrays


def unpack(tree, arrays, find_class):
    """Rebuild what `pack` packed; `find_class(module, name)` supplies each NamedTuple's class."""

    def walk(t):
        if "array" in t:
            return arrays[t["array"]]
        if "scalar" in t:
            return arrays[t["scalar"]][()]
        if "value" in t:
            return t["value"]
        if "generator" in t:
            return generator(t["generator"])
        if "namedtuple" in t:
            return find_class(*t["namedtuple"])(*[walk(i) for i in t["items"]])
        if "tuple" in t:
            return tuple(walk(i) for i in t["tuple"])
        if "list" in t:
            return [walk(i) for i in t["list"]]
        if "dict" in t:
            return {k: walk(v) for k, v in t["dict"]}
        raise ProtocolError(f"unknown node {sorted(t)}")

    return walk(tree)


def generator(state):
    """A new np.random.Generator in `state` (PCG64's state dict): it draws what the sent one would have."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ProtocolError("a generator must be sent as PCG64's state")
    bits = np.random.PCG64()
    try:
        bits.state = state
    except (TypeError, ValueError, KeyError) as error:
        raise ProtocolError(f"unusable generator state: {error}") from None
    return np.random.Generator(bits)


def plain_array(x):
    """A base-class ndarray copy of `x` with a plain dtype, whatever subclass or object came in."""
    out = np.array(x, copy=True, subok=False)
    if type(out) is not np.ndarray or out.dtype.kind not in PLAIN_KINDS:
        raise TypeError(f"expected numbers, got {type(x).__name__} of dtype {getattr(out, 'dtype', '?')}")
    return out


def select(result, paths):
    """{name: plain array} for each name → path into `result` (an index, a key or a field per step).

    A dict at the end of a path is flattened to `name.key` entries, so a dict of parameter
    gradients arrives as one array per parameter.
    """
    outputs = {}
    for name, path in paths.items():
        value = navigate(result, path)
        if isinstance(value, dict):
            for key, item in value.items():
                outputs[f"{name}.{key}"] = plain_array(item)
        else:
            outputs[name] = plain_array(value)
    return outputs


def navigate(value, path):
    """Follow a path: an int indexes, a str is a dict key or else a field name."""
    for step in path:
        if isinstance(step, int) or isinstance(value, dict):
            value = value[step]
        else:
            value = getattr(value, step)
    return value


# ----------------------------------------------------------------------------------------------
# Sequences of calls: state that lives from one call to the next
# ----------------------------------------------------------------------------------------------


def run_steps(module, values, steps):
    """Make a sequence of calls into `module`; yield {name: plain array} after each one.

    `values` are the slots 0, 1, … the calls start from, and each call's return value becomes
    the next slot, so an object one call builds (an optimizer) and a value a call changes in
    place (the parameters, a decoding state) are the very same objects at the next call. A step
    is [callee, arguments, [[output name, path], …]]: callee "name" is `module.name`, "@i" the
    object in slot i, "@i.name" its attribute (a method). An argument is a slot, or a path into
    one ([slot, 1]: the second item of what a call returned, the new state of a pure step such
    as gpt_step's key/value cache). A path starts with a slot.

    The grader runs the reference this way, the child the submission, and the public checks
    the student's code, so the three can never disagree about what a sequence means.
    """
    slots = list(values)
    for callee, arguments, selection in steps:
        if callee.startswith("@"):
            slot, _, name = callee[1:].partition(".")
            target = slots[int(slot)]
            target = getattr(target, name) if name else target
        else:
            target = getattr(module, callee)
        slots.append(target(*[slots[a] if isinstance(a, int) else navigate(slots[a[0]], a[1:]) for a in arguments]))
        yield select(slots, {name: path for name, path in selection})


# ----------------------------------------------------------------------------------------------
# Framing
# ----------------------------------------------------------------------------------------------


def encode(meta, arrays=None):
    """One message: the 8-byte length, then an .npz holding `meta` as JSON and the arrays."""
    buffer = io.BytesIO()
    entries = {"__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    entries.update(arrays or {})
    np.savez(buffer, **entries)
    body = buffer.getvalue()
    return len(body).to_bytes(8, "big") + body


def decode(body):
    """(meta, arrays) from a message body, read without pickle and with every size checked."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_MESSAGE:
                raise ProtocolError("the message unpacks to more than the size limit")
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(bytes(arrays.pop("__meta__")).decode())
    except ProtocolError:
        raise
    except Exception as error:  # zipfile, numpy and json all have their own exceptions
        raise ProtocolError(f"unreadable message: {type(error).__name__}: {error}") from None
    if not isinstance(meta, dict):
        raise ProtocolError("the message's __meta__ is not a JSON object")
    for name, array in arrays.items():
        if type(array) is not np.ndarray or array.dtype.kind not in PLAIN_KINDS:
            raise ProtocolError(f"entry {name!r} has dtype {array.dtype}, not a plain number type")
    return meta, arrays


def write_message(fd, data):
    """Write all of `data` to a blocking file descriptor (the child's side)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_exactly(fd, n):
    """n bytes from a blocking descriptor, or None at end of file (the child's side)."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
