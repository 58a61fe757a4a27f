"""`python -m checks.bench homework`: how long grading one complete submission takes.

The submission is the reference itself (every function correct, so every function runs its
full number of examples: the longest a passing submission takes). Target: under 60 s on the
two-core machine CI runs on. Printed per module, with the number of calls to the child.
"""

import time
from collections import defaultdict

from checks.homework import grader, make
from checks.homework.tasks import tasks_for

TARGET_SECONDS = 60.0


def bench_homework(args):
    modules = make.resolve_topics(make.available_topics())
    tasks = tasks_for(modules)
    start = time.perf_counter()
    results = grader.grade(make.REPO, tasks, grader.Budget())
    seconds = time.perf_counter() - start
    per_module, calls = defaultdict(float), defaultdict(int)
    for r in results:
        per_module[r.task.split(".")[0]] += r.seconds
        calls[r.task.split(".")[0]] += r.calls
    print(f"\ngrading the reference: {len(tasks)} functions of {', '.join(modules)}, {grader.Budget().examples} examples each")
    for module, s in per_module.items():
        print(f"  {module:<12}{s:>7.1f} s  {calls[module]:>6} calls")
    got, most = grader.total(results)
    met = seconds < TARGET_SECONDS and got == most
    print(f"total {seconds:.1f} s, score {got:g}/{most:g}; target < {TARGET_SECONDS:g} s with full marks: {'met' if met else 'MISSED'}")
    return met
