"""`python -m figures`: train the small models, render every figure, print a summary table.

    python -m figures                 # every figure, the quick protocol (minutes on 2 CPU cores)
    python -m figures --full          # the longer protocols
    python -m figures --only attention_scale --out /tmp/figs

A topic adds its figures by appending its module names to FIGURES below; each module exposes
NAME and render(out_dir, full=False) -> dict of summary numbers (see figures/__init__.py).
"""

import argparse
import importlib
import os
import sys
import time

# The registry, in the order of the chapters. Each entry is a module of this package.
FIGURES = [
    "attention_masks",
    "attention_scale",
    "flash_attention",
    "conv_arithmetic",
    "port_errors",
    "vae",
    "gan",
    "dcgan",
    "image_scores",
    "diffusion",
    "diffusion_digits",
    "transformer",
    "gpt",
]

# Rendered only with --full (or --only NAME): the guided digit U-Net needs its default run (1,500 steps, about 8
# CPU minutes) to show anything; a short run's digits are noise. image_scores trains the DCGAN and the conv VAE
# with the command line's defaults on three seeds each (about 20 minutes on two cores) for the README's table.
# The committed PNGs are from those runs.
FULL_ONLY = {"diffusion_digits", "image_scores"}

DEFAULT_OUT = os.path.dirname(os.path.abspath(__file__))


def _format(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _met(value, target, op):
    return value >= target if op == ">=" else value <= target


def print_targets(rows):
    """The headline figures beside their targets, met or missed: does this machine reproduce the README?

    A module lists them under numbers["targets"] as (what, value, target, ">=" or "<=") tuples; a short
    protocol's figure carries "(short run)" in its name, as the README's tables give the long one's."""
    targets = [t for _, _, numbers in rows if isinstance(numbers, dict) for t in numbers.get("targets", ())]
    if not targets:
        return 0
    print("\nTargets (the README's headline numbers; a MISSED line is worth a look)")
    width = max(len(what) for what, *_ in targets)
    missed = 0
    for what, value, target, op in targets:
        ok = _met(value, target, op)
        missed += not ok
        print(f"  {what.ljust(width)}  {_format(float(value)):>8} {'≥' if op == '>=' else '≤'} {_format(float(target)):<8}"
              f"  {'met' if ok else 'MISSED'}")
    print(f"  {len(targets) - missed} of {len(targets)} met")
    return missed


def print_summary(rows, out_dir):
    """rows: (name, seconds, numbers dict or error string); a "file" entry names the PNG written."""
    print(f"\nSummary (figures written to {out_dir})")
    width = max(len(name) for name, _, _ in rows)
    print(f"  {'figure'.ljust(width)}  {'time':>7}  {'file':<22}  key numbers")
    print(f"  {'-' * width}  {'-' * 7}  {'-' * 22}  {'-' * 40}")
    for name, seconds, numbers in rows:
        if isinstance(numbers, str):
            file, lines = "-", [f"FAILED: {numbers}"]
        else:
            numbers = dict(numbers)
            numbers.pop("targets", None)  # printed at the end, all together (print_targets)
            file = numbers.pop("file", "(printed table)")
            lines = [f"{key} = {_format(value)}" for key, value in numbers.items()] or [""]
        print(f"  {name.ljust(width)}  {seconds:6.1f}s  {file:<22}  {lines[0]}")
        for line in lines[1:]:  # one number a line, aligned under the first
            print(f"  {' ' * width}  {' ' * 7}  {' ' * 22}  {line}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m figures", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNGs (default: %(default)s)")
    parser.add_argument("--full", action="store_true", help="run the longer protocols")
    parser.add_argument("--only", metavar="NAME", action="append", choices=FIGURES,
                        help="render only this figure (repeatable); one of: " + ", ".join(FIGURES))
    args = parser.parse_args(argv)

    selected = args.only or [name for name in FIGURES if args.full or name not in FULL_ONLY]
    skipped = [name for name in FIGURES if name not in selected and not args.only]
    if skipped:
        print(f"[figures] --full only, skipped: {', '.join(skipped)}", flush=True)
    rows, failed = [], False
    start = time.perf_counter()
    for name in selected:
        print(f"[figures] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"figures.{name}")
            numbers = module.render(args.out, full=args.full)
        except Exception as error:  # report every figure, then fail at the end
            failed = True
            numbers = f"{type(error).__name__}: {error}"
            print(f"[figures] {name} failed: {numbers}", file=sys.stderr)
        rows.append((name, time.perf_counter() - t0, numbers))
    print_summary(rows, args.out)
    print(f"\nTotal {time.perf_counter() - start:.1f}s")
    print_targets(rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
