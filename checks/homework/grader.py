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
import re
import time
from typing import NamedTuple

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from checks.homework import protocol
from checks.homework.feedback import describe_case, describe_mismatch, mismatch
from checks.homework.sandbox import Limits, SubmissionError, Worker, WorkerFailed, choose_isolation
from checks.homework.tasks import Backward, Steps, sequence


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
    isolation: str = "none"  # the wall the submission ran behind (checks/homework/sandbox.py)


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


class Request(NamedTuple):
    """What the child is asked for one drawn case, and what the reference answered."""
    function: str
    args: list  # for the submission, as sent (pack copies them: the child never holds the case's own arrays)
    expected: dict  # {name: array}
    steps: list = None  # a sequence (tasks.Steps): the calls protocol.run_steps makes on `args`
    names: list = None  # what the feedback calls each of those calls
    dtype: str = None  # the case's tolerance row, kept for a replay


def prepare(task, case):
    """The Request for one drawn case; the reference computes on a copy, so the case stays as drawn."""
    module, call = _reference(task.module), task.call
    if isinstance(call, Steps):
        slots, steps, names = sequence(call, case)
        expected = {}
        for outputs in protocol.run_steps(module, _copy(slots), steps):
            expected.update(outputs)
        return Request(call.function, slots, expected, steps, names)
    args = [case[name] for name in call.args]
    if isinstance(call, Backward):
        _, cache = getattr(module, call.forward)(*_copy(args))
        args = [case[call.dout], cache]
    expected = protocol.select(getattr(module, call.function)(*_copy(args)), call.outputs)
    return Request(call.function, args, expected)


class Workers:
    """One child per module, restarted after it dies; a module that fails to import stays failed."""

    def __init__(self, submission, limits, isolation="none", slot=0):
        self.submission, self.limits, self.live, self.broken = submission, limits, {}, {}
        self.isolation, self.slot = isolation, slot

    def get(self, module):
        if module in self.broken:
            raise self.broken[module]
        if module not in self.live:
            try:
                self.live[module] = Worker(self.submission, module, self.limits, self.isolation, self.slot)
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


def _earlier_calls(call, output):
    """A sequence's outputs are compared in order: say that every call before the failing one matched."""
    found = re.match(rf"{call.label} (\d+): ", output)
    k = int(found.group(1)) if found else 1
    if k == 1:
        return ""
    calls = f"{call.label} 1" if k == 2 else f"{call.label}s 1 to {k - 1}"
    return f"\n(every output of {calls} matched: {call.label} {k} is the first call that went wrong)"


# Every passing submission is shown the same inputs in the same order: the search is
# derandomized, and nothing steers it but failures. So the first submission that passes a task
# leaves its requests here (with the reference's answers), and the next ones are asked those
# first, with no search and no reference to run. Any disagreement falls back to the full
# search, which then finds exactly what it would have found without this: the grade is the
# same either way, only faster for a class of mostly passing submissions.
_PASSED = {}  # (module, task, examples, calls) → (the Task, [Request, …] of a passing run)


def _replay(task, workers, requests, start):
    """The Result of asking the child the recorded requests, or None at the first disagreement."""
    try:
        worker = workers.get(task.module)
        for request in requests:
            if request.steps is None:
                received = worker.call(request.function, request.args, task.call.outputs)
            else:
                received = worker.call(request.function, request.args, {}, steps=request.steps)
            if mismatch(received, request.expected, request.dtype, task.exact) is not None:
                return None
    except SubmissionError:
        return None
    except WorkerFailed:
        workers.drop(task.module)
        return None
    return Result(f"{task.module}.{task.name}", 1.0, 1.0, "passed", f"passed on {len(requests)} inputs drawn by Hypothesis",
                  len(requests), time.monotonic() - start)


def grade_task(task, workers, budget):
    """Search for an input on which the submission disagrees with the reference; return a Result."""
    state = {"calls": 0, "failure": None, "status": None}
    start = time.monotonic()
    key, asked = (task.module, task.name, budget.examples, budget.calls), []
    recorded_task, requests = _PASSED.get(key, (None, None))
    if recorded_task == task:  # the very same entry (a task rebuilt with other cases is another task)
        result = _replay(task, workers, requests, start)
        if result is not None:
            return result
        start = time.monotonic()  # the search's own time, as without the replay

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
            request = prepare(task, case)
        except Exception as error:  # the reference refused the case: a bug of the grader, not the student's
            record("grader error", f"the reference raised {type(error).__name__}: {error}", case)
            raise Stop from None
        asked.append(request._replace(dtype=case["dtype"]))
        try:
            worker = workers.get(task.module)
            if request.steps is None:
                received = worker.call(request.function, request.args, task.call.outputs)
            else:
                received = worker.call(request.function, request.args, {}, steps=request.steps)
        except SubmissionError as error:
            meta = error.meta
            if meta.get("error") == "NotImplementedError":
                message, own = meta.get("message") or "", f"{task.module}.{task.call.function}"
                if f"{own}:" not in message and f"{own}." not in message:  # a helper it calls is the one unfinished
                    message = f"{own} needs {message}"
                record("not implemented", f"not implemented yet: {message}")
                raise Stop
            where = "".join(f"\n  at {w}" for w in meta.get("where", [])) or f"\n  (its return value is not {task.returns})"
            step = meta.get("step")  # in a sequence: how many calls had returned
            named = request.steps is not None and type(step) is int and 0 <= step < len(request.names)
            during = f" in {request.names[step]}" if named else ""
            record("error", f"raised {meta.get('message')}{during}{where}", case)
            raise AssertionError
        except WorkerFailed as error:
            workers.drop(task.module)
            record(error.status, str(error), case)
            raise Stop
        problem = mismatch(received, request.expected, case["dtype"], task.exact)
        if problem is not None:
            text = describe_mismatch(problem, received, request.expected)
            if request.steps is not None:
                text += _earlier_calls(task.call, problem.output)
            record("failed", text, case)
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
        _PASSED[key] = (task, asked)
        return Result(f"{task.module}.{task.name}", 1.0, 1.0, "passed",
                      f"passed on {state['calls']} inputs drawn by Hypothesis", state["calls"], seconds)
    text, case = state["failure"]
    if case is not None and state["status"] != "import error":  # an import fails whatever the input
        text = describe_case(task, case, state["status"]) + "\n" + text
    return Result(f"{task.module}.{task.name}", 0.0, 1.0, state["status"], text, state["calls"], seconds)


def grade(submission, tasks, budget=Budget(), limits=Limits(), isolation="auto", slot=0):
    """Grade `tasks` of the submission folder (which holds scratch/); a list of Results.

    `isolation`: "auto" (bwrap, else unshare; IsolationUnavailable if neither works), "bwrap",
    "unshare", or "none" for trusted code. `slot` picks the unprivileged uid of a root grader's
    sandboxes, so that submissions graded at the same time never share one."""
    kind = choose_isolation(isolation)
    workers = Workers(submission, limits, kind, slot)
    try:
        return [grade_task(task, workers, budget)._replace(isolation=kind) for task in tasks]
    finally:
        workers.close()


def total(results):
    return sum(r.score for r in results), sum(r.max_score for r in results)

