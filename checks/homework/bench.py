"""How long grading takes: one complete submission, and a class of them, behind the wall.

    python -m checks.homework.bench                 # one submission, then a class of 50
    python -m checks.homework.bench --class-size 10 --jobs 2
    python -m checks.bench homework                 # one submission only

A complete submission is the reference itself (every function correct, so every function runs
its full number of examples: the longest a passing submission takes). The class is that many
copies, one in five carrying a different classic bug of checks/homework/catalogue.py, graded
by the command line a teaching assistant types (`grade CLASS --jobs N`), each submission behind
its own wall. Targets on the two-core machine CI runs on: one submission in at most 30 s, a class
of 50 in at most 15 minutes.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checks.homework import catalogue, grader, make

ONE_TARGET_SECONDS = 30.0
CLASS_TARGET_SECONDS = 15 * 60.0


def bench_one(jobs, isolation="auto"):
    """Grade the reference once through the command line (a fresh process: nothing recorded yet),
    its tasks dealt over `jobs` processes, as `grade SUBMISSION --jobs N` does."""
    modules = make.resolve_topics(make.available_topics())
    with tempfile.TemporaryDirectory(prefix="homework-one-") as folder:
        env = {**os.environ, "PYTHONPATH": str(make.REPO)}
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "checks.homework", "grade", str(make.REPO), "--quiet", "--jobs", str(jobs),
                              "--isolation", isolation, "--json", str(Path(folder) / "results.json")],
                             env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode != 0:
            print(run.stdout[-2000:], run.stderr[-2000:])
            return False
        data = json.loads((Path(folder) / "results.json").read_text())
    got, most = data["score"], float(len(data["tests"]))
    print(f"\ngrading the reference: {len(data['tests'])} functions of {', '.join(modules)}, {grader.Budget().examples} examples each, "
          f"--jobs {jobs}, isolation {data['extra_data']['isolation']}")
    met = seconds <= ONE_TARGET_SECONDS and got == most
    print(f"one submission: {seconds:.1f} s (the command, start to end), score {got:g}/{most:g}; "
          f"target <= {ONE_TARGET_SECONDS:g} s with full marks: {'met' if met else 'MISSED'}")
    return met


def bench_class(size, jobs):
    """Grade a class of `size` through the command line, `jobs` at a time."""
    bugs = [b for b in catalogue.BUGS]
    with tempfile.TemporaryDirectory(prefix="homework-class-") as folder:
        room = Path(folder) / "class"
        expected_full = 0
        for i in range(size):
            target = room / f"student{i:02d}"
            if i % 5 == 4:
                catalogue.apply(bugs[(i // 5) % len(bugs)], target)
            else:
                shutil.copytree(make.REPO / "scratch", target / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
                expected_full += 1
        env = {**os.environ, "PYTHONPATH": str(make.REPO)}
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "checks.homework", "grade", str(room), "--quiet", "--jobs", str(jobs),
                              "--csv", str(Path(folder) / "scores.csv")], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode != 0:
            print(run.stdout[-2000:], run.stderr[-2000:])
            return False
        rows = (Path(folder) / "scores.csv").read_text().splitlines()[1:]
        full = sum(1 for row in rows if row.split(",")[1] == row.split(",")[2])
    print(f"\na class of {size} ({expected_full} complete, {size - expected_full} with one classic bug each), --jobs {jobs}:")
    print(f"  {seconds:.1f} s in all, {seconds / size:.1f} s a submission; {full} graded full marks (expected {expected_full})")
    met = seconds <= CLASS_TARGET_SECONDS * size / 50 and full == expected_full
    print(f"  target <= {CLASS_TARGET_SECONDS * size / 50:.0f} s for {size} (15 minutes for 50): {'met' if met else 'MISSED'}")
    return met


def bench_homework(args=None):
    """`python -m checks.bench homework`: one submission."""
    return bench_one(os.cpu_count() or 1)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m checks.homework.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--class-size", type=int, default=50, help="submissions in the class (default 50; 0: none)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="submissions graded at once (default: cores)")
    parser.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "unshare", "none"])
    args = parser.parse_args(argv)
    met = bench_one(args.jobs, args.isolation)
    if args.class_size > 0:
        met = bench_class(args.class_size, args.jobs) and met
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
