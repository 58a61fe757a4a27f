"""The Gradescope autograder: a zip a course uploads, and the run that grades one submission in it.

    python -m checks.homework gradescope --topics attention vae --out autograder.zip

Gradescope builds an image from the zip: it unpacks it into /autograder/source and runs
`setup.sh` there once, as root; then, for every submission, it puts the student's files in
/autograder/submission, runs /autograder/run_autograder and reads
/autograder/results/results.json (https://gradescope-autograders.readthedocs.io, "Specs").

The zip holds this project's source (the reference scratch/ and the grader), its pins, and:
- `setup.sh`: installs Python, bubblewrap and util-linux from the distribution, then this package
  and its `grader` extra into /autograder/venv, with the pins of constraints.txt;
- `run_autograder`: `python -m checks.homework.gradescope run`, which finds the submission (a
  scratch/ folder, or the module files themselves), grades it behind the wall, and writes
  results.json. Where the image cannot build the wall (no user namespaces in its container),
  the results say so to the instructor and score nothing, unless the zip was made with
  --no-isolation.

The reference lies in /autograder/source, beside the submission: exactly what a Gradescope
autograder that runs student code in its own process leaks. Here the submission's child never
sees it (checks/homework/sandbox.py).
"""

import argparse
import os
import shutil
import stat
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from checks.homework import make, report

REPO = Path(__file__).resolve().parents[2]
SOURCE = ("pyproject.toml", "constraints.txt", "README.md", "scratch", "checks")

SETUP = """#!/usr/bin/env bash
# Run once by Gradescope, as root, when it builds the autograder's image.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv python3-pip bubblewrap util-linux
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install -c constraints.txt ".[grader]"
"""

RUN = """#!/usr/bin/env bash
# Run by Gradescope for every submission: grades /autograder/submission into
# /autograder/results/results.json. AUTOGRADER_ROOT and GENAI_PYTHON move both, for tests.
set -euo pipefail
root="${{AUTOGRADER_ROOT:-/autograder}}"
python="${{GENAI_PYTHON:-/autograder/venv/bin/python}}"
cd "$root/source"
exec "$python" -m checks.homework.gradescope run --root "$root" --topics {topics} --examples {examples}{isolation}
"""


def write_package(out, topics, examples=60, isolation=True):
    """Write the autograder zip for `topics` to `out` (a new file)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} exists: choose a new file name")
    if out.suffix != ".zip":
        raise ValueError(f"--out {out} must end in .zip, the file Gradescope takes")
    make.resolve_topics(topics)  # unknown or ungraded topics fail here, not in Gradescope
    run = RUN.format(topics=" ".join(topics), examples=examples, isolation="" if isolation else " --no-isolation")
    out.parent.mkdir(parents=True, exist_ok=True)
    executable = (stat.S_IFREG | 0o755) << 16
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in (("setup.sh", SETUP), ("run_autograder", run)):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = executable
            archive.writestr(info, text)
        for entry in SOURCE:
            path = REPO / entry
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            for file in files:
                archive.write(file, str(file.relative_to(REPO)))
    return out


def find_submission(folder, work):
    """A folder holding scratch/: the upload itself if it has one, else `work` with its .py files
    copied into scratch/ (students often upload the module files alone)."""
    folder = Path(folder)
    if (folder / "scratch").is_dir():
        return folder
    target = Path(work) / "scratch"
    target.mkdir(parents=True)
    for path in folder.glob("*.py"):
        if path.is_file() and not path.is_symlink():
            shutil.copyfile(path, target / path.name)
    if not (target / "__init__.py").exists():
        (target / "__init__.py").write_text("")
    return Path(work)


def run(root, topics, examples, isolation):
    """Grade root/submission, write root/results/results.json; the data written."""
    from checks.homework import grader
    from checks.homework.sandbox import IsolationUnavailable
    from checks.homework.tasks import tasks_for

    root = Path(root)
    results_path = root / "results" / "results.json"
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gradescope-") as work:
        submission = find_submission(root / "submission", work)
        try:
            results = grader.grade(submission, tasks_for(make.resolve_topics(topics)), grader.Budget(examples=examples),
                                   isolation=isolation)
        except IsolationUnavailable as error:
            data = {"score": 0.0, "output": "The autograder could not start: tell your instructor.",
                    "tests": [], "extra_data": {"isolation": "unavailable", "reason": str(error)}}
            report.write_json(results_path, data)
            print(error, file=sys.stderr)
            return data
    data = report.gradescope(results, time.monotonic() - start)
    report.write_json(results_path, data)
    print(report.table(results, f"submission ({data['execution_time']} s, isolation: {results[0].isolation})"))
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m checks.homework.gradescope", description="Gradescope's run_autograder")
    commands = parser.add_subparsers(dest="command", required=True)
    grade = commands.add_parser("run", help="grade ROOT/submission into ROOT/results/results.json")
    grade.add_argument("--root", default="/autograder")
    grade.add_argument("--topics", nargs="+", required=True)
    grade.add_argument("--examples", type=int, default=60)
    grade.add_argument("--no-isolation", action="store_true")
    args = parser.parse_args(argv)
    run(args.root, args.topics, args.examples, "none" if args.no_isolation else "auto")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
