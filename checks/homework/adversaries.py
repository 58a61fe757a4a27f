"""Submissions that try to earn what they did not compute, for testing the sandbox.

Each is the reference scratch/ with code appended to one module: run at import, or a function
redefined (a later `def` replaces the earlier one). `scores` says what each listed task must
score: 0 where the cheat sits, 1 for the functions it leaves alone, graded normally.
"""

import shutil
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]


class Adversary(NamedTuple):
    name: str
    module: str
    code: str  # appended to scratch/<module>.py
    scores: dict  # task name → the score it must get
    status: str  # the status of the cheating function


_FAKE_RESULTS = '''
import json as _json, os as _os

def _fake_results():
    """Write a perfect Gradescope results.json everywhere the grader might look."""
    fake = _json.dumps({"score": 1000.0, "tests": [{"name": "all", "score": 1000.0, "max_score": 1.0, "status": "passed"}]})
    targets = ["results.json", _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "results.json")]
    try:
        argv = open(f"/proc/{_os.getppid()}/cmdline", "rb").read().decode().split("\\0")
        if "--json" in argv:
            path = argv[argv.index("--json") + 1]
            if not _os.path.isabs(path):
                path = _os.path.join(_os.readlink(f"/proc/{_os.getppid()}/cwd"), path)
            targets += [_os.path.join(path, n) for n in ("alice.json", "bob.json")] if _os.path.isdir(path) else [path]
        targets.append(_os.path.join(_os.readlink(f"/proc/{_os.getppid()}/cwd"), "results.json"))
    except OSError:
        pass
    for target in targets:
        try:
            with open(target, "w") as f:
                f.write(fake)
        except OSError:
            pass

_fake_results()

def softmax_forward(x, axis=-1, mask=None):
    _fake_results()
    return np.zeros_like(x), SoftmaxCache(np.zeros_like(x), axis)
'''

ADVERSARIES = [
    Adversary("sys.exit(0) on import", "attention", "import sys\nsys.exit(0)\n",
              {"softmax_forward": 0.0, "causal_mask": 0.0, "relu_forward": 1.0}, "import error"),
    Adversary("os._exit(0) on import", "vae", "import os\nos._exit(0)\n",
              {"gaussian_kl_forward": 0.0, "tanh_forward": 1.0}, "import error"),
    Adversary("monkeypatches numpy.allclose and numpy.testing", "attention", '''
import numpy
numpy.allclose = lambda *a, **k: True
numpy.array_equal = lambda *a, **k: True
numpy.isclose = lambda a, b, *r, **k: numpy.ones(numpy.broadcast(a, b).shape, dtype=bool)
numpy.testing.assert_allclose = lambda *a, **k: None
numpy.testing.assert_array_equal = lambda *a, **k: None

def softmax_forward(x, axis=-1, mask=None):
    return numpy.zeros_like(x), SoftmaxCache(numpy.zeros_like(x), axis)
''', {"softmax_forward": 0.0, "causal_mask": 1.0}, "failed"),
    Adversary("returns an ndarray subclass with a lying __eq__", "attention", '''
class _Liar(np.ndarray):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

def softmax_forward(x, axis=-1, mask=None):
    out = np.zeros_like(x).view(_Liar)
    return out, SoftmaxCache(out, axis)
''', {"softmax_forward": 0.0, "softmax_backward": 1.0}, "failed"),
    Adversary("writes a fake results file", "attention", _FAKE_RESULTS,
              {"softmax_forward": 0.0, "causal_mask": 1.0}, "failed"),
    Adversary("loops forever", "attention", '''
def softmax_forward(x, axis=-1, mask=None):
    while True:
        pass
''', {"softmax_forward": 0.0, "softmax_backward": 1.0}, "timeout"),
    Adversary("allocates 20 GB", "attention", '''
def softmax_forward(x, axis=-1, mask=None):
    hoard = np.ones(20 * 1024**3 // 8)
    return hoard, None
''', {"softmax_forward": 0.0, "softmax_backward": 1.0}, "error"),
    Adversary("prints megabytes to stdout", "attention", '''
print("spam " * 1_000_000)
_honest_softmax_forward = softmax_forward

def softmax_forward(x, axis=-1, mask=None):
    print("spam " * 200_000, flush=True)
    return _honest_softmax_forward(x, axis, mask)
''', {"softmax_forward": 1.0, "causal_mask": 1.0}, "passed"),
    Adversary("kills its own process", "attention", '''
import os, signal

def causal_mask(t):
    os.kill(os.getpid(), signal.SIGKILL)
''', {"causal_mask": 0.0, "padding_mask": 1.0}, "crashed"),
    Adversary("returns something that is not an array", "attention", '''
def softmax_forward(x, axis=-1, mask=None):
    return {"not": "an array"}, None
''', {"softmax_forward": 0.0, "softmax_backward": 1.0}, "error"),
]


def apply(adversary, folder):
    """Write the reference scratch/ with the adversary's code appended into `folder`."""
    folder = Path(folder)
    shutil.copytree(REPO / "scratch", folder / "scratch", ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / "scratch" / f"{adversary.module}.py"
    path.write_text(path.read_text() + "\n\n" + adversary.code)
    return folder
