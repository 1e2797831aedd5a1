"""Subprocesses for the campaign: always bounded by a deadline, never left behind."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    """The environment of a campaign subprocess: the repo importable, no RETUNE_* leaking."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("RETUNE_")}
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out["PYTHONUNBUFFERED"] = "1"
    return out


class Child:
    """A Python subprocess whose stdout lines arrive on a queue with their arrival time.

    stderr goes to a file (read it with :meth:`stderr`), so a chatty child never blocks.
    """

    def __init__(self, args: list[str], cwd: Path, log: Path) -> None:
        self.log = log
        self._err = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[str] = []
        self.ready = threading.Event()
        """Set once the child printed a line starting with ``READY``."""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.ready.set()
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def next_line(self, deadline: float) -> str | None:
        """The next stdout line, or None once the child exited (or the deadline passed)."""
        while time.monotonic() < deadline:
            try:
                _, line = self.lines.get(timeout=0.05)
            except queue.Empty:
                if self.exited() and not self._reader.is_alive():
                    try:
                        _, line = self.lines.get_nowait()
                    except queue.Empty:
                        return None
                else:
                    continue
            self.seen.append(line)
            return line
        return None

    def wait_for(self, prefix: str, deadline: float, count: int = 1) -> bool:
        """Read lines until the ``count``-th one starting with ``prefix``; False if none."""
        found = 0
        while (line := self.next_line(deadline)) is not None:
            if line.startswith(prefix):
                found += 1
                if found >= count:
                    return True
        return False

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def kill(self) -> None:
        """SIGKILL now (no-op if it already exited) and collect every line it printed."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.finish(10)

    def finish(self, timeout: float) -> int:
        """Wait for the exit (killing it after ``timeout``), drain its output; the exit code."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        while True:
            try:
                _, line = self.lines.get_nowait()
            except queue.Empty:
                break
            self.seen.append(line)
        self._err.close()
        return int(self.proc.returncode)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


class ForkServer:
    """``tests/campaign/_forkserver.py`` running: forks trainers that start in milliseconds."""

    def __init__(self, cwd: Path, log: Path) -> None:
        self._err = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.campaign._forkserver"],
            cwd=cwd,
            env=env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        self._pids: queue.Queue[int] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._changed = threading.Condition()
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._started.wait(180):
            self.close()
            raise RuntimeError(f"the fork server did not start: {log.read_text()[-600:]}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, *rest = line.split()
            if word == "READY":
                self._started.set()
            elif word == "PID":
                self._pids.put(int(rest[0]))
            elif word == "EXIT":
                with self._changed:
                    self._exits[int(rest[0])] = int(rest[1])
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _send(self, request: dict[str, object]) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()

    def spawn(self, module: str, args: list[str], log: Path) -> Forked:
        """Fork a child running ``module.main(args)``; stderr goes to ``log``."""
        out = log.with_suffix(".out")
        self._send({"op": "spawn", "module": module, "args": args, "out": str(out),
                    "err": str(log)})  # fmt: skip
        pid = self._pids.get(timeout=60)
        return Forked(self, pid, out, log)

    def kill(self, pid: int) -> None:
        self._send({"op": "kill", "pid": pid})

    def exit_code(self, pid: int, timeout: float) -> int | None:
        """The child's exit code once reaped (negative: killed by that signal)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while pid not in self._exits:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return self._exits.get(pid)
                self._changed.wait(left)
            return self._exits[pid]

    def close(self) -> None:
        """End the server; it SIGKILLs and reaps every child still running."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        self._err.close()


class Forked(Child):
    """A child of the :class:`ForkServer`, with :class:`Child`'s interface; its stdout is
    read from a file as it grows."""

    def __init__(self, server: ForkServer, pid: int, out: Path, log: Path) -> None:
        self.server, self.pid, self.out, self.log = server, pid, out, log
        self.lines = queue.Queue()
        self.seen = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._tail, daemon=True)
        self._reader.start()

    def _tail(self) -> None:
        deadline = time.monotonic() + 10
        while not self.out.exists():  # the child creates it right after the fork
            if time.monotonic() > deadline or self.exited():
                return
            time.sleep(0.002)
        with self.out.open() as handle:
            pending = ""
            while True:
                done = self.exited()  # read after an exit is known: nothing is missed
                chunk = handle.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        if pending.startswith("READY"):
                            self.ready.set()
                        self.lines.put((time.monotonic(), pending.rstrip("\n")))
                        pending = ""
                    continue
                if done:
                    if pending:
                        self.lines.put((time.monotonic(), pending))
                    return
                time.sleep(0.002)

    def exited(self) -> bool:
        return self.server.exit_code(self.pid, 0) is not None

    def kill(self) -> None:
        if not self.exited():
            self.server.kill(self.pid)
        self.finish(30)

    def finish(self, timeout: float) -> int:
        code = self.server.exit_code(self.pid, timeout)
        if code is None:
            self.server.kill(self.pid)
            code = self.server.exit_code(self.pid, 30)
        self._reader.join(timeout=10)
        while True:
            try:
                _, line = self.lines.get_nowait()
            except queue.Empty:
                break
            self.seen.append(line)
        return -9 if code is None else code
