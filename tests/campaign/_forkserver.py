"""A fork server for the kill campaign: imports torch and retune once, forks each trainer.

Started as ``python -m tests.campaign._forkserver``; driven by JSON lines on stdin:

* ``{"op": "spawn", "module": M, "args": [...], "out": PATH, "err": PATH}`` forks a child that
  runs ``M.main(args)`` with stdout and stderr in those files (answers ``PID <pid>``),
* ``{"op": "kill", "pid": N}`` SIGKILLs child N if it has not been reaped yet,
* end of input kills whatever is left and exits.

It answers ``EXIT <pid> <code>`` (negative: the signal) once it reaped a child. Reaping and
killing happen in this one thread, so a kill can never reach a recycled pid. A forked child is
a new process for Retune (new pid, no run, no store, no thread of the server's), but it starts
in milliseconds instead of the seconds ``import torch`` takes, which is what lets the campaign
afford a hundred kills.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import sys
import traceback

import torch  # noqa: F401  (imported once, before any fork)

import retune  # noqa: F401
from tests.campaign import _model

# torch initializes lazily on its first operations (seconds under load): pay that once here.
# One intra-op thread (set by _model), so no thread pool exists when the server forks.
_model.train_step(*_model.build(), *_model.data(rows=32))


def _child(module: str, args: list[str], out: str, err: str) -> None:
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        result = importlib.import_module(module).main(args)
        code = int(result or 0)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit would run
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print("EXIT", pid, code, flush=True)


def main() -> int:
    children: set[int] = set()
    print("READY", os.getpid(), flush=True)
    stdin = sys.stdin.fileno()
    buffer = b""
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.005)
        _reap(children)
        if not ready:
            continue
        data = os.read(stdin, 65536)
        if not data:
            break
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            if request["op"] == "spawn":
                sys.stdout.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request["module"], request["args"], request["out"], request["err"])
                children.add(pid)
                print("PID", pid, flush=True)
            elif request["op"] == "kill" and request["pid"] in children:
                os.kill(request["pid"], signal.SIGKILL)
    for pid in list(children):
        os.kill(pid, signal.SIGKILL)
    while children:
        pid, _ = os.waitpid(-1, 0)
        children.discard(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
