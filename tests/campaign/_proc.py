"""Subprocesses for the campaign: always bounded by a deadline, never left behind."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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
                if self.proc.poll() is not None and not self._reader.is_alive():
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
