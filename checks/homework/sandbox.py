"""The parent's side of the sandbox: start a limited child, talk to it with deadlines, kill it.

What the child gets (see `Limits`): its own session and process group (killed whole at the
end), CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS: a 20 GB allocation fails inside
the child with MemoryError), largest file it may write (RLIMIT_FSIZE), no core dumps, one
BLAS thread, an empty temporary working folder with HOME and TMPDIR pointing into it, and a
scrubbed environment. Every exchange has a wall-clock deadline; a child that misses it is
killed with its whole process group. Its stdout and stderr go to a pipe that a thread drains
into a small buffer, so a submission that prints megabytes costs the parent nothing.

What it does not give: another user id, a private filesystem or no network. A submission can
read any file this user can (the reference solution too, if it sits on the same machine) and
can signal the grader's process. Grade in a container or as a separate user for that.
"""

import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

from checks.homework import protocol

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


class Limits(NamedTuple):
    cpu_seconds: int = 60  # per worker, all its calls together
    memory_bytes: int = 2 * 1024**3  # address space: NumPy itself needs about 150 MB
    file_bytes: int = 1024**2  # the child has no reason to write files at all
    call_seconds: float = 10.0  # wall clock for one call (a correct one takes milliseconds)
    import_seconds: float = 30.0  # wall clock for importing the submission's module
    output_bytes: int = 16 * 1024  # how much of the child's stdout and stderr is kept


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
    """Runs in the child between fork and exec: the limits, set hard so the child cannot raise them."""

    def setup():
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return setup


class Worker:
    """One child process serving calls into `scratch.<module>` of one submission."""

    def __init__(self, submission, module, limits=Limits()):
        self.limits, self.module = limits, module
        self.folder = tempfile.mkdtemp(prefix="homework-")
        request_read, self._request = os.pipe()
        self._response, response_write = os.pipe()
        threads = "1"
        env = {"PATH": "/usr/bin:/bin", "HOME": self.folder, "TMPDIR": self.folder, "LANG": "C.UTF-8",
               "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        self.process = subprocess.Popen(
            [sys.executable, "-I", WORKER, str(request_read), str(response_write), os.path.abspath(submission), module],
            cwd=self.folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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

    def call(self, function, args, selection):
        """Run `function(*args)` in the child; return {name: array} or raise WorkerFailed."""
        tree, arrays = protocol.pack(list(args))
        meta = {"function": function, "args": tree, "select": [[n, list(p)] for n, p in selection.items()]}
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
        why = {-signal.SIGXCPU: "went over its CPU-time limit", -signal.SIGXFSZ: "went over its file-size limit"}
        status = why.get(code, f"exited with status {code}" if code >= 0 else f"was killed by signal {signal.Signals(-code).name}")
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


class SubmissionError(Exception):
    """The submission's code raised; `meta` holds the exception's type, message and location."""

    def __init__(self, meta):
        super().__init__(meta.get("message", "?"))
        self.meta = meta
