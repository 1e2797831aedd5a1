"""What a run leaves behind and shows while it lives: the dashboard it serves, the live
values of its tunables, and the knobs it declares."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import torch

import retune
from retune.errors import InvalidArgument
from retune.store import open_store


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_ui_on_a_busy_port_still_trains_and_says_where_the_dashboard_is(
    store_url: str, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8 item 11: the script must not die before it trains."""
    with retune.init("busy", store=store_url, ui=busy_port) as run:
        printed = capsys.readouterr().out
        assert f"port {busy_port} is in use" in printed
        url = printed.split("dashboard at ", 1)[1].split()[0]
        port = int(url.split(":")[2].split("/")[0])
        assert port != busy_port and _answers(port)
        run.step(loss=1.0)
    assert retune.load("busy", store=store_url).status == "finished"


def test_finish_stops_the_dashboard_it_served(store_url: str) -> None:
    """Issue 8 item 9."""
    port = _free_port()
    with retune.init("served", store=store_url, ui=port) as run:
        run.step(loss=1.0)
        assert _answers(port)
    deadline = time.monotonic() + 30
    while _answers(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _answers(port)
    assert run.ui_server is None


class _RecordingHandler(logging.Handler):
    """A user's logging handler that remembers being closed."""

    closed = False

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        super().close()


def test_the_dashboard_in_a_training_process_leaves_the_users_logging_alone(
    store_url: str,
) -> None:
    """``ui=`` serves from the training process: uvicorn's own logging set-up there (a
    ``dictConfig``) closed every handler the process had, the user's included; abseil's (which
    Keras installs) then closed the stream it wrote to, the test runner's captured stderr."""
    handler = _RecordingHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        port = _free_port()
        with retune.init("own-logging", store=store_url, ui=port) as run:
            assert _answers(port)
            run.step(loss=1.0)
        assert not handler.closed and handler in root.handlers
    finally:
        root.removeHandler(handler)


@pytest.mark.parametrize("metrics", [{"loss": 1.0}, {}], ids=["with-metrics", "no-metrics"])
def test_the_stored_tunables_follow_the_lr_a_scheduler_moves(
    store_url: str, metrics: dict[str, float]
) -> None:
    """Issue 8 item 11: `retune get` and the control panel read the stored value."""
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with retune.init(
        "scheduled", optimizer=opt, scheduler=scheduler, store=store_url, flush_interval=3600
    ) as run:
        for _ in range(3):
            opt.step()
            scheduler.step()
            run.step(metrics)
        run.flush()
        stored = open_store(store_url).get_run(run.id).tunables
        (lr,) = [t for t in stored if t["name"] == "lr"]
        assert lr["value"] == [pytest.approx(0.1 * 0.5**3)]


@pytest.mark.parametrize(
    ("bounds", "reason"),
    [
        (("0", 1), "the low bound must be a number or None, got str"),
        ((0, [1]), "the high bound must be a number or None, got list"),
        ((True, None), "the low bound must be a number or None, got bool"),
        ((1.0, 0.0), "bounds are reversed: low 1 is above high 0"),
        ((0, float("inf")), "the high bound must be finite"),
        ((0, 10**400), "the high bound must be finite"),
        ((0,), "bounds must be a pair"),
        ("01", "bounds must be a pair"),
    ],
)
def test_tunable_bounds_of_the_wrong_type_or_reversed_say_so(
    store_url: str, bounds: object, reason: str
) -> None:
    """Issue 8 item 16."""
    with retune.init("knobs", store=store_url) as run:
        with pytest.raises(InvalidArgument) as refused:
            run.tunable("clip", 0.5, bounds=bounds)  # type: ignore[arg-type]
        assert reason in str(refused.value)
        assert "clip" not in run.tunables.knobs
        run.tunable("clip", 0.5, bounds=(0, 1))  # and a good declaration still works
