"""The grade, three ways: a table to read, Gradescope's results.json, and a CSV for a class.

Gradescope's schema (https://gradescope-autograders.readthedocs.io, "Output format"): a total
`score`, and `tests`, each with `name`, `score`, `max_score`, `status` ("passed" or "failed")
and `output`; `extra_data` (kept by Gradescope, shown to no student) says which wall graded the
submission (`isolation`: bwrap, unshare or none). The grader's own finer status (not implemented, timeout, crashed…) leads the
output text. Files are written whole to a temporary name and renamed over the target, after
grading ends, so nothing a submission wrote there beforehand survives.
"""

import csv
import io
import json
import os
import tempfile
import textwrap


def table(results, title):
    """One line per function (score, status), each failure's feedback indented under it."""
    width = max([len(r.task) for r in results] + [8])
    got, most = sum(r.score for r in results), sum(r.max_score for r in results)
    lines = [title, f"{'function':<{width}}  score  status", "-" * (width + 24)]
    for r in results:
        lines.append(f"{r.task:<{width}}  {r.score:g}/{r.max_score:g}    {r.status}")
        if r.status != "passed":
            lines.append(textwrap.indent(r.feedback, "    "))
    lines.append("-" * (width + 24))
    lines.append(f"{'total':<{width}}  {got:g}/{most:g}")
    return "\n".join(lines)


def gradescope(results, seconds):
    got, most = sum(r.score for r in results), sum(r.max_score for r in results)
    tests = [{"name": r.task, "score": r.score, "max_score": r.max_score,
              "status": "passed" if r.status == "passed" else "failed",
              "output": r.feedback if r.status == "passed" else f"{r.status}: {r.feedback}"} for r in results]
    isolation = results[0].isolation if results else "none"
    return {"score": got, "output": f"{got:g} of {most:g} functions correct (graded behind isolation: {isolation})",
            "execution_time": round(seconds, 1), "tests": tests, "extra_data": {"isolation": isolation}}


def class_csv(graded):
    """graded: list of (submission name, results). Columns: submission, total, max, then one per function."""
    names = list(dict.fromkeys(r.task for _, results in graded for r in results))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["submission", "total", "max_score"] + names)
    for submission, results in graded:
        scores = {r.task: r.score for r in results}
        writer.writerow([submission, f"{sum(scores.values()):g}", f"{sum(r.max_score for r in results):g}"]
                        + [f"{scores.get(n, 0.0):g}" for n in names])
    return buffer.getvalue()


def write_atomic(path, text):
    """Write `text` to `path` whole, replacing whatever is there (a submission may have put it there)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(folder) and not os.path.isdir(folder):
        os.remove(folder)  # a file where our folder goes: ours to replace
    os.makedirs(folder, exist_ok=True)
    if os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".results-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def write_json(path, data):
    write_atomic(path, json.dumps(data, indent=2) + "\n")
