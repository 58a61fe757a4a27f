"""python -m checks.homework make --out DIR [--topics ...]  |  grade SUBMISSION [--json results.json]  |  gradescope --out autograder.zip

make        writes the student package: scratch/ with the solutions cut out, the public checks, a README.
grade       grades one submission (a folder holding scratch/) or a class (a folder of such folders), each
            submission behind its own wall (checks/homework/sandbox.py), --jobs at a time: a table per
            submission, Gradescope's results.json, and for a class one CSV of scores.
gradescope  writes the autograder zip a Gradescope course uploads (checks/homework/gradescope.py).
"""

import argparse
import os
import sys
from pathlib import Path


def positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def parser():
    from checks.homework.tasks import TOPICS

    top = argparse.ArgumentParser(prog="python -m checks.homework", description=__doc__.split("\n\n")[1])
    commands = top.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="write the student package")
    make.add_argument("--out", required=True, help="a new or empty folder")
    make.add_argument("--topics", nargs="+", metavar="TOPIC", help=f"of {', '.join(TOPICS)} (default: every topic that exists)")
    grade = commands.add_parser("grade", help="grade a submission or a folder of submissions")
    grade.add_argument("submission", help="a folder holding scratch/, or a folder of such folders")
    grade.add_argument("--topics", nargs="+", metavar="TOPIC", help="the topics handed out (default: every topic that exists)")
    grade.add_argument("--json", help="results.json (Gradescope schema); for a class, a folder for NAME.json files")
    grade.add_argument("--csv", default="scores.csv", help="for a class: the CSV of scores (default scores.csv)")
    grade.add_argument("--examples", type=positive(int), default=60, help="inputs drawn per function (default 60)")
    grade.add_argument("--calls", type=positive(int), default=400, help="calls per function, shrinking included (default 400)")
    grade.add_argument("--timeout", type=positive(float), default=10.0, help="wall-clock seconds per call (default 10)")
    grade.add_argument("--quiet", action="store_true", help="print only the totals")
    grade.add_argument("--jobs", type=positive(int), default=os.cpu_count() or 1,
                       help="submissions graded at once (default: the number of cores, %(default)s here)")
    walls = grade.add_mutually_exclusive_group()
    walls.add_argument("--isolation", choices=["auto", "bwrap", "unshare"], default="auto",
                       help="the wall around each submission: bubblewrap, util-linux's unshare, or auto "
                            "(bwrap if it works, else unshare; default)")
    walls.add_argument("--no-isolation", action="store_true",
                       help="grade without the wall, as your own user with your files and network in reach: only for code you trust")
    scope = commands.add_parser("gradescope", help="write the autograder zip for a Gradescope course")
    scope.add_argument("--out", required=True, help="the zip to write, e.g. autograder.zip")
    scope.add_argument("--topics", nargs="+", metavar="TOPIC", help="the topics handed out (default: every topic that exists)")
    scope.add_argument("--examples", type=positive(int), default=60, help="inputs drawn per function (default 60)")
    scope.add_argument("--no-isolation", action="store_true",
                       help="grade without the wall where Gradescope's container cannot build it (the reference is then in reach)")
    return top, {"make": make, "grade": grade, "gradescope": scope}


def submissions(path, fail):
    """[(name, folder)]: the folder itself if it holds scratch/, else its subfolders that do."""
    path = Path(path)
    if not path.is_dir():
        fail(f"SUBMISSION {path} is not a folder")
    if (path / "scratch").is_dir():
        return [(path.name, path)], False
    found = sorted((p.name, p) for p in path.iterdir() if (p / "scratch").is_dir())
    if not found:
        fail(f"SUBMISSION {path} holds no scratch/ folder, and none of its subfolders does: "
             "give the folder of one submission (it holds scratch/) or a folder of submissions")
    return found, True


def main(argv=None):
    top, commands = parser()
    args = top.parse_args(argv)
    from checks.homework import grader, make, report
    from checks.homework.sandbox import Limits

    command = commands[args.command]  # its .error prints the usage and exits with status 2
    topics = args.topics or make.available_topics()
    try:
        modules = make.resolve_topics(topics)
    except make.TopicError as error:
        command.error(str(error))
    if args.command == "gradescope":
        from checks.homework import gradescope

        try:
            gradescope.write_package(args.out, topics, examples=args.examples, isolation=not args.no_isolation)
        except (FileExistsError, ValueError) as error:
            command.error(str(error))
        print(f"wrote {args.out}: upload it as the autograder of a Gradescope programming assignment ({', '.join(topics)})")
        return 0
    if args.command == "make":
        try:
            tasks = make.make(args.out, topics)
        except FileExistsError as error:
            command.error(str(error))
        print(f"wrote {args.out}: {len(tasks)} functions of {', '.join(modules)}; students run `python -m pytest -m FUNCTION`")
        return 0
    folders, is_class = submissions(args.submission, command.error)
    for path, folder_wanted in ((args.json, is_class), (args.csv if is_class else None, False)):
        if path and os.path.isdir(path) != folder_wanted and os.path.exists(path):
            command.error(f"{path} exists and is {'not ' if folder_wanted else ''}a folder")
    from checks.homework.sandbox import IsolationUnavailable, choose_isolation

    try:
        isolation = choose_isolation("none" if args.no_isolation else args.isolation)
    except IsolationUnavailable as error:
        command.error(str(error))
    if isolation == "none":
        print("warning: --no-isolation: the submissions run as your user, with your files and network in reach", file=sys.stderr)
    limits = Limits(call_seconds=args.timeout)
    budget = grader.Budget(examples=args.examples, calls=args.calls)
    jobs = [(name, folder, modules, budget, limits, isolation) for name, folder in folders]
    graded_, outputs = [], []
    from checks.homework.classes import graded

    for name, results, seconds in graded(jobs, args.jobs):
        graded_.append((name, results))
        got, most = grader.total(results)
        title = f"{name} ({seconds:.1f} s, isolation: {isolation})"
        print(f"{name}: {got:g}/{most:g} in {seconds:.1f} s ({isolation})" if args.quiet else report.table(results, title), flush=True)
        outputs.append((name, report.gradescope(results, seconds)))
    # Written only now, every child gone: a submission cannot overwrite a grade written before it ran.
    for name, data in outputs if args.json else []:
        report.write_json(os.path.join(args.json, f"{name}.json") if is_class else args.json, data)
    if is_class:
        report.write_atomic(args.csv, report.class_csv(graded_))
        print(f"wrote {args.csv}: {len(graded_)} submissions, isolation: {isolation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
