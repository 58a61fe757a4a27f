"""The parent's side of the sandbox: build the wall, start a child behind it, talk to it, kill it.

The wall (`isolation`, chosen by `choose_isolation`): the child runs in new user, mount, PID,
network, IPC and UTS namespaces, made by bubblewrap (`bwrap`, what Flatpak uses) when it is
installed, else by util-linux's `unshare` and checks/homework/jail.py, which do the same with
the system calls. Either way the child sees only

    /usr and the top-level links (/bin → usr/bin …)   read-only: the system's libraries
    the Python installation and its site-packages       read-only, the project's own packages
                                                        (scratch/, checks/ …) hidden inside it
    /submission                                         a read-only copy of its own scratch/
    /grader                                             worker.py and protocol.py, read-only
    /tmp                                                private, writable, `tmp_bytes` at most
    /proc, /dev                                         its own PID namespace; null, zero, urandom

and nothing else: not the reference scratch/, the project checkout, the class folder, the other
submissions, the grader's processes or files. Its only network is its own loopback. It runs as
an unprivileged uid: when the grader is root, the wall drops to uid `UID_BASE + slot` (no
capabilities, no new privileges) before the child starts, so it is not root outside either.
It dies when the grader dies (the launcher gets SIGKILL when its parent does, and the PID
namespace goes with its first process). What the wall does not stop: the kernel is shared, so a
kernel exploit is out of scope; grade on a machine that holds nothing else of value.

The limits inside it (`Limits`): CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS: a 20 GB
allocation fails inside the child with MemoryError), largest file (RLIMIT_FSIZE), no core
dumps, a process count (RLIMIT_NPROC: a fork bomb ends as a failed task), one BLAS thread, a
scrubbed environment. Every exchange has a wall-clock deadline; a child that misses it is
killed with its whole namespace. Its stdout and stderr go to a pipe that a thread drains into a
small buffer, so a submission that prints megabytes costs the parent nothing.

`isolation="none"` keeps only the limits: the child is then the grader's own user on the
grader's own filesystem and network, for code the instructor trusts (`--no-isolation`).
"""

import ctypes
import functools
import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

from checks.homework import protocol

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "worker.py")
JAIL = os.path.join(HERE, "jail.py")
REPO = os.path.dirname(os.path.dirname(HERE))
ISOLATIONS = ("bwrap", "unshare", "none")
UID_BASE = 100000  # sandboxes of a root grader run as UID_BASE + slot, a uid no account uses
INSIDE_UID = 1000  # the child's uid inside its own user namespace
PROJECT_PACKAGES = ("scratch", "checks", "ports", "figures")  # hidden if installed into site-packages
PROJECT_DISTRIBUTION = "genai_from_scratch"
MAX_SUBMISSION_BYTES = 64 * 1024**2
MAX_SUBMISSION_FILES = 2000


class Limits(NamedTuple):
    cpu_seconds: int = 60  # per worker, all its calls together
    memory_bytes: int = 2 * 1024**3  # address space: NumPy itself needs about 150 MB
    file_bytes: int = 1024**2  # the child has no reason to write files at all
    call_seconds: float = 10.0  # wall clock for one call (a correct one takes milliseconds)
    import_seconds: float = 30.0  # wall clock for importing the submission's module
    output_bytes: int = 16 * 1024  # how much of the child's stdout and stderr is kept
    processes: int = 16  # RLIMIT_NPROC inside the wall: threads count too
    tmp_bytes: int = 16 * 1024**2  # the private /tmp


class WorkerFailed(Exception):
    """The child died, timed out or broke the protocol; `status` says which, for the report."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class _Drain(threading.Thread):
    """Reads a pipe to its end, keeping only the first `limit` bytes and a count of the rest."""

    def __init__(self, stream, limit):
        super().__init__(daemon=True)
        self.stream, self.limit, self.kept, self.total = stream, limit, bytearray(), 0

    def run(self):
        while chunk := self.stream.read1(1 << 16):
            self.total += len(chunk)
            if len(self.kept) < self.limit:
                self.kept += chunk[: self.limit - len(self.kept)]

    def text(self):
        extra = f"\n[… {self.total - len(self.kept)} more bytes not kept]" if self.total > len(self.kept) else ""
        return self.kept.decode(errors="replace") + extra


def _child_setup(limits):
    """Runs in the launcher between fork and exec: the limits, set hard so the child cannot raise
    them, and SIGKILL when the grader dies (PR_SET_PDEATHSIG)."""

    def setup():
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if _PRCTL is not None:
            _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1

    return setup


# Looked up once, here: after a fork only calls into what is already loaded are safe.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


# ----------------------------------------------------------------------------------------------
# What the child sees
# ----------------------------------------------------------------------------------------------


class View(NamedTuple):
    binds: list  # (source on the grader's machine, path inside), all read-only
    symlinks: list  # (target, link inside): /bin → usr/bin and the like
    hide_folders: list  # paths inside that get an empty read-only folder on top
    hide_files: list  # paths inside that read as empty (/dev/null on top)


def _inside_project(path):
    path = os.path.realpath(path)
    return path == REPO or path.startswith(REPO + os.sep)


@functools.lru_cache(maxsize=None)
def python_view():
    """The system's /usr and top-level links, and the folders this Python imports from (its
    prefix, a virtual environment's, site-packages), with the project's own packages hidden."""
    binds, symlinks = [("/usr", "/usr")], []
    for name in sorted(os.listdir("/")):
        path = "/" + name
        if os.path.islink(path) and os.readlink(path).lstrip("/").startswith("usr/"):
            symlinks.append((os.readlink(path), path))  # merged /usr: /bin → usr/bin, /lib → usr/lib …
        elif name in ("lib", "lib32", "lib64", "bin", "sbin") and os.path.isdir(path):
            binds.append((path, path))
    # The prefixes always (a virtual environment may live inside the checkout: only it is shown,
    # not the checkout); other folders on the path only if they lie outside the project.
    prefixes = [sys.base_prefix, sys.prefix]
    folders = prefixes + [p for p in sys.path if p and os.path.isdir(p) and not _inside_project(p)]
    for folder in folders:
        folder = os.path.realpath(folder)
        covered = any(folder == b or folder.startswith(b.rstrip("/") + "/") for b, _ in binds)
        if not covered and (folder in map(os.path.realpath, prefixes) or not _inside_project(folder)):
            binds.append((folder, folder))
    hide_folders, hide_files = [], []
    for folder in [p for p in sys.path if p and os.path.isdir(p) and not _inside_project(p)]:
        for name in os.listdir(folder):
            path = os.path.join(os.path.realpath(folder), name)
            ours = name in PROJECT_PACKAGES or PROJECT_DISTRIBUTION in name.replace("-", "_")
            if ours and os.path.isdir(path) and not os.path.islink(path):
                hide_folders.append(path)
            elif ours and os.path.isfile(path):
                hide_files.append(path)
    return View(binds, symlinks, sorted(set(hide_folders)), sorted(set(hide_files)))


def copy_submission(submission, destination):
    """Copy the submission's scratch/ into `destination`/scratch: plain folders and files only.

    A symbolic link is not followed (it could name the reference, and the grader may be root):
    it is left out, and an import of it fails like any missing file. Readable by every uid, so
    the unprivileged child can read its copy. Raises ValueError when the folder is too large."""
    total, count = 0, 0
    for here, folders, files in os.walk(os.path.join(submission, "scratch"), followlinks=False):
        relative = os.path.relpath(here, submission)
        os.makedirs(os.path.join(destination, relative), mode=0o755, exist_ok=True)
        folders[:] = [f for f in folders if f != "__pycache__" and not os.path.islink(os.path.join(here, f))]
        for name in files:
            source = os.path.join(here, name)
            info = os.lstat(source)
            if not stat.S_ISREG(info.st_mode):
                continue  # links, sockets, devices: not part of a submission
            total, count = total + info.st_size, count + 1
            if total > MAX_SUBMISSION_BYTES or count > MAX_SUBMISSION_FILES:
                raise ValueError(f"the submission's scratch/ holds more than {MAX_SUBMISSION_FILES} files "
                                 f"or {MAX_SUBMISSION_BYTES // 1024**2} MB")
            target = os.path.join(destination, relative, name)
            with open(source, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(target, 0o644)
        os.chmod(os.path.join(destination, relative), 0o755)
    os.chmod(destination, 0o755)


def wall_command(kind, folder, command, limits, slot=0):
    """The argv that runs `command` (a list, paths as seen inside) behind wall `kind`.

    `folder` holds `submission/` and `grader/`, the two read-only folders the child gets."""
    view, root = python_view(), os.geteuid() == 0
    binds = view.binds + [(os.path.join(folder, "submission"), "/submission"), (os.path.join(folder, "grader"), "/grader")]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # The tail, the same behind both walls: drop root for an unprivileged uid (when there is root
    # to drop), enter a user namespace of its own as INSIDE_UID, cap the process count, run.
    uid = UID_BASE + slot
    tail = []
    if root:
        tail += [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    tail += ["/usr/bin/unshare", "--user", f"--map-user={INSIDE_UID}", f"--map-group={INSIDE_UID}", "--",
             "/usr/bin/prlimit", f"--nproc={limits.processes}:{limits.processes}", "--", *command]
    if kind == "bwrap":
        argv = [shutil.which("bwrap"), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        if not root:
            argv += ["--unshare-user"]
        made = set()
        for source, target in binds:
            parts = target.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):  # bwrap would make the parents 0700, unreadable to the child
                parent = "/" + "/".join(parts[:i])
                if parent not in made and not any(parent == t for _, t in binds):
                    argv += ["--perms", "0755", "--dir", parent]
                    made.add(parent)
            argv += ["--ro-bind", source, target]
        for target, link in view.symlinks:
            argv += ["--symlink", target, link]
        for path in view.hide_folders:
            argv += ["--perms", "0755", "--tmpfs", path, "--remount-ro", path]
        for path in view.hide_files:
            argv += ["--ro-bind", "/dev/null", path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
                 "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        return argv + ["--", *tail], None
    if kind == "unshare":
        os.makedirs(os.path.join(folder, "root"), mode=0o755, exist_ok=True)
        spec = {"root": os.path.join(folder, "root"), "binds": binds, "symlinks": view.symlinks,
                "hide_folders": view.hide_folders, "hide_files": view.hide_files, "tmp_bytes": limits.tmp_bytes,
                "command": tail, "env": env}
        argv = [shutil.which("unshare") or "/usr/bin/unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork",
                "--kill-child", "--propagation", "private"]
        if not root:
            argv += ["--user", "--map-root-user"]
        return argv + ["--", sys.executable, "-I", JAIL, json.dumps(spec)], None
    raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {kind!r}")


class IsolationUnavailable(Exception):
    """No wall can be built on this machine; the message says why and what to install."""


@functools.lru_cache(maxsize=None)
def probe(kind):
    """None if wall `kind` works here (a child behind it imports NumPy), else the reason it does not."""
    if not sys.platform.startswith("linux"):
        return f"Linux namespaces do not exist on {sys.platform}"
    needed = {"bwrap": ["bwrap", "unshare", "prlimit"], "unshare": ["unshare", "prlimit"]}[kind]
    needed += ["setpriv"] if os.geteuid() == 0 else []
    missing = [tool for tool in needed if shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin") is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    folder = tempfile.mkdtemp(prefix="homework-probe-")
    try:
        for name in ("submission", "grader"):
            os.makedirs(os.path.join(folder, name), mode=0o755)
        os.chmod(folder, 0o755)
        argv, _ = wall_command(kind, folder, [sys.executable, "-I", "-c", "import numpy"], Limits())
        run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                             preexec_fn=_child_setup(Limits()))
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if run.returncode != 0:
        lines = (run.stderr or run.stdout).strip().splitlines()
        return lines[-1] if lines else f"exited with status {run.returncode}"
    return None


def choose_isolation(requested="auto"):
    """The wall to grade behind: `requested` if it works, or with "auto" bwrap, else unshare.

    Raises IsolationUnavailable, naming each wall's reason and what to install."""
    if requested == "none":
        return "none"
    if requested not in ("auto", "bwrap", "unshare"):
        raise ValueError(f"isolation must be auto, bwrap, unshare or none, got {requested!r}")
    kinds = ("bwrap", "unshare") if requested == "auto" else (requested,)
    reasons = {kind: probe(kind) for kind in kinds}
    for kind in kinds:
        if reasons[kind] is None:
            return kind
    why = "; ".join(f"{kind}: {reason}" for kind, reason in reasons.items())
    raise IsolationUnavailable(
        f"cannot wall off the submissions on this machine ({why}). Submissions are untrusted code: grade on "
        "Linux with user namespaces allowed, and install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; "
        "Fedora: dnf install bubblewrap) or util-linux. --no-isolation grades without the wall, as the grader's "
        "own user, for code you trust.")


class Worker:
    """One child process serving calls into `scratch.<module>` of one submission."""

    def __init__(self, submission, module, limits=Limits(), isolation="none", slot=0):
        self.limits, self.module, self.isolation = limits, module, isolation
        self.folder = tempfile.mkdtemp(prefix="homework-")
        request_read, self._request = os.pipe()
        self._response, response_write = os.pipe()
        fds = (str(request_read), str(response_write))
        if isolation == "none":
            env = {"PATH": "/usr/bin:/bin", "HOME": self.folder, "TMPDIR": self.folder, "LANG": "C.UTF-8",
                   "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            argv = [sys.executable, "-I", WORKER, *fds, os.path.abspath(submission), module]
        else:
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # the wall sets the child's own
            try:
                copy_submission(submission, os.path.join(self.folder, "submission"))
            except (OSError, ValueError) as error:
                shutil.rmtree(self.folder, ignore_errors=True)
                raise WorkerFailed("import error", f"the submission could not be copied: {error}") from None
            os.makedirs(os.path.join(self.folder, "grader"), mode=0o755)
            for name in ("worker.py", "protocol.py"):
                shutil.copy(os.path.join(HERE, name), os.path.join(self.folder, "grader", name))
                os.chmod(os.path.join(self.folder, "grader", name), 0o644)
            argv, _ = wall_command(isolation, self.folder, [sys.executable, "-I", "/grader/worker.py", *fds,
                                                             "/submission", module], limits, slot)
        self.process = subprocess.Popen(
            argv, cwd=self.folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(request_read, response_write), start_new_session=True, preexec_fn=_child_setup(limits),
        )
        os.close(request_read)
        os.close(response_write)
        self.output = _Drain(self.process.stdout, limits.output_bytes)
        self.output.start()
        try:
            meta, _ = self._receive(limits.import_seconds, f"importing scratch.{module}")
        except WorkerFailed as error:
            raise WorkerFailed("import error", str(error)) from None
        if meta.get("status") != "ready":
            self.close()
            where = "".join(f"\n  {w}" for w in meta.get("where", []))
            raise WorkerFailed("import error", f"importing scratch.{module} raised {meta.get('message', '?')}{where}")

    def call(self, function, args, selection, steps=None):
        """Run `function(*args)` in the child; return {name: array} or raise WorkerFailed.

        With `steps` (see protocol.run_steps) the child runs that sequence of calls on the slots
        `args` instead, and `function` only names it in messages."""
        tree, arrays = protocol.pack(list(args))
        meta = {"function": function, "args": tree, "select": [[n, list(p)] for n, p in selection.items()]}
        if steps is not None:
            meta["steps"] = steps
        deadline = time.monotonic() + self.limits.call_seconds
        self._send(protocol.encode(meta, arrays), deadline)
        meta, arrays = self._receive(deadline - time.monotonic(), f"running {function}")
        if meta.get("status") == "ok":
            return arrays
        if meta.get("status") == "error":
            raise SubmissionError(meta)
        self._fail("protocol", f"unexpected reply {str(meta)[:200]} while running {function}")

    def _send(self, data, deadline):
        view = memoryview(data)
        while view:
            if not select.select([], [self._request], [], max(deadline - time.monotonic(), 0.0))[1]:
                self._fail("timeout", "the submission stopped reading input")
            try:
                view = view[os.write(self._request, view[: 1 << 16]):]
            except (BrokenPipeError, OSError):
                self._fail_dead("receiving its input")

    def _read(self, n, seconds, doing):
        deadline = time.monotonic() + seconds
        chunks, left = [], n
        while left:
            if not select.select([self._response], [], [], max(deadline - time.monotonic(), 0.0))[0]:
                self._fail("timeout", f"{doing} took longer than {seconds:.0f} s (wall clock): killed")
            chunk = os.read(self._response, min(left, 1 << 20))
            if not chunk:
                self._fail_dead(doing)
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _receive(self, seconds, doing):
        start = time.monotonic()
        size = int.from_bytes(self._read(8, seconds, doing), "big")
        if size > protocol.MAX_MESSAGE:
            self._fail("protocol", f"the submission sent a {size}-byte reply while {doing}")
        body = self._read(size, seconds - (time.monotonic() - start), doing)
        try:
            return protocol.decode(body)
        except protocol.ProtocolError as error:
            self._fail("protocol", f"{error} while {doing}")

    def _fail_dead(self, doing):
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._fail("protocol", f"the submission closed its reply pipe while {doing}")
        if self.isolation != "none" and code > 128:  # the wall's launcher reports a signal as 128 + its number
            code = 128 - code
        why = {-signal.SIGXCPU: "went over its CPU-time limit", -signal.SIGXFSZ: "went over its file-size limit"}
        status = why.get(code, f"exited with status {code}" if code >= 0 else f"was killed by signal {_signal_name(-code)}")
        tail = self.output.text()[-1500:]
        self._fail("crashed", f"the process {status} while {doing}" + (f"; its last output:\n{tail}" if tail else ""))

    def _fail(self, status, message):
        self.close()
        raise WorkerFailed(status, message)

    def close(self):
        """Kill the child's whole process group, close the pipes, remove the working folder."""
        try:  # the group outlives its leader when the submission forked: kill it in any case
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for fd in (self._request, self._response):
            try:
                os.close(fd)
            except OSError:
                pass
        self._request = self._response = -1
        self.output.join(timeout=2)
        shutil.rmtree(self.folder, ignore_errors=True)


def descendants(pid):
    """The pids of every live descendant of `pid` (its children, theirs…), read from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class SubmissionError(Exception):
    """The submission's code raised; `meta` holds the exception's type, message and location."""

    def __init__(self, meta):
        super().__init__(meta.get("message", "?"))
        self.meta = meta
