"""``retune ui``'s command-line side: a busy port is one line, never a false "dashboard at"."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.cli.conftest import retune_cli


def test_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = retune_cli("ui", "--port", str(port), "--store", str(tmp_path / "ui.db"))
    assert done.returncode == 2
    assert done.stderr == (
        f"retune: error: port {port} is in use (another `retune ui`?); choose one with --port\n"
    )
    assert "dashboard at" not in done.stdout


def test_ports_are_checked_before_serving(tmp_path: Path) -> None:
    done = retune_cli("ui", "--port", "70000", "--store", str(tmp_path / "ui.db"))
    assert done.returncode == 2 and "port must be between 1 and 65535" in done.stderr
    done = retune_cli("ui", "--port", "٣", "--store", str(tmp_path / "ui.db"))
    assert done.returncode == 2 and "ASCII digits" in done.stderr


def test_a_read_only_dashboard_creates_no_store(tmp_path: Path) -> None:
    done = retune_cli("ui", "--read-only", "--store", str(tmp_path / "typo" / "retune.db"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not (tmp_path / "typo").exists()
