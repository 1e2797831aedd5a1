"""The entry point: ``python -m retune``, exit codes, a reader that goes away, redaction."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import retune
from tests.cli.conftest import retune_cli


def _recorded(store: str, steps: int = 50) -> None:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init("piped", model=model, optimizer=opt, store=store) as run:
        for i in range(steps):
            run.step(loss=1.0 / (i + 1))


def _to_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``retune ARGS`` with stdout a pipe whose reader is already gone (like ``| head``
    after its lines): every write fails with EPIPE, deterministically."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "retune", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)  # fmt: skip
    finally:
        os.close(write_end)


def test_a_reader_that_goes_away_ends_every_command_quietly(store_url: str) -> None:
    _recorded(store_url)
    for args in (["runs"], ["show", "piped"], ["metrics", "piped", "loss", "--csv"],
                 ["tree", "piped"], ["get", "piped"], ["changes", "piped", "--json"]):  # fmt: skip
        done = _to_a_closed_pipe(*args, "--store", store_url)
        assert done.stderr == "", (args, done.stderr)
        assert done.returncode == 141, args  # as a shell reports a command ended by SIGPIPE


def test_head_reads_its_lines_and_nothing_else_is_printed(store_url: str) -> None:
    _recorded(store_url, steps=3000)
    shell = f"{sys.executable} -m retune metrics piped loss --store {store_url} | head -n 2"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert done.stdout.splitlines()[0].split() == ["STEP", "LOSS", "NODE"]
    assert len(done.stdout.splitlines()) == 2
    assert done.stderr == ""


def test_python_dash_m_retune_is_the_command(tmp_path: Path) -> None:
    done = retune_cli("--help")
    assert done.returncode == 0
    for word in ("runs", "metrics", "continue", "resume", "restore", "gc", "ui", "demo", "db"):
        assert f"    {word}" in done.stdout


def test_store_urls_in_errors_never_show_the_password() -> None:
    url = "postgresql+psycopg://mia:hunter2secret@127.0.0.1:1/retune"
    done = retune_cli("runs", "--store", url, timeout=60)
    assert done.returncode == 2
    assert "hunter2secret" not in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith("retune: error: ") and done.stderr.count("\n") == 1


def test_quieting_stdout_after_a_gone_reader_leaks_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reader went away the CLI points stdout at /dev/null; the descriptor it opened
    for that is closed again (stdout's own now refers to /dev/null)."""
    from retune.cli import _quiet_stdout

    with (tmp_path / "out.txt").open("w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        before = set(os.listdir("/proc/self/fd"))
        _quiet_stdout()
        assert set(os.listdir("/proc/self/fd")) == before
        assert os.readlink(f"/proc/self/fd/{stdout.fileno()}") == os.devnull
