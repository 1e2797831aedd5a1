"""Fuzzing the dashboard's API over real HTTP: the parts the short test and the campaign share.

* :func:`populate` fills a store with a finished run whose names are hostile (``val/loss``,
  markup) and that has checkpoints and two branches.
* :func:`live_trainer` runs ``tests/control/trainer.py`` as a real training subprocess, so
  commands reach a live run.
* :func:`live_dashboard` serves :func:`retune.server.create_app` with uvicorn on a free port of
  127.0.0.1 and yields its base URL.
* :func:`fuzz` drives schemathesis over the live OpenAPI schema (``/api/openapi.json``) with
  same-origin headers for writes, seeded, and returns every response that broke the contract:
  a 5xx, a dropped connection, or a 4xx without a JSON ``{"error": code, "message": ...}``.

Nothing here asserts: callers decide what a failure is (``report.failures == []``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import retune
from retune.store import open_store
from tests.server._net import free_port

__all__ = [
    "HOSTILE_METRICS",
    "KNOWN",
    "FuzzReport",
    "fuzz",
    "fuzz_headers",
    "live_dashboard",
    "live_trainer",
    "populate",
    "same_origin_headers",
]

TRAINER = Path(__file__).parents[1] / "control" / "trainer.py"
HOSTILE_METRICS = ("val/loss", "<b>x</b>", "a%2Fb", "ü/ß ?#")
# values that exist in a store made by populate() + live_trainer(), and near misses
KNOWN: dict[str, list[Any]] = {
    "run": ["done", "live"],
    "key": ["loss", *HOSTILE_METRICS],
    "node": ["n1", "n2", "n²", "n٣"],
    "branch": ["n1", "n٣"],
    "command_id": [1, 2, 2**31, 2**64],
    "kind": ["set", "scale", "restore", "checkpoint", "pause"],
}


def populate(store_url: str, name: str = "done") -> str:
    """A finished run ``name`` (its id is returned) with checkpoints and hostile metric names."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with retune.init(name, model=model, optimizer=opt, store=store_url) as run:
        for i in range(1, 41):
            run.step(loss=1.0 / i, **dict.fromkeys(HOSTILE_METRICS, float(i)))
            if i % 10 == 0:
                run.checkpoint()
    return run.id


@contextmanager
def live_trainer(store: str, name: str = "live", delay: float = 0.05) -> Iterator[Any]:
    """A real training process on ``store`` (a path or URL); yields it once its run has steps.

    The process trains until stopped (a ``stop`` command ends it cleanly) and is killed on exit.
    """
    proc = subprocess.Popen(
        [sys.executable, str(TRAINER), store, name, "100000000", str(delay)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _step(store, name) < 3:
            if proc.poll() is not None:
                raise RuntimeError(f"the trainer exited early: {proc.communicate()[1]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the trainer did not start training within 60 s")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _step(store: str, name: str) -> int:
    try:
        with open_store(store) as opened:
            return opened.get_run(name).step
    except retune.RetuneError:
        return 0


@contextmanager
def live_dashboard(
    store_url: str,
    *,
    token: str | None = None,
    read_only: bool = False,
    allowed_hosts: set[str] | None = None,
) -> Iterator[str]:
    """``create_app`` served by uvicorn on 127.0.0.1 (a thread); yields ``http://127.0.0.1:PORT``."""
    import uvicorn

    from retune.server import create_app

    store = open_store(store_url)
    app = create_app(store, read_only=read_only, token=token, allowed_hosts=allowed_hosts)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="fuzz-ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        store.close()


def same_origin_headers(base_url: str) -> dict[str, str]:
    """What the dashboard's own page sends with a write: its Origin and Fetch Metadata."""
    return {"Origin": base_url, "Sec-Fetch-Site": "same-origin"}


@dataclass
class FuzzReport:
    """What :func:`fuzz` saw: how many requests, the statuses, and the contract breaches."""

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def fuzz(
    base_url: str,
    *,
    max_examples: int,
    seed: int,
    headers: dict[str, str] | None = None,
    known: dict[str, list[Any]] | None = None,
    exclude_paths: tuple[str, ...] = ("/api/events",),
) -> FuzzReport:
    """Fuzz every operation of the live schema, positive and negative cases, ``max_examples``
    each per mode, seeded by ``seed``. ``/api/events`` streams forever and is excluded.

    ``known`` maps parameter names (``run``, ``key``, ``command_id``, ``node``...) to values that
    exist in the store: half of the generated cases get one of them, so requests get past
    "not found" into the code behind it.
    """
    import hypothesis
    import requests
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis.core.result import Ok
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json")
    headers = headers if headers is not None else same_origin_headers(base_url)
    report = FuzzReport()
    session = requests.Session()
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            raise RuntimeError(f"the live schema is invalid: {result.err()}")
        operation = result.ok()
        if operation.path in exclude_paths:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            if known:
                strategy = st.one_of(strategy, _with_known(strategy, known))

            @hypothesis.seed(seed)
            @hypothesis.settings(
                max_examples=max_examples, database=None, deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )  # fmt: skip
            @hypothesis.given(case=strategy)
            def one(case: Any) -> None:
                _check(case, base_url, headers, session, report)

            try:
                one()
            except hypothesis.errors.Unsatisfiable:
                continue  # no negative case exists for an operation without constraints
    return report


def _with_known(strategy: Any, known: dict[str, list[Any]]) -> Any:
    from hypothesis import strategies as st

    def put(case: Any, picks: dict[str, Any]) -> Any:
        for name, value in picks.items():
            if case.path_parameters and name in case.path_parameters:
                case.path_parameters[name] = value
            elif case.query and name in case.query:
                case.query[name] = value
            elif isinstance(case.body, dict) and name in case.body:
                case.body[name] = value
        return case

    picks = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in known.items() if v})
    return st.tuples(strategy, picks).map(lambda pair: put(*pair))


def _check(
    case: Any, base_url: str, headers: dict[str, str], session: Any, report: FuzzReport
) -> None:
    import requests

    report.requests += 1
    where = f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"
    try:
        response = case.call(base_url=base_url, headers=headers, session=session, timeout=30)
    except requests.RequestException as e:
        report.failures.append(f"{where}: connection failed: {e!r}")
        return
    _judge(where, response.status_code, response.text, report)


HEADER_VALUES = (
    b"http://[", b"http://[::1", "http://ü".encode(), b"\xff\xfe", b"http://127.0.0.1:99999",
    b"null", b"", b"//", b"[", b"[::1", b"127.0.0.1:abc", "²".encode(), "٣".encode(),
    b"cross-site", b"application/json; charset=\xff", b"Bearer \xff", b"retune_token=\xc3\xbc",
)  # fmt: skip
HEADER_NAMES = (b"Origin", b"Host", b"Sec-Fetch-Site", b"Content-Type", b"Authorization",
                b"Cookie", b"Referer", b"Accept")  # fmt: skip


def fuzz_headers(base_url: str, *, token: str | None = None, run: str = "done") -> FuzzReport:
    """Every hostile value of :data:`HEADER_VALUES` in every header of :data:`HEADER_NAMES`,
    on a read and on a write (a command to ``run``), over one real HTTP connection."""
    import httpx

    report = FuzzReport()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for name in HEADER_NAMES:
            for value in HEADER_VALUES:
                for method, path in (("GET", "/api/runs"), ("POST", f"/api/runs/{run}/commands")):
                    headers = [(name, value)]
                    if token is not None and name != b"Authorization":
                        headers.append((b"Authorization", f"Bearer {token}".encode()))
                    if name != b"Content-Type":
                        headers.append((b"Content-Type", b"application/json"))
                    where = f"{method} {path} {name.decode()}: {value!r}"
                    report.requests += 1
                    try:
                        response = client.request(method, path, headers=headers,
                                                  content=b'{"kind": "pause"}')  # fmt: skip
                    except httpx.HTTPError as e:
                        report.failures.append(f"{where}: connection failed: {e!r}")
                        continue
                    _judge(where, response.status_code, response.text, report)
    return report


def _judge(where: str, status: int, text: str, report: FuzzReport) -> None:
    import json

    report.statuses[status] = report.statuses.get(status, 0) + 1
    if status >= 500:
        report.failures.append(f"{where}: {status} {text[:300]}")
    elif status >= 400:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not (
            isinstance(body, dict) and isinstance(body.get("error"), str) and body.get("message")
        ):
            report.failures.append(f"{where}: {status} without a reason: {text[:300]}")
