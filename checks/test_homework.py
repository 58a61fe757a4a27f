"""The homework tools, tested like everything else: markers, the student package, the grader.

The grader must give the reference 100%, the untouched student version 0, every classic bug of
checks/homework/catalogue.py a 0 on its function (and still a point on the sibling pass it left
alone), and every cheat of checks/homework/adversaries.py nothing it did not compute, in
bounded time and memory. Budgets are smaller than in real grading, to keep CI fast.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from checks.homework import adversaries, catalogue, grader, make, markers
from checks.homework.sandbox import Limits, Worker
from checks.homework.protocol import pack
from checks.homework.tasks import TASKS, Steps, tasks_for

pytestmark = pytest.mark.homework

REPO = Path(__file__).resolve().parents[1]
BUDGET = grader.Budget(examples=20, calls=80)
BY_NAME = {task.name: task for module in TASKS.values() for task in module}
TOPICS = make.available_topics()
MODULES = make.resolve_topics(TOPICS)


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "checks.homework", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def sibling(name):
    """The other half of a forward/backward pair, which a bug in this half must not touch."""
    for mine, other in (("_forward", "_backward"), ("_backward", "_forward")):
        if name.endswith(mine) and name[: -len(mine)] + other in BY_NAME:
            return BY_NAME[name[: -len(mine)] + other]
    return None


# ----------------------------------------------------------------------------------------------
# Markers
# ----------------------------------------------------------------------------------------------


def test_every_graded_function_has_a_solution_block():
    for module, tasks in TASKS.items():
        if not (REPO / "scratch" / f"{module}.py").exists():
            continue
        found = {b.function for b in markers.blocks((REPO / "scratch" / f"{module}.py").read_text())}
        # a block in a function nested inside it counts too (decoder_step.attend_past)
        missing = [t.name for t in tasks if not any(f == t.call.function or f.startswith(t.call.function + ".") for f in found)]
        assert not missing, f"scratch/{module}.py has no solution block in {missing}"


@pytest.mark.parametrize("source, message", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    # END SOLUTION\n    pass\n", "without BEGIN"),
    ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION\n", "inside the block"),
    ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "inside a function"),
    ("def f():\n    # BEGIN SOLUTIONS\n    return 1\n", "malformed"),
])
def test_malformed_markers_are_errors(source, message):
    with pytest.raises(markers.MarkerError, match=message):
        markers.blocks(source, "bad.py")


def test_strip_keeps_indentation_and_hint():
    source = "def f(x):\n    y = x\n    for i in y:\n        # BEGIN SOLUTION\n        # HINT: add one.\n        i += 1\n        # END SOLUTION\n    return y\n"
    stripped = markers.strip(source, "m")
    assert "        raise NotImplementedError('m.f: add one.')\n" in stripped and "i += 1" not in stripped
    compile(stripped, "m.py", "exec")


# ----------------------------------------------------------------------------------------------
# The student package
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "homework"
    tasks = make.make(out, TOPICS)
    return out, tasks


def test_package_holds_no_solution_line(package):
    out, _ = package
    sources = {p.name: p.read_text() for p in (REPO / "scratch").glob("*.py")}
    secret = markers.solution_lines(sources)
    assert len(secret) > 50  # the check below must have something to find
    leaks = [f"{path.relative_to(out)}: {line.strip()}" for path in make.student_files(out)
             for line in path.read_text().splitlines() if line.strip() in secret]
    assert not leaks, f"solution lines in the student package: {leaks[:5]}"


def test_package_imports_and_its_checks_select_one_function(package, tmp_path):
    out, tasks = package
    names = sorted(p.stem for p in (out / "scratch").glob("*.py") if p.stem != "__init__")
    # -I keeps the repository's scratch/ off the path; since Python 3.11 it keeps the working folder off too.
    code = f"import sys; sys.path.insert(0, {str(out)!r}); import " + ", ".join(f"scratch.{n}" for n in names)
    assert subprocess.run([sys.executable, "-I", "-c", code], cwd=out).returncode == 0
    assert {f"    {t.name}: {t.module}.{t.name}" for t in tasks} <= set((out / "pytest.ini").read_text().splitlines())
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::pytest.PytestUnknownMarkWarning",
                          "-m", "softmax_backward"], cwd=out, capture_output=True, text=True)
    assert "NotImplementedError: attention.softmax_backward" in run.stdout and " passed" not in run.stdout, run.stdout[-2000:]
    # With the reference in place every public check passes: the stored values and gradient checks are right.
    solved = tmp_path / "solved"
    shutil.copytree(out, solved)
    for module in MODULES:
        (solved / "scratch" / f"{module}.py").write_text((REPO / "scratch" / f"{module}.py").read_text())
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=solved, capture_output=True, text=True)
    assert run.returncode == 0 and "failed" not in run.stdout, run.stdout[-3000:]


def test_a_topic_whose_module_is_missing_or_ungraded_is_refused(monkeypatch):
    # a topic of the future (diffusion, the example here until it was written, is a topic now)
    monkeypatch.setitem(make.TOPICS, "flow_matching", ("layers", "flow_matching"))
    with pytest.raises(make.TopicError, match="topic 'flow_matching' has no module yet: scratch/flow_matching.py does not exist"):
        make.resolve_topics(["flow_matching"])
    monkeypatch.setitem(make.TOPICS, "flow_matching", ("layers", "encoder_decoder"))  # exists, nothing graded in it
    with pytest.raises(make.TopicError, match="topic 'flow_matching' has no graded functions yet"):
        make.resolve_topics(["flow_matching"])
    assert "flow_matching" not in make.available_topics() and "transformer" in make.available_topics()
    assert {"diffusion", "dcgan", "metrics"} <= set(make.available_topics())


@pytest.mark.parametrize("args, message", [
    (["make", "--out", "x", "--topics", "poetry"], "unknown topic 'poetry'"),
    (["grade", "nowhere"], "is not a folder"),
    (["grade", "."], "holds no scratch/ folder"),
])
def test_bad_command_lines_get_clear_errors(args, message, tmp_path):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------
# Grading: the reference, the untouched student version, determinism
# ----------------------------------------------------------------------------------------------


def test_reference_scores_full_marks():
    results = grader.grade(REPO, tasks_for(MODULES), BUDGET)
    failed = [f"{r.task}: {r.status}\n{r.feedback}" for r in results if r.score != r.max_score]
    assert not failed, "\n".join(failed)


def test_student_version_scores_zero_naming_each_function(package):
    out, tasks = package
    results = grader.grade(out, tasks, BUDGET)
    assert [r.score for r in results] == [0.0] * len(tasks)
    for task, result in zip(tasks, results):
        assert result.status == "not implemented" and f"{task.module}.{task.call.function}" in result.feedback, result


def test_grading_twice_gives_the_same_feedback(tmp_path, monkeypatch):
    """Even after new modules are imported: Hypothesis would otherwise draw their constants."""
    bug = next(b for b in catalogue.BUGS if b.function == "tanh_backward")
    submission = catalogue.apply(bug, tmp_path / "submission")
    first = grader.grade(submission, [BY_NAME[bug.function]], BUDGET)[0]
    (tmp_path / "constants_galore.py").write_text("".join(f"c{i} = {i / 7!r}\n" for i in range(200)))
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("constants_galore")
    second = grader.grade(submission, [BY_NAME[bug.function]], BUDGET)[0]
    assert first.status == "failed" and (first.feedback, first.calls) == (second.feedback, second.calls)


# ----------------------------------------------------------------------------------------------
# The catalogue of classic bugs
# ----------------------------------------------------------------------------------------------


def test_catalogue_is_large_enough():
    assert len(catalogue.BUGS) >= 15 and len({b.function for b in catalogue.BUGS}) >= 15


@pytest.mark.parametrize("bug", catalogue.BUGS, ids=[b.name for b in catalogue.BUGS])
def test_bug_loses_the_point_of_its_function(bug, tmp_path):
    submission = catalogue.apply(bug, tmp_path)
    other = sibling(bug.function)
    results = grader.grade(submission, [BY_NAME[bug.function]] + ([other] if other else []), BUDGET)
    hit = results[0]
    assert hit.score == 0.0 and hit.status in ("failed", "error"), hit
    assert "smallest failing input" in hit.feedback and bug.expect in hit.feedback, hit.feedback
    assert all(r.score == 1.0 for r in results[1:]), f"{bug.name} also cost {results[1:]}"


# ----------------------------------------------------------------------------------------------
# Stateful tasks: a sequence of calls in one child, compared after every call (tasks.Steps)
# ----------------------------------------------------------------------------------------------

STATEFUL = [name for name, task in BY_NAME.items() if isinstance(task.call, Steps)]
OPTIM_BUGS = [b for b in catalogue.BUGS if b.module == "optim"]

# Correct, and written otherwise than the reference: none of them may lose a point.
_ADAM_AS_THE_PAPER_ENDS_SECTION_2 = """\
m[...] = beta1 * m + (1.0 - beta1) * g
v[...] = beta2 * v + (1.0 - beta2) * g**2
# α_t = α·√(1 − β2^t)/(1 − β1^t) and ε̂ = ε·√(1 − β2^t): the same step, rearranged
step_size = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
p -= step_size * m / (np.sqrt(v) + eps * math.sqrt(1.0 - beta2**t))
"""
_SGD_WITH_OUT = """\
if self.momentum > 0.0:
    b = self.buffers["momentum_buffer"][name]
    np.multiply(b, self.momentum, out=b)
    np.add(b, g, out=b)
    g = b
np.subtract(p, lr * g, out=p)
"""
_SCHEDULE_DIVIDED = """\
return min(step**-0.5, step / warmup**1.5) / math.sqrt(d_model)
"""
_DECODER_STORES_FIRST = """\
q, k, v = (_project(a, sa, which, h) for which in ("q", "k", "v"))
if layer["self_k"] is None:
    layer["self_k"], layer["self_v"] = k, v
else:
    layer["self_k"] = np.concatenate([layer["self_k"], k], axis=2)
    layer["self_v"] = np.concatenate([layer["self_v"], v], axis=2)
out, _ = scaled_dot_product_attention_forward(q, layer["self_k"], layer["self_v"])
"""
_GPT_STEP_EMBEDDING_SLICED = """\
x = params["wte"][tokens][:, None, :] + params["wpe"][None, t : t + 1]  # (B, 1, D)
"""
ALTERNATIVES = {("optim", "Adam.step"): _ADAM_AS_THE_PAPER_ENDS_SECTION_2, ("optim", "SGD.step"): _SGD_WITH_OUT,
                ("optim", "transformer_schedule.schedule"): _SCHEDULE_DIVIDED,
                ("decoding", "decoder_step.attend_past"): _DECODER_STORES_FIRST,
                ("gpt", "gpt_step"): _GPT_STEP_EMBEDDING_SLICED}  # its first block: the new token's embedding


def rewritten(folder, blocks=(), appended=None):
    """The reference scratch/ in `folder`, with solution blocks replaced ({(module, block): body})
    and text appended to modules ({module: source})."""
    shutil.copytree(REPO / "scratch", folder / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    for (module, block), body in dict(blocks).items():
        path = folder / "scratch" / f"{module}.py"
        path.write_text(catalogue.edit(path.read_text(), catalogue.Bug("", module, block, "", body, "")))
    for module, source in (appended or {}).items():
        path = folder / "scratch" / f"{module}.py"
        path.write_text(path.read_text() + "\n" + source)
    return folder


def snapshot(value):
    """A deep, comparable copy: the wire format's tree and a copy of every array in it."""
    return pack(value)


def same(a, b):
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(
        a[1][k].dtype == b[1][k].dtype and np.array_equal(a[1][k], b[1][k]) for k in a[1])


def test_stateful_tasks_are_graded_over_sequences():
    assert {"decoder_step", "sgd_step", "adam_step", "transformer_schedule", "gpt_step"} <= set(STATEFUL)
    assert len(OPTIM_BUGS) >= 5 and {b.function for b in OPTIM_BUGS} == {"sgd_step", "adam_step", "transformer_schedule"}


def test_a_decoder_step_that_never_stores_its_key_and_value_loses_its_point_only_over_a_sequence(tmp_path):
    bug = next(b for b in catalogue.BUGS if b.name.startswith("decoder step never stores"))
    submission = catalogue.apply(bug, tmp_path)
    task = BY_NAME["decoder_step"]
    hit = grader.grade(submission, [task], BUDGET)[0]
    assert hit.score == 0.0 and hit.status == "failed", hit
    # Step 1 is right whatever the cache held (it reads the cache, then forgets to add to it), so
    # however far the shrinking gets, the first call that goes wrong is the second.
    assert "calls in a row on the same state" in hit.feedback and "step 2: logits differs" in hit.feedback, hit.feedback
    assert "every output of step 1 matched" in hit.feedback, hit.feedback
    # One call per case, each from the reference's state, as the grader did before: every call is right.
    one_call = task._replace(cases=task.cases.map(lambda case: {**case, "steps": case["steps"][:1]}))
    assert grader.grade(submission, [one_call], BUDGET)[0].score == 1.0


def test_correct_sequences_written_differently_keep_every_point(tmp_path):
    submission = rewritten(tmp_path, ALTERNATIVES)
    results = grader.grade(submission, [BY_NAME[name] for name in STATEFUL], BUDGET)
    assert [(r.task, r.status) for r in results if r.score != 1.0] == [], [r.feedback for r in results if r.score != 1.0]
    assert all(r.calls == BUDGET.examples for r in results), results  # every example ran, none stopped the search


@pytest.mark.parametrize("bug", OPTIM_BUGS, ids=[b.name for b in OPTIM_BUGS])
def test_an_optim_bug_costs_no_other_point_of_its_module(bug, tmp_path):
    submission = catalogue.apply(bug, tmp_path)
    results = grader.grade(submission, TASKS["optim"], BUDGET)
    assert {r.task.split(".")[1]: r.score for r in results} == {t.name: float(t.name != bug.function) for t in TASKS["optim"]}


def test_a_gpt_step_that_never_appends_to_its_cache_loses_its_point_only_over_a_sequence(tmp_path):
    """gpt_step is pure: the grader hands each call the cache the call before returned (Steps.carry)."""
    bug = next(b for b in catalogue.BUGS if b.name.startswith("cached step never appends"))
    submission = catalogue.apply(bug, tmp_path)
    task = BY_NAME["gpt_step"]
    hit = grader.grade(submission, [task], BUDGET)[0]
    assert hit.score == 0.0 and "step 2: logits differs" in hit.feedback, hit.feedback
    assert "each step after the first given the kv that the step before returned" in hit.feedback, hit.feedback
    one_call = task._replace(cases=task.cases.map(lambda case: {**case, "steps": case["steps"][:1]}))
    assert grader.grade(submission, [one_call], BUDGET)[0].score == 1.0


def test_a_generator_crosses_the_wire_as_a_fresh_copy_in_the_same_state():
    """sample's rng: the reference and the child each get their own generator, drawing the same numbers."""
    from checks.homework import protocol

    rng = np.random.default_rng(3)
    rng.random(5)  # not a fresh one: the state is what travels, not the seed
    tree, arrays = pack([rng])
    copy = protocol.unpack(tree, arrays, None)[0]
    assert copy is not rng and np.array_equal(copy.random(4), rng.random(4))
    with pytest.raises(TypeError, match="PCG64"):
        pack(np.random.Generator(np.random.MT19937(0)))
    with pytest.raises(protocol.ProtocolError, match="PCG64"):
        protocol.unpack({"generator": {"bit_generator": "MT19937"}}, {}, None)


_FILTER_FROM_THE_TOP = """\
if top_k is not None and top_k < v:
    kth = np.sort(out, axis=-1)[..., -top_k, None]  # (..., 1)
    out = np.where(out >= kth, out, -np.inf)
if top_p is not None:
    order = np.argsort(-out, axis=-1, kind="stable")  # most likely first, ties by the lower index
    ranked = np.take_along_axis(out, order, axis=-1)
    e = np.exp(ranked - ranked[..., :1])
    probs = e / e.sum(axis=-1, keepdims=True)
    keep_ranked = np.cumsum(probs, axis=-1) - probs < top_p  # the more likely tokens hold less than p
    keep = np.empty_like(keep_ranked)
    np.put_along_axis(keep, order, keep_ranked, axis=-1)
    out = np.where(keep, out, -np.inf)
"""
_SAMPLE_BY_ARGMAX = """\
z = filter_logits(logits / temperature, top_k, top_p)
e = np.exp(z - z.max(axis=-1, keepdims=True))
cdf = np.cumsum(e, axis=-1)
u = rng.random(cdf.shape[:-1])
tokens = np.argmax(cdf > u[..., None] * cdf[..., -1:], axis=-1)
"""


def test_sampling_written_otherwise_keeps_its_points(tmp_path):
    """top-p summed from the top (the reference sums from the bottom), probabilities unnormalised, the draw
    by argmax: p is never drawn within rounding of a top set's mass, so the two agree on every case."""
    submission = rewritten(tmp_path, {("sampling", "filter_logits"): _FILTER_FROM_THE_TOP,
                                      ("sampling", "sample"): _SAMPLE_BY_ARGMAX})
    results = grader.grade(submission, TASKS["sampling"], grader.Budget())
    assert [(r.task, r.status) for r in results if r.score != 1.0] == [], [r.feedback for r in results if r.score != 1.0]


def test_a_step_that_raises_midway_is_named(tmp_path):
    """Whatever the input shrinks to, the second call on a state is the one that raises."""
    raises = ("_step, _seen = decoder_step, []\n\n\ndef decoder_step(tokens, state, params, config):\n"
              "    if any(state is seen for seen in _seen):\n        raise RuntimeError('no second token')\n"
              "    _seen.append(state)\n    return _step(tokens, state, params, config)\n")
    submission = rewritten(tmp_path, appended={"decoding": raises})
    hit = grader.grade(submission, [BY_NAME["decoder_step"]], BUDGET)[0]
    assert hit.status == "error" and "raised RuntimeError: no second token in step 2" in hit.feedback, hit.feedback
    assert "2 calls in a row" in hit.feedback and "scratch/decoding.py" in hit.feedback, hit.feedback


def test_the_state_sent_to_the_child_is_a_copy_it_cannot_change_for_the_parent(tmp_path):
    """A decoder_step that scribbles over everything it is given, after answering: the case the parent
    drew and the reference's answer stay as they were, while in the child the next call sees the damage."""
    scribbles = ("_step = decoder_step\n\n\ndef decoder_step(tokens, state, params, config):\n"
                 "    logits = _step(tokens, state, params, config)\n"
                 "    for layer in state['layers']:\n        layer['cross_k'][...] = 1e6\n"
                 "    for value in params.values():\n        value[...] = 0.0\n"
                 "    tokens[...] = 0\n    return logits\n")
    submission = rewritten(tmp_path, appended={"decoding": scribbles})
    task = BY_NAME["decoder_step"]
    case = next(c for c in make.draw_cases(task, 4) if len(c["steps"]) >= 2)
    drawn = snapshot(case)
    request = grader.prepare(task, case)  # the reference's decoder_step changes its state too: on a copy
    assert same(snapshot(case), drawn)
    answer = snapshot(request.expected)
    worker = Worker(submission, "decoding", Limits())  # the copy is the wire format's, whatever the wall
    try:
        received = worker.call(request.function, request.args, {}, steps=request.steps)
    finally:
        worker.close()
    assert same(snapshot(case), drawn) and same(snapshot(request.expected), answer)
    assert np.array_equal(received["step 1: logits"], request.expected["step 1: logits"])
    assert not np.allclose(received["step 2: logits"], request.expected["step 2: logits"])  # the child's own copy was hit


def test_the_public_checks_run_sequences_and_catch_a_step_that_forgets(package, tmp_path):
    out, _ = package
    solved = tmp_path / "solved"
    shutil.copytree(out, solved)
    for module in MODULES:
        (solved / "scratch" / f"{module}.py").write_text((REPO / "scratch" / f"{module}.py").read_text())
    bug = next(b for b in catalogue.BUGS if b.name.startswith("decoder step never stores"))
    decoding = solved / "scratch" / "decoding.py"
    decoding.write_text(catalogue.edit(decoding.read_text(), bug))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "decoder_step or sgd_step"],
                         cwd=solved, capture_output=True, text=True)
    assert "1 failed, 7 passed" in run.stdout and "step 2: logits" in run.stdout, run.stdout[-3000:]
    assert "test_expected_values[decoder_step-" in run.stdout, run.stdout[-3000:]


# ----------------------------------------------------------------------------------------------
# Adversarial submissions
# ----------------------------------------------------------------------------------------------

IN_PROCESS = [a for a in adversaries.ADVERSARIES if a.name != "writes a fake results file"]


@pytest.mark.parametrize("adversary", IN_PROCESS, ids=[a.name for a in IN_PROCESS])
def test_adversary_earns_nothing(adversary, tmp_path):
    submission = adversaries.apply(adversary, tmp_path)
    start = time.monotonic()
    results = grader.grade(submission, [BY_NAME[n] for n in adversary.scores], BUDGET, Limits(call_seconds=2.0))
    assert time.monotonic() - start < 30.0
    assert {r.task.split(".")[1]: r.score for r in results} == adversary.scores, results
    assert results[0].status == adversary.status, results[0]


# The 20 GB child, measured behind each wall: checks/test_homework_wall.py.


def test_class_grading_writes_real_results_despite_a_forger(package, tmp_path):
    """A class of three: the reference, the untouched student version, and a results forger."""
    out, _ = package
    shutil.copytree(REPO / "scratch", tmp_path / "alice" / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(out, tmp_path / "bob")
    forger = next(a for a in adversaries.ADVERSARIES if a.name == "writes a fake results file")
    adversaries.apply(forger, tmp_path / "mallory")
    result = cli("grade", str(tmp_path), "--topics", "attention", "--examples", "5", "--calls", "40", "--quiet",
                 "--json", "json", "--csv", "scores.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    attention = tasks_for(make.resolve_topics(["attention"]))
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["submission", "total", "max_score"] and len(rows) == 4
    totals = {row.split(",")[0]: float(row.split(",")[1]) for row in rows[1:]}
    # mallory's softmax_forward is wrong, and both attention forwards call it: three points lost.
    assert totals == {"alice": len(attention), "bob": 0.0, "mallory": len(attention) - 3.0}
    for name, total in totals.items():
        data = json.loads((tmp_path / "json" / f"{name}.json").read_text())
        assert data["score"] == total and len(data["tests"]) == len(attention)
        assert all(set(t) >= {"name", "score", "max_score", "status", "output"} for t in data["tests"])
    tests = {t["name"]: t for t in json.loads((tmp_path / "json" / "mallory.json").read_text())["tests"]}
    assert tests["attention.softmax_forward"]["status"] == "failed" and tests["attention.causal_mask"]["score"] == 1.0
