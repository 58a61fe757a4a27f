"""The wall around each submission (checks/homework/sandbox.py), tested as a student would attack it.

Every attack of checks/homework/attacks.py is graded in one class beside an honest classmate,
behind bubblewrap and behind unshare: each must fail, earn nothing, and leave the classmate's
full marks, the grader's tree, its loopback and its process alone. A control shows that the
stealers do take the points when the wall is down, so these tests can fail.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from checks.homework import adversaries, attacks, catalogue, grader, make, sandbox
from checks.homework.sandbox import Limits, SubmissionError, Worker, descendants
from checks.homework.tasks import TASKS, tasks_for

pytestmark = pytest.mark.homework

REPO = Path(__file__).resolve().parents[1]
BUDGET = grader.Budget(examples=20, calls=80)
BY_NAME = {task.name: task for module in TASKS.values() for task in module}
WALLS = ["bwrap", "unshare"]
SANDBOX_UIDS = range(sandbox.UID_BASE, sandbox.UID_BASE + 1000)


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "checks.homework", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The student version of the attention topic: nothing implemented."""
    out = tmp_path_factory.mktemp("student") / "homework"
    make.make(out, ["attention"])
    return out


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        name, rest = f.read().rsplit(")", 1)
    return name.split("(", 1)[1], int(rest.split()[1])  # (command, parent pid)


def sandbox_processes():
    """Pids of live processes owned by the sandboxes' uids that no wall holds any more (no
    bwrap or unshare launcher among their ancestors): none may outlive grading. Sandboxes of
    other graders running on the machine at the same time are still behind their launcher."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if not (entry.isdigit() and os.stat(f"/proc/{entry}").st_uid in SANDBOX_UIDS):
                continue
            pid, held = int(entry), False
            while pid > 1 and not held:
                name, pid = _stat(pid)
                held = name in ("bwrap", "unshare")
            if not held:
                found.append(int(entry))
        except (OSError, ValueError):
            pass
    return found


class Listener:
    """A TCP server on the grader's loopback that counts the connections it accepts."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port, self.accepted, self.running = self.socket.getsockname()[1], 0, True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            self.accepted += 1
            connection.close()

    def close(self):
        self.running = False
        self.thread.join(timeout=5)
        self.socket.close()


def attack_fields(class_folder, listener, marker):
    return {"repo": str(REPO), "classmates": str(class_folder), "port": listener.port, "marker": marker,
            "grader_pid": os.getpid()}


def folder_digest(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("wall", WALLS)
def test_every_attack_fails_and_an_honest_classmate_keeps_full_marks(wall, student, tmp_path):
    """A class: alice (the reference), one submission per attack, the two hogs; graded two at a time."""
    room = tmp_path / "class"
    shutil.copytree(REPO / "scratch", room / "alice" / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    listener, marker = Listener(), f"pwned-{wall}-{os.getpid()}.txt"
    try:
        fields = attack_fields(room, listener, marker)
        for i, attack in enumerate(attacks.ATTACKS):
            attacks.apply(attack, student, room / f"attack{i}", **fields)
        for i, name in enumerate(attacks.HOGS):
            attacks.apply_hog(name, REPO, room / f"hog{i}")
        alice_before = folder_digest(room / "alice")
        start = time.monotonic()
        result = cli("grade", str(room), "--topics", "attention", "--examples", "5", "--calls", "40", "--timeout", "3",
                     "--quiet", "--json", "json", "--csv", "scores.csv", "--jobs", "2", "--isolation", wall, cwd=tmp_path)
        seconds = time.monotonic() - start
    finally:
        listener.close()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert seconds < 240, f"the class took {seconds:.0f} s"
    attention = tasks_for(make.resolve_topics(["attention"]))
    totals = {row.split(",")[0]: float(row.split(",")[1]) for row in (tmp_path / "scores.csv").read_text().splitlines()[1:]}
    expected = {"alice": len(attention), **{f"attack{i}": 0.0 for i in range(len(attacks.ATTACKS))},
                **{f"hog{i}": len(attention) - 1.0 for i in range(len(attacks.HOGS))}}
    assert totals == expected, {name: (totals.get(name), want) for name, want in expected.items() if totals.get(name) != want}
    for name in expected:
        data = json.loads((tmp_path / "json" / f"{name}.json").read_text())
        assert data["extra_data"] == {"isolation": wall} and f"isolation: {wall}" in data["output"]
    for i in range(len(attacks.HOGS)):  # the hog loses relu_forward alone, as a failed task
        tests = {t["name"]: t for t in json.loads((tmp_path / "json" / f"hog{i}.json").read_text())["tests"]}
        assert tests["layers.relu_forward"]["score"] == 0.0 and tests["layers.relu_backward"]["score"] == 1.0
    for i, attack in enumerate(attacks.ATTACKS):  # nothing found: every function still unimplemented, not merely wrong
        tests = json.loads((tmp_path / "json" / f"attack{i}.json").read_text())["tests"]
        assert all(t["output"].startswith("not implemented") for t in tests), (attack.name, tests[0]["output"][:300])
    assert folder_digest(room / "alice") == alice_before, "a submission changed a classmate's folder"
    assert not (REPO / "checks" / "homework" / marker).exists(), "a submission wrote into the grader's tree"
    assert listener.accepted == 0, "a submission reached a server on the grader's loopback"
    assert not sandbox_processes(), f"sandbox processes outlived grading: {sandbox_processes()}"


@pytest.mark.parametrize("attack", [a for a in attacks.ATTACKS if a.steals], ids=lambda a: a.name)
def test_the_stealers_would_take_the_points_without_the_wall(attack, student, tmp_path):
    """The control: with --no-isolation each stealer finds the reference, so the test above can fail."""
    room = tmp_path / "class"
    shutil.copytree(REPO / "scratch", room / "alice" / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    listener = Listener()
    try:
        submission = attacks.apply(attack, student, room / "mallory", **attack_fields(room, listener, "unused"))
    finally:
        listener.close()
    tasks = [BY_NAME["softmax_forward"]]
    assert grader.grade(submission, tasks, BUDGET, isolation="none")[0].score == 1.0
    walled = grader.grade(submission, tasks, BUDGET, isolation="unshare")[0]
    assert walled.score == 0.0 and walled.status == "not implemented", walled


@pytest.mark.parametrize("wall", WALLS)
def test_what_the_child_sees(wall, tmp_path):
    """Run a probe behind the wall: its uid, its view of the filesystem, /proc and the network."""
    probe = '''
import json, os, socket
def look():
    seen = {"uid": os.getuid(), "root": sorted(os.listdir("/")), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "submission": sorted(os.listdir("/submission/scratch")), "paths": {}}
    for path in (REPO, "/work", "/etc/passwd", "/home"):
        seen["paths"][path] = os.path.exists(path)
    try:
        open("/submission/scratch/new.py", "w")
        seen["writes submission"] = True
    except OSError:
        seen["writes submission"] = False
    with open("/proc/self/status") as f:
        seen["status"] = {k: v.strip() for k, v in (line.split(":", 1) for line in f) if k in ("CapEff", "CapBnd", "NoNewPrivs")}
    seen["interfaces"] = sorted(name for _, name in socket.if_nameindex())
    import numpy  # the wire carries arrays: the report goes as the bytes of its JSON
    return numpy.frombuffer(json.dumps(seen).encode(), numpy.uint8)
'''.replace("REPO", repr(str(REPO)))
    submission = tmp_path / "probe"
    shutil.copytree(REPO / "scratch", submission / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    (submission / "scratch" / "snoop.py").write_text(probe)
    (submission / "scratch" / "link.py").symlink_to(REPO / "scratch" / "attention.py")
    worker = Worker(submission, "snoop", Limits(), wall, slot=7)
    try:
        host_uid = os.stat(f"/proc/{descendants(worker.process.pid)[-1]}").st_uid
        seen = worker.call("look", [], {"seen": ()})
    except SubmissionError as error:
        pytest.fail(str(error.meta))
    finally:
        worker.close()
    seen = json.loads(seen["seen"].tobytes())
    assert host_uid == sandbox.UID_BASE + 7 and seen["uid"] == sandbox.INSIDE_UID, (host_uid, seen["uid"])
    assert set(seen["root"]) <= {"bin", "lib", "lib64", "sbin", "usr", "root", "proc", "dev", "tmp", "submission", "grader",
                                 "opt", "home", "work"}, seen["root"]
    assert not any(seen["paths"].values()), seen["paths"]
    assert "link.py" not in seen["submission"] and "snoop.py" in seen["submission"] and not seen["writes submission"]
    assert max(seen["pids"]) < 10, seen["pids"]  # its own PID namespace: a handful of processes
    assert seen["status"]["CapEff"] == "0000000000000000" and seen["status"]["NoNewPrivs"] == "1", seen["status"]
    assert seen["interfaces"] == ["lo"]


@pytest.mark.parametrize("wall", WALLS)
def test_the_child_dies_with_the_grader(wall):
    """A grader killed with SIGKILL (no clean-up runs) takes every process of its sandbox with it."""
    script = f'''
import sys, time
sys.path.insert(0, {str(REPO)!r})
from checks.homework.sandbox import Worker, Limits
worker = Worker({str(REPO)!r}, "attention", Limits(), {wall!r})
print(worker.process.pid, flush=True)
time.sleep(600)
'''
    grader_process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        launcher = int(grader_process.stdout.readline())
        inside = descendants(launcher)
        assert len(inside) >= 2, "the sandbox has no processes behind its launcher"
        grader_process.kill()
        grader_process.wait(timeout=10)
        deadline = time.monotonic() + 10
        alive = lambda: [pid for pid in [launcher] + inside if Path(f"/proc/{pid}").exists()  # noqa: E731
                         and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(), f"still running after the grader died: {alive()}"
    finally:
        grader_process.kill()


@pytest.mark.parametrize("wall", ["none"] + WALLS)
def test_a_child_asking_for_20_gb_gets_a_memory_error_and_stays_small(wall, tmp_path):
    hoarder = next(a for a in adversaries.ADVERSARIES if a.name == "allocates 20 GB")
    worker = Worker(adversaries.apply(hoarder, tmp_path), "attention", Limits(), wall)
    try:
        with pytest.raises(SubmissionError, match="MemoryError"):
            worker.call("softmax_forward", [np.zeros(3), -1, None], {"out": (0,)})
        # VmHWM: peak resident memory since exec (the fork's copy excluded), of the child and of
        # every process of the wall around it.
        peaks = []
        for pid in [worker.process.pid] + descendants(worker.process.pid):
            status = Path(f"/proc/{pid}/status").read_text()
            peaks.append(int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]))
    finally:
        worker.close()
    assert len(peaks) >= (1 if wall == "none" else 2) and max(peaks) > 10 * 1024, peaks  # NumPy's child was measured
    assert max(peaks) < 512 * 1024, f"the child peaked at {max(peaks)} KiB"


def test_grade_refuses_when_no_wall_can_be_built(monkeypatch):
    monkeypatch.setattr(sandbox, "probe", lambda kind: "user namespaces are disabled")
    with pytest.raises(sandbox.IsolationUnavailable, match="apt-get install bubblewrap.*--no-isolation"):
        grader.grade(REPO, [BY_NAME["causal_mask"]], BUDGET)
    assert grader.grade(REPO, [BY_NAME["causal_mask"]], BUDGET, isolation="none")[0].isolation == "none"


def test_the_command_line_refuses_without_a_wall_and_says_why(tmp_path):
    """No bubblewrap and no util-linux tools on the PATH: grade stops before running anything."""
    shutil.copytree(REPO / "scratch", tmp_path / "alice" / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("import shutil, sys; real = shutil.which; shutil.which = lambda name, *a, **k: None if name in "
            "('bwrap', 'unshare', 'setpriv', 'prlimit') else real(name, *a, **k); "
            "from checks.homework.__main__ import main; sys.exit(main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", code, "grade", str(tmp_path / "alice"), "--topics", "attention"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "cannot wall off the submissions" in run.stderr and "bubblewrap" in run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-c", code, "grade", str(tmp_path / "alice"), "--topics", "attention",
                          "--no-isolation", "--examples", "3", "--quiet", "--json", "r.json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "--no-isolation" in run.stderr, run.stderr
    assert json.loads((tmp_path / "r.json").read_text())["extra_data"] == {"isolation": "none"}


def test_gradescope_package_grades_a_submission(tmp_path):
    """The zip, unpacked as Gradescope does, and run_autograder run against a folder laid out like /autograder."""
    result = cli("gradescope", "--topics", "attention", "--examples", "5", "--out", str(tmp_path / "autograder.zip"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "autograder"
    with zipfile.ZipFile(tmp_path / "autograder.zip") as archive:
        names = archive.namelist()
        archive.extractall(root / "source")
    assert {"setup.sh", "run_autograder", "pyproject.toml", "constraints.txt", "scratch/attention.py",
            "checks/homework/grader.py"} <= set(names)
    assert "bubblewrap" in (root / "source" / "setup.sh").read_text()
    # A student who uploads the module files alone, with one classic bug.
    bug = next(b for b in catalogue.BUGS if b.function == "softmax_forward")
    catalogue.apply(bug, tmp_path / "buggy")
    (root / "submission").mkdir()
    for path in (tmp_path / "buggy" / "scratch").glob("*.py"):
        shutil.copy(path, root / "submission" / path.name)
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "GENAI_PYTHON": sys.executable}
    run = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads((root / "results" / "results.json").read_text())
    attention = tasks_for(make.resolve_topics(["attention"]))
    tests = {t["name"]: t for t in data["tests"]}
    assert len(tests) == len(attention) and data["extra_data"]["isolation"] in WALLS
    assert [name for name, t in tests.items() if t["score"] != 1.0] == ["attention.softmax_forward"]
    assert data["score"] == len(attention) - 1.0 and tests["attention.softmax_forward"]["output"].startswith("failed")


# ----------------------------------------------------------------------------------------------
# Speed without changing a grade: the replay of a passing run's inputs (grader._PASSED)
# ----------------------------------------------------------------------------------------------


def test_the_replay_of_passing_inputs_changes_no_grade(tmp_path, monkeypatch):
    """Graded cold (nothing recorded) and warm (after the reference passed every task): the same
    status, feedback and number of inputs, for the reference and for a classic bug of each kind."""
    tasks = [BY_NAME[name] for name in ("softmax_forward", "softmax_backward", "tanh_backward", "causal_mask")]
    bugs = [b for b in catalogue.BUGS if b.function in ("softmax_backward", "tanh_backward")]
    folders = [REPO] + [catalogue.apply(bug, tmp_path / bug.name.replace(" ", "_")) for bug in bugs]
    monkeypatch.setattr(grader, "_PASSED", {})
    cold = []
    for folder, bug in zip(folders[1:], bugs):
        grader._PASSED.clear()
        cold.append(grader.grade(folder, tasks, BUDGET))
        assert {key[1] for key in grader._PASSED} == {t.name for t in tasks} - {bug.function}  # passes alone recorded
    grader._PASSED.clear()
    reference = grader.grade(REPO, tasks, BUDGET)
    assert {key[1] for key in grader._PASSED} == {t.name for t in tasks}
    calls = []
    original = sandbox.Worker.call
    monkeypatch.setattr(sandbox.Worker, "call", lambda self, *a, **k: calls.append(a[0]) or original(self, *a, **k))
    again = grader.grade(REPO, tasks, BUDGET)
    assert len(calls) == sum(r.calls for r in reference)  # the replay asks exactly what the search asked
    warm = [grader.grade(folder, tasks, BUDGET) for folder in folders[1:]]
    same = lambda rs: [(r.task, r.score, r.status, r.feedback, r.calls) for r in rs]  # noqa: E731
    assert same(again) == same(reference) and all(r.score == 1.0 for r in reference)
    for before, after, bug in zip(cold, warm, bugs):
        assert same(after) == same(before), bug.name
        assert [r.task.split(".")[1] for r in after if r.score == 0.0] == [bug.function]


def test_one_submission_split_over_two_processes_gets_the_same_grade(tmp_path):
    bug = next(b for b in catalogue.BUGS if b.function == "softmax_backward")
    submission = catalogue.apply(bug, tmp_path / "bob")
    reports = {}
    for jobs in ("1", "2"):
        result = cli("grade", str(submission), "--topics", "attention", "--examples", "5", "--calls", "40", "--quiet",
                     "--jobs", jobs, "--json", f"r{jobs}.json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        reports[jobs] = [(t["name"], t["score"], t["output"]) for t in json.loads((tmp_path / f"r{jobs}.json").read_text())["tests"]]
    assert reports["1"] == reports["2"]
    lost = [name for name, score, _ in reports["2"] if score == 0.0]
    assert "attention.softmax_backward" in lost and len(lost) < len(reports["2"]) / 2, lost


@pytest.mark.parametrize("wall", WALLS)
def test_a_grader_that_is_not_root_builds_the_same_wall(wall, tmp_path):
    """The grader run as uid 1000 (in a user namespace of its own, so as a teaching assistant's
    account would run it): no uid to drop, the wall makes its own user namespace; a stealer still
    finds nothing and the reference still scores full marks."""
    if os.geteuid() != 0:
        pytest.skip("this machine's grader is not root: the other tests already run this path")
    student = tmp_path / "student"
    make.make(student, ["attention"])
    shutil.copytree(REPO / "scratch", tmp_path / "class" / "alice" / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    listener = Listener()
    try:
        attacks.apply(attacks.ATTACKS[0], student, tmp_path / "class" / "mallory",
                      **attack_fields(tmp_path / "class", listener, "unused"))
    finally:
        listener.close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000", sys.executable, "-m", "checks.homework",
                          "grade", str(tmp_path / "class"), "--topics", "attention", "--examples", "3", "--quiet",
                          "--isolation", wall, "--csv", str(tmp_path / "scores.csv")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    totals = {row.split(",")[0]: float(row.split(",")[1]) for row in (tmp_path / "scores.csv").read_text().splitlines()[1:]}
    assert totals == {"alice": len(tasks_for(make.resolve_topics(["attention"]))), "mallory": 0.0}, totals
