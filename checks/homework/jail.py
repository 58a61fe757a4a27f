"""The inside of the `unshare` wall: build the child's private filesystem, then hand over to it.

    python -I jail.py SPEC_JSON

Started by checks/homework/sandbox.py through util-linux's `unshare`, already in new mount,
PID, network, IPC and UTS namespaces (and a new user namespace when the grader is not root),
as PID 1 of the new PID namespace. This is what bubblewrap does for the `bwrap` wall, written
out with the system calls, so both walls give the child the same view:

1. a tmpfs becomes the new root; into it go read-only bind mounts of exactly the folders SPEC
   names (the system's /usr, the Python installation, the submission's copy, the two grader
   files the child runs), the top-level symlinks (/bin → usr/bin …), /dev/null, /dev/zero and
   /dev/urandom, a fresh /proc of the new PID namespace, and a size-limited writable /tmp;
2. the project's own packages inside site-packages are hidden under empty read-only mounts;
3. pivot_root moves into it and the old root is detached, so no path leads back out;
4. the loopback interface of the new network namespace comes up (the only network there is);
5. a child runs SPEC's command (which drops to the unprivileged uid, enters a user namespace of
   its own and sets the process limit); this process, PID 1, waits for it and exits with its
   status. When PID 1 dies the kernel kills every process of the namespace; it is killed
   itself when `unshare` dies (--kill-child), and `unshare` when the grader dies.

Nothing here runs the submission: it is started only after step 5's exec.
"""

import ctypes
import fcntl
import json
import os
import platform
import socket
import struct
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def mount(source, target, fstype=None, flags=0, data=None):
    encode = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
           f"mount {source} on {target}")


def bind_read_only(source, target):
    """A bind mount, then a remount read-only that keeps the flags the source mount has locked."""
    mount(source, target, None, MS_BIND | MS_REC)
    locked = os.statvfs(source).f_flag
    kept = sum(bit for st, bit in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
               if locked & st)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def make_target(path, is_file):
    os.makedirs(os.path.dirname(path) if is_file else path, mode=0o755, exist_ok=True)
    if is_file and not os.path.exists(path):
        open(path, "w").close()


def loopback_up():
    """SIOCSIFFLAGS on "lo" with IFF_UP: a new network namespace starts with its loopback down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def build(spec):
    root = spec["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates back to the grader
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    inside = lambda path: os.path.join(root, path.lstrip("/"))  # noqa: E731
    for source, target in spec["binds"]:
        make_target(inside(target), os.path.isfile(source))
        bind_read_only(source, inside(target))
    for target, link in spec["symlinks"]:
        os.symlink(target, inside(link))
    for device in ("/dev/null", "/dev/zero", "/dev/urandom"):
        make_target(inside(device), True)
        mount(device, inside(device), None, MS_BIND)
    for folder in spec["hide_folders"]:  # read-only mounts already: an empty tmpfs goes on top
        mount("tmpfs", inside(folder), "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755,size=4k")
    for path in spec["hide_files"]:
        mount("/dev/null", inside(path), None, MS_BIND)
    make_target(inside("/tmp"), False)
    mount("tmpfs", inside("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={spec['tmp_bytes']}")
    make_target(inside("/proc"), False)
    mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    # pivot_root(new, old) with new = old = ".": the old root ends up stacked under the new one,
    # and detaching it leaves no mount of the grader's filesystem in this namespace.
    os.chdir(root)
    number = PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown system call number on {platform.machine()}")
    _check(libc.syscall(number, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/tmp")


def main():
    spec = json.loads(sys.argv[1])
    try:
        build(spec)
        loopback_up()
    except OSError as error:
        print(f"sandbox set-up failed: {error}", file=sys.stderr, flush=True)
        os._exit(125)
    child = os.fork()
    if child == 0:
        try:
            os.execve(spec["command"][0], spec["command"], spec["env"])
        finally:
            os._exit(126)
    while True:  # PID 1 reaps every orphan of the namespace; its own child's status is the result
        pid, status = os.wait()
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
