"""The README of the student package: what to write, in what order, and how to check it."""


def readme(topics, tasks, hints):
    cell = {t.name: hints.get(t.name, "").replace("|", "\\|") for t in tasks}  # a | would split the table's cell
    rows = "\n".join(f"| `scratch/{t.module}.py` | `{t.call.function}` | `python -m pytest -m {t.name}` | {cell[t.name]} |"
                     for t in tasks)  # the function as written (SGD.step), its marker (sgd_step)
    return f"""# Homework: {", ".join(topics)}

Every function listed below raises `NotImplementedError` until you write it. Its docstring says
what it computes; the module's docstring defines the shape letters; the message of the
`NotImplementedError` carries a hint. Replace the `raise` line with your code and leave
everything else as it is: the grader calls these functions by name, with these arguments, and
expects them to return what the docstring says.

## Set up

Python 3.10 or newer, with NumPy and pytest:

```bash
pip install numpy pytest
```

## Check one function at a time

Each function has its own pytest marker:

```bash
python -m pytest -m softmax_forward     # the checks of one function
python -m pytest                        # all of them
```

Two kinds of checks run for each function:

- **expected values**: your function on a few fixed inputs (stored in `tests/cases/`), compared
  with what the reference solution returned on them, within a tolerance that depends on the
  dtype (float32 inputs must give float32 outputs). A backward is called with the reference
  forward's cache, so you can write and check it before your forward is right. What keeps state
  (an optimizer's `step`, `decoder_step` and its key/value cache) is called several times in a
  row, the state kept from one call to the next, and compared after every call: `step 2:
  params.W` is the parameters after the second step, `step 1: state_dict.m.W` Adam's first
  moment after the first.
- **gradients**: your backward against central differences of your own forward along a random
  direction, with a random upstream gradient (`scratch/gradcheck.py`; you can call
  `check_vjp` yourself while you work).

A failing check names the function, the output, the largest error, and what it expected.

## What the grader does

Your instructor grades with `python -m checks.homework grade`. It calls each of your functions
in a separate process on many inputs that Hypothesis draws (float64 and float32, masks,
extreme values such as scores of ±1000 for a softmax), compares every output and gradient with
the reference solution, and scores one point per function, all or nothing. When a function
fails, the feedback shows the smallest input on which it fails, the expected and the received
values, and the largest error. Passing the public checks is a good sign, not a guarantee.

A function that prints, reads files, or runs for longer than a few seconds on small inputs
will lose its point: keep them pure NumPy, like the rest of `scratch/`.

## The functions

| file | function | its checks | hint |
|---|---|---|---|
{rows}
"""
