"""API fuzzing campaign: schemathesis against a live ``retune ui`` subprocess on 127.0.0.1.

usage: python -m tests.campaign.fuzz [--examples 120] [--seed 0] [--json]

The store holds a finished run with checkpoints, two branches and hostile metric names, and a
live training process (so commands reach a real run). ``retune ui`` serves it as the user
starts it (a subprocess, real HTTP). Every operation of its OpenAPI schema is fuzzed with
positive and negative cases, seeded (the same requests every time), with the store's real
names mixed in (runs, metric keys, nodes, command ids), writes carrying the page's own Origin
and Fetch Metadata; then every hostile header value on a read and a write. Broken promises: any 5xx, a dropped connection, a 4xx
without a JSON ``{"error": code, "message": ...}`` body.

The generation and the checks are the server tests' own (``tests/server/_fuzz.py``); this
module adds the real ``retune ui`` process and the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.campaign._proc import Child
from tests.server._net import free_port

_RETUNE_CLI = "import sys; from retune.cli import main; sys.exit(main())"  # the `retune` script


@dataclass
class FuzzCampaignReport:
    """What the campaign counted; :meth:`failures` lists every broken promise."""

    requests: int = 0
    header_requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: int = 0
    errors_without_reason: int = 0
    dropped_connections: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        return list(self.problems)

    def summary(self) -> str:
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"API fuzzing: {self.requests} requests to a live `retune ui` (schema-driven and "
            f"{self.header_requests} with hostile headers; {shown}); "
            f"{self.server_errors} x 5xx, {self.errors_without_reason} x 4xx without a reason, "
            f"{self.dropped_connections} dropped connections"
        )


def _answering(base_url: str, child: Child, deadline: float) -> None:
    """Wait until ``retune ui`` answers (or raise with its stderr)."""
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"retune ui exited {child.proc.returncode}: {child.stderr()[-600:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/api/runs", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError("retune ui did not answer within the deadline")


def run_campaign(
    workdir: Path, *, examples: int, seed: int = 0, log: Callable[[str], None] | None = None
) -> FuzzCampaignReport:
    """Fuzz a live ``retune ui`` over a populated store in ``workdir``; returns the counts.

    ``examples`` is the number of generated cases per operation and per mode (positive,
    negative); the total number of requests is reported.
    """
    from tests.server._fuzz import (
        KNOWN,
        fuzz,
        fuzz_headers,
        live_trainer,
        populate,
        same_origin_headers,
    )

    started = time.monotonic()
    db = workdir / "retune.db"
    url = f"sqlite:///{db}"
    populate(url)
    report = FuzzCampaignReport()
    with live_trainer(str(db)):
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        ui = Child(
            ["-c", _RETUNE_CLI, "ui", "--store", url, "--port", str(port)],
            workdir,
            workdir / "ui.log",
        )
        try:
            _answering(base_url, ui, time.monotonic() + 60)
            result = fuzz(
                base_url,
                max_examples=examples,
                seed=seed,
                headers=same_origin_headers(base_url),
                known=KNOWN,
            )
            headers = fuzz_headers(base_url)
        finally:
            ui.proc.terminate()
            ui.finish(20)
    report.requests = result.requests + headers.requests
    report.header_requests = headers.requests
    for status, count in [*result.statuses.items(), *headers.statuses.items()]:
        report.statuses[status] = report.statuses.get(status, 0) + count
    failures = [*result.failures, *headers.failures]
    report.server_errors = sum(n for status, n in report.statuses.items() if status >= 500)
    report.errors_without_reason = sum("without a reason" in f for f in failures)
    report.dropped_connections = sum("connection failed" in f for f in failures)
    report.problems = [f[:400] for f in failures[:20]]
    if len(failures) > 20:
        report.problems.append(f"... and {len(failures) - 20} more")
    report.seconds = round(time.monotonic() - started, 1)
    if log is not None:
        log(report.summary())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=120, help="cases per operation and mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="retune-fuzz-") as tmp:
        report = run_campaign(Path(tmp), examples=args.examples, seed=args.seed)
    print(json.dumps(asdict(report)) if args.json else report.summary())
    for failure in report.failures():
        print("FAIL:", failure)
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
