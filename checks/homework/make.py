"""`python -m checks.homework make --out DIR`: write the student package.

DIR/
  README.md            for students: what to write, how to run the checks for one function
  pytest.ini           one marker per function (no unknown-marker warnings), paths set
  homework.json        the topics, modules and functions handed out
  scratch/             the chosen modules with every solution block replaced by a raise,
                       plus the unmarked modules they import (validate.py, gradcheck.py)
  tests/               the public checks and their stored cases (inputs and reference outputs)

Nothing of the solution leaves the repository: the stored cases are values, the public checks
compare against those values and against finite differences of the student's own code.
"""

import ast
import json
import os
import shutil
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from checks.homework import markers, protocol
from checks.homework.grader import _copy, _reference, fixed_generation
from checks.homework.tasks import TASKS, TOPICS, Backward, Steps, sequence, tasks_for
from checks.tolerances import TOLERANCES

REPO = Path(__file__).resolve().parents[2]
SCRATCH = REPO / "scratch"
PUBLIC = Path(__file__).resolve().parent / "public"
CASES_PER_FUNCTION = 4


class TopicError(ValueError):
    pass


def resolve_topics(topics):
    """The modules for these topics, or a TopicError saying why a topic cannot be handed out."""
    modules = []
    for topic in topics:
        if topic not in TOPICS:
            raise TopicError(f"unknown topic {topic!r}; topics: {', '.join(TOPICS)}")
        for module in TOPICS[topic]:
            if not (SCRATCH / f"{module}.py").exists():
                raise TopicError(f"topic {topic!r} has no module yet: scratch/{module}.py does not exist")
            if module not in TASKS:
                raise TopicError(f"topic {topic!r} has no graded functions yet: add the entries for scratch/{module}.py "
                                 f"to checks/homework/tasks.py")
            if module not in modules:
                modules.append(module)
    return modules


def available_topics():
    """The topics that can be handed out today, in TOPICS order."""
    ready = []
    for topic in TOPICS:
        try:
            resolve_topics([topic])
        except TopicError:
            continue
        ready.append(topic)
    return ready


def imported_modules(module):
    """scratch modules that `module` imports, transitively, `module` included."""
    found, todo = [], [module]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.append(name)
        tree = ast.parse((SCRATCH / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scratch."):
                todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "scratch":  # from scratch import allocator
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names if a.name.startswith("scratch.")]
    return found


def write_scratch(out, modules):
    files = imported_modules("__init__") + ["gradcheck"] + [m for module in modules for m in imported_modules(module)]
    (out / "scratch").mkdir(parents=True)
    for name in dict.fromkeys(files):
        source = (SCRATCH / f"{name}.py").read_text()
        (out / "scratch" / f"{name}.py").write_text(markers.strip(source, name, f"scratch/{name}.py"))


def draw_cases(task, count):
    """`count` inputs spread over the first examples of a derandomized Hypothesis run."""
    drawn = []

    @settings(max_examples=6 * count, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=(Phase.generate,))
    @given(st.data())
    def collect(data):
        drawn.append(data.draw(task.cases))

    with fixed_generation():
        collect()
    chosen = drawn[5::6][:count] or drawn[-count:]
    if isinstance(task.call, Steps) and all(len(case["steps"]) == 1 for case in chosen):
        chosen[-1] = max(drawn, key=lambda case: len(case["steps"]))  # state kept between calls shows from the second
    return chosen


def case_file(task, support):
    """The stored cases of one function: its call spec, inputs and the reference's outputs."""
    call, module = task.call, _reference(task.module)
    kind = "backward" if isinstance(call, Backward) else "steps" if isinstance(call, Steps) else "forward"
    spec = {"module": task.module, "function": call.function, "marker": task.name, "exact": task.exact, "kind": kind,
            "outputs": [[n, list(p)] for n, p in call.outputs.items()],
            "tolerance": {dtype.name: [tol.rtol, tol.atol] for dtype, tol in TOLERANCES.items()}}
    if isinstance(call, Backward):
        spec.update(forward=call.forward, target=list(call.target), arg_names=list(call.args))
    arrays, cases = {}, []
    for case in draw_cases(task, CASES_PER_FUNCTION):
        entry = {"dtype": case["dtype"]}
        if isinstance(call, Steps):  # the slots and the calls made on them (protocol.run_steps)
            slots, entry["steps"], _ = sequence(call, case)
            entry["args"], _ = protocol.pack(_copy(slots), arrays)
            expected = {}
            for outputs in protocol.run_steps(module, _copy(slots), entry["steps"]):
                expected.update(outputs)
        else:
            args = [case[name] for name in call.args]
            if isinstance(call, Backward):
                entry["forward_args"], _ = protocol.pack(_copy(args), arrays)
                args = [case[call.dout], getattr(module, call.forward)(*_copy(args))[1]]
            entry["args"], _ = protocol.pack(_copy(args), arrays)
            expected = protocol.select(getattr(module, call.function)(*_copy(args)), call.outputs)
        entry["expected"] = {}
        for name, value in expected.items():
            entry["expected"][name] = key = f"e{len(arrays)}"
            arrays[key] = value
        cases.append(entry)
    spec["cases"] = cases
    if isinstance(call, Backward):  # keep the gradient check only where the reference passes it (no kinks)
        for i, entry in enumerate(cases):
            c = support.Case("", spec, entry, arrays)
            entry["gradcheck"] = bool(support.gradient_check(c) < 1e-7)
    return protocol.encode(spec, arrays)[8:]


def load_support():
    """The public checks' helper, imported from its own folder as the students will import it."""
    import importlib.util
    import sys

    for name in ("homework_protocol", "homework_support"):
        path = PUBLIC / f"{name}.py" if name != "homework_protocol" else Path(protocol.__file__)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules["homework_support"]


def make(out, topics):
    """Write the student package for `topics` into the new or empty folder `out`."""
    out = Path(out)
    modules = resolve_topics(topics)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty: choose a new folder")
    tasks = tasks_for(modules)
    write_scratch(out, modules)
    tests = out / "tests"
    (tests / "cases").mkdir(parents=True)
    shutil.copy(protocol.__file__, tests / "homework_protocol.py")
    shutil.copy(PUBLIC / "homework_support.py", tests / "homework_support.py")
    # Kept under another name here, so that `python -m pytest checks` does not collect it.
    shutil.copy(PUBLIC / "student_checks.py", tests / "test_functions.py")
    support = load_support()
    for task in tasks:
        (tests / "cases" / f"{task.module}.{task.name}.npz").write_bytes(case_file(task, support))
    blocks = [(m, b) for m in modules for b in markers.blocks((SCRATCH / f"{m}.py").read_text())]
    # a task's hint: its function's block, or one nested in it (SGD.step, transformer_schedule.schedule)
    hints = {t.name: next((b.hint for m, b in blocks if m == t.module and (b.function == t.call.function or
                                                                          b.function.startswith(t.call.function + "."))), "")
             for t in tasks}
    lines = ["[pytest]", "pythonpath = . tests", "testpaths = tests", "addopts = -ra", "markers ="]
    lines += [f"    {t.name}: {t.module}.{t.name}" for t in tasks]
    (out / "pytest.ini").write_text("\n".join(lines) + "\n")
    manifest = {"topics": list(topics), "modules": modules, "functions": [f"{t.module}.{t.name}" for t in tasks]}
    (out / "homework.json").write_text(json.dumps(manifest, indent=2) + "\n")
    from checks.homework.student_readme import readme

    (out / "README.md").write_text(readme(topics, tasks, hints))
    return tasks


def student_files(out):
    """Every text file of a package, for the no-solution-line check."""
    for root, _, files in os.walk(out):
        for name in files:
            if not name.endswith(".npz"):
                yield Path(root) / name
