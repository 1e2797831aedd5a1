"""``GET /api/runs/{run}/tree.svg`` over real HTTP: the picture the dashboard embeds."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from retune.server import serve_in_thread
from retune.store import open_store
from tests.server._net import free_port
from tests.viz._build import build_run


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder: Path = tmp_path_factory.mktemp("tree-svg")
    store = open_store(f"sqlite:///{folder / 'tree.db'}")
    run_id = build_run(store, 40, name="svg-run", keys=("loss", "val/acc"))
    server, url = serve_in_thread(store, port=free_port())
    try:
        yield {"url": url, "run": run_id}
    finally:
        server.should_exit = True
        store.close()


def test_the_route_draws_the_tree(served: dict[str, Any]) -> None:
    response = httpx.get(f"{served['url']}api/runs/{served['run']}/tree.svg", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    root = ET.fromstring(response.text)
    nodes = [e for e in root.iter() if "rt-node" in (e.get("class") or "").split()]
    assert len(nodes) == 40 and not [e for e in root.iter() if "rt-chain" in (e.get("class") or "")]
    assert root.get("viewBox", "").startswith("0 0 ")


def test_the_route_takes_the_pictures_options(served: dict[str, Any]) -> None:
    base = f"{served['url']}api/runs/svg-run/tree.svg"  # a name works as for every route
    params = {"color_by": "val/acc", "goal": "min", "collapse": "true", "width": "900"}
    response = httpx.get(base, params=params, timeout=30)
    assert response.status_code == 200, response.text
    root = ET.fromstring(response.text)
    assert root.get("width") == "900.0"
    assert "last val/acc (lower is better)" in response.text


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({"color_by": "nope"}, 400, "invalid_argument"),
        ({"goal": "best"}, 400, "invalid_argument"),
        ({"width": "5"}, 400, "invalid_argument"),
    ],
)
def test_bad_options_are_refused_with_a_reason(
    served: dict[str, Any], query: dict[str, str], status: int, code: str
) -> None:
    response = httpx.get(f"{served['url']}api/runs/{served['run']}/tree.svg", params=query,
                         timeout=30)  # fmt: skip
    assert response.status_code == status and response.json()["error"] == code
    assert response.json()["message"]


def test_an_unknown_run_is_404(served: dict[str, Any]) -> None:
    response = httpx.get(f"{served['url']}api/runs/no-such-run/tree.svg", timeout=30)
    assert response.status_code == 404 and response.json()["error"] == "run_not_found"
