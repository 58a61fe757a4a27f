"""Homework: the student version of scratch/ and a grader that never trusts the submission.

    python -m checks.homework make --out DIR [--topics attention vae gan]
    python -m checks.homework grade SUBMISSION [--json results.json]

tasks.py      the graded functions, one entry each (inputs, call, outputs to compare)
markers.py    solution blocks: find them, cut them out, list the lines only they hold
make.py       the student package, with public checks (public/) and stored cases
sandbox.py    the limited child process and the parent's side of the pipe; worker.py the child
protocol.py   the framed .npz messages both sides speak (no pickle)
grader.py     the Hypothesis search per function; feedback.py what a failure says
report.py     the table, Gradescope's results.json, the class CSV
catalogue.py  classic student bugs; adversaries.py cheating submissions (both for the tests)
"""
