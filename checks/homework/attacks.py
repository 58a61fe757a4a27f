"""Submissions that attack the grader from outside their own process, for testing the wall.

checks/homework/adversaries.py holds the cheats that stay inside the child (a lying array, a
patched NumPy, an endless loop); these reach for what lies around it, as a student who has read
this project's source would. Each is the student version of scratch/ (nothing implemented) with
code in `scratch/__init__.py`, which runs before any graded module is imported:

- the stealers look for the reference scratch/ (through the grader's path, /proc/<pid>/cwd and
  /proc/<pid>/root, the installed package's metadata, a classmate's folder) and, where they
  find it, put it in front of their own package: every function would then pass;
- the vandals write into the grader's tree and into a classmate's folder, talk to a server on
  the grader's loopback, and kill every process they can find that looks like the grader;
- the hogs fork without end and fill their /tmp.

Behind the wall every one finds nothing: the stealers score 0 (nothing implemented), the
others lose only the points of the functions they break. `{...}` fields are filled in by the
test, which knows the real paths and port.
"""

import shutil
from pathlib import Path
from typing import NamedTuple


class Attack(NamedTuple):
    name: str
    init: str  # appended to scratch/__init__.py; str.format fields: repo, classmates, port, marker
    steals: bool  # True: succeeds only by finding the reference (scores > 0 without the wall)


_STEAL = '''
import os as _os


def _take(folder):
    """Put `folder` in front of this package if it holds the reference (solutions not cut out)."""
    try:
        with open(_os.path.join(folder, "attention.py")) as f:
            if "BEGIN SOLUTION" not in f.read():
                return False
    except OSError:
        return False
    __path__.insert(0, folder)
    return True
'''

ATTACKS = [
    Attack("reads the reference through the grader's path", _STEAL + '''
_take({repo!r} + "/scratch")
''', True),
    Attack("reads the reference through /proc/<pid>/cwd and /proc/<pid>/root", _STEAL + '''
for _pid in _os.listdir("/proc"):
    if _pid.isdigit():
        for _way in ("cwd", "root"):
            for _inner in ("scratch", {repo!r}.lstrip("/") + "/scratch"):
                if _take(_os.path.join("/proc", _pid, _way, _inner)):
                    break
''', True),
    Attack("reads the reference through the installed package's metadata", _STEAL + '''
import importlib.metadata as _metadata, json as _json
try:
    _dist = _metadata.distribution("genai-from-scratch")
    _url = _json.loads(_dist.read_text("direct_url.json") or "{{}}").get("url", "")
    _take(_url.removeprefix("file://") + "/scratch")
    _take(str(_dist.locate_file("scratch")))
except Exception:
    pass
import sys as _sys
for _finder in list(_sys.meta_path):  # setuptools' editable finder maps package names to folders
    _take(str(getattr(_finder, "MAPPING", {{}}).get("scratch", "")))
''', True),
    Attack("copies a classmate", _STEAL + '''
_here = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
for _folder in [_os.path.dirname(_here), {classmates!r}]:
    try:
        _names = _os.listdir(_folder)
    except OSError:
        continue
    for _name in _names:
        _take(_os.path.join(_folder, _name, "scratch"))
''', True),
    Attack("writes into the grader's tree and a classmate's folder", '''
import os as _os
for _target in [{repo!r} + "/checks/homework/{marker}", "/grader/{marker}",
                _os.path.join({classmates!r}, "alice", "scratch", "{marker}")]:
    try:
        with open(_target, "w") as _f:
            _f.write("written by a submission")
    except OSError:
        pass
try:  # and a bug planted in a classmate's code
    with open(_os.path.join({classmates!r}, "alice", "scratch", "layers.py"), "a") as _f:
        _f.write("\\ndef relu_forward(x):\\n    return x, None\\n")
except OSError:
    pass
''', False),
    Attack("connects to a server on the grader's loopback", '''
import socket as _socket
for _host in ("127.0.0.1", "localhost", "::1"):
    try:
        with _socket.create_connection((_host, {port}), timeout=1) as _s:
            _s.sendall(b"a submission was here")
    except OSError:
        pass
''', False),
    Attack("finds the grader in /proc and kills it", '''
import os as _os, signal as _signal
for _pid in _os.listdir("/proc"):
    try:
        _line = open(f"/proc/{{_pid}}/cmdline", "rb").read()
        if _pid.isdigit() and int(_pid) != _os.getpid() and (b"checks.homework" in _line or b"pytest" in _line):
            _os.kill(int(_pid), _signal.SIGKILL)
    except (OSError, ValueError):
        pass
for _pid in (_os.getppid(), {grader_pid}):
    try:
        _os.kill(_pid, _signal.SIGKILL)
    except OSError:
        pass
''', False),
]

# Appended to scratch/layers.py of the reference: only these functions break.
HOGS = {
    "forks without end": '''
import os as _os

def relu_forward(x):
    while True:
        try:
            _os.fork()
        except OSError:
            pass
''',
    "fills its tmp": '''
import os as _os, tempfile as _tempfile

def relu_forward(x):
    block = b"x" * (1 << 20)
    for i in range(100000):
        try:
            with open(_os.path.join(_tempfile.gettempdir(), f"fill{i}"), "wb") as f:
                f.write(block)
        except OSError:
            break
    return x, None
''',
}


def apply(attack, student, folder, **fields):
    """The student version `student` (a folder holding scratch/) with the attack in its __init__."""
    folder = Path(folder)
    shutil.copytree(Path(student) / "scratch", folder / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    init = folder / "scratch" / "__init__.py"
    init.write_text(init.read_text() + "\n" + attack.init.format(**fields))
    return folder


def apply_hog(name, reference, folder):
    """The reference scratch/ with HOGS[name] appended to layers.py."""
    folder = Path(folder)
    shutil.copytree(Path(reference) / "scratch", folder / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / "scratch" / "layers.py"
    path.write_text(path.read_text() + "\n" + HOGS[name])
    return folder
