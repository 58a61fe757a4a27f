"""Grade one submission: Hypothesis draws inputs, the child computes, the parent compares.

For each task the parent runs a derandomized Hypothesis search (the same submission always
gets the same examples, so the same grade). Every example is computed twice: by the
reference `scratch/` in this process, and by the submission in its child worker
(checks/homework/sandbox.py). The parent compares the child's plain arrays with the reference
under the checks' tolerance table; on a mismatch Hypothesis shrinks the input, and the last
failing example it ran, the smallest, becomes the feedback.

Some failures end a task at once instead of being shrunk (`Stop`): a function that is not
implemented, a child that crashed or timed out, and a task that used up its call budget.

Scoring: one point per function, all or nothing: every output, or every gradient, must match
on every example drawn. Forward and backward are separate functions, so they score apart.
"""

import contextlib
import importlib
import time
from typing import NamedTuple

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from checks.homework import protocol
from checks.homework.feedback import describe_case, describe_mismatch, mismatch
from checks.homework.sandbox import Limits, SubmissionError, Worker, WorkerFailed
from checks.homework.tasks import Backward


class Budget(NamedTuple):
    examples: int = 60  # inputs Hypothesis generates per function
    calls: int = 400  # calls per function, shrinking included: bounds the time a failure costs
    shrink_seconds: float = 10.0  # once a failure is found, stop shrinking after this long


class Result(NamedTuple):
    task: str  # module.function
    score: float
    max_score: float
    status: str  # passed, failed, error, not implemented, timeout, crashed, import error, protocol
    feedback: str
    calls: int
    seconds: float


@contextlib.contextmanager
def fixed_generation():
    """Make Hypothesis draw the same inputs whatever else this process has imported.

    Hypothesis (6.13x and later) mixes into its draws the constants it finds in every local
    module loaded so far, so the inputs for one function would change with the topics graded
    before it, or between the CLI and the tests. A grade must depend on the submission alone,
    so the pool of local constants is held empty while grading (a private API: skipped if absent).
    """
    try:
        from hypothesis.internal.conjecture import providers

        original, empty = providers._get_local_constants, providers.Constants()
        providers.CONSTANTS_CACHE.cache.clear()
    except (ImportError, AttributeError):
        yield
        return
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = original
        providers.CONSTANTS_CACHE.cache.clear()


class Stop(BaseException):
    """Ends a task's search at once. A BaseException, so Hypothesis does not shrink it."""


def _reference(module):
    return importlib.import_module(f"scratch.{module}")


def _reference_class(module, name):
    return getattr(importlib.import_module(module), name)


def _copy(value):
    """A deep copy through the wire format, so neither side can change what the other sees."""
    tree, arrays = protocol.pack(value)
    return protocol.unpack(tree, arrays, _reference_class)


def prepare(task, case):
    """(function, args for the submission, expected {name: array}) for one drawn case."""
    module, call = _reference(task.module), task.call
    args = [case[name] for name in call.args]
    if isinstance(call, Backward):
        _, cache = getattr(module, call.forward)(*_copy(args))
        args = [case[call.dout], cache]
    expected = protocol.select(getattr(module, call.function)(*_copy(args)), call.outputs)
    return call.function, args, expected


class Workers:
    """One child per module, restarted after it dies; a module that fails to import stays failed."""

    def __init__(self, submission, limits):
        self.submission, self.limits, self.live, self.broken = submission, limits, {}, {}

    def get(self, module):
        if module in self.broken:
            raise self.broken[module]
        if module not in self.live:
            try:
                self.live[module] = Worker(self.submission, module, self.limits)
            except WorkerFailed as error:
                self.broken[module] = error  # every later task of the module fails the same way
                raise
        return self.live[module]

    def drop(self, module):
        worker = self.live.pop(module, None)
        if worker is not None:
            worker.close()

    def close(self):
        for module in list(self.live):
            self.drop(module)


def grade_task(task, workers, budget):
    """Search for an input on which the submission disagrees with the reference; return a Result."""
    state = {"calls": 0, "failure": None, "status": None}
    start = time.monotonic()

    def record(status, text, case=None):
        state["status"], state["failure"] = status, (text, case)

    @settings(max_examples=budget.examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, report_multiple_bugs=False,
              phases=(Phase.explicit, Phase.generate, Phase.shrink), print_blob=False)
    @given(st.data())
    def search(data):
        case = data.draw(task.cases)
        shrinking_too_long = state["status"] is not None and time.monotonic() - start > budget.shrink_seconds
        if state["calls"] >= budget.calls or shrinking_too_long:
            raise Stop  # the failure recorded last is the smallest found so far
        state["calls"] += 1
        try:
            function, args, expected = prepare(task, case)
        except Exception as error:  # the reference refused the case: a bug of the grader, not the student's
            record("grader error", f"the reference raised {type(error).__name__}: {error}", case)
            raise Stop from None
        try:
            received = workers.get(task.module).call(function, args, task.call.outputs)
        except SubmissionError as error:
            meta = error.meta
            if meta.get("error") == "NotImplementedError":
                message = meta.get("message") or ""
                if f"{task.module}.{task.name}:" not in message:  # a helper it calls is the one unfinished
                    message = f"{task.module}.{task.name} needs {message}"
                record("not implemented", f"not implemented yet: {message}")
                raise Stop
            where = "".join(f"\n  at {w}" for w in meta.get("where", [])) or f"\n  (its return value is not {task.returns})"
            record("error", f"raised {meta.get('message')}{where}", case)
            raise AssertionError
        except WorkerFailed as error:
            workers.drop(task.module)
            record(error.status, str(error), case)
            raise Stop
        problem = mismatch(received, expected, case["dtype"], task.exact)
        if problem is not None:
            record("failed", describe_mismatch(problem, received, expected), case)
            raise AssertionError

    try:
        with fixed_generation():
            search()
    except Stop:
        pass
    except Exception:  # the failure, shrunk, is in `state`; Hypothesis's own report is not needed
        pass
    seconds = time.monotonic() - start
    if state["status"] is None:
        return Result(f"{task.module}.{task.name}", 1.0, 1.0, "passed",
                      f"passed on {state['calls']} inputs drawn by Hypothesis", state["calls"], seconds)
    text, case = state["failure"]
    if case is not None and state["status"] != "import error":  # an import fails whatever the input
        text = describe_case(task, case, state["status"]) + "\n" + text
    return Result(f"{task.module}.{task.name}", 0.0, 1.0, state["status"], text, state["calls"], seconds)


def grade(submission, tasks, budget=Budget(), limits=Limits()):
    """Grade `tasks` of the submission folder (which holds scratch/); a list of Results."""
    workers = Workers(submission, limits)
    try:
        return [grade_task(task, workers, budget) for task in tasks]
    finally:
        workers.close()


def total(results):
    return sum(r.score for r in results), sum(r.max_score for r in results)

