"""The child: imports one module of the submission and runs the calls the grader sends.

    python -I worker.py REQUEST_FD RESPONSE_FD SUBMISSION_DIR MODULE

Started by checks/homework/sandbox.py with resource limits already set, in an empty working
folder. Isolated mode (-I) keeps PYTHONPATH, the user's site-packages and the script's own
folder off sys.path; this script then puts the submission first, so `scratch.<module>` and
everything it imports come from the submission. `protocol.py` is loaded by file path, so a
submission cannot shadow it with a module of the same name.

A request is one call, `function(*args)`, and its reply the outputs `select` names; or, when it
carries `steps`, a sequence of calls (`protocol.run_steps`: build an optimizer and step it, feed
decoder_step one token after another) whose objects stay in this process from call to call, the
reply holding every call's outputs, and on an exception the number of calls that had returned.

Nothing here is trusted by the parent: the submission runs in this process and may change
anything in it. The parent only ever receives arrays, which it checks itself.
"""

import importlib
import importlib.util
import os
import sys
import traceback


def load_protocol():
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("_homework_protocol", os.path.join(here, "protocol.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def describe(error, submission):
    """The exception and the submission's own frames (the grader's frames say nothing to a student)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(submission)]
    where = [f"{os.path.relpath(f.filename, submission)}, line {f.lineno}, in {f.name}: {(f.line or '').strip()}" for f in frames[-3:]]
    message = f"{type(error).__name__}: {error}"[:2000]
    return {"error": type(error).__name__, "message": message, "where": where}


def main():
    fd_in, fd_out, submission, module_name = int(sys.argv[1]), int(sys.argv[2]), os.path.abspath(sys.argv[3]), sys.argv[4]
    protocol = load_protocol()
    # held before the submission can patch them
    send, encode, run_steps = protocol.write_message, protocol.encode, protocol.run_steps
    sys.path.insert(0, submission)
    try:
        module = importlib.import_module(f"scratch.{module_name}")
    except BaseException as error:  # SystemExit and KeyboardInterrupt included: all are the submission's
        send(fd_out, encode({"status": "import-error", **describe(error, submission)}))
        return

    def find_class(module, name):
        if not module.startswith("scratch."):
            raise ValueError(f"refusing to load a class from {module!r}")
        return getattr(importlib.import_module(module), name)

    send(fd_out, encode({"status": "ready"}))
    while True:
        header = protocol.read_exactly(fd_in, 8)
        if header is None:
            return
        meta, arrays = protocol.decode(protocol.read_exactly(fd_in, int.from_bytes(header, "big")))
        done = 0  # calls of a sequence that returned
        try:
            args = protocol.unpack(meta["args"], arrays, find_class)
            if "steps" in meta:  # a sequence of calls, the state kept in this process from one to the next
                outputs = {}
                for selected in run_steps(module, args, meta["steps"]):
                    outputs.update(selected)
                    done += 1
            else:
                result = getattr(module, meta["function"])(*args)
                outputs = protocol.select(result, {name: path for name, path in meta["select"]})
            reply = encode({"status": "ok"}, outputs)
        except BaseException as error:
            reply = encode({"status": "error", **describe(error, submission), **({"step": done} if "steps" in meta else {})})
        send(fd_out, reply)


if __name__ == "__main__":
    main()
